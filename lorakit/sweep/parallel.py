"""Several sweep points at once: each a child ``lorakit train`` process, one or more per card.

Where the points run (:func:`slots`):

* ``--gpus 0,1``: each card named (as ``CUDA_VISIBLE_DEVICES`` numbers them) runs points at once, each child with
  ``CUDA_VISIBLE_DEVICES`` set to its card. How many per card is the memory plan's answer (:func:`per_card`): each
  point is planned for the card (:func:`lorakit.train.planview.plan_for`, the planner a run uses, on the full-size
  model built on the meta device) and as many run at once as their planned peaks fit the card's free memory; each
  child then plans within its share (``memory.vram_gb`` = free / k), where the same fastest setting still fits.
* no ``--gpus`` on a CUDA run: the same on the current card (one point at a time in this process when one fits).
* on the CPU: ``--parallel N`` processes at once (default 1: one after another in this process). Each child gets
  ``OMP_NUM_THREADS`` = cores / N unless it is set; the LoRA of a point equals its LoRA run alone with the same
  thread count (tested bit for bit with one thread).
* ``--parallel N`` also caps the points per card on GPUs.

This process is the only writer of sweep.json (atomic writes): it starts children, polls them and records each
outcome, so the manifest stays consistent whichever finishes first. Ctrl-C / SIGTERM stops every child as `lorakit
train` stops (its last checkpoint kept) and marks them ``interrupted``; a kill of this process reaches the children
as SIGTERM (Linux: the parent-death signal). `lorakit sweep --resume DIR` then resumes each from its checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lorakit.errors import ConfigError, LorakitError

POLL_S = 0.5          # how often the children are polled
STOP_WAIT_S = 120.0   # how long a stopped child may take to finish its step and exit before it is killed


@dataclass(frozen=True)
class Slot:
    """A place one point runs: ``card`` is the CUDA_VISIBLE_DEVICES value of its card (None: the CPU)."""

    card: Optional[str]
    index: int = 0


@dataclass(frozen=True)
class Layout:
    """Where the points of this sweep run: the slots, the extra overrides of each child, and the log line."""

    slots: tuple[Slot, ...]
    overrides: tuple[str, ...]
    line: str
    in_process: bool


def parse_gpus(text: Optional[str]) -> Optional[list[str]]:
    """``"0,1"`` → ["0", "1"]; None when not given. Each a card number as CUDA_VISIBLE_DEVICES numbers them."""
    if text is None:
        return None
    ids = [s.strip() for s in str(text).split(",")]
    if not ids or any(not s.isdigit() for s in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"sweep --gpus {text}: give card numbers separated by commas, each once (e.g. --gpus 0,1)")
    return ids


def physical(ids: list[str]) -> list[str]:
    """Card numbers as this process sees them → the values a child's CUDA_VISIBLE_DEVICES needs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return ids
    names = [s.strip() for s in visible.split(",") if s.strip()]
    out = []
    for i in ids:
        if int(i) >= len(names):
            raise ConfigError(f"sweep --gpus {i}: CUDA_VISIBLE_DEVICES={visible} shows {len(names)} card(s), "
                              f"numbered 0-{len(names) - 1}")
        out.append(names[int(i)])
    return out


