"""The Train node's work: queue the run in the web UI's job store, follow it, hand back its LoRA.

A run started here is an ordinary lorakit job: the same SQLite store as ``lorakit ui`` (``$LORAKIT_HOME``), started
as ``python -m lorakit train run.toml`` by :mod:`lorakit.ui.runner` in a session of its own, so it shows in the web
UI's job list, writes an ordinary run folder, and resumes with ``lorakit train --resume RUN_DIR``. ComfyUI only
waits: it polls the run folder (progress bar on the node) and checks for Cancel between polls. Cancel either stops
the run the way the web UI's Stop does (SIGINT: the step finishes, the last complete checkpoint stays, resumable) or
leaves it training; a crash or restart of ComfyUI never reaches it.

Queueing the same settings again finds the same job (its run folder is named from the settings): a finished run is
returned at once, a running one is followed, a stopped one is resumed. Different settings in the same run folder
are refused, never mixed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from lorakit.errors import ConfigError, LorakitError

STOP_RUN = "stop the run (resumable)"
KEEP_RUNNING = "keep training in the background"
ENDED = ("finished", "failed", "stopped")


@dataclass(frozen=True)
class RunHandle:
    """What the Train node passes on (LORAKIT_RUN): the job and its run folder; nodes downstream read the folder."""

    job_id: int
    name: str
    run_dir: str
    home: str
    state: str
    lora_path: str = ""
    lora_name: str = ""
    step: int = 0


def _env() -> dict[str, str]:
    """The run's environment: ComfyUI's, plus lorakit's own folder on PYTHONPATH when lorakit is not installed in a
    site-packages (a linked source checkout), so ``python -m lorakit`` finds the same lorakit."""
    import lorakit

    env = dict(os.environ)
    root = Path(lorakit.__file__).resolve().parent.parent
    if root.name not in ("site-packages", "dist-packages"):
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(root) not in parts:
            env["PYTHONPATH"] = os.pathsep.join([str(root), *parts])
    return env


def job_store(home: Path) -> Any:
    from lorakit.ui.jobs import JobStore

    return JobStore(home, env=_env())


def start_or_attach(store: Any, toml_text: str) -> Any:
    """The job of these settings: found (followed, returned, or resumed when stopped) or queued anew."""
    from lorakit.ui.form import validate_toml

    cfg = validate_toml(toml_text)
    run_dir = (Path(cfg.save.dir) / cfg.save.name).resolve()
    for job in store.list():
        if job.run_dir != run_dir:
            continue
        try:
            same = job.toml_path.read_text(encoding="utf-8") == toml_text
        except OSError:
            same = False
        if not same:
            raise ConfigError(f"save.name: {run_dir} is the run of job {job.id} with other settings; nothing was "
                              "changed. Choose another save.name, or leave it empty for a name from the settings")
        job = store.reconcile_one(job)
        if job.state == "stopped":
            return store.resume(job.id)
        if job.state == "failed":
            first = (job.note or "the run failed").splitlines()[0]
            raise LorakitError(f"job {job.id} ({job.name}) failed: {first}. Nothing was restarted: resume it in the "
                               f"web UI or with `lorakit train --resume {run_dir}`, or change a setting")
        return job
    return store.add(toml_text)


def lora_file(run_dir: Path, name: str, step: int) -> Path:
    return run_dir / (f"{name}.safetensors" if step <= 0 else f"{name}-step{step:08d}.safetensors")


def _ready(job: Any, step: int) -> bool:
    return job.state in ENDED or (step > 0 and lora_file(job.run_dir, job.name, step).is_file())


def follow(store: Any, job: Any, *, step: int = 0, on_cancel: str = STOP_RUN, poll_s: float = 1.0,
           bar: Any = None, check: Optional[Callable[[], None]] = None) -> Any:
    """Poll until the run ends (or, with ``step``, until that step's LoRA is written), moving ``bar`` to the run's
    step. ``check`` raises when ComfyUI's Cancel was pressed: the run is then stopped (``STOP_RUN``) or left
    training (``KEEP_RUNNING``) before the exception goes on to ComfyUI."""
    from lorakit.ui.runs import progress

    while True:
        store.schedule()  # starts queued jobs whose device is free (the web UI does the same while open)
        job = store.reconcile_one(store.get(job.id))
        p = progress(job.run_dir)
        if bar is not None and p["max_steps"]:
            bar.update_absolute(min(p["step"], p["max_steps"]), p["max_steps"])
        if _ready(job, step):
            return job
        try:
            if check is not None:
                check()
        except BaseException:
            if on_cancel == STOP_RUN and job.state not in ENDED:
                store.stop(job.id)
            raise
        time.sleep(poll_s)


def link_into_loras(lora: Path, loras: Optional[Path]) -> str:
    """Link (or copy, where links are impossible) a LoRA into ComfyUI's loras folder as ``lorakit/<file>`` so that
    LoraLoader lists it; returns that name ("" outside ComfyUI). A different file already there is never
    replaced: the link gets a free name beside it."""
    import shutil

    if loras is None or not lora.is_file():
        return ""
    folder = loras / "lorakit"
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        dst = folder / (lora.name if n == 1 else f"{lora.stem}-{n}{lora.suffix}")
        if dst.exists() or dst.is_symlink():
            if dst.resolve() == lora.resolve():
                return os.path.join("lorakit", dst.name)
            continue
        try:
            os.symlink(lora.resolve(), dst)
        except OSError:
            shutil.copy2(lora, dst)
        return os.path.join("lorakit", dst.name)
    raise LorakitError(f"{folder}: no free name for {lora.name}")


def handle(store: Any, job: Any, step: int, loras: Optional[Path]) -> RunHandle:
    """The RunHandle of a job as it stands, with the LoRA file asked for (final, or ``step``) when it exists."""
    from lorakit.ui.runs import progress

    lora = lora_file(job.run_dir, job.name, step)
    return RunHandle(job_id=job.id, name=job.name, run_dir=str(job.run_dir), home=str(store.home), state=job.state,
                     lora_path=str(lora) if lora.is_file() else "",
                     lora_name=link_into_loras(lora, loras) if lora.is_file() else "",
                     step=int(progress(job.run_dir)["step"]))


def summary(run: RunHandle) -> str:
    from lorakit.ui.runs import fmt_seconds, progress

    p = progress(Path(run.run_dir))
    loss = f", loss {p['loss']:.4f}" if isinstance(p.get("loss"), float) else ""
    lines = [f"job {run.job_id} {run.name}: {run.state}, step {p['step']}/{p['max_steps'] or '?'}{loss}"
             + (f", ETA {fmt_seconds(p['eta_s'])}" if run.state == "running" and p.get("eta_s") else ""),
             f"run folder: {run.run_dir}",
             f"LoRA: {run.lora_path or '(not written yet)'}"]
    if run.lora_name:
        lines.append(f"in ComfyUI's loras folder as: {run.lora_name}")
    if run.state != "finished":
        lines.append(f"resume from a terminal: lorakit train --resume {run.run_dir}")
    return "\n".join(lines)


def ended_error(job: Any, step: int) -> Optional[str]:
    """Why a followed job gives no LoRA (failed, stopped, or the step asked for was never saved); None if it does."""
    if job.state == "failed":
        return f"job {job.id} ({job.name}) failed: {(job.note or '').splitlines()[0] if job.note else 'see its log'}"
    if job.state == "stopped":
        return (f"job {job.id} ({job.name}) was stopped: {(job.note or '').splitlines()[0] if job.note else ''}; "
                "queue the graph again to resume it")
    if not lora_file(job.run_dir, job.name, step).is_file():
        have = sorted(p.name for p in job.run_dir.glob(f"{job.name}*.safetensors"))
        return (f"step: {lora_file(job.run_dir, job.name, step).name} was not saved by job {job.id} (save.every_n_steps "
                f"and save.keep_last decide which are kept); the run has {', '.join(have) or 'no LoRA file'}")
    return None
