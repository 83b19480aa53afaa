"""Z-Image model family (Z-Image Turbo and base, Tongyi-MAI): the original single file, ComfyUI split files or
diffusers folders; ComfyUI- and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap
from .tiny import write_tiny_checkpoint

# The toy recipe (toy.py, ``TOY``) is complete and tested, but its pretrained files are not built yet: exposing ``TOY``
# without lorakit/toy/assets/zimage/ would break `lorakit demo`. Measured on one idle core: VAE 0.34 s/step, transformer
# 0.126 s/step at batch 32, so the shared full plan (1,000 + 3,500 steps) takes about 13 min; on this session's shared
# 2-core machine (load 11) it got a third of a core and could not finish. After `python -m lorakit.toy build --family
# zimage` (with this import in place) the assets ship and it stays.
# from .toy import TOY

__all__ = ["SPEC", "Adapter", "identify", "lora_key_universe", "lora_keymap", "full_lora_keymap",
           "write_tiny_checkpoint"]
