"""A full disk (ENOSPC) or a file-size limit (EFBIG), met at start, while caching or while saving, ends a real
`lorakit train` with one line and intact earlier files; the disk check asks the cache's disk too; NaN weights
in the base model are named, not blamed on the learning rate."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit import fsutil
from lorakit.cli import main
from lorakit.config.load import load_config
from lorakit.train import health
from lorakit.train.rundir import RunDir
from tests.integration.test_train_e2e import tiny_model, write_run_toml

FAST = ("sample.prompts=[]", "training.max_steps=4", "save.every_n_steps=2", "log.tensorboard=false",
        "log.progress=false")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("disk")
    paths = tiny_model("sdxl", tmp / "model")
    return tmp, paths, write_run_toml(tmp, "sdxl", paths)


def _full_disk(monkeypatch, when, code=errno.ENOSPC):
    """Every atomic write (LoRA, state, run.json, caches, config) fails with ``code`` once ``when()`` is true."""
    real = fsutil._create_temp

    def create(path):
        if when(path):
            raise OSError(code, os.strerror(code), str(path))
        return real(path)
    monkeypatch.setattr(fsutil, "_create_temp", create)


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("lorakit")]


def test_full_disk_during_a_save_keeps_the_clean_message_and_the_last_checkpoint(toy, monkeypatch, capsys):
    tmp, _, toml = toy
    run = tmp / "out" / "save"
    status = run / "run.json"

    def saved_step_2(path):  # the step-2 save and its run.json update land; then the disk is full (run.json too)
        return status.exists() and "step00000002" in status.read_text()
    _full_disk(monkeypatch, saved_step_2)
    rc = main(["train", str(toml), "save.name=save", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = _lines(err)
    assert line.startswith(f"lorakit: error: disk full while writing {run}"), line  # loss.png or a later save
    assert f"`lorakit train --resume {run}`" in line, line
    assert load_file(str(run / "save-step00000002.safetensors"))  # the previous checkpoint is intact
    assert not list(run.rglob("*.tmp")) and not (run / "save.safetensors").exists()


def test_efbig_during_a_save_is_the_disk_message(toy, monkeypatch, capsys):
    tmp, _, toml = toy
    run = tmp / "out" / "big"
    _full_disk(monkeypatch, lambda p: p.name.startswith("big") and p.suffix == ".safetensors", errno.EFBIG)
    rc = main(["train", str(toml), "save.name=big", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = _lines(err)
    assert "file too large for this file system or the file-size limit (ulimit -f) while writing" in line, line
    assert not (run / "big.safetensors").exists() and not list(run.rglob("*.tmp"))


def test_full_disk_at_start_leaves_nothing_that_blocks_the_rerun(toy, monkeypatch, capsys):
    tmp, _, toml = toy
    run = tmp / "out" / "start"
    _full_disk(monkeypatch, lambda p: True)
    rc = main(["train", str(toml), "save.name=start", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = _lines(err)
    assert line.startswith("lorakit: error: disk full while writing") and "run the same command again" in line
    assert not run.exists()
    monkeypatch.undo()
    RunDir(run, "start").create()  # the corrected command's first act succeeds: nothing blocks it


def test_full_disk_while_making_the_run_folder(toy, monkeypatch, capsys):
    tmp, _, toml = toy
    run = tmp / "out" / "mk"
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if self.name == "state":  # the run folder and samples/ are made, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc = main(["train", str(toml), "save.name=mk", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and _lines(err)[0].startswith("lorakit: error: disk full"), err
    assert not run.exists()


def test_full_disk_while_caching_is_one_line(toy, monkeypatch, capsys):
    tmp, _, toml = toy
    cache = tmp / "cache-full"
    _full_disk(monkeypatch, lambda p: cache in p.parents)
    rc = main(["train", str(toml), "save.name=cachefull", f"data.cache_dir={cache}", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = _lines(err)
    assert line.startswith(f"lorakit: error: disk full while writing the cache entry {cache}"), line
    assert not (tmp / "out" / "cachefull").exists()  # a failed start: the run folder goes


def test_disk_check_asks_the_cache_disk_too(toy, monkeypatch):
    tmp, _, toml = toy
    cfg = load_config(toml, ["save.name=chk", f"data.cache_dir={tmp / 'othercache'}"])
    from lorakit.data.scan import scan_dataset
    from lorakit.models.registry import get_family

    spec = get_family("sdxl").Adapter(cfg).spec
    ds = scan_dataset(cfg.data, divisibility=spec.bucket_divisibility)
    run = RunDir(tmp / "out" / "chk", "chk")
    real_needs, real_usage = health.disk_needs, shutil.disk_usage
    other = tmp / "othercache"  # stands for a second disk: its own device id, and full
    other.mkdir(exist_ok=True)
    monkeypatch.setattr(health, "disk_needs", lambda needs: real_needs(needs, dev_of=lambda q: q == other))
    monkeypatch.setattr(shutil, "disk_usage", lambda q: real_usage(q)._replace(free=0) if Path(q) == other
                        else real_usage(q))
    health.check_disk(load_config(toml, ["save.name=chk"]), run, ds, spec)  # caches beside the run: room
    with pytest.raises(Exception) as e:
        health.check_disk(cfg, run, ds, spec)
    assert str(e.value).startswith(f"not enough disk space in {other}: ") and "(caches)" in str(e.value)


def test_disk_needs_merges_one_disk_and_splits_two(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b" / "not" / "yet"
    (tmp_path / "a").mkdir()
    same = health.disk_needs([(a, 10, "run"), (b, 5, "caches")], dev_of=lambda q: 1)
    assert same == [(a, 15, "run, caches")]
    two = health.disk_needs([(a, 10, "run"), (b, 5, "caches")], dev_of=lambda q: q.name)
    assert two == [(a, 10, "run"), (tmp_path, 5, "caches")]


def test_record_failure_never_hides_the_first_error(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "r", "r")
    run.root.mkdir()
    _full_disk(monkeypatch, lambda p: True, errno.EFBIG)
    health.record_failure(run, status="failed", error="x")  # swallowed: the caller raises its own message
    monkeypatch.undo()
    (run.root / "run.json").write_text("{not json")
    health.record_failure(run, status="failed", error="x")


def test_nan_in_the_base_model_weights_is_named(toy, tmp_path, capsys):
    tmp, paths, toml = toy
    ckpt = tmp_path / "nan_sdxl.safetensors"
    tensors = load_file(str(paths["checkpoint"]))
    name = next(k for k in sorted(tensors) if k.startswith("model.diffusion_model.out.") and k.endswith("weight"))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(ckpt))
    rc = main(["train", str(toml), "save.name=nanw", f"model.checkpoint={ckpt}", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = _lines(err)
    assert "the base model's weights are not" in line and f"loaded from {ckpt}" in line, line
    # the first NaN weight: SGM's out.0 (the U-Net's last GroupNorm) is diffusers' conv_norm_out
    assert name == "model.diffusion_model.out.0.weight" and "unet tensor 'conv_norm_out.weight'" in line, line
    assert "the learning rate is not the cause" in line, line
    assert torch.isnan(tensors[name]).any()
