"""FLUX.1 (dev / schnell) model family: BFL single files or diffusers folders, kohya-format fused LoRA export."""

from .adapter import SPEC, Adapter
from .keys import lora_key_universe
from .toy import TOY

__all__ = ["SPEC", "TOY", "Adapter", "lora_key_universe"]
