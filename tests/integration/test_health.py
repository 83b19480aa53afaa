"""Health of a run, end to end on the tiny SDXL model (in-process CLI): NaN stop/skip, broken previews,
the stall watchdog's phases, the no-effect LoRA check, the export key check, out of memory, disk space.

Failures are injected by patching the adapter or the loop (a NaN prediction, a black sample, an OOM step, a
full disk); each test asserts the exact files, messages and numbers that must come out.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image
from safetensors.torch import load_file

import lorakit.train.loop as loop
import lorakit.train.steps as steps
from lorakit.cli import main
from lorakit.models.registry import get_family
from lorakit.train import checkpoint, health
from lorakit.train.rundir import RunDir
from tests.integration.test_train_e2e import tiny_model, write_run_toml

NO_SAMPLES = "sample.prompts=[]"
Adapter = get_family("sdxl").Adapter


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("health")
    return tmp, tiny_model("sdxl", tmp / "model")


def run_cli(world, name: str, *overrides: str, capsys) -> tuple[int, Path, str, str]:
    tmp, paths = world
    toml = write_run_toml(tmp, "sdxl", paths, name=name)
    capsys.readouterr()
    rc = main(["train", str(toml), *overrides])
    out, err = capsys.readouterr()
    return rc, tmp / "out" / name, out, err


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def status(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def nan_on_calls(monkeypatch, calls: set[int]) -> None:
    """Make the adapter's prediction NaN on the given (1-based) calls."""
    real, n = Adapter.predict, {"i": 0}

    def predict(self, noised, batch):
        n["i"] += 1
        out = real(self, noised, batch)
        return out * float("nan") if n["i"] in calls else out

    monkeypatch.setattr(Adapter, "predict", predict)


def assert_checkpoint_ok(run: Path, name: str, step: int) -> None:
    lora = load_file(run / f"{name}-step{step:08d}.safetensors")
    assert lora and all(torch.isfinite(t.float()).all() for t in lora.values())
    assert RunDir(run, name).latest_state() == run / "state" / f"step{step:08d}"
    assert checkpoint.load_state(run / "state" / f"step{step:08d}")["step"] == step


def fused_adamw_on_cpu(monkeypatch) -> None:
    """The CUDA default (a fused torch AdamW) on the CPU: the loop then lets the optimizer skip a non-finite step
    itself and reads each step's numbers one step late (health.skip_on_device)."""
    def build(groups, name, lr, weight_decay, betas, eps, *, fused=None):
        assert name == "adamw"
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=True)

    monkeypatch.setattr(loop.optim, "build_optimizer", build)


DEFERRED = pytest.mark.parametrize("deferred", [False, True], ids=["host-decides", "fused-adamw-skips-on-device"])


@DEFERRED
def test_nan_loss_stops_at_once(world, monkeypatch, capsys, deferred):
    """With a fused AdamW the NaN step's update is skipped on the device and the loop learns of it a step later:
    the same message, metrics, status and checkpoints as when the host decides before stepping."""
    nan_on_calls(monkeypatch, {4})
    if deferred:
        fused_adamw_on_cpu(monkeypatch)
    name = "nanstop-fused" if deferred else "nanstop"
    rc, run, out, err = run_cli(world, name, NO_SAMPLES, capsys=capsys)
    assert rc == 2
    msg = last_line(err)
    assert msg.startswith("lorakit: error: step 4: loss nan / gradient norm nan is not finite; stopped.")
    assert f"Last good checkpoint: {run / f'{name}-step00000003.safetensors'}." in msg
    assert all(cause in msg for cause in health.NAN_CAUSES)
    assert [r["step"] for r in rows(run)] == [1, 2, 3]  # the NaN step never reached the metrics as trained
    assert status(run)["status"] == "failed" and status(run)["step"] == 4 and "step 4" in status(run)["error"]
    assert_checkpoint_ok(run, name, 3)
    assert not (run / f"{name}.safetensors").exists()


