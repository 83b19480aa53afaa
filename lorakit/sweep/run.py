"""Running a sweep: the sweep folder, its manifest, and each point as a normal run.

Layout of a sweep folder::

    sweep.json            the manifest: base config, grid, steps, each point's state and results
    run.toml              the user's config as given (each point re-reads it with its overrides)
    <point>/              one normal run folder per point (config.toml, metrics.jsonl, samples/, LoRA, ...)
    comparison/           grid.png, loss_curves.png, ranking.md, ranking.json (lorakit.sweep.report)

The points run one after another in this process, or several at once as child `lorakit train` processes
(``--gpus 0,1``: one or more per card, as many as the memory plan fits; ``--parallel N`` on the CPU):
:mod:`lorakit.sweep.parallel`. A point's state in sweep.json is
``pending``, ``running``, ``interrupted``, ``finished`` or ``failed``; `lorakit sweep --resume DIR` keeps finished
and failed points, resumes an interrupted (or killed, still ``running``) one from its last checkpoint, and starts
the pending ones. A point that fails (a non-finite loss at a high learning rate, say) is recorded and the sweep goes
on; it ranks last.
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Optional

from lorakit.config.load import load_config
from lorakit.errors import ConfigError, LorakitError, TrainingError
from lorakit.fsutil import write_json, write_text
from lorakit.sweep.grid import Point, parse_grid, points

MANIFEST = "sweep.json"
SEQUENTIAL_NOTE = "points run one after another"


def _manifest_problem(m: Any) -> Optional[str]:
    """What makes a sweep.json unusable (None when its shape is the one :func:`create` writes)."""
    if not isinstance(m, dict):
        return f"a JSON {type(m).__name__}, not an object"
    for key, kind in (("config", str), ("grid", dict), ("points", list)):
        if not isinstance(m.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    for i, p in enumerate(m["points"]):
        if not isinstance(p, dict):
            return f"points[{i}] is not an object"
        for key, kind in (("name", str), ("label", str), ("state", str), ("settings", dict), ("overrides", list)):
            if not isinstance(p.get(key), kind):
                return f"points[{i}].{key} is missing or not a {kind.__name__}"
    return None


class Sweep:
    """A sweep folder and its manifest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / MANIFEST

    def read(self) -> dict[str, Any]:
        if self.root.exists() and not self.root.is_dir():
            raise LorakitError(f"{self.root}: a file, not a sweep folder; give the folder `lorakit sweep` made")
        try:
            manifest = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise LorakitError(f"{self.root}: no {MANIFEST}; is it a sweep folder (made by `lorakit sweep`)?") \
                from None
        except ValueError as exc:
            raise LorakitError(f"{self.path}: not readable JSON ({exc})") from None
        problem = _manifest_problem(manifest)
        if problem:  # every reader indexes it: a damaged one is one line here, not a KeyError/TypeError there
            raise LorakitError(f"{self.path}: damaged ({problem}); it is the sweep's record, written by `lorakit "
                               "sweep`: restore it from a copy, or run the sweep again with another --out")
        return manifest

    def write(self, manifest: dict[str, Any]) -> None:
        manifest["updated_at"] = time.time()
        write_json(self.path, manifest, indent=2)

    def set_point(self, manifest: dict[str, Any], name: str, **fields: Any) -> None:
        for p in manifest["points"]:
            if p["name"] == name:
                p.update(fields)
        self.write(manifest)

    def discard_untrained(self) -> bool:
        """Remove a new sweep folder none of whose points got a run folder (the first failed at its start, say on a
        wrong data.validation_dir), so the corrected command is not refused as "not empty": only when it holds
        nothing but what `lorakit sweep` wrote (sweep.json, run.toml, logs/). True when it is gone."""
        import shutil

        try:
            names = {p["name"] for p in self.read()["points"]}
            entries = list(self.root.iterdir())
        except (LorakitError, OSError, KeyError, TypeError):
            return False
        from lorakit.train.rundir import LOCK_NAME

        if any(e.name in names or e.name not in (MANIFEST, "run.toml", "logs", LOCK_NAME) for e in entries):
            return False
        for e in entries:
            shutil.rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()
        self.root.rmdir()
        return True

    def source(self, manifest: dict[str, Any]) -> tuple[Path, dict]:
        """The user's config path (relative paths resolve against its folder) and its text as the sweep began.
        walk8: the sweep folder's run.toml must still be that text (every point runs with it; the finished ones did):
        an edited or missing one is refused in one line (before: an edit changed the points not yet run, silently,
        and a missing one was a traceback)."""
        path = self.root / "run.toml"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LorakitError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc}); it is the config "
                               "every point of the sweep runs with: restore it (the sweep began from "
                               f"{manifest['config']}), or start a new sweep with another --out") from None
        sha = manifest.get("config_sha256")
        if isinstance(sha, str) and hashlib.sha256(text.encode()).hexdigest() != sha:
            raise LorakitError(f"{path}: changed since the sweep began; every point must run with the config the "
                               "others ran with, so nothing was run: restore it (the sweep began from "
                               f"{manifest['config']}), or start a new sweep with another --out")
        return Path(manifest["config"]), tomllib.loads(text)

    def point_config(self, manifest: dict[str, Any], point: dict[str, Any]):
        path, data = self.source(manifest)
        return load_config(path, point_overrides(self.root, manifest, point), data=data)