def per_card(cfgs: Sequence[Any], card: Any, cap: Optional[int] = None,
             plan_for: Optional[Callable] = None) -> tuple[int, Optional[float], str]:
    """How many of these points run at once on ``card`` (CardFacts), the ``memory.vram_gb`` share each then plans
    within (None: left as configured), and the log line that says why. ``plan_for(cfg, card)`` → (Plan or None,
    log lines): :func:`lorakit.train.planview.plan_for` unless given."""
    from lorakit.config.load import explicit_keys

    if plan_for is None:
        from lorakit.train.planview import plan_for
    room = math.floor(card.free_gib * 10) / 10
    peaks = []
    for cfg in cfgs:
        if not getattr(cfg.memory, "auto", True):
            return 1, None, "memory.auto = false: the memory plan cannot say what a point needs; one point per card"
        try:
            plan, lines = plan_for(cfg, card)
        except ConfigError as exc:
            return 1, None, f"the memory plan cannot size a point ({exc}); one point per card"
        if plan is None:
            return 1, None, f"{lines[-1] if lines else 'no memory plan'}; one point per card"
        peaks.append(plan.estimate_gib)
    peak = max(peaks)
    user_room = any("memory.vram_gb" in explicit_keys(c) for c in cfgs)
    k = max(1, int(room // peak)) if peak > 0 else 1
    k = min(k, len(cfgs), cap or k)
    share = None if k == 1 or user_room else math.floor(room / k * 10) / 10
    line = (f"memory plan: each point's planned peak is at most {peak:.1f} GiB; {room:g} GiB free on {card.name}: "
            f"{k} point(s) at once per card" + (f" (each planned within memory.vram_gb = {share:g}; they share the "
                                                 "card's compute)" if share else
                                                 " (memory.vram_gb as you set it)" if k > 1 else ""))
    return k, share, line


def layout(cfgs: Sequence[Any], *, gpus: Optional[list[str]], parallel: Optional[int]) -> Layout:
    """Where the points run (see the module doc); ``cfgs``: the configs of the points still to run."""
    if parallel is not None and parallel < 1:
        raise ConfigError(f"sweep --parallel must be at least 1, got {parallel}")
    devices = {str(c.training.device) for c in cfgs}
    wants_cuda = any(d.startswith("cuda") for d in devices)
    cuda = False
    if gpus is not None or wants_cuda or "auto" in devices:
        import torch

        cuda = torch.cuda.is_available()
    if gpus is not None:
        if not cuda:
            raise ConfigError("sweep --gpus: no CUDA GPU here; on the CPU, --parallel N runs N points at once")
        if "cpu" in devices:
            raise ConfigError("sweep --gpus: the points set training.device = cpu; remove --gpus or the device")
    if not cuda or "cpu" in devices:
        n = parallel or 1
        if n == 1:
            return Layout((Slot(None),), (), "points run one after another in this process (on the CPU; "
                          "--parallel N runs N at once)", True)
        return Layout(tuple(Slot(None, i) for i in range(n)), (),
                      f"{n} points at once on the CPU, each a `lorakit train` process", False)
    import torch

    from lorakit.train import cards

    ids = gpus if gpus is not None else [str(torch.cuda.current_device())]
    for i in ids:
        if int(i) >= torch.cuda.device_count():
            raise ConfigError(f"sweep --gpus {i}: this machine shows {torch.cuda.device_count()} CUDA card(s)")
    facts = [cards.local_card(torch.device(f"cuda:{i}")) for i in ids]
    tightest = min(facts, key=lambda f: f.free_bytes)
    k, share, why = per_card(cfgs, tightest, parallel)
    if gpus is None and k == 1:
        return Layout((Slot(None),), (), f"points run one after another in this process; {why}", True)
    slots = tuple(Slot(card, j) for j in range(k) for card in physical(ids))
    extra = ("training.device=cuda",) + ((f"memory.vram_gb={share:g}",) if share else ())
    return Layout(slots, extra, f"{len(slots)} point(s) at once on card(s) {','.join(ids)}, each a `lorakit "
                  f"train` process; {why}", False)


def _pdeathsig() -> None:  # in the child, before exec: the parent's death (a kill) reaches it as SIGTERM
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def config_unchanged(manifest: dict[str, Any]) -> None:
    """A child re-reads the user's config file itself: it must still be the text the sweep began with."""
    path = Path(manifest["config"])
    try:
        now = hashlib.sha256(path.read_text().encode()).hexdigest()
    except OSError as exc:
        raise LorakitError(f"sweep: {path}: cannot be read ({exc.strerror}); the points in their own processes "
                           "read it") from None
    if now != manifest["config_sha256"]:
        raise LorakitError(f"sweep: {path} changed since the sweep began (its text then: "
                           f"{path.name} → the sweep folder's run.toml); restore it to run points in their own "
                           "processes, or run them one after another (no --parallel / --gpus)")


def child_command(root: Path, manifest: dict[str, Any], point: dict[str, Any], resume: bool,
                  extra: Sequence[str]) -> list[str]:
    from lorakit.sweep.run import point_overrides

    if resume:
        return [sys.executable, "-m", "lorakit", "train", "--resume", str(root / point["name"])]
    return [sys.executable, "-m", "lorakit", "train", manifest["config"],
            *point_overrides(root, manifest, point), *extra]


def child_env(slot: Slot, n_slots: int) -> dict[str, str]:
    env = dict(os.environ)
    if slot.card is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.card
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_slots))
    return env


