"""FLUX.2 model family (Klein 4B / 9B, base and distilled, and dev): BFL single files, ComfyUI split files or
diffusers folders; ComfyUI- and diffusers-layout LoRA export."""

from .adapter import SPEC, Adapter, preview_settings
from .identify import identify
from .keys import full_lora_keymap, lora_key_universe, lora_keymap, lora_sizes
from .toy import TOY



def package_preview_settings(meta: dict, prompt, sample) -> tuple:
    """(steps, CFG scale, guidance) a LoRA's previews were drawn with, for ``lorakit package``: the variant from its
    metadata (Klein: no guidance, distilled 4 steps without CFG, base 50 with CFG 4; dev: guidance)."""
    variant = meta.get("lorakit_flux2_variant") or ("dev" if meta.get("ss_base_model_version") == "flux_2_dev"
                                                    else "klein")
    return preview_settings(variant, prompt, sample)


__all__ = ["SPEC", "TOY", "Adapter", "identify", "package_preview_settings", "lora_key_universe", "lora_keymap", "full_lora_keymap", "lora_sizes"]
