"""SDXL base 1.0: single-file/diffusers loading, conditioning, DDPM objective, sampling, kohya LoRA names."""

from lorakit.models.sdxl.adapter import SPEC, Adapter
from lorakit.models.sdxl.identify import identify
from lorakit.models.sdxl.keys import full_lora_keymap, lora_key_universe, lora_keymap
from lorakit.models.sdxl.toy import TOY

__all__ = ["SPEC", "TOY", "Adapter", "identify", "lora_key_universe", "lora_keymap", "full_lora_keymap"]
