"""FLUX.2 model family (Klein 4B / 9B, base and distilled, and dev): BFL single files, ComfyUI split files or
diffusers folders; ComfyUI- and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap, lora_sizes
from .toy import TOY

__all__ = ["SPEC", "TOY", "Adapter", "identify", "lora_key_universe", "lora_keymap", "full_lora_keymap", "lora_sizes"]
