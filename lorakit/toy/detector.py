"""An explainable detector for the toy world (no learned weights).

How it works, step by step:
1. The background colour is the median of the image border (scenes are one shape on a plain colour).
2. Each pixel's foreground strength is its colour distance from the background, divided by the distance
   of the foreground colour (the mean of the clearly-different pixels); the largest connected blob of
   pixels above one half is the shape.
3. The shape's bounding box is cropped and resampled to a 24×24 grid, which removes position and size.
4. That grid is compared (mean absolute difference) with the same grid made from each ideal shape
   (circle, square, triangle, and the concept: a plus-shaped cross). ``shape_of`` is the nearest one;
   ``concept_score`` = d_base / (d_base + d_cross), where d_base is the distance to the nearest base
   shape: 1 = a perfect cross, 0 = a perfect base shape, 0.5 = equally far from both.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from lorakit.toy.world import ALL_SHAPES, BASE_SHAPES, COLOURS, CONCEPT_SHAPE, render_mask

GRID = 24
MIN_CONTRAST = 40.0        # RGB distance below which there is "no shape" (nearly plain image)
MIN_PIXELS = 12            # smallest blob counted as a shape


@dataclass(frozen=True)
class Reading:
    """What the detector sees in one image."""

    shape: str                      # nearest shape name, or "none"
    colour: str                     # nearest named colour of the shape ("none" if no shape)
    background: str                 # nearest named colour of the background
    distances: dict[str, float]     # template distance per shape (mean |difference| on the 24×24 grid)
    concept_score: float            # in [0, 1]


def _to_array(img: Image.Image) -> np.ndarray:
    img = img.convert("RGB")
    if img.size != (64, 64):
        img = img.resize((64, 64), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def nearest_colour(rgb: np.ndarray) -> str:
    """Name of the palette colour closest to an RGB triple."""
    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb[None]) ** 2).sum(1)))]


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a boolean mask (drops specks of noise)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        blob, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            blob.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _grid(soft: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """Crop the blob's bounding box from the soft mask and resample it to GRID×GRID."""
    ys, xs = np.nonzero(blob)
    crop = soft[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    img = Image.fromarray(crop.astype(np.float32), mode="F")
    return np.asarray(img.resize((GRID, GRID), Image.Resampling.BILINEAR), dtype=np.float32)


@lru_cache(maxsize=None)
def _templates() -> dict[str, np.ndarray]:
    """Ideal 24×24 grids of every shape, made by the same cropping as for images."""
    out = {}
    for shape in ALL_SHAPES:
        soft = np.asarray(render_mask(shape, side=48.0), dtype=np.float32) / 255.0
        out[shape] = _grid(soft, soft > 0.5)
    return out


def read(img: Image.Image) -> Reading:
    """Segment the shape, name its class and colours, and score the concept (see module docstring)."""
    a = _to_array(img)
    border = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3),
                             a[:, :2].reshape(-1, 3), a[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((a - bg) ** 2).sum(-1))
    strong = dist > max(MIN_CONTRAST, 0.5 * float(np.percentile(dist, 99.5)))
    background = nearest_colour(bg)
    if strong.sum() < MIN_PIXELS:
        return Reading("none", "none", background, {}, 0.0)
    fg = a[strong].mean(0)
    soft = np.clip(dist / max(float(np.sqrt(((fg - bg) ** 2).sum())), 1e-3), 0.0, 1.0)
    blob = _largest_blob(soft > 0.5)
    if blob.sum() < MIN_PIXELS:
        return Reading("none", "none", background, {}, 0.0)
    grid = _grid(soft, blob)
    dists = {s: float(np.abs(grid - t).mean()) for s, t in _templates().items()}
    d_base = min(dists[s] for s in BASE_SHAPES)
    score = d_base / (d_base + dists[CONCEPT_SHAPE] + 1e-6)
    colour = nearest_colour(a[blob].mean(0))
    return Reading(min(dists, key=dists.get), colour, background, dists, float(score))


def concept_score(img: Image.Image) -> float:
    """How much the image's shape looks like the concept (a cross) rather than any base shape, in [0, 1]."""
    return read(img).concept_score


def shape_of(img: Image.Image) -> str:
    """The nearest shape class ("circle", "square", "triangle", "cross") or "none" for a plain image."""
    return read(img).shape
