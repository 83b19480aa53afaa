"""Validation loss on tiny SDXL runs: the same numbers in two runs and across an interrupt and resume, the best step's
LoRA kept (save.keep_best) and equal to an independent argmin over metrics.jsonl, a validation folder that leaves
training untouched (the LoRA is bitwise the LoRA of a run without validation), and loss.png with the new series."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from lorakit.cli import main
from lorakit.lora.io import load_lora_file
from lorakit.train import resume as resume_mod

from tests.integration.test_train_e2e import tiny_model, write_run_toml

COMMON = ["training.max_steps=3", "save.every_n_steps=2", "sample.prompts=[]", "log.progress=false",
          "log.tensorboard=false"]
SPLIT = ["data.validation_split=0.25", "validation.every_n_steps=1", "save.keep_best=true"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("val")
    paths = tiny_model("sdxl", tmp / "model")
    toml = write_run_toml(tmp, "sdxl", paths)
    return tmp, toml


def rows(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def val_rows(run) -> list[tuple]:
    return [(r["step"], r["val_loss"], tuple(r["val_loss_by_timestep"])) for r in rows(run) if "val_loss" in r]


@pytest.fixture(scope="module")
def two_runs(world):
    """Run a straight through; run b interrupted right after its step-2 checkpoint, then resumed."""
    tmp, toml = world
    assert main(["train", str(toml), *COMMON, *SPLIT, "save.name=a"]) == 0
    real = resume_mod.save_checkpoint

    def save_then_stop(*args, **kw):
        path = real(*args, **kw)
        if args[9] == 2 and not kw.get("final"):  # the step argument
            raise KeyboardInterrupt
        return path

    mp = pytest.MonkeyPatch()
    mp.setattr(resume_mod, "save_checkpoint", save_then_stop)
    try:
        assert main(["train", str(toml), *COMMON, *SPLIT, "save.name=b"]) == 130
    finally:
        mp.undo()
    run_b = tmp / "out" / "b"
    assert json.loads((run_b / "run.json").read_text())["status"] == "interrupted"
    assert [r[0] for r in val_rows(run_b)] == [0, 1, 2]
    assert main(["train", "--resume", str(run_b)]) == 0
    return tmp / "out" / "a", run_b


def test_validation_loss_is_bitwise_the_same_in_two_runs_and_across_a_resume(two_runs):
    a, b = two_runs
    va, vb = val_rows(a), val_rows(b)
    assert [r[0] for r in va] == [0, 1, 2, 3]       # before training, every step (validation.every_n_steps=1)
    assert va == vb                                      # every number, bit for bit (JSON floats round-trip)
    assert len(va[0][2]) == 4                            # validation.timesteps default
    assert all(math.isfinite(v) for _, v, _ in va) and va[0][1] != va[-1][1]  # it measures the LoRA
    ta = [(r["step"], r["loss"]) for r in rows(a) if "loss" in r]
    assert ta == [(r["step"], r["loss"]) for r in rows(b) if "loss" in r]
    status = json.loads((a / "run.json").read_text())
    assert status["best_step"] == min(((v, s) for s, v, _ in va if s >= 1))[1]


def test_keep_best_keeps_the_argmin_step(two_runs):
    for run in two_runs:
        vals = {r["step"]: r["val_loss"] for r in rows(run) if "val_loss" in r and r["step"] >= 1}
        best = min(sorted(vals), key=lambda s: vals[s])          # independent argmin (earliest on a tie)
        best_file = run / f"{run.name}-best.safetensors"
        tensors, meta = load_lora_file(best_file)
        assert meta["lorakit_best_step"] == str(best) and meta["ss_steps"] == str(best)
        assert float(meta["lorakit_val_loss"]) == vals[best]
        same_step = run / (f"{run.name}.safetensors" if best == 3 else f"{run.name}-step{best:08d}.safetensors")
        if same_step.exists():                                    # the LoRA of that step, exactly
            other, _ = load_lora_file(same_step)
            assert other.keys() == tensors.keys() and all(torch.equal(other[k], tensors[k]) for k in tensors)
        status = json.loads((run / "run.json").read_text())
        assert status["best_step"] == best and status["best_lora"] == str(best_file)
    # keep_last never prunes it, and loss.png was drawn (matplotlib) with the validation series
    assert Image.open(two_runs[0] / "loss.png").size == (640, 360)


@pytest.mark.slow  # two more runs; tests/unit/test_validation_split.py checks the folder's scan and refusals fast
def test_validation_dir_leaves_training_untouched(world):
    tmp, toml = world
    vdir = tmp / "valdata" / "1_zkx shape"
    vdir.mkdir(parents=True)
    from lorakit.toy.world import write_demo_dataset

    write_demo_dataset(tmp / "other", n=6, repeats=1)
    src = sorted((tmp / "other").rglob("*.png"))[-1]              # an image that is not in the training set
    shutil.copy(src, vdir / "v.png")
    shutil.copy(src.with_suffix(".txt"), vdir / "v.txt")
    assert main(["train", str(toml), *COMMON, "training.max_steps=2", f"data.validation_dir={tmp / 'valdata'}",
                 "save.name=withval"]) == 0
    assert main(["train", str(toml), *COMMON, "training.max_steps=2", "save.name=noval"]) == 0
    ta, _ = load_lora_file(tmp / "out" / "withval" / "withval.safetensors")
    tb, _ = load_lora_file(tmp / "out" / "noval" / "noval.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert [r[0] for r in val_rows(tmp / "out" / "withval")] == [0, 2]   # before, at the end (save point = end)
