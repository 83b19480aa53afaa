"""fixes8: an extended run keeps the LoRA it delivered; claiming a run folder is atomic across the faces; a mask
edited between a run and its --resume is reported."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from lorakit.errors import ConfigError, TrainingError
from lorakit.train.rundir import CLAIM_ENV, CLAIM_NAME, RunDir, claim, read_claim
from tests.unit.test_ui_jobs import _toml


# ------------------------------------------------------------------ 2. claiming a run folder is atomic


def _race(n: int, call) -> tuple[list, list]:
    """Run ``call(i)`` in ``n`` threads released together; (results, errors)."""
    barrier, wins, errors = threading.Barrier(n), [], []

    def one(i: int) -> None:
        barrier.wait()
        try:
            wins.append(call(i))
        except Exception as exc:  # noqa: BLE001 (collected for the asserts)
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return wins, errors


def test_claims_racing_for_one_run_folder_leave_exactly_one_winner(tmp_path):
    root = tmp_path / "runs with spaces" / "ohwx"
    wins, errors = _race(8, lambda i: claim(root, f"job {i}", f"token{i}") or i)
    assert len(wins) == 1 and len(errors) == 7
    assert read_claim(root)["token"] == f"token{wins[0]}"
    for exc in errors:
        assert isinstance(exc, TrainingError) and "\n" not in str(exc)
        assert str(exc).startswith(f"{root} is already the output folder of ")
        assert "nothing was changed" in str(exc) and str(root / CLAIM_NAME) in str(exc)


def test_the_web_ui_and_the_comfy_nodes_queueing_into_one_folder_at_once_start_one_job(tmp_path):
    """Before: each face checked its own queue and the folder, then queued: both passed and two runs wrote into one
    folder. Now the claim (an exclusive-create marker in the run folder) decides, and a deleted job frees it."""
    from lorakit.ui.jobs import JobStore

    true = shutil.which("true") or "/bin/true"
    ui, comfy = JobStore(tmp_path / "ui home", python=true), JobStore(tmp_path / "comfy home", python=true)
    text = _toml(tmp_path, "ohwx")
    wins, errors = _race(2, lambda i: (ui, comfy)[i].add(text, start=False))
    assert len(wins) == 1 and len(errors) == 1
    winner, (loser_exc,) = wins[0], errors
    assert isinstance(loser_exc, ConfigError) and "\n" not in str(loser_exc)
    run_dir = (tmp_path / "runs" / "ohwx").resolve()
    assert str(loser_exc).startswith(f"save.name: {run_dir} is already the output folder of ")
    loser = comfy if winner.job_dir.is_relative_to(ui.home) else ui
    assert loser.list() == []  # nothing half-added
    assert f"job {winner.id} (ohwx) of the job queue in " in read_claim(run_dir)["owner"]
    # the winner's job is deleted before it ran: the folder is free for the other face
    (ui if loser is comfy else comfy).delete(winner.id)
    assert not run_dir.exists()
    assert loser.add(text, start=False).run_dir == run_dir


def test_a_refused_claim_leaves_nothing_that_blocks_the_corrected_rerun(tmp_path):
    from lorakit.ui.jobs import JobStore

    store = JobStore(tmp_path / "home", python=shutil.which("true") or "/bin/true")
    run_dir = tmp_path / "runs" / "ohwx"
    run_dir.mkdir(parents=True)
    (run_dir / "mine.txt").write_text("user file")
    with pytest.raises(ConfigError, match="already holds a run; nothing was overwritten"):
        store.add(_toml(tmp_path, "ohwx"), start=False)
    assert sorted(p.name for p in run_dir.iterdir()) == ["mine.txt"]  # no claim left behind
    (run_dir / "mine.txt").unlink()
    assert store.add(_toml(tmp_path, "ohwx"), start=False).run_dir == run_dir.resolve()


def test_a_run_started_by_hand_into_a_folder_a_queued_job_claimed_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "runs" / "ohwx"
    claim(root, "job 3 (ohwx) of the job queue in /home/u/.lorakit", "abc")
    monkeypatch.delenv(CLAIM_ENV, raising=False)
    with pytest.raises(TrainingError, match=r"is reserved for job 3 \(ohwx\) of the job queue in /home/u/.lorakit; "
                                            "nothing was changed"):
        RunDir(root, "ohwx").create()
    assert (root / CLAIM_NAME).exists()
    monkeypatch.setenv(CLAIM_ENV, "abc")  # the job's own run: the claim becomes the run
    run = RunDir(root, "ohwx")
    run.create()
    run.unlock()
    assert not (root / CLAIM_NAME).exists() and (root / "state").is_dir()


# ------------------------------------------------------------------ 1. extending a finished run keeps its LoRA


def _lora(path: Path, steps: int, value: float) -> bytes:
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.full((2, 4), value)}, str(path), {"ss_steps": str(steps)})
    return path.read_bytes()


def test_extending_a_finished_run_keeps_the_lora_it_delivered(tmp_path):
    """Before: `--resume DIR training.max_steps=4` wrote the new final LoRA over the one the 2-step run delivered;
    the old one survived only inside state/step00000002."""
    from lorakit.config.load import dump_toml, load_config
    from lorakit.train.resume import accepted, keep_delivered
    from lorakit.ui.runs import lora_files

    run = RunDir(tmp_path / "my runs" / "ohwx", "ohwx")
    run.root.mkdir(parents=True)
    (run.root / "config.toml").write_text(dump_toml(load_config(None, [
        "model.family=sdxl", f"model.checkpoint={tmp_path / 'base.safetensors'}", f"data.dir={tmp_path / 'data'}",
        "save.name=ohwx", "training.max_steps=2"])))
    delivered = _lora(run.lora_path(), 2, 1.0)
    ema = _lora(run.root / "ohwx-ema.safetensors", 2, 0.5)
    lines: list[str] = []
    cfg = load_config(run.root / "config.toml", ["training.max_steps=4"])
    accepted(run, cfg, 2, lines.append)
    kept = run.root / "ohwx.until-step00000002.safetensors"
    assert kept.read_bytes() == delivered and run.lora_path().read_bytes() == delivered
    assert (run.root / "ohwx-ema.until-step00000002.safetensors").read_bytes() == ema
    assert lines[0] == (f"the LoRA this run delivered at step 2 is kept as {kept} (this resume writes "
                        "ohwx.safetensors anew when it finishes)")
    # the extension is interrupted and resumed again: nothing new is copied; a later extension keeps step 4's
    accepted(run, cfg, 3, lines.append)
    assert len(list(run.root.glob("ohwx.until-step*"))) == 1
    four = _lora(run.lora_path(), 4, 2.0)
    accepted(run, load_config(run.root / "config.toml", ["training.max_steps=8"]), 4, lines.append)
    assert (run.root / "ohwx.until-step00000004.safetensors").read_bytes() == four
    assert kept.read_bytes() == delivered
    # a different file under a kept name is never overwritten
    (run.root / "ohwx.until-step00000004.safetensors").write_bytes(b"mine")
    accepted(run, load_config(run.root / "config.toml"), 4, lines.append)  # (max_steps 8 now)
    assert (run.root / "ohwx.until-step00000004-2.safetensors").read_bytes() == four
    assert (run.root / "ohwx.until-step00000004.safetensors").read_bytes() == b"mine"
    names = [p.name for p in lora_files(run.root)]
    assert names[0] == "ohwx.safetensors" and "ohwx.until-step00000002.safetensors" in names
    # a resume that ends where the file's run ended (it stopped after its final save, before run.json said
    # "finished") writes that LoRA again: nothing to keep
    other = RunDir(tmp_path / "other", "ohwx")
    other.root.mkdir()
    _lora(other.lora_path(), 2, 1.0)
    assert keep_delivered(other, load_config(run.root / "config.toml", ["training.max_steps=2"]), 2, lines.append) \
        == [] and sorted(p.name for p in other.root.iterdir()) == ["ohwx.safetensors"]


def test_package_step_of_an_extended_run_finds_the_lora_it_delivered_there(tmp_path):
    """`lorakit package DIR --step 2` after the 2-step run was extended to 4: the kept until-step file is that
    step's LoRA (its checkpoint was pruned)."""
    import json

    from lorakit.config.load import dump_toml, load_config
    from lorakit.publish import _run_files

    run = tmp_path / "ohwx"
    run.mkdir()
    (run / "config.toml").write_text(dump_toml(load_config(None, [
        "model.family=sdxl", f"model.checkpoint={tmp_path / 'base.safetensors'}", f"data.dir={tmp_path / 'data'}",
        "save.name=ohwx", "training.max_steps=4"])))
    (run / "run.json").write_text(json.dumps({"status": "finished", "step": 4}))
    _lora(run / "ohwx.safetensors", 4, 2.0)
    _lora(run / "ohwx.until-step00000002.safetensors", 2, 1.0)
    assert _run_files(run, 2, log=lambda *_: None)[1] == run / "ohwx.until-step00000002.safetensors"
    assert _run_files(run, 4, log=lambda *_: None)[1] == run / "ohwx.safetensors"


