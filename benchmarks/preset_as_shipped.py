"""A shipped preset, unchanged, through `lorakit train` itself (issue 28): s/step, peak memory, time to first step.

What it does (on a CUDA machine, repository root on PYTHONPATH):
1. writes, once, random-weight full-size model files (``benchmarks/first_step.py``'s ``build_models``: SDXL as one
   single file, FLUX.1-dev as the four ComfyUI files) and 8 images at 1024² with captions;
2. writes a run.toml that is the preset and nothing else of the training: ``preset = "<family>/<name>"``, the model
   files, the data folder, and only the bookkeeping keys (``training.max_steps``, ``log.every_n_steps = 1``,
   ``save.every_n_steps = 0``, the run and cache folders) — no ``[memory]`` key, so the automatic plan decides;
3. runs ``lorakit train`` three times in fresh processes: ``caching`` (fills the latent and text caches, and shows the
   caching peak), ``cold`` (an empty compile cache: ``TORCHINDUCTOR_CACHE_DIR`` pointed at a new folder) and ``warm``
   (the same compile cache again). With ``--cap-gib X`` every process caps itself at X GiB from its first line
   (``torch.cuda.set_per_process_memory_fraction``; the planner reads the cap as the card's free memory), so a run
   that does not fit the tier fails with an out-of-memory error instead of borrowing the rest of the card;
4. prints one markdown row per run and appends them to ``$OUT/preset_as_shipped.md`` (with the JSON in
   ``$OUT/preset_as_shipped.jsonl``): s/step (median of the steps after ``--skip``), peak allocated GiB from the
   run's own metrics (``max_memory_allocated`` since the process started: caching included), the largest memory
   ``nvidia-smi`` showed for the process (polled every 0.2 s: what the driver holds, CUDA context and allocator cache
   included), seconds from spawn to the first step, and the plan's log line.

Usage::

    python benchmarks/preset_as_shipped.py --dir /data/preset sdxl/character
    python benchmarks/preset_as_shipped.py --dir /data/preset flux1/character --cap-gib 24 --steps 30
    python benchmarks/preset_as_shipped.py --dir /data/preset flux2/character --flux2-size 9b --cap-gib 16
    python benchmarks/preset_as_shipped.py --dir /tmp/ps sdxl/character --tiny --device cpu   # harness smoke test

``--set key=value`` adds overrides (e.g. a hand-tuned row to compare with: ``--set memory.auto=false``). ``--data DIR``
trains on a given dataset (many buckets; set ``training.max_steps`` past one epoch) and adds the steps after the first
epoch (median, max, max/median) and dynamo's recompile count to each row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import first_step  # noqa: E402  (the random-weight files, the dataset, the timed `lorakit train`)

HEADER = ("| preset | card (cap) | run | s/step (median) | peak alloc GiB | nvidia-smi max GiB | start → step 1 s "
          "| plan |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")

CHILD = ("import os, runpy, sys\n"
         "cap = float(os.environ.get('PRESET_CAP_GIB') or 0)\n"
         "if cap:\n"
         "    import torch\n"
         "    total = torch.cuda.get_device_properties(0).total_memory\n"
         "    torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**30 / total))\n"
         f"import diffusers, transformers, lorakit.cli, lorakit.train.loop\n"
         f"print({first_step.IMPORT_MARK!r}, flush=True)\n"
         "sys.argv = ['lorakit'] + sys.argv[1:]\nrunpy.run_module('lorakit', run_name='__main__', alter_sys=True)\n")


class SmiPoller(threading.Thread):
    """The largest memory nvidia-smi reports for one process id, polled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pid: Optional[int] = None
        self.peak_mib = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            if self.pid is None:
                continue
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.SubprocessError):
                return
            for line in out.splitlines():
                pid, _, mib = line.partition(",")
                if pid.strip().isdigit() and int(pid) == self.pid and mib.strip().replace(".", "").isdigit():
                    self.peak_mib = max(self.peak_mib, float(mib))


def run_once(args, config: Path, runs: Path, name: str, env_extra: dict[str, str]) -> dict[str, Any]:
    poller = SmiPoller()
    poller.start()
    old_popen = subprocess.Popen

    def popen(cmd, *a, **k):  # the timed child of first_step.run_train, with this benchmark's child and env
        if isinstance(cmd, list) and cmd[1:2] == ["-c"] and cmd[2] == first_step.CHILD:
            cmd = [cmd[0], "-c", CHILD, *cmd[3:]]
            k["env"] = {**k.get("env", os.environ), **env_extra}
        proc = old_popen(cmd, *a, **k)
        poller.pid = proc.pid
        return proc

    subprocess.Popen = popen
    try:
        timing = first_step.run_train(sys.executable, REPO, config, [f"save.name={name}", *args.set], runs / name,
                                      name, args.timeout)
    finally:
        subprocess.Popen = old_popen
        poller.stop.set()
    rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "seconds" in r]
    timed = [r["seconds"] for r in steps[args.skip:]] or [r["seconds"] for r in steps]
    plan = {}
    if (runs / name / "plan.json").is_file():
        plan = json.loads((runs / name / "plan.json").read_text())
    line = next((n for n in plan.get("notes", []) if n.startswith("plan for ")), "; ".join(plan.get("notes", [])))
    later = [r["seconds"] for r in steps if r.get("epoch", 0) > min((x.get("epoch", 0) for x in steps), default=0)]
    log_text = Path(timing.log).read_text(errors="replace") if Path(timing.log).is_file() else ""
    return {"run": name, "s_step": statistics.median(timed) if timed else None,
            # --data (many buckets): the steps after the first epoch, their slowest against their median (issue 28: < 2)
            # and dynamo's recompiles (TORCH_LOGS=recompiles; the first compile of each block is not one)
            "later_median_s": statistics.median(later) if later else None, "later_max_s": max(later, default=None),
            "later_max_over_median": max(later) / statistics.median(later) if later else None,
            "recompiles": log_text.count("Recompiling function") if "TORCH_LOGS" in env_extra else None,
            "peak_alloc_gib": max((r.get("peak_mem_gib", 0.0) for r in steps), default=None),
            "smi_peak_gib": poller.peak_mib / 1024 if poller.peak_mib else None,
            "first_step_s": timing.first_step, "total_s": timing.total, "plan": line,
            "estimate_gib": plan.get("estimate_gib"), "s_step_estimate": plan.get("s_step_estimate"),
            "log": str(timing.log)}


