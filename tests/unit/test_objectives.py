"""Objectives vs closed forms computed independently (numpy float64, explicit loops)."""

import math

import numpy as np
import pytest
import torch

from lorakit.diffusion import objectives as ob
from lorakit.diffusion import packing as pk


def _np_alphas(n=1000, b0=0.00085, b1=0.012):
    betas = np.array([(math.sqrt(b0) + i * (math.sqrt(b1) - math.sqrt(b0)) / (n - 1)) ** 2 for i in range(n)])
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return np.array(out)


def test_alphas_cumprod_matches_scaled_linear_product():
    ac = ob.ddpm_alphas_cumprod(dtype=torch.float64).numpy()
    ref = _np_alphas()
    assert ac.shape == (1000,)
    np.testing.assert_allclose(ac, ref, rtol=1e-12)
    assert ac[0] == pytest.approx(1 - 0.00085, rel=1e-12)
    # diffusers' DDPMScheduler (float32 betas) agrees to float32 precision
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    np.testing.assert_allclose(ac, sched.alphas_cumprod.double().numpy(), rtol=2e-5)
    assert ac[-1] == pytest.approx(0.00466, rel=1e-3)


def test_timesteps_uniform_range_and_mean():
    g = torch.Generator().manual_seed(0)
    t = ob.sample_timesteps_uniform(20000, 100, 300, g)
    assert t.dtype == torch.long and t.min() >= 100 and t.max() <= 299
    assert t.max() == 299 and t.min() == 100
    assert t.float().mean().item() == pytest.approx(199.5, abs=1.5)
    with pytest.raises(ValueError):
        ob.sample_timesteps_uniform(2, 5, 5, g)


