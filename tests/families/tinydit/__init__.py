"""tinydit: a model family that lives outside lorakit, registered with ``LORAKIT_FAMILIES=tests.families.tinydit``.

The smallest complete family package (docs/families.md): a PixArt-architecture transformer
(diffusers' ``PixArtTransformer2DModel``, which lorakit does not ship) trained with rectified flow, a CLIP text
encoder with lorakit's offline CLIP tokenizer, and an ``AutoencoderKL``, all read from one ``.safetensors`` file
(:func:`write_tiny_checkpoint` writes one). lorakit finds ``SPEC`` and ``Adapter`` here; ``lora_key_universe`` lets
``lorakit inspect`` recognise its LoRA files.
"""

from .adapter import SPEC, Adapter
from .checkpoint import lora_key_universe, write_tiny_checkpoint

__all__ = ["SPEC", "Adapter", "lora_key_universe", "write_tiny_checkpoint"]
