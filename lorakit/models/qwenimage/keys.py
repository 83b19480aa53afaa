"""The LoRA module names a full-size Qwen-Image accepts (``lorakit inspect``, export checks, the LoRA tools).

Derived from the transformer itself, built on the meta device from the shipped config. ComfyUI's key map for its
Qwen-Image model (comfy/lora.py ``model_lora_keys_unet``) gives, for every ``diffusion_model.<path>.weight``:
``lora_unet_<path with _>``, ``diffusion_model.<path>``, ``<path>``, ``transformer.<path>`` and
``lycoris_<path with _>``; diffusers' loader reads ``transformer.<path>``. Every Linear of the transformer is listed
(other trainers' LoRAs also target the modulation and embedding Linears lorakit leaves frozen)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


def _meta_transformer() -> Any:
    import torch
    from diffusers import QwenImageTransformer2DModel

    from . import configs
    cfg = {k: v for k, v in configs.transformer_config().items() if not k.startswith("_")}
    with torch.device("meta"):
        return QwenImageTransformer2DModel(**cfg)


def linear_paths(transformer: Any) -> list[str]:
    import torch
    return [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]


@lru_cache(maxsize=1)
def lora_key_universe() -> frozenset[str]:
    out: set[str] = set()
    for p in linear_paths(_meta_transformer()):
        out |= {"lora_unet_" + p.replace(".", "_"), f"diffusion_model.{p}", p, f"transformer.{p}",
                "lycoris_" + p.replace(".", "_")}
    return frozenset(out)


def lora_keymap(transformer: Any = None) -> Any:
    """The LoRA tools' :class:`~lorakit.lora.formats.keymap.FamilyKeys` of Qwen-Image: every Linear of the
    transformer under its one name (diffusers', ComfyUI's and the single file's are the same), with shapes."""
    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys

    transformer = _meta_transformer() if transformer is None else transformer
    named = dict(transformer.named_modules())
    mods = tuple(BaseModule("denoiser", p, (p,), int(named[p].out_features), int(named[p].in_features),
                            checkpoint_key=p + ".weight") for p in linear_paths(transformer))
    return FamilyKeys("qwenimage", mods, kohya_prefix={"denoiser": "lora_unet_"},
                      diffusers_prefix={"denoiser": "transformer."}, comfy_prefix={"denoiser": "diffusion_model."},
                      checkpoint_prefix={"denoiser": ""})


@lru_cache(maxsize=1)
def full_lora_keymap() -> Any:
    return lora_keymap()
