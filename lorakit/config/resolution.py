"""The one resolution normaliser: ``data.resolution`` (and kohya's dataset ``resolution``) → (width, height).

An int ``n`` means the square ``(n, n)``; ``[w, h]`` means that rectangle (with buckets only its area counts).
TOML's integral floats (``1024.0``) count as ints; booleans, strings and anything else are refused with one
line naming the key. The config loader, the dataset TOML, the buckets, the LoRA metadata and the engine all
call :func:`resolution_wh`, so the rule is written once.
"""

from __future__ import annotations

from typing import Any, Optional

from lorakit.config.fields import as_int
from lorakit.config.messages import show
from lorakit.errors import ConfigError


def resolution_wh(value: Any, key: str = "data.resolution", *, minimum: int = 1,
                  maximum: Optional[int] = None) -> tuple[int, int]:
    """``n`` → ``(n, n)``; ``[w, h]`` → ``(w, h)``; each side within [minimum, maximum]; else ConfigError."""
    pair = list(value) if isinstance(value, (list, tuple)) else None
    sides = [as_int(v) for v in pair] if pair is not None else [as_int(value)] * 2
    if (pair is None or len(pair) == 2) and all(s is not None and s >= minimum and (maximum is None or s <= maximum)
                                                for s in sides):
        return sides[0], sides[1]  # type: ignore[return-value]
    bound = f" (at most {maximum})" if maximum is not None else ""
    raise ConfigError(f"{key}: must be an integer ≥ {minimum} (square side) or [width, height] with integers ≥ "
                      f"{minimum}{bound}, got {show(value)}")



def square_bucket_side(wh: tuple[int, int], step: int) -> int:
    """The side of the resolution's square bucket: ``floor(√(w·h) / step)·step`` (kohya's rule, lorakit.data.buckets);
    with buckets on it must lie between data.min_bucket_reso and data.max_bucket_reso."""
    import math

    return math.isqrt(wh[0] * wh[1]) // step * step
