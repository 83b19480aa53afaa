"""Z-Image model family (Z-Image Turbo and base, Tongyi-MAI): the original single file, ComfyUI split files or
diffusers folders; ComfyUI- and diffusers-layout LoRA export; the toy (``TOY``, toy.py)."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap
from .tiny import write_tiny_checkpoint

from .toy import TOY

__all__ = ["SPEC", "TOY", "Adapter", "identify", "lora_key_universe", "lora_keymap", "full_lora_keymap",
           "write_tiny_checkpoint"]
