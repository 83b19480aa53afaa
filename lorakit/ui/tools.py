"""The LoRA tools tab (`lorakit verify`, `convert`, `resize`, `merge`) and the Push tab (`lorakit push`): each runs
``python -m lorakit ...`` in a process of its own (the page's handler waits for it in Gradio's queue; the page stays
live); a push that uploads (no --dry-run) runs as a task (:mod:`lorakit.ui.tasks`) that outlives the page. The command's own checks hold: an output file that exists is refused (nothing the user made is overwritten),
a refusal is the command's one line. While the UI listens on other hosts every file and folder named here is checked
against the allowed folders. No field takes a Hugging Face token: `push` uses the server's (``HF_TOKEN`` or
``hf auth login`` on the machine the UI runs on)."""

from __future__ import annotations

import html
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from lorakit.errors import LorakitError

AUTO = "(from the file)"
TIMEOUTS = {"verify": 600, "convert": 600, "resize": 1200, "merge": 3600, "push": 1200}  # push here: --dry-run


def _err(text: str) -> str:
    return f"<span class='lk-msg-error'>⚠ {html.escape(text)}</span>"


def run_cli(args: Sequence[str], *, env: Optional[dict[str, str]] = None) -> tuple[int, str]:
    """(exit status, output) of ``python -m lorakit ARGS``; a command past its time limit is ended and said."""
    limit = TIMEOUTS.get(args[0], 600)
    try:
        proc = subprocess.run([sys.executable, "-m", "lorakit", *args], capture_output=True, text=True,
                              timeout=limit, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        return 124, f"lorakit {args[0]}: did not finish in {limit // 60} minutes; it was ended"
    except OSError as exc:
        return 127, f"lorakit {args[0]}: cannot start it: {exc.filename or sys.executable}: {exc.strerror or exc}"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def status_line(command: str, rc: int, text: str, with_base: bool = False) -> str:
    """One line: the command's refusal (``lorakit: error: ...``) or its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("lorakit")]
    if rc == 0:
        return html.escape(lines[-1] if lines else f"lorakit {command}: done")
    if command == "verify" and rc == 1:
        return _err("verify: some keys would not load (see the report below)" + (
            "; a LoRA of a toy or pruned model fits only its own base: give it as Base checkpoint"
            if not with_base else ""))
    return _err(errors[-1] if errors else (lines[-1] if lines else f"lorakit {command} exited with status {rc}"))


def _path(state, text, what: str, *, must_exist: bool = True) -> Path:
    path = state.roots.check(text, what)  # the allowed folders while listening; resolved
    if must_exist and not path.exists():
        raise LorakitError(f"{what}: {path} does not exist")
    return path


def _opt_path(state, text, what: str, must_exist: bool = True) -> Optional[Path]:
    return _path(state, text, what, must_exist=must_exist) if (text or "").strip() else None


def _family(value) -> list[str]:
    return [] if not value or value == AUTO else ["--family", str(value)]


def _written(text: str) -> list[str]:
    """The files a command says it wrote (``written to A, B``)."""
    for line in reversed(text.splitlines()):
        if "written to " in line:
            return [p.strip() for p in line.split("written to ", 1)[1].split(",") if p.strip()]
    return []


# ------------------------------------------------------------------------------------------------ the commands


def verify_args(state, file, family=None, base=None) -> list[str]:
    f = _path(state, file, "LoRA file")
    b = _opt_path(state, base, "Base checkpoint")
    return ["verify", str(f), *_family(family)] + (["--base", str(b)] if b else [])


def convert_args(state, file, to, out=None, family=None, base=None) -> list[str]:
    if to not in ("kohya", "diffusers", "peft", "comfyui"):
        raise LorakitError(f"Convert to: pick kohya, diffusers, peft or comfyui, got {to!r}")
    f = _path(state, file, "LoRA file")
    o = _opt_path(state, out, "Output", must_exist=False)
    b = _opt_path(state, base, "Base checkpoint")
    return (["convert", str(f), "--to", to, *_family(family)] + (["-o", str(o)] if o else [])
            + (["--base", str(b)] if b else []))


def resize_args(state, file, rank, out=None, family=None) -> list[str]:
    f = _path(state, file, "LoRA file")
    text = (rank or "").strip()
    if text.isdigit() and int(text) >= 1:
        how = ["--rank", text]
    elif "=" in text:
        how = ["--dynamic", text]
    else:
        raise LorakitError(f"New rank: give a rank (a whole number ≥ 1) or sv_ratio=X, sv_fro=X or sv_cumulative=X, "
                           f"got {text!r}")
    o = _opt_path(state, out, "Output", must_exist=False)
    return ["resize", str(f), *how, *_family(family)] + (["-o", str(o)] if o else [])


def merge_args(state, loras, out, rank=None, into=None, family=None) -> list[str]:
    items = [ln.strip() for ln in (loras or "").splitlines() if ln.strip()]
    if not items:
        raise LorakitError("LoRAs: give one LoRA file a line, each optionally with :weight (a.safetensors:0.8)")
    checked = []
    for item in items:
        head, sep, tail = item.rpartition(":")
        path, weight = (head, sep + tail) if sep and not Path(os.path.expanduser(item)).exists() else (item, "")
        checked.append(str(_path(state, path, "LoRA file")) + weight)
    if not (out or "").strip():
        raise LorakitError("Output: give the new file's path (name.safetensors); merge writes no default file")
    o = _path(state, out, "Output", must_exist=False)
    text = (rank or "").strip()
    if text and not (text.isdigit() and int(text) >= 1):
        raise LorakitError(f"Rank: give a whole number ≥ 1 (or leave it empty for the exact concatenation), got "
                           f"{text!r}")
    i = _opt_path(state, into, "Merge into checkpoint")
    return (["merge", *checked, "-o", str(o), *_family(family)] + (["--rank", text] if text else [])
            + (["--into", str(i)] if i else []))


def push_args(state, run_dir, repo, private=False, dry_run=True, step=None) -> list[str]:
    run = _path(state, run_dir, "Run folder")
    if not (run / "config.toml").is_file():
        raise LorakitError(f"Run folder: {run} holds no config.toml; give a run's folder (save.dir/save.name)")
    if not (repo or "").strip():
        raise LorakitError("Repository: give the Hub repository as user/name")
    text = (step or "").strip() if isinstance(step, str) else ("" if step is None else str(step))
    if text and not text.isdigit():
        raise LorakitError(f"Step: give the step of a checkpoint to push (a whole number), or leave it empty for the "
                           f"final LoRA, got {text!r}")
    return (["push", str(run), "--repo", repo.strip()] + (["--private"] if private else [])
            + (["--dry-run"] if dry_run else []) + (["--step", text] if text else []))


def push_env(state) -> dict[str, str]:
    """The UI sets HF_HUB_OFFLINE=1 for itself when the user had not set it; a push goes online unless the user
    set it."""
    env = dict(os.environ)
    if getattr(state, "hub_offline_by_ui", False):
        env.pop("HF_HUB_OFFLINE", None)
    return env


def run_tool(state, command: str, *fields) -> tuple[str, str, Optional[list[str]]]:
    """(status line, the command's output, files to download) of one tool's form."""
    make = {"verify": verify_args, "convert": convert_args, "resize": resize_args, "merge": merge_args,
            "push": push_args}[command]
    try:
        args = make(state, *fields)
    except LorakitError as exc:
        return _err(str(exc)), "", None
    rc, text = run_cli(args, env=push_env(state) if command == "push" else None)
    files = []
    for p in _written(text) if rc == 0 else []:
        path = Path(p)
        if path.is_file():
            state.allow(path.parent)
            files.append(str(path))
        elif path.is_dir():  # a PEFT folder
            state.allow(path)
            files += [str(f) for f in sorted(path.iterdir()) if f.is_file()]
    return status_line(command, rc, text, "--base" in args), f"$ lorakit {' '.join(args)}\n{text}", files or None


# ------------------------------------------------------------------------------------------------ the page


def page(gr, state, u) -> None:
    from lorakit.ui.form import family_choices

    fams = [AUTO] + [name for _, name in family_choices()]
    gr.Markdown("The CLI's LoRA tools on a file. Outputs left empty go next to the input with the tool's suffix "
                "(`x-diffusers.safetensors`, `x-r8.safetensors`); an output that exists is refused, never "
                "overwritten.")
    with gr.Row():
        u.lt_file = gr.Textbox(label="LoRA file (.safetensors)", elem_id="lt-file", scale=3)
        u.lt_family = gr.Dropdown(fams, value=AUTO, label="Family (--family)", elem_id="lt-family", scale=1)
        u.lt_base = gr.Textbox(label="Base checkpoint (--base, optional: shapes and own module names)",
                               elem_id="lt-base", scale=2)
    with gr.Tabs():
        with gr.Tab("Verify"):
            gr.Markdown("How ComfyUI, Forge, diffusers and kohya would load the file: keys each one maps, misses "
                        "or ignores.")
            u.lt_verify = gr.Button("Verify", variant="primary", elem_id="lt-verify")
        with gr.Tab("Convert"):
            with gr.Row():
                u.lt_to = gr.Dropdown(["kohya", "comfyui", "diffusers", "peft"], value="diffusers",
                                      label="Convert to", elem_id="lt-to")
                u.lt_cout = gr.Textbox(label="Output (-o; a folder for peft; empty: next to the input)",
                                       elem_id="lt-cout", scale=3)
            u.lt_convert = gr.Button("Convert", variant="primary", elem_id="lt-convert")
        with gr.Tab("Resize"):
            with gr.Row():
                u.lt_rank = gr.Textbox(label="New rank, or sv_ratio=X / sv_fro=X / sv_cumulative=X",
                                       elem_id="lt-rank")
                u.lt_rout = gr.Textbox(label="Output (-o; empty: next to the input)", elem_id="lt-rout", scale=3)
            u.lt_resize = gr.Button("Resize", variant="primary", elem_id="lt-resize")
        with gr.Tab("Merge"):
            u.lt_loras = gr.Textbox(label="More LoRAs, one a line, each optionally FILE:weight", lines=3,
                                    elem_id="lt-loras")
            with gr.Row():
                u.lt_mout = gr.Textbox(label="Output (-o, required)", elem_id="lt-mout", scale=3)
                u.lt_mrank = gr.Textbox(label="Rank (--rank, SVD; empty: exact concatenation)", elem_id="lt-mrank")
                u.lt_into = gr.Textbox(label="Merge into checkpoint (--into, optional)", elem_id="lt-into", scale=2)
            gr.Markdown("The LoRA file above, when given, is merged too (first, weight 1).")
            u.lt_merge = gr.Button("Merge", variant="primary", elem_id="lt-merge")
    u.lt_status = gr.HTML(elem_id="lt-status")
    u.lt_files = gr.File(label="Written", file_count="multiple", interactive=False, elem_id="lt-files")
    u.lt_out = gr.Code(label="The command and its output", language=None, elem_id="lt-out")


def push_page(gr, state, u) -> None:
    listening = state.roots.allowed is not None
    gr.Markdown("Packages a run (as *Package* on the Download page does) and uploads it with `lorakit push`. There is "
                "no token field: the upload uses the token of the machine this UI runs on (`HF_TOKEN`, or "
                "`hf auth login` there)." + (" **This UI listens on other hosts: anyone who logs in to it pushes "
                                              "with that token.**" if listening else ""), elem_id="pu-note")
    with gr.Row():
        u.pu_run = gr.Textbox(label="Run folder (save.dir/save.name)", elem_id="pu-run", scale=3)
        u.pu_repo = gr.Textbox(label="Repository (user/name)", elem_id="pu-repo", scale=2)
        u.pu_step = gr.Textbox(label="Step (--step; empty: the final LoRA)", elem_id="pu-step", scale=1)
    with gr.Row():
        u.pu_private = gr.Checkbox(label="Private", value=False, elem_id="pu-private")
        u.pu_dry = gr.Checkbox(label="Dry run (list the files, upload nothing)", value=True, elem_id="pu-dry")
        u.pu_push = gr.Button("Push", variant="primary", elem_id="pu-push")
    u.pu_status = gr.HTML(elem_id="pu-status")
    u.pu_state = gr.HTML(elem_id="pu-state")  # the upload task's state (refreshed; the line above stays)
    u.pu_out = gr.Code(label="The command and its output", language=None, elem_id="pu-out")
    u.pu_task = gr.State(None)  # the upload's task id (an upload runs as a task: it outlives the page)


def events(gr, state, u) -> None:
    outs = [u.lt_status, u.lt_out, u.lt_files]

    def verify(file, family, base):
        return run_tool(state, "verify", file, family, base)

    def convert(file, family, base, to, out):
        return run_tool(state, "convert", file, to, out, family, base)

    def resize(file, family, base, rank, out):
        if (base or "").strip():
            return _err("resize: Base checkpoint has no meaning here (lorakit resize takes no --base); clear it"), \
                "", None
        return run_tool(state, "resize", file, rank, out, family)

    def merge(file, family, base, loras, out, rank, into):
        if (base or "").strip():
            return _err("merge: Base checkpoint has no meaning here; to bake LoRAs into a checkpoint use Merge into "
                        "checkpoint"), "", None
        first = (file or "").strip()
        return run_tool(state, "merge", "\n".join(([first] if first else []) + [loras or ""]), out, rank, into,
                        family)

    def push(run, repo, private, dry, step):
        """A dry run is shown at once; an upload runs as a task of its own (:mod:`lorakit.ui.tasks`), followed here."""
        if dry:
            return run_tool(state, "push", run, repo, private, dry, step)[:2] + (None,)
        from lorakit.ui import tasks

        try:
            args = push_args(state, run, repo, private, dry, step)
            task = tasks.start(state.home, "push", args[3], args, env=push_env(state))
        except LorakitError as exc:
            return _err(str(exc)), "", None
        return (f"upload started as task {task.id} (it goes on without this page)", f"$ lorakit {' '.join(args)}",
                task.id)

    def follow_push(task_id):
        if task_id is None:
            return gr.update(), gr.update()
        from lorakit.ui import tasks

        try:
            task = tasks.get(state.home, task_id)
        except LorakitError as exc:
            return _err(str(exc)), gr.update()
        line = f"task {task.id}: push to {task.target}: {task.state}" + (f" — {task.note}" if task.note else "")
        return (_err(line) if task.state == "failed" else html.escape(line)), tasks.log_tail(task)

    u.lt_verify.click(verify, [u.lt_file, u.lt_family, u.lt_base], outs)
    u.lt_convert.click(convert, [u.lt_file, u.lt_family, u.lt_base, u.lt_to, u.lt_cout], outs)
    u.lt_resize.click(resize, [u.lt_file, u.lt_family, u.lt_base, u.lt_rank, u.lt_rout], outs)
    u.lt_merge.click(merge, [u.lt_file, u.lt_family, u.lt_base, u.lt_loras, u.lt_mout, u.lt_mrank, u.lt_into], outs)
    u.pu_push.click(push, [u.pu_run, u.pu_repo, u.pu_private, u.pu_dry, u.pu_step], [u.pu_status, u.pu_out, u.pu_task])
    u.timer.tick(follow_push, [u.pu_task], [u.pu_state, u.pu_out])
