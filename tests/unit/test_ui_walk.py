"""A new user's walk through the web UI, driven through the page's own event handlers (no browser): what each
handler shows, writes and refuses. Jobs run `true` instead of training (the CLI's tests train)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from lorakit.ui.plan import CPU

from tests.unit.test_ui_families import built_page


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    demo, fns, store = built_page(home)
    by_name = {f.fn.__qualname__.replace("<locals>.", ""): f for f in fns}
    jobs_buttons = sorted((f.fn for f in fns if f.name == "<lambda>"), key=lambda fn: fn.__code__.co_argcount)
    by_name["the Jobs page's buttons"] = {c: fn for fn in jobs_buttons  # by the action they pass (Watch's come first)
                                          for c in fn.__code__.co_consts if isinstance(c, str)}
    return by_name, home, store


def _key(comp) -> str:
    elem = comp.elem_id or ""
    return "model.family" if elem == "tr-family" else elem[2:].replace("-", ".", 1)


def _toy_form(fns, home: Path, family: str = "sdxl", **changes) -> tuple[list[str], dict]:
    """The Train form after "Use the toy models" on a toy-world dataset, with ``changes`` (key → widget text)."""
    from lorakit.toy import world

    toy = fns["_train_fill_events.toy"]
    comps = toy.inputs[1:]
    keys = [_key(c) for c in comps]
    values = {k: c.value for k, c in zip(keys, comps)}
    data = home / "toyset"
    if not data.is_dir():
        world.write_demo_dataset(data, trigger="zkx", repeats=2)
    values["data.dir"] = str(data)
    out = toy.fn(family, *[values[k] for k in keys])
    values.update({k: v for k, v in zip(keys, out[1:]) if not isinstance(v, dict)})  # dict: gr.update()
    values.update({k.replace("__", "."): v for k, v in changes.items()})
    return keys, values


def _show(fns, keys, values, card=CPU):
    return fns["_train_events.show"].fn("(none)", card, None, *[values[k] for k in keys])


def test_plan_counts_the_steps_max_epochs_gives(page):
    """training.max_epochs: the run trains max_epochs × steps per epoch (validation images held out); the plan said
    max_steps (1500, the default) and '≈ 125 epochs'."""
    fns, home, _ = page
    keys, values = _toy_form(fns, home, training__max_steps="1500", training__max_epochs="3",
                             data__validation_split="0.25")
    res = _show(fns, keys, values)
    assert "valid" in res[0], res[0]
    # 12 toy images, 3 held out for validation; 9 × 2 repeats in batches of 2 = 9 steps an epoch
    assert res[2].startswith("**27 steps** (3 epochs: training.max_epochs) × batch 2 × accumulation 1 (9 steps/epoch "
                             "over 9 images)"), res[2]
    values["data.dir"] = str(home / "not-there")
    assert _show(fns, keys, values)[2].startswith("**3 epochs** (training.max_epochs) × batch 2 × accumulation 1: "
                                                  "the steps follow from the dataset")


class _Sel:  # gr.SelectData as the gallery / table sends it
    def __init__(self, index):
        self.index = index


def test_caption_that_is_no_text_is_said_and_replaced_with_a_backup(page, tmp_path):
    """Clicking an image whose caption is not UTF-8 raised UnicodeDecodeError (a traceback, the editor stuck);
    now the status says so and Save keeps the old bytes as .bak."""
    from PIL import Image

    fns, home, _ = page
    folder = tmp_path / "set" / "10_zkx toy"
    folder.mkdir(parents=True)
    img = folder / "a.png"
    Image.new("RGB", (64, 64), (200, 0, 0)).save(img)
    (folder / "a.txt").write_bytes(b"\xff\xfe\x00\xd8bad")
    sel, cap, status = fns["_dataset_events.pick_image"].fn([str(img)], _Sel(0))
    assert (sel, cap) == (str(img), "")
    assert "a.txt: cannot be read (not UTF-8 text)" in status and "kept as a.txt.bak" in status
    saved = fns["_dataset_events.save_cap"].fn(str(tmp_path / "set"), sel, "a zkx toy")
    assert "caption saved" in saved[0]
    assert (folder / "a.txt").read_text() == "a zkx toy\n"
    assert (folder / "a.txt.bak").read_bytes() == b"\xff\xfe\x00\xd8bad"


def test_caption_save_refuses_a_stray_file_of_the_report(page, tmp_path):
    """A report row can name a non-image (notes.docx): opening it and saving wrote notes.txt, the user's file."""
    import pandas as pd

    fns, home, _ = page
    folder = tmp_path / "set" / "10_zkx toy"
    folder.mkdir(parents=True)
    (folder / "notes.docx").write_bytes(b"PK")
    (folder / "notes.txt").write_text("my notes")
    table = pd.DataFrame([["skipped", str(folder / "notes.docx"), "not an image"]],
                         columns=["action", "file", "reason"])
    sel, cap, status = fns["_dataset_events.pick_problem"].fn(table, _Sel([0, 1]))
    assert sel == str(folder / "notes.docx") and cap == "my notes"
    out = fns["_dataset_events.save_cap"].fn(str(tmp_path / "set"), sel, "overwritten?")
    assert "notes.docx: not an image, so it has no caption" in out[0]
    assert (folder / "notes.txt").read_text() == "my notes" and not (folder / "notes.txt.bak").exists()


