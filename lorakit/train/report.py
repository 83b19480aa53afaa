"""The step reporter: a finished step's numbers become the NaN decision, a metrics row and the progress bar.

Steps are reported one step late where the optimizer decides on the GPU (``health.StepStats.deferred``), so that the
host never waits for the GPU to read a loss; before a save or a preview every pending step is read first.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Optional

import torch

from lorakit.errors import TrainingError
from lorakit.train import health


class StepReporter:
    """Reads finished steps (in order) and reports them; ``last_saved`` names the checkpoint an error points to."""

    def __init__(self, cfg, metrics, progress: "Progress", log: Callable[[str], None], start_step: int,
                 device: torch.device) -> None:
        self.cfg, self.metrics, self.progress, self.log = cfg, metrics, progress, log
        self.start_step, self.device = start_step, device
        self.pending: list[tuple[int, health.StepStats, dict]] = []
        self.loss = float("nan")
        self.skipped = 0
        self.failed_at: Optional[int] = None
        self.last_saved: Any = None

    def add(self, step: int, stats: health.StepStats, at_step: dict, read_now: bool) -> None:
        """Queue ``step``; report the earlier ones (the GPU is busy with this step by now), and this one too when
        ``read_now`` (a save or preview follows, or its numbers are already on the host)."""
        self.flush()
        self.pending.append((step, stats, at_step))
        if read_now or not stats.deferred:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            self._report(*self.pending.pop(0))

    def flush_quietly(self) -> None:
        """After an out-of-memory error or an interrupt: write the rows of the steps that did finish (their own
        NaN check no longer matters; the run stops anyway)."""
        with contextlib.suppress(Exception):
            self.flush()

    def _report(self, step: int, stats: health.StepStats, at_step: dict) -> None:
        cfg = self.cfg
        self.loss, grad_norm = stats.read()
        if not stats.ok():
            if cfg.training.nan_policy == "stop":
                self.failed_at = step
                raise TrainingError(
                    f"step {step}: loss {self.loss} / gradient norm {grad_norm} is not finite; stopped. "
                    f"Last good checkpoint: {self.last_saved or 'none yet'}. Likely causes: "
                    + "; ".join(health.NAN_CAUSES))
            self.skipped += 1
            self.log(f"warning: step {step}: non-finite loss/gradient, step skipped ({self.skipped} so far)")
            self.metrics.write({"step": step, "skipped_step": True, "skipped_total": self.skipped})
        row = {"step": step, "loss": self.loss, "lr": at_step["lr"], "seconds": at_step["seconds"],
               "grad_norm": grad_norm, "epoch": at_step["epoch"], "peak_mem_gib": peak_memory_gib(self.device)}
        if step == self.start_step + 1 and cfg.memory.compile:  # compile cost, reported apart from step speed
            self.log(f"first step: {row['seconds']:.1f} s including compilation (inductor keeps compiled kernels "
                     "in its on-disk cache: later runs with the same shapes compile faster)")
        if step % cfg.log.every_n_steps == 0 or step == cfg.training.max_steps:
            self.metrics.write(row)
        self.progress.update(row)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:
        return float("nan")


class Progress:
    """A tqdm bar showing loss, it/s, ETA and memory."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
        self.ema: Optional[float] = None

    def update(self, row: dict[str, Any]) -> None:
        loss = row["loss"]
        if math.isfinite(loss):
            self.ema = loss if self.ema is None else 0.95 * self.ema + 0.05 * loss
        self.bar.set_postfix(loss=f"{self.ema:.4f}" if self.ema is not None else "nan",
                             lr=f"{row['lr']:.2e}", mem=f"{row['peak_mem_gib']:.1f}G", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
