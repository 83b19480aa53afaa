"""Optimizers of issue 23: each takes steps that change the LoRA and match the package's own optimizer, run by
hand on a copy of the same parameters with the same gradients."""

import pytest
import torch

from lorakit.lora.metadata import describe_optimizer
from lorakit.train.optim import build_optimizer


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 8, generator=g)), torch.nn.Parameter(torch.zeros(16, 4))]


def _grads(step, params):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def _reference(name, params):
    if name == "lion":
        from lion_pytorch import Lion
        return Lion(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    if name == "came":
        from came_pytorch import CAME
        return CAME(params, lr=1e-3, betas=(0.9, 0.99, 0.9999), weight_decay=0.01)
    if name == "prodigy":
        from prodigyopt import Prodigy
        return Prodigy(params, lr=1.0, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    from schedulefree import AdamWScheduleFree
    return AdamWScheduleFree(params, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)


@pytest.mark.parametrize("name", ["lion", "came", "prodigy", "adamw_schedulefree"])
def test_optimizer_matches_its_package(name):
    ours, theirs = _params(1), _params(1)
    start = [p.detach().clone() for p in ours]
    lr = 1.0 if name == "prodigy" else 1e-3
    opt = build_optimizer([{"params": ours}], name, lr, 0.01, (0.9, 0.99), 1e-8)
    ref = _reference(name, theirs)
    for step in range(4):
        # the loop's protocol (steps.train_step / optimizer_step): train mode where asked, grads, step, zero_grad
        if getattr(opt, "needs_train_mode", False):
            opt.train()
        if name == "adamw_schedulefree":
            ref.train()
        for p, q, g in zip(ours, theirs, _grads(step, ours)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ref.step()
        ref.zero_grad(set_to_none=True)
        if name == "adamw_schedulefree":
            ref.eval()  # the weights to ship are x: what our optimizer leaves in the parameters between steps
        for p, q in zip(ours, theirs):
            assert torch.equal(p.detach(), q.detach()), (name, step)
    assert all(not torch.equal(p.detach(), s) for p, s in zip(ours, start)), "the LoRA did not change"
    if name == "adamw_schedulefree":  # resume state: saved in eval mode, bitwise the same after a reload
        again = build_optimizer([{"params": _params(9)}], name, lr, 0.01, (0.9, 0.99), 1e-8)
        again.load_state_dict(opt.state_dict())
        assert again.param_groups[0]["train_mode"] is False


def test_ss_optimizer_names_the_package_classes():
    assert describe_optimizer("lion", 0.01, (0.9, 0.99), 1e-8) == \
        "lion_pytorch.lion_pytorch.Lion(weight_decay=0.01,betas=(0.9, 0.99))"
    assert describe_optimizer("came", 0.0, (0.9, 0.999), 1e-8).startswith("came_pytorch.CAME.CAME(")
    assert describe_optimizer("adamw_schedulefree", 0.0, (0.9, 0.999), 1e-8).startswith(
        "schedulefree.adamw_schedulefree.AdamWScheduleFree(")


def test_prodigy_is_a_main_dependency():
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split("==")[0] for d in deps}
    assert {"prodigyopt", "lion-pytorch", "came-pytorch", "schedulefree"} <= names