def test_show_with_an_unwritable_toml_folder_still_shows_the_toml(page):
    """Check + show wrote <home>/toml/NAME.toml unguarded: a full disk or a file in the way was a traceback."""
    fns, home, _ = page
    keys, values = _toy_form(fns, home, save__name="blocked")
    (home / "toml").mkdir(exist_ok=True)
    (home / "toml" / "blocked.toml").mkdir()  # a folder where the file goes
    res = _show(fns, keys, values)
    assert "valid: this is the TOML a job runs; the TOML file to download could not be written" in res[0]
    assert "blocked.toml" in res[0] and 'name = "blocked"' in res[1] and res[3] is None


def test_compare_shows_the_settings_the_runs_used(page):
    """Compare read the jobs' TOMLs: a preset's values never showed, and a run extended by Resume
    (training.max_steps=40 in its config.toml) showed the TOML's 20. It now compares each run's config.toml."""
    from lorakit.config.load import dump_toml, load_config

    fns, home, store = page
    keys, values = _toy_form(fns, home, save__name="cmp-a")
    text_a = fns["_train_events.show"].fn("(none)", CPU, None, *[values[k] for k in keys])[1]
    a = store.add(text_a)
    values["save.name"] = "cmp-b"
    values["network.rank"] = "4"
    b = store.add(fns["_train_events.show"].fn("(none)", CPU, None, *[values[k] for k in keys])[1])
    a.run_dir.mkdir(parents=True, exist_ok=True)
    (a.run_dir / "config.toml").write_text(dump_toml(load_config(a.toml_path, ["training.max_steps=40"])))
    diff = fns["_compare_events.compare"].fn([str(a.id), str(b.id)])[0]
    rows = {r[0]: list(r[1:]) for r in diff.values.tolist()}
    assert rows["training.max_steps"] == ["40", "20"]  # job a's run was extended; b never ran: its TOML
    assert rows["network.rank"] == ["8", "4"] and rows["save.name"] == ["cmp-a", "cmp-b"]
    assert "optimizer.lr" not in rows and "model.family" not in rows  # the same in both


