"""The seventh session's walk (the web UI, captioning, the ComfyUI nodes, `lorakit plan`, a resumed run, publishing):
each test is a user's step that printed something wrong or confusing, or lost what the user had."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorakit.cli import main
from lorakit.errors import LorakitError
from tests.integration.test_bad_inputs_walk import _error, a_file, run_toml  # noqa: F401 (fixtures)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_a_resume_with_more_steps_records_them_in_config_toml_and_keeps_the_old_one(run_toml, tmp_path, capsys):
    """`lorakit train --resume DIR training.max_steps=4`: config.toml said 2 after the run went on to 4 (sweep
    reports, inspect and the next resume read it); and the metrics' lr column showed each step the next step's lr, so
    the last two rows repeated one value."""
    run = tmp_path / "out" / "ohwx"
    common = ["optimizer.scheduler=linear", "optimizer.warmup_steps=0", "optimizer.lr=1e-3", "log.every_n_steps=1",
              "log.tensorboard=false", "training.device=cpu", "training.mixed_precision=no"]
    assert main(["train", str(run_toml), *common]) == 0
    first = (run / "config.toml").read_text()
    assert tomllib.loads(first)["training"]["max_steps"] == 2
    delivered = (run / "ohwx.safetensors").read_bytes()
    # linear decay over 2 steps from 1e-3: step 1 trains at 1e-3, step 2 at 5e-4
    assert [(r["step"], r["lr"]) for r in _rows(run)] == [(1, pytest.approx(1e-3)), (2, pytest.approx(5e-4))]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "training.max_steps=4"]) == 0
    out = capsys.readouterr().out
    assert tomllib.loads((run / "config.toml").read_text())["training"]["max_steps"] == 4
    kept = run / "config.until-step00000002.toml"
    assert kept.read_text() == first  # what the run trained with until step 2, byte for byte
    assert (f"{run / 'config.toml'} now holds this resume's settings (training.max_steps 2 → 4); the config it "
            f"replaced is kept as {kept.name}") in out
    assert json.loads((run / "run.json").read_text())["step"] == 4
    # fixes8: the LoRA the 2-step run delivered is kept, not replaced by step 4's
    assert (run / "ohwx.until-step00000002.safetensors").read_bytes() == delivered
    assert (run / "ohwx.safetensors").read_bytes() != delivered
    assert f"the LoRA this run delivered at step 2 is kept as {run / 'ohwx.until-step00000002.safetensors'}" in out
    # steps 3 and 4 on the schedule of 4 steps: 1e-3 × (1 − 2/4), 1e-3 × (1 − 3/4)
    assert [r["lr"] for r in _rows(run)] == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4])
    # the finished run is refused with the step count config.toml now holds, and nothing changes
    assert main(["train", "--resume", str(run)]) == 2
    assert _error(capsys).startswith(f"lorakit: error: --resume: {run} finished at step 4 (training.max_steps = 4); "
                                     "nothing was changed")
    assert kept.read_text() == first and set(run.glob("config*.toml")) == {kept, run / "config.toml"}



def test_a_resume_keeps_a_hand_edited_config_as_it_is_and_never_overwrites_a_kept_one(run_toml, tmp_path):
    """The config a resume replaces is the user's (they may have edited it): same settings → the file is left as it
    is, comments and all; changed settings → kept byte for byte, a second change from the same step → a second
    copy."""
    from lorakit.config.load import dump_toml, load_config
    from lorakit.train.resume import accepted
    from lorakit.train.rundir import RunDir

    run = RunDir(tmp_path / "run", "ohwx")
    run.root.mkdir()
    mine = "# ohwx, second try: lower lr\n" + dump_toml(load_config(run_toml))
    (run.root / "config.toml").write_text(mine)
    lines = []
    accepted(run, load_config(run.root / "config.toml"), 2, lines.append)
    assert (run.root / "config.toml").read_text() == mine and lines == []
    for steps, copy in ((4, "config.until-step00000002.toml"), (8, "config.until-step00000002-2.toml")):
        before = (run.root / "config.toml").read_text()
        accepted(run, load_config(run.root / "config.toml", [f"training.max_steps={steps}"]), 2, lines.append)
        assert (run.root / copy).read_text() == before  # the first copy holds the comment
        assert load_config(run.root / "config.toml").training.max_steps == steps
    assert (run.root / "config.until-step00000002.toml").read_text() == mine
    assert lines[-1] == (f"{run.root / 'config.toml'} now holds this resume's settings (training.max_steps 4 → 8); "
                         "the config it replaced is kept as config.until-step00000002-2.toml")


# ------------------------------------------------------------------------------------------------ captions


def test_a_caption_file_in_another_case_is_named_by_the_scan_and_kept_by_the_captioner(tmp_path, capsys):
    """`g.PNG` + `g.TXT` (a Windows camera folder): training read neither (it reads g.txt) and said only "no caption
    files"; `lorakit caption` then wrote g.txt beside the user's g.TXT, which silently lost its say."""
    from PIL import Image

    from lorakit.caption.run import Target, caption_dataset
    from lorakit.caption.text import TextOptions

    folder = tmp_path / "ds" / "1_ohwx woman"
    folder.mkdir(parents=True)
    for stem, colour in (("a", (200, 10, 10)), ("g", (10, 10, 200))):
        Image.new("RGB", (64, 64), colour).save(folder / f"{stem}.png")
    (folder / "g.TXT").write_text("the user's own words\n")
    from lorakit.config.schema import DataCfg
    from lorakit.data.scan import scan_dataset

    data = DataCfg(dir=str(tmp_path / "ds"), resolution=64, min_bucket_reso=64)
    out = scan_dataset(data, divisibility=64).report.to_table()
    assert ("caption file g.TXT is not read: captions are read as g.txt (the extension's case differs); rename it to "
            "g.txt: class tokens 'ohwx woman' used") in out

    class Stub:
        name, kind = "stub", "sentence"

        def caption(self, images):
            return ["a red square"] * len(images)

    targets = [Target(folder / f"{s}.png", folder / f"{s}.txt", "ohwx woman") for s in ("a", "g")]
    summary = caption_dataset(targets, Stub(), TextOptions(), progress_file=tmp_path / "ds" / "progress.json",
                              log=lambda *_: None)
    assert (folder / "a.txt").read_text() == "ohwx woman, a red square\n"
    assert not (folder / "g.txt").exists() and (folder / "g.TXT").read_text() == "the user's own words\n"
    kept = {o.image: (o.status, o.reason) for o in summary.outcomes}["1_ohwx woman/g.png"]
    assert kept == ("kept", "g.TXT exists (training reads g.txt: rename it); --overwrite writes g.txt")


