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


# ------------------------------------------------------------------------------- LoRA tools' key map

def lora_keymap(transformer=None):
    """The LoRA tools' :class:`~lorakit.lora.formats.keymap.FamilyKeys` of Z-Image: every Linear of the transformer
    (the blocks' attention, feed-forward and modulation, the refiners, the embedders and the final layer) under its
    original name (the fused ``attention.qkv`` with diffusers' to_q / to_k / to_v as its three parts) and its
    diffusers path, with shapes and single-file keys. Without a model, the full-size one is built on the meta
    device."""
    import torch

    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys

    from .convert import module_original_name

    if transformer is None:
        from diffusers import ZImageTransformer2DModel
        cfg = {k: v for k, v in configs.transformer_config().items() if not k.startswith("_")}
        with torch.device("meta"):
            transformer = ZImageTransformer2DModel(**cfg)
    groups: dict[str, list[tuple[str, torch.nn.Linear]]] = {}
    for path, mod in transformer.named_modules():
        if isinstance(mod, torch.nn.Linear):
            groups.setdefault(module_original_name(path), []).append((path, mod))
    mods = []
    order = {"to_q": 0, "to_k": 1, "to_v": 2}
    for native, parts in sorted(groups.items()):
        parts.sort(key=lambda pm: order.get(pm[0].rsplit(".", 1)[-1], 0))
        mods.append(BaseModule("denoiser", native, tuple(p for p, _ in parts), sum(int(m.out_features) for _, m in parts),
                               int(parts[0][1].in_features), parts_rule="equal" if len(parts) == 3 else "",
                               checkpoint_key=native + ".weight"))
    return FamilyKeys("zimage", tuple(mods), kohya_prefix={"denoiser": "lora_unet_"},
                      diffusers_prefix={"denoiser": "transformer."}, comfy_prefix={"denoiser": "diffusion_model."},
                      checkpoint_prefix={"denoiser": ""})


@lru_cache(maxsize=1)
def full_lora_keymap():
    return lora_keymap()
