"""Latent packing for patch-token transformers (FLUX-style 2×2 patches) and the position ids of the packed
tokens: pure tensor functions, no model knowledge."""

from __future__ import annotations

import torch


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, (H/2)·(W/2), C·4]: each 2×2 latent patch becomes one token (channel-major, then
    the patch row, then the patch column), in row-major patch order, as the FLUX transformer expects."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent height and width must be even to pack 2x2 patches, got {h}x{w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`; ``h``/``w`` are the latent (unpacked) height and width."""
    b, n, d = x.shape
    if h % 2 or w % 2 or n != (h // 2) * (w // 2) or d % 4:
        raise ValueError(f"cannot unpack [{b}, {n}, {d}] into a {h}x{w} latent")
    x = x.reshape(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_position_ids(h: int, w: int) -> torch.Tensor:
    """Position ids [(h/2)·(w/2), 3] of the packed tokens: (0, row, col) per patch (float32, as FLUX's RoPE
    takes them); ``h``/``w`` are the latent height and width."""
    if h % 2 or w % 2:
        raise ValueError(f"latent height and width must be even, got {h}x{w}")
    rows = torch.arange(h // 2, dtype=torch.float32).repeat_interleave(w // 2)
    cols = torch.arange(w // 2, dtype=torch.float32).repeat(h // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1)
