"""Sampling the toy models through their family adapters, and the learning benchmark (concept score before/after,
drift).

A toy model here is its family's Adapter, loaded from the shipped files (``load_toy``: the same ``Adapter.load`` a
run uses) or bound to freshly built modules (``from_modules``); images are drawn with ``Adapter.sample`` (the
family's own sampler, classifier-free guidance as the recipe's demo settings say: the toy bases were trained with
10 % caption dropout). Nothing here knows a family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from lorakit.toy import detector, world

# Fixed benchmark prompts. The concept prompts name the trigger; the drift prompts never do.
CONCEPT_PAIRS = (("red", "blue"), ("green", "white"), ("yellow", "black"), ("blue", "yellow"),
                 ("white", "red"), ("black", "green"))
DRIFT_PROMPTS = ("a red circle on a blue background", "a green square on a white background",
                 "a yellow triangle on a black background", "a blue circle on a yellow background",
                 "a white square on a red background", "a black triangle on a green background")
EVAL_SEEDS = (0, 1, 2, 3)

Generate = Callable[[list[str], list[int], bool], list[Image.Image]]


# --------------------------------------------------------------------------------------- the toy models

@dataclass
class ToyModel:
    """One family's toy: its Adapter (loaded or bound to in-memory modules) and the recipe's demo settings."""

    family: str
    adapter: Any
    demo: Any                          # lorakit.models.base.ToyDemo


def from_modules(family: str, modules: dict[str, Any]) -> ToyModel:
    """Freshly built (or loaded) modules of ``family``'s toy, behind the family Adapter (``TOY.adapter``)."""
    from lorakit.toy.build import toy_config
    from lorakit.toy.paths import toy_recipe

    recipe = toy_recipe(family)
    return ToyModel(family, recipe.adapter(modules, toy_config(family)), recipe.demo)


def load_toy(family: str, dtype: torch.dtype = torch.float32, root: Optional[Path] = None) -> ToyModel:
    """The shipped toy model (or one built under ``root``), loaded by the family Adapter from its files."""
    from lorakit.models.registry import get_family
    from lorakit.toy.build import toy_config
    from lorakit.toy.paths import model_section, toy_recipe

    cfg = toy_config(family, model=model_section(family, root))
    adapter = get_family(family).Adapter(cfg)
    adapter.load(cfg.model, cfg.memory, torch.device("cpu"), dtype)
    return ToyModel(family, adapter, toy_recipe(family).demo)


# --------------------------------------------------------------------------------------- sampling

@torch.no_grad()
def sample(model: ToyModel, prompts: list[str], seeds: Sequence[int], steps: Optional[int] = None,
           cfg: Optional[float] = None, guidance: float = 3.5) -> list[Image.Image]:
    """One image per (prompt, seed) with the family's own sampler (``Adapter.sample``), at the world's size; an
    empty negative prompt. ``steps`` / ``cfg`` default to the recipe's demo settings; ``guidance`` is the
    guidance-embedding value of families that have one."""
    from lorakit.models.base import SamplePrompt

    steps = steps or model.demo.sample_steps
    cfg = model.demo.cfg_scale if cfg is None else cfg
    size = world.IMAGE_SIZE
    return [model.adapter.sample(SamplePrompt(prompt=p, width=size, height=size, steps=steps, seed=int(s),
                                              cfg_scale=float(cfg), guidance=guidance),
                                 torch.Generator().manual_seed(int(s)))
            for p, s in zip(prompts, seeds)]


# --------------------------------------------------------------------------------------- benchmark

def concept_prompts(trigger: str) -> list[str]:
    return [f"a {c} {trigger} on a {b} background" for c, b in CONCEPT_PAIRS]


def _expand(prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]


def prompt_following(images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, float]:
    """Fraction of images whose shape / colour / background (per the detector) match the prompt words."""
    hits = {"shape": [], "colour": [], "background": [], "all": []}
    for img, prompt in zip(images, prompts):
        words = prompt.split()
        want_bg = words[words.index("background") - 1]
        want_col = next(w for w in words if w in world.COLOURS)
        want_shape = next((w for w in words if w in world.ALL_SHAPES), world.CONCEPT_SHAPE)
        r = detector.read(img)
        ok = (r.shape == want_shape, r.colour == want_col, r.background == want_bg)
        for key, v in zip(("shape", "colour", "background"), ok):
            hits[key].append(v)
        hits["all"].append(all(ok))
    return {k: float(np.mean(v)) for k, v in hits.items()}