# ------------------------------------------------------------------------------------------------ the web UI


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The page's handlers by name (as Gradio calls them), over a job store whose jobs run `true`."""
    from lorakit.ui import app
    from tests.unit.test_ui_families import built_page

    home = tmp_path_factory.mktemp("home")
    demo, fns, store = built_page(home)
    named = {f.fn.__qualname__.split(".")[0] + "." + f.name: f.fn for f in fns}
    lambdas = {tuple(c.elem_id for c in f.inputs): f.fn for f in fns if f.name == "<lambda>"}
    show = next(f for f in fns if f.name == "show" and f.fn.__qualname__.startswith("_train_events"))
    form = {("model.family" if c.elem_id == "tr-family" else c.elem_id[2:].replace("-", ".", 1)): c.value
            for c in show.inputs[3:]}  # the form's fields (key: default), in the order the Train handlers take them
    return SimpleNamespace(home=home, store=store, fn=lambda n: named[n], act=lambdas, app=app, form=form)


def test_ui_auto_caption_runs_a_command_the_caption_cli_accepts(ui, tmp_path, monkeypatch):
    """The Auto-caption button ran `lorakit caption DIR`, which the CLI refuses (--captioner is required): the page
    showed argparse's usage text, on every click."""
    import subprocess

    from lorakit.cli import build_parser

    run_caption = ui.fn("_dataset_events.run_caption")
    calls = []

    def fake_run(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 2, "", "12 image(s)\nlorakit: error: /m/model.onnx: missing; the "
                                                        "WD14 tagger folder needs model.onnx (...)\n")

    monkeypatch.setattr(ui.app.subprocess, "run", fake_run)
    msg = run_caption(str(tmp_path), "wd14", str(tmp_path / "m"))[0]  # (status, thumbnails, their paths)
    args = build_parser().parse_args(calls[0][3:])  # what the child process parses: accepted, nothing overwritten
    assert (args.captioner, args.model, args.target, args.overwrite) == ("wd14", str(tmp_path / "m"),
                                                                          str(tmp_path), False)
    assert msg.endswith("⚠ lorakit: error: /m/model.onnx: missing; the WD14 tagger folder needs model.onnx "
                        "(...)</span>")
    assert "Captioner: pick one" in run_caption(str(tmp_path), None, "")[0] and len(calls) == 1


