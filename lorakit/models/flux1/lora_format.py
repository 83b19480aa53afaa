"""FLUX.1 LoRA targets and export: diffusers module paths <-> kohya's fused BFL names.

lorakit trains LoRA on diffusers' *separate* q/k/v (and q/k/v/mlp) Linears. kohya, ComfyUI and Forge
expect one module per fused BFL Linear (``img_attn.qkv``, ``single_blocks.N.linear1``). Fusing is exact:

    down_fused = [down_1; ...; down_k]                 (stacked, [sum r_i, in])
    up_fused   = blockdiag(c_1 up_1, ..., c_k up_k)    ([sum out_i, sum r_i])

so ``up_fused @ down_fused`` places each part's ``c_i up_i @ down_i`` in its own output rows. When all
parts share rank r and alpha a, c_i = 1 and alpha_fused = k·a, so alpha_fused / (k·r) = a / r keeps the
trained strength (kohya's split_qkv forgot this rescaling). When ranks or alphas differ, each part's own
scale a_i / r_i is folded into its up block (c_i = a_i / r_i) and alpha_fused = sum r_i (scale 1).
A part that was not trained contributes zero output rows.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from lorakit.models.base import LoraModule
from lorakit.models.common import chosen_blocks, module_ranks

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


# ----------------------------------------------------------------------------------------------- fusing

def fuse(parts: list[Optional[LoraModule]], out_sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Fuse separately trained LoRA parts (None = untrained) into one (down, up, alpha); exact, see module doc."""
    present = [(i, p) for i, p in enumerate(parts) if p is not None]
    if not present:
        raise ValueError("fuse: no trained part")
    uniform = len({(p.down.shape[0], float(p.alpha)) for _, p in present}) == 1
    down = torch.cat([p.down.reshape(p.down.shape[0], -1).float() for _, p in present], dim=0)
    total_rank = down.shape[0]
    up = torch.zeros(sum(out_sizes), total_rank, dtype=torch.float32)
    row_start = [sum(out_sizes[:i]) for i in range(len(out_sizes))]
    col = 0
    for i, p in present:
        r = p.down.shape[0]
        if p.up.shape[0] != out_sizes[i]:
            raise ValueError(f"fuse: part {i} has {p.up.shape[0]} outputs, expected {out_sizes[i]}")
        c = 1.0 if uniform else float(p.alpha) / r
        up[row_start[i]:row_start[i] + out_sizes[i], col:col + r] = p.up.reshape(p.up.shape[0], -1).float() * c
        col += r
    alpha = float(present[0][1].alpha) * len(present) if uniform else float(total_rank)
    return down, up, alpha


def kohya_name(bfl_module: str) -> str:
    return "lora_unet_" + bfl_module.replace(".", "_")


def te1_kohya_name(path: str) -> str:
    """CLIP-L path -> lora_te1_ name, with ``text_model`` put back (transformers >= 5.6 drops it)."""
    if not path.startswith("text_model."):
        path = "text_model." + path
    return "lora_te1_" + path.replace(".", "_")


def _pack(out: dict[str, torch.Tensor], name: str, down: torch.Tensor, up: torch.Tensor, alpha: float) -> None:
    # fresh tensors: loaders (diffusers' kohya converter) scale in place; the trained LoRA must not change
    out[f"{name}.lora_down.weight"] = down.detach().clone().contiguous()
    out[f"{name}.lora_up.weight"] = up.detach().clone().contiguous()
    out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)


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
            _pack(out, kohya_name(m.bfl), p.down.float(), p.up.float(), p.alpha)
        else:
            down, up, alpha = fuse(parts, [int(out_features[p]) for p in m.parts])
            _pack(out, kohya_name(m.bfl), down, up, alpha)
    left = sorted(set(trained) - used)
    if left:
        raise ValueError(f"flux1 export: LoRA on {left[0]!r} has no kohya FLUX name")
    for path, p in lora.get("te1", {}).items():
        _pack(out, te1_kohya_name(path), p.down.float(), p.up.float(), p.alpha)
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

