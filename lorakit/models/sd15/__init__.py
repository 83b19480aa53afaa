"""Stable Diffusion 1.5 (and SD 1.x fine-tunes, ε or v): LDM single files or diffusers folders, CLIP-L, the DDPM
objective, sampling, kohya (sd-scripts / ComfyUI / Forge) and diffusers LoRA layouts; the toy (``TOY``, toy.py)."""

from lorakit.models.sd15.adapter import SPEC, Adapter
from lorakit.models.sd15.keys import full_lora_keymap, lora_key_universe, lora_keymap
from lorakit.models.sd15.load import write_tiny_checkpoint
from lorakit.models.sd15.toy import TOY

__all__ = ["SPEC", "TOY", "Adapter", "lora_key_universe", "lora_keymap", "full_lora_keymap", "write_tiny_checkpoint"]
