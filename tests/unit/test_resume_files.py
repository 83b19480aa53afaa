"""The run folder's own files when damaged or left half-written by a kill: metrics.jsonl with a bad line, an empty or
invalid run.json, a state manifest of the wrong shape, an unreadable plan.json, a kill's temp files; TensorBoard and
metrics.jsonl hold each step once after a resume; the run folder's lock; previews and checks leave the training random
streams and the LoRA's dropout as they found them."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lorakit.fsutil import FileLock, LockHeld
from lorakit.train import checkpoint, resume
from lorakit.train.metrics import MetricsWriter, plot_loss, read_metrics, read_metrics_checked
from lorakit.train.rundir import RunDir


def rows(n: int) -> list[dict]:
    return [{"step": s, "loss": 1.0 / s} for s in range(1, n + 1)]


def write_rows(path, data: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))


# ------------------------------------------------------------------------------------------- metrics.jsonl


def test_metrics_bad_byte_and_odd_lines_are_skipped_and_reported(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, rows(6))
    raw = path.read_bytes().splitlines(keepends=True)
    raw[1] = raw[1][:3] + b"\xfe" + raw[1][4:]       # a bad byte (not UTF-8) in step 2's row
    raw[3] = b"[4, 0.25]\n"                           # valid JSON, not an object
    path.write_bytes(b"".join(raw) + b'{"step": 7, "lo')  # a torn last line
    got, bad = read_metrics_checked(path)
    assert [r["step"] for r in got] == [1, 3, 5, 6] and bad == [2, 4, 7]
    assert read_metrics(path) == got
    assert plot_loss(got + [{"loss": 0.5}], tmp_path / "loss.png")  # a row without a step does not break the plot

    w = MetricsWriter(tmp_path, tensorboard=False, resume_step=5)
    assert w.notes == [f"{path}: skipped 3 damaged line(s) (line 2, 4, 7); the file is rewritten without them"]
    w.write({"step": 6, "loss": 0.1})
    w.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 3, 5, 6]


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, rows(5) + [{"step": 3, "sample_problem": "black"}])
    w = MetricsWriter(tmp_path, tensorboard=False, resume_step=3)
    assert w.notes == []
    w.close()
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows(3) + [{"step": 3, "sample_problem": "black"}]


def test_tensorboard_holds_each_step_once_after_resumes(tmp_path):
    """Steps 1-5 logged, killed (events of steps 4-5 are on disk); resumed from step 3 then from 0 and 4:
    TensorBoard's reader shows every step once, with the values of the latest session."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def log(resume_step, steps, value):
        w = MetricsWriter(tmp_path, tensorboard=True, resume_step=resume_step)
        for s in steps:
            w.write({"step": s, "loss": value + s})
        w.close()

    log(None, range(1, 6), 0.0)
    log(3, range(4, 7), 100.0)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1), (2, 2), (3, 3), (4, 104), (5, 105), (6, 106)]
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    log(0, range(1, 3), 1000.0)  # a resume without a checkpoint starts again from step 0: all earlier steps hidden
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1001), (2, 1002)]


# ---------------------------------------------------------------------------------------------------- run.json


@pytest.mark.parametrize("content", ["", "{\"status\": \"runn", "[1, 2]", "\x00\x00\x00"])
def test_damaged_run_json_is_reported_and_written_anew(tmp_path, content):
    run = RunDir(tmp_path / "r", "x")
    run.create()
    (run.root / "run.json").write_text(content)
    problem = run.status_problem()
    assert problem and problem.startswith(f"{run.root / 'run.json'} ") and problem.endswith("it is written anew")
    session, started = run.session()
    assert len(session) == 32 and started > 0
    run.write_status(status="running", step=3)
    data = json.loads((run.root / "run.json").read_text())
    assert data["status"] == "running" and data["step"] == 3 and data["session_id"] == session
    assert run.status_problem() is None and run.session() == (session, started)
    run.unlock()


# ------------------------------------------------------------------------------------------ resume manifests

LORA = {"unet": {"a.b": checkpoint.LoraModule(down=torch.ones(2, 3), up=torch.zeros(3, 2), alpha=1.0)}}


