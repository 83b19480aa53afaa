"""kohya's fused LoRA modules: one (lora_down, lora_up, alpha) triple for a fused Linear, made exactly from LoRAs
trained on the separate Linears it is built of (FLUX.1, FLUX.2, SD3 and Z-Image export through this).

lorakit trains LoRA on diffusers' *separate* q/k/v (and q/k/v/mlp) Linears; kohya, ComfyUI and Forge expect one
module per fused original Linear (FLUX's ``img_attn.qkv``, ``single_blocks.N.linear1``). Fusing is exact:

    down_fused = [down_1; ...; down_k]                 (stacked, [sum r_i, in])
    up_fused   = blockdiag(c_1 up_1, ..., c_k up_k)    ([sum out_i, sum r_i])

so ``up_fused @ down_fused`` places each part's ``c_i up_i @ down_i`` in its own output rows. When all
parts share rank r and alpha a, c_i = 1 and alpha_fused = k·a, so alpha_fused / (k·r) = a / r keeps the
trained strength (kohya's split_qkv forgot this rescaling). When ranks or alphas differ, each part's own
scale a_i / r_i is folded into its up block (c_i = a_i / r_i) and alpha_fused = sum r_i (scale 1).
A part that was not trained contributes zero output rows.

* :func:`fuse`: the parts -> (down, up, alpha).
* :func:`pack`: write one ``<name>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` triple.
"""

from __future__ import annotations

from typing import Optional

import torch

from lorakit.models.base import LoraModule

__all__ = ["fuse", "pack"]


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


def pack(out: dict[str, torch.Tensor], name: str, down: torch.Tensor, up: torch.Tensor, alpha: float) -> None:
    """Put ``<name>.lora_down.weight``, ``.lora_up.weight`` and ``.alpha`` (float32 scalar) into ``out``."""
    # fresh tensors: loaders (diffusers' kohya converter) scale in place; the trained LoRA must not change
    out[f"{name}.lora_down.weight"] = down.detach().clone().contiguous()
    out[f"{name}.lora_up.weight"] = up.detach().clone().contiguous()
    out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