def point_overrides(root: Path, manifest: dict[str, Any], point: dict[str, Any]) -> list[str]:
    extra = [f"training.max_steps={manifest['steps']}"] if manifest.get("steps") else []
    return [*manifest.get("overrides", []), *point["overrides"], *extra, f"save.dir={json.dumps(str(root))}",
            f"save.name={json.dumps(point['name'])}"]


def default_out(cfg) -> Path:
    return Path(cfg.save.dir) / f"{cfg.save.name}-sweep"


def create(config: Path, grid_items: list[str], *, steps: Optional[int] = None, out: Optional[Path] = None,
           base_overrides: tuple[str, ...] = ()) -> Sweep:
    """Check every point's config (before anything runs), then write the sweep folder and its manifest."""
    config = Path(config).resolve()
    if not config.is_file():
        raise ConfigError(f"sweep: {config} not found")
    if steps is not None and steps < 1:
        raise ConfigError(f"sweep: --steps must be at least 1, got {steps}")
    parsed = parse_grid(grid_items)
    if steps is not None and "training.max_steps" in parsed:  # both would set every point's steps: one wins silently
        raise ConfigError(f"sweep: --steps {steps} and training.max_steps={','.join(parsed['training.max_steps'])} "
                          "both set the steps; give one of them")
    # a key with one value is a plain override of every point, not an axis of the grid
    base_overrides = tuple(base_overrides) + tuple(f"{k}={v[0]}" for k, v in parsed.items() if len(v) == 1)
    grid = {k: v for k, v in parsed.items() if len(v) > 1}
    if not grid:
        raise ConfigError("sweep: no key has two or more values; give e.g. optimizer.lr=5e-5,1e-4")
    pts = points(grid)
    text = config.read_text()
    base = load_config(config, list(base_overrides))
    root = Path(out).resolve() if out else default_out(base).resolve()
    if root.exists() and not root.is_dir():
        raise LorakitError(f"--out {root} is a file, not a folder; nothing was overwritten: choose another --out")
    if root.exists() and any(root.iterdir()):
        resume = (f"Continue a sweep there with `lorakit sweep --resume {root}`, or choose" if
                  (root / "sweep.json").is_file() else "It holds no sweep (no sweep.json): choose")
        raise LorakitError(f"{root} is not empty; nothing was overwritten. {resume} another --out")
    manifest: dict[str, Any] = {
        "version": 1, "config": str(config), "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "overrides": list(base_overrides), "grid": grid, "steps": steps, "execution": SEQUENTIAL_NOTE,
        "created_at": time.time(),
        "points": [{"name": p.name, "settings": dict(p.settings), "overrides": p.overrides, "label": p.label(),
                    "state": "pending"} for p in pts],
    }
    sweep = Sweep(root)
    data = tomllib.loads(text)
    for p in manifest["points"]:  # every point must load: a bad value is refused before the first run
        try:
            load_config(config, point_overrides(root, manifest, p), data=data)
        except ConfigError as exc:
            raise ConfigError(f"sweep point {p['label']}: {exc}") from None
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / "run.toml", text)
    sweep.write(manifest)
    return sweep


