"""The Sweeps tab: a sweep folder's comparison (the ranking table, the grid image, the overlaid loss curves, the best
LoRA files to download) as `lorakit sweep` writes it; made on the spot (lorakit.sweep.report) when the folder has none
yet or its points moved on since. Sweeps are started from the command line (`lorakit sweep run.toml key=a,b ...`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError
from lorakit.ui import tasks


def comparison(folder: Path) -> dict[str, Any]:
    """ranking markdown, grid and curve paths and the points' states of the sweep in ``folder``."""
    from lorakit.sweep.report import write_report
    from lorakit.sweep.run import Sweep

    manifest = Sweep(folder).read()  # LorakitError when it is no sweep folder
    out = folder / "comparison"
    ranking = out / "ranking.md"
    stale = not ranking.is_file() or (folder / "sweep.json").stat().st_mtime > ranking.stat().st_mtime
    if stale:
        write_report(folder, log=lambda *_: None)
    states = ", ".join(f"{p['name']}: {p['state']}" for p in manifest["points"])
    best = [str(folder / f) for f in ("best.safetensors", "best-concept.safetensors") if (folder / f).is_file()]
    return {"markdown": ranking.read_text(encoding="utf-8") + f"\n\nPoints: {states}",
            "grid": str(out / "grid.png") if (out / "grid.png").is_file() else None,
            "curves": str(out / "loss_curves.png") if (out / "loss_curves.png").is_file() else None,
            "best": best or None}


def page(gr, state, u) -> None:
    gr.Markdown("A sweep trains one run per combination of settings and ranks them by validation loss, as "
                "`lorakit sweep run.toml optimizer.lr=5e-5,1e-4 network.rank=16,32 --steps N` does (docs/sweeps.md). "
                "Start one here (it runs as a process of its own, besides the job queue), or show a sweep folder's "
                "comparison.")
    with gr.Accordion("Start a sweep", open=True):
        with gr.Row():
            u.sw_config = gr.Textbox(label="Config (run.toml; e.g. the Train page's downloaded TOML)",
                                     elem_id="sw-config", scale=3)
            u.sw_steps = gr.Textbox(label="Steps of every point (--steps; empty: the config's)", elem_id="sw-steps",
                                    scale=1)
        u.sw_axes = gr.Textbox(label="Settings, one section.key=v1,v2,... a line (a single value sets every point)",
                               lines=3, placeholder="optimizer.lr=5e-5,1e-4\nnetwork.rank=16,32", elem_id="sw-axes")
        u.sw_out = gr.Textbox(label="Sweep folder (--out; empty: <save.dir>/<save.name>-sweep; must be new or empty)",
                              elem_id="sw-out")
        with gr.Row():
            u.sw_start = gr.Button("Start sweep", variant="primary", elem_id="sw-start")
            u.sw_resume = gr.Button("Resume the sweep in the Sweep folder below", elem_id="sw-resume")
        with gr.Row():
            u.sw_task = gr.Dropdown(label="Sweep task", choices=_task_choices(state), elem_id="sw-task", scale=3)
            u.sw_stop = gr.Button("Stop", elem_id="sw-stop", scale=1)
        u.sw_status = gr.HTML(elem_id="sw-status")
        u.sw_state = gr.HTML(elem_id="sw-state")  # the picked task's state (refreshed; the line above stays yours)
        u.sw_log = gr.Code(label="Its output (last lines)", language=None, elem_id="sw-log")
    with gr.Row():
        u.sw_dir = gr.Textbox(label="Sweep folder", value=str(state.home / "sweeps"), elem_id="sw-dir", scale=4)
        u.sw_show = gr.Button("Show comparison", elem_id="sw-show", scale=1)
    u.sw_table = gr.Markdown(elem_id="sw-table")
    u.sw_best = gr.File(label="Best LoRA (by validation loss; by concept rate on the toy world)", file_count="multiple",
                        interactive=False, elem_id="sw-best")
    with gr.Row():
        u.sw_grid = gr.Image(label="Samples (rows: settings, columns: prompts)", interactive=False,
                             elem_id="sw-grid")
        u.sw_curves = gr.Image(label="Training (solid) and validation (dashed) loss", interactive=False,
                               elem_id="sw-curves")


