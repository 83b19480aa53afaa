"""``lorakit ui``: the web UI (Gradio). Pages: Dataset, Train, Jobs, Watch, Compare, Sweeps, Download, LoRA tools,
Push (the last two in :mod:`lorakit.ui.tools`).

The page is a face over the same files and commands as the CLI (DESIGN.md principle 10): the Train form writes a
TOML and a job runs ``python -m lorakit train`` on it in a process of its own (:mod:`lorakit.ui.jobs`); Watch,
Compare and Download read the run folder (:mod:`lorakit.ui.runs`). Nothing here trains, and closing the page or the
server never stops a run.
"""

import html
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from pathlib import Path
from typing import Any, Optional, Sequence

from lorakit.errors import LorakitError
from lorakit.ui import dataset as ds
from lorakit.ui import form as fm
from lorakit.train.metrics import series
from lorakit.ui import runs, sweeps, tools
from lorakit.ui.jobs import JobError, JobStore, hold_home, tail

CSS = """
.lk-error textarea, .lk-error input, .lk-error select { border-color: #d33 !important; }
.lk-error .info, .lk-error span[data-testid="block-info"] + div, .lk-fielderr { color: #c00 !important; }
.lk-msg-error { color: #b00; font-weight: 600; }
"""


@dataclass
class UIState:
    """What the server holds: where it keeps jobs, which folders it may use, the queue."""

    home: Path
    roots: ds.Roots
    store: JobStore
    max_upload_mb: float = ds.MAX_UPLOAD_MB
    hub_offline_by_ui: bool = False  # HF_HUB_OFFLINE=1 is the UI's own default, not the user's (push goes online)
    allowed: list[str] = field(default_factory=list)  # folders Gradio may serve files from (grows as used)

    def allow(self, path: Path) -> None:
        p = str(Path(path).resolve())
        if p not in self.allowed:
            self.allowed.append(p)


# ================================================================================================ helpers


def _msg(text: str, error: bool = False) -> str:
    if not text:
        return ""
    return f"<span class='lk-msg-error'>⚠ {html.escape(text)}</span>" if error else html.escape(text)


def caption_available() -> bool:
    """Whether this lorakit has a ``caption`` command (another part of lorakit provides it)."""
    from lorakit.cli import build_parser

    for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]
        if getattr(action, "choices", None) and "caption" in action.choices:
            return True
    return False


def _open_caption(image: Path) -> tuple[str, str, str]:
    """(selected image, its caption, status) for the caption editor; an unreadable caption is said, not raised."""
    text, problem = ds.read_caption(image)
    return str(image), text, _msg(problem, True)


def _job_choices(store: JobStore) -> list[tuple[str, str]]:
    return [(f"{j.id}: {j.name} ({j.state})", str(j.id)) for j in reversed(store.list())]


def _python() -> str:
    return sys.executable


# ================================================================================================ the page


def build(state: UIState):
    """The pages (layout first, then the events: some events update components of other pages)."""
    import gradio as gr

    u = SimpleNamespace(widgets={}, has_caption=caption_available())
    with gr.Blocks(title="lorakit") as demo:
        u.demo = demo
        gr.Markdown("## lorakit — train image LoRAs")
        with gr.Tabs() as tabs:
            u.tabs = tabs
            for title, page in (("Dataset", _dataset_page), ("Train", _train_page), ("Jobs", _jobs_page),
                                ("Watch", _watch_page), ("Compare", _compare_page), ("Sweeps", sweeps.page),
                                ("Download", _download_page), ("LoRA tools", tools.page),
                                ("Push", tools.push_page)):
                with gr.Tab(title, id=title.lower().replace(" ", "-")):
                    page(gr, state, u)
        u.timer = gr.Timer(2.0)
        _dataset_events(gr, state, u)
        keys, comps = _train_events(gr, state, u)
        _train_fill_events(gr, state, u, keys, comps)
        jobs_refresh, job_rows = _jobs_events(gr, state, u)
        _watch_events(gr, state, u, jobs_refresh, job_rows)
        _compare_events(gr, state, u)
        sweeps.events(gr, state, u)
        _download_events(gr, state, u)
        tools.events(gr, state, u)

        def refresh_choices():
            choices = _job_choices(state.store)
            return [gr.update(choices=choices)] * 4

        demo.load(refresh_choices, None, [u.jb_pick, u.wt_pick, u.cp_pick, u.dl_pick])
    return demo


# ------------------------------------------------------------------------------------------------ layout


def _dataset_page(gr, state: UIState, u) -> None:
    gr.Markdown("A dataset is a folder of `N_trigger class` image folders (N = repeats), each image with "
                "a `.txt` caption beside it. Pick or create one, add images, edit captions, check it.")
    with gr.Row():
        u.ds_root = gr.Textbox(label="Dataset folder", value=str(state.home / "datasets" / "my-lora"),
                             scale=4, elem_id="ds-root")
        u.ds_open = gr.Button("Open", scale=1, elem_id="ds-open")
    with gr.Row():
        u.ds_trigger = gr.Textbox(label="Trigger word", value="ohwx", elem_id="ds-trigger")
        u.ds_class = gr.Textbox(label="Class", value="person", elem_id="ds-class")
        u.ds_repeats = gr.Textbox(label="Repeats", value="10", elem_id="ds-repeats")
        u.ds_folder = gr.Markdown(elem_id="ds-folder")
    with gr.Row():
        u.ds_upload = gr.File(label=f"Upload images, captions or a zip (≤ {state.max_upload_mb:g} MB each)",
                            file_count="multiple", elem_id="ds-upload", scale=3)
        with gr.Column(scale=1):
            u.ds_add = gr.Button("Add to dataset", variant="primary", elem_id="ds-add")
            u.ds_toy = gr.Button("Write the toy-world demo images", elem_id="ds-toy")
            u.ds_caption_btn = gr.Button("Auto-caption" if u.has_caption else
                                       "Auto-caption (unavailable)", interactive=u.has_caption,
                                       elem_id="ds-caption")
            with gr.Row(visible=u.has_caption):  # `lorakit caption` needs a captioner and (but for toy) its folder
                from lorakit.caption.backends import CAPTIONERS

                u.ds_captioner = gr.Dropdown(label="Captioner", choices=list(CAPTIONERS), value=CAPTIONERS[0],
                                             min_width=80, elem_id="ds-captioner")
                u.ds_capmodel = gr.Textbox(label="Captioner folder (--model)", min_width=80, elem_id="ds-capmodel")
            with gr.Row():
                u.ds_res = gr.Textbox(label="Check at resolution", value="", min_width=80,
                                      placeholder="the family's own (1024; SD 1.5: 512)",
                                    elem_id="ds-res")
                u.ds_check = gr.Button("Check dataset", elem_id="ds-check")
            u.ds_use = gr.Button("Use for training →", elem_id="ds-use")
    u.ds_status = gr.HTML(elem_id="ds-status")
    if not u.has_caption:
        gr.Markdown("Auto-captioning is unavailable: this lorakit has no `caption` command.",
                    elem_id="ds-caption-note")
    u.ds_gallery = gr.Gallery(label="Images (click one to edit its caption)", columns=8, height=320,
                            allow_preview=False, elem_id="ds-gallery")
    u.ds_paths = gr.State([])
    with gr.Row():
        u.ds_sel = gr.Textbox(label="Selected image", interactive=False, elem_id="ds-selected", scale=2)
        u.ds_cap = gr.Textbox(label="Caption", lines=2, elem_id="ds-caption-text", scale=4)
        u.ds_save = gr.Button("Save caption", elem_id="ds-save", scale=1)
    u.ds_report = gr.Markdown(elem_id="ds-report")
    u.ds_problems = gr.Dataframe(headers=["action", "file", "reason"], interactive=False,
                               label="Problems (click a row to open the file)", elem_id="ds-problems")