def run_sweep(sweep: Sweep, *, log: Callable[[str], None] = print, train_fn=None, gpus: Optional[list[str]] = None,
              parallel: Optional[int] = None) -> dict[str, Any]:
    """Run (or continue) every point not yet finished or failed; then write the comparison. ``gpus`` / ``parallel``:
    where the points run (:func:`lorakit.sweep.parallel.layout`); None: as the sweep last ran (sweep.json).

    The sweep folder is locked while this process runs it (walk8: a second ``sweep --resume`` of a running sweep
    marked its running point "failed" with the point's "in use" error and trained the next one alongside, both
    processes writing sweep.json); a second is refused in one line naming the first."""
    from lorakit.fsutil import FileLock, LockHeld, describe_holder
    from lorakit.train.rundir import LOCK_NAME

    sweep.read()  # not a sweep folder (or none at all): said before a lock file is made in it
    lock = FileLock(sweep.root / LOCK_NAME)
    try:
        lock.acquire(sweep=str(sweep.root.resolve()))
    except LockHeld as exc:
        raise LorakitError(f"{sweep.root} is in use: another `lorakit sweep` runs it ({describe_holder(exc.holder)}); "
                           "wait for it to end or stop it, then try again") from None
    try:
        return _run_sweep(sweep, log=log, train_fn=train_fn, gpus=gpus, parallel=parallel)
    finally:
        lock.release()


def _run_sweep(sweep: Sweep, *, log: Callable[[str], None], train_fn, gpus: Optional[list[str]],
               parallel: Optional[int]) -> dict[str, Any]:
    from lorakit.sweep import parallel as par
    from lorakit.sweep.report import write_report

    manifest = sweep.read()
    todo = [p for p in manifest["points"] if p["state"] not in ("finished", "failed")]
    launch = manifest.get("launch") or {}
    gpus = gpus if gpus is not None else launch.get("gpus")
    parallel = parallel if parallel is not None else launch.get("parallel")
    cfgs = [sweep.point_config(manifest, p) for p in todo]  # where they run: the points' configs as the sweep made them
    lay = par.layout(cfgs, gpus=gpus, parallel=parallel) if todo else \
        par.Layout((par.Slot(None),), (), SEQUENTIAL_NOTE, True)
    manifest.update(launch={"gpus": gpus, "parallel": parallel}, execution=lay.line)
    sweep.write(manifest)
    log(f"sweep {sweep.root}: {len(manifest['points'])} points, {len(todo)} to run; {lay.line}")
    if not lay.in_process:
        par.run_children(sweep, manifest, todo, lay, log=log)
        return write_report(sweep.root, log=log)
    if train_fn is None:
        from lorakit.train.loop import train as train_fn
    for i, point in enumerate(todo, 1):
        run_dir = sweep.root / point["name"]
        if run_status(run_dir).get("status") == "finished":  # killed after the run ended, before the manifest knew
            sweep.set_point(manifest, point["name"], state="finished", finished_at=time.time())
            continue
        resume = (run_dir / "config.toml").is_file()
        log(f"[{i}/{len(todo)}] {point['name']}: {point['label']}" + (" (resuming)" if resume else ""))
        cfg = load_config(run_dir / "config.toml") if resume else sweep.point_config(manifest, point)
        sweep.set_point(manifest, point["name"], state="running", started_at=time.time())
        try:
            train_fn(cfg, resume=resume, log=log)
        except KeyboardInterrupt:
            sweep.set_point(manifest, point["name"], state="interrupted")
            raise KeyboardInterrupt(f"sweep interrupted during {point['name']}; `lorakit sweep --resume "
                                    f"{sweep.root}` continues it") from None
        except TrainingError as exc:
            sweep.set_point(manifest, point["name"], state="failed", error=str(exc))
            log(f"point {point['name']} failed: {exc}")
            continue
        except LorakitError as exc:  # the data or the model, not the point's settings: stop; a resume retries it
            sweep.set_point(manifest, point["name"], state="pending", error=str(exc))
            raise
        sweep.set_point(manifest, point["name"], state="finished", finished_at=time.time(), error=None)
    result = write_report(sweep.root, log=log)
    return result


def run_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
