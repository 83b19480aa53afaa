"""memory.fused_backward (lorakit/train/fused.py): the LoRA weights equal the plain optimizer's (bit for bit on
the CPU), no second LoRA gradient is alive while one is stepped, a non-finite gradient stops the step where it
appears, the optimizer state has the plain layout and resumes exactly, and what cannot work is refused."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lorakit.config.schema import Config
from lorakit.errors import ConfigError
from lorakit.lora.inject import inject_lora
from lorakit.train import memory, optim
from lorakit.train.fused import FusedBackwardOptimizer, build_fused_optimizer

OPT = dict(weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)


class Net(nn.Module):
    """Conv → three Linears; widths chosen so one LoRA matrix has > 4096 elements (bitsandbytes' 8-bit state)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Linear(8, 128)
        self.b = nn.Linear(128, 128)
        self.c = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        h = nn.functional.gelu(self.a(h))
        h = nn.functional.gelu(self.b(h))
        return self.c(h)


def lora_net() -> tuple[Net, list[dict]]:
    """The same net and LoRA init every call; two groups with different lr like unet/text encoder."""
    torch.manual_seed(0)
    net = Net()
    first = inject_lora(net, {"conv": 4, "a": 8, "b": 40, "c": 4}, 8.0, 0.0, seed=1)
    return net, [{"params": first[:4], "lr": 1e-2, "name": "unet"},
                 {"params": first[4:], "lr": 3e-3, "name": "text_encoder"}]


def lora_params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters() if v.requires_grad}


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 4, generator=g)


def run(net: Net, opt: torch.optim.Optimizer, sched, steps: range) -> list[float]:
    """The loop's order: backward, step, zero_grad, scheduler step."""
    losses = []
    for step in steps:
        x, y = batch(step)
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def setup(name: str, fused_backward: bool, warmup: int = 2, total: int = 6):
    net, groups = lora_net()
    build = build_fused_optimizer if fused_backward else optim.build_optimizer
    opt = build(groups, name, 1e-2, **OPT)
    sched = optim.build_scheduler(opt, "cosine", warmup, total)
    return net, opt, sched


@pytest.mark.parametrize("name", ["adamw", "adafactor", "adamw8bit"])
def test_same_weights_as_plain_optimizer(name):
    pytest.importorskip("bitsandbytes") if name == "adamw8bit" else None
    plain_net, plain_opt, plain_sched = setup(name, False)
    fused_net, fused_opt, fused_sched = setup(name, True)
    assert isinstance(fused_opt, FusedBackwardOptimizer)
    start = lora_params(plain_net)
    la = run(plain_net, plain_opt, plain_sched, range(6))
    lb = run(fused_net, fused_opt, fused_sched, range(6))
    assert la == lb
    a, b = lora_params(plain_net), lora_params(fused_net)
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        assert not torch.equal(a[k], start[k]), k  # every LoRA tensor trained
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())
    # the scheduler drove both: each group's lr went through warmup and cosine decay identically
    assert [g["lr"] for g in fused_opt.param_groups] == [g["lr"] for g in plain_opt.param_groups]
    assert fused_opt.param_groups[0]["lr"] != 1e-2 and fused_opt.param_groups[1]["lr"] != 3e-3


def alive_while_backward(fused_backward: bool) -> tuple[int, int]:
    """(most other LoRA gradients alive when a gradient arrives, gradients alive after backward)."""
    net, opt, _ = setup("adamw", fused_backward)
    params = [p for g in opt.param_groups for p in g["params"]]
    seen: list[int] = []
    for p in params:  # a tensor hook runs just before the gradient is accumulated (and stepped, when fused)
        p.register_hook(lambda grad: seen.append(sum(q.grad is not None for q in params)) or grad)
    for step in range(2):  # the second step has every gradient non-zero
        opt.zero_grad(set_to_none=True)
        seen.clear()
        x, y = batch(step)
        ((net(x) - y) ** 2).mean().backward()
        after = sum(p.grad is not None for p in params)
        opt.step()
    assert len(seen) == len(params)
    return max(seen), after


def test_no_full_set_of_gradients_is_ever_alive():
    assert alive_while_backward(False) == (7, 8)  # plain: all eight accumulate
    assert alive_while_backward(True) == (0, 0)  # fused: each freed before the next arrives


