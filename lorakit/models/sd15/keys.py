"""Every kohya LoRA module name a full-size SD 1.5 base accepts (`lorakit inspect`, export checks).

Built on the meta device from the shipped configs (no weights): the default UNet targets, LoCon convolutions and
CLIP-L's attention / MLP Linears, under sd-scripts' SD 1.x names.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=1)
def lora_key_universe() -> frozenset[str]:
    from lorakit.models.sd15.adapter import kohya_name, text_encoder_lora_targets, unet_lora_targets

    unet, te = _meta_models()
    names = {kohya_name("unet", p) for p in unet_lora_targets(unet, 1, conv_rank=1)}
    names |= {kohya_name("te1", p) for p in text_encoder_lora_targets(te, 1)}
    return frozenset(names)


# ------------------------------------------------------------------------------- LoRA tools' key map

def lora_keymap(unet: Any = None, text_encoder: Any = None):
    """The LoRA tools' :class:`~lorakit.lora.formats.keymap.FamilyKeys` of SD 1.5: every kohya target (UNet
    transformer Linears / 1×1 convs, LoCon convs, CLIP-L's attention and MLP) under its LDM, diffusers and ComfyUI
    names, with shapes and single-file keys. kohya names are sd-scripts' SD 1.x ones, built from the diffusers path
    (``lora_unet_down_blocks_0_attentions_0_proj_in``, ``lora_te_text_model_…``); the LDM-path kohya names A1111,
    Forge and ComfyUI also read (``lora_unet_input_blocks_1_1_proj_in``) are read too. Without models, the full-size
    ones are built on the meta device."""
    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys
    from lorakit.models.sd15.adapter import text_encoder_lora_targets
    from lorakit.models.sd15.convert import TE_PREFIX
    from lorakit.models.unet_parts import UNET_PREFIX, unet_modules

    if unet is None:
        unet, text_encoder = _meta_models()
    mods = unet_modules(unet, conv=True)
    if text_encoder is not None:
        named = dict(text_encoder.named_modules())
        for path in sorted(text_encoder_lora_targets(text_encoder, 1)):
            w = named[path].weight
            native = path if path.startswith("text_model.") else "text_model." + path
            mods.append(BaseModule("te1", native, (native,), int(w.shape[0]), int(w.shape[1]),
                                   checkpoint_key=TE_PREFIX + native + ".weight"))
    return FamilyKeys(
        "sd15", tuple(mods),
        kohya_prefix={"denoiser": "lora_unet_", "te1": "lora_te_"},
        diffusers_prefix={"denoiser": "unet.", "te1": "text_encoder."},
        comfy_prefix={"denoiser": "diffusion_model.", "te1": "text_encoders.clip_l.transformer."},
        checkpoint_prefix={"denoiser": UNET_PREFIX, "te1": TE_PREFIX},
        kohya_diffusers=frozenset({"denoiser"}))


@lru_cache(maxsize=1)
def full_lora_keymap():
    return lora_keymap()


def _meta_models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorakit.models.base import init_kwargs
    from lorakit.models.sd15 import configs

    te_cfg = {k: v for k, v in init_kwargs(configs.TEXT_ENCODER).items() if k != "torch_dtype"}
    with torch.device("meta"):
        return UNet2DConditionModel(**init_kwargs(configs.UNET)), CLIPTextModel(CLIPTextConfig(**te_cfg))
