"""Epoch-based run length and saving, as kohya users write them (``training.max_epochs``, ``save.every_n_epochs``).

An epoch is every usable image × its repeats once, in batches of ``training.batch_size`` that never mix buckets (the
data stream's ``steps_per_epoch``); an optimizer step takes ``gradient_accumulation`` batches, so an epoch is
``ceil(batches / gradient_accumulation)`` optimizer steps, as sd-scripts counts it
(``max_train_steps = max_train_epochs * ceil(len(dataloader) / gradient_accumulation_steps)``). The steps are known
once the dataset is scanned; :func:`apply` returns a copy of the config with ``training.max_steps`` and
``save.every_n_steps`` derived (the loaded config is never written), and the validator has already refused a
config that sets both the epoch and the step key by hand.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Callable

from lorakit.config.schema import Config


def optimizer_steps_per_epoch(batches_per_epoch: int, gradient_accumulation: int) -> int:
    """Optimizer steps of one epoch (at least 1)."""
    return max(1, math.ceil(batches_per_epoch / max(1, gradient_accumulation)))


def apply(cfg: Config, batches_per_epoch: int, log: Callable[[str], None] = print) -> Config:
    """``cfg`` with the epoch keys turned into steps; ``cfg`` itself when neither is set."""
    t, s = cfg.training, cfg.save
    if t.max_epochs is None and not s.every_n_epochs:
        return cfg
    per = optimizer_steps_per_epoch(batches_per_epoch, t.gradient_accumulation)
    out = copy.copy(cfg)  # keeps what the loader recorded on it (the keys set by hand)
    if t.max_epochs is not None:
        out.training = dataclasses.replace(t, max_steps=t.max_epochs * per)
        log(f"training.max_epochs = {t.max_epochs}: {per} steps per epoch ({batches_per_epoch} batches of "
            f"{t.batch_size}, gradient accumulation {t.gradient_accumulation}), {out.training.max_steps} steps")
    if s.every_n_epochs:
        out.save = dataclasses.replace(s, every_n_steps=s.every_n_epochs * per)
        log(f"save.every_n_epochs = {s.every_n_epochs}: a checkpoint every {out.save.every_n_steps} steps")
    return out
