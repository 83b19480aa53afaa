"""SD3.5 model family (large, large-turbo, medium; SD3 medium loads too): Stability AI's single files, ComfyUI split
files or diffusers folders; kohya / ComfyUI- and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_sizes
from .tiny import write_tiny_checkpoint

# The toy recipe (toy.py) is not exposed as ``TOY`` until its pretrained files are built (docs/sd3.md says how):
# exposing it without lorakit/toy/assets/sd3/ would break `lorakit demo`.

__all__ = ["SPEC", "Adapter", "identify", "full_lora_keymap", "lora_key_universe", "lora_sizes",
           "write_tiny_checkpoint"]