# ------------------------------------------------------------------ 3. an edited mask is reported at --resume


def _masked_set(tmp_path: Path):
    import numpy as np
    from PIL import Image

    folder, masks = tmp_path / "data" / "10_zkx shape", tmp_path / "masks"
    folder.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("001", "002"):
        Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA").save(folder / f"{stem}.png")
        Image.new("L", (64, 64), 255).save(masks / f"{stem}.png")
    return folder, masks


def _fingerprint(tmp_path: Path, *overrides: str) -> dict:
    from lorakit.config.load import load_config
    from lorakit.data.scan import scan_dataset
    from lorakit.train.resume import run_fingerprint

    cfg = load_config(None, ["model.family=sdxl", f"model.checkpoint={tmp_path / 'base.safetensors'}",
                             f"data.dir={tmp_path / 'data'}", "data.resolution=64", "data.min_bucket_reso=64",
                             *overrides])
    return run_fingerprint(cfg, scan_dataset(cfg.data, divisibility=8))


def test_a_mask_edited_between_a_run_and_its_resume_is_reported(tmp_path):
    """Before: a data.mask_dir mask edited between a run and --resume went unnoticed (the fingerprint held the
    images' bytes and captions, not the masks'), so the run went on training on other masks than its first steps."""
    from PIL import Image

    from lorakit.train.resume import _changed, settings_changed

    folder, masks = _masked_set(tmp_path)
    saved = _fingerprint(tmp_path, f"data.mask_dir={masks}")
    assert _changed(saved, _fingerprint(tmp_path, f"data.mask_dir={masks}")) == []
    edited = Image.new("L", (64, 64), 255)
    edited.paste(0, (0, 0, 32, 64))  # the left half no longer trained
    edited.save(masks / "002.png")
    changed = _changed(saved, _fingerprint(tmp_path, f"data.mask_dir={masks}"))
    assert len(changed) == 1 and changed[0].startswith("mask_hash: changed (")
    assert "the run's settings changed (mask_hash: changed (" in str(settings_changed(tmp_path / "state", changed))
    # a state written before fixes8 has no mask_hash: its resume is not refused for that
    old = {k: v for k, v in saved.items() if k != "mask_hash"}
    assert _changed(old, _fingerprint(tmp_path, f"data.mask_dir={masks}")) == []
    # with data.alpha_mask the mask is the image's alpha channel: an edit changes the image's bytes, reported too
    alpha = _fingerprint(tmp_path, "data.alpha_mask=true")
    with Image.open(folder / "001.png") as im:
        im = im.copy()
    im.putalpha(Image.new("L", (64, 64), 200))
    im.save(folder / "001.png")
    assert [c.split(":")[0] for c in _changed(alpha, _fingerprint(tmp_path, "data.alpha_mask=true"))] == \
        ["dataset_hash"]


def test_preview_prompts_are_counted_and_checked_at_the_scan(tmp_path):
    """The disk check at the scan (before the model loads) parses every preview prompt, inline and from
    sample.prompts_file: a wrong flag stops the run there, and the file's prompts count toward the samples' space."""
    from lorakit.config.load import load_config
    from lorakit.train.health import preview_count

    def cfg(**sample):
        return load_config(None, data={"model": {"family": "sdxl", "checkpoint": str(tmp_path / "m.safetensors")},
                                       "data": {"dir": str(tmp_path)}, "sample": sample})

    listed = tmp_path / "prompts.txt"
    listed.write_text("a zkx --d 3\na red zkx --w 512\n", encoding="utf-8")
    assert preview_count(cfg(prompts=[])) == 0
    assert preview_count(cfg(prompts=["a zkx"], prompts_file=str(listed))) == 3
    with pytest.raises(ConfigError, match=r"sample\.prompts\[0\]: --seed is not a prompt flag.*write --d instead"):
        preview_count(cfg(prompts=["a zkx --seed 3"]))
