"""The grid of a sweep: ``section.key=v1,v2,...`` arguments → the list of points (one override list each).

Values are split on commas outside brackets and quotes (``optimizer.betas=[0.9,0.99],[0.9,0.999]`` is two values),
and each ``key=value`` is checked by the config loader's own override parser, so a bad key or value is refused with
the same one-line message `lorakit train` gives. The keys a sweep sets itself (where each run goes) are refused.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from lorakit.config.validate import parse_override
from lorakit.errors import ConfigError

RESERVED = {"save.dir": "each point's folder is made under the sweep folder (--out)",
            "save.name": "each point is named after its settings",
            "preset": "set the preset in run.toml"}
_NAME_SAFE = re.compile(r"[^A-Za-z0-9.+-]+")


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its folder name and its settings (key → the value as written)."""

    name: str
    settings: tuple[tuple[str, str], ...]

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.settings]

    def label(self) -> str:
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.settings)


def split_values(text: str) -> list[str]:
    """Comma-separated values, commas inside [...], {...} or quotes kept."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["optimizer.lr=5e-5,1e-4", "network.rank=16,32"]`` → {key: [values]} in the order given; every value
    checked by the config loader's override parser."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"sweep: {item!r}: expected section.key=value1,value2,...")
        key, text = (s.strip() for s in item.split("=", 1))
        if key in RESERVED:
            raise ConfigError(f"sweep: {key} cannot be swept: {RESERVED[key]}")
        if key in grid:
            raise ConfigError(f"sweep: {key} is given twice; list all its values once: {key}=a,b,c")
        values = split_values(text)
        if any(v == "" for v in values):
            raise ConfigError(f"sweep: {key}: an empty value in {text!r}; write {key}=a,b,c")
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep: {key}: a value is listed twice in {text!r}")
        for v in values:
            parts, _ = parse_override(f"{key}={v}")
            if len(parts) != 2:
                raise ConfigError(f"sweep: {key}: sweep a section.key (tables are not swept)")
        grid[key] = values
    if not grid:
        raise ConfigError("sweep: give at least one section.key=value1,value2 to sweep")
    return grid


def points(grid: dict[str, list[str]]) -> list[Point]:
    """Every combination, the last key changing fastest; names like ``03_lr1e-4_rank32``."""
    keys = list(grid)
    out = []
    for i, combo in enumerate(itertools.product(*(grid[k] for k in keys)), 1):
        settings = tuple(zip(keys, combo))
        name = f"{i:02d}_" + "_".join(_NAME_SAFE.sub("-", f"{k.split('.')[-1]}{v}").strip("-") for k, v in settings)
        out.append(Point(name[:120], settings))
    return out
