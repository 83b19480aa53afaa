"""Aspect-ratio buckets, computed the way kohya's sd-scripts does (reference/kohya-format.md §2.4).

The rules are re-derived from the written description, not copied: a LoRA trained here must see the
same bucket sizes and crops as one trained by kohya on the same folder, so that users comparing the two
(and the ``ss_bucket_info`` metadata) find no surprise.

* Bucket list: A = W·H of the resolution, s = step. Min/max are snapped down to multiples of s. The square
  ``floor(√A / s)·s`` is always a bucket; for each width w from min to max (step s) the height is
  ``min(max, floor(A / w / s)·s)``; when that height is ≥ min, both (w, h) and (h, w) are buckets.
* Assignment: the image's own size when it is a bucket, else the bucket of nearest aspect ratio; the
  image is scaled to *cover* the bucket and the overflow is trimmed, centred.
* ``bucket_no_upscale``: images larger than A are scaled down to area A; the bucket is each side floored
  to a multiple of s; min/max do not apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lorakit.config.resolution import resolution_wh as parse_resolution  # noqa: F401  (the data/ name)
from lorakit.config.resolution import square_bucket_side
from lorakit.errors import ConfigError


@dataclass(frozen=True)
class BucketSettings:
    """What decides the buckets of one dataset (one `[[datasets]]` entry, or the whole of data.dir)."""

    resolution: tuple[int, int]          # (width, height); only the area W·H matters with buckets
    enable_bucket: bool = True
    min_reso: int = 256
    max_reso: int = 2048
    step: int = 64
    no_upscale: bool = False

    @property
    def area(self) -> int:
        return self.resolution[0] * self.resolution[1]


@dataclass(frozen=True)
class Placement:
    """Where one image goes: its bucket, the size it is resized to, and the crop inside that size."""

    bucket: tuple[int, int]      # (w, h) of the training tensor
    resized: tuple[int, int]     # (w, h) the whole image is resized to (covers the bucket)
    crop: tuple[int, int]        # (left, top) of the bucket window inside the resized image


def check_divisibility(settings: BucketSettings, divisibility: int, key_prefix: str = "data") -> None:
    """Bucket sides must be multiples of the model's divisibility (VAE factor × patch/U-Net levels)."""
    if settings.step % divisibility:
        raise ConfigError(f"{key_prefix}.bucket_reso_steps: {settings.step} is not a multiple of {divisibility}, "
                          f"which this model needs; use {max(divisibility, settings.step // divisibility * divisibility)}")
    if not settings.enable_bucket:
        w, h = settings.resolution
        if w % divisibility or h % divisibility:
            raise ConfigError(f"{key_prefix}.resolution: {w}x{h} must be a multiple of {divisibility} per side "
                              f"when buckets are off")


def validate(settings: BucketSettings, divisibility: int, key_prefix: str = "data") -> None:
    """All checks of one group's bucket settings (divisibility, min ≤ square side ≤ max)."""
    check_divisibility(settings, divisibility, key_prefix)
    if settings.enable_bucket and not settings.no_upscale:
        side = square_bucket_side(settings.resolution, settings.step)
        if settings.min_reso > settings.max_reso:
            raise ConfigError(f"{key_prefix}.min_bucket_reso: {settings.min_reso} is larger than "
                              f"max_bucket_reso {settings.max_reso}")
        if not settings.min_reso <= side <= settings.max_reso:
            low = side < settings.min_reso     # name the key whose change lets the resolution's bucket in
            key, to = ("min_bucket_reso", f"at most {side}") if low else ("max_bucket_reso", f"at least {side}")
            file, _, where = key_prefix.rpartition(": ")  # "dataset.toml: datasets[0]" for a kohya dataset TOML
            raise ConfigError(f"{key_prefix}.{key}: the square bucket of the resolution ({side}) must lie between "
                              f"min_bucket_reso {settings.min_reso} and max_bucket_reso {settings.max_reso}; set "
                              f"{where}.{key}{f' in {file}' if file else ''} to {to} (or change the resolution)")


def _snap(x: int, step: int) -> int:
    return x // step * step


def bucket_list(settings: BucketSettings) -> list[tuple[int, int]]:
    """All buckets (w, h) for the settings, sorted by (w, h). With no_upscale the set is per-image: empty."""
    if not settings.enable_bucket:
        return [settings.resolution]
    if settings.no_upscale:
        return []
    s = settings.step
    area = settings.area
    lo, hi = _snap(settings.min_reso, s), _snap(settings.max_reso, s)
    side = _snap(math.isqrt(area), s)
    found = {(side, side)}
    for w in range(lo, hi + 1, s):
        h = min(hi, _snap(area // w, s))
        if h >= lo:
            found.add((w, h))
            found.add((h, w))
    return sorted(found)


def _nearest(buckets: list[tuple[int, int]], size: tuple[int, int]) -> tuple[int, int]:
    """Bucket of nearest aspect ratio (w/h); ties go to the first in sorted order."""
    ar = size[0] / size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ar))


def cover(size: tuple[int, int], bucket: tuple[int, int]) -> Placement:
    """Scale `size` to cover `bucket` (the short side matches exactly) and centre the crop window."""
    w, h = size
    bw, bh = bucket
    if (w, h) == (bw, bh):
        return Placement(bucket, size, (0, 0))
    if w * bh >= h * bw:  # image relatively wider than the bucket: heights match, trim width
        rh, rw = bh, max(bw, int(w * bh / h + 0.5))
    else:
        rw, rh = bw, max(bh, int(h * bw / w + 0.5))
    return Placement(bucket, (rw, rh), ((rw - bw) // 2, (rh - bh) // 2))


def place(size: tuple[int, int], settings: BucketSettings,
          buckets: list[tuple[int, int]] | None = None) -> Placement:
    """Bucket, resize and crop of an image of `size` (w, h, after EXIF rotation)."""
    if not settings.enable_bucket:
        return cover(size, settings.resolution)
    if settings.no_upscale:
        return _place_no_upscale(size, settings)
    buckets = buckets if buckets is not None else bucket_list(settings)
    if size in buckets:
        return Placement(size, size, (0, 0))
    return cover(size, _nearest(buckets, size))


def _place_no_upscale(size: tuple[int, int], settings: BucketSettings) -> Placement:
    w, h = size
    s = settings.step
    if w * h > settings.area:
        scale = math.sqrt(settings.area / (w * h))
        rw, rh = max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))
    else:
        rw, rh = w, h
    bw, bh = _snap(rw, s), _snap(rh, s)
    if bw == 0 or bh == 0:  # caller reports this image as too small; never train a 0-wide tensor
        return Placement((bw, bh), (rw, rh), (0, 0))
    return Placement((bw, bh), (rw, rh), ((rw - bw) // 2, (rh - bh) // 2))
