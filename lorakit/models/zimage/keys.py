"""The LoRA module names a full-size Z-Image accepts (``lorakit inspect``, export checks).

Derived from the transformer itself, built on the meta device from the shipped config: ComfyUI's ``lora_unet_`` +
the underscored original path of each Linear weight (fused ``qkv``), ``diffusion_model.<original path>`` (its generic
form), and ``transformer.<diffusers path>`` / ``diffusion_model.<diffusers path>`` (ComfyUI's Z-Image key map and
diffusers' loader)."""

from __future__ import annotations

from functools import lru_cache

from . import configs


@lru_cache(maxsize=1)
def lora_key_universe() -> frozenset[str]:
    import torch
    from diffusers import ZImageTransformer2DModel

    from .convert import diffusers_to_original
    cfg = {k: v for k, v in configs.transformer_config().items() if not k.startswith("_")}
    with torch.device("meta"):
        model = ZImageTransformer2DModel(**cfg)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    original = {k.removesuffix(".weight") for k in diffusers_to_original(model.state_dict()) if k.endswith(".weight")
                and "norm" not in k.rsplit(".", 2)[-2]}
    return frozenset({"lora_unet_" + n.replace(".", "_") for n in original} | {f"diffusion_model.{n}" for n in original}
                     | {f"transformer.{n}" for n in linears} | {f"diffusion_model.{n}" for n in linears})