def test_package_packages_the_lora_file_picked(page, monkeypatch):
    """Download: 'Package' ignored the LoRA file picked beside it and always packaged the final LoRA; now a step
    checkpoint (or the best step's LoRA) is packaged with `--step N`, and the EMA file is refused in one line."""
    import subprocess

    import torch

    from lorakit.lora.io import save_safetensors_atomic

    fns, home, store = page
    keys, values = _toy_form(fns, home, save__name="pkg")
    job = store.add(fns["_train_events.show"].fn("(none)", CPU, None, *[values[k] for k in keys])[1])
    run = job.run_dir
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text(job.toml_path.read_text())
    for f in ("pkg.safetensors", "pkg-step00000005.safetensors", "pkg-ema.safetensors"):
        (run / f).write_bytes(b"x")
    save_safetensors_atomic(run / "pkg-best.safetensors", {"a": torch.zeros(1)}, {"lorakit_best_step": "10"})
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        out = Path(cmd[cmd.index("-o") + 1])
        out.mkdir()
        (out / "README.md").write_text("card")
        return subprocess.CompletedProcess(cmd, 0, f"package written to {out}\n", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    package = fns["_download_events.package"].fn
    zip_path, text = package(str(job.id), str(run / "pkg-step00000005.safetensors"))
    assert calls[-1][-2:] == ["--step", "5"] and zip_path.endswith("-step5.zip") and Path(zip_path).is_file()
    package(str(job.id), str(run / "pkg-best.safetensors"))
    assert calls[-1][-2:] == ["--step", "10"]
    package(str(job.id), str(run / "pkg.safetensors"))
    assert "--step" not in calls[-1]
    again = package(str(job.id), str(run / "pkg.safetensors"))[0]  # a second click in the same second
    assert Path(again).is_file() and len(list(run.glob("package-*.zip"))) == 4
    n = len(calls)
    assert package(str(job.id), str(run / "pkg-ema.safetensors")) == (
        None, "⚠ pkg-ema.safetensors: `lorakit package` packages the final LoRA or a step's; pick pkg.safetensors "
              "or a pkg-stepNNNNNNNN.safetensors checkpoint")
    assert len(calls) == n


def test_auto_caption_shows_the_captions_it_wrote(page, tmp_path, monkeypatch):
    """After Auto-caption the thumbnails still said '(no caption)' until the folder was opened again; a caption
    command that hung past its hour was a TimeoutExpired traceback."""
    import subprocess

    from PIL import Image

    fns, home, _ = page
    folder = tmp_path / "set" / "10_zkx toy"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(folder / "a.png")

    def fake_run(argv, **kw):
        (folder / "a.txt").write_text("zkx toy, a black square\n")
        return subprocess.CompletedProcess(argv, 0, "1 captioned, 0 kept\n", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    status, gallery, paths = fns["_dataset_events.run_caption"].fn(str(tmp_path / "set"), "toy", "")
    assert status == "1 captioned, 0 kept"
    assert gallery == [(str(folder / "a.png"), "zkx toy, a black square")] and paths == [str(folder / "a.png")]

    def slow(argv, **kw):
        raise subprocess.TimeoutExpired(argv, kw.get("timeout"))

    monkeypatch.setattr(subprocess, "run", slow)
    status = fns["_dataset_events.run_caption"].fn(str(tmp_path / "set"), "toy", "")[0]
    assert "lorakit caption: did not finish in an hour; the captions written so far are kept" in status


def test_base_model_missing_or_of_another_family_is_said_before_a_job_fails(page, tmp_path):
    """A missing base model file or another family's checkpoint passed Check and Start: the job started, loaded for
    half a minute and failed. Now Check says it under the field, and Start refuses it (nothing queued)."""
    import json

    from lorakit.toy.paths import toy_paths

    fns, home, store = page
    show, start = fns["_train_events.show"].fn, fns["_train_events.start"].fn
    n_jobs = len(store.list())
    keys, values = _toy_form(fns, home, family="flux1", save__name="fam")
    i = keys.index("model.checkpoint")
    cases = {str(tmp_path / "gone.safetensors"): f"model.checkpoint: {tmp_path / 'gone.safetensors'} not found",
             str(toy_paths("sdxl")["checkpoint"]): "is an SDXL-layout checkpoint of another size",
             str(tmp_path / "sdxl-folder"): "is a diffusers SDXL folder (StableDiffusionXLPipeline), not a base "
                                            "model the flux1 family trains on; set model.family = \"sdxl\""}
    (tmp_path / "models").mkdir()  # the folder the files are in, picked instead of the file
    (tmp_path / "models" / "notes.txt").write_text("x")
    cases[str(tmp_path / "models")] = f"model.checkpoint: folder {tmp_path / 'models'} holds no model"
    (tmp_path / "flux1-00001-of-00002.safetensors").write_bytes(b"")  # a split file without its second part
    cases[str(tmp_path / "flux1-00001-of-00002.safetensors")] = \
        "model.checkpoint: part flux1-00002-of-00002.safetensors of the split file is missing"
    (tmp_path / "sdxl-folder").mkdir()
    (tmp_path / "sdxl-folder" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    for path, said in cases.items():
        values["model.checkpoint"] = path
        res = show("(none)", CPU, None, *[values[k] for k in keys])
        assert said in html.unescape(res[0]) and f'checkpoint = "{path}"' in res[1], res[0]
        assert res[4 + i]["info"].startswith("⚠ model.checkpoint: ") and res[-1] == "model.checkpoint"
        out = start("(none)", None, *[values[k] for k in keys])
        assert said in html.unescape(out[0]) and "nothing was queued" in out[0]
    values["model.ae"] = str(tmp_path / "ae.safetensors")
    values["model.checkpoint"] = str(toy_paths("flux1")["checkpoint"])
    assert f"model.ae: {tmp_path / 'ae.safetensors'} not found" in show("(none)", CPU, None,
                                                                       *[values[k] for k in keys])[0]
    assert len(store.list()) == n_jobs


def test_dataset_check_is_the_familys(page, tmp_path):
    """The Dataset page's check read every dataset as SDXL does, at 1024 px: an SD 1.5 dataset's buckets and 'too
    small' warnings were not the ones its run (512 px) sees. It now checks as the Train page's family trains."""
    from PIL import Image

    fns, home, _ = page
    folder = tmp_path / "set" / "1_zkx toy"
    folder.mkdir(parents=True)
    Image.new("RGB", (1000, 600)).save(folder / "wide.png")
    check = fns["_dataset_events.check"].fn
    report, _, status = check(str(tmp_path / "set"), "528", "flux2")
    assert "1 usable image(s)" in status and "checked as FLUX.2 trains at 528 px" in status
    report, _, status = check(str(tmp_path / "set"), "", "sd15")  # the field left empty: the family's own size
    assert "checked as SD 1.5 trains at 512 px" in status and "buckets: 640x384:1" in report
    assert "buckets: 1280x768:1" in check(str(tmp_path / "set"), "", "sdxl")[0]


def test_load_toml_shows_the_toml_start_queues(page, tmp_path, monkeypatch):
    """After Load TOML the box labelled 'exactly what the job runs' held the file's own text (relative paths,
    comments), while Start queued the form's TOML with absolute paths: two different TOMLs under one label."""
    from lorakit.toy.paths import toy_paths

    fns, home, store = page
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "5_zkx toy").mkdir(parents=True)
    src = tmp_path / "mine.toml"
    src.write_text(f'# my run\n[model]\nfamily = "sdxl"\ncheckpoint = "{toy_paths("sdxl")["checkpoint"]}"\n'
                   '[data]\ndir = "data"\n[network]\nrank = 4\n[save]\ndir = "runs"\nname = "loaded"\n')
    load = fns["_train_fill_events.load_toml"]
    out = load.fn(str(src))
    shown = out[2]
    assert f'dir = "{tmp_path / "data"}"' in shown and "# my run" not in shown and "rank = 4" in shown
    values = out[3:]
    started = fns["_train_events.start"].fn(out[1], None, *values)
    jid = re.search(r"job (\d+) \(loaded\)", started[0]).group(1)
    assert (home / "jobs" / jid / "run.toml").read_text() == shown == started[1]


def test_plan_counts_a_dataset_toml_and_says_when_it_is_missing(page, tmp_path):
    """With data.config (kohya's dataset TOML) instead of data.dir the plan counted no epochs (only data.dir was
    scanned), and a missing dataset TOML passed Check without a word."""
    from PIL import Image

    fns, home, _ = page
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    ds_toml = tmp_path / "ds.toml"
    ds_toml.write_text('[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = "imgs"\nnum_repeats = 2\n'
                       'class_tokens = "zkx toy"\n')
    keys, values = _toy_form(fns, home, data__dir="", data__config=str(ds_toml), training__max_steps="12",
                             training__batch_size="1")
    plan = _show(fns, keys, values)[2]
    assert plan.startswith("**12 steps** × batch 1 × accumulation 1 ≈ 2.0 epochs (6 steps/epoch over 6 images)"), \
        plan
    values["data.config"] = str(tmp_path / "gone.toml")
    plan = _show(fns, keys, values)[2]
    assert f"⚠ data.config: file {tmp_path / 'gone.toml'} not found; a job started now would stop" in plan


def test_open_says_when_images_lie_where_training_never_looks(page, tmp_path):
    """A folder of images without an `N_trigger class` subfolder opened as '3 image(s)', thumbnails and all; a run
    on it finds no usable image. Open now says they are not trained on and where they go."""
    from PIL import Image

    fns, home, _ = page
    for i in range(3):
        Image.new("RGB", (64, 64)).save(tmp_path / f"{i}.png")
    status, gallery, paths = fns["_dataset_events.open_root"].fn(str(tmp_path))[:3]
    assert len(paths) == 3 and "3 image(s) directly in this folder, which training does not use" in status
    assert "subfolder named like &#x27;10_ohwx person&#x27;" in status
    (tmp_path / "10_zkx toy").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "10_zkx toy" / "a.png")
    assert fns["_dataset_events.open_root"].fn(str(tmp_path))[0] == html.escape(f"{tmp_path}: 1 image(s)")


def test_a_job_whose_folder_went_to_a_corrected_rerun_shows_nothing_of_that_run(page):
    """Once a corrected re-run took the folder of a job that failed before its run began, the old job's Watch,
    Jobs row, Download and Compare showed the new run's steps, loss, samples, LoRA files and settings as its own."""
    import json
    import time

    fns, home, store = page
    keys, values = _toy_form(fns, home, save__name="taken")
    text = _show(fns, keys, values)[1]
    old = store.add(text)
    deadline = time.time() + 30
    while store.reconcile_one(store.get(old.id)).state != "failed":  # its process (`true`) wrote nothing
        assert time.time() < deadline
        time.sleep(0.05)
    new = store.add(text)
    run = new.run_dir
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, "lr": 1e-3, "seconds": 1.0}) + "\n")
    (run / "taken.safetensors").write_bytes(b"x")
    (run / "config.toml").write_text(text.replace("rank = 8", "rank = 16"))
    head = fns["_watch_events.watch"].fn(str(old.id))[0]
    assert f"its output folder {run} is now job {new.id}'s (taken): pick job {new.id}" in head
    assert "step **1" in fns["_watch_events.watch"].fn(str(new.id))[0]
    rows = {r[0]: r for r in fns["_jobs_events.jobs_refresh"].fn(None)[0].values.tolist()}
    assert rows[old.id][3] == "—" and rows[old.id][5].endswith(f"(now job {new.id}'s)") and rows[new.id][3] == "1"
    assert fns["_download_events.files_of"].fn(str(old.id))[2].endswith(f"is now job {new.id}'s: pick job {new.id}")
    assert fns["_download_events.package"].fn(str(old.id))[0] is None
    diff = fns["_compare_events.compare"].fn([str(old.id), str(new.id)])
    assert {r[0]: r[1:] for r in diff[0].values.tolist()}["network.rank"] == ["8", "16"]
    assert set(diff[1]["job"]) == {f"{new.id}: taken"}


