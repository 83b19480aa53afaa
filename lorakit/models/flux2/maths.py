"""FLUX.2's rectified-flow maths, pure tensor functions. # moves to lorakit/diffusion

Training: x_σ = (1−σ)·x0 + σ·ε, target ε − x0, σ drawn by FLUX's samplers; ``flux_shift`` uses the number of image
tokens, which for FLUX.2 is latent h·w of the 128-channel (already 2×2-patchified) latent (musubi-tuner's
``flux2_shift``). Sampling: the FLUX.2 pipelines' schedule, σ = linspace(1, 1/n, n) time-shifted with the empirical μ
of ``compute_empirical_mu`` (a function of the token count and the step count), then 0.
Latent layout: the AE's 32-channel latent is patchified 2×2 into 128 channels and normalised per channel by the AE's
batch-norm statistics; tokens are the 128-vectors in row-major order with position ids (0, row, col, 0).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

SIGMA_MODES = ("uniform", "sigmoid", "logit_normal", "shift", "flux_shift")


# moves to lorakit/diffusion
def flow_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.to(torch.float32).reshape(-1, *([1] * (x0.ndim - 1))).to(x0.device)
    return ((1.0 - s) * x0.float() + s * noise.float()).to(x0.dtype)


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:  # moves to lorakit/diffusion
    return noise - x0


def flux_mu(seq_len: float, base_seq: int = 256, max_seq: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:  # moves to lorakit/diffusion
    return base_shift + (max_shift - base_shift) / (max_seq - base_seq) * (float(seq_len) - base_seq)


def time_shift(mu: float, sigma):  # moves to lorakit/diffusion
    """σ' = e^μ / (e^μ + 1/σ − 1), written k·σ / (1 + (k−1)·σ) with k = e^μ (no division by σ)."""
    k = math.exp(mu)
    return k * sigma / (1.0 + (k - 1.0) * sigma)


def sample_sigmas(batch: int, mode: str, generator: Optional[torch.Generator] = None, *, sigmoid_scale: float = 1.0,
                  logit_mean: float = 0.0, logit_std: float = 1.0, shift: float = 3.1582,
                  seq_len: Optional[int] = None) -> torch.Tensor:  # moves to lorakit/diffusion
    """σ ∈ (0, 1) per sample, float32 [batch] (the same draws as FLUX.1's samplers for the same generator)."""
    device = generator.device if generator is not None else torch.device("cpu")
    if mode == "uniform":
        return torch.rand((batch,), generator=generator, device=device, dtype=torch.float32)
    if mode not in SIGMA_MODES:
        raise ValueError(f"timestep_sampling must be one of {SIGMA_MODES}, got {mode!r}")
    normal = torch.randn((batch,), generator=generator, device=device, dtype=torch.float32)
    if mode == "logit_normal":
        return torch.sigmoid(logit_mean + logit_std * normal)
    s = torch.sigmoid(sigmoid_scale * normal)
    if mode == "sigmoid":
        return s
    if mode == "shift":
        return shift * s / (1.0 + (shift - 1.0) * s)
    if seq_len is None:
        raise ValueError("timestep_sampling 'flux_shift' needs seq_len (the number of image tokens)")
    return time_shift(flux_mu(seq_len), s)


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
