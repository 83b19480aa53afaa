"""``python -m lorakit.toy build [--family NAME|all] [--out DIR] [--plan full|quick]``.

Rebuilds the toy base models bit-for-bit (one CPU thread, fixed seeds) and prints their hashes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorakit.toy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="pretrain the toy base models and save them in the real layouts")
    b.add_argument("--family", default="all", help="a family with a toy recipe (TOY in its package), or 'all'")
    b.add_argument("--out", default=None, help="output folder (default: lorakit/toy/assets)")
    b.add_argument("--plan", default="full", choices=("full", "quick"),
                   help="'quick' trains a few steps only (for reproducibility checks)")
    r = sub.add_parser("report", help="sample grids + prompt-following numbers of the shipped toy models -> BUILD.md")
    r.add_argument("--out", default=None, help="assets folder (default: lorakit/toy/assets)")
    d = sub.add_parser("dataset", help="write the demo dataset (kohya folder layout)")
    d.add_argument("dir")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "dataset":
        from lorakit.toy.world import write_demo_dataset

        print(write_demo_dataset(args.dir))
        return 0
    from lorakit.toy.build import build
    from lorakit.toy.paths import ASSETS, toy_families, toy_recipe

    if args.command == "report":
        print(write_report(Path(args.out) if args.out else ASSETS))
        return 0

    out = Path(args.out) if args.out else ASSETS
    from lorakit.errors import LorakitError

    families = toy_families() if args.family == "all" else [args.family]
    try:
        for fam in families:
            toy_recipe(fam)                               # an unknown family fails before any build starts
    except LorakitError as exc:
        print(f"python -m lorakit.toy build: {exc}", file=sys.stderr)
        return 2
    for fam in families:
        report = build(fam, out, args.plan)
        print(f"{fam}: {report['seconds']} s")
        for role, f in report["files"].items():
            print(f"  {role:10s} {f['name']:28s} {f['bytes']:>10d} B  sha256 {f['sha256']}")
    return 0


REPORT_PROMPTS = ("a red circle on a blue background", "a green square on a white background",
                  "a yellow triangle on a black background", "a white circle on a red background",
                  "a blue square on a yellow background", "a black triangle on a green background",
                  "a small red square on a green background", "a red zkx on a blue background")


def write_report(root: Path) -> Path:
    """Sample each shipped toy model (fixed prompts x 6 seeds), save the grids, write BUILD.md."""
    import json

    import torch

    from lorakit.data.images import save_image
    from lorakit.fsutil import write_text
    from lorakit.toy import eval as toy_eval
    from lorakit.toy.paths import toy_families, toy_recipe

    torch.set_num_threads(1)
    lines = ["# Toy base models: build record", "",
             "Rebuild with `nice -n 5 python -m lorakit.toy build --family all` (one CPU thread, fixed seeds);",
             "the files must come out with the hashes below. `python -m lorakit.toy report` redraws the grids",
             "and this file. Times were measured on the shared 2-core machine (other jobs running).", "",
             "Each family's toy is its package's `TOY` recipe (`lorakit/models/<family>/toy.py`): tiny modules of the"
             " real classes, the file table and the pretraining knobs; the build trains them through the family's"
             " own Adapter (`encode_text`, `noise`, `predict`) and samples with its `sample`. Text encoders are"
             " frozen random.", "",
             "Recipe history: the shipped files were built at commit 3722196, when `lorakit/toy/build.py` had its own"
             " copies of the two families' text encoding, noising and prediction. The recipe (data, objectives,"
             " settings, seeds) is unchanged since, but a rebuild now draws SDXL's noise offset before its"
             " timesteps (the adapter's order), so an SDXL rebuild gives other bytes than the shipped ones (FLUX.1's"
             " draws are in the same order as before). The hashes below are those of the shipped files.", "",
             "Reproducibility: `tests/unit/test_toy_build.py` rebuilds a short plan twice and compares hashes;"
             " two independent full SDXL builds gave bit-identical VAE and text-encoder tensors.", ""]
    for fam in toy_families():
        folder = root / fam
        if not (folder / "build.json").is_file():
            continue
        info = json.loads((folder / "build.json").read_text())
        model = toy_eval.load_toy(fam, root=root)
        parts = toy_recipe(fam).make(0)
        arch = "; ".join(f"{role} {type(m).__name__} ({sum(p.numel() for p in m.parameters()) / 1e6:.2f} M)"
                         for role, m in parts.items())
        lines += [f"## {fam}", "", f"- architecture (params): {arch}",
                  f"- build time: {info['seconds']} s wall, {info.get('cpu_seconds', '?')} s CPU"
                  f" (plan {info['plan']}, torch {info['torch']})",
                  f"- VAE latent scaling_factor {info['scaling_factor']}, shift_factor {info['shift_factor']}",
                  f"- denoiser loss (mean per 100 steps): first {info['loss_curve'][0]}, last {info['loss_curve'][-1]}",
                  "", "| role | file | bytes | sha256 |", "|---|---|---|---|"]
        for role, f in info["files"].items():
            lines.append(f"| {role} | {f['name']} | {f['bytes']} | `{f['sha256']}` |")
        if model is not None:
            seeds = list(range(6))
            cfg = model.demo.cfg_scale                   # the recipe's: 1.0 = guidance-distilled, no true CFG
            grid = toy_eval.sample_grid(model, REPORT_PROMPTS, seeds, cfg=cfg)
            save_image(grid, root / f"samples_{fam}.png")
            base = [p for p in REPORT_PROMPTS if "zkx" not in p]
            prompts = [p for p in base for _ in seeds]
            imgs = toy_eval.sample(model, prompts, seeds * len(base), cfg=cfg)
            follow = toy_eval.prompt_following(imgs, prompts)
            lines += ["", f"Samples: `samples_{fam}.png` (rows = prompts below, columns = seeds 0-5; the family"
                      f" adapter's sampler, 20 steps, CFG {cfg:g}). Prompt following over the first 7 prompts x 6 seeds (detector):"
                      f" shape {follow['shape']:.2f}, colour {follow['colour']:.2f},"
                      f" background {follow['background']:.2f}, all three {follow['all']:.2f}.", ""]
            lines += [f"{i + 1}. {p}" for i, p in enumerate(REPORT_PROMPTS)]
        lines.append("")
    out = root / "BUILD.md"
    return write_text(out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
