"""Z-Image LoRA targets and the two file layouts.

Targets: the attention (q, k, v, out) and feed-forward (w1, w2, w3) Linears of every ``ZImageTransformerBlock``: the
30 main blocks and the 2 + 2 refiners. The per-block modulation Linears (``adaLN_modulation.0``) and the embedders
are not trained (as diffusers' and musubi-tuner's Z-Image LoRAs). ``network.module_ranks`` types: ``attn``, ``ffn``.

ComfyUI layout (``save.format = "kohya"``): ``lora_unet_<original module path, dots as underscores>`` with
``lora_down`` / ``lora_up`` / ``alpha``. ComfyUI maps ``lora_unet_`` + the underscored path of every
``diffusion_model.*.weight`` of its Z-Image model (the original layout: fused ``attention.qkv``, ``attention.out``)
onto that weight, so q, k and v (trained on diffusers' split Linears) are fused into ``qkv`` exactly (block-diagonal
up, FLUX.1's fusing maths). diffusers' ``ZImageLoraLoaderMixin`` does not split a ``lora_unet_`` qkv, so files for
diffusers use the second layout.

diffusers layout: ``transformer.<diffusers path>.lora_A/lora_B.weight`` with alpha/rank folded into lora_B; ComfyUI
reads it too (its Z-Image key map has ``transformer.<diffusers path>`` for every Linear, q/k/v as slices of qkv).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lorakit.models.base import LoraModule
from lorakit.models.common import module_ranks

MODULE_TYPES = ("attn", "ffn")
ATTN = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
FFN = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def block_prefixes(n_layers: int, n_refiner: int) -> list[str]:
    return ([f"noise_refiner.{i}." for i in range(n_refiner)] + [f"context_refiner.{i}." for i in range(n_refiner)]
            + [f"layers.{i}." for i in range(n_layers)])


def module_table(n_layers: int, n_refiner: int) -> list[tuple[str, tuple[str, ...], str]]:
    """(original module, diffusers Linears it is made of, module type) for every trainable Linear."""
    out = []
    for b in block_prefixes(n_layers, n_refiner):
        out.append((f"{b}attention.qkv", tuple(f"{b}{p}" for p in ATTN[:3]), "attn"))
        out.append((f"{b}attention.out", (f"{b}attention.to_out.0",), "attn"))
        out.extend((f"{b}{p}", (f"{b}{p}",), "ffn") for p in FFN)
    return out


def transformer_targets(network: Any, n_layers: int, n_refiner: int) -> dict[str, int]:
    """diffusers module path -> rank, from NetworkCfg (rank, module_ranks)."""
    ranks = module_ranks(network, MODULE_TYPES, "Z-Image")
    out: dict[str, int] = {}
    for _orig, parts, kind in module_table(n_layers, n_refiner):
        rank = int(ranks.get(kind, network.rank))
        if rank:
            out.update(dict.fromkeys(parts, rank))
    return out


def kohya_name(original_module: str) -> str:
    return "lora_unet_" + original_module.replace(".", "_")


def to_comfy(lora: Mapping[str, Mapping[str, LoraModule]], out_features: Mapping[str, int], n_layers: int,
             n_refiner: int) -> dict[str, torch.Tensor]:
    """component -> path -> LoraModule  =>  ComfyUI Z-Image state dict (original names, q/k/v fused)."""
    from lorakit.models.kohya_pack import fuse, pack  # the exact fusing maths shared with FLUX.1
    unknown = sorted(set(lora) - {"transformer"})
    if unknown:
        raise ValueError(f"zimage export: unknown LoRA component {unknown[0]!r} (expected transformer)")
    trained = dict(lora.get("transformer", {}))
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for orig, parts, _kind in module_table(n_layers, n_refiner):
        mods = [trained.get(p) for p in parts]
        if all(m is None for m in mods):
            continue
        used.update(p for p in parts if p in trained)
        if len(parts) == 1:
            pack(out, kohya_name(orig), mods[0].down.float(), mods[0].up.float(), mods[0].alpha)
        else:
            down, up, alpha = fuse(mods, [int(out_features[p]) for p in parts])
            pack(out, kohya_name(orig), down, up, alpha)
    left = sorted(set(trained) - used)
    if left:
        raise ValueError(f"zimage export: LoRA on {left[0]!r} has no ComfyUI Z-Image name")
    return out


def to_diffusers(lora: Mapping[str, Mapping[str, LoraModule]]) -> dict[str, torch.Tensor]:
    """``transformer.<path>.lora_A/B.weight`` with alpha/rank folded into lora_B (exact in every loader)."""
    out: dict[str, torch.Tensor] = {}
    for comp, mods in lora.items():
        if comp != "transformer":
            raise ValueError(f"zimage export: unknown LoRA component {comp!r} (expected transformer)")
        for path, p in mods.items():
            scale = float(p.alpha) / p.down.shape[0]
            out[f"transformer.{path}.lora_A.weight"] = p.down.float().detach().clone().contiguous()
            out[f"transformer.{path}.lora_B.weight"] = (p.up.float() * scale).contiguous()
    return out


def comfy_module_names(n_layers: int, n_refiner: int) -> list[str]:
    """Every ComfyUI module name lorakit can export for a model of these depths, sorted."""
    return sorted(kohya_name(o) for o, _p, _k in module_table(n_layers, n_refiner))

