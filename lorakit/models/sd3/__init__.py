"""SD3.5 model family (large, large-turbo, medium; SD3 medium loads too): Stability AI's single files, ComfyUI split
files or diffusers folders; kohya / ComfyUI- and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap, lora_sizes
from .tiny import write_tiny_checkpoint

# The toy recipe (toy.py, ``TOY``) is complete and tested, but its pretrained files are not built yet (the full plan
# takes about 1-1.5 h on a shared CPU): exposing ``TOY`` without lorakit/toy/assets/sd3/ would break `lorakit demo`.
# After `python -m lorakit.toy build --family sd3` (with `from .toy import TOY` here) the assets ship and it stays.

__all__ = ["SPEC", "Adapter", "identify", "full_lora_keymap", "lora_key_universe", "lora_keymap", "lora_sizes",
           "write_tiny_checkpoint"]
