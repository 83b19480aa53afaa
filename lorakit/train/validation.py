"""Validation loss: the training objective on held-out images at fixed timesteps and fixed noise, and the LoRA of
the step where it was lowest (``save.keep_best``).

Each validation image is scored as one batch of ``validation.timesteps`` copies; their noise and timesteps come from
a generator of its own, seeded from ``training.seed`` and the image's folder and file name, and drawn from the
family's own training timestep distribution (``adapter.noise``). The numbers are therefore the same at every
evaluation of a run, in every run of the same config and across a kill and resume, so curves of different runs
(a sweep's points) compare like for like. Nothing here touches the training generator or the global RNG: the
denoiser runs in eval mode (no LoRA dropout) and under ``no_grad``.

Rows in metrics.jsonl: ``{"step": s, "val_loss": mean, "val_loss_by_timestep": [...]}``, the last listing the
mean over images of each timestep slot. Validation runs before the first step (step 0), every
``validation.every_n_steps`` (0: at each save point) and at the last step.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lorakit.data.validation import ValidationSet, image_name
from lorakit.models.base import Batch
from lorakit.train.steps import autocast, to_device


def noise_seed(seed: int, name: str) -> int:
    """The seed of one validation image's generator (63 bits of sha256 over the run seed and the image name)."""
    return int(hashlib.sha256(f"{seed}|validation|{name}".encode()).hexdigest()[:16], 16) & (2**63 - 1)


def best_of(rows: list[dict[str, Any]]) -> Optional[tuple[int, float]]:
    """(step, loss) of the lowest finite validation loss after step 0 (the earliest such step on a tie)."""
    found = [(r["val_loss"], r["step"]) for r in rows if isinstance(r.get("val_loss"), (int, float))
             and math.isfinite(r["val_loss"]) and r.get("step", 0) >= 1]
    if not found:
        return None
    loss, step = min(found, key=lambda x: (x[0], x[1]))
    return step, loss


class Validator:
    """Scores the validation set when due, writes its rows, and keeps the best step's LoRA."""

    def __init__(self, vset: ValidationSet, cfg, run, adapter, latents, texts, device: torch.device,
                 compute_dtype: torch.dtype, metrics, log: Callable[[str], None]) -> None:
        self.vset, self.cfg, self.run, self.adapter = vset, cfg, run, adapter
        self.latents, self.texts, self.device, self.dtype = latents, texts, device, compute_dtype
        self.metrics, self.log = metrics, log
        self.best: Optional[tuple[int, float]] = None
        self.modules: dict = {}  # component → module: put in eval mode while scoring
        self.keep = None  # (modules, targets, dataset, stream) once the loop starts, for save.keep_best

    @property
    def enabled(self) -> bool:
        return len(self.vset) > 0

    def due(self, step: int) -> bool:
        if not self.enabled:
            return False
        every = self.cfg.validation.every_n_steps or self.cfg.save.every_n_steps
        return step == self.cfg.training.max_steps or bool(every and step % every == 0)

    def resume_from(self, rows: list[dict[str, Any]]) -> None:
        """The best step so far, from the rows a resumed run keeps."""
        self.best = best_of(rows)

    def run_at(self, step: int) -> float:
        loss, per_slot = self.loss()
        self.metrics.write({"step": step, "val_loss": loss, "val_loss_by_timestep": per_slot})
        if step >= 1 and math.isfinite(loss) and (self.best is None or loss < self.best[1]):
            self.best = (step, loss)
            if self.cfg.save.keep_best and self.keep is not None:
                self.save_best(step, loss)
        return loss

    def best_path(self) -> Path:
        return self.run.root / f"{self.cfg.save.name}-best.safetensors"

    def save_best(self, step: int, loss: float) -> None:
        from lorakit.train.export import export_lora
        from lorakit.train.resume import extract_all

        modules, targets, dataset, stream = self.keep
        export_lora(self.best_path(), self.adapter, extract_all(modules, targets), self.cfg, dataset, stream, step,
                    self.run.session(), extra={"lorakit_best_step": str(step), "lorakit_val_loss": repr(loss)})

    # ------------------------------------------------------------------------------------------ the loss
    def loss(self) -> tuple[float, list[float]]:
        """Mean validation loss, and the mean of each timestep slot over the images."""
        from lorakit.diffusion import objectives

        k = self.cfg.validation.timesteps
        denoiser = [m for m in self.modules.values() if isinstance(m, torch.nn.Module)]
        modes = [m.training for m in denoiser]
        per_image = []
        eager = (torch.compiler.set_stance("force_eager") if self.cfg.memory.compile else contextlib.nullcontext())
        try:
            for m in denoiser:
                m.eval()
            with torch.no_grad(), eager:
                for item, caption in zip(self.vset.items, self.vset.captions):
                    gen = torch.Generator().manual_seed(noise_seed(self.cfg.training.seed, image_name(item)))
                    batch = to_device(self.batch(item, caption, k), self.device)
                    noise = torch.randn(batch.latents.shape, generator=gen).to(self.device)
                    noised = self.adapter.noise(batch.latents, noise, batch, self.cfg.training, gen)
                    with autocast(self.device, self.dtype):
                        pred = self.adapter.predict(noised, batch)
                    per = objectives.loss_per_sample(pred.float(), noised.target.float(), self.cfg.training.loss,
                                                     self.cfg.training.huber_c)
                    per_image.append((per * noised.weight.to(per.device).float()).cpu())
        finally:
            for m, mode in zip(denoiser, modes):
                m.train(mode)
        table = torch.stack(per_image)  # [images, timesteps]
        return float(table.mean()), [float(v) for v in table.mean(0)]

    def batch(self, item, caption: str, k: int) -> Batch:
        lat = self.latents.get(item, False)
        if self.texts is not None:
            one = self.texts.get(caption)
        else:
            one = {key: v[0] for key, v in self.adapter.encode_text([caption]).items()}
        return Batch(latents=lat.unsqueeze(0).expand(k, *lat.shape).contiguous(),
                     text={key: v.unsqueeze(0).expand(k, *v.shape).contiguous() for key, v in one.items()},
                     original_sizes=[item.original_hw] * k, crop_top_lefts=[item.crop_top_left] * k,
                     target_sizes=[item.target_hw] * k, loss_weight=torch.ones(k), captions=[caption] * k)


