"""SD3.5 model family (large, large-turbo, medium; SD3 medium loads too): Stability AI's single files, ComfyUI split
files or diffusers folders; kohya / ComfyUI- and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap, lora_sizes
from .tiny import write_tiny_checkpoint
from .toy import TOY

__all__ = ["SPEC", "Adapter", "identify", "full_lora_keymap", "lora_key_universe", "lora_keymap", "lora_sizes",
           "write_tiny_checkpoint", "TOY"]
