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
    from lorakit.models.sdxl.adapter import kohya_name, text_encoder_lora_targets, unet_lora_targets

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
