"""The training objectives as pure tensor functions: noise schedules, timestep/sigma sampling, targets, losses.

Nothing here knows about configs, models or families: every function takes plain tensors and numbers and
returns tensors, so each one can be checked against its closed-form formula on the CPU
(``tests/unit/test_objectives.py``). Families compose these in their adapter's ``noise()``.

Two objectives are covered:

* **DDPM** (SDXL): 1000 discrete steps, scaled-linear betas, x_t = √ᾱ·x0 + √(1−ᾱ)·ε, target ε or
  v = √ᾱ·ε − √(1−ᾱ)·x0, optional noise offset and min-SNR-γ weighting.
* **Rectified flow** (FLUX.1): x_σ = (1−σ)·x0 + σ·ε, target ε − x0, σ drawn by one of several samplers
  (latent packing: :mod:`lorakit.diffusion.packing`).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import torch

from lorakit.device import to_gpu

Prediction = Literal["epsilon", "v_prediction"]
SigmaMode = Literal["uniform", "sigmoid", "logit_normal", "shift", "flux_shift"]
LossKind = Literal["l2", "l1", "huber"]

SIGMA_MODES: tuple[str, ...] = ("uniform", "sigmoid", "logit_normal", "shift", "flux_shift")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] tensor to [B, 1, 1, ...] so it broadcasts against ``like`` (any rank)."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1))).to(device=like.device)


# --------------------------------------------------------------------------------------------------- DDPM


def ddpm_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ᾱ_t for the scaled-linear schedule SD/SDXL were trained with: β = linspace(√β0, √β1)², ᾱ = Π(1−β).

    Computed in float64 (the cumulative product loses digits in float32), returned as ``dtype``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(dtype)


def sample_timesteps_uniform(batch: int, min_t: int, max_t: int,
                             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Integer timesteps uniform in [min_t, max_t) (max exclusive, as kohya), shape [batch], int64."""
    if not 0 <= min_t < max_t:
        raise ValueError(f"need 0 <= min_t < max_t, got min_t={min_t}, max_t={max_t}")
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(min_t, max_t, (batch,), generator=generator, device=device, dtype=torch.long)


def _gather_alphas(t: torch.Tensor, alphas_cumprod: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t for integer timesteps t, as float32 broadcastable against ``like``."""
    a = to_gpu(alphas_cumprod, t.device)[t.long()].to(torch.float32)
    return _per_sample(a, like)


def ddpm_add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t · x0 + √(1−ᾱ_t) · ε (the forward process q(x_t | x0)), in x0's dtype."""
    a = _gather_alphas(t, alphas_cumprod, x0)
    out = a.sqrt() * x0.float() + (1.0 - a).sqrt() * noise.float()
    return out.to(x0.dtype)


def ddpm_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
                prediction: Prediction) -> torch.Tensor:
    """What the denoiser must predict: ε, or the velocity v = √ᾱ·ε − √(1−ᾱ)·x0 (v-prediction models)."""
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        a = _gather_alphas(t, alphas_cumprod, x0)
        return (a.sqrt() * noise.float() - (1.0 - a).sqrt() * x0.float()).to(noise.dtype)
    raise ValueError(f"prediction must be 'epsilon' or 'v_prediction', got {prediction!r}")


