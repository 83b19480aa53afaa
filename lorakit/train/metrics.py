"""Run metrics: metrics.jsonl (read by the UI and `lorakit` tools), TensorBoard events, and loss.png.

metrics.jsonl is appended one JSON object per logged step and flushed+fsynced every write, so a killed
run keeps every line it reported; on resume, lines past the resumed step are dropped so the file tells
one consistent story.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from PIL import Image, ImageDraw

from lorakit.data.images import save_image
from lorakit.fsutil import write_text


class MetricsWriter:
    """Appends step metrics to metrics.jsonl and (optionally) TensorBoard.

    ``resume_step``: None for a new run; on a resume the step it continues from. metrics.jsonl then keeps only the
    rows up to that step (the steps after it are trained again; damaged lines are dropped and ``notes`` says so),
    and TensorBoard is told to hide the events after it (``purge_step``), so both hold each step once."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, resume_step: Optional[int] = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.notes: list[str] = []
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # TensorBoard hides every earlier event with a step >= purge_step (the steps trained again)
                purge = None if resume_step is None else resume_step + 1 if resume_step > 0 else 0
                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
            except ImportError:  # tensorboard is a declared dependency; keep metrics.jsonl either way
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        rows, bad = read_metrics_checked(self.path)
        kept = [row for row in rows if _step(row) <= step]
        if bad:
            self.notes.append(f"{self.path}: skipped {len(bad)} damaged line(s) (line {', '.join(map(str, bad[:5]))}"
                              f"{', …' if len(bad) > 5 else ''}); the file is rewritten without them")
        if bad or len(kept) != len(rows):
            write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def write(self, row: dict[str, Any]) -> None:
        # JSON has no NaN/Infinity: write null so every JSON reader (the UI's too) can parse the line
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._tb is not None:
            step = int(row.get("step", 0))
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key.replace("_", "/", 1) if key.startswith("loss_") else key, value, step)

    def flush(self) -> None:
        """Put every event so far on disk (before a checkpoint: a kill after it loses no step the state holds)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _step(row: dict) -> float:
    step = row.get("step", 0)
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else float("inf")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete JSON rows of a metrics file (a torn last line from a crash, a damaged line, is left out)."""
    return read_metrics_checked(path)[0]


def read_metrics_checked(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(rows, numbers of the lines that are not a JSON object: torn, bad bytes, another type)."""
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    if not path.exists():
        return rows, bad
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                bad.append(n)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(n)
    return rows, bad


def plot_loss(rows: list[dict[str, Any]], out: Path, *, size: tuple[int, int] = (640, 360)) -> Optional[Path]:
    """Draw loss (raw and smoothed) against step as a PNG, with Pillow only."""
    points = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))
              and math.isfinite(r["loss"]) and isinstance(r.get("step"), (int, float))]
    if len(points) < 2:
        return None
    w, h = size
    left, right, top, bottom = 60, 20, 20, 40
    steps = [p[0] for p in points]
    losses = [p[1] for p in points]
    smooth, ema = [], losses[0]
    for v in losses:
        ema = 0.9 * ema + 0.1 * v
        smooth.append(ema)
    lo, hi = min(losses), max(losses)
    if hi - lo < 1e-12:
        hi = lo + 1e-12
    s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

    def xy(s: float, v: float) -> tuple[float, float]:
        return (left + (s - s0) / (s1 - s0) * (w - left - right),
                top + (1 - (v - lo) / (hi - lo)) * (h - top - bottom))

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle([left, top, w - right, h - bottom], outline=(180, 180, 180))
    d.line([xy(s, v) for s, v in zip(steps, losses)], fill=(150, 180, 230), width=1)
    d.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(20, 60, 160), width=2)
    d.text((5, top), f"{hi:.4g}", fill="black")
    d.text((5, h - bottom - 10), f"{lo:.4g}", fill="black")
    d.text((left, h - bottom + 8), f"step {s0}", fill="black")
    d.text((w - right - 80, h - bottom + 8), f"step {steps[-1]}", fill="black")
    d.text((w // 2 - 40, 4), "training loss", fill="black")
    return save_image(img, out)
