"""`lorakit sweep` with real tiny SDXL runs (slow: eight short runs; tests/unit/test_sweep.py covers the same flow
with a stand-in trainer): a 2x2 grid gives four run folders, a grid image of the right size, a ranking equal to
sorting the metrics; a sweep interrupted mid-point and resumed finishes with the same numbers as one run straight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lorakit.cli import main
from lorakit.sweep import report
from lorakit.train import resume as resume_mod

from tests.integration.test_train_e2e import tiny_model, write_run_toml
from tests.unit.test_sweep import rank_from_metrics

ARGS = ["optimizer.lr=1e-3,4e-3", "network.rank=2,4", "data.validation_split=0.25", "save.every_n_steps=1",
        "validation.every_n_steps=1", "sample.at_start=false", 'sample.prompts=["a red zkx --d 1 --s 1"]',
        "log.progress=false", "log.tensorboard=false", "--steps", "2"]


@pytest.mark.slow
def test_sweep_2x2_then_interrupted_sweep_resumes_to_the_same_results(tmp_path):
    paths = tiny_model("sdxl", tmp_path / "model")
    toml = write_run_toml(tmp_path, "sdxl", paths)
    straight = tmp_path / "straight"
    assert main(["sweep", str(toml), *ARGS, "--out", str(straight)]) == 0
    names = [p["name"] for p in json.loads((straight / "sweep.json").read_text())["points"]]
    assert sorted(p.name for p in straight.iterdir() if (p / "config.toml").is_file()) == sorted(names)
    ranked = json.loads((straight / "comparison" / "ranking.json").read_text())["points"]
    assert [p["name"] for p in ranked] == rank_from_metrics(straight)
    w, h = Image.open(next((straight / names[0] / "samples").glob("*_after_00_*.png"))).size
    cell = report.cell_size((w, h))
    assert Image.open(straight / "comparison" / "grid.png").size == report.grid_size(4, 1, cell)

    real = resume_mod.save_checkpoint
    seen = []

    def stop_in_second_point(*args, **kw):
        path = real(*args, **kw)
        seen.append(args[0].name)
        if args[0].name == names[1] and args[9] == 1:
            raise KeyboardInterrupt
        return path

    mp = pytest.MonkeyPatch()
    mp.setattr(resume_mod, "save_checkpoint", stop_in_second_point)
    again = tmp_path / "again"
    try:
        assert main(["sweep", str(toml), *ARGS, "--out", str(again)]) == 130
    finally:
        mp.undo()
    states = [p["state"] for p in json.loads((again / "sweep.json").read_text())["points"]]
    assert states == ["finished", "interrupted", "pending", "pending"]
    assert main(["sweep", "--resume", str(again)]) == 0
    resumed = json.loads((again / "comparison" / "ranking.json").read_text())["points"]
    key = lambda ps: [(p["name"], p["best_val_loss"], p["best_step"], p["final_train_loss"]) for p in ps]
    assert key(resumed) == key(ranked)


@pytest.mark.slow
def test_sweep_process_killed_mid_parallel_then_resumed_equals_points_run_one_after_another(tmp_path):
    """`lorakit sweep --parallel 2` in its own process, SIGKILLed once both points have a checkpoint: the children
    stop (the parent-death signal), `--resume` resumes both from their checkpoints, and every LoRA equals the same
    point run one after another in one process, bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    paths = tiny_model("sdxl", tmp_path / "model")
    toml = write_run_toml(tmp_path, "sdxl", paths)
    args = ["optimizer.lr=1e-3,4e-3", "sample.prompts=[]", "log.progress=false", "log.tensorboard=false",
            "save.every_n_steps=1", "--steps", "12"]
    par = tmp_path / "par"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "sweep", str(toml), *args, "--parallel", "2",
                             "--out", str(par)], env=env)
    names = ["01_lr1e-3", "02_lr4e-3"]
    deadline = time.monotonic() + 300
    while not all(list((par / n / "state").glob("step*/COMPLETE")) if (par / n / "state").is_dir() else False
                  for n in names):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((par / "sweep.json").read_text())
    assert [p["state"] for p in manifest["points"]] == ["running", "running"]

    def alive(pid):  # a zombie (exited, not reaped yet) counts as gone
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 120  # the children got SIGTERM when their parent died: they stop as train stops
    while any(alive(p["pid"]) for p in manifest["points"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert [json.loads((par / n / "run.json").read_text())["status"] for n in names] == ["interrupted"] * 2
    assert main(["sweep", "--resume", str(par)]) == 0
    assert [p["state"] for p in json.loads((par / "sweep.json").read_text())["points"]] == ["finished"] * 2
    seq = tmp_path / "seq"
    assert main(["sweep", str(toml), *args, "--out", str(seq)]) == 0
    for n in names:
        a, b = load_file(par / n / f"{n}.safetensors"), load_file(seq / n / f"{n}.safetensors")
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), n
