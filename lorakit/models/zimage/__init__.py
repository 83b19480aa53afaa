"""Z-Image model family (Z-Image Turbo and base, Tongyi-MAI): the original single file, ComfyUI split files or
diffusers folders; ComfyUI- and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter
from .keys import lora_key_universe
from .tiny import write_tiny_checkpoint
from .toy import TOY

__all__ = ["SPEC", "TOY", "Adapter", "lora_key_universe", "write_tiny_checkpoint"]
