"""Noise and loss options of issue 23 against their formulas (sd-scripts' definitions), through the seeded generator,
and on the SDXL adapter's noising."""

import math

import pytest
import torch

from lorakit.config.schema import TrainingCfg
from lorakit.diffusion import noise_options as nopt
from lorakit.diffusion.objectives import ddpm_alphas_cumprod, min_snr_weight


def test_multires_noise_is_the_pyramid_formula():
    noise = torch.randn(2, 4, 16, 12, generator=torch.Generator().manual_seed(1))
    got = nopt.multires_noise(noise, 3, 0.3, torch.Generator().manual_seed(5))
    # independent: the same draws in the documented order, each level upsampled with align_corners=False bilinear
    g = torch.Generator().manual_seed(5)
    acc = noise.double().clone()
    for i in range(3):
        r = 2 + 2 * torch.rand((), generator=g).item()
        hn, wn = max(1, int(16 / r ** i)), max(1, int(12 / r ** i))
        level = torch.randn(2, 4, hn, wn, generator=g).double()
        acc += torch.nn.functional.interpolate(level, size=(16, 12), mode="bilinear") * 0.3 ** i
        if hn == 1 or wn == 1:
            break
    expected = acc / acc.std()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert got.std().item() == pytest.approx(1.0, abs=1e-5)
    assert nopt.multires_noise(noise, 0, 0.3, torch.Generator()) is noise


def test_input_perturbation_and_debiased_weights():
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    xi = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    got = nopt.input_perturbation(noise, 0.1, torch.Generator().manual_seed(9))
    torch.testing.assert_close(got, noise + 0.1 * xi)
    ac = ddpm_alphas_cumprod(1000, 0.00085, 0.012)
    t = torch.tensor([0, 10, 500, 999])
    snr = [ac[i].item() / (1 - ac[i].item()) for i in t.tolist()]
    eps = nopt.debiased_weight(t, ac, "epsilon")
    v = nopt.debiased_weight(t, ac, "v_prediction")
    for k, s in enumerate(snr):
        s = min(s, 1000.0)
        assert eps[k].item() == pytest.approx(1 / math.sqrt(s), rel=1e-5)
        assert v[k].item() == pytest.approx(1 / (s + 1), rel=1e-5)
    # min-SNR for v-prediction: min(SNR, γ) / (SNR + 1)
    w = min_snr_weight(t, 5.0, ac, "v_prediction")
    for k, s in enumerate(snr):
        assert w[k].item() == pytest.approx(min(s, 5.0) / (s + 1), rel=1e-5)


def test_sdxl_noising_uses_them_in_order():
    """The adapter's noise(): x_t from ε + γ·ξ, the target ε (multires-noised), the weight × debiased weight."""
    from lorakit.models.sdxl.adapter import Adapter

    ad = Adapter.__new__(Adapter)  # the objective needs only the schedule
    ad._alphas_cumprod = ddpm_alphas_cumprod(1000, 0.00085, 0.012)
    tr = TrainingCfg()
    tr.multires_noise_iterations, tr.ip_noise_gamma, tr.debiased_estimation_loss = 2, 0.2, True
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    got = ad.noise(latents, noise, None, tr, torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)
    n = nopt.multires_noise(noise, 2, 0.3, g)
    t = torch.randint(0, 1000, (2,), generator=g)
    xi = torch.randn(2, 4, 8, 8, generator=g)
    a = ad._alphas_cumprod[t].view(2, 1, 1, 1).float()
    assert torch.equal(got.timesteps.cpu(), t)
    torch.testing.assert_close(got.model_input, a.sqrt() * latents + (1 - a).sqrt() * (n + 0.2 * xi))
    torch.testing.assert_close(got.target, n)
    torch.testing.assert_close(got.weight, nopt.debiased_weight(t, ad._alphas_cumprod, "epsilon"))