def save(run: RunDir, step: int) -> None:
    checkpoint.save_state(run.state_path(step), lora=LORA, optimizer_state={"state": {}, "param_groups": []},
                          scheduler_state={}, rng={**checkpoint.capture_rng(), "loop_generator":
                                                   torch.Generator().get_state()},
                          data_state={"epoch": 0, "position": step, "seed": 7, "batch_size": 2}, step=step,
                          config_fingerprint={"s": step})


class Stop(Exception):
    pass


@pytest.mark.parametrize("manifest", [
    [],                                                        # JSON, not an object
    {"format": 1},                                             # no files table
    {"format": 1, "files": ["lora.safetensors"]},              # files of the wrong type
    {"format": 1, "files": {n: "x" for n in checkpoint.FILES}},  # entries of the wrong type
    {"format": 1, "files": {n: {"sha": 1} for n in checkpoint.FILES}},  # entries with the wrong keys
])
def test_manifest_with_wrong_keys_falls_back_to_the_older_state(tmp_path, monkeypatch, manifest):
    run = RunDir(tmp_path / "r", "x")
    run.create()
    for step in (3, 6):
        save(run, step)
    (run.state_path(6) / "manifest.json").write_text(json.dumps(manifest))
    lines: list[str] = []
    chosen = []

    def stop(saved, current):  # restore() compares fingerprints right after picking a state: stop there
        chosen.append(saved)
        raise Stop

    monkeypatch.setattr(checkpoint, "fingerprint_diff", stop)
    with pytest.raises(Stop):
        resume.restore(run, {}, False, {}, {"unet": {}}, None, None, None, None, lines.append)
    assert chosen == [{"s": 3}] and len(lines) == 1, lines
    assert lines[0].startswith(f"warning: {run.state_path(6)}: ") and "trying the checkpoint before it" in lines[0]
    run.unlock()


def test_state_that_lacks_what_a_resume_needs_falls_back(tmp_path, monkeypatch):
    """A state that verifies but has no LoRA for a trained component, or no loop generator, is damaged too."""
    run = RunDir(tmp_path / "r", "x")
    run.create()
    save(run, 3)
    checkpoint.save_state(run.state_path(6), lora=LORA, optimizer_state={}, scheduler_state={},
                          rng=checkpoint.capture_rng(), data_state={"epoch": 0, "position": 1}, step=6,
                          config_fingerprint={"s": 6})
    lines: list[str] = []
    monkeypatch.setattr(checkpoint, "fingerprint_diff", lambda saved, current: (_ for _ in ()).throw(Stop(saved)))
    with pytest.raises(Stop) as exc:
        resume.restore(run, {}, False, {}, {"unet": {}}, None, None, None, None, lines.append)
    assert exc.value.args == ({"s": 3},)
    assert lines == [f"warning: {run.state_path(6)}: rng.pt lacks the training random streams; trying the "
                     "checkpoint before it"]
    lines.clear()
    assert resume.restore(run, {}, False, {}, {"unet": {}, "te1": {}}, None, None, None, None, lines.append) == 0
    assert lines[:2] == [f"warning: {run.state_path(s)}: no LoRA weights for te1; trying the checkpoint before it"
                         for s in (6, 3)]
    assert "has no complete checkpoint" in lines[2] and "starting again from step 0" in lines[2]
    run.unlock()


def test_force_resume_with_another_seed_or_batch_size_is_one_clear_error(tmp_path):
    from lorakit.errors import TrainingError

    class Stream:
        seed, batch_size = 8, 2

    with pytest.raises(TrainingError) as exc:
        resume._check_data_order(tmp_path / "step00000003", {"seed": 7, "batch_size": 2, "epoch": 0, "position": 1},
                                 Stream())
    assert str(exc.value).startswith(f"cannot resume {tmp_path / 'step00000003'} with training.seed = 8: it was "
                                     "saved with training.seed = 7")
    Stream.seed, Stream.batch_size = 7, 4
    with pytest.raises(TrainingError, match="with training.batch_size = 4: it was saved with training.batch_size = 2"):
        resume._check_data_order(tmp_path, {"seed": 7, "batch_size": 2, "epoch": 0, "position": 1}, Stream())


