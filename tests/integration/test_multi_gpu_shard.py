"""distributed.shard = "base" and distributed.overlap in whole runs: gloo processes on the CPU (docs/multi-gpu.md).

Slow (several two-process runs of a toy model, minutes on a 2-core machine); the fast variant of the same equalities
is tests/unit/test_sharding_parts.py (one step of a block model, sharded and overlapped, on two gloo processes).

Tolerances: a sharded run against one process with the doubled batch, as tests/integration/test_multi_gpu.py (loss
and gradient norm at rel 1e-5, LoRA weights at 0.1·lr: the two sum the same numbers in another order). A sharded run
killed and resumed against the same sharded run uninterrupted, and overlap on against overlap off: bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.cli import main
from tests.integration.test_multi_gpu import LR, assert_same_steps, lorakit, max_diff, rows, state
from tests.integration.test_train_e2e import tiny_model, write_run_toml

pytestmark = pytest.mark.slow

COMMON = ("training.max_steps=3", "save.every_n_steps=2", "log.progress=false", "log.tensorboard=false",
          "distributed.backend=gloo", "sample.every_n_steps=2", "sample.at_start=true", "data.validation_split=0.25",
          "validation.every_n_steps=2")
TWO = (*COMMON, "training.batch_size=1", "distributed.main_process_port=0")


def _two(toml, name: str, *extra: str, **env: str):
    proc = lorakit("train", str(toml), *TWO, f"save.name={name}", *extra, "--gpus", "2", **env)
    out, err = proc.communicate(timeout=900)
    return proc.returncode, out, err


def _bitwise(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_sharded_flux1_run_equals_one_process_draws_previews_and_resumes_bit_for_bit(tmp_path):
    toml = write_run_toml(tmp_path, "flux1", tiny_model("flux1", tmp_path / "model"))
    assert main(["train", str(toml), *COMMON, "training.batch_size=2", "save.name=ref"]) == 0
    ref, run = tmp_path / "out" / "ref", tmp_path / "out" / "sh"
    code, out, err = _two(toml, "sh", "distributed.shard=base")
    assert code == 0, err[-3000:]
    assert "sharded base: 4 blocks and the rest of the FluxTransformer2DModel over 2 processes" in out
    assert_same_steps(run, ref, [1, 2, 3])
    for step in (2, 3):
        assert max_diff(state(run, step), state(ref, step)) <= 0.1 * LR
    # every forward outside the steps ran on both ranks (else a hang): previews at 0, 2 and after, the validation
    # loss at 0, 2 and 3 (equal to the single process's), the LoRA check
    assert sorted(p.name for p in (run / "samples").glob("sh_*.png")) == [
        "sh_after_00_1.png", "sh_before_00_1.png", "sh_step00000002_00_1.png"]
    val = {r["step"]: r["val_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if "val_loss" in r}
    val_ref = {r["step"]: r["val_loss"] for r in map(json.loads, (ref / "metrics.jsonl").read_text().splitlines())
               if "val_loss" in r}
    assert val.keys() == val_ref.keys() == {0, 2, 3}
    assert all(val[s] == pytest.approx(val_ref[s], rel=1e-5) for s in val)
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["lora_effect"] > 0

    # killed at step 3 (rank 1 dies at its gradient exchange), resumed sharded: the same LoRA bit for bit
    code, out, err = _two(toml, "k", "distributed.shard=base", LORAKIT_TEST_FAULT="1:3:exit")
    assert code == 1 and "lorakit: rank 1 exited with code 17, its last step reached: 2" in out
    killed = tmp_path / "out" / "k"
    assert sorted(p.name for p in (killed / "state").iterdir()) == ["step00000002"]
    proc = lorakit("train", "--resume", str(killed), "--gpus", "2")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert [r["step"] for r in rows(killed)] == [1, 2, 3]
    assert _bitwise(state(killed, 3), state(run, 3))
    assert _bitwise(state(killed, 2), state(run, 2))


def test_overlapped_gradient_exchange_equals_the_exchange_after_backward(tmp_path):
    """Toy SDXL, two processes: the LoRA of distributed.overlap = true (default) equals that of false bit for bit
    (each gradient element is the same sum of the same two numbers, only grouped in other buffers)."""
    toml = write_run_toml(tmp_path, "sdxl", tiny_model("sdxl", tmp_path / "model"))
    on = _two(toml, "on", "sample.prompts=[]")
    off = _two(toml, "off", "sample.prompts=[]", "distributed.overlap=false")
    assert on[0] == 0 and off[0] == 0, (on[2] + off[2])[-3000:]
    a, b = tmp_path / "out" / "on", tmp_path / "out" / "off"
    assert [r["loss"] for r in rows(a)] == [r["loss"] for r in rows(b)]
    for step in (2, 3):
        assert _bitwise(state(a, step), state(b, step))


def test_a_sharded_flux2_run_equals_one_process(tmp_path):
    """The toy FLUX.2 (its double and single blocks sharded): steps, validation losses and LoRA as one process with
    the doubled batch (measured on a 2-core CPU: losses equal to 1e-7, LoRA within 5.2e-6 = 0.005·lr)."""
    toml = write_run_toml(tmp_path, "flux2", tiny_model("flux2", tmp_path / "model"))
    assert main(["train", str(toml), *COMMON, "training.batch_size=2", "save.name=ref"]) == 0
    code, out, err = _two(toml, "sh", "distributed.shard=base")
    assert code == 0, err[-3000:]
    assert "sharded base:" in out
    ref, run = tmp_path / "out" / "ref", tmp_path / "out" / "sh"
    assert_same_steps(run, ref, [1, 2, 3])
    for step in (2, 3):
        assert max_diff(state(run, step), state(ref, step)) <= 0.1 * LR
