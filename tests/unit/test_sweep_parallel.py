"""Sweep points at once (lorakit.sweep.parallel): the manifest under parallel completion, stop and resume, the failure
mapping, with stand-in child processes (a short script instead of `lorakit train`); how many points the memory plan
puts on one card; a child's command line loads the point's config exactly; and (slow) with real tiny SDXL runs, two
points run at once equal to the same points run one after another, bit for bit. The same with a kill -9 of the sweep
process is tests/integration/test_sweep.py (slow)."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

from lorakit.errors import ConfigError, LorakitError
from lorakit.sweep import parallel
from lorakit.sweep.run import Sweep, create, run_sweep

from tests.unit.test_sweep import write_config

# a stand-in for `lorakit train`: one "step" per tick, a checkpoint (the step and a running value) after each, SIGTERM
# answered as train answers it (run.json "interrupted", exit 130); the final value depends only on lr and steps
CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    run, lr, steps, resume, calls = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
    with open(calls, "a") as f:
        f.write(f"{run.name} {int(resume)}\\n")
    with open(calls + ".cards", "a") as f:
        f.write(f"{run.name} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\\n")
    def stop(*_):
        (run / "run.json").write_text(json.dumps({"status": "interrupted"}))
        sys.exit(130)
    signal.signal(signal.SIGTERM, stop)
    if lr < 0:   # a bad point: the run fails (run.json says so)
        run.mkdir(parents=True, exist_ok=True)
        (run / "run.json").write_text(json.dumps({"status": "failed", "error": "loss is NaN at step 1"}))
        sys.exit(2)
    if lr == 0:  # a data error: no run.json, one error line
        print("lorakit: error: data/x.png: not an image")
        sys.exit(2)
    if not resume:
        run.mkdir(parents=True)
        (run / "config.toml").write_text("")
    step, value = json.loads((run / "ckpt").read_text()) if (run / "ckpt").exists() else (0, 1.0)
    while step < steps:
        time.sleep(0.03 if lr < 2e-4 else 0.25)
        step, value = step + 1, value * (1 - lr * 100) + lr
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": value, "val_loss": value + 0.01}) + "\\n")
        (run / "ckpt").write_text(json.dumps([step, value]))
    (run / "lora.txt").write_text(repr(value))
    (run / "run.json").write_text(json.dumps({"status": "finished", "step": step}))
""")


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    calls = tmp_path / "calls.txt"

    def command(root, manifest, point, resume, extra):
        return [sys.executable, str(script), str(root / point["name"]), point["settings"]["optimizer.lr"],
                str(manifest["steps"]), "1" if resume else "0", str(calls)]

    monkeypatch.setattr(parallel, "child_command", command)
    monkeypatch.setattr(parallel, "POLL_S", 0.02)
    return lambda: [tuple(line.split()) for line in calls.read_text().splitlines()] if calls.exists() else []


def test_gpus_run_points_at_once_each_on_its_card(tmp_path, stand_in, monkeypatch):
    """--gpus 0,1 on a machine shown as two cards (the CUDA queries and the planner stood in): the plan fits two points
    per card, so four children run at once, each with CUDA_VISIBLE_DEVICES set to its card (the parent's numbering
    mapped through its own CUDA_VISIBLE_DEVICES), planned within their share."""
    from dataclasses import replace

    import torch

    from lorakit.train import cards, planview

    card = replace(cards.card("h100"), free_bytes=int(40.0 * cards.GIB))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cards, "local_card", lambda device: card)
    monkeypatch.setattr(planview, "plan_for", lambda cfg, c: (Planned(15.0), []))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,1.5e-4,1.7e-4,1.9e-4,3e-4"], steps=2, out=tmp_path / "sw")
    lines = []
    run_sweep(sweep, log=lines.append, gpus=["0", "1"])
    assert "4 point(s) at once on card(s) 0,1" in lines[0] and "2 point(s) at once per card" in lines[0]
    assert "memory.vram_gb = 20" in lines[0]
    placed = dict(line.split() for line in (tmp_path / "calls.txt.cards").read_text().splitlines())
    names = [p["name"] for p in sweep.read()["points"]]
    assert [placed[n] for n in names[:4]] == ["4", "6", "4", "6"] and placed[names[4]] in ("4", "6")
    manifest = Sweep(tmp_path / "sw").read()
    assert [p["state"] for p in manifest["points"]] == ["finished"] * 5 and manifest["launch"]["gpus"] == ["0", "1"]
    assert sorted(p["card"] for p in manifest["points"][:4]) == ["4", "4", "6", "6"]


