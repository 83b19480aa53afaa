"""Fused backward (``memory.fused_backward``): each LoRA parameter is stepped, and its gradient freed, the moment
autograd finishes that gradient, so the full set of LoRA gradients is never alive at once.

How: every trainable parameter gets its own small optimizer (the same class and settings ``optim.build_optimizer``
gives the plain path) and a ``register_post_accumulate_grad_hook`` that steps it and sets ``.grad = None``. AdamW,
AdamW8bit and Adafactor update each tensor independently, so this is the same maths as one shared optimizer:
the weights match the plain path (bit for bit on the CPU) when gradient clipping is off. Prodigy is refused: its
step-size estimate sums over every gradient of the step.

The loop keeps one object with the interface it already uses (``step``, ``zero_grad``, ``state_dict``,
``load_state_dict``, ``param_groups``): :class:`FusedBackwardOptimizer` is a ``torch.optim.Optimizer`` whose
``param_groups`` are the ones the LR scheduler drives; each hook copies its group's current lr into the
parameter's optimizer before stepping. ``step()`` has nothing left to do; ``zero_grad()`` ends the step.
Its ``state_dict`` has exactly the layout of the plain optimizer's (state indexed by the parameter's position
across the groups), so a resume state written with or without fused backward loads into either.

What cannot be the same:

* Clipping by global norm needs every gradient before the first step, so ``memory.check_supported`` refuses
  ``optimizer.max_grad_norm > 0`` together with fused backward (no per-parameter stand-in that would change the
  maths silently).
* Non-finite gradients: each hook checks its gradient; from the first non-finite one on, no further parameter
  of that step is stepped and :attr:`FusedBackwardOptimizer.nonfinite` is set (the reported gradient norm is
  then non-finite too, so the loop's ``training.nan_policy`` applies). Parameters whose gradient was finite
  and complete before that have already been stepped: with ``nan_policy = "skip"`` the step is skipped for
  the rest only. A non-finite *loss* usually makes the very first gradient non-finite, so nothing is stepped.
  The check reads one scalar per parameter back from the device (one synchronisation per LoRA tensor, which
  costs GPU/CPU overlap), so it runs only with ``nan_policy = "skip"``. With "stop" (the default) every
  parameter is stepped and the norm is checked once after backward: the loop then stops before anything is
  saved, so the non-finite update never reaches a file.
* fp16 loss scaling needs all gradients to unscale and check first: refused (use bf16).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from lorakit.errors import ConfigError

# Optimizers whose update of one tensor reads only that tensor's gradient and state.
PER_TENSOR_OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "lion", "came")


class FusedBackwardOptimizer(torch.optim.Optimizer):
    """Steps every parameter inside backward; see the module docstring for the exact semantics."""

    steps_in_backward = True  # train_step reads the gradient norm from here instead of from .grad

    def __init__(self, param_groups: list[dict], make: Callable[[list[dict]], torch.optim.Optimizer], *,
                 check_each_grad: bool = True) -> None:
        """``param_groups``: dicts with ``params`` and ``lr`` (and any other keys, e.g. ``name``); ``make``
        builds the optimizer of one parameter from a one-group, one-parameter list. ``check_each_grad``: test
        every gradient before its step (one device sync per parameter); without it non-finite gradients are
        only seen in :meth:`grad_norm` after backward, when they have been applied (fine when the run stops)."""
        self.check_each_grad = check_each_grad
        super().__init__([dict(g, params=list(g["params"])) for g in param_groups], defaults={})
        self._inner: dict[Tensor, torch.optim.Optimizer] = {}
        self._handles: list[Any] = []
        for group in self.param_groups:
            extra = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                self._inner[p] = make([dict(extra, params=[p])])
                self._handles.append(p.register_post_accumulate_grad_hook(self._hook(group, self._inner[p])))
        self._sq: Tensor | None = None
        self.nonfinite = False
        self.stepped = 0  # parameters stepped in the current step (for tests and diagnostics)

    # ------------------------------------------------------------------ inside backward

    def _hook(self, group: dict, inner: torch.optim.Optimizer) -> Callable[[Tensor], None]:
        def on_grad(p: Tensor) -> None:
            grad = p.grad
            if grad is None:
                return
            sq = grad.detach().float().square().sum()
            self._sq = sq if self._sq is None else self._sq + sq
            if self.check_each_grad and not self.nonfinite and not bool(torch.isfinite(sq)):
                self.nonfinite = True  # this and every later parameter of the step stay as they are
            if not self.nonfinite:
                inner.param_groups[0]["lr"] = group["lr"]  # the scheduler drives the outer groups
                inner.step()
                self.stepped += 1
            p.grad = None
        return on_grad

    # ------------------------------------------------------------------ the optimizer interface

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Nothing to do: every parameter was stepped as its gradient arrived. Runs ``closure`` if given."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear any gradient left (none normally are) and start a new step's norm and non-finite flag."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().zero_()
        self._sq = None
        self.nonfinite = False
        self.stepped = 0

    def grad_norm(self) -> float:
        """Global L2 norm of this step's gradients (all of them, also those after a non-finite one)."""
        norm = 0.0 if self._sq is None else math.sqrt(float(self._sq))
        self.nonfinite = self.nonfinite or not math.isfinite(norm)
        return norm

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The plain optimizer's layout: ``state`` keyed by the parameter's position across all groups."""
        state: dict[int, Any] = {}
        groups: list[dict] = []
        index = 0
        for group in self.param_groups:
            ids: list[int] = []
            hyper: dict[str, Any] = {}
            for p in group["params"]:
                inner = self._inner[p].state_dict()
                if inner["state"]:
                    state[index] = inner["state"][0]
                hyper = hyper or {k: v for k, v in inner["param_groups"][0].items() if k != "params"}
                ids.append(index)
                index += 1
            groups.append({**hyper, **{k: v for k, v in group.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load a state written by this class or by the plain optimizer over the same parameter groups."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)):
            raise ValueError("optimizer state: its parameter groups do not match this run's LoRA parameters")
        saved_state = state_dict["state"]
        for saved, group in zip(saved_groups, self.param_groups):
            hyper = {k: v for k, v in saved.items() if k != "params"}
            group.update(hyper)
            for pid, p in zip(saved["params"], group["params"]):
                one = saved_state.get(pid, saved_state.get(str(pid)))
                self._inner[p].load_state_dict({"state": {0: one} if one is not None else {},
                                                "param_groups": [dict(hyper, params=[0])]})

    def remove_hooks(self) -> None:
        """Detach from the parameters (after this, backward leaves .grad in place as usual)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def build_fused_optimizer(params_groups: list[dict], name: str, lr: float, weight_decay: float,
                          betas: Sequence[float], eps: float, *, fused: bool | None = None,
                          nan_policy: str = "skip") -> FusedBackwardOptimizer:
    """Same arguments as ``optim.build_optimizer``; each parameter gets that optimizer, stepped in backward.

    ``nan_policy`` (training.nan_policy): "skip" checks each gradient before its step (a device sync per
    parameter); "stop" only checks the norm after backward, since the run then stops before saving anything."""
    from lorakit.train import optim

    if name not in PER_TENSOR_OPTIMIZERS:
        raise ConfigError(f'memory.fused_backward: optimizer.name = "{name}" needs every gradient of the step at '
                          f"once; choose one of {', '.join(PER_TENSOR_OPTIMIZERS)} or set memory.fused_backward = false")
    groups = []
    for g in params_groups:
        g = dict(g, params=list(g["params"]))
        if g.get("lr") is None:
            g["lr"] = lr
        groups.append(g)
    if not any(g["params"] for g in groups):
        raise ConfigError("optimizer: there are no trainable parameters (is the LoRA injected into anything?)")

    def make(one: list[dict]) -> torch.optim.Optimizer:
        return optim.build_optimizer(one, name, lr, weight_decay, betas, eps, fused=fused)

    return FusedBackwardOptimizer(groups, make, check_each_grad=nan_policy != "stop")
