"""SDXL base 1.0: single-file/diffusers loading, conditioning, DDPM objective, sampling, kohya LoRA names."""

from lorakit.models.sdxl.adapter import SPEC, Adapter

__all__ = ["SPEC", "Adapter"]
