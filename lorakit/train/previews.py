"""Preview images during a run: the prompts (kohya syntax), one image per prompt at a step, the before/after grid."""

from __future__ import annotations

import contextlib
import json
import math
import textwrap
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
                 watchdog, log: Callable[[str], None], resolution: Optional[tuple[int, int]] = None) -> None:
        w, h = resolution or resolution_wh(cfg.data.resolution)   # the run's (a data.config TOML's) over [data]'s
        multiple = getattr(spec, "sample_multiple", 8)
        width, height = cfg.sample.width or w, cfg.sample.height or h   # sample.* are checked at validation
        sized = (max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple))
        if sized != (width, height):  # a size that comes from data.resolution: rounded down, said once
            log(f"note: previews are drawn at {sized[0]}x{sized[1]}: the training resolution {width}x{height} is not a "
                f"multiple of {multiple}, which the sampler needs (set sample.width / sample.height to choose)")
        defaults = SamplePrompt(prompt="", negative=cfg.sample.negative_prompt, width=sized[0],
                                height=sized[1], steps=cfg.sample.steps, seed=cfg.sample.seed,
                                cfg_scale=spec.default_cfg_scale if cfg.sample.cfg_scale is None
                                else cfg.sample.cfg_scale)
        self.prompts = load_prompts(cfg.sample.prompts, cfg.sample.prompts_file, defaults, multiple, cfg.model.family)
        every = cfg.sample.every_n_steps
        if not self.prompts and (every or cfg.sample.at_start):  # was silent: a preset's every_n_steps drew nothing
            what = f"no samples every {every} steps, no before/after grid" if every else "no before/after grid"
            log(f"note: no previews are drawn ({what}): set sample.prompts or sample.prompts_file, e.g. "
                "sample.prompts = [\"a photo of <trigger> ...\"]")
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
            save_image(img, path, sample_text(p, step, self.cfg))
            problem = health.image_problem(img)
            if problem:
                self.log(f"warning: sample {path.name} looks {problem}: often NaN weights in disguise; check the "
                         "loss curve and try a lower learning rate")
                if self.metrics is not None:
                    self.metrics.write({"step": step, "sample_problem": problem, "sample": path.name})
            out.append(path)
        self.paths += out
        if out:
            from PIL import Image

            label = tag or f"step {step}"
            cells = [(Image.open(q), caption(p, label)) for q, p in zip(out, self.prompts)]
            grid = self.run.samples / f"grid_{tag or f'step{step:08d}'}.png"
            save_image(labelled_grid([cells]), grid, {"lorakit": json.dumps({"step": step, "samples": [
                q.name for q in out]})})
            if self.metrics is not None and hasattr(self.metrics, "add_image"):
                self.metrics.add_image(f"samples/{tag or 'step'}", Image.open(grid), step)
        return out

    def grid(self) -> Optional[Path]:
        return before_after_grid(self.run, self.cfg.save.name, len(self.prompts), self.prompts)


CELL_MIN = 256
"""Smallest side of a grid cell in pixels: smaller previews (the toy's 64 px) are enlarged with nearest-neighbour."""


def sample_text(p: SamplePrompt, step: int, cfg) -> dict[str, str]:
    """The PNG text chunks of a preview: its prompt and what drew it (step, seed, sampling settings, the run)."""
    settings = {"step": step, "seed": p.seed, "width": p.width, "height": p.height, "sample_steps": p.steps,
                "cfg_scale": p.cfg_scale, "guidance": p.guidance, "sampler": p.sampler, "run": cfg.save.name,
                "family": cfg.model.family, "rank": cfg.network.rank, "alpha": cfg.network.alpha, "lr": cfg.optimizer.lr}
    return {"prompt": p.prompt, "negative_prompt": p.negative, "step": str(step), "seed": str(p.seed),
            "lorakit": json.dumps(settings)}


def caption(p: SamplePrompt, label: str) -> str:
    return f"{label} · seed {p.seed}\n{p.prompt}"


def labelled_grid(rows: list[list[tuple["Image.Image", str]]]) -> "Image.Image":
    """Rows of (image, caption) cells → one image: each cell enlarged (nearest) to at least CELL_MIN px, its
    caption (wrapped) in a band under it."""
    from PIL import Image, ImageDraw, ImageFont

    sizes = [img.size for row in rows for img, _ in row]   # prompts may have their own --w/--h: no cell is squashed
    k = max(1, math.ceil(CELL_MIN / min(min(w, h) for w, h in sizes)))
    cw, ch = max(w for w, _ in sizes) * k, max(h for _, h in sizes) * k
    font = ImageFont.load_default()
    chars = max(16, cw // 7)

    def wrap(text: str) -> list[str]:          # the label line, then the prompt on at most three lines
        head, _, prompt = text.partition("\n")
        return [head] + textwrap.wrap(prompt, chars)[:3]

    wrapped = [wrap(text) for row in rows for _, text in row]
    n_lines = max(len(lines) for lines in wrapped)
    band = 6 + 12 * n_lines
    grid = Image.new("RGB", (cw * max(len(r) for r in rows), (ch + band) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    it = iter(wrapped)
    for r, row in enumerate(rows):
        for c, (img, _) in enumerate(row):
            x, y = c * cw, r * (ch + band)
            w, h = img.size[0] * k, img.size[1] * k
            grid.paste(img.convert("RGB").resize((w, h), Image.NEAREST), (x + (cw - w) // 2, y + (ch - h) // 2))
            draw.multiline_text((x + 4, y + ch + 3), "\n".join(next(it)), fill="black", font=font, spacing=2)
    return grid


def before_after_grid(run: RunDir, name: str, n: int, prompts: Optional[list[SamplePrompt]] = None
                      ) -> Optional[Path]:
    """The before samples over the after samples, each labelled (before/after, seed, prompt), enlarged to see."""
    from PIL import Image

    before = sorted(run.samples.glob(f"{glob_escape(name)}_before_*.png"))
    after = sorted(run.samples.glob(f"{glob_escape(name)}_after_*.png"))
    if not before or len(before) != len(after):
        return None

    def cells(files: list[Path], label: str) -> list[tuple[Image.Image, str]]:
        out = []
        for i, f in enumerate(files):
            img = Image.open(f)
            own = img.info.get("prompt")   # what drew it (a resume may have changed sample.prompts since "before")
            prompt = SamplePrompt(prompt=own, seed=int(img.info.get("seed", 0) or 0)) if own is not None else (
                prompts[i] if prompts and i < len(prompts) else SamplePrompt(prompt="", seed=0))
            step = img.info.get("step")
            out.append((img, caption(prompt, f"{label}" + (f" (step {step})" if step else ""))))
        return out

    path = run.samples / "before_after.png"
    save_image(labelled_grid([cells(before, "before"), cells(after, "after")]), path)
    return path
