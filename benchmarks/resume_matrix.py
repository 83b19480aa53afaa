"""The kill-and-resume matrix: SIGKILL a toy SDXL run (CPU) at every save, rename and fsync point it passes, and at
random times, resume it, and check that it ends bitwise equal to an uninterrupted run: the final LoRA, every step
checkpoint, the loss curve (each step once) and, with previews on, every preview image; no temp file is left.

Two configs: ``plain`` (no previews) and ``stress`` (LoRA dropout, previews at the save step, caption shuffle and
dropout, flips, noise offset, min-SNR). A first uninterrupted run fills the caches and is the reference; a second
one records the points a run passes (each ``os.replace``/``os.link`` rename, ``os.fsync``, ``torch.save``,
safetensors write and step start, in order), which are then the kill points: the k-th trial dies by SIGKILL just
before the k-th point, as a power cut or an OOM killer would stop it there. Nothing in lorakit knows about this: the
points are patched in here, in a forked child (so each trial costs no interpreter start), then the real CLI runs.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/resume_matrix.py --work /tmp/matrix [--configs plain,stress]
        [--stride 1] [--random 4] [--json out.json]

``--stride N`` kills at every N-th point (1 = all); ``--random K`` adds K kills at random times per config.
Exit status 1 when any trial does not resume bitwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

AUGMENT = ("data.shuffle_caption=true", "data.caption_dropout_rate=0.2", "data.flip_aug=true")
CONFIGS = {
    "plain": ("sample.prompts=[]",),
    "stress": (*AUGMENT, "network.dropout=0.25", "sample.every_n_steps=3", "training.noise_offset=0.05",
               "training.min_snr_gamma=5"),
}


# ------------------------------------------------------------------------------------------ the points a run passes


def install_points(on_point) -> None:
    """Call ``on_point(kind, detail)`` before every rename, fsync, torch.save, safetensors write and step start."""
    import safetensors.torch
    import torch

    import lorakit.train.steps as steps

    real = {"replace": os.replace, "link": os.link, "fsync": os.fsync, "save": torch.save,
            "save_file": safetensors.torch.save_file, "step": steps.train_step}

    def fd_name(fd) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return "?"

    def replace(src, dst, *a, **k):
        on_point("replace", str(dst))
        return real["replace"](src, dst, *a, **k)

    def link(src, dst, *a, **k):
        on_point("link", str(dst))
        return real["link"](src, dst, *a, **k)

    def fsync(fd):
        on_point("fsync", fd_name(fd))
        return real["fsync"](fd)

    def save(obj, f, *a, **k):
        on_point("torch.save", str(f))
        return real["save"](obj, f, *a, **k)

    def save_file(tensors, filename, *a, **k):
        on_point("safetensors", str(filename))
        return real["save_file"](tensors, filename, *a, **k)

    def step(*a, **k):
        on_point("step", "")
        return real["step"](*a, **k)

    os.replace, os.link, os.fsync = replace, link, fsync
    torch.save, safetensors.torch.save_file, steps.train_step = save, save_file, step


def in_child(fn, *, kill_at: int | None = None, kill_after: float | None = None, trace: Path | None = None) -> int:
    """Run ``fn()`` in a forked child; SIGKILL it before its ``kill_at``-th point or after ``kill_after`` seconds.
    Returns the exit status (negative: the signal)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stdout = sys.stderr = open(os.devnull, "w")
            count = {"n": 0}
            log = open(trace, "w") if trace else None

            def on_point(kind, detail):
                count["n"] += 1
                if log:
                    log.write(json.dumps([kind, detail]) + "\n")
                if kill_at is not None and count["n"] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            install_points(on_point)
            if kill_after is not None:
                threading.Timer(kill_after, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
            code = int(fn() or 0)
            if log:
                log.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


# ----------------------------------------------------------------------------------------------------- checks


def compare(ref: Path, ref_name: str, run: Path, name: str) -> list[str]:
    """What differs between an uninterrupted run and a resumed one ([] when bitwise equal)."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    problems = []
    status = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    if status.get("status") != "finished":
        return [f"not finished: {status.get('status')}"]
    for suffix in (".safetensors", "-step00000003.safetensors"):
        a, b = ref / f"{ref_name}{suffix}", run / f"{name}{suffix}"
        if not b.exists():
            problems.append(f"missing {b.name}")
            continue
        ta, tb = load_file(a), load_file(b)
        if ta.keys() != tb.keys() or any(not torch.equal(ta[k], tb[k]) for k in ta):
            problems.append(f"{b.name} differs")

    def losses(folder):
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in rows if "loss" in r]

    if losses(ref) != losses(run):
        problems.append(f"loss rows differ: steps {[r[0] for r in losses(run)]}")
    samples = {p.name.removeprefix(ref_name): p for p in (ref / "samples").glob(f"{ref_name}_*.png")}
    got = {p.name.removeprefix(name): p for p in (run / "samples").glob(f"{name}_*.png")}
    if samples.keys() != got.keys():
        problems.append(f"previews differ in names: {sorted(set(samples) ^ set(got))}")
    for k in set(samples) & set(got):
        if not np.array_equal(np.asarray(Image.open(samples[k])), np.asarray(Image.open(got[k]))):
            problems.append(f"preview {k} differs")
    left = [str(p.relative_to(run)) for p in run.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name
            or ".old-" in p.name]
    if left:
        problems.append(f"temp files left: {left}")
    return problems


# ------------------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--configs", default="plain,stress")
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--random", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from lorakit.cli import main as cli
    from tests.integration.test_train_e2e import tiny_model, write_run_toml

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    toml = write_run_toml(work, "sdxl", tiny_model("sdxl", work / "model"), name="run")
    rng = random.Random(args.seed)
    report: dict = {}
    failed = 0
    for config in args.configs.split(","):
        extra = CONFIGS[config]
        ref = f"{config}-ref"
        t0 = time.perf_counter()
        assert in_child(lambda: cli(["train", str(toml), *extra, f"save.name={ref}"])) == 0, "reference run failed"
        trace = work / f"{config}.points"
        t0 = time.perf_counter()
        assert in_child(lambda: cli(["train", str(toml), *extra, f"save.name={config}-trace"]), trace=trace) == 0
        seconds = time.perf_counter() - t0
        points = [json.loads(x) for x in trace.read_text().splitlines()]
        trace_problems = compare(work / "out" / ref, ref, work / "out" / f"{config}-trace", f"{config}-trace")
        trials = [("point", k) for k in range(1, len(points) + 1, args.stride)]
        trials += [("time", round(rng.uniform(0.2, seconds), 2)) for _ in range(args.random)]
        rows = []
        for i, (kind, where) in enumerate(trials):
            name = f"{config}-t{i:03d}"
            run = work / "out" / name
            rc = in_child(lambda: cli(["train", str(toml), *extra, f"save.name={name}"]),
                          kill_at=where if kind == "point" else None, kill_after=where if kind == "time" else None)
            label = (f"{points[where - 1][0]} {Path(points[where - 1][1]).name}" if kind == "point"
                     else f"after {where} s")
            if rc != -signal.SIGKILL:
                rows.append({"trial": kind, "at": where, "label": label, "killed": False, "ok": rc == 0,
                             "problems": [] if rc == 0 else [f"exit {rc}"]})
                continue
            if (run / "config.toml").exists():
                rc = in_child(lambda: cli(["train", "--resume", str(run)]))
            else:  # killed before the folder was set up: the user starts it again
                shutil.rmtree(run, ignore_errors=True)
                rc = in_child(lambda: cli(["train", str(toml), *extra, f"save.name={name}"]))
            problems = [f"resume exit {rc}"] if rc != 0 else compare(work / "out" / ref, ref, run, name)
            rows.append({"trial": kind, "at": where, "label": label, "killed": True, "ok": not problems,
                         "problems": problems})
            print(f"{config:6s} {kind:5s} {str(where):>6s} {label[:60]:60s} {'ok' if not problems else problems}",
                  flush=True)
            shutil.rmtree(run, ignore_errors=True)
        killed = [r for r in rows if r["killed"]]
        bad = [r for r in rows if not r["ok"]]
        failed += len(bad) + bool(trace_problems)
        report[config] = {"points": len(points), "run_seconds": round(seconds, 1), "trials": len(rows),
                          "killed": len(killed), "bitwise": sum(r["ok"] for r in killed),
                          "at_points": sum(1 for r in killed if r["trial"] == "point"),
                          "at_random_times": sum(1 for r in killed if r["trial"] == "time"),
                          "uninterrupted_equal": not trace_problems, "failures": bad}
        print(json.dumps({k: v for k, v in report[config].items() if k != "failures"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps({c: f"{r['bitwise']}/{r['killed']} killed runs resumed bitwise" for c, r in report.items()}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
