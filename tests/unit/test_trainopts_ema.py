"""training.ema (issue 23): the EMA follows ema ← d·ema + (1−d)·w after each step, starting from the weights before
step 1; it travels bit for bit through the optimizer's state dict (the resume state), for any optimizer class."""

import io

import pytest
import torch

from lorakit.config.schema import Config
from lorakit.train import ema as ema_mod
from lorakit.train.optim import build_optimizer


def _setup(name="adamw", seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 6, generator=g)), torch.nn.Parameter(torch.randn(3, 4, generator=g))]
    cfg = Config()
    cfg.training.ema, cfg.training.ema_decay = True, 0.9
    opt = build_optimizer([{"params": params}], name, 0.05, 0.0, (0.9, 0.999), 1e-8)
    return cfg, params, opt


def _step(params, opt, ema, step):
    g = torch.Generator().manual_seed(50 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    opt.zero_grad()
    ema.update()


def test_ema_is_the_formula_in_float64():
    cfg, params, opt = _setup()
    ema = ema_mod.attach(cfg, opt, params, log=lambda s: None)
    expected = [p.detach().double().clone() for p in params]
    for step in range(5):
        _step(params, opt, ema, step)
        expected = [0.9 * e + 0.1 * p.detach().double() for e, p in zip(expected, params)]
    for s, e, p in zip(ema.shadow, expected, params):
        torch.testing.assert_close(s.double(), e, rtol=0, atol=1e-6)
        assert not torch.allclose(s, p.detach())  # it lags the weights
    # applied(): the EMA in the weights for the block, the weights back exactly afterwards
    before = [p.detach().clone() for p in params]
    with ema.applied():
        assert all(torch.equal(p.detach(), s) for p, s in zip(params, ema.shadow))
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_resume_state_carries_the_ema_bitwise(name):
    pytest.importorskip("bitsandbytes") if name == "adamw8bit" else None
    cfg, params, opt = _setup(name)
    ema = ema_mod.attach(cfg, opt, params, log=lambda s: None)
    for step in range(3):
        _step(params, opt, ema, step)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # what resume.save_checkpoint writes (optimizer.pt)
    # a resumed run: fresh weights and optimizer, the state loaded back
    cfg2, params2, opt2 = _setup(name, seed=7)
    with torch.no_grad():
        for p, q in zip(params2, params):
            p.copy_(q)
    ema2 = ema_mod.attach(cfg2, opt2, params2, log=lambda s: None)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow, ema2.shadow)) and ema2.updates == 3
    for step in range(3, 5):  # and both go on identically
        _step(params, opt, ema, step)
        _step(params2, opt2, ema2, step)
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow, ema2.shadow))


def test_no_ema_unless_asked():
    cfg, params, opt = _setup()
    cfg.training.ema = False
    assert ema_mod.attach(cfg, opt, params) is None and "lorakit_ema" not in opt.state_dict()
