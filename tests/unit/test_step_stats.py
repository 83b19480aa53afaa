"""health.StepStats and health.skip_on_device: a step's numbers read without a synchronisation, and a fused AdamW
that skips a non-finite step by itself (checked against an AdamW that never saw that step)."""

from __future__ import annotations

import math

import pytest
import torch

from lorakit.train import health


def test_stats_read_values_and_finiteness():
    st = health.StepStats(torch.tensor(0.25), torch.tensor(3.0))
    assert st.read() == (0.25, 3.0) and st.ok() and bool(st.finite)
    assert not st.deferred
    nan = health.StepStats(torch.tensor(float("nan")), 1.5)  # a float norm (fused backward's) is accepted too
    loss, norm = nan.read()
    assert math.isnan(loss) and norm == 1.5 and not nan.ok() and not bool(nan.finite)
    assert not health.StepStats(torch.tensor(1.0), torch.tensor(float("inf"))).ok()


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


def _grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(4, 3, generator=g), torch.randn(5, generator=g)]


def test_fused_adamw_skips_a_nonfinite_step_on_the_device():
    """Steps 1-4 with a NaN gradient at step 2: parameters, moments and step counts after it equal those of a
    foreach AdamW that only ever saw steps 1, 3 and 4."""
    fused, ref = _params(), _params()
    opt = torch.optim.AdamW(fused, lr=0.1, weight_decay=0.01, fused=True)
    opt_ref = torch.optim.AdamW(ref, lr=0.1, weight_decay=0.01, foreach=True)
    for step in (1, 2, 3, 4):
        grads = _grads(step)
        if step == 2:
            grads = [g * float("nan") for g in grads]
        for p, g in zip(fused, grads):
            p.grad = g.clone()
        stats = health.StepStats(torch.tensor(1.0), torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
        assert health.skip_on_device(opt, stats) and stats.deferred
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step != 2:
            for p, g in zip(ref, grads):
                p.grad = g.clone()
            opt_ref.step()
            opt_ref.zero_grad(set_to_none=True)
        for p, q in zip(fused, ref):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
            for key in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(opt.state[p][key].float(), opt_ref.state[q][key].float(), rtol=1e-6,
                                           atol=1e-7)


@pytest.mark.parametrize("make", [lambda ps: torch.optim.AdamW(ps, lr=0.1, foreach=True),
                                  lambda ps: torch.optim.SGD(ps, lr=0.1)], ids=["foreach-adamw", "sgd"])
def test_other_optimizers_step_on_the_hosts_decision(make):
    opt = make(_params())
    stats = health.StepStats(torch.tensor(float("nan")), torch.tensor(1.0))
    assert not health.skip_on_device(opt, stats)
    assert not stats.deferred and not hasattr(opt, "found_inf")
