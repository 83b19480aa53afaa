"""Optimizers step and lower a loss; schedules follow their formulas; state round-trips."""

import builtins
import math

import pytest
import torch

from lorakit.errors import ConfigError, LorakitError
from lorakit.train import optim


def _quadratic_run(name, lr, steps=30, n=64 * 64 + 8):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(n))
    target = torch.randn(n)
    opt = optim.build_optimizer([{"params": [w]}], name, lr, 0.0, (0.9, 0.999), 1e-8)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = ((w - target) ** 2).mean()
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    return first, ((w - target) ** 2).mean().item(), opt


@pytest.mark.parametrize("name,lr", [("adamw", 1e-2), ("adamw8bit", 1e-2), ("adafactor", 1e-2)])
def test_optimizer_lowers_quadratic(name, lr):
    first, last, opt = _quadratic_run(name, lr)
    assert last < 0.8 * first
    assert opt.param_groups[0]["lr"] == lr


def test_adamw8bit_is_bitsandbytes_and_uses_8bit_state():
    import bitsandbytes as bnb

    _, _, opt = _quadratic_run("adamw8bit", 1e-2, steps=2)
    assert isinstance(opt, bnb.optim.AdamW8bit)
    state = next(iter(opt.state.values()))
    assert state["state1"].dtype == torch.uint8  # > min_8bit_size elements → quantized moments


def test_adafactor_honours_lr():
    # with relative_step=False the update size follows lr: doubling lr roughly doubles the first step
    def first_step(lr):
        w = torch.nn.Parameter(torch.ones(16, 16))
        opt = optim.build_optimizer([{"params": [w]}], "adafactor", lr, 0.0, (0.9, 0.999), 1e-8)
        (w * torch.arange(256.0).reshape(16, 16)).sum().backward()
        opt.step()
        return (w.detach() - 1).abs().mean().item()

    assert first_step(2e-3) == pytest.approx(2 * first_step(1e-3), rel=1e-4)


def test_group_lrs_kept_and_default_filled():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = optim.build_optimizer([{"params": [a]}, {"params": [b], "lr": 5e-5}], "adamw", 1e-4, 0.01,
                                [0.9, 0.99], 1e-8)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 5e-5]
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        optim.build_optimizer([{"params": []}], "adamw", 1e-4, 0.0, (0.9, 0.999), 1e-8)
    with pytest.raises(ConfigError, match="optimizer.name"):
        optim.build_optimizer([{"params": [a]}], "sgd", 1e-4, 0.0, (0.9, 0.999), 1e-8)


@pytest.mark.parametrize("name,module,extra", [("adamw8bit", "bitsandbytes", "bnb"), ("prodigy", "prodigyopt", "prodigy")])
def test_missing_optional_library_message(monkeypatch, name, module, extra):
    real_import = builtins.__import__

    def fake_import(mod, *a, **k):
        if mod.split(".")[0] == module:
            raise ImportError(f"No module named {module!r}")
        return real_import(mod, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(LorakitError) as e:
        optim.build_optimizer([{"params": [w]}], name, 1e-4, 0.0, (0.9, 0.999), 1e-8)
    msg = str(e.value)
    assert msg == (f'optimizer.name = "{name}" needs {module}: pip install \'lorakit[{extra}]\', '
                   f'or set optimizer.name = "adamw"')


def _lrs(name, warmup, total, ratio=0.1, steps=None, base=1.0):
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=base)
    sched = optim.build_scheduler(opt, name, warmup, total, ratio)
    out = []
    for _ in range(steps or total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_values():
    w, t = 4, 14  # decay over 10 steps
    const = _lrs("constant", w, t)
    assert const[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and const[4:] == [1.0] * 10
    lin = _lrs("linear", w, t)
    assert lin[4] == pytest.approx(1.0) and lin[9] == pytest.approx(0.5) and lin[13] == pytest.approx(0.1)
    cos = _lrs("cosine", w, t)
    assert cos[4] == pytest.approx(1.0)
    assert cos[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos[13] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    mn = _lrs("cosine_with_min_lr", w, t, ratio=0.2)
    assert mn[11] == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.7)))
    assert min(mn) >= 0.2


@pytest.mark.parametrize("name", optim.SCHEDULERS)
def test_schedule_never_zero_or_negative_past_the_end(name):
    lrs = _lrs(name, 2, 10, steps=25)
    assert all(lr > 0 for lr in lrs)
    assert lrs[10:] == [lrs[9]] * 15  # clamped at the last planned step


def test_no_warmup_starts_at_full_lr():
    assert _lrs("cosine", 0, 5)[0] == pytest.approx(1.0)


def test_bad_schedule_values():
    with pytest.raises(ConfigError, match="optimizer.scheduler"):
        optim.lr_multiplier("polynomial", 0, 10, 0.0)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        optim.lr_multiplier("cosine", 0, 10, 1.5)


def test_scheduler_state_dict_round_trip():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([w], lr=1e-3)
    sched = optim.build_scheduler(opt, "cosine", 3, 20)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    w2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.AdamW([w2], lr=1e-3)
    sched2 = optim.build_scheduler(opt2, "cosine", 3, 20)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 7
    for _ in range(5):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 9 / 17)))


def test_describe_optimizer():
    s = optim.describe_optimizer("adamw8bit", 0.01, (0.9, 0.999), 1e-8)
    assert s == "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.01,betas=(0.9, 0.999),eps=1e-08)"
