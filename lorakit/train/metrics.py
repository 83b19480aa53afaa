"""Run metrics: metrics.jsonl (read by the UI and `lorakit` tools), TensorBoard events, and loss.png (matplotlib,
imported only when a plot is drawn).

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

from lorakit.fsutil import write_bytes, write_text


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

    def add_image(self, tag: str, img: Any, step: int) -> None:
        """A preview (PIL image) in TensorBoard's images tab, when TensorBoard logging is on."""
        if self._tb is not None:
            import numpy as np

            self._tb.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")

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


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing), started at the first value."""
    out, ema = [], values[0] if values else 0.0
    for v in values:
        ema = weight * ema + (1 - weight) * v
        out.append(ema)
    return out


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows holding a finite number under ``key``."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
           and math.isfinite(r[key]) and type(r.get("step")) is int]  # a hand-edited "x" or true is no step
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_loss(rows: list[dict[str, Any]], out: Path, *, size: tuple[int, int] = (640, 360)) -> Optional[Path]:
    """loss.png: training loss (raw and smoothed) and validation loss against step, the learning rate on a second
    axis (matplotlib's Agg canvas, no pyplot state; written atomically). None when there is nothing to draw."""
    steps, losses = series(rows, "loss")
    vsteps, vlosses = series(rows, "val_loss")
    if len(steps) < 2 and len(vsteps) < 2:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if steps:
        ax.plot(steps, losses, color="#9db8e6", linewidth=0.8, label="training loss")
        ax.plot(steps, smooth(losses), color="#143ca0", linewidth=1.6, label="training loss (smoothed)")
    if vsteps:
        ax.plot(vsteps, vlosses, color="#d2481e", marker="o", markersize=3, linewidth=1.4, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lsteps, lrs = series(rows, "lr")
    handles, labels = ax.get_legend_handles_labels()
    if lsteps:
        ax2 = ax.twinx()
        ax2.plot(lsteps, lrs, color="#3c963c", linewidth=1.0, linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate", color="#3c963c")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.11, right=0.87, top=0.95, bottom=0.14)  # fixed margins: tight_layout draws twice
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_bytes(out, buf.getvalue())