def final_values(root: Path) -> dict[str, str]:
    return {d.name: (d / "lora.txt").read_text() for d in root.iterdir() if (d / "lora.txt").is_file()}


def test_parallel_stop_then_resume_keeps_finished_points_and_resumes_the_running_one(tmp_path, stand_in):
    toml = write_config(tmp_path)
    args = ["optimizer.lr=1e-4,3e-4,5e-4"]
    sweep = create(toml, args, steps=6, out=tmp_path / "sw")
    names = [p["name"] for p in sweep.read()["points"]]
    lines = []

    def log(line):  # Ctrl-C the moment the fast point finishes; the slow one is mid-run, the third not started
        lines.append(line)
        if line == f"point {names[0]} finished":
            # on a loaded machine the slow child may not have started yet: wait for its first checkpoint, so that it
            # is interrupted mid-run (a child killed before it wrote anything is started afresh, not resumed)
            import time

            deadline = time.monotonic() + 60
            while not (tmp_path / "sw" / names[1] / "ckpt").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="--resume"):
        run_sweep(sweep, log=log, parallel=2)
    assert "2 points at once on the CPU" in lines[0]
    manifest = Sweep(tmp_path / "sw").read()
    assert [p["state"] for p in manifest["points"]] == ["finished", "interrupted", "pending"]
    assert manifest["launch"] == {"gpus": None, "parallel": 2}
    ckpt = tmp_path / "sw" / names[1] / "ckpt"
    assert not ckpt.exists() or json.loads(ckpt.read_text())[0] < 6
    run_sweep(Sweep(tmp_path / "sw"), log=lambda *_: None)   # --resume: the launch recorded is used again
    assert [(p["state"], p.get("error")) for p in Sweep(tmp_path / "sw").read()["points"]] == [("finished", None)] * 3
    assert stand_in() == [(names[0], "0"), (names[1], "0"), (names[1], "1"), (names[2], "0")]
    straight = create(toml, args, steps=6, out=tmp_path / "sw2")
    run_sweep(straight, log=lambda *_: None, parallel=3)
    assert final_values(tmp_path / "sw") == final_values(tmp_path / "sw2")
    ranked = json.loads((tmp_path / "sw" / "comparison" / "ranking.json").read_text())["points"]
    assert [p["state"] for p in ranked] == ["finished"] * 3


def test_a_failed_point_is_recorded_and_a_data_error_stops_the_sweep(tmp_path, stand_in):
    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4"], steps=2, out=tmp_path / "sw2")
    manifest = sweep.read()   # a point's lr as the child sees it: -1 fails the run, 0 is a data error
    manifest["points"][0]["settings"]["optimizer.lr"] = "-1"
    sweep.write(manifest)
    run_sweep(sweep, log=lambda *_: None, parallel=2)
    points = Sweep(tmp_path / "sw2").read()["points"]
    assert [p["state"] for p in points] == ["failed", "finished"] and "NaN" in points[0]["error"]
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4"], steps=40, out=tmp_path / "sw3")
    manifest = sweep.read()
    manifest["points"][0]["settings"]["optimizer.lr"] = "0"
    sweep.write(manifest)
    with pytest.raises(LorakitError, match="data/x.png: not an image.*--resume"):
        run_sweep(sweep, log=lambda *_: None, parallel=2)
    points = Sweep(tmp_path / "sw3").read()["points"]
    assert [p["state"] for p in points] == ["pending", "interrupted"]   # the other one stopped, resumable