def test_ui_dataset_page_odd_inputs_are_one_message(ui, tmp_path):
    import html

    open_root, add_toy, check = (lambda *a, n=n: [html.unescape(str(x)) for x in ui.fn(f"_dataset_events.{n}")(*a)]
                                 for n in ("open_root", "add_toy", "check"))
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert "Dataset folder: give a folder path" in open_root(None)[0]  # was "<cwd>/None: not found"
    assert f"{afile}: is a file, not a folder" in open_root(str(afile))[0]  # was "not found; it is created …"
    assert "repeats: must be a whole number ≥ 1, got None" in add_toy(str(tmp_path / "d"), "ohwx", "x", None)[0]
    assert "repeats: must be a whole number ≥ 1, got '1.5'" in add_toy(str(tmp_path / "d"), "ohwx", "x", "1.5")[0]
    made = afile / "3_ohwx shape"
    assert (f"{made}: cannot create it (Not a directory: {made}); choose a dataset directory you can write" in
            add_toy(str(afile), "ohwx", "x", "3")[0])  # as `lorakit toy dataset FILE` says it (was NotADirectoryError)
    assert afile.read_text() == "mine" and not (tmp_path / "d").exists()
    assert "data.dir: folder" in check(str(tmp_path / "nope"), None)[2]  # an empty resolution field: 1024


def test_ui_pages_survive_a_deleted_job_and_a_damaged_run_folder(ui, tmp_path):
    from lorakit.toy.paths import model_section

    model = "\n".join(f"{k} = {json.dumps(v)}" for k, v in model_section("sdxl").items())
    job = ui.store.add(f'[model]\n{model}\n[data]\ndir = "{tmp_path}"\n[save]\ndir = "{tmp_path / "runs"}"\n'
                       'name = "w7"\n', start=False)
    run = tmp_path / "runs" / "w7"
    assert (run / ".lorakit.claim").is_file()  # fixes8: the job holds its run folder from the moment it is added
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5, "lr": 0.001}\n{"step": "x", "loss": 0.4}\n'
                                       '{"step": 2, "loss": 0.3, "lr": 0.001}\n{"step": true, "loss": 0.2}\n')
    (run / "run.json").write_text('{"status": "running", "step": "three", "max_steps": [4]}')
    head, loss = ui.fn("_watch_events.watch")(str(job.id))[:2]
    assert "step **2 / ?**" in head and list(loss[loss.series == "loss"].step) == [1, 2]  # was a ValueError
    from lorakit.train.metrics import read_metrics, series

    assert series(read_metrics(run / "metrics.jsonl"), "loss") == ([1, 2], [0.5, 0.3])  # loss.png, Loss Plot node
    gone = 9999
    diff = ui.fn("_compare_events.compare")([str(job.id), str(gone)])[0]
    assert list(diff.setting) == [f"⚠ job {gone}: no such job; pick again"]
    assert ui.fn("_download_events.files_of")(str(gone))[2] == f"⚠ job {gone}: no such job"
    assert ui.fn("_download_events.inspect")(str(gone), str(run / "w7.safetensors")) == f"⚠ job {gone}: no such job"
    assert ui.fn("_download_events.package")(str(gone)) == (None, f"⚠ job {gone}: no such job")
    assert ui.fn("_download_events.pick_file")(str(gone), "/etc/passwd") is None
    job.toml_path.unlink()  # the job folder damaged: Duplicate names the file
    msg = ui.act[("jb-pick", "jb-changes")](str(job.id), "")[0]
    assert f"job {job.id}: cannot read {job.toml_path} (No such file or directory)" in msg
    assert "no such job; pick one from the list" in ui.act[("jb-pick",)](str(job.id) + "x")[0]


