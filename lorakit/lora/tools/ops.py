"""resize, merge and extract on the canonical form (kohya name -> Pair); every result reports per module.

* resize: SVD of ΔW (from the factors, never the full matrix), keep a fixed or per-module rank; the module's
  scale alpha/rank is kept (alpha_new = scale · rank_new, as sd-scripts' resize_lora does), so ΔW_new is the
  best rank-r approximation of ΔW. Reported: kept energy ‖ΔW_r‖²/‖ΔW‖² per module.
* merge: Σ w_i ΔW_i, exactly by concatenation (rank Σ r_i, alpha = rank) or by SVD to a target rank.
* extract: the LoRA of rank r closest to (tuned − base) per module, with its relative error.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from lorakit.errors import LorakitError
from lorakit.lora.formats.fused import Pair
from lorakit.lora.tools.svd import choose_rank, energy, product_svd, split_factors


def check_rank(rank: Optional[int], tool: str) -> None:
    """A target rank below 1 is refused in one line (before any file is read, by the CLI): a LoRA of rank 0 or less
    is no LoRA (walk8: merge and extract wrote one)."""
    if rank is not None and rank < 1:
        raise LorakitError(f"{tool}: --rank must be ≥ 1, got {rank}")


def delta_norm2(pair: Pair) -> float:
    """‖ΔW‖² of a module from its factors (trace((UᵀU)(DDᵀ)), r×r products: no full matrix)."""
    up, down = pair.factors()
    return float(torch.trace((up.T @ up) @ (down @ down.T)).double())


def check_not_void(loras: Sequence[tuple[dict[str, Pair], float]], merged: dict[str, Pair]) -> None:
    """walk8: weights that are all 0, or that cancel (``A:1 A:-1``), merged into a LoRA that changes nothing, written
    without a word. Refused: Σ‖ΔW‖² of the result below 1e-10 of Σ w²‖ΔW_i‖² of the inputs."""
    if all(w == 0 for _, w in loras):
        raise LorakitError("merge: every weight is 0: the merged LoRA would change nothing; nothing written (check "
                           "the weights after ':')")
    given = sum(w * w * delta_norm2(p) for mods, w in loras for p in mods.values())
    if given == 0:
        raise LorakitError("merge: the LoRAs given change nothing (every ΔW is 0: untrained, or lora_up all zeros); "
                           "nothing written")
    if sum(delta_norm2(p) for p in merged.values()) <= 1e-10 * given:
        raise LorakitError("merge: the weighted LoRAs cancel out: the merged LoRA would change nothing; nothing "
                           "written (check the weights after ':')")


def _shape_down(pair: Pair, r: int) -> tuple[int, ...]:
    return (r, *pair.down.shape[1:])


def _shape_up(pair: Pair, r: int) -> tuple[int, ...]:
    return (pair.up.shape[0], r, *pair.up.shape[2:])


def resize(modules: dict[str, Pair], method: str, value: float) -> tuple[dict[str, Pair], list[dict[str, Any]]]:
    """``method`` "rank" (value = R) or sv_ratio / sv_fro / sv_cumulative (value = X)."""
    if method == "rank" and value < 1:
        raise LorakitError(f"resize: --rank must be ≥ 1, got {value:g}")
    top = max((p.rank for p in modules.values()), default=0)
    if method == "rank" and value >= top:
        raise LorakitError(f"resize: --rank {value:g} is not below the LoRA's rank (its modules have rank ≤ {top}): "
                           f"the file would not change; nothing written (choose --rank < {top})")
    if method in ("sv_fro", "sv_cumulative") and not 0 < value <= 1:
        raise LorakitError(f"resize: --dynamic {method}={value:g}: the fraction must be in (0, 1]")
    if method == "sv_ratio" and not 1 <= value < math.inf:  # walk8: nan and inf were taken (nan: rank 1 everywhere)
        raise LorakitError(f"resize: --dynamic sv_ratio={value:g}: the ratio must be a finite number ≥ 1")
    out: dict[str, Pair] = {}
    rows: list[dict[str, Any]] = []
    for name, p in modules.items():
        up, down = p.factors()
        u, s, vh = product_svd(up, down)
        r = choose_rank(s, method, value, p.rank)
        new_up, new_down = split_factors(u, s, vh, r, p.scale)
        out[name] = Pair(new_down.reshape(_shape_down(p, r)), new_up.reshape(_shape_up(p, r)), p.scale * r)
        rows.append({"module": name, "rank": p.rank, "new_rank": r, "energy": energy(s, r)})
    return out, rows


def _weighted(pair: Pair, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    up, down = pair.factors()
    return up * w, down


def merge(loras: Sequence[tuple[dict[str, Pair], float]], rank: Optional[int] = None
          ) -> tuple[dict[str, Pair], list[dict[str, Any]]]:
    """Σ w_i ΔW_i per module: concatenated (``rank`` None, exact) or SVD to ``rank`` (energy reported)."""
    check_rank(rank, "merge")
    names: list[str] = []
    for mods, _ in loras:
        names += [n for n in mods if n not in names]
    out: dict[str, Pair] = {}
    rows: list[dict[str, Any]] = []
    for name in names:
        ups, downs, template = [], [], None
        for mods, w in loras:
            p = mods.get(name)
            if p is None:
                continue
            if template is not None and (p.up.shape[0] != template.up.shape[0] or
                                         p.down.shape[1:] != template.down.shape[1:]):
                raise LorakitError(f"merge: {name} has shape {tuple(p.up.shape[:1])}x{tuple(p.down.shape[1:])} in "
                                   f"one LoRA and {tuple(template.up.shape[:1])}x{tuple(template.down.shape[1:])} "
                                   "in another; they are for different base models")
            template = template or p
            up, down = _weighted(p, w)
            ups.append(up)
            downs.append(down)
        assert template is not None
        up = torch.cat(ups, dim=1)
        down = torch.cat(downs, dim=0)
        total = down.shape[0]
        if rank is None:
            out[name] = Pair(down.reshape(_shape_down(template, total)), up.reshape(_shape_up(template, total)),
                             float(total))
            rows.append({"module": name, "rank": total, "energy": 1.0})
            continue
        u, s, vh = product_svd(up, down)
        r = min(rank, int(s.numel()))
        new_up, new_down = split_factors(u, s, vh, r, 1.0)
        out[name] = Pair(new_down.reshape(_shape_down(template, r)), new_up.reshape(_shape_up(template, r)), float(r))
        rows.append({"module": name, "rank": r, "energy": energy(s, r)})
    return out, rows


def extract_module(diff: torch.Tensor, rank: int, name: str) -> tuple[Pair, dict[str, Any]]:
    """Rank-``rank`` LoRA of a weight difference ([out, in] or [out, in, kh, kw]); alpha = rank (scale 1)."""
    check_rank(rank, "extract")
    d = diff.float().reshape(diff.shape[0], -1)
    limit = min(d.shape)
    if rank > limit:
        raise LorakitError(f"extract: --rank {rank} is larger than layer {name} ({d.shape[0]}x{d.shape[1]} allows "
                           f"at most {limit}); choose --rank ≤ {limit}")
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    u, s, vh = u.float(), s.float(), vh.float()
    up, down = split_factors(u, s, vh, rank, 1.0)
    norm = float(torch.linalg.norm(d))
    err = float(torch.linalg.norm(d - up @ down)) / norm if norm > 0 else 0.0
    if diff.dim() == 4:
        down = down.reshape(rank, *diff.shape[1:])
        up = up.reshape(diff.shape[0], rank, 1, 1)
    return Pair(down, up, float(rank)), {"module": name, "rank": rank, "rel_error": err, "energy": energy(s, rank),
                                         "diff_norm": norm}