def test_points_in_their_own_processes_refuse_a_changed_config(tmp_path, stand_in):
    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4"], steps=2, out=tmp_path / "sw")
    toml.write_text(toml.read_text() + "\n# edited\n")
    with pytest.raises(LorakitError, match="changed since the sweep began"):
        run_sweep(sweep, log=lambda *_: None, parallel=2)
    assert stand_in() == []


def test_gpus_and_parallel_refusals(tmp_path):
    assert parallel.parse_gpus("0,1") == ["0", "1"]
    for bad in ("0,0", "a", "0,,1", "-1"):
        with pytest.raises(ConfigError, match="--gpus"):
            parallel.parse_gpus(bad)
    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4", "training.device=cpu"], out=tmp_path / "sw")
    cfg = sweep.point_config(sweep.read(), sweep.read()["points"][0])
    with pytest.raises(ConfigError, match="--parallel must be at least 1"):
        parallel.layout([cfg], gpus=None, parallel=0)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU here"):
            parallel.layout([cfg], gpus=["0"], parallel=None)
    assert parallel.layout([cfg], gpus=None, parallel=None).in_process


class Planned:
    """What per_card reads of a plan: its estimated peak."""

    def __init__(self, peak):
        self.estimate_gib = peak


@pytest.mark.parametrize("peaks, free, cap, want", [
    ((13.6, 13.6), 78.3, None, 2),       # limited by the number of points
    ((13.6, 30.0, 20.0), 78.3, None, 2),  # the largest peak decides: 78.2 // 30
    ((13.6, 13.6, 13.6, 13.6, 13.6, 13.6), 78.3, None, 5),
    ((13.6, 13.6, 13.6), 78.3, 2, 2),    # --parallel caps it
    ((40.0, 40.0), 78.3, None, 1),
    ((9.0, 9.0), 7.5, None, 1),          # not even one fits the free memory: one at a time (the run plans its own)
])
def test_the_memory_plan_decides_how_many_points_share_a_card(tmp_path, peaks, free, cap, want):
    from dataclasses import replace

    from lorakit.config.load import load_config
    from lorakit.train import cards

    toml = write_config(tmp_path)
    cfgs = [load_config(toml, [f"network.rank={4 + i}"]) for i in range(len(peaks))]
    card = replace(cards.card("h100"), free_bytes=int(free * cards.GIB))
    planned = {c.network.rank: p for c, p in zip(cfgs, peaks)}
    k, share, line = parallel.per_card(cfgs, card, cap, plan_for=lambda c, _: (Planned(planned[c.network.rank]), []))
    room = math.floor(free * 10) / 10
    assert k == want and (k == 1 or k * max(peaks) <= room < (k + 1) * max(peaks) or k == len(peaks) or k == cap)
    assert f"{max(peaks):.1f} GiB" in line and f"{k} point(s) at once per card" in line
    assert share == (math.floor(room / k * 10) / 10 if k > 1 else None)
    if share:
        assert share >= max(peaks) and f"memory.vram_gb = {share:g}" in line
    # a point the plan cannot size: one at a time, and the line says why
    k, share, line = parallel.per_card(cfgs, card, plan_for=lambda c, _: (None, ["plan: no measured rows"]))
    assert (k, share, line) == (1, None, "plan: no measured rows; one point per card")
    off = [load_config(toml, ["memory.auto=false"])]
    assert parallel.per_card(off, card)[0:2] == (1, None)


