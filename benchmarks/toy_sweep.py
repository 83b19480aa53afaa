"""A `lorakit sweep` on the toy world's learning benchmark: writes the benchmark's run.toml (the demo recipe,
`lorakit.toy.demo.demo_config`) and a validation folder of 4 more concept images never trained on, then runs

    lorakit sweep run.toml <grid ...> data.validation_dir=val validation.every_n_steps=N save.keep_best=true
        sample.at_start=false --concept [--parallel N | --gpus 0,1]

so each point is scored by concept rate and drift (eval.json) beside its validation loss.

    python benchmarks/toy_sweep.py --family sdxl --out /tmp/sw-sdxl [--every 100] [--parallel 2] \
        optimizer.lr=3e-3,6e-3 training.max_steps=800

Everything after the options is passed to `lorakit sweep` (grid axes, --steps, --parallel, --gpus).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def prepare(family: str, out: Path, device: str = "cpu") -> Path:
    """The benchmark's run.toml (absolute paths) and its validation folder under ``out``; returns run.toml."""
    from lorakit.config.toml_io import dump_toml
    from lorakit.toy.demo import demo_config, ensure_dataset
    from lorakit.toy.world import write_demo_dataset

    out.mkdir(parents=True, exist_ok=True)
    ensure_dataset(out / "dataset")
    if not (out / "val").exists():
        write_demo_dataset(out / "val", n=4, seed=4321)
    cfg = demo_config(family, out / "dataset", out, f"toy-{family}",
                      overrides=("sample.prompts=[]", "log.progress=false", "log.tensorboard=false",
                                 f"training.device={device}"))
    (out / "run.toml").write_text(dump_toml(cfg))
    return out / "run.toml"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="sdxl")
    ap.add_argument("--out", required=True, type=Path, help="a folder for the data, run.toml and the sweep")
    ap.add_argument("--every", type=int, default=100, help="validation.every_n_steps")
    ap.add_argument("--device", default="cpu")
    args, rest = ap.parse_known_args()
    toml = prepare(args.family, args.out.resolve(), args.device)
    from lorakit.cli import main as lorakit

    axes = [a for a in rest if "=" in a and not a.startswith("-")]
    options = [a for a in rest if a not in axes]
    return lorakit(["sweep", str(toml), *axes, f"data.validation_dir={args.out.resolve() / 'val'}",
                    f"validation.every_n_steps={args.every}", "save.keep_best=true", "--concept",
                    "--out", str(args.out.resolve() / "sweep"), *options])


if __name__ == "__main__":
    sys.exit(main())
