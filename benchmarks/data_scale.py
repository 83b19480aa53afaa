"""Scale of data (issue 28): scanning, `lorakit data check` and latent caching on generated datasets of 1,000 and
10,000 images, time per image and peak host memory per phase.

    python benchmarks/data_scale.py make /tmp/ds1k --images 1000            # the dataset (once)
    python benchmarks/data_scale.py run /tmp/ds1k [/tmp/ds10k ...] [--phases scan,check,cache]

``make`` writes mixed sizes from 256 to 2048 px a side in steps of 64 (so many buckets), half PNG and half JPEG, each a
solid colour with a rectangle of another (small files: a few KB; every image different), with a caption file each, in
one kohya subset folder ``1_scale``. ``run`` measures each phase in a fresh process (so that its peak resident memory,
``ru_maxrss``, is the phase's own): ``scan`` (:func:`lorakit.data.scan.scan_dataset`: every image decoded, hashed and
bucketed), ``check`` (``python -m lorakit data check``: the scan plus the report) and ``cache`` (the scan, then
:meth:`lorakit.data.cache.LatentCache.ensure` with the toy SDXL VAE on the CPU into a fresh cache folder: every image
decoded again, resized to its bucket and encoded, 4 per call). Runs at ``data.resolution = 128`` with buckets from 64 to
256 px, the toy's scale; the decode of the large source images is the same work as at 1024². Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_KEYS = ["data.resolution=384", "data.min_bucket_reso=128", "data.max_bucket_reso=1024",
             "data.bucket_reso_steps=64"]


def make(folder: Path, images: int, seed: int = 0) -> None:
    """``images`` generated images (and captions) in ``folder/1_scale``; sizes 256-2048 px a side, step 64."""
    from PIL import Image, ImageDraw

    sub = Path(folder) / "1_scale"
    sub.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(images):
        w, h = rng.randrange(256, 2049, 64), rng.randrange(256, 2049, 64)
        colour = (i % 251, (i // 251) % 251, rng.randrange(256))  # unique per image: no exact duplicates
        img = Image.new("RGB", (w, h), colour)
        x0, y0 = rng.randrange(w // 2), rng.randrange(h // 2)
        ImageDraw.Draw(img).rectangle((x0, y0, x0 + w // 3, y0 + h // 3), fill=(255 - colour[0], rng.randrange(256),
                                                                              255 - colour[2]))
        name = f"img{i:05d}"
        if i % 2:
            img.save(sub / f"{name}.jpg", quality=85)
        else:
            img.save(sub / f"{name}.png", optimize=False, compress_level=6)
        (sub / f"{name}.txt").write_text(f"a {w}x{h} test picture number {i}", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------- phases

def _phase(name: str, folder: str, cache_dir: str) -> dict:
    """One phase in this process; returns its wall time and item count (ru_maxrss is read by the parent)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0, c0 = time.time(), time.process_time()
    if name == "check":
        out = subprocess.run([sys.executable, "-m", "lorakit", "data", "check", folder, *DATA_KEYS, "--family",
                              "sdxl"], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
        return {"seconds": time.time() - t0, "items": None}
    import torch

    from lorakit.config.load import load_config
    from lorakit.data.scan import scan_dataset

    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.dir={folder}", "model.family=sdxl", "model.checkpoint=(unused)", *DATA_KEYS])
    dataset = scan_dataset(cfg.data, divisibility=64)
    t_scan = time.time() - t0
    if name == "scan":
        return {"seconds": t_scan, "phase_cpu": time.process_time() - c0, "items": len(dataset.items),
                "buckets": len(dataset.buckets)}
    from lorakit.data.cache import LatentCache
    from lorakit.models.registry import get_family
    from lorakit.toy.paths import model_section

    cfg = load_config(None, data={"model": model_section("sdxl"), "data": {"dir": folder},
                                  "training": {"device": "cpu"}})
    adapter = get_family("sdxl").Adapter(cfg)
    adapter.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    t1, c1 = time.time(), time.process_time()
    cache = LatentCache(Path(cache_dir), adapter.identity()["vae"])
    rss: list[tuple[int, float]] = []  # (images encoded, resident MiB now): flat = bounded

    def encode(pixels):
        out = adapter.encode_images(pixels)
        done = (rss[-1][0] if rss else 0) + pixels.shape[0]
        rss.append((done, _rss_mib()))
        return out

    cache.ensure(dataset.items, encode, flip=False, progress=False, log=None)
    tenth = max(1, len(rss) // 10)
    series = [rss[i] for i in range(tenth - 1, len(rss), tenth)]
    return {"seconds": time.time() - t1, "phase_cpu": time.process_time() - c1, "scan_seconds": t_scan,
            "rss_series": " ".join(f"{n}:{m:.0f}" for n, m in series), "items": len(dataset.items),
            "buckets": len(dataset.buckets)}


def _rss_mib() -> float:
    """Resident memory of this process now (MiB), from /proc."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(phase: str, folder: Path) -> dict:
    """Run ``phase`` on ``folder`` in a child process; its wall time and peak resident memory (MiB)."""
    with tempfile.TemporaryDirectory() as cache_dir:
        code = (f"import json, resource, sys; sys.path.insert(0, {str(ROOT)!r}); "
                f"from benchmarks.data_scale import _phase; r = _phase({phase!r}, {str(folder)!r}, {cache_dir!r}); "
                "s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN); "
                "r['maxrss_mib'] = max(s.ru_maxrss, c.ru_maxrss) / 1024; "
                "r['cpu'] = s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime; print(json.dumps(r))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        if out.returncode:
            raise SystemExit(f"{phase} on {folder} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("folder", type=Path)
    m.add_argument("--images", type=int, default=1000)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("folders", type=Path, nargs="+")
    r.add_argument("--phases", default="scan,check,cache")
    args = ap.parse_args()
    if args.cmd == "make":
        t0 = time.time()
        make(args.folder, args.images, args.seed)
        size = sum(p.stat().st_size for p in args.folder.rglob("*") if p.is_file())
        print(f"{args.images} images in {args.folder}: {size / 2**20:.1f} MiB, {time.time() - t0:.0f} s")
        return 0
    print("| images | phase | wall s | CPU s (phase) | CPU ms / image | CPU s (process, imports included) | "
          "peak RSS MiB | buckets |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        n = len(list((folder / "1_scale").glob("*.txt")))
        for phase in args.phases.split(","):
            res = measure(phase, folder)
            cpu = res.get("phase_cpu", res["cpu"])  # check: the CLI's whole process
            print(f"| {n} | {phase} | {res['seconds']:.1f} | {cpu:.1f} | {1000 * cpu / n:.1f} | {res['cpu']:.1f} | "
                  f"{res['maxrss_mib']:.0f} | {res.get('buckets', '')} |", flush=True)
            if res.get("rss_series"):
                print(f"  resident MiB while caching (images encoded: MiB): {res['rss_series']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