def last_error(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errs = [ln for ln in lines if ln.startswith("lorakit:")]
    return (errs[-1] if errs else (lines[-1] if lines else "no output")).removeprefix("lorakit: error: ")


def run_children(sweep, manifest: dict[str, Any], todo: list[dict[str, Any]], lay: Layout, *,
                 log: Callable[[str], None] = print, launch: Callable[..., Any] = subprocess.Popen) -> None:
    """Run ``todo`` in child processes over ``lay.slots``; record each outcome in the manifest as it comes."""
    from lorakit.sweep.run import run_status

    root = sweep.root
    if any(not (root / p["name"] / "config.toml").is_file() for p in todo):  # a fresh point reads the config file
        config_unchanged(manifest)
    (root / "logs").mkdir(exist_ok=True)
    queue = list(todo)
    free = list(lay.slots)
    running: dict[str, tuple[Any, Slot, Path]] = {}
    total, started = len(todo), 0

    def stop_all(reason: str) -> None:
        for p, _, _ in running.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for name, (p, _, _) in list(running.items()):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            done = run_status(root / name).get("status") == "finished"
            sweep.set_point(manifest, name, state="finished" if done else "interrupted",
                            **({"finished_at": time.time()} if done else {"error": reason}))
        running.clear()

    try:
        while queue or running:
            while queue and free:
                point = queue.pop(0)
                run_dir = root / point["name"]
                if run_status(run_dir).get("status") == "finished":  # killed after the run ended
                    sweep.set_point(manifest, point["name"], state="finished", finished_at=time.time())
                    continue
                slot = free.pop(0)
                resume = (run_dir / "config.toml").is_file()
                started += 1
                where = f"card {slot.card}" if slot.card is not None else "CPU"
                logfile = root / "logs" / f"{point['name']}.log"
                log(f"[{started}/{total}] {point['name']}: {point['label']} on {where}"
                    + (" (resuming)" if resume else "") + f"; its output: {logfile}")
                with open(logfile, "a", encoding="utf-8") as out:
                    p = launch(child_command(root, manifest, point, resume, lay.overrides), stdout=out,
                               stderr=subprocess.STDOUT, env=child_env(slot, len(lay.slots)),
                               start_new_session=True, preexec_fn=_pdeathsig if sys.platform == "linux" else None)
                running[point["name"]] = (p, slot, logfile)
                sweep.set_point(manifest, point["name"], state="running", started_at=time.time(), pid=p.pid,
                                card=slot.card)
            time.sleep(POLL_S)
            for name, (p, slot, logfile) in list(running.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del running[name]
                free.append(slot)
                status = run_status(root / name)
                if rc == 0 and status.get("status") == "finished":
                    sweep.set_point(manifest, name, state="finished", finished_at=time.time(), error=None)
                    log(f"point {name} finished")
                elif status.get("status") == "failed":
                    sweep.set_point(manifest, name, state="failed", error=status.get("error") or last_error(logfile))
                    log(f"point {name} failed: {status.get('error') or last_error(logfile)}")
                elif rc == 130 or rc < 0:  # stopped from outside (a kill, the OOM killer): resumable
                    sweep.set_point(manifest, name, state="interrupted", error=f"stopped (exit {rc})")
                    log(f"point {name} stopped (exit {rc}); `lorakit sweep --resume {root}` resumes it")
                else:  # the data or the model, not the point's settings: stop the sweep; a resume retries it
                    err = last_error(logfile)
                    sweep.set_point(manifest, name, state="pending", error=err)
                    stop_all(f"stopped: {name} failed")
                    raise LorakitError(f"sweep point {name}: {err} (its output: {logfile}); the other points were "
                                       f"stopped; `lorakit sweep --resume {root}` continues after a fix")
    except KeyboardInterrupt:
        names = ", ".join(running) or "none"
        stop_all("interrupted")
        raise KeyboardInterrupt(f"sweep interrupted (running: {names}); `lorakit sweep --resume {root}` continues "
                                "it") from None
