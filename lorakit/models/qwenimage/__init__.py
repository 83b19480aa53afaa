"""Qwen-Image model family (Qwen's 20 B MMDiT with Qwen2.5-VL-7B and its own 16-channel VAE): ComfyUI split files or
diffusers folders; ComfyUI- (musubi-tuner names) and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap
from .tiny import write_tiny_checkpoint

# The toy recipe (toy.py) is complete and tested (tests/integration/test_qwenimage_toy.py trains its quick build), but
# no pretrained toy ships: the full build of 2026-12-07 (300 VAE steps, 466 s CPU) gave a VAE that reconstructs no
# colours, so the base follows no prompt (docs/qwenimage.md). Exposing ``TOY`` without lorakit/toy/assets/qwenimage/
# would break `lorakit demo`; after a build whose base draws what the prompt says, export it here.
# from .toy import TOY

__all__ = ["SPEC", "Adapter", "identify", "lora_key_universe", "lora_keymap", "full_lora_keymap",
           "write_tiny_checkpoint"]