def test_grad_norm_is_the_global_norm():
    net, opt, _ = setup("adamw", True)
    ref_net, _ = lora_net()
    x, y = batch(0)
    ((ref_net(x) - y) ** 2).mean().backward()
    expected = torch.sqrt(sum((p.grad ** 2).sum() for p in ref_net.parameters() if p.grad is not None))
    ((net(x) - y) ** 2).mean().backward()
    assert opt.grad_norm() == pytest.approx(float(expected), rel=1e-6)
    opt.zero_grad()
    assert opt.grad_norm() == 0.0


def test_nonfinite_gradient_stops_the_step_where_it_appears():
    net, opt, sched = setup("adamw", True)
    run(net, opt, sched, range(2))
    params = [p for g in opt.param_groups for p in g["params"]]
    order: list[int] = []
    for i, p in enumerate(params):
        p.register_hook(lambda grad, i=i: order.append(i) or grad)
    poisoned = params[5]
    handle = poisoned.register_hook(lambda grad: grad * float("nan"))
    before = [p.detach().clone() for p in params]
    x, y = batch(2)
    ((net(x) - y) ** 2).mean().backward()
    assert opt.nonfinite and opt.grad_norm() != opt.grad_norm()  # NaN: the loop's nan_policy takes over
    assert all(p.grad is None for p in params)
    first_bad = order.index(5)
    assert 0 < first_bad < len(order) - 1  # some stepped before, some not after: the test sees both sides
    for rank, i in enumerate(order):
        changed = not torch.equal(before[i], params[i].detach())
        assert changed == (rank < first_bad), (i, rank, first_bad)
    assert opt.stepped == first_bad
    # the next step is clean again: the flag resets with zero_grad
    handle.remove()
    opt.zero_grad(set_to_none=True)
    sched.step()
    run(net, opt, sched, range(3, 4))
    assert not opt.nonfinite


def test_stop_policy_checks_the_norm_once_after_backward():
    """nan_policy = "stop": no sync per parameter; everything is stepped, the norm shows it, the run stops."""
    net, groups = lora_net()
    opt = build_fused_optimizer(groups, "adamw", 1e-2, **OPT, nan_policy="stop")
    params = [p for g in opt.param_groups for p in g["params"]]
    params[5].register_hook(lambda grad: grad * float("nan"))
    x, y = batch(0)
    ((net(x) - y) ** 2).mean().backward()
    assert opt.stepped == 8 and not opt.nonfinite and all(p.grad is None for p in params)
    assert opt.grad_norm() != opt.grad_norm() and opt.nonfinite


def test_nonfinite_loss_steps_nothing():
    net, opt, sched = setup("adamw", True)
    run(net, opt, sched, range(2))
    before = lora_params(net)
    x, y = batch(2)
    x[0, 0, 0, 0] = float("inf")
    loss = ((net(x) - y) ** 2).mean()
    loss.backward()
    assert not torch.isfinite(loss) and opt.nonfinite and opt.stepped == 0
    after = lora_params(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


def roundtrip(state: dict) -> dict:
    """Through bytes as checkpoint.py does it (torch.save, weights_only load)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_has_the_plain_layout():
    plain_net, plain_opt, plain_sched = setup("adamw", False)
    fused_net, fused_opt, fused_sched = setup("adamw", True)
    run(plain_net, plain_opt, plain_sched, range(3))
    run(fused_net, fused_opt, fused_sched, range(3))
    a, b = plain_opt.state_dict(), fused_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() == set(range(8))
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k in a["state"][i]:
            assert torch.equal(torch.as_tensor(a["state"][i][k]), torch.as_tensor(b["state"][i][k])), (i, k)


@pytest.mark.parametrize("source", ["fused", "plain"])
def test_resume_from_state_is_exact(source):
    """Interrupted at step 3 (weights, optimizer and scheduler state saved), resumed in a fresh process-like
    setup: the same weights as 6 uninterrupted fused steps; a plain optimizer's state resumes fused too."""
    ref_net, ref_opt, ref_sched = setup("adamw", True)
    run(ref_net, ref_opt, ref_sched, range(6))

    first_net, first_opt, first_sched = setup("adamw", source == "fused")
    run(first_net, first_opt, first_sched, range(3))
    saved = roundtrip({"lora": lora_params(first_net), "opt": first_opt.state_dict(),
                       "sched": first_sched.state_dict()})

    net, opt, sched = setup("adamw", True)
    with torch.no_grad():
        for k, p in net.named_parameters():
            if p.requires_grad:
                p.copy_(saved["lora"][k])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in first_opt.param_groups]
    run(net, opt, sched, range(3, 6))
    a, b = lora_params(ref_net), lora_params(net)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_load_refuses_other_parameters():
    _, opt, _ = setup("adamw", True)
    state = opt.state_dict()
    state["param_groups"][1]["params"] = state["param_groups"][1]["params"][:-1]
    with pytest.raises(ValueError, match="parameter groups do not match"):
        opt.load_state_dict(state)


