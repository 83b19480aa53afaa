"""FLUX.1 (dev / schnell) model family: BFL single files or diffusers folders, kohya-format fused LoRA export."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap
from .toy import TOY

__all__ = ["SPEC", "TOY", "Adapter", "identify", "lora_key_universe", "lora_keymap", "full_lora_keymap"]
