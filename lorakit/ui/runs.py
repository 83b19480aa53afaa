"""What the UI reads from a run folder (the layout :mod:`lorakit.train.rundir` writes), never from the run's process.

``metrics.jsonl`` (one row per logged step: step, loss, lr, seconds, grad_norm, epoch, peak_mem_gib; health rows
``skipped_step`` / ``sample_problem``), ``run.json`` (status, step, max_steps, error, lora_effect, export_problems),
``samples/<name>_<step00000500|before|after>_<index>_<seed>.png`` and ``before_after.png``, ``<name>.safetensors``
and ``<name>-step00000500.safetensors``, ``config.toml``.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lorakit.train.metrics import read_metrics

_SAMPLE_RE = re.compile(r"^(?P<name>.+)_(?P<label>step\d{8}|before|after)_(?P<index>\d+)_(?P<seed>\d+)\.png$")


@dataclass(frozen=True)
class Sample:
    path: Path
    step: Optional[int]   # None for "after" until the run's max_steps is known
    label: str            # "before", "after" or "step 500"
    index: int            # prompt number
    seed: int


def status(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_METRICS: dict[str, tuple[tuple[int, int, int], list[dict[str, Any]]]] = {}
_METRICS_LOCK = threading.Lock()
_METRICS_KEEP = 256   # run folders whose rows are kept (the Jobs table's, the compare page's)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics rows, reread only when ``metrics.jsonl`` changed (its size, mtime or inode): the Jobs table
    asks for every job's every 2 s in every open tab. A new list each call (the rows themselves are shared)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        st = path.stat()
    except OSError:
        return []
    key, ident = str(path.absolute()), (st.st_size, st.st_mtime_ns, st.st_ino)
    with _METRICS_LOCK:
        hit = _METRICS.get(key)
    if hit is not None and hit[0] == ident:
        return list(hit[1])
    rows = read_metrics(path)
    with _METRICS_LOCK:
        _METRICS.pop(key, None)
        _METRICS[key] = (ident, rows)
        while len(_METRICS) > _METRICS_KEEP:
            _METRICS.pop(next(iter(_METRICS)))
    return list(rows)


def loss_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a finite loss (health rows and NaN steps left out), for the chart."""
    return [r for r in rows if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])
            and _count(r.get("step")) is not None]


def _count(value: Any) -> Optional[int]:
    """A step count as written (an int ≥ 0); None for anything a damaged or hand-edited file holds instead."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def progress(run_dir: Path, rows: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """step, max_steps, s/step (median of the last 20 steps, the first step of an attempt left out), ETA seconds,
    peak memory, loss of the last step."""
    rows = metrics(run_dir) if rows is None else rows
    st = status(run_dir)
    steps = loss_rows(rows)
    step = max([r["step"] for r in steps] + [_count(st.get("step")) or 0])
    total = _count(st.get("max_steps")) or None
    times = [float(r["seconds"]) for r in steps[1:][-20:] if isinstance(r.get("seconds"), (int, float))]
    sps = statistics.median(times) if times else None
    eta = (total - step) * sps if (sps is not None and total) else None
    mem = max([float(r["peak_mem_gib"]) for r in steps if isinstance(r.get("peak_mem_gib"), (int, float))],
              default=None)
    return {"step": step, "max_steps": total, "s_per_step": sps, "eta_s": eta, "peak_mem_gib": mem,
            "loss": steps[-1]["loss"] if steps else None, "status": st.get("status")}


def samples(run_dir: Path) -> list[Sample]:
    """Preview images in step order (before, steps, after), then by prompt."""
    folder = Path(run_dir) / "samples"
    out = []
    for p in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        m = _SAMPLE_RE.match(p.name)
        if not m:
            continue
        label = m["label"]
        step = 0 if label == "before" else (int(label[4:]) if label.startswith("step") else None)
        shown = label if label in ("before", "after") else f"step {step}"
        out.append(Sample(p, step, shown, int(m["index"]), int(m["seed"])))
    order = {"before": -1, "after": 10**12}
    return sorted(out, key=lambda s: (order.get(s.label, s.step or 0), s.index))


def grid(run_dir: Path) -> Optional[Path]:
    p = Path(run_dir) / "samples" / "before_after.png"
    return p if p.is_file() else None


def lora_files(run_dir: Path) -> list[Path]:
    """The final LoRA first (when written), then step checkpoints, newest first, then the LoRA of the best
    validation step (``save.keep_best``) and the EMA weights (``training.ema``) when the run wrote them, then the
    LoRAs an extended run delivered before (``<name>.until-stepN.safetensors``), newest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    name = _file_name(run_dir)
    final = run_dir / f"{name}.safetensors"
    steps = sorted(run_dir.glob("*-step*.safetensors"), reverse=True)
    extra = [p for p in (run_dir / f"{name}-best.safetensors", run_dir / f"{name}-ema.safetensors") if p.is_file()]
    from lorakit.train.rundir import glob_escape

    extra += sorted(run_dir.glob(f"{glob_escape(name)}.until-step*.safetensors"), reverse=True)
    return ([final] if final.is_file() else []) + [p for p in steps if p.name.startswith(name + "-step")] + extra


