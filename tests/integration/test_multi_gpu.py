"""Data-parallel training over several processes on the CPU (gloo; docs/multi-gpu.md), on the toy SDXL.

The reference is one process with batch 2; the runs under test are two processes with batch 1 each (same global
batch, same global sample order). Compared: the loss and the gradient norm of every step (metrics.jsonl: both are
of the whole global batch, summed over the processes) and the LoRA weights of the resume states (exact fp32).

Tolerance, and why: the two ways sum the same numbers in a different order (one batch-2 kernel vs two batch-1
kernels and an all-reduce), so gradients agree to ~1e-7 relative, not bit for bit. Loss and gradient norm are
compared at rel 1e-5. The weights after AdamW's first steps are compared at max |Δ| ≤ 0.1·lr: AdamW divides each
gradient by its own magnitude (+ eps 1e-8), so a weight whose gradient is ~eps moves by up to lr on a rounding
difference; a wrong sample, slice or missing all-reduce changes the loss by percent and the weights by ~lr
everywhere (the test's own check: one step moves the reference by ≥ 10× the tolerance).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from tests.integration.test_train_e2e import tiny_model, write_run_toml

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo processes, signals")

REPO = Path(__file__).resolve().parents[2]
LR = 1e-3  # write_run_toml's optimizer.lr
COMMON = ("training.max_steps=3", "save.every_n_steps=2", "sample.prompts=[]", "log.progress=false",
          "log.tensorboard=false", "distributed.backend=gloo")
TWO = (*COMMON, "training.batch_size=1")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LORAKIT_TEST_FAULT"):
        env.pop(key, None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lorakit(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lorakit", *args], cwd=REPO, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def state(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "state" / f"step{step:08d}" / "lora.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def assert_same_steps(run: Path, ref: Path, steps: list[int]) -> None:
    got = {r["step"]: r for r in rows(run)}
    want = {r["step"]: r for r in rows(ref)}
    for step in steps:
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-5), step
        assert got[step]["grad_norm"] == pytest.approx(want[step]["grad_norm"], rel=1e-5), step


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The toy SDXL, its run TOML and the reference run (one process, batch 2, 3 steps, states at 2 and 3)."""
    tmp = tmp_path_factory.mktemp("multigpu")
    toml = write_run_toml(tmp, "sdxl", tiny_model("sdxl", tmp / "model"))
    assert main(["train", str(toml), *COMMON, "training.batch_size=2", "save.name=ref"]) == 0
    ref = tmp / "out" / "ref"
    # the tolerance can fail: one step moves the weights by far more than it
    assert max_diff(state(ref, 2), state(ref, 3)) > 10 * 0.1 * LR
    return tmp, toml, ref


def test_two_processes_equal_one_with_the_double_batch_a_dead_rank_stops_the_run_and_it_resumes(world, capsys):
    tmp, toml, ref = world
    started = time.monotonic()
    proc = lorakit("train", str(toml), *TWO, "save.name=d2", "distributed.main_process_port=0", "--gpus", "2",
                   LORAKIT_TEST_FAULT="1:3:exit")  # test-only hook: rank 1 dies at step 3's gradient exchange
    out, err = proc.communicate(timeout=600)
    ended = time.time()
    assert proc.returncode == 1, err[-3000:]
    run = tmp / "out" / "d2"
    # the run stops within seconds of the death (rank 1 dies one step after the step-2 save; on an idle 2-core
    # machine ~3 s: a step, the failed exchange, the launcher's poll; the bound allows a loaded machine)
    stopped_after = ended - (run / "state" / "step00000002" / "COMPLETE").stat().st_mtime
    assert stopped_after < 60, stopped_after
    # one line from the launcher names the rank and the last step it reached; rank 0 says what it waited for
    assert "lorakit: rank 1 exited with code 17, its last step reached: 2; the other ranks were stopped" in out
    assert f"`lorakit train --resume {run} --gpus 2`" in out
    assert "step 3: the gradient exchange failed on rank 0: rank 1 (last step reached: 2) did not arrive" in err
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed" and status["step"] == 3 and "rank 1" in status["error"]
    # nothing half-written: the step-2 checkpoint is complete, no step-3 state, no temporary files
    assert sorted(p.name for p in (run / "state").iterdir()) == ["step00000002"]
    assert (run / "state" / "step00000002" / "COMPLETE").is_file()
    assert not list(run.rglob("*.tmp-*")) and not (run / "d2.safetensors").exists()
    # rank 0 alone wrote: one metrics row per step, and the steps equal the single process's
    assert [r["step"] for r in rows(run)] == [1, 2]
    assert_same_steps(run, ref, [1, 2])
    assert max_diff(state(run, 2), state(ref, 2)) <= 0.1 * LR
    assert json.loads((run / "plan.json").read_text())["processes"] == 2
    print(f"two processes to the stop: {time.monotonic() - started:.1f} s; stopped {stopped_after:.1f} s after the "
          "step-2 save")

    # resume on another number of processes with the same global batch (1 × 2 = 2 × 1): the data position counts
    # global batches, so it continues where it stopped; a changed global batch is refused in one line
    copy = tmp / "out" / "d2-copy"
    shutil.copytree(run, copy)
    capsys.readouterr()
    assert main(["train", "--resume", str(copy), "training.batch_size=1"]) == 2
    err = capsys.readouterr().err
    assert "the global batch (processes × training.batch_size): 2 → 1" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--resume", str(run), "training.batch_size=2"]) == 0
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert [r["step"] for r in rows(run)] == [1, 2, 3]
    assert_same_steps(run, ref, [3])
    assert max_diff(state(run, 3), state(ref, 3)) <= 0.1 * LR


