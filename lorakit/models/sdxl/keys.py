"""Every kohya LoRA module name a full-size SDXL base accepts (for `lorakit inspect` and export checks).

Built on the meta device from the shipped configs (no weights, a second or two), covering the default
UNet targets, LoCon convolutions and both text encoders.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=1)
def lora_key_universe() -> frozenset[str]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorakit.models.sdxl import configs
    from lorakit.models.clip_t5 import text_encoder_lora_targets
    from lorakit.models.sdxl.adapter import kohya_name
    from lorakit.models.unet_parts import unet_lora_targets

    def clean(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype")}

    with torch.device("meta"):
        unet = UNet2DConditionModel(**clean(configs.UNET))
        te1 = CLIPTextModel(CLIPTextConfig(**clean(configs.TE1)))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**clean(configs.TE2)))
    names = {kohya_name("unet", p, unet.config) for p in unet_lora_targets(unet, 1, conv_rank=1)}
    names |= {kohya_name("te1", p, None) for p in text_encoder_lora_targets(te1, 1)}
    names |= {kohya_name("te2", p, None) for p in text_encoder_lora_targets(te2, 1)}
    return frozenset(names)


# ------------------------------------------------------------------------------- LoRA tools' key map

TE2_CKPT_PARTS = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _te2_checkpoint(native: str, hidden: int) -> tuple[str, Any]:
    """OpenCLIP key (and which third of it) of a CLIP-bigG Linear: q/k/v are row blocks of ``attn.in_proj_weight``."""
    import re

    from lorakit.models.sdxl.convert import TE2_PREFIX

    m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)$", native)
    assert m, native
    base = f"{TE2_PREFIX}transformer.resblocks.{m[1]}."
    qkv = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
    if m[2] in qkv:
        i = qkv[m[2]]
        return base + "attn.in_proj_weight", (i, 3)
    return base + TE2_CKPT_PARTS[m[2]] + ".weight", None


def lora_keymap(unet: Any = None, te1: Any = None, te2: Any = None):
    """The LoRA tools' :class:`~lorakit.lora.formats.keymap.FamilyKeys` of SDXL: every kohya target (UNet
    transformer Linears, LoCon convs, both CLIPs) under its SGM, diffusers and ComfyUI names, with shapes
    and single-file keys. Without models, the full-size ones are built on the meta device."""
    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys
    from lorakit.models.clip_t5 import text_encoder_lora_targets
    from lorakit.models.unet_parts import TE1_PREFIX, UNET_PREFIX, unet_modules

    if unet is None:
        unet, te1, te2 = _meta_models()
    mods = unet_modules(unet)
    for comp, te in (("te1", te1), ("te2", te2)):
        if te is None:
            continue
        named = dict(te.named_modules())
        hidden = int(te.config.hidden_size)
        for path in sorted(text_encoder_lora_targets(te, 1)):
            w = named[path].weight
            native = path if path.startswith("text_model.") else "text_model." + path
            if comp == "te1":
                key, rows = TE1_PREFIX + native + ".weight", None
            else:
                key, rows = _te2_checkpoint(native, hidden)
            mods.append(BaseModule(comp, native, (native,), int(w.shape[0]), int(w.shape[1]),
                                   checkpoint_key=key, checkpoint_split=rows))
    return FamilyKeys(
        "sdxl", tuple(mods),
        kohya_prefix={"denoiser": "lora_unet_", "te1": "lora_te1_", "te2": "lora_te2_"},
        diffusers_prefix={"denoiser": "unet.", "te1": "text_encoder.", "te2": "text_encoder_2."},
        comfy_prefix={"denoiser": "diffusion_model.", "te1": "text_encoders.clip_l.transformer.",
                      "te2": "text_encoders.clip_g.transformer."},
        checkpoint_prefix={"denoiser": UNET_PREFIX, "te1": TE1_PREFIX, "te2": "conditioner.embedders.1.model."})


@lru_cache(maxsize=1)
def full_lora_keymap():
    return lora_keymap()


def _meta_models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorakit.models.sdxl import configs

    def clean(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype")}

    with torch.device("meta"):
        return (UNet2DConditionModel(**clean(configs.UNET)), CLIPTextModel(CLIPTextConfig(**clean(configs.TE1))),
                CLIPTextModelWithProjection(CLIPTextConfig(**clean(configs.TE2))))
