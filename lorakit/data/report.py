"""The dataset QA report: what will be trained, and every file that was skipped or looks wrong.

It is printed before any GPU work so that a user learns about a truncated JPEG or a missing trigger word
in seconds, not after an hour of training. Decisions (thresholds) live in :mod:`lorakit.data.scan`; this
module only collects and presents them.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from lorakit.data.scan import Dataset

Action = Literal["skipped", "warning"]


@dataclass(frozen=True)
class Problem:
    """One report line: the file (or folder), why, and what lorakit did about it."""

    file: str
    reason: str
    action: Action


@dataclass(frozen=True)
class SubsetSummary:
    dir: str
    is_reg: bool
    images: int          # usable images
    repeats: int         # folder repeats (reg: before balancing)
    samples: int         # images × effective repeats = samples per epoch


@dataclass
class DataReport:
    """Counts, buckets and problems of one scanned dataset."""

    subsets: list[SubsetSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    buckets: dict[tuple[int, int], int] = field(default_factory=dict)          # (w, h) → images
    bucket_samples: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (group, w, h) → samples
    group_batch_sizes: dict[int, int] = field(default_factory=dict)          # TOML per-dataset batch_size
    from_config: dict[str, Any] = field(default_factory=dict)  # what a data.config dataset TOML set (run_settings)

    @property
    def usable(self) -> int:
        return sum(s.images for s in self.subsets)

    @property
    def skipped(self) -> list[Problem]:
        return [p for p in self.problems if p.action == "skipped"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.action == "warning"]

    def samples_per_epoch(self) -> int:
        return sum(self.bucket_samples.values())

    def steps_per_epoch(self, batch_size: int = 1) -> int:
        """Batches per epoch: each (bucket) is cut into batches separately, so partial batches add up."""
        return sum(math.ceil(n / self.group_batch_sizes.get(g, batch_size))
                   for (g, _w, _h), n in self.bucket_samples.items())

    def batch_sizes(self, batch_size: int = 1) -> list[int]:
        """The batch sizes the steps are counted with: a dataset TOML's per-dataset batch_size where it sets one."""
        return sorted({self.group_batch_sizes.get(g, batch_size) for g, _w, _h in self.bucket_samples} or {batch_size})

    def to_json(self, batch_size: int = 1, accumulation: int = 1) -> dict:
        extra = ({"gradient_accumulation": accumulation,
                  "optimizer_steps_per_epoch": math.ceil(self.steps_per_epoch(batch_size) / accumulation)}
                 if accumulation > 1 else {})
        return {
            "usable": self.usable,
            "skipped": len(self.skipped),
            "warnings": len(self.warnings),
            "samples_per_epoch": self.samples_per_epoch(),
            "steps_per_epoch": self.steps_per_epoch(batch_size),
            "batch_size": batch_size,
            **extra,
            "subsets": [vars(s).copy() for s in self.subsets],
            "buckets": {f"{w}x{h}": n for (w, h), n in sorted(self.buckets.items())},
            "problems": [vars(p).copy() for p in self.problems],
            **({"from_config": self.from_config} if self.from_config else {}),
        }

    def to_table(self, batch_size: int = 1, accumulation: int = 1) -> str:
        """A fixed-width text table for the terminal (problem paths relative to the dataset's parent folder).
        ``accumulation`` (training.gradient_accumulation): an optimizer step takes that many batches, so steps/epoch
        is ceil(batches / accumulation), as training.max_epochs counts it."""
        batches = self.steps_per_epoch(batch_size)
        steps = (f"steps/epoch (batch {' / '.join(map(str, self.batch_sizes(batch_size)))}): {batches}"
                 if accumulation <= 1 else
                 f"steps/epoch (batch {' / '.join(map(str, self.batch_sizes(batch_size)))}, gradient accumulation "
                 f"{accumulation}): {math.ceil(batches / accumulation)} ({batches} batches)")
        base = _common_dir([os.path.dirname(os.path.abspath(s.dir)) for s in self.subsets])
        lines = [f"{'subset':<40} {'kind':<5} {'images':>6} {'repeats':>7} {'samples':>7}"]
        for s in self.subsets:
            lines.append(f"{_clip(Path(s.dir).name, 40):<40} {'reg' if s.is_reg else 'train':<5} "
                         f"{s.images:>6} {s.repeats:>7} {s.samples:>7}")
        lines.append(f"usable images: {self.usable}   skipped: {len(self.skipped)}   warnings: "
                     f"{len(self.warnings)}   samples/epoch: {self.samples_per_epoch()}   {steps}")
        if self.buckets:
            lines.append("buckets: " + ", ".join(f"{w}x{h}:{n}" for (w, h), n in sorted(self.buckets.items())))
        if self.from_config:
            taken = dict(self.from_config)
            taken["batch_size"] = taken["batch_size"] or batch_size      # 0: the dataset TOML sets none
            lines.append("from data.config: " + settings_line(taken))
        if self.problems:
            lines.append(f"{'action':<8} {'file':<40} reason")
            for p in sorted(self.problems, key=lambda p: (p.file, p.action)):
                lines.append(f"{p.action:<8} {_clip(_rel(p.file, base), 40):<40} {p.reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()

    def dumps(self, batch_size: int = 1) -> str:
        return json.dumps(self.to_json(batch_size), indent=2)


def _common_dir(paths: list[str]) -> str | None:
    try:
        return os.path.commonpath(paths) if paths else None
    except ValueError:  # different drives
        return None


def _rel(path: str, base: str | None) -> str:
    """`path` relative to the dataset root when it lies inside it, else unchanged."""
    full = os.path.abspath(path)
    if base and full != base and full.startswith(base.rstrip(os.sep) + os.sep):
        return os.path.relpath(full, base)
    return path


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def check(dataset: "Dataset") -> DataReport:
    """Build the report of a scanned dataset from its items, subsets and the problems the scan found."""
    report = DataReport(problems=list(dataset.problems))
    for idx, sub in enumerate(dataset.subsets):
        items = [it for it in dataset.items if it.subset == idx]
        report.subsets.append(SubsetSummary(dir=str(sub.dir), is_reg=sub.is_reg, images=len(items),
                                            repeats=sub.repeats, samples=sum(it.repeats for it in items)))
    report.buckets = dict(Counter(it.bucket for it in dataset.items))
    samples: Counter[tuple[int, int, int]] = Counter()
    for it in dataset.items:
        samples[(it.group, *it.bucket)] += it.repeats
    report.bucket_samples = {k: v for k, v in samples.items() if v > 0}
    report.group_batch_sizes = {g: spec.batch_size for g, spec in enumerate(dataset.groups)
                                if spec.batch_size is not None}
    if any(g.key != "data" for g in dataset.groups):     # a data.config dataset TOML: say what the run takes from it
        report.from_config = run_settings(dataset, 0)
    return report


def run_settings(dataset: "Dataset", batch_size: int) -> dict[str, Any]:
    """The data settings a run takes, read from the scanned dataset (a data.config dataset TOML's where it sets them,
    else [data]'s): resolution (w, h), batch_size, keep_tokens and flip_aug of the first dataset and its first training
    subset, as kohya's ss_* metadata records one value; ``per_dataset`` lists each where they differ. ``batch_size``:
    the run's (training.batch_size), for datasets that set none."""
    groups = dataset.groups
    train = [s for s in dataset.subsets if not s.is_reg] or list(dataset.subsets)
    per = [{"resolution": tuple(g.buckets.resolution), "batch_size": g.batch_size or batch_size} for g in groups]
    subs = [{"keep_tokens": s.caption.keep_tokens, "flip_aug": s.flip_aug} for s in train]
    out: dict[str, Any] = {**(per[0] if per else {}), **(subs[0] if subs else {})}
    if len({json.dumps(p) for p in per}) > 1 or len({json.dumps(s) for s in subs}) > 1:
        out["per_dataset"] = per
        out["per_subset"] = subs
    return out


def settings_line(s: dict[str, Any]) -> str:
    w, h = s["resolution"]
    more = " (datasets or subsets differ: see data_report.json)" if "per_dataset" in s else ""
    return (f"resolution {w}x{h}, batch size {s['batch_size']}, keep_tokens {s['keep_tokens']}, "
            f"flip_aug {str(s['flip_aug']).lower()}{more}")


def duplicate_captions(dataset: "Dataset") -> list[Problem]:
    """A warning for each training image whose caption file says exactly what another image's says (a
    captioner that saw nothing, or a pasted caption): the model then cannot tell those pictures apart.
    `lorakit data check` adds these to its report (a caption review, not a reason to stop a run)."""
    groups: dict[str, list] = {}
    for it in dataset.items:
        if it.caption_source == "file" and not it.is_reg and it.caption.strip():
            groups.setdefault(" ".join(it.caption.lower().split()), []).append(it)
    out = []
    for same in groups.values():
        # images of one stem read one caption file: the scan says so ("shares its caption file"), not this line
        if len({(o.path.parent, o.path.stem) for o in same}) < 2:
            continue
        for it in same if len(same) > 1 else ():
            other = next(o for o in same if o is not it)
            out.append(Problem(str(it.path), f"same caption as {len(same) - 1} other image(s) (e.g. "
                               f"{other.path.name}); say what differs between them", "warning"))
    return out


def dataset_dirs(dataset: "Dataset", is_reg: bool = False) -> dict[str, dict[str, int]]:
    """kohya's ss_dataset_dirs / ss_reg_dataset_dirs: {folder name: {"n_repeats": n, "img_count": images}}."""
    out: dict[str, dict[str, int]] = {}
    for idx, sub in enumerate(dataset.subsets):
        if sub.is_reg == is_reg:
            count = sum(1 for it in dataset.items if it.subset == idx)
            out[Path(sub.dir).name] = {"n_repeats": sub.repeats, "img_count": count}
    return out


def bucket_info(dataset: "Dataset") -> dict:
    """kohya's ss_bucket_info shape: {"buckets": {i: {"resolution": [w, h], "count": samples}},
    "mean_img_ar_error": mean |image aspect − bucket aspect|} (count includes repeats, like kohya's)."""
    samples: Counter[tuple[int, int]] = Counter()
    for it in dataset.items:
        samples[it.bucket] += it.repeats
    buckets = {i: {"resolution": [w, h], "count": n} for i, ((w, h), n) in enumerate(sorted(samples.items()))}
    errs = [abs(it.original_size[0] / it.original_size[1] - it.bucket[0] / it.bucket[1]) for it in dataset.items]
    return {"buckets": buckets, "mean_img_ar_error": sum(errs) / len(errs) if errs else 0.0}
