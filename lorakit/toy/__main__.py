"""``python -m lorakit.toy build [--family sdxl|flux1|all] [--out DIR] [--plan full|quick]``.

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
    b.add_argument("--family", default="all", choices=("sdxl", "flux1", "flux2", "all"))
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
    from lorakit.toy.build import FAMILIES, build
    from lorakit.toy.paths import ASSETS

    if args.command == "report":
        print(write_report(Path(args.out) if args.out else ASSETS))
        return 0

    out = Path(args.out) if args.out else ASSETS
    families = FAMILIES if args.family == "all" else (args.family,)
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

    from lorakit.toy import eval as toy_eval

    torch.set_num_threads(1)
    lines = ["# Toy base models: build record", "",
             "Rebuild with `nice -n 5 python -m lorakit.toy build --family all` (one CPU thread, fixed seeds);",
             "the files must come out with the hashes below. `python -m lorakit.toy report` redraws the grids",
             "and this file. Times were measured on the shared 2-core machine (other jobs running).", "",
             "Architectures (params): SDXL UNet2DConditionModel 2 levels [32, 64], text_time add-embedding"
             " (1.02 M); TE1 CLIPTextModel h16 (0.80 M); TE2 CLIPTextModelWithProjection h24 (1.20 M); AutoencoderKL"
             " [8, 16, 32, 32], 4 latent ch, factor 8 (0.25 M). FLUX FluxTransformer2DModel inner 64, 2 double + 2"
             " single blocks, guidance_embeds (dev); CLIPTextModel h16; T5EncoderModel d16; AutoencoderKL 16 ch,"
             " no quant convs. Text encoders are frozen random; toy FLUX T5 length 64.", "",
             "Reproducibility: `tests/unit/test_toy_build.py` rebuilds a short plan twice and compares hashes;"
             " two independent full SDXL builds gave bit-identical VAE and text-encoder tensors.", ""]
    for fam in ("sdxl", "flux1"):
        folder = root / fam
        if not (folder / "build.json").is_file():
            continue
        info = json.loads((folder / "build.json").read_text())
        model = toy_eval.load_toy(fam, root=root)
        lines += [f"## {fam}", "", f"- build time: {info['seconds']} s wall, {info.get('cpu_seconds', '?')} s CPU"
                  f" (plan {info['plan']}, torch {info['torch']})",
                  f"- VAE latent scaling_factor {info['scaling_factor']}, shift_factor {info['shift_factor']}",
                  f"- denoiser loss (mean per 100 steps): first {info['loss_curve'][0]}, last {info['loss_curve'][-1]}",
                  "", "| role | file | bytes | sha256 |", "|---|---|---|---|"]
        for role, f in info["files"].items():
            lines.append(f"| {role} | {f['name']} | {f['bytes']} | `{f['sha256']}` |")
        if model is not None:
            seeds = list(range(6))
            cfg = 4.0 if fam == "sdxl" else 1.0          # FLUX dev style: guidance input 3.5, no true CFG
            grid = toy_eval.sample_grid(model, REPORT_PROMPTS, seeds, cfg=cfg)
            grid.save(root / f"samples_{fam}.png")
            base = [p for p in REPORT_PROMPTS if "zkx" not in p]
            prompts = [p for p in base for _ in seeds]
            imgs = toy_eval.sample(model, prompts, seeds * len(base), cfg=cfg)
            follow = toy_eval.prompt_following(imgs, prompts)
            lines += ["", f"Samples: `samples_{fam}.png` (rows = prompts below, columns = seeds 0-5; DDIM/flow-Euler"
                      f" 20 steps, CFG {cfg:g}). Prompt following over the first 7 prompts x 6 seeds (detector):"
                      f" shape {follow['shape']:.2f}, colour {follow['colour']:.2f},"
                      f" background {follow['background']:.2f}, all three {follow['all']:.2f}.", ""]
            lines += [f"{i + 1}. {p}" for i, p in enumerate(REPORT_PROMPTS)]
        lines.append("")
    out = root / "BUILD.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    sys.exit(main())