def apply_noise_offset(noise: torch.Tensor, offset: float,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """noise + offset · N(0,1) drawn once per (sample, channel): lets the model learn overall brightness."""
    if offset == 0:
        return noise
    shape = (noise.shape[0], noise.shape[1]) + (1,) * (noise.ndim - 2)
    device = generator.device if generator is not None else noise.device
    extra = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return (noise.float() + offset * to_gpu(extra, noise.device)).to(noise.dtype)


def snr(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at integer timesteps t, float32 [B]."""
    a = to_gpu(alphas_cumprod, t.device, torch.float64)[t.long()]
    return (a / (1.0 - a)).to(torch.float32)


def min_snr_weight(t: torch.Tensor, gamma: float, alphas_cumprod: torch.Tensor,
                   prediction: Prediction) -> torch.Tensor:
    """Min-SNR-γ loss weights [B] (Hang et al. 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR+1) for v.

    The v form follows from v-loss = (SNR+1)·ε-loss, so both weight the same underlying x0 error.
    """
    s = snr(t, alphas_cumprod)
    clipped = torch.clamp(s, max=gamma)
    if prediction == "epsilon":
        return clipped / s
    if prediction == "v_prediction":
        return clipped / (s + 1.0)
    raise ValueError(f"prediction must be 'epsilon' or 'v_prediction', got {prediction!r}")


# -------------------------------------------------------------------------------------- rectified flow


def flow_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x0 + σ·ε: the straight path from data (σ=0) to noise (σ=1), in x0's dtype."""
    s = _per_sample(sigma.to(torch.float32), x0)
    return ((1.0 - s) * x0.float() + s * noise.float()).to(x0.dtype)


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity d x_σ / dσ = ε − x0 (constant along the path)."""
    return noise - x0


def flux_mu(seq_len: Union[int, float], base_seq: int = 256, max_seq: int = 4096,
            base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift μ: the line through (base_seq, base_shift) and (max_seq, max_shift).

    Larger images (more packed tokens) keep more signal at a given σ, so their σ is pushed towards noise.
    """
    slope = (max_shift - base_shift) / (max_seq - base_seq)
    return base_shift + slope * (float(seq_len) - base_seq)


def flux_time_shift(mu: float, sigma: Union[torch.Tensor, float]) -> Union[torch.Tensor, float]:
    """σ' = e^μ / (e^μ + 1/σ − 1), FLUX's time shift; σ=0 maps to 0, σ=1 to 1.

    Evaluated in the algebraically equal form k·σ / (1 + (k−1)·σ) with k = e^μ, which needs no 1/σ.
    """
    k = math.exp(mu)
    return k * sigma / (1.0 + (k - 1.0) * sigma)


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = k·σ / (1 + (k−1)·σ): the SD3/FLUX discrete-flow shift; monotone, fixes 0 and 1."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sample_sigmas(batch: int, mode: SigmaMode, generator: Optional[torch.Generator] = None, *,
                  sigmoid_scale: float = 1.0, logit_mean: float = 0.0, logit_std: float = 1.0,
                  shift: float = 3.1582, seq_len: Optional[int] = None) -> torch.Tensor:
    """Draw σ ∈ (0, 1) per sample, float32 [batch].

    Modes: ``uniform`` U(0,1); ``sigmoid`` sigmoid(scale·N); ``logit_normal`` sigmoid(mean + std·N);
    ``shift`` the sigmoid sample shifted by k = ``shift``; ``flux_shift`` the sigmoid sample time-shifted
    with μ = :func:`flux_mu` (``seq_len`` = packed image tokens, required).
    """
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
        return shift_sigma(s, shift)
    if seq_len is None:
        raise ValueError("timestep_sampling 'flux_shift' needs seq_len (the number of packed image tokens)")
    return flux_time_shift(flux_mu(seq_len), s)


def flow_schedule(num_steps: int, seq_len: Optional[int] = None, shift: Optional[float] = None) -> torch.Tensor:
    """Descending sigmas for Euler sampling: ``num_steps + 1`` values from 1 to 0 (float32).

    With ``seq_len`` the FLUX resolution-dependent time shift is applied; otherwise with ``shift`` the fixed
    k-shift; with neither the schedule is linear. Passing both is ambiguous and refused.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if seq_len is not None and shift is not None:
        raise ValueError("flow_schedule: give seq_len (FLUX dynamic shift) or shift, not both")
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    if seq_len is not None:
        sigmas = flux_time_shift(flux_mu(seq_len), sigmas)
    elif shift is not None:
        sigmas = shift_sigma(sigmas, shift)
    return sigmas.to(torch.float32)


# ------------------------------------------------------------------------------------------------ loss


def loss_per_sample(pred: torch.Tensor, target: torch.Tensor, kind: LossKind = "l2",
                    huber_c: float = 0.1, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample loss [B] in float32, averaged over every non-batch dimension.

    ``mask`` ([B, 1, h, w] in [0, 1], latent resolution): each element's loss is multiplied by it before the mean
    (sd-scripts' masked loss: the mean still runs over every element, so a half-masked image weighs half).

    ``l2`` (d²), ``l1`` (|d|) or ``huber`` (pseudo-Huber 2c(√(d²+c²) − c): quadratic near 0, linear far out,
    so a few outlier pixels do not dominate).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    d = pred.float() - target.float()
    if kind == "l2":
        elem = d * d
    elif kind == "l1":
        elem = d.abs()
    elif kind == "huber":
        elem = 2.0 * huber_c * (torch.sqrt(d * d + huber_c * huber_c) - huber_c)
    else:
        raise ValueError(f"loss must be 'l2', 'l1' or 'huber', got {kind!r}")
    if mask is not None:
        if elem.dim() != 4 or tuple(mask.shape[-2:]) != tuple(elem.shape[-2:]):
            raise ValueError(f"a loss mask {tuple(mask.shape)} needs a [B, C, h, w] prediction of its size, got "
                             f"{tuple(elem.shape)}")
        elem = elem * mask.to(elem.device, elem.dtype)
    return elem.reshape(elem.shape[0], -1).mean(dim=1)


def weighted_mean(per_sample: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean_b(loss_b · w_b), a scalar. Weights multiply (kohya's convention), they are not renormalised,
    so a batch of prior-loss-weighted samples contributes proportionally less."""
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights.to(per_sample.device, per_sample.dtype)).mean()
