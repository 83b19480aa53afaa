"""Every kohya LoRA module name a full-size SD 1.5 base accepts (`lorakit inspect`, export checks).

Built on the meta device from the shipped configs (no weights): the default UNet targets, LoCon convolutions and
CLIP-L's attention / MLP Linears, under sd-scripts' SD 1.x names.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def lora_key_universe() -> frozenset[str]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorakit.models.base import init_kwargs
    from lorakit.models.sd15 import configs
    from lorakit.models.sd15.adapter import kohya_name, text_encoder_lora_targets, unet_lora_targets

    te_cfg = {k: v for k, v in init_kwargs(configs.TEXT_ENCODER).items() if k != "torch_dtype"}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**init_kwargs(configs.UNET))
        te = CLIPTextModel(CLIPTextConfig(**te_cfg))
    names = {kohya_name("unet", p) for p in unet_lora_targets(unet, 1, conv_rank=1)}
    names |= {kohya_name("te1", p) for p in text_encoder_lora_targets(te, 1)}
    return frozenset(names)
