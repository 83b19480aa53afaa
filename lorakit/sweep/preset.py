"""``lorakit sweep preset DIR PRESET.toml [--concept]``: write a sweep's winning settings into a preset, with the
evidence in a comment above each changed key.

The winner is the comparison's pick (``best``: lowest validation loss; with ``--concept``, ``best-concept``: the toy
world's highest concept rate). Only the swept keys change; every other line (comments, order, other keys) stays as it
was. A changed line keeps its own trailing comment; the line above it says where the value comes from:

    # sweep toy-sdxl-sweep (2 points, ranked by validation loss): lr = 3e-3 was best (val loss 0.098414 at step
    # 600; concept rate 0.708, leak 0.000); the others: 6e-3: 0.099165
    lr = 3e-3                  # SDXL tolerates this well

Shipped presets are updated this way only from sweeps of that preset's real model (the toy world's numbers are for
the toy recipes, lorakit/models/<family>/toy.py).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError

_SECTION = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_-]+)(\s*=\s*)(.*?)(\s*#.*)?$")


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.5g}" if isinstance(v, float) else str(v)


def winner(root: Path, concept: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """(the winning point of ranking.json, all ranked points, what it was ranked by)."""
    path = Path(root) / "comparison" / "ranking.json"
    try:
        ranking = json.loads(path.read_text())
    except (OSError, ValueError):
        from lorakit.sweep.run import Sweep

        Sweep(Path(root)).read()  # not a sweep folder at all: says so
        raise LorakitError(f"{path}: not found or unreadable; write it with `lorakit sweep report {root}`") from None
    key = "best-concept" if concept else "best"
    pick = (ranking.get("best") or {}).get(key)
    if not pick:
        raise LorakitError(f"{root}: the comparison has no {key} point (" + (
            "score the toy points with `lorakit sweep report DIR --concept`)" if concept else
            "no finished point yet)"))
    by = "concept rate on the toy world" if concept else ranking["ranked_by"]
    win = next(p for p in ranking["points"] if p["name"] == pick["point"])
    if concept:  # the numbers of the LoRA that won (its final one or its best validation step's)
        win = dict(win, concept_rate_after=pick.get("concept_rate"), drift_concept_leak=pick.get("concept_leak"))
    return win, ranking["points"], by


def evidence(root: Path, win: dict[str, Any], points: list[dict[str, Any]], by: str, key: str) -> list[str]:
    """The comment lines above ``key`` (section.key): the sweep, its ranking, the winner's numbers and the others'."""
    # walk8: a sweep without a validation set is ranked by final training loss; its evidence says that number
    # (before: "val loss — at step —", and "—" for every other point)
    by_train = by.startswith("final training loss")
    score = "concept_rate_after" if by.startswith("concept") else "final_train_loss" if by_train else "best_val_loss"
    others = "; ".join(f"{p['settings'].get(key) if len(p['settings']) == 1 else p['label']}: {_fmt(p.get(score))}"
                       for p in points if p["name"] != win["name"] and p["state"] == "finished")  # all axes named
    score_text = (f"final train loss {_fmt(win.get('final_train_loss'))}" if by_train else
                  f"val loss {_fmt(win.get('best_val_loss'))} at step {_fmt(win.get('best_step'))}")
    concept = (f"; concept rate {win['concept_rate_after']:.3f}, leak {win.get('drift_concept_leak') or 0:.3f}"
               if win.get("concept_rate_after") is not None else "")
    text = (f"sweep {Path(root).name} ({len(points)} points, ranked by {by}): {key.split('.')[-1]} = "
            f"{win['settings'][key]} was best ({score_text}{concept}); the others: {others or 'none finished'}")
    lines, cur = [], "#"
    for word in text.split(" "):
        if len(cur) + 1 + len(word) > 116:
            lines.append(cur)
            cur = "#"
        cur += " " + word
    return lines + [cur]


def update_text(text: str, settings: dict[str, str], notes: dict[str, list[str]]) -> str:
    """``text`` (a preset's TOML) with each ``section.key`` of ``settings`` set to its value (as written in the sweep,
    rendered as TOML) and ``notes[key]`` above it; a key or section the preset lacks is added at its section's end."""
    from lorakit.config.toml_io import toml_value
    from lorakit.config.validate import parse_override

    lines = text.splitlines()
    for key, raw in settings.items():
        section, name = key.split(".", 1)
        value = toml_value(parse_override(f"{key}={raw}")[1])
        cur, start, end, at = None, None, len(lines), None
        for i, line in enumerate(lines):
            m = _SECTION.match(line)
            if m:
                if cur == section:
                    end = i
                    break
                cur = m.group(1)
                if cur == section:
                    start = i
                continue
            k = _KEY.match(line)
            if cur == section and k and k.group(2) == name:
                at = i
        if at is not None:
            k = _KEY.match(lines[at])
            lines[at] = f"{k.group(1)}{name}{k.group(3)}{value}{k.group(5) or ''}"
            j = at - 1  # an earlier sweep's note on this key (its first line "# sweep ...") is replaced
            while j >= 0 and lines[j].startswith("# ") and not lines[j].startswith("# sweep "):
                j -= 1
            if j >= 0 and lines[j].startswith("# sweep "):
                del lines[j:at]
                at = j
            lines[at:at] = notes[key]
        elif start is not None:
            while end > start + 1 and not lines[end - 1].strip():
                end -= 1
            lines[end:end] = [*notes[key], f"{name} = {value}"]
        else:
            lines += ["", f"[{section}]", *notes[key], f"{name} = {value}"]
    return "\n".join(lines) + "\n"


def update_preset(root: Path, preset: Path, *, concept: bool = False) -> dict[str, str]:
    """Write the sweep's winning values of its swept keys into ``preset`` (atomically); returns them."""
    from lorakit.fsutil import write_text

    preset = Path(preset)
    if not preset.is_file():
        raise LorakitError(f"sweep preset: {preset} not found (give a preset .toml file)")
    win, points, by = winner(root, concept)
    grid = json.loads((Path(root) / "sweep.json").read_text())["grid"]
    settings = {k: win["settings"][k] for k in grid}
    text = update_text(preset.read_text(encoding="utf-8"), settings,
                       {k: evidence(root, win, points, by, k) for k in settings})
    try:
        tomllib.loads(text)
    except ValueError as exc:  # never leave a preset that does not load
        raise LorakitError(f"sweep preset: {preset}: the updated text would not be valid TOML ({exc}); unchanged") \
            from None
    write_text(preset, text)
    return settings