def test_ddpm_add_noise_and_targets():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    ac64 = _np_alphas()
    ac = torch.from_numpy(ac64)
    xt = ob.ddpm_add_noise(x0, eps, t, ac)
    for i, ti in enumerate(t.tolist()):
        a = ac64[ti]
        ref = math.sqrt(a) * x0[i].numpy() + math.sqrt(1 - a) * eps[i].numpy()
        np.testing.assert_allclose(xt[i].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(ob.ddpm_target(x0, eps, t, ac, "epsilon"), eps)
    v = ob.ddpm_target(x0, eps, t, ac, "v_prediction")
    for i, ti in enumerate(t.tolist()):
        a = ac64[ti]
        ref = math.sqrt(a) * eps[i].numpy() - math.sqrt(1 - a) * x0[i].numpy()
        np.testing.assert_allclose(v[i].numpy(), ref, rtol=1e-5, atol=1e-6)
    # v identity: x0 = √ᾱ·x_t − √(1−ᾱ)·v, and ε = √(1−ᾱ)·x_t + √ᾱ·v
    a = torch.from_numpy(ac64[t.numpy()]).reshape(3, 1, 1, 1)
    torch.testing.assert_close(a.sqrt() * xt - (1 - a).sqrt() * v, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((1 - a).sqrt() * xt + a.sqrt() * v, eps, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        ob.ddpm_target(x0, eps, t, ac, "flow")


def test_noise_offset_is_per_channel_constant():
    noise = torch.zeros(2, 3, 4, 4)
    g = torch.Generator().manual_seed(2)
    out = ob.apply_noise_offset(noise, 0.1, g)
    g2 = torch.Generator().manual_seed(2)
    expected = 0.1 * torch.randn(2, 3, 1, 1, generator=g2)
    torch.testing.assert_close(out, expected.expand(2, 3, 4, 4))
    assert torch.equal(ob.apply_noise_offset(noise, 0.0, g), noise)


def test_snr_and_min_snr_weights():
    ac64 = _np_alphas()
    ac = torch.from_numpy(ac64).float()
    t = torch.tensor([10, 200, 600, 999])
    s = ac64[t.numpy()] / (1 - ac64[t.numpy()])
    np.testing.assert_allclose(ob.snr(t, ac).numpy(), s, rtol=1e-4)
    gamma = 5.0
    w_eps = ob.min_snr_weight(t, gamma, ac, "epsilon").numpy()
    w_v = ob.min_snr_weight(t, gamma, ac, "v_prediction").numpy()
    np.testing.assert_allclose(w_eps, np.minimum(s, gamma) / s, rtol=1e-4)
    np.testing.assert_allclose(w_v, np.minimum(s, gamma) / (s + 1), rtol=1e-4)
    # high-noise timesteps (SNR < γ) are not down-weighted for ε
    assert s[-1] < gamma and w_eps[-1] == pytest.approx(1.0)
    assert s[0] > gamma and w_eps[0] == pytest.approx(gamma / s[0], rel=1e-4)


def test_flow_noise_and_target():
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    sigma = torch.tensor([0.0, 0.25])
    xs = ob.flow_noise(x0, eps, sigma)
    torch.testing.assert_close(xs[0], x0[0])
    torch.testing.assert_close(xs[1], 0.75 * x0[1] + 0.25 * eps[1])
    torch.testing.assert_close(ob.flow_target(x0, eps), eps - x0)
    # the target is the derivative of x_σ in σ
    d = (ob.flow_noise(x0, eps, torch.full((2,), 0.6)) - ob.flow_noise(x0, eps, torch.full((2,), 0.5))) / 0.1
    torch.testing.assert_close(d, eps - x0, rtol=1e-3, atol=1e-3)


def test_flux_mu_and_time_shift():
    assert ob.flux_mu(256) == pytest.approx(0.5)
    assert ob.flux_mu(4096) == pytest.approx(1.15)
    assert ob.flux_mu(1024) == pytest.approx(0.5 + 0.65 * 768 / 3840)
    for s in (0.1, 0.5, 0.9):
        mu = 0.8
        assert ob.flux_time_shift(mu, s) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / s - 1))
    t = ob.flux_time_shift(0.5, torch.tensor([0.0, 1.0]))
    assert t.tolist() == [0.0, 1.0]


def _normals(seed, n):
    return torch.randn((n,), generator=torch.Generator().manual_seed(seed))


def test_sample_sigmas_modes():
    n = 20000
    u = ob.sample_sigmas(n, "uniform", torch.Generator().manual_seed(4))
    assert 0 <= u.min() and u.max() < 1 and u.mean().item() == pytest.approx(0.5, abs=0.01)
    s = ob.sample_sigmas(n, "sigmoid", torch.Generator().manual_seed(5), sigmoid_scale=2.0)
    torch.testing.assert_close(s, torch.sigmoid(2.0 * _normals(5, n)))
    assert s.mean().item() == pytest.approx(0.5, abs=0.01)
    ln = ob.sample_sigmas(n, "logit_normal", torch.Generator().manual_seed(6), logit_mean=1.0, logit_std=0.5)
    logit = torch.log(ln / (1 - ln))
    assert logit.mean().item() == pytest.approx(1.0, abs=0.02)
    assert logit.std().item() == pytest.approx(0.5, abs=0.02)


def test_shift_mode_is_monotone_map_of_sigmoid_sample():
    n = 1000
    base = ob.sample_sigmas(n, "sigmoid", torch.Generator().manual_seed(7))
    sh = ob.sample_sigmas(n, "shift", torch.Generator().manual_seed(7), shift=3.0)
    np.testing.assert_allclose(sh.numpy(), (3 * base / (1 + 2 * base)).numpy(), rtol=1e-6)
    assert (sh >= base - 1e-7).all()  # k > 1 pushes towards noise
    order = torch.argsort(base)
    assert (torch.diff(sh[order]) >= 0).all()


def test_flux_shift_at_256_tokens_is_time_shift_mu_half():
    n = 1000
    base = ob.sample_sigmas(n, "sigmoid", torch.Generator().manual_seed(8))
    fs = ob.sample_sigmas(n, "flux_shift", torch.Generator().manual_seed(8), seq_len=256)
    ref = math.exp(0.5) / (math.exp(0.5) + 1 / base.double() - 1)
    np.testing.assert_allclose(fs.numpy(), ref.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="seq_len"):
        ob.sample_sigmas(2, "flux_shift", None)
    with pytest.raises(ValueError):
        ob.sample_sigmas(2, "cosmap", None)


def test_flow_schedule():
    lin = ob.flow_schedule(4)
    torch.testing.assert_close(lin, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    fx = ob.flow_schedule(4, seq_len=4096)
    k = math.exp(1.15)
    ref = [k * s / (1 + (k - 1) * s) for s in (1.0, 0.75, 0.5, 0.25, 0.0)]
    np.testing.assert_allclose(fx.numpy(), ref, rtol=1e-6)
    assert (torch.diff(fx) < 0).all() and fx[0] == 1 and fx[-1] == 0
    sh = ob.flow_schedule(2, shift=3.0)
    np.testing.assert_allclose(sh.numpy(), [1.0, 0.75, 0.0], rtol=1e-6)


def test_pack_unpack_roundtrip_and_explicit_loop():
    x = torch.randn(2, 3, 4, 6)
    p = pk.pack_latents(x)
    assert p.shape == (2, 6, 12)
    ref = torch.empty(2, 6, 12)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                feats = [x[b, ch, 2 * r + dy, 2 * c + dx] for ch in range(3) for dy in range(2) for dx in range(2)]
                ref[b, r * 3 + c] = torch.stack(feats)
    assert torch.equal(p, ref)
    assert torch.equal(pk.unpack_latents(p, 4, 6), x)
    with pytest.raises(ValueError):
        pk.pack_latents(torch.zeros(1, 1, 3, 4))


def test_image_position_ids():
    ids = pk.image_position_ids(4, 6)
    assert ids.shape == (6, 3)
    expected = [[0, r, c] for r in range(2) for c in range(3)]
    assert ids.tolist() == expected


def test_losses_vs_formulas():
    g = torch.Generator().manual_seed(9)
    pred, target = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    d = (pred - target).double().numpy().reshape(3, -1)
    np.testing.assert_allclose(ob.loss_per_sample(pred, target, "l2").numpy(), (d ** 2).mean(1), rtol=1e-5)
    np.testing.assert_allclose(ob.loss_per_sample(pred, target, "l1").numpy(), np.abs(d).mean(1), rtol=1e-5)
    c = 0.3
    hub = (2 * c * (np.sqrt(d ** 2 + c ** 2) - c)).mean(1)
    np.testing.assert_allclose(ob.loss_per_sample(pred, target, "huber", c).numpy(), hub, rtol=1e-5)
    # pseudo-Huber: ≈ d² for small d, ≈ 2c|d| for large d
    small = ob.loss_per_sample(torch.full((1, 1), 1e-3), torch.zeros(1, 1), "huber", 0.1)
    big = ob.loss_per_sample(torch.full((1, 1), 100.0), torch.zeros(1, 1), "huber", 0.1)
    assert small.item() == pytest.approx(1e-6, rel=1e-3) and big.item() == pytest.approx(20.0, rel=1e-2)
    per = torch.tensor([1.0, 2.0, 4.0])
    assert ob.weighted_mean(per, torch.tensor([1.0, 0.5, 0.0])).item() == pytest.approx(2.0 / 3)
    assert ob.weighted_mean(per).item() == pytest.approx(7 / 3)
    with pytest.raises(ValueError):
        ob.loss_per_sample(pred, target[:, :1], "l2")
    with pytest.raises(ValueError):
        ob.loss_per_sample(pred, target, "smooth")
