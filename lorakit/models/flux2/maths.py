"""FLUX.2's rectified-flow maths, pure tensor functions (what it shares with FLUX.1 comes from lorakit.diffusion).

Training: x_σ = (1−σ)·x0 + σ·ε, target ε − x0, σ drawn by FLUX's samplers; ``flux_shift`` uses the number of image
tokens, which for FLUX.2 is latent h·w of the 128-channel (already 2×2-patchified) latent (musubi-tuner's
``flux2_shift``). Sampling: the FLUX.2 pipelines' schedule, σ = linspace(1, 1/n, n) time-shifted with the empirical μ
of ``compute_empirical_mu`` (a function of the token count and the step count), then 0.
Latent layout: the AE's 32-channel latent is patchified 2×2 into 128 channels and normalised per channel by the AE's
batch-norm statistics; tokens are the 128-vectors in row-major order with position ids (0, row, col, 0).
"""

from __future__ import annotations

import torch

# the rectified-flow maths FLUX.2 shares with FLUX.1 (checked identical: same draws, same values)
from lorakit.diffusion.objectives import SIGMA_MODES, flow_noise, flow_target, flux_mu, sample_sigmas  # noqa: F401
from lorakit.diffusion.objectives import flux_time_shift as time_shift  # noqa: F401


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """The FLUX.2 pipelines' μ for a token count and a step count (a fit BFL published; linear in the steps between
    the 10- and 200-step lines, the 200-step line alone above 4,300 tokens)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    m_200 = a2 * image_seq_len + b2
    m_10 = a1 * image_seq_len + b1
    a = (m_200 - m_10) / 190.0
    return float(a * num_steps + (m_200 - 200.0 * a))


def sample_schedule(num_steps: int, seq_len: int) -> torch.Tensor:
    """``num_steps + 1`` descending sigmas (float32) of the FLUX.2 pipelines, ending at 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    sig = time_shift(empirical_mu(seq_len, num_steps), base)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)


def patchify(z: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2] (channel-major, then the patch row, then the patch column)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    b, c, h, w = z.shape
    return z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h·w, C] tokens in row-major order."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).permute(0, 2, 1)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.permute(0, 2, 1).reshape(b, c, h, w)


def image_position_ids(h: int, w: int) -> torch.Tensor:
    """[h·w, 4] (t, row, col, l) = (0, i, j, 0), int64, row-major (``_prepare_latent_ids``)."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    zeros = torch.zeros_like(rows)
    return torch.stack([zeros, rows, cols, zeros], dim=1)
