"""The toy-world learning benchmark (CPU): train the demo LoRA per family through `lorakit train`, score the
concept and the drift (lorakit.toy.eval), and the same with a deliberately wrong target as a control.

    python benchmarks/toy_learning.py [--steps 400] [--append]

Prints a markdown table; --append adds it to benchmarks/RESULTS.md with date, commit and machine.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import tempfile
from pathlib import Path

import contextlib

from lorakit.toy.demo import broken_objective, run_eval
from lorakit.toy.paths import toy_families

KEYS = ("concept_rate_before", "concept_rate_after", "concept_score_before", "concept_score_after",
        "concept_colour_match_after", "drift_shape_agreement", "drift_concept_leak", "drift_pixel", "train_seconds")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    rows = []
    for family in toy_families():
        for variant in ("real objective", "broken (target = x0)"):
            broken = broken_objective(family) if variant.startswith("broken") else contextlib.nullcontext()
            with broken:
                r = run_eval(family, Path(tempfile.mkdtemp(prefix=f"toyeval-{family}-")), steps=args.steps,
                             overrides=("log.progress=false",))
            rows.append((family, variant, r))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    head = (f"\n## Toy learning benchmark (CPU: {platform.processor() or platform.machine()}, 1 torch thread, "
            f"{datetime.date.today()}, commit {commit}{' dirty' if dirty else ''})\n\n"
            f"Demo recipe: {args.steps} steps, batch 4, rank 8, AdamW lr 1e-3 cosine, 12 concept images × 10 repeats + "
            "24 reg images (prior preservation); 4 trigger prompts + 4 prompts without it, 4 seeds each, "
            "20 sampling steps (SDXL CFG 4; FLUX guidance 3.5, no CFG).\n\n")
    table = "| family | objective | " + " | ".join(KEYS) + " |\n|" + "---|" * (len(KEYS) + 2) + "\n"
    for family, variant, r in rows:
        table += f"| {family} | {variant} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS) + " |\n"
    print(head + table)
    if args.append:
        with open(Path(__file__).parent / "RESULTS.md", "a", encoding="utf-8") as fh:
            fh.write(head + table)


if __name__ == "__main__":
    main()
