"""Health checks of a run: NaN/Inf losses and gradients, bad preview images, stalls, no-effect LoRAs."""

from __future__ import annotations

import faulthandler
import sys
import threading
import time
from typing import Optional

import numpy as np
import torch
from PIL import Image

NAN_CAUSES = (
    "the learning rate is too high for this model (try optimizer.lr 2-10x lower)",
    "fp16 mixed precision overflowed (use training.mixed_precision = \"bf16\" on GPUs that support it, "
    "or \"no\")",
    "an fp8 base model on a path that does not support it (try memory.fp8_base = false)",
)


def is_finite(value: torch.Tensor | float) -> bool:
    """True when a loss or gradient norm is a finite number."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return bool(np.isfinite(value))


class StepStats:
    """One optimizer step's loss and gradient norm.

    On a GPU both numbers are copied into pinned host memory behind the step's own work and read only when asked
    for: reading waits for that step alone, not for the work the host queued after it. ``finite`` stays on the
    device for an optimizer that can skip a step by itself (``skip_on_device``)."""

    def __init__(self, loss: torch.Tensor, grad_norm: torch.Tensor | float) -> None:
        if not isinstance(grad_norm, torch.Tensor):  # a number (fused_backward's): filled in, no host-to-device copy
            grad_norm = torch.full((), float(grad_norm), device=loss.device)
        values = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(())])
        self._device_values = values
        self.deferred = False  # set by skip_on_device: the loop may read the numbers a step later
        self._event = None
        if values.device.type == "cuda":
            host = torch.empty(2, dtype=torch.float32, pin_memory=True)
            host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            values = host
        self._values = values
        self._read: Optional[tuple[float, float]] = None

    @property
    def finite(self) -> torch.Tensor:
        """Whether both numbers are finite, as a tensor on their device (no synchronisation)."""
        return torch.isfinite(self._device_values).all()

    def read(self) -> tuple[float, float]:
        """(loss, gradient norm) as Python floats; waits for the step that produced them."""
        if self._read is None:
            if self._event is not None:
                self._event.synchronize()
            loss, norm = self._values.tolist()
            self._read = (loss, norm)
        return self._read

    def ok(self) -> bool:
        loss, norm = self.read()
        return is_finite(loss) and is_finite(norm)


def skip_on_device(optimizer: torch.optim.Optimizer, stats: StepStats) -> bool:
    """Have a fused torch Adam/AdamW skip this step by itself if the loss or gradient is not finite.

    Its ``found_inf`` input (the one GradScaler uses) makes the fused kernel leave parameters, moments and step
    counts untouched, so the loop can queue the update without first waiting for the numbers, and the GPU never
    idles between steps. Returns False, setting nothing, for any other optimizer (they step on the host's
    decision)."""
    if not (isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and optimizer.defaults.get("fused")):
        return False
    optimizer.found_inf = (~stats.finite).float()
    stats.deferred = True
    return True


def is_disk_full(exc: BaseException) -> bool:
    """True when a write failed for lack of room (full disk, quota, EFBIG): :func:`lorakit.fsutil.is_disk_full`."""
    from lorakit.fsutil import is_disk_full as _full

    return _full(exc)


def image_problem(img: Image.Image) -> Optional[str]:
    """Why a preview image looks broken ("black", "constant", "nan"), or None if it looks like an image."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    if not np.isfinite(arr).all():
        return "nan"
    if arr.max() <= 8:
        return "black"
    if arr.reshape(-1, arr.shape[-1]).std(axis=0).max() < 1.0:
        return "constant"
    return None


class StallWatchdog:
    """Reports when the run makes no progress for ``timeout`` seconds, with what it was doing.

    The loop calls :meth:`beat` with a phase name ("caching latents", "step 120", "saving") whenever it
    makes progress. A background thread prints a report (and all thread stacks) once per stall; it never
    kills the run, because a slow step on a swapping machine is not a dead one.
    """

    def __init__(self, timeout: float, log=print) -> None:
        self.timeout = timeout
        self.log = log
        self.phase = "starting"
        self.last = time.monotonic()
        self.stalls = 0
        self._reported = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "StallWatchdog":
        if self.timeout > 0:
            self._thread = threading.Thread(target=self._run, name="lorakit-watchdog", daemon=True)
            self._thread.start()
        return self

    def beat(self, phase: str) -> None:
        self.phase = phase
        self.last = time.monotonic()
        self._reported = False

    def _run(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout and not self._reported:
                self._reported = True
                self.stalls += 1
                self.log(f"lorakit: no progress for {idle:.0f} s while {self.phase}; the run may be stalled "
                         "(dead data loader, hung device, swapping). Thread stacks follow on stderr.")
                try:
                    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                except (ValueError, OSError, AttributeError):  # stderr without a file descriptor (UI, tests)
                    faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
