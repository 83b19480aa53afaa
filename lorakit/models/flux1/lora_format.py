"""FLUX.1 LoRA targets and export: diffusers module paths <-> kohya's fused BFL names.

lorakit trains LoRA on diffusers' *separate* q/k/v (and q/k/v/mlp) Linears. kohya, ComfyUI and Forge
expect one module per fused BFL Linear (``img_attn.qkv``, ``single_blocks.N.linear1``); the exact fusing
(:func:`lorakit.models.kohya_pack.fuse`) is shared with the other families that export fused modules.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lorakit.models.base import LoraModule
from lorakit.models.common import chosen_blocks, module_ranks
from lorakit.models.kohya_pack import fuse, pack

from .convert import module_table

MODULE_TYPES = ("img_attn", "txt_attn", "img_mlp", "txt_mlp", "img_mod", "txt_mod", "single", "single_mod")
CLIP_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                "mlp.fc2")


def transformer_targets(network: Any, num_double: int, num_single: int) -> dict[str, int]:
    """diffusers module path -> rank for the transformer, from NetworkCfg (blocks, indices, per-type ranks)."""
    ranks = module_ranks(network, MODULE_TYPES, "FLUX.1")
    chosen = chosen_blocks(network, num_double, num_single)
    out: dict[str, int] = {}
    for m in module_table(num_double, num_single, guidance=False):
        if not m.lora or not any(m.bfl.startswith(c) for c in chosen):
            continue
        rank = int(ranks.get(m.kind, network.rank))
        if rank == 0:
            continue
        for part in m.parts:
            out[part] = rank
    return out


def clip_targets(clip: torch.nn.Module, rank: int) -> dict[str, int]:
    """Every attention and MLP Linear of the CLIP-L encoder layers (kohya's 72 lora_te1_ modules)."""
    return {name: rank for name, mod in clip.named_modules()
            if isinstance(mod, torch.nn.Linear) and name.endswith(CLIP_TARGETS) and ".layers." in name}


# ----------------------------------------------------------------------------------------------- names

def kohya_name(bfl_module: str) -> str:
    return "lora_unet_" + bfl_module.replace(".", "_")


def te1_kohya_name(path: str) -> str:
    """CLIP-L path -> lora_te1_ name, with ``text_model`` put back (transformers >= 5.6 drops it)."""
    if not path.startswith("text_model."):
        path = "text_model." + path
    return "lora_te1_" + path.replace(".", "_")


def to_kohya(lora: Mapping[str, Mapping[str, LoraModule]], out_features: Mapping[str, int],
             num_double: int, num_single: int) -> dict[str, torch.Tensor]:
    """component -> path -> LoraModule  =>  kohya FLUX state dict (fused BFL names, lora_te1_ for CLIP-L).

    ``out_features`` gives the output width of every diffusers Linear (needed when a fused part is untrained).
    """
    unknown_comp = sorted(set(lora) - {"transformer", "te1"})
    if unknown_comp:
        raise ValueError(f"flux1 export: unknown LoRA component {unknown_comp[0]!r} (expected transformer, te1)")
    out: dict[str, torch.Tensor] = {}
    trained = dict(lora.get("transformer", {}))
    used: set[str] = set()
    for m in module_table(num_double, num_single, guidance=True):
        parts = [trained.get(p) for p in m.parts]
        if all(p is None for p in parts):
            continue
        used.update(p for p in m.parts if p in trained)
        if len(m.parts) == 1:
            p = parts[0]
            assert p is not None
            pack(out, kohya_name(m.bfl), p.down.float(), p.up.float(), p.alpha)
        else:
            down, up, alpha = fuse(parts, [int(out_features[p]) for p in m.parts])
            pack(out, kohya_name(m.bfl), down, up, alpha)
    left = sorted(set(trained) - used)
    if left:
        raise ValueError(f"flux1 export: LoRA on {left[0]!r} has no kohya FLUX name")
    for path, p in lora.get("te1", {}).items():
        pack(out, te1_kohya_name(path), p.down.float(), p.up.float(), p.alpha)
    return out


def to_diffusers(lora: Mapping[str, Mapping[str, LoraModule]]) -> dict[str, torch.Tensor]:
    """diffusers/PEFT names (``transformer.<path>.lora_A/B.weight``) with alpha/rank folded into lora_B.

    diffusers loads a file without alpha as scale 1, so folding makes the strength exact in every loader.
    """
    prefixes = {"transformer": "transformer.", "te1": "text_encoder."}
    out: dict[str, torch.Tensor] = {}
    for comp, mods in lora.items():
        if comp not in prefixes:
            raise ValueError(f"flux1 export: unknown LoRA component {comp!r} (expected transformer, te1)")
        for path, p in mods.items():
            scale = float(p.alpha) / p.down.shape[0]
            out[f"{prefixes[comp]}{path}.lora_A.weight"] = p.down.float().detach().clone().contiguous()
            out[f"{prefixes[comp]}{path}.lora_B.weight"] = (p.up.float() * scale).contiguous()
    return out


def kohya_module_names(num_double: int = 19, num_single: int = 38) -> list[str]:
    """The kohya FLUX block module names (304 for the full-size model), sorted."""
    return sorted(kohya_name(m.bfl) for m in module_table(num_double, num_single, False) if m.lora)

