"""The web UI's job queue: jobs kept in SQLite on disk, each run as its own process through the CLI.

A job is a TOML file (``<home>/jobs/<id>/run.toml``) and the run folder it writes (``save.dir/save.name``). Starting
it runs ``python -m lorakit train run.toml`` (resuming: ``python -m lorakit train --resume RUN_DIR``) under
:mod:`lorakit.ui.runner`, in a session of its own, so the UI can close, crash or restart without touching the run.

The state shown is never assumed: :meth:`JobStore.reconcile` derives it from the processes (pid *and* the kernel's
start time, so a reused pid is not mistaken for the run) and, once they are gone, from the runner's ``exit.json``,
the run folder's ``run.json`` and whether a stop was asked for. A job whose processes are gone is never shown as
running: it is finished, stopped (interrupted; resumable) or failed, with the last lines of its log.

One job runs at a time per device (``training.device``; ``auto`` is the first GPU when there is one, else the CPU);
others wait as ``queued`` and start when their device is free (whenever the UI reconciles).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from lorakit.errors import ConfigError, LorakitError
from lorakit.ui.runner import process_start

ACTIVE = ("running", "stopping")
STATES = ("queued", "running", "stopping", "stopped", "finished", "failed")
LOG_TAIL_LINES = 20
STARTING_GRACE_S = 30.0
STOP_AGAIN_S = 10.0  # a second Stop (SIGTERM: ends the run at once) counts only this long after the first
RESUME_FILE = "resume.json"  # in the job folder: the changes (section.key=value) a Resume passes to `--resume`
CLAIM_FILE = "claim"  # in the job folder: the token of the job's claim on its run folder (lorakit.train.rundir.claim)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    device TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    state TEXT NOT NULL,
    resume INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    pid_start TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT '',
    parent INTEGER,
    updated REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    created: float
    device: str
    run_dir: Path
    state: str
    resume: bool
    attempt: int
    pid: Optional[int]
    pid_start: Optional[str]
    stop_requested: bool
    note: str
    parent: Optional[int]
    job_dir: Path
    updated: float = 0.0

    @property
    def toml_path(self) -> Path:
        return self.job_dir / "run.toml"

    @property
    def log_path(self) -> Path:
        return self.job_dir / "train.log"


class JobError(LorakitError):
    """A job action the current state does not allow (the message says why and what to do)."""


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch (the UI stays light)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists()


def device_key(device: str) -> str:
    """The device a job occupies: ``cpu`` or ``cuda:N`` (``auto`` and ``cuda`` mean the first GPU when present)."""
    if device == "auto":
        return "cuda:0" if gpu_present() else "cpu"
    return "cuda:0" if device == "cuda" else device


def alive(pid: Optional[int], start: Optional[str]) -> bool:
    """True while the process ``pid`` that started at ``start`` runs (a zombie or a reused pid counts as gone)."""
    if not pid:
        return False
    now = process_start(pid)
    if now is None:
        if Path("/proc").is_dir():
            return False
        try:  # no /proc (macOS): the pid alone
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return start is None or now == start


def tail(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a log; progress-bar redraws (``\\r``) keep only their last state."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    out = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
           for line in text.split("\n")]
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out[-lines:])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class JobStore:
    """The queue in ``<home>/jobs.sqlite`` and the job folders ``<home>/jobs/<id>/``."""

    def __init__(self, home: Path, *, python: str = sys.executable, env: Optional[dict[str, str]] = None) -> None:
        self.home = Path(home).resolve()
        self.jobs_root = self.home / "jobs"
        self.jobs_root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "jobs.sqlite"
        self.python = python
        self.env = env
        self._lock = threading.RLock()
        self._children: dict[int, subprocess.Popen] = {}  # runners this process started (reaped here)
        with self._db() as db:
            db.executescript(_SCHEMA)

    # ------------------------------------------------------------------------------------------ storage
    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        return _Closing(db)  # type: ignore[return-value]

    def _job(self, row: sqlite3.Row) -> Job:
        return Job(id=row["id"], name=row["name"], created=row["created"], device=row["device"],
                   run_dir=Path(row["run_dir"]), state=row["state"], resume=bool(row["resume"]),
                   attempt=row["attempt"], pid=row["pid"], pid_start=row["pid_start"],
                   stop_requested=bool(row["stop_requested"]), note=row["note"], parent=row["parent"],
                   job_dir=self.jobs_root / str(row["id"]), updated=row["updated"])

    def _set(self, job_id: int, **fields: Any) -> None:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", [*fields.values(), job_id])

    def get(self, job_id: int) -> Job:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise JobError(f"job {job_id}: no such job")
        return self._job(row)

    def list(self) -> list[Job]:
        with self._db() as db:
            return [self._job(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]

    # ------------------------------------------------------------------------------------------ actions
    def add(self, toml_text: str, *, start: bool = True, parent: Optional[int] = None) -> Job:
        """Validate ``toml_text`` as the CLI would, refuse a second job on the same run folder, and queue it."""
        from lorakit.config.load import load_config

        with self._lock:
            tmp_dir = self.jobs_root / f".new-{os.getpid()}-{threading.get_ident()}"
            job_id = token = run_dir = None
            try:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                tmp_dir.mkdir(parents=True)
                (tmp_dir / "run.toml").write_text(toml_text, encoding="utf-8")
                cfg = load_config(tmp_dir / "run.toml")  # exactly what `lorakit train run.toml` will read
                run_dir = (Path(cfg.save.dir) / cfg.save.name).resolve()
                for gone in self._check_run_dir_free(run_dir):  # jobs whose run never began: the folder is free
                    self._release_claim(gone)
                token = self._claim(run_dir)  # atomic across processes: another face's queue may race us
                (tmp_dir / CLAIM_FILE).write_text(token, encoding="utf-8")
                now = time.time()
                with self._db() as db:
                    cur = db.execute(
                        "INSERT INTO jobs (name, created, device, run_dir, state, parent, updated) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (cfg.save.name, now, device_key(cfg.training.device), str(run_dir),
                         "stopped", parent, now))  # startable only once its folder is in place (below)
                    job_id = int(cur.lastrowid)
                final = self.jobs_root / str(job_id)
                shutil.rmtree(final, ignore_errors=True)  # a folder left by a deleted job of the same id
                os.replace(tmp_dir, final)
            except BaseException as exc:
                if job_id is not None:
                    with self._db() as db:
                        db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                if token is not None:
                    from lorakit.train.rundir import release_claim

                    release_claim(run_dir, token)
                if isinstance(exc, OSError):  # a full disk, a read-only or unwritable --home
                    raise JobError(f"cannot queue the job: {exc.filename or self.jobs_root}: {exc.strerror or exc}; "
                                   f"nothing was queued (free space, or give a --home you can write)") from None
                raise
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            self._set(job_id, state="queued" if start else "stopped",
                      note="" if start else "created; press Start to run it")
            self._name_claim(run_dir, token, f"job {job_id} ({cfg.save.name}) of the job queue in {self.home}")
            for j in self.list():
                if j.run_dir == run_dir and j.id != job_id:
                    self._set(j.id, note=f"its output folder {run_dir} is now job {job_id}'s (this job never "
                                         f"began a run there)\n{j.note}".rstrip())
        self.schedule()
        return self.get(job_id)

    def _check_run_dir_free(self, run_dir: Path) -> list[Job]:
        """Refuse a run folder another job uses or that holds a run; returns the jobs on it that ended (failed or
        stopped) before their run began there: their folder goes to the new job (a corrected re-run)."""
        from lorakit.train.rundir import holds_files

        on = [j for j in self.list() if j.run_dir == run_dir]  # the newest one holds it (older ones gave it up)
        if on and not self._never_began(on[-1]):
            job = on[-1]
            hint = "; Resume it, or choose another save.name or save.dir" if job.state in ("stopped", "failed") \
                else "; choose another save.name or save.dir"
            raise ConfigError(f"save.name: {run_dir} is already the output folder of job {job.id} "
                              f"({job.name}, {job.state}){hint}")
        if holds_files(run_dir):
            raise ConfigError(f"save.name: {run_dir} already holds a run; nothing was overwritten. Choose another "
                              "save.name or save.dir")
        return on

    def successor(self, job: Job, jobs: Optional[Sequence[Job]] = None) -> Optional[Job]:
        """The newer job that took over ``job``'s run folder (``job`` ended before its run began there); None while
        the folder is ``job``'s. What the folder holds is then the successor's run, never ``job``'s."""
        newer = [j for j in (self.list() if jobs is None else jobs) if j.run_dir == job.run_dir and j.id > job.id]
        return newer[-1] if newer else None

    @staticmethod
    def _never_began(job: Job) -> bool:
        """A job that ran and ended (failed, or stopped) before its run wrote anything into its run folder."""
        from lorakit.train.rundir import holds_files

        return job.attempt > 0 and job.state in ("failed", "stopped") and not holds_files(job.run_dir)

    def _claim(self, run_dir: Path) -> str:
        """Reserve ``run_dir`` for the job being added (``.lorakit.claim``, made in one step: of the web UI and the
        ComfyUI nodes queueing into one folder at once, one wins); returns the token the job's run starts with."""
        import uuid

        from lorakit.errors import TrainingError
        from lorakit.train.rundir import claim

        token = uuid.uuid4().hex
        try:
            claim(run_dir, f"a job being queued in {self.home}", token)
        except TrainingError as exc:
            raise ConfigError(f"save.name: {exc}") from None
        return token

    @staticmethod
    def _name_claim(run_dir: Path, token: str, owner: str) -> None:
        """Put the job's number into its claim (what a refused face names), when the claim is still this job's."""
        from lorakit.fsutil import write_json
        from lorakit.train.rundir import CLAIM_NAME, read_claim

        held = read_claim(run_dir)
        if held.get("token") == token:
            try:
                write_json(run_dir / CLAIM_NAME, {**held, "owner": owner})
            except OSError:
                pass  # the claim stands as made; only its wording is plainer

    def _release_claim(self, job: Job) -> None:
        from lorakit.train.rundir import release_claim

        try:
            token = (job.job_dir / CLAIM_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            return
        release_claim(job.run_dir, token)

    def start(self, job_id: int) -> Job:
        """Queue a job that never ran (it starts when its device is free)."""
        with self._lock:
            job = self.reconcile_one(self.get(job_id))
            if job.state in ACTIVE or job.state == "queued":
                raise JobError(f"job {job_id}: already {job.state}")
            if job.state == "finished":
                raise JobError(f"job {job_id}: already ran (finished); to train it further give training.max_steps=N "
                               "in the changes box and press Resume, or Duplicate it")
            if job.attempt > 0:
                raise JobError(f"job {job_id}: already ran ({job.state}); use Resume to continue it, or Duplicate")
            return self._restart(job)   # its folder reserved again if taking it off the queue released it

    def resume(self, job_id: int, overrides: Sequence[str] = ()) -> Job:
        """Continue a stopped or failed run from its newest complete checkpoint (``lorakit train --resume RUN_DIR
        [overrides]``); with ``section.key=value`` changes (``training.max_steps=3000``) also a finished run, which
        then trains on to the new end. A run that never began (it failed or was stopped before writing anything)
        starts again from its TOML."""
        overrides = [o.strip() for o in overrides if o.strip()]
        with self._lock:
            job = self.reconcile_one(self.get(job_id))
            if job.state == "finished" and not overrides:
                raise JobError(f"job {job_id}: finished; to train it further, give the new end in the changes box "
                               "(training.max_steps=N, or training.max_epochs=N) and press Resume")
            if job.state not in ("stopped", "failed", "finished"):
                raise JobError(f"job {job_id}: only a stopped, failed or finished job can be resumed, this one is "
                               f"{job.state}")
            if (newer := self.successor(job)) is not None:
                raise JobError(f"job {job_id}: its output folder {job.run_dir} is now job {newer.id}'s "
                               f"({newer.name}); this job never began a run there, so there is nothing to resume")
            if not (job.run_dir / "config.toml").is_file():
                if overrides:
                    raise JobError(f"job {job_id}: its run never began, so there is nothing to resume with changes "
                                   "(nothing was changed); use Duplicate with these changes")
                if job.attempt == 0:
                    return self.start(job_id)
                return self._restart(job)
            cfg_overrides = self._check_resume(job, overrides)
            from lorakit.fsutil import write_json

            try:
                write_json(job.job_dir / RESUME_FILE, {"attempt": job.attempt + 1, "overrides": cfg_overrides})
            except OSError as exc:
                raise JobError(f"job {job_id}: cannot write {job.job_dir / RESUME_FILE} ({exc.strerror or exc}); "
                               "nothing was changed") from None
            self._set(job_id, state="queued", resume=1, stop_requested=0, note="")
        self.schedule()
        return self.get(job_id)

    def _check_resume(self, job: Job, overrides: list[str]) -> list[str]:
        """The changes of a resume, checked as `lorakit train --resume` checks them (one line each, before the job is
        queued): the run's folder and name cannot change, and a finished run must be given a later end."""
        from lorakit.config.load import field_specs, load_config, parse_override

        keys = sorted({".".join(parse_override(o)[0]) for o in overrides} & {"save.dir", "save.name"})
        if keys:
            raise ConfigError(f"{keys[0]}: cannot change on Resume: the run stays in {job.run_dir} (nothing was "
                              "changed); use Duplicate to train into another folder")
        cfg = load_config(job.run_dir / "config.toml", overrides)
        if job.state == "finished":
            from lorakit.errors import TrainingError
            from lorakit.train.resume import check_not_finished
            from lorakit.train.rundir import RunDir

            try:
                check_not_finished(RunDir(job.run_dir, job.name), cfg)
            except TrainingError as exc:
                raise JobError(f"job {job.id}: {str(exc).split(' To train it further')[0]} Raise "
                               "training.max_steps (or training.max_epochs) in the changes box.") from None
        out = []
        for item in overrides:  # a path is made absolute here: the run's process starts in the job's folder
            parts, value = parse_override(item)
            spec = field_specs().get(parts[0], {}).get(parts[-1]) if len(parts) == 2 else None
            if spec is not None and spec.meta.get("kind") == "path" and isinstance(value, str) and value.strip():
                from lorakit.ui.form import _absolute

                item = f"{'.'.join(parts)}={_absolute(spec.key, value.strip())}"
            out.append(item)
        return out

    def _restart(self, job: Job) -> Job:
        """Start again from its TOML a job whose run never began (its folder reserved again under its token)."""
        from lorakit.errors import TrainingError
        from lorakit.train.rundir import claim

        from lorakit.train.rundir import read_claim

        try:
            token = (job.job_dir / CLAIM_FILE).read_text(encoding="utf-8").strip()
            if read_claim(job.run_dir).get("token") != token:  # a stopped or failed job let go of it
                claim(job.run_dir, f"job {job.id} ({job.name}) of the job queue in {self.home}", token)
        except (OSError, TrainingError) as exc:
            raise JobError(f"job {job.id}: cannot start it again: {exc}") from None
        self._set(job.id, state="queued", resume=0, stop_requested=0, note="")
        self.schedule()
        return self.get(job.id)

    def stop(self, job_id: int) -> Job:
        """SIGINT to the run: it finishes the step, keeps its last complete checkpoint and exits (resumable).
        A second stop while stopping sends SIGTERM; a queued job is simply taken off the queue."""
        with self._lock:
            job = self.reconcile_one(self.get(job_id))
            if job.state == "queued":
                self._set(job_id, state="stopped", note="taken off the queue before it started")
                self._release_claim(job)  # its folder is free for `lorakit train` by hand until Start / Resume
                return self.get(job_id)
            if job.state not in ACTIVE:
                raise JobError(f"job {job_id}: not running ({job.state})")
            asked = time.time() - job.updated
            if job.state == "stopping" and asked < STOP_AGAIN_S:  # a double click, or a second tab's Stop
                raise JobError(f"job {job_id}: already stopping (asked {asked:.0f} s ago): it finishes its step and "
                               f"exits; only a stop that hangs needs a second Stop (after {STOP_AGAIN_S:.0f} s), which "
                               "ends it at once")
            sig = signal.SIGINT if job.state == "running" else signal.SIGTERM
            self._signal(job, sig)
            self._set(job_id, state="stopping", stop_requested=1)
        return self.get(job_id)

    def delete(self, job_id: int) -> None:
        """Remove the job from the list and its job folder (TOML and log). The run folder is kept: a LoRA and its
        checkpoints are the user's (delete them yourself if unwanted)."""
        with self._lock:
            job = self.reconcile_one(self.get(job_id))
            if job.state in ACTIVE:
                raise JobError(f"job {job_id}: is {job.state}; stop it first")
            with self._db() as db:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._release_claim(job)  # a job that never started frees its run folder for another face
            shutil.rmtree(job.job_dir, ignore_errors=True)

    def duplicate(self, job_id: int, overrides: Sequence[str] = (), *, start: bool = False) -> Job:
        """A new job from this job's TOML with ``section.key=value`` changes; a new save.name unless one is given."""
        from lorakit.config.load import parse_override
        from lorakit.ui.form import apply_overrides_to_toml

        job = self.get(job_id)
        try:
            text = job.toml_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise JobError(f"job {job_id}: cannot read {job.toml_path} ({getattr(exc, 'strerror', None) or exc}); "
                           "its TOML is gone or damaged, so there is nothing to duplicate") from None
        keys = {".".join(parse_override(o)[0]) for o in overrides}
        extra = list(overrides)
        with self._lock:  # the free name is picked and taken in one step (two tabs duplicating at once get two)
            if "save.name" not in keys:
                extra.append(f"save.name={self._free_name(job)}")
            return self.add(apply_overrides_to_toml(text, extra), start=start, parent=job_id)

    def _free_name(self, job: Job) -> str:
        taken = {j.run_dir for j in self.list()}
        base = job.name
        for n in range(2, 10_000):
            candidate = f"{base}-{n}"
            path = job.run_dir.parent / candidate
            if path not in taken and not path.exists():
                return candidate
        raise JobError(f"job {job.id}: no free save.name found next to {job.run_dir}")

    # ------------------------------------------------------------------------------------------ processes
    def schedule(self) -> list[int]:
        """Start the oldest queued job of every device that has nothing running; returns the started ids."""
        started = []
        with self._lock:
            jobs = [self.reconcile_one(j) for j in self.list()]
            busy = {j.device for j in jobs if j.state in ACTIVE}
            for job in jobs:
                if job.state == "queued" and job.device not in busy and self._launch(job):
                    busy.add(job.device)
                    started.append(job.id)
        return started

    def _launch(self, job: Job) -> bool:
        attempt = job.attempt + 1
        with self._db() as db:  # claim it in one statement: another process on this home (the ComfyUI nodes, a
            # second UI) can neither start it too nor start another job on its device between our look and the claim
            claimed = db.execute("UPDATE jobs SET state = 'running', attempt = ?, pid = NULL, pid_start = NULL, "
                                 "stop_requested = 0, note = '', updated = ? WHERE id = ? AND state = 'queued' AND "
                                 "NOT EXISTS (SELECT 1 FROM jobs AS o WHERE o.device = jobs.device AND o.id != jobs.id "
                                 f"AND o.state IN ({', '.join(repr(a) for a in ACTIVE)}))",
                                 (attempt, time.time(), job.id)).rowcount
        if claimed != 1:
            return False
        if job.resume:
            changes = _read_json(job.job_dir / RESUME_FILE)
            extra = changes.get("overrides", []) if changes.get("attempt") == attempt else []
            train = [self.python, "-m", "lorakit", "train", "--resume", str(job.run_dir), *extra]
        else:
            train = [self.python, "-m", "lorakit", "train", str(job.toml_path)]
        cmd = [self.python, "-m", "lorakit.ui.runner", str(job.job_dir), str(attempt), "--", *train]
        env = dict(self.env if self.env is not None else os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:  # the run folder's claim this job holds (RunDir.create takes it over)
            from lorakit.train.rundir import CLAIM_ENV

            env[CLAIM_ENV] = (job.job_dir / CLAIM_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            pass
        try:
            for name in ("exit.json", "runner.json"):
                (job.job_dir / name).unlink(missing_ok=True)
            proc = subprocess.Popen(cmd, cwd=job.job_dir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:  # the Python gone (a removed venv), the job folder deleted by hand, no memory left
            self._set(job.id, state="failed", resume=0,
                      note=f"could not start the run: {exc.filename or cmd[0]}: {exc.strerror or exc} (nothing ran); "
                           "fix that, then Resume")
            if not job.resume:
                self._release_claim(job)
            return False
        self._children[proc.pid] = proc
        start = None
        for _ in range(50):  # /proc may lag a moment behind fork
            start = process_start(proc.pid)
            if start is not None or proc.poll() is not None:
                break
            time.sleep(0.01)
        self._set(job.id, pid=proc.pid, pid_start=start)
        return True

    def _signal(self, job: Job, sig: int) -> None:
        runner = _read_json(job.job_dir / "runner.json")
        targets = []
        if alive(job.pid, job.pid_start):
            targets.append(job.pid)  # the runner passes the signal on to the run
        elif runner.get("attempt") == job.attempt and alive(runner.get("child_pid"), runner.get("child_start")):
            targets.append(runner["child_pid"])  # the runner is gone, the run is not
        for pid in targets:
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def reconcile(self) -> list[Job]:
        """Every job with its true state (see the module doc), then start what the queue allows."""
        self.schedule()
        return self.list()

    def reconcile_one(self, job: Job) -> Job:
        if job.state not in ACTIVE:
            return job
        self._reap()
        runner = _read_json(job.job_dir / "runner.json")
        this_attempt = runner.get("attempt") == job.attempt
        child = this_attempt and alive(runner.get("child_pid"), runner.get("child_start"))
        if alive(job.pid, job.pid_start) or child:
            return job
        if job.pid is None and time.time() - job.updated < STARTING_GRACE_S:  # claimed, being started
            return job
        state, note = self.final_state(job)
        self._set(job.id, state=state, note=note, resume=0)
        if state in ("failed", "stopped"):  # a run that failed or was stopped before it began holds its folder no
            self._release_claim(job)  # longer (a corrected re-run, from this queue, another face or the CLI, may use
            # it); a begun run took the reservation over (RunDir._take_claim), so there is nothing to release
        return self.get(job.id)

    def final_state(self, job: Job) -> tuple[str, str]:
        """(state, note) of an attempt whose processes are gone, from exit.json, run.json and the stop request."""
        exit_info = _read_json(job.job_dir / "exit.json")
        rc = exit_info.get("rc") if exit_info.get("attempt") == job.attempt else None
        status = _read_json(job.run_dir / "run.json")
        runner = _read_json(job.job_dir / "runner.json")
        began = runner.get("started_at") if runner.get("attempt") == job.attempt else None
        if isinstance(began, (int, float)) and not (isinstance(status.get("updated_at"), (int, float))
                                                    and status["updated_at"] >= began):
            status = {}  # an earlier attempt's (a resume stopped or killed before its run wrote any): not this one's
        last = tail(job.log_path)
        if status.get("status") == "finished" and rc in (0, None):
            return "finished", ""
        if status.get("status") == "failed":
            return "failed", f"{status.get('error', 'the run failed')}\n--- last lines of the log ---\n{last}"
        if job.stop_requested or rc in (130, -signal.SIGINT):
            from lorakit.train.rundir import STATE_RE, RunDir
            from lorakit.ui.runs import progress

            state = RunDir(job.run_dir, job.name).latest_state()
            saved = int(STATE_RE.match(state.name).group(1)) if state else 0
            return "stopped", f"stopped at step {progress(job.run_dir)['step']}; Resume continues from step {saved} " \
                              f"(the last complete checkpoint)\n--- last lines of the log ---\n{last}"
        why = (f"the run exited with status {rc}" if rc is not None
               else "the run's process ended without an exit status (killed, or the machine restarted)")
        return "failed", f"{why}\n--- last lines of the log ---\n{last}"


UI_LOCK = "ui.lock"


def hold_home(home: Path, port: int) -> Any:
    """The home's UI lock (an OS lock: a UI that died, even by SIGKILL, leaves nothing to clean up, and the next
    takes it over); a second `lorakit ui` on the same home is refused in one line naming the one that serves it."""
    from lorakit.fsutil import FileLock, LockHeld, describe_holder

    lock = FileLock(Path(home) / UI_LOCK)
    try:
        return lock.acquire(port=port)
    except LockHeld as exc:
        url = f"http://127.0.0.1:{exc.holder['port']}, " if exc.holder.get("port") else ""
        raise JobError(f"--home {home}: another `lorakit ui` serves this home and its job queue ({url}"
                       f"{describe_holder(exc.holder)}); use that one, stop it first, or give another --home") from None


class _Closing:
    """A sqlite3 connection used as ``with`` block that also closes it (sqlite3's own only commits)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc: Any) -> None:
        self.db.close()