def test_ui_plan_for_a_card_not_in_the_table_says_so(tmp_path):
    from lorakit.config.load import load_config
    from lorakit.toy.paths import model_section
    from lorakit.ui.plan import CPU, estimate

    cfg = load_config(None, data={"model": model_section("sdxl"), "data": {"dir": str(tmp_path)}})
    text = estimate(cfg, "rtx4909")
    assert "plan: card 'rtx4909' is not in lorakit's card table; pick one from the list (" in text
    assert "no earlier job" not in text and "no earlier job" in estimate(cfg, CPU)  # was shown as the CPU's plan


# ------------------------------------------------------------------------------------------------ ComfyUI nodes


def test_comfy_dataset_node_takes_one_source_and_counts_one_image_as_one(tmp_path, monkeypatch):
    """A folder typed in *and* an IMAGE batch connected: the folder was silently not used. One [H, W, C] image was
    reported as H images."""
    import torch

    from lorakit.comfy import nodes
    from lorakit.errors import ConfigError

    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    node = nodes.LorakitDataset()
    with pytest.raises(ConfigError) as exc:
        node.load(str(tmp_path / "mine"), 1, "ohwx", "woman", images=torch.rand(2, 64, 64, 3))
    assert str(exc.value) == (f"folder: '{tmp_path / 'mine'}' is set and an IMAGE batch is connected; give one "
                              "(clear the folder to train on the connected images, or disconnect them)")
    assert not (tmp_path / "home").exists()
    from lorakit.comfy import build

    monkeypatch.setattr(build, "data_report", lambda data, check: ("(the scan's table)", 1))  # (the scan: not here)
    ds, report = node.load("", 1, "ohwx", "woman", images=torch.rand(64, 48, 3), captions="ohwx woman")
    assert report == "1 image from the graph\n(the scan's table)"
    assert [p.name for p in sorted(Path(ds.folder).rglob("*.png"))] == ["0000.png"]  # written as one 48×64 image


def test_comfy_samples_node_names_a_damaged_preview(tmp_path, monkeypatch):
    from types import SimpleNamespace as NS

    from lorakit.comfy import nodes
    from lorakit.errors import DataError

    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    (tmp_path / "run" / "samples").mkdir(parents=True)
    grid = tmp_path / "run" / "samples" / "before_after.png"
    grid.write_bytes(b"")
    run = NS(home=str(tmp_path / "home"), run_dir=str(tmp_path / "run"), job_id=1, state="finished")
    with pytest.raises(DataError) as exc:  # was lorakit.data.images.ImageProblem: "zero-byte file", no file named
        nodes.LorakitSamples().samples(run, nodes.SAMPLE_CHOICES[0])
    assert str(exc.value) == (f"{grid}: zero-byte file; this image file of the run folder is damaged: delete it (or "
                              "replace it) and run the node again")


# ------------------------------------------------------------------------------------------------ lorakit plan