def _train_page(gr, state: UIState, u) -> None:
    with gr.Row():
        u.tr_family = gr.Dropdown(fm.family_choices(), value=fm.DEFAULT_FAMILY, label="Model family",
                                  elem_id="tr-family")
        u.tr_preset = gr.Dropdown(["(none)"] + fm.presets_for(fm.DEFAULT_FAMILY), value="(none)", label="Preset",
                                elem_id="tr-preset")
        from lorakit.ui.plan import CPU, card_choices

        u.tr_card = gr.Dropdown(list(card_choices()), value=CPU, label="Card for the plan",
                              elem_id="tr-card")
    with gr.Row():
        u.tr_toy = gr.Button("Use the toy models (CPU, seconds)", elem_id="tr-toy")
        u.tr_load = gr.UploadButton("Load TOML", file_types=[".toml"], elem_id="tr-load")
        u.tr_show = gr.Button("Check + show TOML and plan", elem_id="tr-show")
        u.tr_start = gr.Button("Start job", variant="primary", elem_id="tr-start")
    u.tr_status = gr.HTML(elem_id="tr-status")
    u.widgets: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            for section in ("model", "data", "network", "optimizer", "training", "memory", "sample",
                            "save", "validation", "log"):
                with gr.Accordion(section, open=True):
                    row = [x for x in fm.fields() if x.spec.section == section and x.key != "model.family"]
                    for i in range(0, len(row), 3):
                        with gr.Row(equal_height=False):
                            for f in row[i:i + 3]:
                                u.widgets[f.key] = _widget(gr, f, state)
        with gr.Column(scale=2):
            u.tr_plan = gr.Markdown(elem_id="tr-plan")
            u.tr_file = gr.File(label="Download TOML", interactive=False, elem_id="tr-file")
            u.tr_toml = gr.Code(label="TOML (exactly what the job runs)", language=None,
                              interactive=False, elem_id="tr-toml")
    u.widgets["model.family"] = u.tr_family
    u.tr_err = gr.State(None)  # the field flagged with an error, if any


def _jobs_page(gr, state: UIState, u) -> None:
    u.jb_table = gr.Dataframe(headers=["id", "name", "state", "step", "device", "output", "note"],
                            interactive=False, elem_id="jb-table", wrap=True)
    with gr.Row():
        u.jb_pick = gr.Dropdown(label="Job", choices=_job_choices(state.store), elem_id="jb-pick")
        u.jb_start = gr.Button("Start", elem_id="jb-start")
        u.jb_stop = gr.Button("Stop (saves, resumable)", elem_id="jb-stop")
        u.jb_resume = gr.Button("Resume", elem_id="jb-resume")
        u.jb_delete = gr.Button("Delete", elem_id="jb-delete")
    with gr.Row():
        u.jb_changes = gr.Textbox(label="Changes (section.key=value, one per line) for Duplicate, or for Resume "
                                        "(training.max_steps=3000 trains a finished run on to step 3000)",
                                  lines=2, elem_id="jb-changes", scale=4)
        u.jb_dup = gr.Button("Duplicate", elem_id="jb-dup", scale=1)
    u.jb_status = gr.HTML(elem_id="jb-status")
    u.jb_note = gr.Code(label="Job note / last lines of its log", language=None, elem_id="jb-note")


def _watch_page(gr, state: UIState, u) -> None:
    with gr.Row():
        u.wt_pick = gr.Dropdown(label="Job", choices=_job_choices(state.store), elem_id="wt-pick")
        u.wt_live = gr.Checkbox(label="Live (refresh every 2 s)", value=True, elem_id="wt-live")
        u.wt_stop = gr.Button("Stop (saves, resumable)", elem_id="wt-stop")
        u.wt_resume = gr.Button("Resume", elem_id="wt-resume")
    u.wt_status = gr.HTML(elem_id="wt-status")
    u.wt_progress = gr.Markdown(elem_id="wt-progress")
    with gr.Row():
        u.wt_loss = gr.LinePlot(x="step", y="loss", color="series", label="Loss", height=260,
                              elem_id="wt-loss")
        u.wt_lr = gr.LinePlot(x="step", y="lr", label="Learning rate", height=260, elem_id="wt-lr")
    u.wt_health = gr.Markdown(elem_id="wt-health")
    u.wt_gallery = gr.Gallery(label="Samples (by step, then prompt)", columns=6, height=300,
                            elem_id="wt-gallery")
    u.wt_grid = gr.Image(label="Before / after", interactive=False, height=240, elem_id="wt-grid")
    u.wt_log = gr.Code(label="Log (last lines)", language=None, elem_id="wt-log")


def _compare_page(gr, state: UIState, u) -> None:
    u.cp_pick = gr.CheckboxGroup(label="Jobs", choices=_job_choices(state.store), elem_id="cp-pick")
    u.cp_go = gr.Button("Compare", elem_id="cp-go")
    u.cp_diff = gr.Dataframe(label="Settings that differ", interactive=False, elem_id="cp-diff")
    u.cp_loss = gr.LinePlot(x="step", y="loss", color="job", label="Loss", height=280, elem_id="cp-loss")
    u.cp_gallery = gr.Gallery(label="Samples at the same steps", columns=6, height=300,
                            elem_id="cp-gallery")


def _download_page(gr, state: UIState, u) -> None:
    with gr.Row():
        u.dl_pick = gr.Dropdown(label="Job", choices=_job_choices(state.store), elem_id="dl-pick")
        u.dl_file = gr.Dropdown(label="LoRA file", choices=[], elem_id="dl-filepick")
        u.dl_inspect = gr.Button("Inspect", elem_id="dl-inspect")
        u.dl_package = gr.Button("Package for CivitAI / the Hub", elem_id="dl-package")
    u.dl_download = gr.File(label="Download", interactive=False, elem_id="dl-download")
    u.dl_out = gr.Code(label="lorakit inspect", language=None, elem_id="dl-out")