@pytest.mark.slow  # four processes (two launchers, two ranks): ~2 CPU-minutes; the fast test covers the launcher
def test_two_machines_on_loopback(world):
    """`lorakit train ... --gpus 1 --machine-rank I` on two "machines" (two launchers on 127.0.0.1, one process
    each; machine 0's launcher holds the rendezvous store): the run finishes as the single process's."""
    tmp, toml, ref = world
    port = _free_port()
    args = ("train", str(toml), *TWO, "save.name=n2", "distributed.num_machines=2",
            f"distributed.main_process_port={port}", "--gpus", "1")
    machines = [lorakit(*args, "--machine-rank", str(i)) for i in (0, 1)]
    results = [m.communicate(timeout=600) for m in machines]
    for m, (out, err) in zip(machines, results):
        assert m.returncode == 0, err[-3000:]
    assert "ranks 0-0 of 2" in results[0][0] and "ranks 1-1 of 2" in results[1][0]
    run = tmp / "out" / "n2"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert [r["step"] for r in rows(run)] == [1, 2, 3]  # rank 0 alone wrote metrics
    assert sorted(p.name for p in (run / "state").iterdir()) == ["step00000002", "step00000003"]
    assert_same_steps(run, ref, [1, 2, 3])
    assert max_diff(state(run, 3), state(ref, 3)) <= 0.1 * LR


@pytest.mark.slow
def test_a_hung_rank_is_caught_by_the_timeout(world):
    """torchrun/accelerate-style (no lorakit launcher: RANK, WORLD_SIZE, MASTER_ADDR/PORT set by hand): rank 1
    hangs before step 2's gradient exchange; rank 0 stops after distributed.timeout_s naming it."""
    tmp, toml, _ = world
    port = _free_port()
    args = ("train", str(toml), *TWO, "save.name=hang", "distributed.timeout_s=5")
    procs = [lorakit(*args, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port), LORAKIT_TEST_FAULT="1:2:hang") for r in (0, 1)]
    try:
        out, err = procs[0].communicate(timeout=600)
        assert procs[0].returncode == 2
        assert "step 2: the gradient exchange failed on rank 0: rank 1 (last step reached: 1) did not arrive" in err
        assert "distributed.timeout_s = 5 s" in err
        assert procs[1].poll() is None  # still hung: caught by the timeout, not waited on
    finally:
        for p in procs:
            p.kill()
            p.communicate()


@pytest.mark.slow  # ~2 CPU-minutes: its own toy model, reference and two-process run
def test_two_processes_equal_one_with_the_double_batch_flux1(tmp_path):
    toml = write_run_toml(tmp_path, "flux1", tiny_model("flux1", tmp_path / "model"))
    assert main(["train", str(toml), *COMMON, "training.batch_size=2", "save.name=ref"]) == 0
    proc = lorakit("train", str(toml), *TWO, "save.name=d2", "distributed.main_process_port=0", "--gpus", "2")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    ref, run = tmp_path / "out" / "ref", tmp_path / "out" / "d2"
    assert_same_steps(run, ref, [1, 2, 3])
    for step in (2, 3):
        assert max_diff(state(run, step), state(ref, step)) <= 0.1 * LR
