"""`--resume DIR` continues DIR itself: a copied run folder resumes in the copy (the original is left byte for
byte), a moved one where it now lives; damaged run files (a bad byte in metrics.jsonl, an empty run.json, a state
manifest of the wrong shape) and a kill's temp files are repaired with a message; TensorBoard and metrics.jsonl hold
each step once; the run folder's lock refuses a second process naming it; --force-resume with a changed seed or
batch size ends in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorakit.cli import main
from tests.integration.test_crash_safety import assert_same_lora, loss_rows
from tests.integration.test_train_e2e import tiny_model, write_run_toml

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl lock, SIGKILL")
REPO = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tb_steps(folder: Path, tag: str = "loss") -> list[int]:
    """The steps TensorBoard shows for ``tag`` (its reader applies the purge events of resumed runs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"), purge_orphaned_data=True)
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s run lock until killed."""
    code = ("import sys, time; from lorakit.fsutil import FileLock; "
            "FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder / ".lorakit.lock")], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_resume_a_copied_and_a_moved_run_folder(tmp_path, capsys):
    paths = tiny_model("sdxl", tmp_path / "model")
    toml = write_run_toml(tmp_path, "sdxl", paths, name="base")
    assert main(["train", str(toml), "sample.prompts=[]", "training.max_steps=4", "save.every_n_steps=2"]) == 0
    base = tmp_path / "out" / "base"
    assert sorted(p.name for p in (base / "state").iterdir()) == ["step00000002", "step00000004"]

    # ---- a copy, with damaged run files and a kill's temp files, resumes in the copy; the original is untouched
    copy = tmp_path / "elsewhere" / "base-copy"
    shutil.copytree(base, copy)
    lines = (copy / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:5] + b"\xff" + lines[1][6:]  # one bad byte in the row of step 2
    (copy / "metrics.jsonl").write_bytes(b"".join(lines))
    (copy / "run.json").write_text("")
    (copy / "state" / "step00000004" / "manifest.json").write_text('{"format": 1, "files": ["lora.safetensors"]}')
    temps = [copy / ".base-step00000002.safetensors.lk99999999-0123abcd.tmp", copy / "run.json.tmp",
             copy / ".data_report.json.x7q.tmp", copy / "samples" / ".base_000004_00_42.png.lk99999999-89abcdef.tmp"]
    for t in temps:
        t.write_bytes(b"partial")
    (copy / "state" / "step00000006.tmp-99999999").mkdir()
    (copy / "notes.tmp").write_text("the user's own file")
    before = snapshot(base)
    rc, out, err = run_cli(capsys, "train", "--resume", str(copy), "training.max_steps=6")
    assert rc == 0, err[-2000:]
    assert snapshot(base) == before  # nothing of the original was read for writing, pruned or overwritten
    assert f"resumed from {copy / 'state' / 'step00000002'} at step 2" in out
    assert "step00000004: manifest.json is not a lorakit state manifest" in out
    assert "trying the checkpoint before it" in out
    assert f"{copy / 'metrics.jsonl'}: skipped 1 damaged line(s) (line 2)" in out
    assert f"{copy / 'run.json'} is empty or damaged" in out
    assert "removed 5 temporary file(s) an interrupted run left" in out
    assert not any(t.exists() for t in temps) and not (copy / "state" / "step00000006.tmp-99999999").exists()
    assert (copy / "notes.tmp").read_text() == "the user's own file"
    status = json.loads((copy / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 6
    assert [r[0] for r in loss_rows(copy)] == [1, 3, 4, 5, 6]  # step 2's damaged row is gone, no step twice

    # ---- a moved (and renamed) folder resumes where it now lives; its old place is not recreated
    moved = tmp_path / "moved" / "renamed-run"
    moved.parent.mkdir()
    shutil.move(str(base), str(moved))
    holder = hold_lock(moved)  # another process trains in it: refused in one line naming that process
    try:
        rc, out, err = run_cli(capsys, "train", "--resume", str(moved), "training.max_steps=6")
        assert rc == 2 and err.count("\n") == 1, err
        assert f"{moved} is in use: another lorakit process trains in it (pid {holder.pid} on host " \
               f"{socket.gethostname()}, started " in err
    finally:
        holder.kill()
        holder.wait()
    rc, out, err = run_cli(capsys, "train", "--resume", str(moved), "training.max_steps=6")
    assert rc == 0, err[-2000:]
    assert f"resumed from {moved / 'state' / 'step00000004'} at step 4" in out
    assert not base.exists()
    assert [r[0] for r in loss_rows(moved)] == [1, 2, 3, 4, 5, 6]
    assert tb_steps(moved) == [1, 2, 3, 4, 5, 6]  # steps 1-4 of the first process, 5-6 of the resume, once each
    # resumed from step 2 (the copy) or from step 4 (the move): one trajectory, bitwise
    assert_same_lora(copy / "base.safetensors", moved / "base.safetensors")
    assert loss_rows(moved)[2:] == loss_rows(copy)[1:]

    # ---- --force-resume with a changed seed or batch size: one line, before any weight is touched
    for key, now, then in (("training.seed", 8, 7), ("training.batch_size", 1, 2)):
        rc, out, err = run_cli(capsys, "train", "--resume", str(moved), "training.max_steps=7", f"{key}={now}",
                               "--force-resume")
        message = [line for line in err.splitlines() if line.startswith("lorakit:")]
        assert rc == 2 and len(message) == 1 and "Traceback" not in err, err
        assert message[0].startswith("lorakit: error: cannot resume ")
        assert f"with {key} = {now}: it was saved with {key} = {then}" in err and f"Set {key} = {then}" in err


def test_two_new_runs_racing_for_one_folder(tmp_path, capsys):
    """The loser of a race for a new run folder is refused naming the winner, before any file is written; once
    the winner's process is gone (killed: the OS drops its lock) the folder is free."""
    from lorakit.errors import TrainingError
    from lorakit.train.rundir import RunDir

    folder = tmp_path / "out" / "race"
    folder.mkdir(parents=True)
    holder = hold_lock(folder)
    try:
        with pytest.raises(TrainingError) as exc:
            RunDir(folder, "race").create()
        assert f"{folder} is in use: another lorakit process trains in it (pid {holder.pid} on host " in str(exc.value)
        assert sorted(p.name for p in folder.iterdir()) == [".lorakit.lock"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    run = RunDir(folder, "race")
    run.create()  # the kill released the lock
    assert (folder / "state").is_dir()
    with pytest.raises(TrainingError, match="is in use"):  # and this process now holds it against a second one
        RunDir(folder, "race").lock()
    holder_info = json.loads((folder / ".lorakit.lock").read_text())
    assert holder_info["pid"] == os.getpid() and holder_info["host"] == socket.gethostname()
    assert abs(holder_info["started"] - time.time()) < 60
    run.unlock()
    again = RunDir(folder, "race")
    again.lock()  # released: free for the next process
    again.unlock()
