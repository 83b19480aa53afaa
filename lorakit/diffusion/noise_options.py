"""Noise and loss options users bring from sd-scripts (issue 23): multires (pyramid) noise, input-perturbation noise
(``ip_noise_gamma``) and the debiased-estimation loss weight. Pure tensor functions; every random number comes from
the generator passed in (the loop's seeded one), drawn on the host in a fixed order, so a seed gives the same run.

* Multires noise (sd-scripts' ``pyramid_noise_like``): for i = 0 … iterations−1, draw r_i = 2 + 2·u (u ~ U[0, 1)),
  then noise of size (max(1, ⌊h / r_iⁱ⌋), max(1, ⌊w / r_iⁱ⌋)) bilinearly upsampled to (h, w), weighted discountⁱ and
  added; stop after a 1-pixel level; finally divide by the standard deviation of the whole batch. (i = 0 adds a
  full-size noise of weight 1, as sd-scripts does.)
* Input perturbation (Ning et al. 2023): the noisy input is built from ε + γ·ξ (ξ ~ N(0, I)) while the target
  keeps ε.
* Debiased estimation (Yu et al. 2024): the per-sample loss weighted by 1/√SNR(t) for ε-prediction and
  1/(SNR(t) + 1) for v-prediction, with SNR capped at 1000 (sd-scripts' ``apply_debiased_estimation``).
"""

from __future__ import annotations

import torch

from lorakit.diffusion.objectives import snr
from lorakit.device import to_gpu


def multires_noise(noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator) -> torch.Tensor:
    """Pyramid noise over ``noise`` [B, C, h, w] (the draws on the host, from ``generator``)."""
    if iterations <= 0:
        return noise
    b, c, h, w = noise.shape
    out = noise.float()
    for i in range(iterations):
        r = 2.0 + 2.0 * float(torch.rand((), generator=generator))
        hn, wn = max(1, int(h / (r ** i))), max(1, int(w / (r ** i)))
        level = to_gpu(torch.randn(b, c, hn, wn, generator=generator), noise.device)
        out = out + torch.nn.functional.interpolate(level, size=(h, w), mode="bilinear") * (discount ** i)
        if hn == 1 or wn == 1:
            break
    return (out / out.std()).to(noise.dtype)


def input_perturbation(noise: torch.Tensor, gamma: float, generator: torch.Generator) -> torch.Tensor:
    """ε + γ·ξ, the noise that builds the noisy input (the target keeps ε); ``noise`` itself when γ = 0."""
    if gamma <= 0:
        return noise
    xi = to_gpu(torch.randn(noise.shape, generator=generator), noise.device)
    return (noise.float() + gamma * xi).to(noise.dtype)


def debiased_weight(t: torch.Tensor, alphas_cumprod: torch.Tensor, prediction: str) -> torch.Tensor:
    """[B] weights 1/√min(SNR, 1000) (ε) or 1/(min(SNR, 1000) + 1) (v)."""
    s = torch.clamp(snr(t, alphas_cumprod), max=1000.0)
    if prediction == "epsilon":
        return 1.0 / torch.sqrt(s)
    if prediction == "v_prediction":
        return 1.0 / (s + 1.0)
    raise ValueError(f"prediction must be 'epsilon' or 'v_prediction', got {prediction!r}")


def scheduler_alphas(scheduler_config: dict) -> torch.Tensor:
    """ᾱ_t of a diffusers scaled-linear scheduler config (SD 1.x / SDXL defaults where a key is absent)."""
    from lorakit.diffusion.objectives import ddpm_alphas_cumprod

    return ddpm_alphas_cumprod(scheduler_config.get("num_train_timesteps", 1000),
                               scheduler_config.get("beta_start", 0.00085), scheduler_config.get("beta_end", 0.012))


def ddpm_noised(latents: torch.Tensor, noise: torch.Tensor, training, generator: torch.Generator,
                alphas_cumprod: torch.Tensor, prediction: str) -> tuple[torch.Tensor, ...]:
    """The DDPM training input of the SD families: t ~ U[min_timestep, max_timestep), noise offset, multires noise,
    x_t (from ε + γ·ξ with ip_noise_gamma), the ε or v target, min-SNR-γ and debiased-estimation weights. Options a
    family does not offer stay at their off values and draw nothing. Returns (x_t, t, target, weight)."""
    from lorakit.diffusion import objectives as obj

    ac = alphas_cumprod
    noise = obj.apply_noise_offset(noise, float(getattr(training, "noise_offset", 0.0)), generator)
    noise = multires_noise(noise, int(getattr(training, "multires_noise_iterations", 0)),
                           float(getattr(training, "multires_noise_discount", 0.3)), generator)
    t = obj.sample_timesteps_uniform(latents.shape[0], int(training.min_timestep), int(training.max_timestep),
                                     generator)
    t = to_gpu(t, latents.device)
    x_t = obj.ddpm_add_noise(latents, input_perturbation(noise, float(getattr(training, "ip_noise_gamma", 0.0)),
                                                         generator), t, ac)
    target = obj.ddpm_target(latents, noise, t, ac, prediction)
    gamma = float(getattr(training, "min_snr_gamma", 0.0))
    weight = (obj.min_snr_weight(t, gamma, ac, prediction) if gamma > 0
              else torch.ones(latents.shape[0], device=latents.device))
    if getattr(training, "debiased_estimation_loss", False):
        weight = weight * debiased_weight(t, ac, prediction)
    return x_t, t, target, weight