def test_watch_health_is_this_attempts(page):
    """The health line read the log's last 400 lines across attempts: a warning of a run stopped and resumed with
    the problem fixed stayed on screen as if the resumed run had it."""
    fns, home, store = page
    keys, values = _toy_form(fns, home, save__name="health")
    job = store.add(_show(fns, keys, values)[1])
    job.log_path.write_text("\n=== attempt 1: python -m lorakit train run.toml\nwarning: data.dir: 3 images are tiny\n"
                            "=== attempt 1 ended with exit status 130\n"
                            "\n=== attempt 2: python -m lorakit train --resume RUN\nstep 5 of 20\n")
    assert fns["_watch_events.watch"].fn(str(job.id))[3] == "Health: no warnings"
    with open(job.log_path, "a") as fh:
        fh.write("warning: sample at step 10 is black\n")
    assert fns["_watch_events.watch"].fn(str(job.id))[3] == "**Health:** sample at step 10 is black"


def test_listening_ui_keeps_jobs_inside_the_allowed_folders(page, tmp_path, monkeypatch):
    """With --listen, only the Dataset page's folder was checked against --allow-root: the Train form (save.dir,
    data.dir, ...), Duplicate and Resume changes could make a job write its run anywhere, which Watch and Download
    then served."""
    from lorakit.ui import dataset as ds

    fns, home, store = page
    start = fns["_train_events.start"].fn
    state = start.__closure__[start.__code__.co_freevars.index("state")].cell_contents
    monkeypatch.setattr(state, "roots", ds.Roots((home,)))
    keys, values = _toy_form(fns, home, save__name="outside", save__dir=str(tmp_path / "elsewhere"))
    n = len(store.list())
    out = start("(none)", None, *[values[k] for k in keys])
    assert html.unescape(out[0]).startswith(f"<span class='lk-msg-error'>⚠ save.dir: {tmp_path / 'elsewhere'}: "
                                            "outside the folders this UI may use while listening on other hosts")
    assert len(store.list()) == n and not (tmp_path / "elsewhere").exists()
    values["save.dir"] = str(home / "runs")
    job_id = re.search(r"job (\d+) \(outside\)", start("(none)", None, *[values[k] for k in keys])[0]).group(1)
    dup = fns["the Jobs page's buttons"]["duplicate"]
    msg = dup(job_id, f"data.cache_dir={tmp_path / 'cache'}")[0]
    assert f"data.cache_dir: {tmp_path / 'cache'}: outside the folders" in msg and len(store.list()) == n + 1
    msg = fns["the Jobs page's buttons"]["resume"](job_id, f"data.dir={tmp_path}")[0]
    assert f"data.dir: {tmp_path}: outside the folders" in msg


def test_upload_says_caption_files_training_does_not_read(page, tmp_path):
    """Uploaded `.caption` files were counted as captions ('added 1 image(s) and 1 caption(s)'), while a run reads
    <image>.txt unless data.caption_extension says otherwise: the thumbnails said '(no caption)'."""
    from PIL import Image

    fns, home, _ = page
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "a.caption").write_text("zkx toy, a black square")
    status, gallery = fns["_dataset_events.add_files"].fn(str(tmp_path / "set"), "zkx", "toy", "10",
                                                          [str(tmp_path / "a.png"), str(tmp_path / "a.caption")])[:2]
    assert "added 1 image(s) and 1 caption(s)" in status
    assert "1 of them .caption files, which training reads only with data.caption_extension = &quot;.caption&quot;" \
        in status and gallery[0][1] == "(no caption)"