def _task_choices(state) -> list[tuple[str, str]]:
    return [(t.label, str(t.id)) for t in tasks.list_tasks(state.home) if t.kind.startswith("sweep")]


def _err(text: str) -> str:
    import html

    return f"<span class='lk-msg-error'>⚠ {html.escape(text)}</span>"


def _absolute_paths(axes: list[str]) -> list[str]:
    """``section.key=v1,v2`` lines with the relative values of path settings made absolute against the folder the UI
    was started from, as the command typed there would take them (the sweep runs in a task folder of its own)."""
    import json

    from lorakit.config.load import field_specs, parse_override
    from lorakit.config.validate import _resolve_one
    from lorakit.sweep.grid import parse_grid

    out = []
    for line in axes:
        parsed = parse_grid([line])
        key, values = next(iter(parsed.items()))
        section, _, name = key.partition(".")
        spec = field_specs().get(section, {}).get(name)
        if spec is None or spec.meta.get("kind") != "path":
            out.append(line)
            continue
        fixed = []
        for v in values:
            value = parse_override(f"{key}={v}")[1]
            fixed.append(json.dumps(_resolve_one(key, value, Path.cwd()))  # the CLI's rule (a hub id stays one)
                         if isinstance(value, str) and value.strip() else v)
        out.append(f"{key}={','.join(fixed)}")
    return out


