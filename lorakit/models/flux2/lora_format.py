"""FLUX.2 LoRA targets and the two file layouts.

Targets: the Linears of the double blocks (image and text attention q/k/v and output, both MLPs) and of the single
blocks (the fused qkv+MLP input and the fused output). FLUX.2's modulation Linears are shared by all blocks and sit
outside them; they are not trained (as ai-toolkit, musubi-tuner and diffusers' Klein script).

ComfyUI layout (``save.format = "kohya"``): ``lora_unet_<BFL module path with dots as underscores>`` with
``lora_down`` / ``lora_up`` / ``alpha``. ComfyUI maps ``lora_unet_`` + the underscored path of every
``diffusion_model.*.weight`` of the loaded model onto that weight, so a name is valid exactly when it is the BFL
name of a Linear (``lora_key_universe``). The double blocks' q, k, v (trained separately on diffusers' split
Linears) are fused into BFL's ``qkv`` exactly as for FLUX.1 (block-diagonal up, see flux1/lora_format.py); single
blocks need no fusing (diffusers keeps ``to_qkv_mlp_proj`` fused). diffusers' ``Flux2LoraLoaderMixin`` reads the
same file (``_convert_kohya_flux2_lora_to_diffusers``).

diffusers layout: ``transformer.<diffusers path>.lora_A/lora_B.weight``, alpha/rank folded into lora_B.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lorakit.models.base import LoraModule
from lorakit.models.common import chosen_blocks, module_ranks

from .convert import DOUBLE_NAMES, SINGLE_NAMES

MODULE_TYPES = ("img_attn", "txt_attn", "img_mlp", "txt_mlp", "single")


def _kind(bfl: str) -> str:
    return bfl.split(".")[0] if "_" in bfl.split(".")[0] else "single"


def module_table(num_double: int, num_single: int) -> list[tuple[str, tuple[str, ...], str]]:
    """(BFL module, diffusers Linears it is made of, module type) for every trainable block Linear."""
    out = []
    for i in range(num_double):
        for bfl, parts in DOUBLE_NAMES.items():
            out.append((f"double_blocks.{i}.{bfl}", tuple(f"transformer_blocks.{i}.{p}" for p in parts), _kind(bfl)))
    for i in range(num_single):
        for bfl, parts in SINGLE_NAMES.items():
            out.append((f"single_blocks.{i}.{bfl}", tuple(f"single_transformer_blocks.{i}.{p}" for p in parts),
                        "single"))
    return out


def transformer_targets(network: Any, num_double: int, num_single: int) -> dict[str, int]:
    """diffusers module path -> rank, from NetworkCfg (train_blocks, block indices, module_ranks)."""
    ranks = module_ranks(network, MODULE_TYPES, "FLUX.2")
    chosen = chosen_blocks(network, num_double, num_single)
    out: dict[str, int] = {}
    for bfl, parts, kind in module_table(num_double, num_single):
        rank = int(ranks.get(kind, network.rank))
        if rank and any(bfl.startswith(c) for c in chosen):
            out.update(dict.fromkeys(parts, rank))
    return out


def kohya_name(bfl_module: str) -> str:
    return "lora_unet_" + bfl_module.replace(".", "_")


def to_comfy(lora: Mapping[str, Mapping[str, LoraModule]], out_features: Mapping[str, int], num_double: int,
             num_single: int) -> dict[str, torch.Tensor]:
    """component -> path -> LoraModule  =>  ComfyUI/kohya FLUX.2 state dict (BFL names, q/k/v fused)."""
    from lorakit.models.kohya_pack import fuse, pack  # the exact fusing maths shared with FLUX.1
    unknown = sorted(set(lora) - {"transformer"})
    if unknown:
        raise ValueError(f"flux2 export: unknown LoRA component {unknown[0]!r} (expected transformer)")
    trained = dict(lora.get("transformer", {}))
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for bfl, parts, _kind in module_table(num_double, num_single):
        mods = [trained.get(p) for p in parts]
        if all(m is None for m in mods):
            continue
        used.update(p for p in parts if p in trained)
        if len(parts) == 1:
            m = mods[0]
            pack(out, kohya_name(bfl), m.down.float(), m.up.float(), m.alpha)
        else:
            down, up, alpha = fuse(mods, [int(out_features[p]) for p in parts])
            pack(out, kohya_name(bfl), down, up, alpha)
    left = sorted(set(trained) - used)
    if left:
        raise ValueError(f"flux2 export: LoRA on {left[0]!r} has no ComfyUI FLUX.2 name")
    return out


def to_diffusers(lora: Mapping[str, Mapping[str, LoraModule]]) -> dict[str, torch.Tensor]:
    """``transformer.<path>.lora_A/B.weight`` with alpha/rank folded into lora_B (exact in every loader)."""
    out: dict[str, torch.Tensor] = {}
    for comp, mods in lora.items():
        if comp != "transformer":
            raise ValueError(f"flux2 export: unknown LoRA component {comp!r} (expected transformer)")
        for path, p in mods.items():
            scale = float(p.alpha) / p.down.shape[0]
            out[f"transformer.{path}.lora_A.weight"] = p.down.float().detach().clone().contiguous()
            out[f"transformer.{path}.lora_B.weight"] = (p.up.float() * scale).contiguous()
    return out


def comfy_module_names(num_double: int, num_single: int) -> list[str]:
    """Every ComfyUI/kohya module name lorakit can export for a model of these depths, sorted."""
    return sorted(kohya_name(bfl) for bfl, _parts, _kind in module_table(num_double, num_single))
