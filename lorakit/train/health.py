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

from lorakit.errors import TrainingError
from lorakit.fsutil import disk_problem

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
    return disk_problem(exc) is not None


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


# ------------------------------------------------------------------ issue 27: inputs that break a run, named


def disk_error(exc: BaseException, path) -> BaseException:
    """A write's failure as the one-line disk message (TrainingError naming ``path``), or ``exc`` itself when
    the disk is not the reason."""
    why = disk_problem(exc) if isinstance(exc, Exception) else None
    if why is None:
        return exc
    return TrainingError(f"{why} while writing {path}: nothing was trained and no folder is left behind; free some "
                         "space and run the same command again")


def record_failure(run, **fields) -> None:
    """run.json says how the run ended, when the disk lets it: a full disk must not hide the message that says
    so behind a second error from this write."""
    try:
        run.write_status(**fields)
    except Exception as exc:  # noqa: BLE001 - the first error is the one to report
        if disk_problem(exc) is None and not isinstance(exc, (OSError, ValueError)):
            raise


def disk_needs(needs, dev_of=None):
    """[(folder, bytes, what)] merged per file system: [(existing folder to ask, bytes, what)]. The run folder and
    the cache folder may lie on different disks; each must hold its own share (both, where they share one)."""
    import os
    from pathlib import Path

    merged: dict[int, list] = {}
    for folder, size, what in needs:
        probe = Path(folder).absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        key = (dev_of or (lambda q: os.stat(q).st_dev))(probe)
        if key in merged:
            merged[key][1] += size
            merged[key][2] += f", {what}"
        else:
            merged[key] = [probe, size, what]
    return [tuple(v) for v in merged.values()]


def name_nonfinite_weights(exc: BaseException, failed_at, modules, model_cfg) -> BaseException:
    """After a NaN/Inf stop: when a frozen base-model weight is itself NaN/Inf, say so (component, tensor, file)
    instead of blaming the learning rate. Scans only on that failure (one pass over the weights)."""
    if failed_at is None or not modules:
        return exc
    for component, module in modules.items():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.requires_grad or not t.is_floating_point() or t.dtype in _FP8:
                continue
            if not bool(torch.isfinite(t).all()):
                return TrainingError(
                    f"step {failed_at}: the loss is not finite because the base model's weights are not: "
                    f"{component} tensor {name!r} holds NaN/Inf (loaded from {getattr(model_cfg, 'checkpoint', '?')}); "
                    "the model file is damaged: replace it (`lorakit inspect` on it names NaN/Inf tensors); the "
                    "learning rate is not the cause")
    return exc


_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def unwritable(folder) -> Optional[str]:
    """Why ``folder`` cannot be made or written (None when it can, as far as the OS says without writing): its
    nearest existing ancestor is a file, or is not writable."""
    import os
    from pathlib import Path

    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return f"{p} is a file, not a folder"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable for this user"
    return None


def preview_count(cfg, multiple: int = 8) -> int:
    """How many preview prompts the run draws (sample.prompts and sample.prompts_file), each parsed as the previews
    will parse it: a bad prompt line or file stops the run at the scan, before minutes of model loading (walk8: a
    wrong flag such as ``--seed 3`` was refused only after the model had loaded)."""
    from lorakit.models.base import SamplePrompt
    from lorakit.train.sampling import load_prompts

    if not (cfg.sample.prompts or cfg.sample.prompts_file):
        return 0
    return len(load_prompts(cfg.sample.prompts, cfg.sample.prompts_file, SamplePrompt(prompt=""), multiple,
                            getattr(cfg.model, "family", None)))


def check_disk(cfg, run, dataset, spec, lora_params: int = 0) -> None:
    """Stop before training when the disk cannot hold what the run will write: the caches and samples (checked at
    the scan), then with the LoRA's actual parameter count (after injection) its checkpoints too."""
    import shutil

    from lorakit.config.resolution import resolution_wh
    from lorakit.data.cache import cache_folder

    cache_root = cache_folder(cfg.data, cfg.save.dir)
    if (why := unwritable(cache_root)) is not None:  # at the scan, before minutes of model loading
        key = "data.cache_dir" if cfg.data.cache_dir else ("data.dir" if cfg.data.cache_next_to_images else "save.dir")
        raise TrainingError(f"{key}: cannot create the cache folder {cache_root}: {why}; set data.cache_dir to a "
                            "folder you can write")
    w, h = resolution_wh(cfg.data.resolution)
    lat = spec.latent_channels * (w // spec.vae_downscale) * (h // spec.vae_downscale) * 4
    n = len(dataset.items) * (2 if any(s.flip_aug for s in dataset.subsets) else 1)
    ckpt = lora_params * (2 + 4 * 3)  # the exported file (16-bit) + fp32 weights and two optimizer moments
    previews = preview_count(cfg, getattr(spec, "sample_multiple", 8))   # a bad prompt line is refused here too
    need = ckpt * (cfg.save.keep_last + 1) + 2e6 * (previews + 1) * 4
    caches = n * lat * 1.2 + len(dataset.items) * 2e6  # latents, and text-encoder outputs (T5: ~1.5 MB a caption)
    for folder, gib, what in disk_needs([(run.root, need, f"{cfg.save.keep_last} checkpoints, samples"),
                                                (cache_root, caches, "caches")]):
        free = shutil.disk_usage(folder).free
        if free < gib:
            raise TrainingError(f"not enough disk space in {folder}: about {gib / 2**30:.2f} GiB needed "
                                f"({what}), {free / 2**30:.2f} GiB free")
