"""The toy learning benchmark for the training options of issue 23 (optimizers, noise options), each against the
demo recipe, run in parallel processes on the CPU (one torch thread each).

    python benchmarks/trainopts_bench.py [--steps 400] [--jobs 14] [--families sdxl,flux1]
    python benchmarks/trainopts_bench.py --only demo,came --steps 400,1000 --grid optimizer.lr=1e-3,3e-3 \
        --grid network.rank=8,16 --families sdxl,flux1,flux2 --jobs 15

``--grid section.key=a,b`` crosses every chosen variant with the grid (the sweep's own parser and point names;
``network.rank`` sets ``network.alpha`` to the same value unless the grid sets it); ``--steps`` takes a list.

Prints a markdown table (concept rate/score after, drift) per family and variant; an EMA variant has a second row
scoring its ``-ema.safetensors`` (the EMA weights).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

VARIANTS = {
    "demo recipe (adamw 1e-3)": (),
    "prodigy lr 1.0": ("optimizer.name=prodigy", "optimizer.lr=1.0"),
    "lion lr 2e-4": ("optimizer.name=lion", "optimizer.lr=2e-4"),
    "came lr 1e-3": ("optimizer.name=came",),
    "adamw_schedulefree lr 1e-3": ("optimizer.name=adamw_schedulefree", "optimizer.scheduler=constant"),
    "ema 0.99": ("training.ema=true", "training.ema_decay=0.99"),  # rows for the trained and the EMA weights
    "slow ema 0.995": ("training.ema=true", "training.ema_decay=0.995"),
}
SDXL_ONLY = {
    # issue 23, LoRA variants (LyCORIS defaults: LoHa/LoKr want a higher lr than LoRA)
    "loha lr 1e-3": ("network.type=loha",),
    "loha lr 4e-3": ("network.type=loha", "optimizer.lr=4e-3"),
    "lokr lr 1e-3": ("network.type=lokr",),
    "lokr lr 4e-3": ("network.type=lokr", "optimizer.lr=4e-3"),
    "dora lr 1e-3": ("network.type=dora",),
    "ip_noise_gamma 0.1": ("training.ip_noise_gamma=0.1",),
    "multires noise 6 / 0.3": ("training.multires_noise_iterations=6",),
    "debiased estimation": ("training.debiased_estimation_loss=true",),
    "min_snr 5": ("training.min_snr_gamma=5",),
}
FLUX_ONLY = {  # timestep sampling (the default is flux_shift)
    "timesteps uniform": ("training.timestep_sampling=uniform",),
    "timesteps logit_normal": ("training.timestep_sampling=logit_normal",),
    "timesteps sigmoid": ("training.timestep_sampling=sigmoid",),
    "timesteps shift 3.16": ("training.timestep_sampling=shift",),
}
KEYS = ("concept_rate_after", "concept_score_before", "concept_score_after", "concept_colour_match_after",
        "drift_shape_agreement", "drift_concept_leak", "drift_pixel", "train_seconds")


def _one(job):
    family, name, overrides, steps = job
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from lorakit.toy.demo import run_eval

    out = Path(tempfile.mkdtemp(prefix=f"trainopts-{family}-"))
    t0 = time.perf_counter()
    try:
        r = run_eval(family, out, steps=steps, overrides=("log.progress=false", "log.tensorboard=false") + overrides)
    except Exception as exc:  # report, keep the others
        return family, name, {"error": f"{type(exc).__name__}: {exc}"[:300]}
    r["wall"] = time.perf_counter() - t0
    return family, name, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="400", help="steps, or a comma-separated list of them")
    ap.add_argument("--jobs", type=int, default=14)
    ap.add_argument("--families", default="sdxl,flux1")
    ap.add_argument("--only", default="", help="comma-separated prefixes of the variants to run (default: all)")
    ap.add_argument("--grid", action="append", default=[], help="section.key=a,b,... crossed with every variant")
    args = ap.parse_args()
    grid_points = [("", ())]
    if args.grid:
        from lorakit.sweep.grid import parse_grid, points

        grid = parse_grid(args.grid)
        grid_points = []
        for p in points(grid):
            ov = tuple(p.overrides)
            if "network.rank" in grid and "network.alpha" not in grid:
                ov += (f"network.alpha={dict(p.settings)['network.rank']}",)
            grid_points.append((", " + p.label(), ov))
    jobs = []
    for family in args.families.split(","):
        variants = dict(VARIANTS, **(SDXL_ONLY if family == "sdxl" else FLUX_ONLY if family.startswith("flux") else {}))
        for steps in (int(x) for x in args.steps.split(",")):
            jobs += [(family, f"{name}{label}, {steps} steps", ov + gov, steps)
                     for name, ov in variants.items() for label, gov in grid_points
                     if not args.only or any(name.startswith(p) for p in args.only.split(","))]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(_one, jobs))
    table = "| family | variant | " + " | ".join(KEYS) + " |\n|" + "---|" * (len(KEYS) + 2) + "\n"
    rows = [x for family, name, r in rows for x in
            [(family, name, r)] + ([(family, name + ", EMA weights", {**r["ema"], "train_seconds": r["train_seconds"]})]
                                   if "ema" in r else [])]
    for family, name, r in rows:
        if "error" in r:
            table += f"| {family} | {name} | {r['error']} |\n"
        else:
            table += f"| {family} | {name} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS) + " |\n"
    print(table)


if __name__ == "__main__":
    main()