# --------------------------------------------------------------------------------------------------- plan.json


def test_unreadable_plan_is_said_not_skipped(tmp_path):
    run = RunDir(tmp_path / "r", "x")
    run.create()
    plan = {"settings": {"training.batch_size": 2}}
    lines: list[str] = []
    resume.check_plan(run, plan, False, lines.append)  # none recorded yet: nothing to say
    assert lines == []
    for content in ("{\"settings\": ", "[]", "{\"settings\": 3}"):
        (run.root / "plan.json").write_text(content)
        resume.check_plan(run, plan, False, lines.append)
        assert lines[-1].startswith(f"warning: {run.root / 'plan.json'} is unreadable (")
        assert "the plan chosen now is used and recorded" in lines[-1]
    assert len(lines) == 3
    run.unlock()


# ----------------------------------------------------------------------------------------------- temp files


def test_temps_of_a_kill_are_removed_and_nothing_else(tmp_path):
    run = RunDir(tmp_path / "r", "ohwx")
    run.create()
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    temps = [f".ohwx-step00000003.safetensors.lk{dead}-0a1b2c3d.tmp", f".ohwx.safetensors.lk{dead}-00000000.tmp",
             f".run.json.lk{dead}-deadbeef.tmp", "run.json.tmp", ".data_report.json.abc123.tmp",
             "ohwx-step00000003.safetensors.tmp", ".metrics.jsonl.tmp", f"samples/.ohwx_000003_00_42.png.lk{dead}-"
             "0000ffff.tmp"]
    keep = ["notes.tmp", "other.safetensors.tmp", ".something.tmp", "ohwx-step00000003.safetensors",
            f"samples/.mine.lk{os.getpid()}-0000aaaa.tmp"]
    for name in temps + keep:
        (run.root / name).write_text("x")
    (run.state_root / f"step00000009.tmp-{dead}").mkdir()
    save(run, 3)
    os.replace(run.state_path(3), run.state_root / f"step00000003.old-{dead}")  # killed between a save's renames
    save(run, 6)
    (run.state_root / f"step00000006.old-{dead}").mkdir()                     # ... after the new one took its place
    removed = run.clean_temps()
    assert sorted(str(p.relative_to(run.root)) for p in removed) == sorted(
        temps + [f"state/step00000009.tmp-{dead}", f"state/step00000006.old-{dead}"])
    assert all((run.root / k).exists() for k in keep)
    assert [p.name for p in run.complete_states()] == ["step00000003", "step00000006"]  # step 3 came back
    assert checkpoint.load_state(run.state_path(3))["step"] == 3
    run.unlock()


# ------------------------------------------------------------------------------------------------------ lock


def test_lock_names_its_holder_and_is_released(tmp_path):
    path = tmp_path / ".lorakit.lock"
    a = FileLock(path).acquire()
    with pytest.raises(LockHeld) as exc:
        FileLock(path).acquire()
    assert exc.value.holder["pid"] == os.getpid() and f"is locked by pid {os.getpid()} on host " in str(exc.value)
    a.release()
    assert path.read_text() == ""  # no stale holder left for the next reader
    b = FileLock(path).acquire()
    b.release()


# ------------------------------------------------------------------------------------------ previews, checks


def test_previews_and_checks_leave_dropout_and_random_streams_as_they_were():
    from lorakit.lora.inject import inject_lora
    from lorakit.train.steps import no_training_randomness

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8)).eval()
    inject_lora(net, {"0": 4, "2": 4}, 4.0, 0.5)
    for p in net.parameters():  # a LoRA that acts (up starts at zero)
        if p.requires_grad:
            torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(1))
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.training for m in drops)  # peft's dropout is live in training
    x = torch.ones(4, 8)
    before = torch.get_rng_state()
    with no_training_randomness({"unet": net}):
        assert not any(m.training for m in drops)
        y1, y2 = net(x), net(x)
        torch.randn(3)  # a stray draw from the global stream inside a preview
    assert torch.equal(y1, y2)  # no dropout: the same output twice
    assert torch.equal(torch.get_rng_state(), before)  # the training stream is where it was
    assert all(m.training for m in drops)
    assert not torch.equal(net(x), net(x))  # dropout is back on for training