# ------------------------------------------------------------------------------------------------ events


def _dataset_events(gr, state: UIState, u) -> None:
    import pandas as pd

    demo = u.demo

    def folder_name(trigger, cls, repeats):
        try:
            return f"image folder: `{ds.kohya_folder_name(repeats, trigger, cls)}`"
        except LorakitError as exc:
            return f"⚠ {exc}"

    names = (u.ds_trigger, u.ds_class, u.ds_repeats)
    gr.on([c.input for c in names] + [c.blur for c in names], folder_name, list(names), u.ds_folder,
          trigger_mode="always_last", show_progress="hidden")
    demo.load(folder_name, [u.ds_trigger, u.ds_class, u.ds_repeats], u.ds_folder)

    def gallery_of(root: Path):
        items = ds.list_images(root)
        state.allow(root)
        return [(str(p), (c[:60] + "…") if len(c) > 60 else (c or "(no caption)")) for p, c in items], \
            [str(p) for p, _ in items]

    def open_root(root_text):
        try:
            root = state.roots.check(root_text, "Dataset folder")
            if root.exists() and not root.is_dir():
                return _msg(f"{root}: is a file, not a folder; give the dataset folder", True), [], [], "", ""
            if not root.is_dir():
                return _msg(f"{root}: not found; it is created when you add images"), [], [], "", ""
            gal, paths = gallery_of(root)
            if ds.image_folders(root) == [root]:  # images right in the folder: shown, but a run trains none of them
                return _msg(f"{root}: {len(paths)} image(s) directly in this folder, which training does not use: they "
                            "go in a subfolder named like '10_ohwx person' (Add to dataset makes it from the "
                            "trigger, class and repeats)", True), gal, paths, "", ""
            return _msg(f"{root}: {len(paths)} image(s)"), gal, paths, "", ""
        except LorakitError as exc:
            return _msg(str(exc), True), [], [], "", ""
        except OSError as exc:  # a folder this user may not read
            return _msg(f"{exc.filename or root_text}: cannot read it ({exc.strerror or exc})", True), [], [], "", ""

    u.ds_open.click(open_root, [u.ds_root], [u.ds_status, u.ds_gallery, u.ds_paths, u.ds_sel, u.ds_cap])

    def add_files(root_text, trigger, cls, repeats, files):
        try:
            root = state.roots.check(root_text, "Dataset folder")
            folder = root / ds.kohya_folder_name(repeats, trigger, cls)
            if not files:
                raise LorakitError("Upload: choose image files or a zip first")
            paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]
            written = ds.import_uploads(paths, folder, max_file_mb=state.max_upload_mb)
            gal, ps = gallery_of(root)
            n_img = sum(1 for p in written if p.suffix.lower() not in ds.CAPTION_EXTENSIONS)
            other = sum(1 for p in written if p.suffix.lower() == ".caption")
            note = (f"; {other} of them .caption files, which training reads only with data.caption_extension = "
                    "\".caption\" (the default reads <image>.txt)") if other else ""
            text = f"added {n_img} image(s) and {len(written) - n_img} caption(s) to {folder}{note}"
            return _msg(text), gal, ps, None
        except LorakitError as exc:
            return _msg(str(exc), True), gr.update(), gr.update(), gr.update()

    u.ds_add.click(add_files, [u.ds_root, u.ds_trigger, u.ds_class, u.ds_repeats, u.ds_upload],
                 [u.ds_status, u.ds_gallery, u.ds_paths, u.ds_upload])

    def add_toy(root_text, trigger, cls, repeats):
        from lorakit.toy import world

        try:
            root = state.roots.check(root_text, "Dataset folder")
            trigger = (trigger or "").strip() or world.DEFAULT_TRIGGER
            n = int(ds.kohya_folder_name(repeats, trigger, world.DEMO_CLASS).split("_", 1)[0])  # the field's checks
            folder = world.write_demo_dataset(root, trigger=trigger, repeats=n)
            gal, ps = gallery_of(root)
            return _msg(f"toy-world images written to {folder}"), gal, ps
        except LorakitError as exc:
            return _msg(str(exc), True), gr.update(), gr.update()
        except OSError as exc:  # an image that cannot be written (a full disk)
            return _msg(f"Dataset folder: cannot write {exc.filename or root_text} ({exc.strerror or exc})",
                        True), gr.update(), gr.update()

    u.ds_toy.click(add_toy, [u.ds_root, u.ds_trigger, u.ds_class, u.ds_repeats],
                   [u.ds_status, u.ds_gallery, u.ds_paths])

    def pick_image(paths, evt: gr.SelectData):
        if evt.index is None or evt.index >= len(paths):
            return "", "", gr.update()
        return _open_caption(Path(paths[evt.index]))

    u.ds_gallery.select(pick_image, [u.ds_paths], [u.ds_sel, u.ds_cap, u.ds_status])

    def save_cap(root_text, image, text):
        try:
            if not image:
                raise LorakitError("Caption: click an image first")
            root = state.roots.check(root_text, "Dataset folder")
            img = state.roots.check(image, "Image")
            if root not in img.parents:
                raise LorakitError(f"{img}: not in the dataset folder {root}")
            cap = ds.save_caption(img, text)
            gal, ps = gallery_of(root)
            return _msg(f"caption saved: {cap} (the first version is kept as {cap.name}.bak)"), gal, ps
        except LorakitError as exc:
            return _msg(str(exc), True), gr.update(), gr.update()
        except OSError as exc:  # a full disk, a read-only folder: the caption on disk is the one it was
            return _msg(f"{exc.filename or image}: the caption was not saved ({exc.strerror or exc}); the file on "
                        "disk is unchanged", True), gr.update(), gr.update()

    u.ds_save.click(save_cap, [u.ds_root, u.ds_sel, u.ds_cap], [u.ds_status, u.ds_gallery, u.ds_paths])

    def check(root_text, resolution, family=None):
        """`lorakit data check` of the folder, bucketed as the Train page's family buckets (its divisibility; its
        own resolution when the field is empty)."""
        import dataclasses

        from lorakit.config.load import field_specs, load_config
        from lorakit.data.buckets import parse_resolution
        from lorakit.data.scan import scan_dataset
        from lorakit.models.registry import get_family

        try:
            root = state.roots.check(root_text, "Dataset folder")
            family = family or fm.DEFAULT_FAMILY
            spec = get_family(family).SPEC
            # the data section as the CLI reads it (resolution and buckets validated with its messages)
            # loaded with the smallest buckets (a small resolution is valid here), then the default 256 unless the
            # resolution is smaller: buckets down to it (64 px steps)
            given = (resolution or "").strip()
            data = load_config(None, ([f"data.resolution={given}"] if given else []) + ["data.min_bucket_reso=64"],
                               data={"model": {"family": family, "checkpoint": "unused.safetensors"},
                                     "data": {"dir": str(root)}}).data
            side = min(parse_resolution(data.resolution))
            default_min = field_specs()["data"]["min_bucket_reso"].default
            data = dataclasses.replace(data, min_bucket_reso=min(default_min, max(64, side // 64 * 64)))
            dataset = scan_dataset(data, divisibility=spec.bucket_divisibility)
            report = dataset.report
            rows = ds.problem_files(report.problems)
            text = f"```\n{report.to_table()}\n```"
            shown = getattr(spec, "display_name", "") or family
            return text, pd.DataFrame(rows, columns=["action", "file", "reason"]), _msg(
                f"{report.usable} usable image(s), {len(report.skipped)} skipped, {len(report.warnings)} warning(s); "
                f"checked as {shown} trains at {data.resolution} px (the family picked on the Train page)")
        except LorakitError as exc:
            return "", pd.DataFrame(columns=["action", "file", "reason"]), _msg(str(exc), True)

    u.ds_check.click(check, [u.ds_root, u.ds_res, u.tr_family], [u.ds_report, u.ds_problems, u.ds_status])

    def pick_problem(table, evt: gr.SelectData):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            file = str(table.iloc[row]["file"])
        except Exception:
            return gr.update(), gr.update(), gr.update()
        return _open_caption(Path(file))

    u.ds_problems.select(pick_problem, [u.ds_problems], [u.ds_sel, u.ds_cap, u.ds_status])

    def run_caption(root_text, captioner=None, model=None):
        """`lorakit caption DIR --captioner NAME [--model FOLDER]` (existing captions are kept: no --overwrite); the
        thumbnails then show the captions written."""
        keep = gr.update(), gr.update()
        if not caption_available():
            return (_msg("auto-captioning is unavailable: this lorakit has no `caption` command", True),) + keep
        try:
            root = state.roots.check(root_text, "Dataset folder")
            if not captioner:
                raise LorakitError("Captioner: pick one (wd14, florence2, vlm, blip or toy)")
            model_dir = state.roots.check(model, "Captioner folder") if (model or "").strip() else None
        except LorakitError as exc:
            return (_msg(str(exc), True),) + keep
        try:
            proc = subprocess.run([_python(), "-m", "lorakit", "caption", str(root), "--captioner", captioner]
                                  + (["--model", str(model_dir)] if model_dir else []), capture_output=True,
                                  text=True, timeout=3600)
        except subprocess.TimeoutExpired:
            proc = SimpleNamespace(returncode=124, stdout="", stderr="lorakit caption: did not finish in an hour; "
                                   "the captions written so far are kept")
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("lorakit")]  # a refusal is one `lorakit…: error:` line
        out = errors[-1:] if proc.returncode != 0 and errors else lines[-5:]
        status = _msg(" / ".join(out) or f"lorakit caption exited with {proc.returncode}", proc.returncode != 0)
        try:
            return (status,) + gallery_of(root)
        except LorakitError:  # no dataset there (the command said why)
            return (status,) + keep

    u.ds_caption_btn.click(run_caption, [u.ds_root, u.ds_captioner, u.ds_capmodel],
                           [u.ds_status, u.ds_gallery, u.ds_paths])

    def use_dataset(root_text):
        try:
            root = state.roots.check(root_text, "Dataset folder")
        except LorakitError as exc:
            return gr.update(), _msg(str(exc), True), gr.update()
        return str(root), _msg(f"data.dir set to {root}"), gr.Tabs(selected="train")

    u.ds_use.click(use_dataset, [u.ds_root], [u.widgets["data.dir"], u.tr_status, u.tabs])


def _train_events(gr, state: UIState, u):
    """Family visibility, "show TOML and plan" and "start job"; returns the form's keys and components."""
    store = state.store
    demo = u.demo
    all_fields = fm.fields()
    keys = list(u.widgets)
    comps = [u.widgets[k] for k in keys]
    fam_fields = [f for f in all_fields if f.families and f.key in u.widgets]

    def family_changed(family, preset):
        """The family's own fields shown, the others hidden; the presets of the family offered (the one picked kept
        when it is the family's: a preset or a loaded TOML sets the family too)."""
        presets = fm.presets_for(family)
        keep = preset if preset in presets else "(none)"
        return [gr.update(visible=f.visible(family)) for f in fam_fields] + \
            [gr.update(choices=["(none)"] + presets, value=keep)]

    fam_outs = [u.widgets[f.key] for f in fam_fields] + [u.tr_preset]
    u.tr_family.change(family_changed, [u.tr_family, u.tr_preset], fam_outs)
    demo.load(family_changed, [u.tr_family, u.tr_preset], fam_outs)

    def values_of(args) -> dict[str, Any]:
        return dict(zip(keys, args))

    def field_updates(previous: Optional[str], bad_key: Optional[str] = None, message: str = "") -> list[Any]:
        """The flagged field gets the message under it; the one flagged before gets its help back; the
        rest are left alone (one update per field would re-render the whole form)."""
        out = []
        for k in keys:
            if k == bad_key:
                out.append(gr.update(info=f"⚠ {message}", elem_classes=["lk-error"]))
            elif k == previous:
                out.append(gr.update(info=field_by_key[k].help(), elem_classes=[]))
            else:
                out.append(gr.update())
        return out + [bad_key]

    field_by_key = {f.key: f for f in all_fields}

    def make_toml(preset, args):
        preset = None if preset in (None, "", "(none)") else preset
        text = fm.form_to_toml(values_of(args), preset)
        cfg = fm.validate_toml(text)
        return text, cfg

    def show(preset, card, previous, *args):
        from lorakit.ui.plan import estimate, measured_cpu_seconds, run_accumulation

        try:
            text, cfg = make_toml(preset, args)
        except LorakitError as exc:
            key = fm.error_key(str(exc))
            return [_msg(str(exc), True), gr.update(), "", None] + field_updates(previous, key, str(exc))
        out = state.home / "toml" / f"{cfg.save.name}.toml"
        saved = None
        try:
            from lorakit.fsutil import write_text

            out.parent.mkdir(parents=True, exist_ok=True)
            write_text(out, text)
            saved = str(out)
        except OSError as exc:  # a full disk, an unwritable home: the TOML is still shown, only the file is missing
            saved_err = f"the TOML file to download could not be written ({exc.filename or out}: {exc.strerror or exc})"
        try:
            images = steps = None
            if (cfg.data.dir and Path(cfg.data.dir).is_dir()) or (cfg.data.config and Path(cfg.data.config).is_file()):
                from lorakit.data.scan import scan_dataset
                from lorakit.data.stream import BatchStream
                from lorakit.data.validation import make_validation
                from lorakit.models.registry import get_family

                div = get_family(cfg.model.family).SPEC.bucket_divisibility
                scanned = scan_dataset(cfg.data, divisibility=div)
                if scanned.report.usable:  # as the run counts: held-out validation images are never trained on
                    trained, _ = make_validation(scanned, cfg.data, cfg.training.seed, div)
                    images = len({item.path for item in trained.items})
                    steps = BatchStream(trained, cfg.training.batch_size, cfg.training.seed).steps_per_epoch
            cpu = measured_cpu_seconds((runs.metrics(j.run_dir), run_accumulation(j.run_dir)) for j in store.list()
                                       if j.state == "finished" and j.device == "cpu"
                                       and _family_of(j) == cfg.model.family)
            plan = estimate(cfg, card, images=images, steps_per_epoch=steps, cpu_seconds=cpu, label=out.name)
            if cfg.data.config and not Path(cfg.data.config).is_file():
                plan += (f"\n\n⚠ data.config: file {cfg.data.config} not found; a job started now would stop at its "
                         "dataset scan")
            if cfg.data.dir and not Path(cfg.data.dir).is_dir():  # valid TOML, but a job would stop at its scan
                plan += (f"\n\n⚠ data.dir: folder {cfg.data.dir} not found (it should hold subfolders like "
                         "'10_ohwx woman'); a job started now would stop at its dataset scan")
        except LorakitError as exc:
            plan = f"⚠ {exc}"
        problem = fm.model_file_problem(cfg)
        if problem:  # valid TOML, but the job would fail to load its base model: said now, under the field
            return [_msg(f"{problem}", True), text, plan, saved] + \
                field_updates(previous, fm.error_key(problem), problem)
        if saved is None:
            return [_msg(f"valid: this is the TOML a job runs; {saved_err}", True), text, plan, None] + \
                field_updates(previous)
        return [_msg("valid: this is the TOML a job runs"), text, plan, saved] + field_updates(previous)

    u.tr_show.click(show, [u.tr_preset, u.tr_card, u.tr_err, *comps],
                    [u.tr_status, u.tr_toml, u.tr_plan, u.tr_file, *comps, u.tr_err])

    def start(preset, previous, *args):
        try:
            text, cfg = make_toml(preset, args)
            if (problem := fm.model_file_problem(cfg)):
                raise LorakitError(f"{problem}; nothing was queued")
            from lorakit.config.load import config_to_dict

            ds.check_config_paths(state.roots, {f"{sec}.{k}": v for sec, body in config_to_dict(cfg).items()
                                                if isinstance(body, dict) for k, v in body.items()})
            job = store.add(text)
        except LorakitError as exc:
            key = fm.error_key(str(exc))
            return [_msg(str(exc), True), gr.update(), gr.update(), gr.update()] + \
                field_updates(previous, key, str(exc)) + \
                [gr.update()] * 3
        choices = _job_choices(store)
        return [_msg(f"job {job.id} ({job.name}) {job.state}: {job.run_dir}"), text,
                gr.update(choices=choices, value=str(job.id)), gr.Tabs(selected="watch")] + field_updates(previous) + \
            [gr.update(choices=choices)] * 3

    u.tr_start.click(start, [u.tr_preset, u.tr_err, *comps],
                     [u.tr_status, u.tr_toml, u.wt_pick, u.tabs, *comps, u.tr_err, u.jb_pick, u.cp_pick, u.dl_pick])
    return keys, comps


def _train_fill_events(gr, state: UIState, u, keys, comps) -> None:
    """Buttons that fill the form: the toy models, a TOML file, a preset."""
    field_by_key = {f.key: f for f in fm.fields()}

    def values_of(args) -> dict[str, Any]:
        return dict(zip(keys, args))

    def toy(family, *args):
        try:
            toy_vals = fm.toy_widgets(family)  # the family's toy recipe (lorakit demo's), made quick
        except LorakitError as exc:
            return [_msg(str(exc), True)] + [gr.update() for _ in comps]
        vals = values_of(args)
        vals.update({k: v for k, v in toy_vals.items() if k in vals})
        old = values_of(args)
        return [_msg(f"toy {family} model files and CPU settings filled in")] + \
            [vals[k] if vals[k] != old[k] else gr.update() for k in keys]

    u.tr_toy.click(toy, [u.tr_family, *comps], [u.tr_status, *comps])

    def load_toml(file):
        import tomllib

        from lorakit.config.load import load_config

        path = file if isinstance(file, str) else getattr(file, "name", None)
        if not path:  # the file was cleared
            return [gr.update() for _ in range(3)] + [gr.update() for _ in comps]
        try:
            raw = Path(path).read_bytes().decode("utf-8")
            data = tomllib.loads(raw)
            cfg = load_config(None, data=data)  # relative paths: against the UI's current folder
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            return [_msg(f"{Path(str(path)).name}: not a readable TOML file ({exc})", True), gr.update(),
                    gr.update()] + [gr.update() for _ in comps]
        except LorakitError as exc:
            return [_msg(str(exc), True), gr.update(), gr.update()] + [gr.update() for _ in comps]
        vals = fm.config_to_widgets(cfg)
        preset = cfg.preset or "(none)"
        try:  # the TOML box shows what Start queues (the form's TOML: paths absolute), not the file's own text
            shown = fm.form_to_toml(vals, cfg.preset or None)
        except LorakitError:
            shown = ""
        return [_msg(f"loaded {Path(str(path)).name}; press Check to see the plan"), preset, shown] + \
            [vals[k] for k in keys]

    u.tr_load.upload(load_toml, [u.tr_load], [u.tr_status, u.tr_preset, u.tr_toml, *comps])

    def preset_changed(preset, *args):
        """Fill the form with the preset's values (fields the preset does not set keep theirs)."""
        if preset in (None, "", "(none)"):
            return [gr.update() for _ in comps]
        base = fm.baseline(preset)
        vals = values_of(args)
        import tomllib

        from lorakit.config.load import preset_path

        layer = tomllib.loads(preset_path(preset).read_text())
        for section, body in layer.items():
            if isinstance(body, dict):
                for k in body:
                    key = f"{section}.{k}"
                    if key in field_by_key:
                        vals[key] = fm.to_widget(field_by_key[key], base[key])
        return [vals[k] for k in keys]

    # on the user's pick only: a loaded TOML sets the preset too, and its own values must stay
    u.tr_preset.input(preset_changed, [u.tr_preset, *comps], comps)


def _jobs_events(gr, state: UIState, u):
    import pandas as pd

    store = state.store

    def job_rows():
        rows = []
        jobs = store.reconcile()
        for j in jobs:
            note = j.note.strip().splitlines()[0] if j.note.strip() else ""
            if (newer := store.successor(j, jobs)) is not None:  # the folder holds the newer job's run, not this one's
                rows.append([j.id, j.name, j.state, "—", j.device, f"{j.run_dir} (now job {newer.id}'s)", note])
                continue
            prog = runs.progress(j.run_dir) if j.run_dir.is_dir() else {"step": 0, "max_steps": None}
            step = f"{prog['step']}/{prog['max_steps']}" if prog.get("max_steps") else str(prog["step"])
            rows.append([j.id, j.name, j.state, step, j.device, str(j.run_dir), note])
        return pd.DataFrame(rows, columns=["id", "name", "state", "step", "device", "output", "note"])

    def jobs_refresh(pick):
        note = ""
        if pick:
            try:
                j = store.get(int(pick))
                note = j.note or tail(j.log_path)
            except (JobError, ValueError):
                pass
        return job_rows(), note

    def act(action, pick, changes=""):
        j = None
        try:
            if not pick:
                raise JobError("pick a job first")
            jid = int(pick)
            if action == "start":
                j = store.start(jid)
            elif action == "stop":
                j = store.stop(jid)
            elif action == "resume":
                overrides = [ln.strip() for ln in (changes or "").splitlines() if ln.strip()]
                _check_override_paths(state.roots, overrides)
                j = store.resume(jid, overrides)
            elif action == "delete":
                store.delete(jid)
                j = None
            else:
                overrides = [ln.strip() for ln in (changes or "").splitlines() if ln.strip()]
                _check_override_paths(state.roots, overrides)
                j = store.duplicate(jid, overrides)
            msg = f"job {jid} deleted (its run folder is kept)" if j is None else f"job {j.id} ({j.name}): {j.state}"
            err = False
        except LorakitError as exc:
            msg, err = str(exc), True
        except ValueError:  # a typed pick that is no job number
            msg, err = f"job {pick!r}: no such job; pick one from the list", True
        choices = _job_choices(store)
        value = pick if err else (None if j is None else str(j.id))
        rows, note = jobs_refresh(value)
        upd = gr.update(choices=choices, value=value)
        return _msg(msg, err), rows, note, upd, gr.update(choices=choices), gr.update(choices=choices), \
            gr.update(choices=choices)

    outs = [u.jb_status, u.jb_table, u.jb_note, u.jb_pick, u.wt_pick, u.cp_pick, u.dl_pick]
    u.jb_start.click(lambda p: act("start", p), [u.jb_pick], outs)
    u.jb_stop.click(lambda p: act("stop", p), [u.jb_pick], outs)
    u.jb_resume.click(lambda p, c: act("resume", p, c), [u.jb_pick, u.jb_changes], outs)
    u.jb_delete.click(lambda p: act("delete", p), [u.jb_pick], outs)
    u.jb_dup.click(lambda p, c: act("duplicate", p, c), [u.jb_pick, u.jb_changes], outs)
    u.jb_pick.change(jobs_refresh, [u.jb_pick], [u.jb_table, u.jb_note])
    u.wt_stop.click(lambda p: act("stop", p), [u.wt_pick], [u.wt_status, *outs[1:]])
    u.wt_resume.click(lambda p: act("resume", p), [u.wt_pick], [u.wt_status, *outs[1:]])
    return jobs_refresh, job_rows


def _watch_events(gr, state: UIState, u, jobs_refresh, job_rows) -> None:
    import pandas as pd

    store = state.store
    demo = u.demo

    def watch(pick):
        empty = pd.DataFrame({"step": [], "loss": [], "series": []})
        if not pick:
            return "pick a job", empty, pd.DataFrame({"step": [], "lr": []}), "", [], None, ""
        try:
            j = store.reconcile_one(store.get(int(pick)))
        except (JobError, ValueError) as exc:
            return _msg(str(exc), True), empty, pd.DataFrame({"step": [], "lr": []}), "", [], None, ""
        if (newer := store.successor(j)) is not None:  # its folder's charts and samples are the newer job's run
            head = (f"**job {j.id} {j.name}: {j.state}** — it never began a run; its output folder {j.run_dir} is "
                    f"now job {newer.id}'s ({newer.name}): pick job {newer.id} to watch that run")
            return head, empty, pd.DataFrame({"step": [], "lr": []}), "", [], None, tail(j.log_path, 40)
        state.allow(j.run_dir)
        rows = runs.metrics(j.run_dir)
        lrows = runs.loss_rows(rows)
        prog = runs.progress(j.run_dir, rows)
        loss = pd.DataFrame({"step": [r["step"] for r in lrows], "loss": [r["loss"] for r in lrows],
                             "series": ["loss"] * len(lrows)})
        if len(lrows) > 1:
            ema, smooth = lrows[0]["loss"], []
            for r in lrows:
                ema = 0.9 * ema + 0.1 * r["loss"]
                smooth.append(ema)
            loss = pd.concat([loss, pd.DataFrame({"step": loss["step"], "loss": smooth,
                                                  "series": ["smoothed"] * len(lrows)})])
        vsteps, vloss = series(rows, "val_loss")  # validation loss (issue 23), beside the training loss
        if vsteps:
            loss = pd.concat([loss, pd.DataFrame({"step": vsteps, "loss": vloss,
                                                  "series": ["validation"] * len(vsteps)})])
        lr = pd.DataFrame({"step": [r["step"] for r in lrows if r.get("lr") is not None],
                           "lr": [r["lr"] for r in lrows if r.get("lr") is not None]})
        total = prog["max_steps"] or "?"
        mem = f"{prog['peak_mem_gib']:.2f} GiB" if prog["peak_mem_gib"] is not None else "—"
        sps = f"{prog['s_per_step']:.2f}" if prog["s_per_step"] else "—"
        loss_now = f"{prog['loss']:.4f}" if prog["loss"] is not None else "—"
        head = (f"**job {j.id} {j.name}: {j.state}** — step **{prog['step']} / {total}**, "
                f"s/step {sps}, ETA {runs.fmt_seconds(prog['eta_s']) if j.state == 'running' else '—'}, "
                f"peak memory {mem}, loss {loss_now}")
        if j.state in ("failed", "stopped") and j.note:
            head += f"\n\n```\n{j.note.strip()[-1500:]}\n```"
        log_text = tail(j.log_path, 40)
        recent = tail(j.log_path, 400)  # the warnings of this attempt (the runner marks where each one starts)
        recent = recent[recent.rfind("=== attempt "):] if "=== attempt " in recent else recent
        warnings = runs.health(j.run_dir, rows, recent)
        health = ("**Health:** " + "; ".join(warnings)) if warnings else "Health: no warnings"
        gal = [(str(s.path), f"{s.label} · prompt {s.index}") for s in runs.samples(j.run_dir)]
        grid = runs.grid(j.run_dir)
        return head, loss, lr, health, gal, (str(grid) if grid else None), log_text

    watch_outs = [u.wt_progress, u.wt_loss, u.wt_lr, u.wt_health, u.wt_gallery, u.wt_grid, u.wt_log]
    u.wt_pick.change(watch, [u.wt_pick], watch_outs)

    sig = gr.State(None)  # what the charts and galleries last showed: unchanged parts are not re-sent

    def signature(pick):
        try:
            j = store.get(int(pick))
        except (JobError, ValueError):
            return None
        files = [j.run_dir / "metrics.jsonl", j.run_dir / "samples"]
        return pick, tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in files)

    def tick(pick, live, jpick, last):
        rows, note = jobs_refresh(jpick)
        if not (live and pick):
            return [rows, note] + [gr.update() for _ in watch_outs] + [last]
        now = signature(pick)
        out = list(watch(pick))
        if now is not None and now == last:  # only the text parts may have changed (state, ETA, log)
            for i in (1, 2, 4, 5):
                out[i] = gr.update()
        return [rows, note] + out + [now]

    u.timer.tick(tick, [u.wt_pick, u.wt_live, u.jb_pick, sig], [u.jb_table, u.jb_note, *watch_outs, sig],
                 show_progress="hidden")
    demo.load(lambda: job_rows(), None, [u.jb_table])


def _compare_events(gr, state: UIState, u) -> None:
    import pandas as pd

    store = state.store

    def compare(picks):
        try:
            picks = [int(p) for p in picks or []]
            jobs = [store.get(p) for p in picks]
        except (JobError, ValueError) as exc:  # a job deleted since the list was drawn
            return pd.DataFrame({"setting": [f"⚠ {exc}; pick again"]}), pd.DataFrame(
                {"step": [], "loss": [], "job": []}), []
        if len(picks) < 2:
            return pd.DataFrame({"setting": ["pick two or more jobs"]}), pd.DataFrame(
                {"step": [], "loss": [], "job": []}), []
        gone = {j.id for j in jobs if store.successor(j) is not None}  # their folder holds a newer job's run
        flat = [_settings_of(j, own_run=j.id not in gone) for j in jobs]
        keys_all = sorted(set().union(*flat))
        diff = [[k] + [str(f.get(k, "—")) for f in flat] for k in keys_all
                if len({repr(f.get(k)) for f in flat}) > 1]
        cols = ["setting"] + [f"{j.id}: {j.name}" for j in jobs]
        curves = []
        for j in jobs:
            if j.id in gone:
                continue
            for r in runs.loss_rows(runs.metrics(j.run_dir)):
                curves.append({"step": r["step"], "loss": r["loss"], "job": f"{j.id}: {j.name}"})
            for step, v in zip(*series(runs.metrics(j.run_dir), "val_loss")):
                curves.append({"step": step, "loss": v, "job": f"{j.id}: {j.name} (validation)"})
        by_job = [{} if j.id in gone else {(s.label, s.index): s for s in runs.samples(j.run_dir)} for j in jobs]
        common = sorted(set.intersection(*[set(b) for b in by_job]) if by_job else set(),
                        key=lambda t: ({"before": -1, "after": 10**12}.get(t[0], int(t[0].split()[-1])
                                                                            if t[0].startswith("step") else 0),
                                       t[1]))
        gal = []
        for key in common:
            for j, b in zip(jobs, by_job):
                state.allow(j.run_dir)
                gal.append((str(b[key].path), f"{key[0]} · prompt {key[1]} · job {j.id}"))
        return pd.DataFrame(diff, columns=cols), pd.DataFrame(curves or {"step": [], "loss": [], "job": []}), gal

    u.cp_go.click(compare, [u.cp_pick], [u.cp_diff, u.cp_loss, u.cp_gallery])


def _download_events(gr, state: UIState, u) -> None:
    store = state.store

    def files_of(pick):
        if not pick:
            return gr.update(choices=[], value=None), None, ""
        try:
            j = store.get(int(pick))
        except (JobError, ValueError) as exc:  # deleted since the list was drawn
            return gr.update(choices=[], value=None), None, f"⚠ {exc}"
        if (newer := store.successor(j)) is not None:
            return gr.update(choices=[], value=None), None, \
                f"job {j.id} never began a run; its output folder is now job {newer.id}'s: pick job {newer.id}"
        files = [str(p) for p in runs.lora_files(j.run_dir)]
        state.allow(j.run_dir)
        return gr.update(choices=files, value=files[0] if files else None), (files[0] if files else None), \
            "" if files else "no LoRA file yet (the first appears at the first save)"

    u.dl_pick.change(files_of, [u.dl_pick], [u.dl_file, u.dl_download, u.dl_out])

    def pick_file(pick, path):
        if not path or not pick:
            return None
        try:
            j = store.get(int(pick))
        except (JobError, ValueError):
            return None
        if Path(path).resolve().parent != j.run_dir.resolve():
            return None
        return path

    u.dl_file.change(pick_file, [u.dl_pick, u.dl_file], [u.dl_download])

    def inspect(pick, path):
        if not path:
            return "pick a LoRA file"
        try:
            j = store.get(int(pick))
        except (JobError, ValueError) as exc:
            return f"⚠ {exc}"
        if Path(path).resolve().parent != j.run_dir.resolve():
            return f"{path}: not a file of job {j.id}"
        try:
            proc = subprocess.run([_python(), "-m", "lorakit", "inspect", path], capture_output=True, text=True,
                                  timeout=300)
        except subprocess.TimeoutExpired:
            return f"⚠ lorakit inspect {path} did not finish in 5 minutes"
        return (proc.stdout + proc.stderr).strip()

    u.dl_inspect.click(inspect, [u.dl_pick, u.dl_file], [u.dl_out])

    def package(pick, path=None):
        """`lorakit package` of the LoRA file picked (the final LoRA, or ``--step N`` for a step checkpoint, the
        best-step LoRA or an extended run's earlier end) into a new folder of the run, offered as one zip."""
        import shutil
        import time

        if not pick:
            return None, "pick a job"
        try:
            j = store.get(int(pick))
            if (newer := store.successor(j)) is not None:
                raise LorakitError(f"job {j.id} never began a run; its output folder is now job {newer.id}'s: pick "
                                   f"job {newer.id}")
            step = runs.package_step(j.run_dir, Path(path)) if path else None
        except (LorakitError, ValueError) as exc:
            return None, f"⚠ {exc}"
        stamp = time.strftime("package-%Y%m%d-%H%M%S") + ("" if step is None else f"-step{step}")
        out, n = j.run_dir / stamp, 1
        while out.exists() or out.with_suffix(".zip").exists():  # a second click (another tab) in the same second
            n += 1
            out = j.run_dir / f"{stamp}-{n}"
        cmd = [_python(), "-m", "lorakit", "package", str(j.run_dir), "-o", str(out)]
        try:
            proc = subprocess.run(cmd + ([] if step is None else ["--step", str(step)]), capture_output=True,
                                  text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return None, f"⚠ lorakit package did not finish in 10 minutes; {out} may be incomplete"
        if proc.returncode != 0 or not out.is_dir():
            return None, (proc.stdout + proc.stderr).strip()
        try:
            archive = shutil.make_archive(str(out), "zip", root_dir=out)
        except OSError as exc:  # a full disk: the package folder is there, its zip is not
            return None, (proc.stdout + proc.stderr).strip() + f"\n⚠ the zip could not be written " \
                f"({exc.filename or out}: {exc.strerror or exc}); the package is in {out}"
        return archive, (proc.stdout + proc.stderr).strip() + f"\nzip: {archive}"

    u.dl_package.click(package, [u.dl_pick, u.dl_file], [u.dl_download, u.dl_out])


def _check_override_paths(roots: ds.Roots, overrides: Sequence[str]) -> None:
    """The path values of ``section.key=value`` changes (Duplicate, Resume) checked against the allowed folders."""
    from lorakit.config.load import parse_override

    values = {}
    for item in overrides:
        parts, value = parse_override(item)
        if len(parts) == 2 and isinstance(value, str):
            values[".".join(parts)] = os.path.abspath(os.path.expanduser(value)) if value.strip() else value
    ds.check_config_paths(roots, values)


def _settings_of(job, own_run: bool = True) -> dict[str, Any]:
    """``section.key`` → value of every setting the job's run uses: its run folder's ``config.toml`` (what the run
    trains with: the preset's values spelled out, a Resume's changes included), else the job's TOML as the CLI loads
    it; the TOML's own text when neither loads."""
    import tomllib

    from lorakit.config.load import config_to_dict, load_config

    for path in ((job.run_dir / "config.toml",) if own_run else ()) + (job.toml_path,):
        try:
            data = config_to_dict(load_config(path))
            break
        except (LorakitError, OSError, ValueError):
            continue
    else:
        try:
            data = tomllib.loads(job.toml_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
    return {f"{s}.{k}": v for s, body in data.items() if isinstance(body, dict) for k, v in body.items()} | \
        ({"preset": data["preset"]} if isinstance(data.get("preset"), str) else {})


def _family_of(job) -> Optional[str]:
    import tomllib

    try:
        return tomllib.loads(job.toml_path.read_text(encoding="utf-8")).get("model", {}).get("family")
    except (OSError, tomllib.TOMLDecodeError):
        return None


def _widget(gr, f: fm.Field, state: UIState):
    label = f.spec.name
    default = f.spec.default
    if f.key == "save.dir":
        default = str(state.home / "runs")
    value = fm.to_widget(f, default)
    common = dict(label=label, info=f.help(), elem_id=f"f-{f.key.replace('.', '-')}",
                  visible=f.visible(fm.DEFAULT_FAMILY))
    if f.widget == "checkbox":
        return gr.Checkbox(value=value, **common)
    if f.widget in ("tristate", "choice"):
        choices = f.choices if f.widget == "tristate" or f.spec.default is not None else [""] + f.choices
        return gr.Dropdown(choices=choices, value=value, **common)
    if f.widget == "lines":
        return gr.Textbox(value=value, lines=3, **common)
    return gr.Textbox(value=value, **common)


# ================================================================================================ server


def parse_auth(auth: Optional[str], auth_file: Optional[str]) -> Optional[list[tuple[str, str]]]:
    """``user:password`` and/or a file of such lines → Gradio's credential list; LorakitError for a bad one."""
    pairs = []
    sources = []
    if auth:
        sources.append(("--auth", auth))
    if auth_file:
        try:
            text = Path(auth_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise LorakitError(f"--auth-file {auth_file}: cannot read ({exc.strerror or exc})") from None
        sources += [(f"{auth_file}:{n}", ln.strip()) for n, ln in enumerate(text.splitlines(), 1)
                    if ln.strip() and not ln.lstrip().startswith("#")]
    for where, item in sources:
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise LorakitError(f"{where}: expected user:password")
        pairs.append((user, password))
    return pairs or None


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host != "0.0.0.0" else "", 0))
        return int(s.getsockname()[1])


def serve(*, home: Path, port: Optional[int] = None, listen: bool = False, auth: Optional[str] = None,
          auth_file: Optional[str] = None, allow_roots: Sequence[str] = (), max_upload_mb: float = ds.MAX_UPLOAD_MB,
          block: bool = True):
    """Start the UI; prints its URL. ``listen`` serves other hosts and then requires credentials."""
    creds = parse_auth(auth, auth_file)
    if not 0 < max_upload_mb < float("inf"):  # (Gradio's own parse of "-5mb" was a ValueError traceback)
        raise LorakitError(f"--max-upload-mb: give the largest upload in MB (more than 0), got {max_upload_mb:g}")
    if listen and not creds:
        raise LorakitError("ui --listen: refusing to serve other hosts without a password; add --auth user:password "
                           "or --auth-file FILE (lines of user:password)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    offline_by_ui = "HF_HUB_OFFLINE" not in os.environ
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = Path(home).expanduser().resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, no permission, a read-only file system
        raise LorakitError(f"--home {home}: cannot use it as the UI's folder ({exc.strerror or exc}: "
                           f"{exc.filename or home}); give a folder you can write") from None
    roots = ds.Roots(tuple(Path(r).expanduser().resolve() for r in [home, Path.cwd(), *allow_roots])
                     if listen else None)
    state = UIState(home=home, roots=roots, store=JobStore(home), max_upload_mb=max_upload_mb,
                    allowed=[str(home)], hub_offline_by_ui=offline_by_ui)
    host = "0.0.0.0" if listen else "127.0.0.1"
    if port:  # taken (a first `lorakit ui` still running, another server): one line, before the page is built
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host if host != "0.0.0.0" else "", port))
            except OSError as exc:
                raise LorakitError(f"--port {port}: cannot serve on it ({exc.strerror or exc}: another `lorakit ui` "
                                   "or another program uses it); pick another port, or leave --port out for a free "
                                   "one") from None
    port = port or free_port(host)
    ui_lock = hold_home(home, port)  # one UI per home: a second one is refused (its queue is this one's)
    demo = build(state)
    stop = threading.Event()

    def keeper():  # the queue moves on (and states are reconciled) even with no page open
        while not stop.wait(2.0):
            try:
                state.store.reconcile()
            except Exception as exc:  # keep the server's queue alive; say what happened
                print(f"lorakit ui: job queue: {exc}", file=sys.stderr, flush=True)

    threading.Thread(target=keeper, name="lorakit-ui-queue", daemon=True).start()
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, auth=creds, prevent_thread_lock=True, quiet=True,
                show_error=True, allowed_paths=state.allowed, ssr_mode=False,
                max_file_size=int(max_upload_mb * 2**20), css=CSS, footer_links=[])  # bytes: 0.5 MB is not 0
    shown = "127.0.0.1" if not listen else socket.gethostname()
    print(f"lorakit ui: http://{shown}:{port}  (jobs and datasets under {home}; Ctrl-C stops the UI, "
          "never a running job)", flush=True)
    if not block:
        state.ui_lock = ui_lock  # type: ignore[attr-defined]  (held while the caller keeps the UI)
        return demo, state
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        demo.close()
        ui_lock.release()
    return demo, state