def fused_cfg(**changes) -> Config:
    cfg = Config()
    cfg.memory.fused_backward = True
    cfg.optimizer.name = "adamw"
    cfg.optimizer.max_grad_norm = 0.0
    cfg.training.mixed_precision = "no"
    for key, value in changes.items():
        section, field = key.split("__")
        setattr(getattr(cfg, section), field, value)
    return cfg


def test_config_accepts_and_refuses():
    cpu = torch.device("cpu")
    memory.check_supported(fused_cfg(), cpu)  # implemented: no error
    memory.check_supported(fused_cfg(optimizer__name="adamw8bit"), cpu)
    with pytest.raises(ConfigError, match=r"^optimizer\.max_grad_norm: .*set optimizer\.max_grad_norm = 0"):
        memory.check_supported(fused_cfg(optimizer__max_grad_norm=1.0), cpu)
    with pytest.raises(ConfigError, match=r'^memory\.fused_backward: optimizer\.name = "prodigy"'):
        memory.check_supported(fused_cfg(optimizer__name="prodigy"), cpu)
    with pytest.raises(ConfigError, match=r"^memory\.fused_backward: fp16"):
        memory.check_fused_backward(fused_cfg(training__mixed_precision="fp16"))
    _, groups = lora_net()
    with pytest.raises(ConfigError, match="prodigy"):
        build_fused_optimizer(groups, "prodigy", 1.0, **OPT)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_fused_optimizer([{"params": []}], "adamw", 1e-3, **OPT)


def test_remove_hooks_restores_plain_backward():
    net, opt, _ = setup("adamw", True)
    opt.remove_hooks()
    x, y = batch(0)
    ((net(x) - y) ** 2).mean().backward()
    assert all(p.grad is not None for g in opt.param_groups for p in g["params"])


def test_training_run_resumes_exactly_and_matches_plain(tmp_path, monkeypatch):
    """Through the CLI on the tiny SDXL checkpoint: fused backward gives the plain run's LoRA file and losses
    (clipping off in both), and a fused run killed after its step-3 checkpoint resumes to the same result."""
    from safetensors.torch import load_file

    import lorakit.train.steps as loop
    from lorakit.cli import main
    from tests.integration.test_train_e2e import tiny_model, write_run_toml

    import lorakit.train.fused as fused

    built = []
    monkeypatch.setattr(fused, "build_fused_optimizer",
                        lambda *a, real=fused.build_fused_optimizer, **k: built.append(real(*a, **k)) or built[-1])
    paths = tiny_model("sdxl", tmp_path / "model")
    common = ["sample.prompts=[]", "optimizer.max_grad_norm=0"]
    plain = write_run_toml(tmp_path, "sdxl", paths, name="plain")
    assert main(["train", str(plain), *common]) == 0
    full = write_run_toml(tmp_path, "sdxl", paths, name="full")
    assert main(["train", str(full), *common, "memory.fused_backward=true"]) == 0

    part = write_run_toml(tmp_path, "sdxl", paths, name="part")
    real_step, calls = loop.train_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the step-3 checkpoint
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", dying_step)
    assert main(["train", str(part), *common, "memory.fused_backward=true"]) == 130
    monkeypatch.setattr(loop, "train_step", real_step)
    assert main(["train", "--resume", str(tmp_path / "out" / "part")]) == 0

    assert len(built) == 3 and all(o.state_dict()["state"] for o in built)  # full, part, resumed part: all fused
    out = tmp_path / "out"
    files = {n: load_file(out / n / f"{n}.safetensors") for n in ("plain", "full", "part")}
    assert files["plain"].keys() == files["full"].keys() == files["part"].keys()
    for k in files["plain"]:
        assert torch.equal(files["plain"][k], files["full"][k]), k
        assert torch.equal(files["full"][k], files["part"][k]), k
    import json

    losses = {n: [json.loads(x)["loss"] for x in (out / n / "metrics.jsonl").read_text().splitlines()]
              for n in files}
    assert losses["plain"] == losses["full"] == losses["part"]