def attach(validator: Validator, modules: dict, targets, dataset, stream) -> None:
    """What keep_best exports and which modules go to eval mode during validation."""
    validator.modules = modules
    validator.keep = (modules, targets, dataset, stream)


def start(r, cfg, metrics, start_step: int, log: Callable[[str], None]) -> Validator:
    """The run's validator (``r``: the loop's Run; ``cfg``: the config the run uses); scores step 0 on a fresh
    start, and takes the best step so far from metrics.jsonl on a resume."""
    from lorakit.train.metrics import read_metrics

    v = Validator(r.validation, cfg, r.run, r.adapter, r.latents, r.texts, r.device, r.compute_dtype, metrics, log)
    attach(v, r.placed.modules, r.placed.targets, r.dataset, r.stream)
    if v.enabled and start_step > 0:
        v.resume_from(read_metrics(metrics.path))
    elif v.enabled:
        loss = v.run_at(0)
        log(f"validation loss before training: {loss:.6g} ({len(v.vset)} image(s) × {cfg.validation.timesteps} "
            "fixed timesteps)")
    return v


def report(v: Validator, log: Callable[[str], None]) -> dict[str, Any]:
    """After the run: the step with the lowest validation loss (run.json keys), and whether its LoRA was kept."""
    if v is None or not v.enabled or v.best is None:
        return {}
    step, loss = v.best
    out: dict[str, Any] = {"best_step": step, "best_val_loss": loss}
    kept = ""
    if v.cfg.save.keep_best and v.best_path().exists():
        from lorakit.safetensors_header import read_safetensors_header

        saved = read_safetensors_header(v.best_path())[1].get("lorakit_best_step")
        if saved == str(step):
            out["best_lora"] = str(v.best_path())
            kept = f"; its LoRA: {v.best_path()}"
        else:  # a resume with changed settings (--force-resume) that never came back to that loss
            log(f"warning: {v.best_path().name} holds step {saved}, not the best step {step} of this run's metrics")
    log(f"lowest validation loss: {loss:.6g} at step {step}{kept}")
    return out
