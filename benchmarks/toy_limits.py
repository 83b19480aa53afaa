"""Where does the toy-world learning benchmark's ceiling come from? (issue 23, "Quality bar on the toy world")

Three probes on the shipped toys, none of which trains anything:

``vae``      The 12 concept training images (``write_demo_dataset``) and 24 base-world images (``write_reg_dataset``)
             through each toy's VAE as training sees them (``Adapter.encode_images``) and back (the VAE decode the
             family's sampler uses), scored by the benchmark's detector: if the round trip already reads < 0.8 as a
             cross (or in the right colour), the VAE or the detector caps the concept rate.
``text``     How far apart the text encoders put "a red zkx on a blue background" and the same prompt with each base
             shape word, against the distance between two base shapes: a trigger embedding that is as distinct as a
             known shape word is not the limit.
``sampler``  The base toy's prompt following (detector: shape / colour / background over 6 prompts x ``--seeds``) under
             the recipe's sampling settings and alternatives (steps, CFG, FLUX guidance value): a sampler setting
             that makes the base follow prompts better also scores a LoRA better.

    python benchmarks/toy_limits.py vae --families all
    python benchmarks/toy_limits.py text --families all
    python benchmarks/toy_limits.py sampler --families flux1 --settings "steps=20,cfg=1;steps=20,cfg=4,negative= "

Prints one JSON line per family (and per setting). One torch thread; deterministic.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def decode(adapter, latents):
    """Normalised latents [1,C,h,w] (as ``encode_images`` returns them) -> PIL image, by the family sampler's own
    decode (``Adapter.decode`` where the family has one; FLUX.1 and the U-Net families decode inline in ``sample``,
    mirrored here)."""
    import torch

    from lorakit.data.images import to_images

    if hasattr(adapter, "decode"):
        return adapter.decode(latents)
    if hasattr(adapter, "_c"):  # FLUX.1: ae.decode(x / scale + shift), as Adapter.sample
        from lorakit.models.flux1.adapter import SPEC

        ae = adapter._c().ae
        return to_images(ae.decode((latents / SPEC.vae_scale + SPEC.vae_shift).float()).sample[0])[0]
    vae = adapter.vae  # U-Net families (UNetAdapter.sample)
    z = latents.float() / vae.config.scaling_factor + adapter._vae_shift()
    with torch.no_grad():
        return to_images(vae.decode(z).sample[0])[0]


def probe_vae(family: str, root=None) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from lorakit.toy import detector, world
    from lorakit.toy.build import images_to_tensor
    from lorakit.toy.eval import load_toy, prompt_following

    toy = load_toy(family, root=root)
    tmp = Path(tempfile.mkdtemp(prefix="toylimits-"))
    out = {"family": family}
    for label, folder in (("concept", world.write_demo_dataset(tmp / "train")), ("reg", world.write_reg_dataset(tmp / "reg"))):
        pngs = sorted(folder.glob("*.png"))
        originals = [Image.open(p).convert("RGB") for p in pngs]
        captions = [p.with_suffix(".txt").read_text().strip() for p in pngs]
        with torch.no_grad():
            lat = toy.adapter.encode_images(images_to_tensor(originals))
            recs = [decode(toy.adapter, lat[i:i + 1]) for i in range(len(pngs))]
        if os.environ.get("TOY_LIMITS_SAVE"):  # originals (top) over round trips (bottom), for eyeballing
            from lorakit.toy.eval import before_after_grid

            before_after_grid(originals, recs).save(Path(os.environ["TOY_LIMITS_SAVE"]) / f"vae_{family}_{label}.png")
        for name, imgs in (("original", originals), ("roundtrip", recs)):
            reads = [detector.read(im) for im in imgs]
            pf = prompt_following(imgs, captions)  # shape / colour / background words of each caption
            out[f"{label}_{name}_shape"] = round(pf["shape"], 3)
            out[f"{label}_{name}_colour"] = round(pf["colour"], 3)
            out[f"{label}_{name}_background"] = round(pf["background"], 3)
            if label == "concept":
                out[f"concept_{name}_score"] = round(float(np.mean([r.concept_score for r in reads])), 3)
                for size in ("large", "small"):  # the benchmark's trigger prompts ask for large centred shapes
                    pick = [(" small " in c) == (size == "small") for c in captions]
                    out[f"concept_{name}_{size}_shape"] = round(float(np.mean(
                        [r.shape == world.CONCEPT_SHAPE for r, k in zip(reads, pick) if k])), 3)
                    out[f"concept_{size}_n"] = int(sum(pick))
        out[f"{label}_pixel_error"] = round(float(np.mean([np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255
                                                           for a, b in zip(originals, recs)])), 4)
    return out


def probe_text(family: str, root=None) -> dict:
    import torch

    from lorakit.toy import world
    from lorakit.toy.eval import load_toy

    toy = load_toy(family, root=root)
    words = [world.DEFAULT_TRIGGER, *world.BASE_SHAPES, "cross"]
    prompts = [f"a red {w} on a blue background" for w in words] + ["", "a blue circle on a red background",
                                                                      "a red circle on a green background"]
    with torch.no_grad():
        emb = toy.adapter.encode_text(prompts)
    flat = torch.cat([v.float().reshape(len(prompts), -1) for k, v in sorted(emb.items()) if v.is_floating_point()], 1)

    def dist(i, j):  # relative L2 distance of two prompts' whole conditioning
        return float((flat[i] - flat[j]).norm() / ((flat[i].norm() + flat[j].norm()) / 2 + 1e-9))

    n = len(words)
    base = [dist(i, j) for i in range(1, 4) for j in range(i + 1, 4)]
    return {"family": family, "keys": sorted(emb), "trigger_vs_base_shapes": [round(dist(0, j), 4) for j in range(1, 4)],
            "base_vs_base": [round(d, 4) for d in base], "trigger_vs_cross_word": round(dist(0, n - 1), 4),
            "trigger_vs_empty": round(dist(0, n), 4), "circle_vs_empty": round(dist(1, n), 4),
            # word order: the same words with colour and background swapped, against one colour word changed
            "colour_background_swap": round(dist(1, n + 1), 4), "one_colour_changed": round(dist(1, n + 2), 4)}


def parse_settings(text: str) -> list[dict]:
    out = []
    for part in text.split(";"):
        d = {}
        for kv in part.split(","):
            k, v = kv.split("=", 1)
            d[k.strip()] = v if k.strip() == "negative" else float(v)
        out.append(d)
    return out


def sampler_kwargs(setting: dict, demo) -> dict:
    """SamplePrompt fields of one sampler setting (recipe defaults where unset)."""
    return {"steps": int(setting.get("steps", demo.sample_steps)), "cfg_scale": float(setting.get("cfg", demo.cfg_scale)),
            "guidance": setting.get("guidance"), "negative": setting.get("negative", "")}


def probe_sampler(family: str, settings: list[dict], seeds: int, root=None) -> list[dict]:
    import torch

    from lorakit.models.base import SamplePrompt
    from lorakit.toy import eval as ev
    from lorakit.toy.eval import load_toy

    toy = load_toy(family, root=root)
    prompts, ss = ev._expand(ev.DRIFT_PROMPTS, list(range(seeds)))
    rows = []
    for setting in settings:
        kw = sampler_kwargs(setting, toy.demo)
        t0 = time.perf_counter()
        imgs = [toy.adapter.sample(SamplePrompt(prompt=p, width=64, height=64, seed=s, **kw), torch.Generator().manual_seed(s))
                for p, s in zip(prompts, ss)]
        pf = ev.prompt_following(imgs, prompts)
        rows.append({"family": family, "setting": setting, **{k: round(v, 3) for k, v in pf.items()},
                     "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("probe", choices=("vae", "text", "sampler"))
    ap.add_argument("--families", default="all")
    ap.add_argument("--settings", default="steps=20")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--toy-root", default=None, help="a folder of rebuilt toys (<root>/<family>/) instead of the shipped")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from lorakit.toy.paths import toy_families

    root = Path(args.toy_root) if args.toy_root else None
    fams = toy_families() if args.families == "all" else args.families.split(",")
    for f in fams:
        if args.probe == "vae":
            print(json.dumps(probe_vae(f, root)), flush=True)
        elif args.probe == "text":
            print(json.dumps(probe_text(f, root)), flush=True)
        else:
            for row in probe_sampler(f, parse_settings(args.settings), args.seeds, root):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
