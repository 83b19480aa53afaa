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
    b.add_argument("--family", default="all", choices=("sdxl", "flux1", "all"))
    b.add_argument("--out", default=None, help="output folder (default: lorakit/toy/assets)")
    b.add_argument("--plan", default="full", choices=("full", "quick"),
                   help="'quick' trains a few steps only (for reproducibility checks)")
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

    out = Path(args.out) if args.out else ASSETS
    families = FAMILIES if args.family == "all" else (args.family,)
    for fam in families:
        report = build(fam, out, args.plan)
        print(f"{fam}: {report['seconds']} s")
        for role, f in report["files"].items():
            print(f"  {role:10s} {f['name']:28s} {f['bytes']:>10d} B  sha256 {f['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
