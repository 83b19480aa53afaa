"""LoRA pairs, their ΔW, and the exact fusing / splitting of modules that one layout stores fused (FLUX.1 qkv,
linear1) and another splits (diffusers' to_q/to_k/to_v/proj_mlp).

A pair is (down [r, in(,kh,kw)], up [out, r(,1,1)], alpha or None); ΔW = (alpha / r) · up @ down, alpha None
meaning scale 1 (what ComfyUI, Forge and diffusers do without an alpha tensor).

Fusing parts p_i into one module is exact: down = [down_1; …; down_k] (stacked), up = blockdiag(c_i · up_i).
With one rank and one alpha a for all parts, c_i = 1 and alpha = k·a keeps the scale a / r (the rescaling
sd-scripts' split_qkv forgot, #2204); otherwise each part's scale is folded into its block (c_i = scale_i)
and alpha = total rank (scale 1). A missing part contributes zero rows.

Splitting is exact too: a block-diagonal up gives each part its own down rows and rank; otherwise every
part keeps the full down and its own rows of up (same ΔW, rank r per part). Parts that share one down are
fused back by stacking their ups (rank r, not k·r).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass
class Pair:
    down: torch.Tensor
    up: torch.Tensor
    alpha: Optional[float]

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    def delta(self) -> torch.Tensor:
        """ΔW in float32, shaped like the weight ([out, in] or [out, in, kh, kw])."""
        down = self.down.float().reshape(self.rank, -1)
        up = self.up.float().reshape(self.up.shape[0], -1)
        d = (up @ down) * self.scale
        if self.down.dim() == 4:
            return d.reshape(self.up.shape[0], *self.down.shape[1:])
        return d

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(up·scale [out, r], down [r, in·k·k]) in float32: ΔW (flattened) = product."""
        return (self.up.float().reshape(self.up.shape[0], -1) * self.scale,
                self.down.float().reshape(self.rank, -1))


def fuse(parts: Sequence[Optional[Pair]], out_sizes: Sequence[int]) -> Pair:
    present = [(i, p) for i, p in enumerate(parts) if p is not None]
    if not present:
        raise ValueError("fuse: no part to fuse")
    for i, p in present:
        if p.up.shape[0] != out_sizes[i]:
            raise ValueError(f"fuse: part {i} has {p.up.shape[0]} output rows, expected {out_sizes[i]}")
    if len(present) == len(parts) > 1 and all(torch.equal(p.down, present[0][1].down) for _, p in present[1:]):
        # every part shares one down (what splitting a non-block-diagonal module writes): stack the ups, keep rank r
        first = present[0][1]
        up = torch.cat([p.up.float().reshape(p.up.shape[0], -1) * (p.scale / first.scale) for _, p in present], 0)
        return Pair(first.down.float(), up, first.alpha)
    uniform = len({(p.rank, None if p.alpha is None else float(p.alpha)) for _, p in present}) == 1
    down = torch.cat([p.down.float().reshape(p.rank, -1) for _, p in present], dim=0)
    total = down.shape[0]
    up = torch.zeros(sum(out_sizes), total, dtype=torch.float32)
    starts = [sum(out_sizes[:i]) for i in range(len(out_sizes))]
    col = 0
    for i, p in present:
        c = 1.0 if uniform else p.scale
        up[starts[i]:starts[i] + out_sizes[i], col:col + p.rank] = p.up.float().reshape(p.up.shape[0], -1) * c
        col += p.rank
    first = present[0][1]
    if uniform:
        alpha = None if first.alpha is None and len(present) == 1 else (
            float(first.alpha if first.alpha is not None else first.rank) * len(present))
    else:
        alpha = float(total)
    shape_down = (total, *first.down.shape[1:])
    return Pair(down.reshape(shape_down), up, alpha)


def split(pair: Pair, out_sizes: Sequence[int]) -> list[Optional[Pair]]:
    """The parts of a fused pair (None for a part whose rows are all zero)."""
    if sum(out_sizes) != pair.up.shape[0]:
        raise ValueError(f"split: {pair.up.shape[0]} output rows, parts of {list(out_sizes)}")
    up = pair.up.float().reshape(pair.up.shape[0], -1)
    down = pair.down.float()
    starts = [sum(out_sizes[:i]) for i in range(len(out_sizes))]
    blocks = [up[s:s + n] for s, n in zip(starts, out_sizes)]
    used = [torch.nonzero(b.abs().sum(0) > 0).flatten() for b in blocks]
    disjoint = all(len(set(a.tolist()) & set(b.tolist())) == 0
                   for i, a in enumerate(used) for b in used[i + 1:])
    if not any(len(c) for c in used):  # an untrained (all-zero) module keeps its keys in every part
        return [Pair(down.clone(), b.clone(), pair.alpha) for b in blocks]
    out: list[Optional[Pair]] = []
    for block, cols in zip(blocks, used):
        if len(cols) == 0:
            out.append(None)
            continue
        if disjoint:
            r = len(cols)
            out.append(Pair(down[cols].clone(), block[:, cols].clone(), pair.scale * r))
        else:
            out.append(Pair(down.clone(), block.clone(), pair.alpha))
    return out