def test_plan_takes_overrides_after_card_and_suggests_the_card_meant(run_toml, capsys):
    """`lorakit plan run.toml --card h100 memory.vram_gb=1` was argparse's "unrecognized arguments"; `--card RTX4090`
    listed the table without saying which one was meant."""
    assert main(["plan", str(run_toml), "--card", "h100", "memory.vram_gb=1"]) == 2
    assert _error(capsys).startswith("lorakit: error: memory.vram_gb = 1: even the leanest setting")  # applied
    assert main(["plan", str(run_toml), "--card", "rtx4909"]) == 2  # (RTX4090 is taken as rtx4090: test_cards_names)
    line = _error(capsys)
    assert line.startswith("lorakit: error: --card 'rtx4909': not in lorakit's card table; choose one of h200, h100")
    assert line.endswith(" (did you mean rtx4090?)")
    with pytest.raises(SystemExit):  # an option that is no override stays argparse's refusal
        main(["plan", str(run_toml), "--card", "h100", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ package


def test_package_says_when_it_takes_a_checkpoint_or_has_no_image(tmp_path, capsys):
    """A run that has not finished was packaged from its newest checkpoint, and a step without previews gave a
    package without images, both under a plain "package written to …"."""
    from tests.unit.test_lora_publish import _run_dir

    run = _run_dir(tmp_path)  # final LoRA ohwx.safetensors, checkpoint of step 10, previews before/10/after
    (run / "ohwx.safetensors").unlink()
    for p in (run / "samples").glob("ohwx_step00000010_*.png"):
        p.unlink()
    assert main(["package", str(run), "-o", str(tmp_path / "pkg")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"note: {run} has no final LoRA (ohwx.safetensors: the run has not finished); packaged its newest "
                   "checkpoint, step 10 (--step N picks another)",
                   "note: no preview image was drawn at step 10 (sample.prompts and sample.every_n_steps decide when "
                   "they are drawn); the package has no images, and CivitAI asks for at least one",
                   f"package written to {tmp_path / 'pkg'}"]
    assert sorted(p.name for p in (tmp_path / "pkg").iterdir()) == ["README.md", "civitai.json",
                                                                    "ohwx-step00000010.safetensors"]
    assert main(["package", str(run), "--step", "0"]) == 2
    assert _error(capsys) == "lorakit: error: --step 0: give the step number of a checkpoint (1 or more)"
    assert main(["package", str(run / "config.toml")]) == 2
    assert _error(capsys) == f"lorakit: error: {run / 'config.toml'}: is a file; give the run folder that holds it"
    assert not (run / "package").exists()


def test_ui_start_on_a_taken_port_or_a_file_as_home_is_one_line(tmp_path, a_file, capsys):
    """A second `lorakit ui --port N` while the first runs, `--home` naming a file and `--max-upload-mb -5` ended in
    tracebacks (Gradio's OSError "Cannot find empty port", FileExistsError, Gradio's ValueError)."""
    import socket

    pytest.importorskip("gradio", reason="the ui extra is not installed")
    assert main(["ui", "--home", str(a_file)]) == 2
    assert _error(capsys) == (f"lorakit: error: --home {a_file}: cannot use it as the UI's folder (File exists: "
                              f"{a_file}); give a folder you can write")
    assert a_file.read_text() == "mine"
    assert main(["ui", "--max-upload-mb", "-5", "--home", str(tmp_path / "h")]) == 2  # was Gradio's ValueError
    assert _error(capsys) == "lorakit: error: --max-upload-mb: give the largest upload in MB (more than 0), got -5"
    assert not (tmp_path / "h").exists()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:  # the first UI's server
        first.bind(("127.0.0.1", 0))
        first.listen()
        port = first.getsockname()[1]
        assert main(["ui", "--port", str(port), "--home", str(tmp_path / "home")]) == 2
    assert _error(capsys) == (f"lorakit: error: --port {port}: cannot serve on it (Address already in use: another "
                              "`lorakit ui` or another program uses it); pick another port, or leave --port out for a "
                              "free one")


@pytest.mark.parametrize("manifest, problem", [
    ("[]", "a JSON list, not an object"),
    ('{"config": "run.toml", "grid": {}, "points": [{"name": "a"}]}', "points[0].label is missing or not a str"),
])
def test_a_damaged_sweep_json_is_one_line_in_the_cli_and_the_ui(tmp_path, capsys, manifest, problem):
    """The Sweeps tab and `lorakit sweep report` indexed sweep.json without a check: TypeError / KeyError."""
    from lorakit.ui.sweeps import comparison

    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text(manifest)
    line = (f"{tmp_path / 'sw' / 'sweep.json'}: damaged ({problem}); it is the sweep's record, written by `lorakit "
            "sweep`: restore it from a copy, or run the sweep again with another --out")
    assert main(["sweep", "report", str(tmp_path / "sw")]) == 2
    assert _error(capsys) == f"lorakit: error: {line}"
    with pytest.raises(LorakitError, match="^" + re.escape(line) + "$"):  # the tab shows it as "⚠ <line>"
        comparison(tmp_path / "sw")
    assert (tmp_path / "sw" / "sweep.json").read_text() == manifest and not (tmp_path / "sw" / "comparison").exists()


def test_an_image_extension_as_the_caption_extension_is_refused_before_an_image_is_touched(tmp_path):
    """`lorakit caption DIR --extension .png --overwrite` wrote every caption over its image (the image kept only as
    a.png.bak); `data.caption_extension = ".png"` read the images as captions."""
    from PIL import Image

    from lorakit.caption.run import list_targets
    from lorakit.config.schema import DataCfg
    from lorakit.data.scan import scan_dataset
    from lorakit.errors import ConfigError

    folder = tmp_path / "ds" / "1_ohwx woman"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "a.png")
    before = (folder / "a.png").read_bytes()
    with pytest.raises(ConfigError) as exc:  # where `lorakit caption` turns the images into targets (no model yet)
        list_targets(tmp_path / "ds", ".PNG")
    assert str(exc.value) == ("--extension: is an image extension: captions would be read from, or written over, the "
                              "images; use .txt or .caption, got '.PNG'")
    with pytest.raises(ConfigError) as exc:
        list_targets(tmp_path / "ds", "../x")
    assert str(exc.value) == ("--extension: must be a plain extension like \".txt\" (no / or \\, no surrounding "
                              "spaces), got '../x'")
    assert (folder / "a.png").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["a.png"]
    with pytest.raises(ConfigError, match=r"^data\.caption_extension: is an image extension: .*, got '\.png'$"):
        scan_dataset(DataCfg(dir=str(tmp_path / "ds"), caption_extension=".png", resolution=64, min_bucket_reso=64))
    toml = tmp_path / "kds.toml"  # a kohya dataset TOML: its key, for the captioner as for the scan
    toml.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\ncaption_extension = ".jpg"\n')
    line = ("kds.toml: datasets[0].subsets[0].caption_extension: is an image extension: captions would be read "
            "from, or written over, the images; use .txt or .caption, got '.jpg'")
    with pytest.raises(ConfigError) as exc:
        list_targets(toml)
    assert str(exc.value) == line
    with pytest.raises(ConfigError) as exc:
        scan_dataset(DataCfg(config=str(toml), resolution=64, min_bucket_reso=64))
    assert str(exc.value) == line


def test_plan_warns_when_vram_gb_is_more_than_the_card_has(run_toml, capsys):
    """`--card rtx3060-12g memory.vram_gb=80` planned "8.78 GiB of 80 GiB" for a 12 GB card without a word."""
    from lorakit.train import cards

    card = cards.card("rtx3060-12g")
    assert main(["plan", str(run_toml), "--card", "rtx3060-12g", "memory.vram_gb=80"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (f"  warning: memory.vram_gb = 80 is more than the {card.name}'s {card.total_gib:.1f} GiB: the "
                        "plan below is for 80 GiB and may not fit this card; set memory.vram_gb to at most "
                        f"{int(card.free_gib * 10) / 10:g} (what lorakit plans with when it is unset) or leave it out")
    assert main(["plan", str(run_toml), "--card", "rtx3060-12g", f"memory.vram_gb={card.total_gib:.1f}"]) == 0
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize("damage", [b'model = "x"\n', b"\xff\xfe[model]\n", b"[model]\ncheckpoint = 3\n"])
def test_inspect_of_a_lora_in_a_run_folder_with_a_damaged_config_goes_on_without_its_base(tmp_path, capsys, damage):
    """`lorakit inspect RUN/ohwx.safetensors` reads RUN/config.toml for the base to check against: a config that is
    TOML but not lorakit's shape, or not UTF-8, ended in AttributeError / UnicodeDecodeError."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "run.json").write_text('{"status": "finished"}')
    (tmp_path / "config.toml").write_bytes(damage)
    lora, tensors = tmp_path / "ohwx.safetensors", {}
    for stem in ("lora_unet_middle_block_1_proj_in", "lora_unet_input_blocks_99_1_proj_in"):  # one key SDXL lacks:
        tensors.update({f"{stem}.lora_down.weight": torch.ones(4, 64), f"{stem}.lora_up.weight": torch.zeros(64, 4),
                        f"{stem}.alpha": torch.tensor(4.0)})  # inspect then asks the run's config for its base
    save_file(tensors, str(lora), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    assert main(["inspect", str(lora)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "lora_unet_input_blocks_99_1_proj_in" in captured.out
    assert (tmp_path / "config.toml").read_bytes() == damage


def test_demo_refuses_a_bad_step_count_or_out_folder_before_writing(tmp_path, a_file, capsys):
    """`lorakit demo --out FILE` was a NotADirectoryError traceback; `--steps 0` was refused only after the demo
    dataset had been written."""
    assert main(["demo", "--steps", "0", "--out", str(tmp_path / "d0")]) == 2
    assert _error(capsys) == "lorakit: error: training.max_steps: must be an integer ≥ 1, got 0"
    assert not (tmp_path / "d0").exists()
    assert main(["demo", "--out", str(a_file)]) == 2
    assert _error(capsys) == (f"lorakit: error: --out {a_file}: cannot create the folder (File exists: {a_file}); "
                              "give a folder you can write")
    assert a_file.read_text() == "mine"


def test_ui_download_offers_the_best_and_the_ema_lora_too(tmp_path):
    """save.keep_best's `<name>-best.safetensors` and training.ema's `<name>-ema.safetensors` were not offered on the
    Download tab (only the final LoRA and the step checkpoints)."""
    from lorakit.ui import runs

    run = tmp_path / "w7"
    run.mkdir()
    for stem in ("w7", "w7-step00000002", "w7-step00000004", "w7-best", "w7-ema", "other-step00000002"):
        (run / f"{stem}.safetensors").write_bytes(b"x")
    assert [p.name for p in runs.lora_files(run)] == ["w7.safetensors", "w7-step00000004.safetensors",
                                                       "w7-step00000002.safetensors", "w7-best.safetensors",
                                                       "w7-ema.safetensors"]


@pytest.mark.parametrize("override", ["save.dir=/elsewhere", "save.name=other"])
def test_a_resume_refuses_to_move_or_rename_the_run(tmp_path, capsys, override):
    """`lorakit train --resume DIR save.dir=X` trained on in DIR (save.dir silently unused); save.name=Y named the
    new files Y in DIR beside the old ones."""
    run = tmp_path / "ohwx"
    run.mkdir()
    (run / "config.toml").write_text("# the run's config\n")
    assert main(["train", "--resume", str(run), "training.max_steps=9", override]) == 2
    key = override.split("=")[0]
    assert _error(capsys) == (f"lorakit: error: --resume: {key} cannot change: the run stays in {run} and keeps its "
                              f"file names (nothing was changed); to train into another folder, copy {run} there and "
                              "resume the copy")
    assert (run / "config.toml").read_text() == "# the run's config\n" and [p.name for p in run.iterdir()] == [
        "config.toml"]



def test_ui_show_says_when_data_dir_is_missing(ui, tmp_path):
    """"valid: this is the TOML a job runs" with a data.dir that does not exist, and a plan without a word about it:
    the job then failed at its dataset scan."""
    from lorakit.toy.paths import toy_paths
    from lorakit.ui.plan import CPU

    values = dict(ui.form, **{"model.checkpoint": str(toy_paths("sdxl")["checkpoint"]),  # a file that exists
                              "data.dir": str(tmp_path / "nope"), "save.dir": str(tmp_path / "runs")})
    res = ui.fn("_train_events.show")("(none)", CPU, None, *values.values())  # preset, card, flagged field, fields
    assert res[0] == "valid: this is the TOML a job runs"
    assert res[2].endswith(f"⚠ data.dir: folder {tmp_path / 'nope'} not found (it should hold subfolders like "
                           "'10_ohwx woman'); a job started now would stop at its dataset scan")


def test_comfy_config_node_toml_widget_reads_a_path_without_toml_suffix_as_a_path(tmp_path):
    """The Config node's `toml` widget took "/data/ohwx" (a folder) or "/data/ohwx/run" for TOML text: "toml: invalid
    TOML: Invalid statement (at line 1, column 1)"."""
    from lorakit.comfy.build import _toml_layer
    from lorakit.errors import ConfigError

    (tmp_path / "run").write_text("[network]\nrank = 4\n")
    assert _toml_layer(str(tmp_path / "run")) == {"network": {"rank": 4}}
    with pytest.raises(ConfigError) as exc:
        _toml_layer(str(tmp_path))
    assert str(exc.value) == f"toml: {tmp_path} is not a file; give the run.toml in that folder"
    assert _toml_layer("network.rank = 8") == {"network": {"rank": 8}}  # TOML text stays TOML text
