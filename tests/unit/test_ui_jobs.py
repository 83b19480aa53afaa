"""The UI's job store: states after crashes are read from the processes and the run folder, never assumed.

Jobs here run a stand-in command instead of training (``JobStore.python`` points at a tiny script that behaves like
``python -m lorakit train``: it writes run.json and metrics, then exits as told), so every crash case takes a moment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lorakit.errors import ConfigError
from lorakit.ui.jobs import JobError, JobStore, alive, tail
from lorakit.ui.runner import process_start

FAKE = textwrap.dedent('''
    """Stands in for `python -m lorakit ...`: behaves as told by $FAKE_MODE."""
    import json, os, sys, time, tomllib, signal
    from pathlib import Path
    args = sys.argv[1:]
    if args[:2] == ["-m", "lorakit.ui.runner"]:   # the runner itself is real
        sys.path.insert(0, os.environ["LORAKIT_SRC"])
        from lorakit.ui.runner import main
        sys.exit(main(args[2:]))
    assert args[:3] == ["-m", "lorakit", "train"], args
    if os.environ.get("FAKE_MODE") == "startup":  # stopped while starting, before the run folder is made
        print("starting", flush=True)
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            sys.exit(130)
    if os.environ.get("FAKE_MODE") == "early":  # refused before the run folder is made (a missing base model)
        print("lorakit train: error: model.checkpoint: file not found", flush=True)
        sys.exit(2)
    if args[3] == "--resume":
        run = Path(args[4])
    else:
        cfg = tomllib.loads(Path(args[3]).read_text())
        run = Path(cfg["save"]["dir"]) / cfg["save"]["name"]
        run.mkdir(parents=True, exist_ok=True)  # the job store claimed it (.lorakit.claim)
        (run / "config.toml").write_text(Path(args[3]).read_text())
    mode = os.environ.get("FAKE_MODE", "finish")
    if mode == "loading":  # a resume still loading its model when stopped: it writes nothing to run.json
        print("loading the base model", flush=True)
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            sys.exit(130)
    def status(**kw):
        p = run / "run.json"
        d = json.loads(p.read_text()) if p.exists() else {}
        d.update(kw, pid=os.getpid(), updated_at=time.time())
        p.write_text(json.dumps(d))
    status(status="running", step=0, max_steps=10)
    print("args:", " ".join(args[3:]), flush=True)
    print("step 1 of 10", flush=True)
    if mode == "finish":
        status(status="finished", step=10)
    elif mode == "error":
        print("Traceback: boom", flush=True)
        sys.exit(1)
    elif mode == "failed":
        status(status="failed", step=3, error="step 3: loss nan is not finite; stopped")
        sys.exit(2)
    elif mode in ("hang", "sigint"):
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            print("lorakit: interrupted", flush=True)
            sys.exit(130)
    elif mode == "slowstop":  # the stop's save takes a moment
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            print("saving the last checkpoint", flush=True)
            time.sleep(1.0)
            print("saved; lorakit: interrupted", flush=True)
            sys.exit(130)
''')


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_python.py"
    script.write_text(FAKE)
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("LORAKIT_SRC", str(Path(__file__).resolve().parents[2]))
    started: list[JobStore] = []

    def make(mode: str = "finish") -> JobStore:
        env = dict(os.environ, FAKE_MODE=mode)
        store = JobStore(tmp_path / "home", python=str(wrapper), env=env)
        started.append(store)
        return store

    yield make
    for store in started:  # end what this test started (pid and start time checked), never anything else
        for job in store.list():
            deadline = time.time() + 10  # a runner that has not named its child yet would orphan it when killed
            while alive(job.pid, job.pid_start) and _read(job.job_dir / "runner.json").get("attempt") != job.attempt \
                    and time.time() < deadline:
                time.sleep(0.05)
            runner = _read(job.job_dir / "runner.json")
            for pid, start in ((job.pid, job.pid_start), (runner.get("child_pid"), runner.get("child_start"))):
                if alive(pid, start):
                    os.kill(pid, signal.SIGKILL)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _toml(tmp_path: Path, name: str = "job", device: str = "cpu") -> str:
    data = tmp_path / "data" / "10_zkx shape"
    data.mkdir(parents=True, exist_ok=True)
    return textwrap.dedent(f'''
        [model]
        family = "sdxl"
        checkpoint = "{tmp_path / 'base.safetensors'}"
        [data]
        dir = "{tmp_path / 'data'}"
        [training]
        device = "{device}"
        [save]
        dir = "{tmp_path / 'runs'}"
        name = "{name}"
    ''')


def _wait_running(job, timeout: float = 30.0) -> None:
    """Until the stand-in run is in its loop (it printed its first step)."""
    deadline = time.time() + timeout
    while "step 1 of 10" not in (job.log_path.read_text() if job.log_path.exists() else ""):
        assert time.time() < deadline, "the job never started"
        time.sleep(0.05)
    _wait_file(job.job_dir / "runner.json")


def _settle(store: JobStore, job_id: int, states=("finished", "failed", "stopped"), timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = store.reconcile_one(store.get(job_id))
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {store.get(job_id).state}")


def _wait_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_finished_job_and_exact_toml(fake, tmp_path):
    store = fake("finish")
    text = _toml(tmp_path)
    job = store.add(text)
    assert job.state == "running" and job.toml_path.read_text() == text
    job = _settle(store, job.id)
    assert job.state == "finished"
    exit_info = json.loads((job.job_dir / "exit.json").read_text())
    assert exit_info == {"attempt": 1, "rc": 0, "ended_at": exit_info["ended_at"]}
    assert "step 1 of 10" in job.log_path.read_text()


def test_dead_pid_with_run_json_running_is_failed_with_log_tail(fake, tmp_path):
    """A run killed outright (no exit status): run.json still says running, the UI must not."""
    store = fake("hang")
    job = store.add(_toml(tmp_path))
    _wait_running(job)
    runner = json.loads((job.job_dir / "runner.json").read_text())
    os.kill(runner["child_pid"], signal.SIGKILL)
    os.kill(runner["runner_pid"], signal.SIGKILL)
    job = _settle(store, job.id)
    assert json.loads((job.run_dir / "run.json").read_text())["status"] == "running"
    assert job.state == "failed"
    assert "without an exit status" in job.note and "step 1 of 10" in job.note


def test_restarted_store_finds_running_job_and_stop_resume(fake, tmp_path):
    store = fake("sigint")
    job = store.add(_toml(tmp_path))
    _wait_running(job)
    again = fake("sigint")  # a restarted UI: a new store on the same home, no child handles
    found = again.reconcile_one(again.get(job.id))
    assert found.state == "running" and alive(found.pid, found.pid_start)
    assert again.stop(job.id).state == "stopping"
    job = _settle(again, job.id)
    assert job.state == "stopped" and "interrupted" in job.note
    assert job.note.startswith("stopped at step 0; Resume continues from step 0 (the last complete checkpoint)")
    assert json.loads((job.job_dir / "exit.json").read_text())["rc"] == 130
    resumed = again.resume(job.id)
    assert resumed.state == "running" and resumed.attempt == 2
    deadline = time.time() + 30
    while job.log_path.read_text().count("step 1 of 10") < 2:
        assert time.time() < deadline, "the resumed job never started"
        time.sleep(0.05)
    again.stop(job.id)
    assert _settle(again, job.id).state == "stopped"
    assert "--resume" in job.log_path.read_text()


def test_failed_run_json_and_crash_exit(fake, tmp_path):
    store = fake("failed")
    a = _settle(store, store.add(_toml(tmp_path, "a")).id)
    assert a.state == "failed" and a.note.startswith("step 3: loss nan is not finite")
    store2 = fake("error")
    b = _settle(store2, store2.add(_toml(tmp_path, "b")).id)
    assert b.state == "failed" and "exited with status 1" in b.note and "Traceback: boom" in b.note


def test_reused_pid_is_not_the_job(fake, tmp_path):
    """A pid that now belongs to another process (another start time) does not keep a job running."""
    store = fake("finish")
    job = _settle(store, store.add(_toml(tmp_path)).id)
    store._set(job.id, state="running", pid=os.getpid(), pid_start="1")  # our pid, another start time
    (job.job_dir / "runner.json").unlink()
    assert alive(os.getpid(), process_start(os.getpid())) and not alive(os.getpid(), "1")
    assert store.reconcile_one(store.get(job.id)).state == "finished"  # from run.json, not "running"


def test_one_job_per_device_and_queue(fake, tmp_path):
    store = fake("sigint")
    first = store.add(_toml(tmp_path, "one"))
    second = store.add(_toml(tmp_path, "two"))
    assert (first.state, store.get(second.id).state) == ("running", "queued")
    _wait_running(first)
    store.stop(first.id)
    _settle(store, first.id)
    store.schedule()
    assert store.get(second.id).state == "running"


def test_refusals(fake, tmp_path):
    store = fake("sigint")
    job = store.add(_toml(tmp_path, "same"))
    with pytest.raises(ConfigError, match=r"^save.name: .*already the output folder of job 1"):
        store.add(_toml(tmp_path, "same"))
    with pytest.raises(JobError, match="stop it first"):
        store.delete(job.id)
    with pytest.raises(JobError, match="only a stopped, failed or finished job can be resumed, this one is running"):
        store.resume(job.id)
    with pytest.raises(ConfigError, match=r"^network.rank: must be an integer ≥ 1, got 0"):
        store.add(_toml(tmp_path, "other") + "[network]\nrank = 0\n")
    assert [j.name for j in store.list()] == ["same"]  # nothing half-added
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "mine.txt").write_text("user file")
    with pytest.raises(ConfigError, match="already holds a run"):
        store.add(_toml(tmp_path, "taken"))
    assert (tmp_path / "runs" / "taken" / "mine.txt").read_text() == "user file"


def test_duplicate_with_changes_and_delete_keeps_run(fake, tmp_path):
    store = fake("finish")
    job = _settle(store, store.add(_toml(tmp_path, "base")).id)
    dup = store.duplicate(job.id, ["training.max_steps=7"])
    assert dup.name == "base-2" and dup.state == "stopped" and dup.parent == job.id
    text = dup.toml_path.read_text()
    assert "max_steps = 7" in text and 'name = "base-2"' in text
    store.delete(job.id)
    assert not job.job_dir.exists() and (job.run_dir / "run.json").exists()
    with pytest.raises(JobError, match="no such job"):
        store.get(job.id)


def test_tail_keeps_last_progress_state(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("a\nbar 1%\rbar 50%\rbar 100%\nwarning: x\n\n")
    assert tail(log, 2) == "bar 100%\nwarning: x"


def test_failed_job_frees_its_run_folder_for_a_corrected_rerun(fake, tmp_path):
    """A job that failed before its run began (a missing base model) no longer holds the folder's claim: the
    corrected TOML is queued on the same save.name from the UI, and `lorakit train` by hand is not refused either."""
    from lorakit.train.rundir import CLAIM_NAME

    store = fake("early")
    text = _toml(tmp_path, "same")
    failed = _settle(store, store.add(text).id)
    assert failed.state == "failed" and "model.checkpoint: file not found" in failed.note
    assert not (failed.run_dir / CLAIM_NAME).exists() and not failed.run_dir.exists()  # claim and its empty folder
    again = fake("finish")
    fixed = _settle(again, again.add(text).id)
    assert (fixed.id, fixed.state, fixed.run_dir) == (failed.id + 1, "finished", failed.run_dir)
    assert "is now job 2's" in again.get(failed.id).note
    with pytest.raises(JobError, match=r"^job 1: its output folder .* is now job 2's \(same\)"):
        again.resume(failed.id)  # never the newer job's run
    with pytest.raises(ConfigError, match=r"already the output folder of job 2 \(same, finished\)"):
        again.add(text)  # a run that began keeps its folder


def test_unwritable_home_is_one_line_and_queues_nothing(fake, tmp_path, monkeypatch):
    """A full disk or unwritable --home while queueing: one JobError line (was an OSError traceback), no job row
    and no claim left on the output folder (the job's folder is moved into place before it may start)."""
    import errno

    store = fake("finish")
    real = os.replace

    def full(src, dst, *a, **k):
        if Path(dst).parent == store.jobs_root:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(JobError, match=r"^cannot queue the job: .*/jobs/1: No space left on device; nothing was "
                                       r"queued"):
        store.add(_toml(tmp_path, "full"))
    monkeypatch.setattr(os, "replace", real)
    assert store.list() == [] and not (tmp_path / "runs" / "full").exists()
    assert [p.name for p in store.jobs_root.iterdir()] == []
    assert _settle(store, store.add(_toml(tmp_path, "full")).id).state == "finished"  # the retry just works


def test_resume_honours_the_changes_and_extends_a_finished_run(fake, tmp_path):
    """The changes box beside Resume was ignored by it (Resume ran a bare --resume): now its lines go to
    `lorakit train --resume RUN key=value` (a finished run trains on to a raised end), checked first."""
    store = fake("finish")
    text = _toml(tmp_path, "ext").replace('device = "cpu"', 'device = "cpu"\nmax_steps = 10')
    job = _settle(store, store.add(text).id)
    assert job.state == "finished"
    with pytest.raises(JobError, match=r"^job 1: finished; to train it further, give the new end in the changes box"):
        store.resume(job.id)
    with pytest.raises(JobError, match=r"^job 1: already ran \(finished\); to train it further give "
                                       r"training.max_steps=N in the changes box and press Resume"):
        store.start(job.id)
    with pytest.raises(ConfigError, match=r"^save.name: cannot change on Resume: the run stays in "):
        store.resume(job.id, ["save.name=other"])
    with pytest.raises(JobError, match=r"^job 1: --resume: .* finished at step 10 \(training.max_steps = 10\); "
                                       r"nothing was changed .* Raise training.max_steps"):
        store.resume(job.id, ["training.max_steps=10"])
    with pytest.raises(ConfigError, match=r"^training.max_steps: must be an integer ≥ 1"):
        store.resume(job.id, ["training.max_steps=0"])
    assert store.get(job.id).state == "finished"  # nothing of the refused ones queued
    resumed = store.resume(job.id, ["training.max_steps=20", "data.cache_dir=rel/cache"])
    assert resumed.state == "running" and resumed.attempt == 2
    job = _settle(store, job.id)
    assert job.state == "finished"
    assert f"args: --resume {job.run_dir} training.max_steps=20 data.cache_dir={Path.cwd() / 'rel/cache'}" \
        in job.log_path.read_text()


def test_resume_of_a_run_that_never_began_starts_it_again(fake, tmp_path):
    """Resume of a job that failed before its run began said 'use Duplicate'; it now starts the job's TOML again,
    on its own save.name."""
    from lorakit.train.rundir import CLAIM_NAME

    store = fake("early")
    job = _settle(store, store.add(_toml(tmp_path, "again")).id)
    assert job.state == "failed" and not (job.run_dir / CLAIM_NAME).exists()
    with pytest.raises(JobError, match="never began, so there is nothing to resume with changes"):
        store.resume(job.id, ["training.max_steps=5"])
    fixed = fake("finish")
    assert fixed.resume(job.id).state == "running"
    job = _settle(fixed, job.id)
    assert job.state == "finished" and job.attempt == 2
    assert job.log_path.read_text().count("args: ") == 1 and f"args: {job.toml_path}" in job.log_path.read_text()


def test_an_earlier_attempts_run_json_is_not_this_attempts_end(fake, tmp_path):
    """A failed run resumed and stopped while still loading (its run.json untouched since attempt 1) was shown
    'failed' with attempt 1's error; it is 'stopped'."""
    store = fake("failed")
    job = _settle(store, store.add(_toml(tmp_path, "again")).id)
    assert job.state == "failed" and job.note.startswith("step 3: loss nan")
    loading = fake("loading")
    loading.resume(job.id)
    deadline = time.time() + 30
    while "loading the base model" not in job.log_path.read_text():
        assert time.time() < deadline, "the resumed job never started"
        time.sleep(0.05)
    _wait_file(job.job_dir / "runner.json")
    loading.stop(job.id)
    job = _settle(loading, job.id)
    assert job.state == "stopped" and "loss nan" not in job.note.split("---")[0], job.note


def test_a_second_stop_right_after_the_first_does_not_abort_the_save(fake, tmp_path, monkeypatch):
    """Stop twice in a row (a double click, or Stop in two tabs) sent SIGTERM on top of SIGINT, which aborts the
    run's save of its last checkpoint; a second Stop now counts only after STOP_AGAIN_S."""
    from lorakit.ui import jobs

    store = fake("slowstop")
    job = store.add(_toml(tmp_path, "twice"))
    _wait_running(job)
    assert store.stop(job.id).state == "stopping"
    with pytest.raises(JobError, match=r"^job 1: already stopping \(asked 0 s ago\): it finishes its step"):
        store.stop(job.id)
    job = _settle(store, job.id)
    assert job.state == "stopped" and "saved; lorakit: interrupted" in job.log_path.read_text()
    monkeypatch.setattr(jobs, "STOP_AGAIN_S", 0.0)  # past the wait, a second Stop ends a hanging stop at once
    store.resume(job.id)
    _wait_file(job.job_dir / "runner.json")
    deadline = time.time() + 30
    while job.log_path.read_text().count("step 1 of 10") < 2:
        assert time.time() < deadline
        time.sleep(0.05)
    store.stop(job.id)
    time.sleep(0.2)  # the SIGINT arrives first
    store.stop(job.id)
    job = _settle(store, job.id)
    assert job.state == "stopped" and job.log_path.read_text().count("saved; lorakit: interrupted") == 1


def test_two_tabs_duplicating_at_once_get_two_names(fake, tmp_path, monkeypatch):
    """Duplicate picked the free save.name outside the queue's lock: two tabs duplicating one job at once both
    picked 'base-2' and one was refused ('already the output folder of job 2')."""
    import threading

    store = fake("finish")
    job = _settle(store, store.add(_toml(tmp_path, "base")).id)
    pick = store._free_name

    def slow_pick(j):
        name = pick(j)
        time.sleep(0.3)  # the other tab's click lands here
        return name

    monkeypatch.setattr(store, "_free_name", slow_pick)
    out, errors = [], []

    def dup():
        try:
            out.append(store.duplicate(job.id, ["training.max_steps=7"]).name)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(str(exc))

    threads = [threading.Thread(target=dup) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(out) == ["base-2", "base-3"]


def test_resume_of_a_job_stopped_before_its_run_began(fake, tmp_path):
    """Stopped while starting (before its run made anything), the job lets go of its folder's reservation (as a failed
    one: `lorakit train` by hand into it is not refused, leftovers9); Resume reserves it again and starts its TOML."""
    from lorakit.train.rundir import CLAIM_NAME, read_claim

    store = fake("startup")
    job = store.add(_toml(tmp_path, "early-stop"))
    deadline = time.time() + 30
    while "starting" not in (job.log_path.read_text() if job.log_path.exists() else ""):
        assert time.time() < deadline
        time.sleep(0.05)
    _wait_file(job.job_dir / "runner.json")
    store.stop(job.id)
    job = _settle(store, job.id)
    assert job.state == "stopped" and not (job.run_dir / CLAIM_NAME).exists() and read_claim(job.run_dir) == {}
    again = fake("finish")
    assert again.resume(job.id).state == "running"
    job = _settle(again, job.id)
    assert job.state == "finished" and f"args: {job.toml_path}" in job.log_path.read_text()


def test_a_run_that_cannot_be_started_is_failed_at_once(tmp_path):
    """Starting the run's process failed (the Python of a removed venv): an OSError traceback on Start, and the job
    showed 'running' for half a minute before it was found dead. Now it is failed at once, saying why."""
    from lorakit.train.rundir import CLAIM_NAME

    store = JobStore(tmp_path / "home", python=str(tmp_path / "gone" / "python"))
    job = store.add(_toml(tmp_path, "nopython"))
    assert job.state == "failed" and job.note.startswith(f"could not start the run: {tmp_path / 'gone' / 'python'}: "
                                                        "No such file or directory (nothing ran)")
    assert not (job.run_dir / CLAIM_NAME).exists()


def test_a_job_taken_off_the_queue_frees_its_folder_and_start_reserves_it_again(fake, tmp_path):
    """leftovers9: a queued job stopped before it started kept `.lorakit.claim`, so `lorakit train` by hand into its
    folder was refused. Now the claim goes with the stop; Start reserves the folder again (refused, one line, when
    another face took it meanwhile)."""
    from lorakit.train.rundir import CLAIM_NAME, claim, release_claim

    store = fake("finish")
    job = store.add(_toml(tmp_path, "off-queue"), start=False)
    assert (job.run_dir / CLAIM_NAME).exists()   # a job made to be started later keeps its reservation
    store._set(job.id, state="queued")           # waiting for its device
    job = store.stop(job.id)
    assert job.state == "stopped" and not (job.run_dir / CLAIM_NAME).exists()
    claim(job.run_dir, "a ComfyUI job", "other")
    with pytest.raises(JobError, match=r"^job 1: cannot start it again: .* already the output folder of a ComfyUI job"):
        store.start(job.id)
    release_claim(job.run_dir, "other")
    assert store.start(job.id).state == "running"
    assert _settle(store, job.id).state == "finished"