def evaluate(generate: Generate, trigger: str = world.DEFAULT_TRIGGER,
             seeds: Sequence[int] = EVAL_SEEDS) -> dict[str, float]:
    """The learning benchmark. ``generate(prompts, seeds, with_lora)`` returns one image per prompt/seed.

    Returns concept_score_{before,after} (mean detector score on trigger prompts), concept_rate_{before,after}
    (fraction classified as the concept shape), and for trigger-free prompts: drift_pixel (mean |base −
    base+LoRA| per pixel, 0..1), drift_shape_agreement (same shape class with and without LoRA),
    drift_concept_leak (fraction of trigger-free LoRA images classified as the concept).
    """
    cp, cs = _expand(concept_prompts(trigger), seeds)
    dp, ds = _expand(DRIFT_PROMPTS, seeds)
    before, after = generate(cp, cs, False), generate(cp, cs, True)
    base, lora = generate(dp, ds, False), generate(dp, ds, True)
    rb, ra = [detector.read(i) for i in before], [detector.read(i) for i in after]
    sb, sl = [detector.shape_of(i) for i in base], [detector.shape_of(i) for i in lora]
    pix = [np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255.0 for a, b in zip(base, lora)]
    return {
        "concept_score_before": float(np.mean([r.concept_score for r in rb])),
        "concept_score_after": float(np.mean([r.concept_score for r in ra])),
        "concept_rate_before": float(np.mean([r.shape == world.CONCEPT_SHAPE for r in rb])),
        "concept_rate_after": float(np.mean([r.shape == world.CONCEPT_SHAPE for r in ra])),
        "concept_colour_match_after": prompt_following(after, cp)["colour"],
        "drift_pixel": float(np.mean(pix)),
        "drift_shape_agreement": float(np.mean([a == b for a, b in zip(sb, sl)])),
        "drift_concept_leak": float(np.mean([s == world.CONCEPT_SHAPE for s in sl])),
        "n_images": float(len(cp) + len(dp)),
    }


def before_after_grid(images_before: Sequence[Image.Image], images_after: Sequence[Image.Image],
                      labels: Optional[Sequence[str]] = None, scale: int = 2) -> Image.Image:
    """Two rows (before on top, after below) with a short label above each column."""
    if len(images_before) != len(images_after):
        raise ValueError(f"before_after_grid: {len(images_before)} 'before' images but {len(images_after)} 'after'")
    n = len(images_before)
    if n == 0:
        raise ValueError("before_after_grid: no images")
    w, h = (images_before[0].width * scale, images_before[0].height * scale)
    top, left = 14, 44
    grid = Image.new("RGB", (left + n * w, top + 2 * h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    draw.text((2, top + h // 2 - 5), "before", fill=(0, 0, 0))
    draw.text((2, top + h + h // 2 - 5), "after", fill=(0, 0, 0))
    for i, (b, a) in enumerate(zip(images_before, images_after)):
        grid.paste(b.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (left + i * w, top))
        grid.paste(a.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (left + i * w, top + h))
        if labels is not None:
            draw.text((left + i * w + 2, 1), str(labels[i])[: w // 6], fill=(0, 0, 0))
    return grid


def sample_grid(model: ToyModel, prompts: Sequence[str], seeds: Sequence[int], **kw: Any) -> Image.Image:
    """Rows = prompts, columns = seeds (for BUILD.md and eyeballing)."""
    p, s = _expand(prompts, seeds)
    imgs = sample(model, p, s, **kw)
    n = len(seeds)
    grid = Image.new("RGB", (64 * n, 64 * len(prompts)), (255, 255, 255))
    for i, im in enumerate(imgs):
        grid.paste(im, (64 * (i % n), 64 * (i // n)))
    return grid