def plan_sweep(state, config_text, axes_text, steps_text, out_text) -> tuple[Path, list[str]]:
    """The sweep folder and the `lorakit sweep` arguments of the form, after the checks the command makes (every
    point's config loads; the folder is new or empty) and, while the UI listens, the allowed folders. LorakitError
    (one line) otherwise; nothing is written."""
    import shutil
    import tempfile

    from lorakit.config.load import load_config
    from lorakit.config.toml_io import config_to_dict
    from lorakit.errors import ConfigError
    from lorakit.sweep.grid import parse_grid
    from lorakit.sweep.run import create, default_out
    from lorakit.ui import dataset as ds

    config = state.roots.check(config_text, "Config")
    if not config.is_file():
        raise LorakitError(f"Config: {config} is not a file; give the run.toml the sweep starts from (the Train "
                           "page's *Check + show* writes one to download)")
    axes = [line.strip() for line in (axes_text or "").splitlines() if line.strip()]
    if not axes:
        raise LorakitError("Settings: give at least one section.key=v1,v2 line, e.g. optimizer.lr=5e-5,1e-4")
    steps = None
    if (steps_text or "").strip():
        text = steps_text.strip()
        if not text.isdigit() or int(text) < 1:
            raise LorakitError(f"Steps: give a whole number of at least 1 (or leave it empty), got {text!r}")
        steps = int(text)
    axes = _absolute_paths(axes)
    parsed = parse_grid(axes)
    base = load_config(config, [f"{k}={v[0]}" for k, v in parsed.items() if len(v) == 1])
    root = state.roots.check(out_text, "Sweep folder") if (out_text or "").strip() else default_out(base).resolve()
    if state.roots.allowed is not None:
        state.roots.check(root, "Sweep folder")
        flat = {f"{sec}.{k}": v for sec, body in config_to_dict(base).items() if isinstance(body, dict)
                for k, v in body.items()}
        ds.check_config_paths(state.roots, flat)
        from lorakit.ui.app import _check_override_paths

        _check_override_paths(state.roots, [f"{k}={v}" for k, vals in parsed.items() for v in vals])
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        what = "a file" if not root.is_dir() else ("a sweep: resume it with the button below" if
                                                   (root / "sweep.json").is_file() else "not empty")
        raise LorakitError(f"Sweep folder: {root} is {what}; nothing was overwritten: give another Sweep folder")
    scratch = Path(tempfile.mkdtemp(prefix=".sweep-check-", dir=state.home))
    try:  # every point checked as `lorakit sweep` checks them, in a scratch folder removed again
        create(config, axes, steps=steps, out=scratch / "s")
    except ConfigError as exc:
        raise LorakitError(str(exc)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args = ["sweep", str(config), *axes, "--out", str(root)] + ([] if steps is None else ["--steps", str(steps)])
    return root, args


def events(gr, state, u) -> None:
    def show(text):
        try:
            folder = state.roots.check(text, "Sweep folder")
            state.allow(folder)
            found = comparison(folder)
        except LorakitError as exc:
            return f"⚠ {exc}", None, None, None
        return found["markdown"], found["grid"], found["curves"], found["best"]

    u.sw_show.click(show, [u.sw_dir], [u.sw_table, u.sw_grid, u.sw_curves, u.sw_best])

    def started(task, root) -> tuple:
        return (f"sweep started as task {task.id}: {root} (it runs on without this page; Show comparison when it "
                "ends, or while it runs)", gr.update(choices=_task_choices(state), value=str(task.id)),
                str(root))

    def start_sweep(config_text, axes_text, steps_text, out_text):
        """`lorakit sweep CONFIG AXES... --out DIR [--steps N]` as a task, after the command's own checks."""
        try:
            root, args = plan_sweep(state, config_text, axes_text, steps_text, out_text)
            task = tasks.start(state.home, "sweep", root, args)
        except LorakitError as exc:
            return _err(str(exc)), gr.update(), gr.update()
        return started(task, root)

    u.sw_start.click(start_sweep, [u.sw_config, u.sw_axes, u.sw_steps, u.sw_out], [u.sw_status, u.sw_task, u.sw_dir])

    def resume_sweep(folder_text):
        """`lorakit sweep --resume DIR` of the Sweep folder (its grid, steps and config come from its sweep.json)."""
        from lorakit.sweep.run import Sweep

        try:
            folder = state.roots.check(folder_text, "Sweep folder")
            manifest = Sweep(folder).read()
            if all(p.get("state") == "finished" for p in manifest["points"]):
                raise LorakitError(f"{folder}: every point of this sweep has finished; nothing to resume")
            busy = [t for t in tasks.list_tasks(state.home) if t.state in ("running", "stopping")
                    and Path(t.target) == folder]
            if busy:
                raise LorakitError(f"{folder}: task {busy[0].id} still runs this sweep; stop it first")
            task = tasks.start(state.home, "sweep --resume", folder, ["sweep", "--resume", str(folder)])
        except LorakitError as exc:
            return _err(str(exc)), gr.update(), gr.update()
        return started(task, folder)

    u.sw_resume.click(resume_sweep, [u.sw_dir], [u.sw_status, u.sw_task, u.sw_dir])

    def watch(pick):
        if not pick:
            return "", ""
        try:
            task = tasks.get(state.home, int(pick))
        except (LorakitError, ValueError) as exc:
            return _err(str(exc)), ""
        line = f"task {task.id}: {task.kind} {task.target}: {task.state}" + (f" — {task.note}" if task.note else "")
        import html

        return (_err(line) if task.state == "failed" else html.escape(line)), tasks.log_tail(task)

    u.sw_task.change(watch, [u.sw_task], [u.sw_state, u.sw_log])
    u.timer.tick(watch, [u.sw_task], [u.sw_state, u.sw_log])

    def stop(pick):
        try:
            if not pick:
                raise LorakitError("pick the sweep task to stop")
            task = tasks.stop(state.home, int(pick))
        except (LorakitError, ValueError) as exc:
            return _err(str(exc)), gr.update(choices=_task_choices(state))
        return (f"task {task.id}: asked to stop (the running point keeps its last checkpoint; Resume continues it)",
                gr.update(choices=_task_choices(state)))

    u.sw_stop.click(stop, [u.sw_task], [u.sw_status, u.sw_task])
