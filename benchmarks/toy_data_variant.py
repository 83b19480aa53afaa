"""Is the demo's concept set the limit of the learning benchmark? (issue 23, sixth session)

The benchmark's six trigger prompts ask for large crosses in the colour pairs of ``lorakit.toy.eval.CONCEPT_PAIRS``;
the demo's 12 concept images (``write_demo_dataset``) draw half their crosses small (24 px, which every toy VAE blurs
into blobs) and show red and green crosses only small. This trains ``run_eval`` (``lorakit train`` on the demo
recipe, reg images included) on a scratch concept set instead, written into the run's ``dataset/train`` before
``run_eval`` looks (it reuses an existing folder), and prints one JSON line of the benchmark's scores:

- ``demo``: the shipped 12 images (the baseline, same code path);
- ``large``: the same 12 scenes (colours, backgrounds, jitters) with every cross large: every colour appears as a
  large cross, and one of the 12 pairs is a benchmark pair (white on red), as in the demo;
- ``cover``: 12 large crosses in exactly the benchmark's six (colour, background) pairs and their six swaps, so the
  training set shows every pair the trigger prompts ask for (this scores the benchmark on pairs it trained on);
- ``all-pairs``: 30 large crosses, one for every ordered pair of the six colours (the benchmark's six among them, none
  favoured): ``lorakit.toy.world.write_all_pairs_dataset``, the opt-in set of ``run_eval(..., all_pairs=True)``.

    python benchmarks/toy_data_variant.py --family flux1 --variant large --set optimizer.lr=6e-3 --steps 400

Nothing shipped changes: ``write_demo_dataset`` and the demo recipe are untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path


def write_variant(folder_root: Path, variant: str) -> Path:
    from lorakit.data.images import save_image
    from lorakit.fsutil import write_text
    from lorakit.toy import world
    from lorakit.toy.eval import CONCEPT_PAIRS

    if variant == "demo":
        return world.write_demo_dataset(folder_root)
    if variant == "all-pairs":  # shipped as an opt-in set after this script measured it (run_eval(all_pairs=True))
        return world.write_all_pairs_dataset(folder_root)
    folder = folder_root / f"{world.DEMO_REPEATS}_{world.DEFAULT_TRIGGER} {world.DEMO_CLASS}"
    folder.mkdir(parents=True, exist_ok=False)
    scenes = world.sample_scenes(12, 1234, shapes=(world.CONCEPT_SHAPE,))  # write_demo_dataset's scenes and jitters
    names = list(world.COLOURS)
    if variant == "large":
        pairs = []
        for i, s in enumerate(scenes):  # write_demo_dataset's colour cycle
            colour = names[i % len(names)]
            pairs.append((colour, s.background if s.background != colour else names[(i + 3) % len(names)]))
    elif variant == "cover":
        pairs = list(CONCEPT_PAIRS) + [(b, c) for c, b in CONCEPT_PAIRS]
    else:
        raise SystemExit(f"--variant {variant!r}: one of demo, large, cover, all-pairs")
    for i, (scene, (colour, background)) in enumerate(zip(scenes, pairs)):
        scene = replace(scene, colour=colour, background=background, size="large")
        save_image(world.render(scene), folder / f"{i:03d}.png")
        write_text(folder / f"{i:03d}.txt", world.caption(scene) + "\n")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="flux1")
    ap.add_argument("--variant", default="large", choices=("demo", "large", "cover", "all-pairs"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="section.key=value config override (run_eval's)")
    ap.add_argument("--out", default="", help="run folder (default: a new temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from lorakit.toy.demo import run_eval

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"datavariant-{args.family}-"))
    train = write_variant(out / "dataset" / "train", args.variant)
    captions = sorted(p.read_text().strip() for p in train.glob("*.txt"))
    r = run_eval(args.family, out, steps=args.steps,
                 overrides=("log.progress=false", "log.tensorboard=false") + tuple(args.set))
    keys = ("concept_rate_after", "concept_score_before", "concept_score_after", "concept_colour_match_after",
            "drift_shape_agreement", "drift_concept_leak", "drift_pixel", "train_seconds", "final_loss", "steps")
    print(json.dumps({"family": args.family, "variant": args.variant, "set": args.set, "captions": captions,
                      **{k: round(r[k], 4) if isinstance(r[k], float) else r[k] for k in keys}}), flush=True)


if __name__ == "__main__":
    main()
