"""Preview images during a run: the prompts (kohya syntax), one image per prompt at a step, the before/after grid."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Optional

import torch

from lorakit.config.resolution import resolution_wh
from lorakit.data.images import save_image
from lorakit.models.base import SamplePrompt
from lorakit.train import health
from lorakit.train.rundir import RunDir, glob_escape
from lorakit.train.sampling import load_prompts, sample_filename
from lorakit.train.steps import autocast, no_training_randomness


class Previews:
    """Draws the run's sample prompts with the current weights; a sample that looks broken is reported."""

    def __init__(self, cfg, spec, adapter, run: RunDir, device: torch.device, compute_dtype: torch.dtype,
                 watchdog, log: Callable[[str], None]) -> None:
        w, h = resolution_wh(cfg.data.resolution)
        defaults = SamplePrompt(prompt="", negative=cfg.sample.negative_prompt, width=cfg.sample.width or w,
                                height=cfg.sample.height or h, steps=cfg.sample.steps, seed=cfg.sample.seed,
                                cfg_scale=spec.default_cfg_scale if cfg.sample.cfg_scale is None
                                else cfg.sample.cfg_scale)
        self.prompts = load_prompts(cfg.sample.prompts, cfg.sample.prompts_file, defaults)
        self.cfg, self.adapter, self.run, self.device, self.dtype = cfg, adapter, run, device, compute_dtype
        self.watchdog, self.log = watchdog, log
        self.metrics = None
        self.modules: dict = {}  # the LoRA-carrying modules: dropout off while drawing (steps.no_training_randomness)
        self.paths: list[Path] = []

    def due(self, step: int) -> bool:
        every = self.cfg.sample.every_n_steps
        return bool(every and step % every == 0 and self.prompts and step < self.cfg.training.max_steps)

    def draw(self, step: int, tag: str = "") -> list[Path]:
        self.watchdog.beat(f"sampling at step {step}")
        out = []
        for i, p in enumerate(self.prompts):
            # previews run eager: compiled training regions would recompile for every sample shape
            eager = torch.compiler.set_stance("force_eager") if self.cfg.memory.compile else contextlib.nullcontext()
            with torch.no_grad(), autocast(self.device, self.dtype), eager, no_training_randomness(self.modules):
                img = self.adapter.sample(p, torch.Generator().manual_seed(p.seed))
            path = self.run.samples / sample_filename(self.cfg.save.name, step, i, p.seed, tag)
            save_image(img, path)
            problem = health.image_problem(img)
            if problem:
                self.log(f"warning: sample {path.name} looks {problem}: often NaN weights in disguise; check the "
                         "loss curve and try a lower learning rate")
                if self.metrics is not None:
                    self.metrics.write({"step": step, "sample_problem": problem, "sample": path.name})
            out.append(path)
        self.paths += out
        return out

    def grid(self) -> Optional[Path]:
        return before_after_grid(self.run, self.cfg.save.name, len(self.prompts))


def before_after_grid(run: RunDir, name: str, n: int) -> Optional[Path]:
    from PIL import Image

    before = sorted(run.samples.glob(f"{glob_escape(name)}_before_*.png"))
    after = sorted(run.samples.glob(f"{glob_escape(name)}_after_*.png"))
    if not before or len(before) != len(after):
        return None
    w, h = Image.open(before[0]).size
    grid = Image.new("RGB", (w * len(before), h * 2), "white")
    for i, (b, a) in enumerate(zip(before, after)):
        grid.paste(Image.open(b).convert("RGB").resize((w, h)), (i * w, 0))
        grid.paste(Image.open(a).convert("RGB").resize((w, h)), (i * w, h))
    path = run.samples / "before_after.png"
    save_image(grid, path)
    return path