@pytest.mark.slow
def test_the_real_plan_keeps_each_point_s_setting_within_its_share(tmp_path):
    """The full-size SDXL planned on the meta device (slow: ~20 s to build): k points of the planned peak fit the
    card, and within its share (memory.vram_gb = free / k) each point plans the same setting and peak."""
    from lorakit.config.load import load_config
    from lorakit.train import cards, planview

    toml = write_config(tmp_path)
    cfgs = [load_config(toml, ["data.resolution=1024", f"optimizer.lr={lr}"]) for lr in (1e-4, 3e-4, 1e-3)]
    card = cards.card("h100")
    plan = planview.plan_for(cfgs[0], card)[0]
    k, share, line = parallel.per_card(cfgs, card)
    room = math.floor(card.free_gib * 10) / 10
    assert k == min(3, int(room // plan.estimate_gib)) and k > 1
    again = planview.plan_for(load_config(toml, ["data.resolution=1024", f"memory.vram_gb={share}"]), card)[0]
    assert again.estimate_gib == pytest.approx(plan.estimate_gib)
    assert again.applied.memory.gradient_checkpointing == plan.applied.memory.gradient_checkpointing


def test_a_child_trains_exactly_the_config_the_sweep_process_would(tmp_path):
    """Fast stand-in for the bit-for-bit test below: the child's `lorakit train` command line, parsed and loaded by
    lorakit's own CLI, gives the point's config as the sweep's own process loads it (same values, same keys set by
    the user, so the same plan); a resumed child gets `train --resume <its folder>`."""
    from lorakit.cli import build_parser
    from lorakit.config.load import explicit_keys, load_config
    from lorakit.config.toml_io import dump_toml

    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4", "network.rank=2,4", "data.validation_split=0.5"], steps=3,
                   out=tmp_path / "sw")
    manifest = sweep.read()
    for point in manifest["points"]:
        argv = parallel.child_command(sweep.root, manifest, point, False, ())
        assert argv[:4] == [sys.executable, "-m", "lorakit", "train"]
        args = build_parser().parse_args(argv[3:])
        child = load_config(args.config, args.overrides)
        mine = sweep.point_config(manifest, point)
        assert dump_toml(child) == dump_toml(mine) and explicit_keys(child) == explicit_keys(mine)
        # on a card: the child's extra settings come last and win
        argv = parallel.child_command(sweep.root, manifest, point, False, ("training.device=cuda",
                                                                           "memory.vram_gb=26"))
        args = build_parser().parse_args(argv[3:])
        on_card = load_config(args.config, args.overrides)
        assert (on_card.training.device, on_card.memory.vram_gb) == ("cuda", 26.0)
        assert child.save.dir == str(sweep.root) and child.save.name == point["name"]
        resume = parallel.child_command(sweep.root, manifest, point, True, ())
        assert resume[3:] == ["train", "--resume", str(sweep.root / point["name"])]
    env = parallel.child_env(parallel.Slot("3"), 4)
    assert env["CUDA_VISIBLE_DEVICES"] == "3"


@pytest.mark.slow
def test_two_points_at_once_equal_the_same_points_one_after_another(tmp_path):
    """Real tiny SDXL runs (slow: ~45 s of CPU, two child processes importing torch): each point a `lorakit train`
    child process, against the same sweep in this process, bit for bit."""
    from safetensors.torch import load_file

    from lorakit.cli import main
    from tests.integration.test_train_e2e import tiny_model, write_run_toml

    toml = write_run_toml(tmp_path, "sdxl", tiny_model("sdxl", tmp_path / "model"))
    args = ["optimizer.lr=1e-3,4e-3", "sample.prompts=[]", "log.progress=false", "log.tensorboard=false",
            "save.every_n_steps=0", "--steps", "2"]
    assert main(["sweep", str(toml), *args, "--parallel", "2", "--out", str(tmp_path / "par")]) == 0
    assert main(["sweep", str(toml), *args, "--out", str(tmp_path / "seq")]) == 0
    assert "2 points at once" in json.loads((tmp_path / "par" / "sweep.json").read_text())["execution"]
    for name in ("01_lr1e-3", "02_lr4e-3"):
        a = load_file(tmp_path / "par" / name / f"{name}.safetensors")
        b = load_file(tmp_path / "seq" / name / f"{name}.safetensors")
        assert a.keys() == b.keys() and len(a) > 0
        assert all(a[k].equal(b[k]) for k in a), name
    la = load_file(tmp_path / "par" / "01_lr1e-3" / "01_lr1e-3.safetensors")
    lb = load_file(tmp_path / "par" / "02_lr4e-3" / "02_lr4e-3.safetensors")
    assert any(not la[k].equal(lb[k]) for k in la)   # the two points did train differently
