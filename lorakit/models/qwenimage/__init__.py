"""Qwen-Image model family (Qwen's 20 B MMDiT with Qwen2.5-VL-7B and its own 16-channel VAE): ComfyUI split files or
diffusers folders; ComfyUI- (musubi-tuner names) and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap
from .tiny import write_tiny_checkpoint

# The toy (toy.py; files in lorakit/toy/assets/qwenimage/, built 2026-12-07: docs/qwenimage.md)
from .toy import TOY

__all__ = ["SPEC", "TOY", "Adapter", "identify", "lora_key_universe", "lora_keymap", "full_lora_keymap",
           "write_tiny_checkpoint"]
