"""Qwen-Image model family (Qwen's 20 B MMDiT with Qwen2.5-VL-7B and its own 16-channel VAE): ComfyUI split files or
diffusers folders; ComfyUI- (musubi-tuner names) and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap
from .tiny import write_tiny_checkpoint

# The toy recipe (toy.py) is complete and tested, but its pretrained files are not built (about 2 hours on the shared
# 2-core CPU): exposing ``TOY`` without lorakit/toy/assets/qwenimage/ would break `lorakit demo`. After
# `python -m lorakit.toy build --family qwenimage` (with this import in place) the assets ship and it stays.
# from .toy import TOY

__all__ = ["SPEC", "Adapter", "identify", "lora_key_universe", "lora_keymap", "full_lora_keymap",
           "write_tiny_checkpoint"]
