"""Every kohya LoRA module name a full-size SD 1.5 base accepts (`lorakit inspect`, export checks).

Built on the meta device from the shipped configs (no weights): the default UNet targets, LoCon convolutions and
CLIP-L's attention / MLP Linears, under sd-scripts' SD 1.x names.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

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
        kohya_diffusers=frozenset({"denoiser"}), for_base=keymap_for_base)


def unet_config_of(header: dict) -> Optional[dict]:
    """The diffusers U-Net config of an SD 1.x single file's actual blocks (levels, layers per block, widths, which
    levels attend, context width), read from its header; None when the file holds no SD 1.x-layout U-Net. The LoRA
    names of a U-Net of another depth (a toy, a pruned model) follow it: ``up_blocks.1.attentions.1`` is
    ``output_blocks.5.1`` with SD 1.5's 2 layers per block, ``output_blocks.3.1`` with 1."""
    import math
    import re

    from lorakit.models.sd15 import configs
    from lorakit.models.unet_parts import UNET_PREFIX

    def shape(key: str) -> Optional[list]:
        info = header.get(UNET_PREFIX + key)
        return list(info["shape"]) if isinstance(info, dict) and "shape" in info else None

    blocks = {int(m[1]) for k in header if (m := re.match(re.escape(UNET_PREFIX) + r"output_blocks\.(\d+)\.", k))}
    downs = sorted(int(m[1]) for k in header
                   if (m := re.match(re.escape(UNET_PREFIX) + r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    first, out = shape("input_blocks.0.0.weight"), shape("out.2.weight")
    if not blocks or first is None or out is None:
        return None
    levels = len(downs) + 1
    if len(blocks) % levels or len(blocks) // levels < 2:
        return None
    lpb = len(blocks) // levels - 1
    widths, attends, context, linear = [], [], None, False
    for i in range(levels):
        res = shape(f"input_blocks.{1 + i * (lpb + 1)}.0.in_layers.2.weight")
        if res is None:
            return None
        widths.append(int(res[0]))
        proj = shape(f"input_blocks.{1 + i * (lpb + 1)}.1.proj_in.weight")
        attends.append(proj is not None)
        if proj is not None:
            linear = len(proj) == 2
            k = shape(f"input_blocks.{1 + i * (lpb + 1)}.1.transformer_blocks.0.attn2.to_k.weight")
            context = int(k[1]) if k else context
    cfg = dict(configs.UNET)
    cfg.update(in_channels=int(first[1]), out_channels=int(out[0]), block_out_channels=widths, layers_per_block=lpb,
               down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
               up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
               cross_attention_dim=context or cfg["cross_attention_dim"], use_linear_projection=linear,
               norm_num_groups=math.gcd(min(32, widths[0]), *widths))
    if isinstance(cfg["attention_head_dim"], int):  # heads do not change weight shapes: any that divides the widths
        cfg["attention_head_dim"] = math.gcd(cfg["attention_head_dim"], *widths)
    return cfg


def keymap_for_base(header: dict):
    """The key map of the SD 1.x base whose header this is (its own depth); None keeps the full-size map."""
    cfg = unet_config_of(header)
    from lorakit.models.sd15 import configs

    if cfg is None or cfg == configs.UNET:  # a full-size SD 1.x U-Net: the full-size map as it was
        return None
    from diffusers import UNet2DConditionModel

    from lorakit.models.base import init_kwargs

    with torch.device("meta"):
        unet = UNet2DConditionModel(**init_kwargs(cfg))
    return lora_keymap(unet, _meta_models()[1])



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