def package_step(run_dir: Path, lora: Path) -> Optional[int]:
    """The ``lorakit package --step`` that packages the LoRA file ``lora`` of the run (None: the final LoRA); a file
    `lorakit package` cannot package (the EMA weights, a file of another folder) is a DataError naming it."""
    from lorakit.errors import DataError

    run_dir, lora = Path(run_dir), Path(lora)
    name = _file_name(run_dir)
    if lora.resolve().parent != run_dir.resolve() or not lora.is_file():
        raise DataError(f"{lora}: not a LoRA file of {run_dir}; pick one from the list")
    if lora.name == f"{name}.safetensors":
        return None
    m = re.match(re.escape(name) + r"(?:-step|\.until-step)(\d{8})\.safetensors$", lora.name)
    if m:
        return int(m.group(1))
    if lora.name == f"{name}-best.safetensors":
        from lorakit.safetensors_header import read_safetensors_header

        best = read_safetensors_header(lora)[1].get("lorakit_best_step")
        if best and str(best).isdigit():
            return int(best)
    raise DataError(f"{lora.name}: `lorakit package` packages the final LoRA or a step's; pick {name}.safetensors or "
                    f"a {name}-stepNNNNNNNN.safetensors checkpoint")


def _file_name(run_dir: Path) -> str:
    """The name the run's files carry: its ``save.name`` (config.toml), which stays when the user renames the
    folder; the folder's name when config.toml is missing or unreadable."""
    import tomllib

    try:
        name = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8")).get("save", {}).get("name")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        name = None
    return name if isinstance(name, str) and name and "/" not in name else run_dir.name


def health(run_dir: Path, rows: list[dict[str, Any]], log_text: str = "") -> list[str]:
    """Warnings the run's health checks left: NaN steps skipped, broken previews, a LoRA that does nothing,
    export problems, stalls, and the run's own ``warning:`` log lines."""
    out = []
    skipped = [r for r in rows if r.get("skipped_step")]
    if skipped:
        out.append(f"{len(skipped)} step(s) skipped for a non-finite loss or gradient (last at step "
                   f"{skipped[-1].get('step')}): try a lower learning rate")
    for r in rows:
        if r.get("sample_problem"):
            out.append(f"preview {r.get('sample')} at step {r.get('step')} looks {r['sample_problem']} "
                       "(often NaN weights in disguise)")
    st = status(run_dir)
    if st.get("lora_effect") == 0.0:
        out.append("the trained LoRA does not change the model's output (check optimizer.lr and the targets)")
    for p in st.get("export_problems") or []:
        out.append(f"export check: {p}")
    for line in log_text.splitlines():
        s = line.strip()
        if s.startswith("warning:") or "may be stalled" in s:
            text = s.removeprefix("warning:").strip()
            if text not in out:
                out.append(text)
    return out


def fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "—"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")