def fmt(v: Optional[float], digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", help="family/name of a shipped preset, e.g. sdxl/character")
    ap.add_argument("--dir", required=True, help="folder for the model files, data and runs (reused)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--skip", type=int, default=5, help="steps left out of the median (compilation, warm-up)")
    ap.add_argument("--cap-gib", type=float, default=0.0, help="cap each process at this many GiB (the card tier)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--data", default="", help="train on this dataset (e.g. benchmarks/data_scale.py make: mixed sizes, "
                    "many buckets) instead of --images at 1024²; reports the steps after the first epoch and recompiles")
    ap.add_argument("--tiny", action="store_true", help="tiny models (a CPU smoke test of the harness)")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--set", action="append", default=[], help="an override section.key=value (repeatable)")
    ap.add_argument("--runs", default="caching,cold,warm", help="which of caching,cold,warm to run")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--shared-cache", action="store_true",
                    help="keep the data caches under --dir (a later call with --runs cold,warm reuses them) instead "
                         "of in this call's run folder")
    ap.add_argument("--inductor-dir", default="",
                    help="one compile cache for the cold/warm runs of several calls (default: a new one per call)")
    ap.add_argument("--flux2-size", choices=("4b", "9b"), default="4b", help="FLUX.2 presets: Klein base 4B or 9B files")
    args = ap.parse_args(argv)
    import torch

    family = args.preset.split("/")[0]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    files = "flux2-9b" if family == "flux2" and args.flux2_size == "9b" else family  # first_step's FLUX2_SIZES
    paths = first_step.build_models(files, root, args.tiny, device)
    resolution = 64 if args.tiny else 1024
    data = Path(args.data).resolve() if args.data else \
        first_step.write_dataset(root / f"data-{resolution}-{args.images}", args.images, resolution)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = root / "runs" / f"{args.preset.replace('/', '-')}-{stamp}"
    runs.mkdir(parents=True)
    model = {role: str(p) for role, p in paths.items() if role != "config"}
    if "config" in paths:
        model["config_dir"] = str(paths["config"])
    config = runs / "run.toml"
    text = f'preset = "{args.preset}"\n\n'
    text += first_step.write_config(runs / "sections.toml", {
        "model": model,
        "data": {"dir": str(data),
                 "cache_dir": str(root / f"cache-{files}" if args.shared_cache else runs / "cache"),
                 **({"resolution": resolution, "min_bucket_reso": 64} if args.tiny else {})},
        "training": {"max_steps": args.steps,
                     **({} if device == "cuda" else {"device": "cpu", "mixed_precision": "no"})},
        "save": {"dir": str(runs), "every_n_steps": 0},
        "log": {"every_n_steps": 1},
    }).read_text()
    config.write_text(text)
    env_extra = {"PRESET_CAP_GIB": str(args.cap_gib)} if args.cap_gib else {}
    if args.data:
        env_extra["TORCH_LOGS"] = "recompiles"
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    cap = f" ({args.cap_gib:g} GiB cap)" if args.cap_gib else ""
    results = []
    inductor = Path(args.inductor_dir).resolve() if args.inductor_dir else runs / "inductor-cache"
    for name in args.runs.split(","):
        extra = dict(env_extra)
        if name in ("cold", "warm"):
            extra["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)  # cold: created empty by the first of them
        if name == "caching":
            extra["TORCHINDUCTOR_CACHE_DIR"] = str(runs / "inductor-caching")
        r = run_once(args, config, runs, name, extra)
        print(f"{name}: {json.dumps(r)}", flush=True)
        results.append(r)
    print()
    print(HEADER)
    lines = []
    for r in results:
        lines.append(f"| {args.preset} | {card}{cap} | {r['run']} | {fmt(r['s_step'])} | "
                     f"{fmt(r['peak_alloc_gib'], 2)} | {fmt(r['smi_peak_gib'], 2)} | {fmt(r['first_step_s'], 1)} | "
                     f"{r['plan']} |")
        if r.get("later_max_s") is not None:
            lines[-1] += (f" after epoch 1: median {fmt(r['later_median_s'])} s, max {fmt(r['later_max_s'])} s "
                          f"({fmt(r['later_max_over_median'], 2)}×), {r['recompiles']} recompiles in the run |")
    print("\n".join(lines))
    out = os.environ.get("OUT")
    if out:
        with open(Path(out) / "preset_as_shipped.md", "a", encoding="utf-8") as f:
            f.write(f"\n{HEADER}\n" + "\n".join(lines) + "\n")
        with open(Path(out) / "preset_as_shipped.jsonl", "a", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps({"preset": args.preset, "card": card, "cap_gib": args.cap_gib, **r}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