@DEFERRED
def test_nan_skip_policy_skips_counts_and_continues(world, monkeypatch, capsys, deferred):
    nan_on_calls(monkeypatch, {2, 5})
    if deferred:
        fused_adamw_on_cpu(monkeypatch)
    name = "nanskip-fused" if deferred else "nanskip"
    rc, run, out, err = run_cli(world, name, NO_SAMPLES, "training.nan_policy=\"skip\"", capsys=capsys)
    assert rc == 0, err
    assert "warning: step 2: non-finite loss/gradient, step skipped (1 so far)" in out
    assert "warning: step 5: non-finite loss/gradient, step skipped (2 so far)" in out
    st = status(run)
    assert st["status"] == "finished" and st["skipped_steps"] == 2 and st["step"] == 6
    skipped = [r["step"] for r in rows(run) if r.get("skipped_step")]
    assert skipped == [2, 5]
    losses = {r["step"]: r["loss"] for r in rows(run) if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert [s for s, v in losses.items() if v is None] == [2, 5]  # non-finite is written as JSON null
    lora = load_file(run / f"{name}.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in lora.values())
    assert any(t.abs().max() > 0 for k, t in lora.items() if "lora_up" in k)  # the other steps trained


def test_numbers_read_a_step_late_match_the_host_decided_run(world, monkeypatch, capsys):
    """The same run with the loop reading each step's numbers at once (foreach AdamW) and a step late (fused AdamW
    skipping on the device): every metrics row carries its own step's loss, gradient norm, learning rate and
    epoch (a cosine schedule: every row has another rate)."""
    extra = (NO_SAMPLES, "optimizer.scheduler=\"cosine\"")
    rc, host, _, err = run_cli(world, "order-host", *extra, capsys=capsys)
    assert rc == 0, err
    fused_adamw_on_cpu(monkeypatch)
    rc, late, _, err = run_cli(world, "order-late", *extra, capsys=capsys)
    assert rc == 0, err
    a, b = [r for r in rows(host) if "loss" in r], [r for r in rows(late) if "loss" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert len({r["lr"] for r in a}) > 2  # the check below can tell rows apart
    for x, y in zip(a, b):
        assert x["lr"] == y["lr"] and x["epoch"] == y["epoch"]
        assert math.isclose(x["loss"], y["loss"], rel_tol=1e-4) and math.isclose(x["grad_norm"], y["grad_norm"],
                                                                                  rel_tol=1e-3)


def test_black_preview_flagged_and_watchdog_phases(world, monkeypatch, capsys):
    """Black previews are flagged (log + metrics); the watchdog follows every phase and reports a stall at
    caching with that phase; a normal run's LoRA changes the output and its keys all map."""
    black = Image.new("RGB", (64, 64), (0, 0, 0))
    monkeypatch.setattr(Adapter, "sample", lambda self, prompt, generator: black.copy())
    phases: list[str] = []
    real_beat = health.StallWatchdog.beat

    def beat(self, phase):
        phases.append(phase)
        real_beat(self, phase)

    monkeypatch.setattr(health.StallWatchdog, "beat", beat)
    real_encode = Adapter.encode_images

    def slow_encode(self, pixels):  # a stall while caching latents
        import time

        time.sleep(1.0)
        return real_encode(self, pixels)

    monkeypatch.setattr(Adapter, "encode_images", slow_encode)
    rc, run, out, err = run_cli(world, "black", "training.max_steps=3", "training.stall_timeout=0.4",
                                "data.cache_dir=\"" + str(world[0] / "cache-black") + "\"", capsys=capsys)
    assert rc == 0, err
    assert phases == ["scanning the dataset", "loading the base model", "caching latents",
                      "caching text-encoder outputs", "sampling at step 0", "training step 1", "training step 2",
                      "training step 3", "saving the final LoRA (step 3)", "sampling at step 3",
                      "checking the trained LoRA"]
    stalls = [x for x in out.splitlines() if "no progress for" in x]
    assert any(x.startswith("lorakit: no progress for ") and "while caching latents" in x for x in stalls), out
    flagged = [r for r in rows(run) if "sample_problem" in r]
    assert [(r["step"], r["sample_problem"]) for r in flagged] == [(0, "black"), (3, "black")]
    assert flagged[0]["sample"].endswith(".png") and (run / "samples" / flagged[0]["sample"]).is_file()
    assert sum("looks black" in x for x in out.splitlines()) == 2
    st = status(run)
    assert st["lora_effect"] > 0 and st["export_problems"] == []


def test_no_effect_lora_warned_and_export_check_can_fail(world, monkeypatch, capsys):
    """No optimizer step ever happens: the LoRA's up matrices stay zero, lora_effect == 0 and a warning."""
    monkeypatch.setattr(steps, "optimizer_step", lambda optimizer, scaler: optimizer.zero_grad(set_to_none=True))
    seen: list[list[str]] = []
    real_verify = loop.verify_export

    def verify(path, adapter, lora, fmt):
        problems = real_verify(path, adapter, lora, fmt)
        seen.append(problems)
        tensors, meta = load_file(path), safetensors.safe_open(str(path), "pt").metadata()
        dropped = sorted(tensors)[0]
        del tensors[dropped]
        broken = path.with_name("broken.safetensors")
        safetensors.torch.save_file(tensors, str(broken), metadata=meta)
        seen.append(real_verify(broken, adapter, lora, fmt))
        return problems

    monkeypatch.setattr(loop, "verify_export", verify)
    rc, run, out, err = run_cli(world, "noeffect", NO_SAMPLES, "training.max_steps=2", capsys=capsys)
    assert rc == 0, err
    st = status(run)
    assert st["lora_effect"] == 0.0 and st["export_problems"] == []
    assert "warning: the trained LoRA does not change the model's output at all" in out
    assert seen[0] == [] and len(seen[1]) == 1 and seen[1][0].startswith("1 expected keys missing")


@DEFERRED
def test_out_of_memory_reports_settings_and_keeps_checkpoint(world, monkeypatch, capsys, deferred):
    real, n = steps.train_step, {"i": 0}
    if deferred:  # step 4's numbers are still unread when step 5 runs out of memory: its row is written anyway
        fused_adamw_on_cpu(monkeypatch)

    def oom_step(*a, **k):
        n["i"] += 1
        if n["i"] == 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(steps, "train_step", oom_step)
    name = "oom-fused" if deferred else "oom"
    rc, run, out, err = run_cli(world, name, NO_SAMPLES, capsys=capsys)
    assert rc == 2
    msg = last_line(err)
    assert msg.startswith("lorakit: error: out of GPU memory at step 5 (batch 2, resolution 64).")
    for setting in ("memory.vram_gb", "training.batch_size = 1", "memory.gradient_checkpointing = true", "memory.blocks_to_swap",
                    "memory.fp8_base = true", "data.resolution"):
        assert setting in msg
    assert msg.endswith(f"Last checkpoint kept: {run / f'{name}-step00000003.safetensors'}.")
    assert status(run)["status"] == "failed"
    assert_checkpoint_ok(run, name, 3)
    assert [r["step"] for r in rows(run) if "loss" in r] == [1, 2, 3, 4]


def test_disk_estimate_stops_before_any_work(world, monkeypatch, capsys):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 10**6, 10**6))
    cache = world[0] / "cache-disk"
    rc, run, out, err = run_cli(world, "disk", NO_SAMPLES, f"data.cache_dir=\"{cache}\"", capsys=capsys)
    assert rc == 2
    msg = last_line(err)
    assert msg.startswith(f"lorakit: error: not enough disk space in {run}: about ")
    assert "GiB needed (2 checkpoints, samples, caches), 0.00 GiB free" in msg  # one disk: both shares
    assert not cache.exists()  # stopped before the model was loaded or anything was cached


def test_disk_full_during_save_keeps_previous_checkpoint(world, monkeypatch, capsys):
    real = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if "step00000006" in str(filename):
            with open(filename, "wb") as fh:  # a partial file, as a real full disk leaves
                fh.write(b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    rc, run, out, err = run_cli(world, "full", NO_SAMPLES, "training.max_steps=7", capsys=capsys)
    assert rc == 2
    msg = last_line(err)
    assert msg == (f"lorakit: error: disk full while writing {run / 'full-step00000006.safetensors'} (step 6): "
                   f"nothing was overwritten; the last complete checkpoint is {run / 'state' / 'step00000003'}. "
                   f"Free some space (or lower save.keep_last) and continue with `lorakit train --resume {run}`.")
    assert sorted(p.name for p in run.glob("*.safetensors*")) == ["full-step00000003.safetensors"]
    assert not list(run.glob(".*.tmp"))
    assert_checkpoint_ok(run, "full", 3)
    assert status(run)["status"] == "failed"


def test_disk_full_recognised_in_library_errors():
    assert health.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert health.is_disk_full(RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                            "message: \"No space left on device\" })"))
    assert not health.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not health.is_disk_full(RuntimeError("shape mismatch"))
