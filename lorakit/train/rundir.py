"""The run folder <save.dir>/<save.name>/: what lives where, and never overwriting a user's earlier run.

Layout::

    <name>.safetensors                 final LoRA
    <name>-step00000500.safetensors    step checkpoints (the last save.keep_last kept)
    state/step00000500/                resume state (LoRA, optimizer, scheduler, RNG, data position)
    samples/                           preview PNGs and the before/after grid
    metrics.jsonl  loss.png  tensorboard/  config.toml  data_report.json  run.json
    .lorakit.lock                      the OS lock of the process training in the folder (pid, host, start)
    .lorakit.claim                     a queued web UI / ComfyUI job's reservation of the folder (:func:`claim`);
                                       the job's run removes it when it starts
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from lorakit.errors import TrainingError
from lorakit.fsutil import TEMP_RE, FileLock, LockHeld, _pid_alive, describe_holder, remove_stale_temps, write_json

STATE_RE = re.compile(r"^step(\d{8})$")
LOCK_NAME = ".lorakit.lock"
CLAIM_NAME = ".lorakit.claim"
CLAIM_ENV = "LORAKIT_RUN_CLAIM"  # the claim token a job's run is started with (the web UI / ComfyUI job store)
_BOOKKEEPING = (LOCK_NAME, CLAIM_NAME)
# the files lorakit writes at the top of a run folder; a ``*.tmp`` named after one of them (older writers:
# ``run.json.tmp``, ``.data_report.json.<x>.tmp``, ``<name>-step….safetensors.<x>.tmp``) is a leftover of a kill
OWN_FILES = ("run.json", "data_report.json", "metrics.jsonl", "config.toml", "plan.json", "loss.png")
STATE_TEMP_RE = re.compile(r"^step\d{8}\.(tmp|old)-(\d+)$")


class RunDir:
    """Paths and bookkeeping of one run folder."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = Path(root).absolute()  # run.json names files that any working directory finds
        self.name = name
        self.samples = self.root / "samples"
        self.state_root = self.root / "state"

    # --------------------------------------------------------------------------------------- lifecycle
    def create(self) -> None:
        """Start a new run; refuse to reuse a folder that holds an earlier run's files. The folder is locked
        (:meth:`lock`) before it is checked a second time, so of two new runs racing for one folder one wins and
        the other is refused naming it."""
        self._refuse_if_used()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where a folder should be, no permission, a read-only or virtual file system
            raise TrainingError(f"save.dir: cannot create the run folder {self.root} ({exc.strerror or exc}: "
                                f"{exc.filename or self.root}); set save.dir to a folder you can write") from None
        self.lock()
        try:
            self._refuse_if_used()
            self._take_claim()
        except TrainingError:
            self.unlock()
            raise
        self.samples.mkdir(exist_ok=True)
        self.state_root.mkdir(exist_ok=True)

    def _refuse_if_used(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise TrainingError(f"{self.root} is a file, not a run folder; nothing was overwritten. Choose another "
                                "save.name / save.dir.")
        if holds_files(self.root):
            raise TrainingError(
                f"{self.root} already holds a run; nothing was overwritten. Continue it with "
                f"`lorakit train --resume {self.root}`, or choose another save.name / save.dir.")

    def _take_claim(self) -> None:
        """A folder a queued job reserved (:func:`claim`) is this run's only when the job started it (its token in
        ``$LORAKIT_RUN_CLAIM``); the reservation then ends, the lock and the run's files guard the folder."""
        path = self.root / CLAIM_NAME
        if not path.exists():
            return
        held = read_claim(self.root)
        if not held.get("token") or held.get("token") != os.environ.get(CLAIM_ENV):
            raise TrainingError(f"{self.root} is reserved for {held.get('owner') or 'a queued job'}; nothing was "
                                "changed. Choose another save.name / save.dir (if that job no longer exists, delete "
                                f"{path})")
        path.unlink(missing_ok=True)

    def lock(self) -> None:
        """Hold the run folder's OS lock while this process trains in it (released on any exit, a kill included);
        a second process is refused in one line naming the holder."""
        if getattr(self, "_lock", None) is not None and self._lock.held:
            return
        lock = FileLock(self.root / LOCK_NAME)
        try:
            lock.acquire(folder=str(self.root.resolve()))
        except LockHeld as exc:
            raise TrainingError(f"{self.root} is in use: another lorakit process trains in it "
                                f"({describe_holder(exc.holder)}); wait for it to end or stop it, then try again"
                                ) from None
        self._lock = lock

    def unlock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def clean_temps(self) -> list[Path]:
        """Remove what a killed lorakit left in the run folder: the atomic writer's temp files whose writer is gone
        (root, samples/), older writers' ``*.tmp`` named after a run file, and half-written resume states
        (``state/stepN.tmp-<pid>``). A state moved aside by a save (``stepN.old-<pid>``) goes back to ``stepN``
        when the kill came before the new one took its place. Only lorakit's own temp names are touched."""
        locked = getattr(self, "_lock", None) is not None and self._lock.held
        removed = remove_stale_temps(self.root, others_dead=locked) + remove_stale_temps(self.samples,
                                                                                        others_dead=locked)
        own = (self.name + ".safetensors", self.name + "-step") + OWN_FILES
        for p in self.root.iterdir() if self.root.is_dir() else []:
            bare = p.name.lstrip(".")
            if (p.is_file() and p.name.endswith(".tmp") and not TEMP_RE.match(p.name)
                    and any(bare.startswith(o) for o in own)):
                p.unlink(missing_ok=True)
                removed.append(p)
        for p in sorted(self.state_root.iterdir()) if self.state_root.is_dir() else []:
            m = STATE_TEMP_RE.match(p.name)
            pid = int(m.group(2)) if m else 0
            if not m or pid == os.getpid() or (not locked and _pid_alive(pid)):
                continue  # not a temp name, this process's own save, or maybe a live writer's
            final = p.with_name(p.name.split(".")[0])
            if m.group(1) == "old" and not final.exists() and (p / "COMPLETE").exists():
                os.replace(p, final)  # the kill fell between the two renames of a save: the old state returns
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        return removed

    def discard(self) -> bool:
        """Remove a run folder that a failed start left with nothing of value (no LoRA file, no complete resume
        state), so the corrected command starts cleanly; returns whether it was removed. Caches live outside."""
        if not self.root.is_dir() or self.complete_states() or any(self.root.glob("*.safetensors")):
            self.unlock()
            return False
        shutil.rmtree(self.root, ignore_errors=True)
        self.unlock()
        return not self.root.exists()

    def lora_path(self, step: Optional[int] = None) -> Path:
        if step is None:
            return self.root / f"{self.name}.safetensors"
        return self.root / f"{self.name}-step{step:08d}.safetensors"

    def state_path(self, step: int) -> Path:
        return self.state_root / f"step{step:08d}"

    def complete_states(self) -> list[Path]:
        """Complete resume states, oldest first (half-written ones from a kill mid-save are ignored)."""
        if not self.state_root.is_dir():
            return []
        found = sorted((int(m.group(1)), p) for p in self.state_root.iterdir()
                       if (m := STATE_RE.match(p.name)) and (p / "COMPLETE").exists())
        return [p for _, p in found]

    def latest_state(self) -> Optional[Path]:
        """The newest complete resume state (incomplete ones, e.g. from a kill mid-save, are ignored)."""
        states = self.complete_states()
        return states[-1] if states else None

    def prune(self, keep_last: int) -> None:
        """Keep the newest ``keep_last`` step checkpoints and resume states; leftovers of killed saves go too."""
        ckpts = sorted(self.root.glob(f"{glob_escape(self.name)}-step*.safetensors"))
        for old in ckpts[:-keep_last]:
            old.unlink(missing_ok=True)
        states = sorted(p for p in self.state_root.iterdir() if STATE_RE.match(p.name)) \
            if self.state_root.is_dir() else []
        complete = [p for p in states if (p / "COMPLETE").exists()]
        for old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        self.clean_temps()

    def session(self) -> tuple[str, float]:
        """(session id, start time) of this run, created on first use and kept across resumes."""
        data = self.read_status()
        if not isinstance(data.get("session_id"), str) or not isinstance(data.get("started_at"), (int, float)):
            import uuid

            self.write_status(session_id=uuid.uuid4().hex, started_at=time.time())
            data = self.read_status()
        return data["session_id"], float(data["started_at"])

    def read_status(self) -> dict:
        """run.json as a dict; {} when it is missing, empty or damaged (what :meth:`status_problem` reports)."""
        try:
            data = json.loads((self.root / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def status_problem(self) -> Optional[str]:
        """Why run.json cannot be read (None when it is fine or absent): a resume says so and rewrites it."""
        path = self.root / "run.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"{path} is empty or damaged ({type(exc).__name__}: {str(exc)[:80]}); it is written anew"
        return None if isinstance(data, dict) else f"{path} holds no JSON object; it is written anew"

    def write_status(self, **fields: Any) -> None:
        """Update run.json (atomic and fsynced, :func:`lorakit.fsutil.write_json`); a damaged one is replaced."""
        data = self.read_status()
        data.update(fields, updated_at=time.time(), pid=os.getpid())
        if fields.get("status") in ("running", "finished") and "error" not in fields:
            data.pop("error", None)  # how an earlier attempt stopped is no longer the run's state
        write_json(self.root / "run.json", data)


def claim(root: Path, owner: str, token: str) -> None:
    """Reserve the run folder ``root`` for a queued job in one step: the folder is made if missing and
    ``.lorakit.claim`` is created exclusively (``O_EXCL``), so of two faces (the web UI, the ComfyUI nodes, each with
    its own queue) queueing a run into one folder at the same moment exactly one wins; the other gets one
    TrainingError line naming the owner. A folder that already holds files is refused (the claim is released).
    ``token`` is what the job's run is started with (``$LORAKIT_RUN_CLAIM``, :meth:`RunDir.create`)."""
    root = Path(root).absolute()
    path = root / CLAIM_NAME
    for _ in range(3):  # a racing claimant that lost may remove the folder it made between our mkdir and open
        if root.exists() and not root.is_dir():
            raise TrainingError(f"{root} is a file, not a run folder; nothing was overwritten. Choose another "
                                "save.name / save.dir.")
        made = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            if path.exists():
                held = read_claim(root)
                raise TrainingError(
                    f"{root} is already the output folder of {held.get('owner') or 'another queued job'}; nothing was "
                    f"changed. Choose another save.name / save.dir (if that job no longer exists, delete {path})"
                ) from None
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise TrainingError(f"cannot create the run folder {root} ({exc.strerror or exc}); set save.dir to a "
                                "folder you can write") from None
    else:
        raise TrainingError(f"cannot create the run folder {root} (it keeps vanishing); try again")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"owner": owner, "token": token, "pid": os.getpid(), "made": made, "created": time.time()}, fh)
    if holds_files(root):
        release_claim(root, token)
        raise TrainingError(f"{root} already holds a run; nothing was overwritten. Choose another save.name / "
                            "save.dir")


def holds_files(root: Path) -> bool:
    """Whether the folder ``root`` holds anything besides lorakit's lock and claim markers."""
    root = Path(root)
    return root.is_dir() and any(p.name not in _BOOKKEEPING for p in root.iterdir())


def read_claim(root: Path) -> dict:
    """What ``.lorakit.claim`` in ``root`` says ({} when absent, empty or damaged)."""
    try:
        data = json.loads((Path(root) / CLAIM_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def release_claim(root: Path, token: str) -> bool:
    """End ``token``'s claim on ``root`` (another's is left alone); the folder goes too when the claim made it and it
    is empty. True when a claim was released."""
    root = Path(root)
    held = read_claim(root)
    if not token or held.get("token") != token:
        return False
    (root / CLAIM_NAME).unlink(missing_ok=True)
    if held.get("made"):
        try:
            root.rmdir()  # only an empty folder: a run that started meanwhile keeps everything
        except OSError:
            pass
    return True


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)
