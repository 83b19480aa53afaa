"""SVD of a low-rank product without forming it, and the rank choices of `lorakit resize`."""

from __future__ import annotations


import torch


def product_svd(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of ``up @ down`` ([out, r] @ [r, in], float32) from two thin QRs and an r×r SVD: exact, and
    cheap for a 10240×1280 layer (the full matrix is never built)."""
    qu, ru = torch.linalg.qr(up.double())
    qd, rd = torch.linalg.qr(down.double().T)
    u, s, vh = torch.linalg.svd(ru @ rd.T)
    return (qu @ u).float(), s.float(), (vh @ qd.T).float()


def numerical_rank(s: torch.Tensor, rel: float = 1e-4) -> int:
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > s[0] * rel).sum())


def energy(s: torch.Tensor, r: int) -> float:
    """Fraction of ‖ΔW‖_F² kept by the first r singular values."""
    total = float((s.double() ** 2).sum())
    return 1.0 if total == 0 else float((s[:r].double() ** 2).sum()) / total


def choose_rank(s: torch.Tensor, method: str, value: float, max_rank: int) -> int:
    """Rank a module keeps. ``rank``: min(value, max_rank). ``sv_ratio``: singular values ≥ s_max / value.
    ``sv_fro``: fewest values whose Frobenius norm is ≥ value · ‖ΔW‖_F. ``sv_cumulative``: fewest values whose
    sum is ≥ value · Σs. Always ≥ 1 and ≤ ``max_rank``."""
    s = s.double()
    if method == "rank":
        r = int(value)
    elif float(s.sum()) == 0.0:
        r = 1
    elif method == "sv_ratio":
        r = int((s >= s[0] / value).sum())
    elif method == "sv_fro":
        frac = torch.sqrt(torch.cumsum(s ** 2, 0) / (s ** 2).sum())
        r = int(torch.searchsorted(frac, torch.tensor(value - 1e-12, dtype=frac.dtype))) + 1
    elif method == "sv_cumulative":
        frac = torch.cumsum(s, 0) / s.sum()
        r = int(torch.searchsorted(frac, torch.tensor(value - 1e-12, dtype=frac.dtype))) + 1
    else:
        raise ValueError(method)
    return max(1, min(r, max_rank, s.numel()))


def split_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, r: int, scale: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of rank r with up @ down · scale = U_r S_r Vh_r; the magnitude is shared (√s on each side)
    so neither factor under- or overflows in fp16."""
    root = torch.sqrt(s[:r] / scale) if scale > 0 else torch.sqrt(s[:r])
    return u[:, :r] * root, root[:, None] * vh[:r]


