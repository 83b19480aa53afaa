"""A scratch rebuild of one toy with a longer denoiser pretraining (issue 23: is the toy's pretraining the limit?).

    python benchmarks/toy_rebuild.py --family flux1 --steps 10500 --out /tmp/toys-long

The shared full plan (``lorakit.toy.build.PLANS["full"]``) with only the denoiser's step count changed, written under
``--out/<family>/`` (never the shipped assets: other tests depend on their bytes). Score it with
``benchmarks/toy_limits.py sampler --toy-root OUT`` and ``benchmarks/toy_ceiling.py --toy-root OUT``. Families that
pretrain themselves (``TOY.build``: FLUX.2, Qwen-Image) keep their own plans and are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="flux1")
    ap.add_argument("--steps", type=int, required=True, help="denoiser pretraining steps (the full plan has 3,500)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from lorakit.toy import build
    from lorakit.toy.paths import ASSETS, toy_recipe

    if toy_recipe(args.family).build is not None:
        raise SystemExit(f"{args.family}: its toy pretrains itself with its own plans (TOY.build); not rebuilt here")
    if Path(args.out).resolve() == ASSETS.resolve():
        raise SystemExit("--out: not the shipped assets folder")
    build.PLANS["long"] = dataclasses.replace(build.PLANS["full"], steps=args.steps)
    report = build.build(args.family, Path(args.out), plan_name="long")
    print(f"{args.family}: {report['seconds']} s wall, {report['cpu_seconds']} s CPU, last loss {report['loss_curve'][-1]}")


if __name__ == "__main__":
    main()
