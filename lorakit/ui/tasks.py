"""Long CLI commands the web UI starts besides training jobs (a sweep): each a ``python -m lorakit ...`` in a process
of its own, run through :mod:`lorakit.ui.runner` in ``<home>/tasks/<id>/`` (``task.json`` what it runs,
``train.log`` its output, ``runner.json`` its pids, ``exit.json`` its exit status). As for jobs, the state is derived
from those files every time the page looks: closing or restarting the UI never stops or loses a task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from lorakit.errors import LorakitError
from lorakit.ui.jobs import _read_json, alive, tail
from lorakit.ui.runner import write_json

STARTING_GRACE_S = 60.0  # a runner that has not written runner.json this long after the start is taken as dead


@dataclass(frozen=True)
class Task:
    id: int
    folder: Path
    kind: str             # "sweep", "sweep --resume"
    target: str           # the folder it writes (the sweep folder)
    command: list[str]
    state: str            # running, stopping, finished, stopped, failed
    note: str             # the refusal line of a failed command, or its last line

    @property
    def label(self) -> str:
        return f"{self.id}: {self.kind} {self.target} ({self.state})"


def _folder(home: Path) -> Path:
    return Path(home) / "tasks"


def start(home: Path, kind: str, target: Path, args: Sequence[str], *, python: str = sys.executable,
          env: Optional[dict[str, str]] = None) -> Task:
    """Start ``python -m lorakit ARGS`` detached (a session of its own) in a new task folder."""
    root = _folder(home)
    try:
        root.mkdir(parents=True, exist_ok=True)
        n = 1 + max([int(p.name) for p in root.iterdir() if p.name.isdigit()], default=0)
        while True:
            folder = root / str(n)
            try:
                folder.mkdir()  # one step: two tabs starting at once get two folders
                break
            except FileExistsError:
                n += 1
        command = [python, "-m", "lorakit", *args]
        write_json(folder / "task.json", {"kind": kind, "target": str(target), "command": command,
                                           "started_at": time.time()})
        full = dict(os.environ if env is None else env)
        full.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen([python, "-m", "lorakit.ui.runner", str(folder), "1", "--", *command], cwd=folder,
                                env=full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        raise LorakitError(f"cannot start {kind}: {exc.filename or root}: {exc.strerror or exc}; nothing was "
                           "started") from None
    _CHILDREN.append(proc)  # reaped by list_tasks (no zombie while the UI lives)
    return get(home, n)


_CHILDREN: list[subprocess.Popen] = []


def get(home: Path, task_id: int) -> Task:
    folder = _folder(home) / str(int(task_id))
    info = _read_json(folder / "task.json")
    if not info:
        raise LorakitError(f"task {task_id}: not found in {_folder(home)}")
    state, note = _state(folder, info)
    return Task(int(task_id), folder, str(info.get("kind", "?")), str(info.get("target", "")),
                list(info.get("command", [])), state, note)


def list_tasks(home: Path) -> list[Task]:
    """Newest first."""
    for proc in list(_CHILDREN):
        if proc.poll() is not None:
            _CHILDREN.remove(proc)
    root = _folder(home)
    ids = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True) if root.is_dir() else []
    out = []
    for i in ids:
        try:
            out.append(get(home, i))
        except LorakitError:  # a folder being made right now
            continue
    return out


def _state(folder: Path, info: dict) -> tuple[str, str]:
    stop = (folder / "stop").is_file()
    done = _read_json(folder / "exit.json")
    if done:
        rc = done.get("rc")
        if rc == 0:
            return "finished", ""
        log = tail(folder / "train.log", 40)
        errors = [ln.strip() for ln in log.splitlines() if ln.startswith("lorakit")]
        lines = [ln for ln in log.splitlines() if ln.strip() and not ln.startswith("===")]
        note = errors[-1] if errors else (lines[-1].strip() if lines else f"exit status {rc}")
        return ("stopped" if stop else "failed"), note
    runner = _read_json(folder / "runner.json")
    if runner and (alive(runner.get("runner_pid"), runner.get("runner_start"))
                   or alive(runner.get("child_pid"), runner.get("child_start"))):
        return ("stopping" if stop else "running"), ""
    if not runner and time.time() - float(info.get("started_at", 0)) < STARTING_GRACE_S:
        return "running", "starting"
    return ("stopped" if stop else "failed"), "ended without an exit status (killed, or the machine restarted)"


def stop(home: Path, task_id: int) -> Task:
    """SIGINT to the runner (passed on to the command: a sweep stops its point as Ctrl-C does, keeping its last
    checkpoint, and marks it interrupted); a second stop, 10 s or more after the first, sends SIGTERM."""
    task = get(home, task_id)
    if task.state not in ("running", "stopping"):
        raise LorakitError(f"task {task.id} is {task.state}; nothing to stop")
    flag = task.folder / "stop"
    sig = signal.SIGINT
    if flag.is_file():
        if time.time() - flag.stat().st_mtime < 10:
            raise LorakitError(f"task {task.id} is already stopping; wait for it to save")
        sig = signal.SIGTERM
    flag.write_text(str(time.time()))
    runner = _read_json(task.folder / "runner.json")
    if alive(runner.get("runner_pid"), runner.get("runner_start")):
        targets = [runner["runner_pid"]]
    elif alive(runner.get("child_pid"), runner.get("child_start")):
        targets = [runner["child_pid"]]
    else:
        targets = []
    for pid in targets:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return get(home, task_id)


def log_tail(task: Task, lines: int = 30) -> str:
    return tail(task.folder / "train.log", lines)

