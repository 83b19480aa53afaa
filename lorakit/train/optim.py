"""Optimizers and learning-rate schedules for the LoRA parameters.

``build_optimizer`` maps ``optimizer.name`` onto a library class; optional libraries (bitsandbytes,
prodigyopt) are imported only when chosen, and a missing one gives a one-line error that says how to install
it or what to choose instead. ``build_scheduler`` returns a ``LambdaLR`` whose multiplier is a pure function of
the step, so resuming only needs ``last_epoch`` back (and a changed ``max_steps`` takes effect on resume).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from lorakit.errors import ConfigError
from lorakit.lora.metadata import describe_optimizer  # noqa: F401  (ss_optimizer's form)



log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor", "lion", "came", "adamw_schedulefree")
SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_min_lr", "cosine_with_restarts")


def _missing(name: str, package: str, extra: str) -> ConfigError:
    return ConfigError(f'optimizer.name = "{name}" needs {package}: pip install \'lorakit[{extra}]\', '
                       f'or set optimizer.name = "adamw"')


def _groups_with_lr(params_groups: list[dict], lr: float) -> list[dict]:
    """Copy the groups, give each one without its own ``lr`` the default, and refuse empty input."""
    groups = []
    for g in params_groups:
        g = dict(g)
        g["params"] = list(g["params"])
        if g.get("lr") is None:
            g["lr"] = lr
        groups.append(g)
    if not any(len(g["params"]) for g in groups):
        raise ConfigError("optimizer: there are no trainable parameters (is the LoRA injected into anything?)")
    return groups


def build_optimizer(params_groups: list[dict], name: str, lr: float, weight_decay: float,
                    betas: Sequence[float], eps: float, *, fused: bool | None = None) -> torch.optim.Optimizer:
    """Create the optimizer for ``params_groups`` (dicts with ``params`` and optionally ``lr``).

    adafactor runs with ``relative_step=False, scale_parameter=False, warmup_init=False`` so that
    ``optimizer.lr`` and the schedule are honoured (its defaults would silently replace them); it has no
    Adam betas/eps and ignores those two values. ``fused`` (adamw only): None = torch's choice (foreach), True =
    one fused kernel per step where every parameter is a CUDA float tensor (else foreach), False = foreach.
    """
    groups = _groups_with_lr(params_groups, lr)
    b1, b2 = (float(b) for b in betas)
    if name == "adamw":
        # fused kernels exist only for accelerators; foreach is the fast path on CPU.
        on_cpu = any(p.device.type == "cpu" for g in groups for p in g["params"])
        can_fuse = all(p.device.type == "cuda" and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                       for g in groups for p in g["params"])
        use = False if on_cpu else (None if fused is None else bool(fused and can_fuse))
        return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, fused=use)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise _missing(name, "bitsandbytes", "bnb") from e
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError as e:  # a main dependency since issue 23; only a broken install lacks it
            raise _missing(name, "prodigyopt", "prodigy") from e
        if lr < 0.1:
            log.warning("optimizer.lr = %g with prodigy: Prodigy estimates the step size itself and expects "
                        "lr around 1.0; a small lr scales its estimate down", lr)
        return Prodigy(groups, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, weight_decay=weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    if name == "lion":  # lion-pytorch: sign of an interpolated momentum; decoupled decay as kohya's Lion
        from lion_pytorch import Lion

        return Lion(groups, lr=lr, betas=(b1, b2), weight_decay=weight_decay)
    if name == "came":  # came-pytorch: its third beta and eps pair stay at the package's defaults
        from came_pytorch import CAME

        return CAME(groups, lr=lr, betas=(b1, b2, 0.9999), weight_decay=weight_decay)
    if name == "adamw_schedulefree":
        return ScheduleFreeAdamW(groups, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    raise ConfigError(f"optimizer.name: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _schedule_free_base():
    from schedulefree import AdamWScheduleFree

    return AdamWScheduleFree


class ScheduleFreeAdamW:
    """schedulefree's AdamW with its two points kept apart for the loop: the gradient is taken at y (``train()``
    mode), and everything else (saving, previews, the LoRA check, resume state) sees x, the weights to ship
    (``eval()`` mode). ``train_step`` calls :meth:`train` before its forward pass (``needs_train_mode``), and
    :meth:`zero_grad`, which follows every step, taken or skipped, returns to x. Built lazily as a subclass so
    that importing this module does not import schedulefree."""

    def __new__(cls, *args: Any, **kwargs: Any):
        base = _schedule_free_base()

        class _ScheduleFreeAdamW(base):  # type: ignore[misc, valid-type]
            needs_train_mode = True

            def zero_grad(self, set_to_none: bool = True) -> None:
                super().zero_grad(set_to_none=set_to_none)
                self.eval()

        _ScheduleFreeAdamW.__name__ = _ScheduleFreeAdamW.__qualname__ = "ScheduleFreeAdamW"
        return _ScheduleFreeAdamW(*args, **kwargs)


def _hard_restarts(warmup_steps: int, total_steps: int, num_cycles: int) -> Callable[[int], float]:
    """diffusers' ``get_cosine_with_hard_restarts_schedule_with_warmup`` multiplier (what sd-scripts runs for
    cosine_with_restarts with lr_scheduler_num_cycles), taken from the scheduler it builds on a throwaway optimizer."""
    from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

    throwaway = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return get_cosine_with_hard_restarts_schedule_with_warmup(throwaway, warmup_steps, total_steps,
                                                              num_cycles).lr_lambdas[0]


def lr_multiplier(name: str, warmup_steps: int, total_steps: int, min_lr_ratio: float,
                  num_cycles: int = 1) -> Callable[[int], float]:
    """The schedule as a function step → lr multiplier (exposed for tests and for plotting a plan).

    Warmup is linear, (step+1)/warmup for step < warmup, so the first step already learns and the last
    warmup step runs at full lr. The decay runs over [warmup, total) with progress
    p = (step − warmup)/(total − warmup); steps past the end are clamped to the last step
    (total − 1), so the lr never reaches 0 and never turns negative or back up (cosine) when a run is resumed
    with more steps than it was planned for. cosine_with_restarts: after the warmup, diffusers' hard restarts
    (``num_cycles`` cosine decays, each restarting at lr).
    """
    if name not in SCHEDULERS:
        raise ConfigError(f"optimizer.scheduler: unknown schedule {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if total_steps < 1:
        raise ConfigError(f"training.max_steps: must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ConfigError(f"optimizer.warmup_steps: must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"optimizer.min_lr_ratio: must be in [0, 1], got {min_lr_ratio}")
    if num_cycles < 1:
        raise ConfigError(f"optimizer.num_cycles: must be >= 1, got {num_cycles}")
    restarts = _hard_restarts(warmup_steps, total_steps, num_cycles) if name == "cosine_with_restarts" else None

    def multiplier(step: int) -> float:
        step = min(max(step, 0), total_steps - 1)
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if restarts is not None:
            return restarts(step)
        if name == "constant":
            return 1.0
        if name == "linear":
            return 1.0 - p
        cos = 0.5 * (1.0 + math.cos(math.pi * p))
        if name == "cosine":
            return cos
        return min_lr_ratio + (1.0 - min_lr_ratio) * cos

    return multiplier


def schedule_warning(name: str, warmup_steps: int, total_steps: int) -> Optional[str]:
    """One line when the schedule does not fit the run: a warmup as long as the run or longer (the lr never reaches
    optimizer.lr, and a decaying schedule never decays). None when it fits."""
    if warmup_steps >= total_steps:
        reached = (total_steps / warmup_steps) if warmup_steps else 1.0
        decay = f"; the {name} decay never starts" if name != "constant" else ""
        return (f"warning: optimizer.warmup_steps ({warmup_steps}) is not shorter than training.max_steps "
                f"({total_steps}): the lr reaches only {reached:.0%} of optimizer.lr{decay}")
    return None


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int,
                    min_lr_ratio: float = 0.0, num_cycles: int = 1) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_multiplier` for every parameter group.

    The multiplier is a plain function (not an object with state), so ``state_dict()`` holds only the step
    counters; the schedule's shape always comes from the current config.
    """
    fn = lr_multiplier(name, warmup_steps, total_steps, min_lr_ratio, num_cycles)

    def lr_lambda(step: int) -> float:
        return fn(step)

    return LambdaLR(optimizer, lr_lambda)


def fused_adamw(cfg: Any, device: torch.device) -> Optional[bool]:
    """memory.fused_optimizer, unset = on for AdamW on CUDA (measured faster and leaner: RESULTS.md run 4)."""
    if cfg.memory.fused_optimizer is not None:
        return cfg.memory.fused_optimizer
    return True if device.type == "cuda" and cfg.optimizer.name == "adamw" else None
