"""The Train page's plan before starting: steps and epochs, and for a GPU card the plan ``lorakit plan`` makes.

One estimator: for a card of lorakit's card table (``lorakit/train/cards.toml``) the page shows exactly the text of
``lorakit plan run.toml --card NAME`` (:func:`lorakit.train.planview.report`: the full-size model on the meta device,
the automatic plan, its peak memory by part and its s/step estimate with the row it comes from), and the run's time
from that s/step. For the CPU: the median s/step of the finished UI jobs of the same family on this machine, or a
line saying there is none.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Optional

CPU = "CPU (this machine)"


def card_choices() -> dict[str, Optional[str]]:
    """Dropdown label -> card table key (None: the CPU)."""
    from lorakit.train import cards

    out: dict[str, Optional[str]] = {CPU: None}
    for key in cards.card_names():
        out[f"{cards.card(key).name} ({key})"] = key
    return out


def measured_cpu_seconds(jobs_rows: Iterable[tuple[list[dict[str, Any]], int]]) -> Optional[float]:
    """Median seconds per accumulated batch of earlier runs: (metrics rows, that run's gradient_accumulation) each; a
    row's seconds are one optimizer step, all its accumulated batches, so they are divided by its accumulation (the
    estimate multiplies by the form's own). The first step of each run (compiling, warming up) is left out."""
    times = [float(r["seconds"]) / max(1, accumulation) for rows, accumulation in jobs_rows for r in rows[1:]
             if isinstance(r.get("seconds"), (int, float)) and r.get("loss") is not None]
    return statistics.median(times) if times else None


def run_accumulation(run_dir: Any) -> int:
    """``training.gradient_accumulation`` a run trained with (its run folder's config.toml; 1 when unreadable)."""
    import tomllib
    from pathlib import Path

    try:
        value = tomllib.loads((Path(run_dir) / "config.toml").read_text(encoding="utf-8")).get(
            "training", {}).get("gradient_accumulation", 1)
    except (OSError, ValueError, AttributeError):
        return 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def estimate(cfg, card: str, *, images: Optional[int] = None, steps_per_epoch: Optional[int] = None,
             cpu_seconds: Optional[float] = None, label: str = "this form") -> str:
    """A Markdown block: steps, then the plan for ``card`` (a label of :func:`card_choices`, or a table key)."""
    from lorakit.errors import LorakitError
    from lorakit.train import cards, planview

    from lorakit.train.epochs import optimizer_steps_per_epoch

    steps: Optional[int] = cfg.training.max_steps
    accumulation = cfg.training.gradient_accumulation
    epochs = cfg.training.max_epochs
    shape = f"batch {cfg.training.batch_size} × accumulation {accumulation}"
    if epochs is not None and steps_per_epoch:  # what train.epochs.apply makes of it when the run starts
        steps = epochs * optimizer_steps_per_epoch(steps_per_epoch, accumulation)
        lines = [f"**{steps} steps** ({epochs} epochs: training.max_epochs) × {shape} ({steps_per_epoch} "
                 f"steps/epoch over {images} images)"]
    elif epochs is not None:
        steps = None
        lines = [f"**{epochs} epochs** (training.max_epochs) × {shape}: the steps follow from the dataset, counted "
                 "when the run scans it"]
    else:
        lines = [f"**{steps} steps** × {shape}"]
        if steps_per_epoch:
            lines[0] += f" ≈ {steps * accumulation / steps_per_epoch:.1f} epochs " \
                        f"({steps_per_epoch} steps/epoch over {images} images)"
    choices = card_choices()
    key = choices.get(card, card if card in choices.values() else None)
    if key is None and card not in (None, "", CPU):  # not a card of the table: said, never shown as the CPU's
        lines.append(f"plan: card {card!r} is not in lorakit's card table; pick one from the list "
                     f"({', '.join(k for k in choices.values() if k)})")
        return "\n\n".join(lines)
    if key is None:
        if cpu_seconds and steps:
            lines.append(f"time: ≈ {_fmt(cpu_seconds * steps * accumulation)} ({cpu_seconds:.2f} s per batch: median "
                         f"of earlier {cfg.model.family} jobs on this machine, each step over its accumulation)")
        else:
            lines.append("time: no earlier job of this family on this machine to measure from")
        return "\n\n".join(lines)
    try:
        text, plan = planview.planned(cfg, cards.card(key), label)
    except LorakitError as exc:
        lines.append(f"plan: {exc}")
        return "\n\n".join(lines)
    lines.append(f"```\n{text}\n```")
    if plan is not None and plan.step is not None and steps:
        lines.append(f"time: ≈ {_fmt(plan.step.seconds * steps * accumulation)} at the estimated "
                     f"{plan.step.seconds:.2f} s/step ({'extrapolated' if plan.step.extrapolated else 'measured'})")
    return "\n\n".join(lines)


def _fmt(seconds: float) -> str:
    from lorakit.ui.runs import fmt_seconds

    return fmt_seconds(seconds)
