"""The web UI's Sweeps (start / resume / stop), LoRA tools (verify, convert, resize, merge) and Push pages, driven
through the page's own handlers (no browser). One real tiny sweep (toy SDXL, 2 points × 2 steps, ≈ 20 s on two
shared cores) runs as the page starts it; its LoRAs and run folders are the inputs of the tools' tests."""

from __future__ import annotations

import html
import json
import time

import pytest
from safetensors import safe_open

from tests.unit.test_ui_families import built_page

AXES = ("network.rank=2,4\nsample.at_start=false\nlog.progress=false\nlog.tensorboard=false\n"
        "data.validation_split=0.25\nvalidation.every_n_steps=1")


@pytest.fixture
def in_process(monkeypatch):
    """The tools' `python -m lorakit ...` run by the same CLI code in this process (each process start imports
    torch: seconds on the shared test machine); the verify test keeps the real process."""
    import contextlib
    import io

    from lorakit.cli import main
    from lorakit.ui import tools

    def run_cli(args, env=None):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(args))
        return rc, (out.getvalue() + err.getvalue()).strip()

    monkeypatch.setattr(tools, "run_cli", run_cli)


def _text(status: str) -> str:
    return html.unescape(status).replace("<span class='lk-msg-error'>⚠ ", "⚠ ").replace("</span>", "")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from tests.integration.test_train_e2e import tiny_model, write_run_toml

    home = tmp_path_factory.mktemp("home")
    demo, fns, store = built_page(home)
    by_name = {f"{f.fn.__module__.rsplit('.', 1)[-1]}.{f.fn.__name__}": f.fn for f in fns}
    by_name["outputs"] = {}  # handler name -> elem_ids of its outputs, per event it is wired to
    for f in fns:
        by_name["outputs"].setdefault(f"{f.fn.__module__.rsplit('.', 1)[-1]}.{f.fn.__name__}", []).append(
            [c.elem_id for c in f.outputs])
    state = by_name["sweeps.start_sweep"].__closure__[
        by_name["sweeps.start_sweep"].__code__.co_freevars.index("state")].cell_contents
    toml = write_run_toml(home, "sdxl", tiny_model("sdxl", home / "model"))
    return by_name, home, state, toml


@pytest.fixture(scope="module")
def swept(page):
    """The sweep the page starts (a task running `lorakit sweep` in a process of its own), waited for."""
    from lorakit.ui import tasks

    fns, home, _, toml = page
    out = home / "sw"
    status, pick, folder = fns["sweeps.start_sweep"](str(toml), AXES, "2", str(out))
    assert status.startswith("sweep started as task 1: ") and folder == str(out), status
    task = tasks.get(home, 1)
    deadline = time.time() + 240
    while task.state == "running" and time.time() < deadline:
        time.sleep(0.5)
        task = tasks.get(home, 1)
    assert task.state == "finished", (task, tasks.log_tail(task))
    return out, task


def test_a_sweep_started_on_the_page_is_the_cli_sweep(page, swept):
    """The task is `lorakit sweep run.toml AXES --out DIR --steps 2`, and writes what that command writes: one run
    folder per point, best.safetensors, the ranking (by validation loss, as the metrics give) and the grid."""
    from PIL import Image

    from lorakit.sweep import report
    from tests.unit.test_sweep import rank_from_metrics

    fns, home, _, toml = page
    out, task = swept
    assert task.command[1:] == ["-m", "lorakit", "sweep", str(toml), *AXES.splitlines(), "--out", str(out),
                                "--steps", "2"]
    manifest = json.loads((out / "sweep.json").read_text())
    names = [p["name"] for p in manifest["points"]]
    assert names == ["01_rank2", "02_rank4"] and manifest["steps"] == 2
    assert [p["state"] for p in manifest["points"]] == ["finished", "finished"]
    for n in names:
        assert (out / n / f"{n}.safetensors").is_file() and (out / n / "config.toml").is_file()
    assert (out / "best.safetensors").is_file()
    ranked = json.loads((out / "comparison" / "ranking.json").read_text())["points"]
    assert [p["name"] for p in ranked] == rank_from_metrics(out)
    w, h = Image.open(next((out / names[0] / "samples").glob("*_after_00_*.png"))).size
    assert Image.open(out / "comparison" / "grid.png").size == report.grid_size(2, 1, report.cell_size((w, h)))
    # the page then shows it: the task's state (in a line of its own, refreshed every 2 s: a refusal in the status
    # line above stays), and the comparison of the folder it filled in
    assert fns["outputs"]["sweeps.watch"] == [["sw-state", "sw-log"]] * 2
    assert fns["outputs"]["tools.follow_push"] == [["pu-state", "pu-out"]]
    status, log = fns["sweeps.watch"]("1")
    assert status == f"task 1: sweep {out}: finished" and "comparison:" in log
    table, grid, curves, best = fns["sweeps.show"](str(out))
    assert "01_rank2" in table and grid == str(out / "comparison" / "grid.png") and best == [str(out / "best.safetensors")]
    # nothing to resume; a second sweep into the same folder is refused, the folder untouched
    assert "every point of this sweep has finished; nothing to resume" in _text(fns["sweeps.resume_sweep"](str(out))[0])
    before = sorted(p.name for p in out.iterdir())
    msg = _text(fns["sweeps.start_sweep"](str(toml), AXES, "2", str(out))[0])
    assert msg == f"⚠ Sweep folder: {out} is a sweep: resume it with the button below; nothing was overwritten: give " \
                  "another Sweep folder"
    assert sorted(p.name for p in out.iterdir()) == before


def test_sweep_form_refusals_are_one_line_and_start_nothing(page, tmp_path, monkeypatch):
    from lorakit.ui import dataset as ds
    from lorakit.ui import tasks

    fns, home, state, toml = page
    start = fns["sweeps.start_sweep"]
    n = len(tasks.list_tasks(home))
    cases = [
        ((str(tmp_path / "nope.toml"), AXES, "2", ""), f"⚠ Config: {tmp_path / 'nope.toml'} is not a file"),
        ((str(toml), "", "2", ""), "⚠ Settings: give at least one section.key=v1,v2 line"),
        ((str(toml), "--out=/etc/x", "2", ""), '⚠ override "--out=/etc/x": expected section.key=value'),  # no flags
        ((str(toml), AXES, "0", ""), "⚠ Steps: give a whole number of at least 1 (or leave it empty), got '0'"),
        ((str(toml), "optimizer.lr=-1,1e-4", "2", str(tmp_path / "a")),
         "⚠ sweep point lr=-1: optimizer.lr: must be a number > 0, got -1"),
        ((str(toml), "save.name=a,b", "2", str(tmp_path / "b")), "⚠ sweep: save.name"),
        ((str(toml), "network.rank=2,4\ntraining.max_steps=3", "2", str(tmp_path / "c")),
         "⚠ sweep: --steps 2 and training.max_steps=3 both set the steps"),
    ]
    for args, want in cases:
        msg = _text(start(*args)[0])
        assert msg.startswith(want), (args, msg)
        assert "\n" not in msg and "Traceback" not in msg
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    msg = _text(start(str(toml), AXES, "2", str(tmp_path / "full"))[0])
    assert msg.startswith(f"⚠ Sweep folder: {tmp_path / 'full'} is not empty; nothing was overwritten")
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"
    # listening on other hosts: the sweep folder and the config's own folders must be allowed ones
    monkeypatch.setattr(state, "roots", ds.Roots((home,)))
    msg = _text(start(str(toml), AXES, "2", str(tmp_path / "out"))[0])
    assert msg.startswith(f"⚠ {tmp_path / 'out'}: outside the folders this UI may use"), msg
    msg = _text(start(str(toml), AXES + f"\ndata.cache_dir={tmp_path / 'cache'}", "2", str(home / "sw-x"))[0])
    assert msg.startswith(f"⚠ data.cache_dir: {tmp_path / 'cache'}: outside the folders"), msg
    assert len(tasks.list_tasks(home)) == n and not (home / "sw-x").exists()
    assert _text(fns["sweeps.resume_sweep"](str(home))[0]).startswith(f"⚠ {home}: no sweep.json; is it a sweep folder")
    assert not list(home.glob(".sweep-check-*"))  # the points' check leaves nothing behind


def test_task_states_follow_its_files(tmp_path):
    """A task is read from its folder: exit status 0 finished; a refusal is its `lorakit` line; a stop then an end
    is stopped; a runner gone without exit.json is failed; stopping a task that ended is refused."""
    from lorakit.errors import LorakitError
    from lorakit.ui import tasks
    from lorakit.ui.runner import write_json

    def make(n, exit_rc=None, log="", stop=False, runner=None):
        f = tmp_path / "tasks" / str(n)
        f.mkdir(parents=True)
        write_json(f / "task.json", {"kind": "sweep", "target": "/x", "command": ["py"], "started_at": 0})
        (f / "train.log").write_text(log)
        if exit_rc is not None:
            write_json(f / "exit.json", {"attempt": 1, "rc": exit_rc})
        if stop:
            (f / "stop").write_text("0")
        if runner:
            write_json(f / "runner.json", runner)

    make(1, 0)
    make(2, 2, "=== attempt 1\nsweep ...\nlorakit: error: sweep point lr=-1: optimizer.lr: must be > 0\n=== end\n")
    make(3, 130, "x\n", stop=True)
    make(4, runner={"runner_pid": 999999999, "child_pid": 999999998})
    got = {t.id: (t.state, t.note) for t in tasks.list_tasks(tmp_path)}
    assert got == {1: ("finished", ""), 2: ("failed", "lorakit: error: sweep point lr=-1: optimizer.lr: must be > 0"),
                   3: ("stopped", "x"),
                   4: ("failed", "ended without an exit status (killed, or the machine restarted)")}
    with pytest.raises(LorakitError, match="task 1 is finished; nothing to stop"):
        tasks.stop(tmp_path, 1)


def test_verify_a_real_toy_lora_in_its_own_process(page, swept):
    """verify of an exported toy LoRA (run as `python -m lorakit verify`, a process of its own) shows the loaders'
    report, with --base when the Base checkpoint field is filled."""
    fns, home, _, _ = page
    out, _ = swept
    lora = out / "01_rank2" / "01_rank2.safetensors"
    base = home / "model" / "tiny_sdxl.safetensors"
    status, text, files = fns["tools.verify"](str(lora), "(from the file)", str(base))
    assert not status.startswith("<span"), (status, text)
    assert text.startswith(f"$ lorakit verify {lora} --base {base}\n") and "every loader applies every key" in text
    assert "comfyui         576        0               0" in text and files is None


def test_convert_writes_the_layout_asked_never_over_a_file(page, swept, in_process):
    """verify without a base reports the misfit; convert writes the diffusers layout next to the input (the file
    offered for download), and a second convert to the same file is refused, the first kept."""
    fns, home, _, _ = page
    out, _ = swept
    lora = out / "01_rank2" / "01_rank2.safetensors"
    # verify without a base: against the full-size SDXL the toy's modules do not fit, and the status says so
    status, text, files = fns["tools.verify"](str(lora), "(from the file)", "")
    assert _text(status) == "⚠ verify: some keys would not load (see the report below); a LoRA of a toy or pruned " \
                            "model fits only its own base: give it as Base checkpoint"
    assert "shape mismatch lora_unet_" in text and files is None
    status, text, files = fns["tools.convert"](str(lora), "sdxl", "", "diffusers", "")
    target = out / "01_rank2" / "01_rank2-diffusers.safetensors"
    assert files == [str(target)], (status, text)
    with safe_open(target, "pt") as fh:
        keys = list(fh.keys())
    with safe_open(lora, "pt") as fh:
        n_kohya = len([k for k in fh.keys() if k.endswith("lora_down.weight")])
    assert keys and all(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in keys), keys[:3]
    assert len([k for k in keys if ".lora_A." in k or "lora.down" in k]) == n_kohya
    first = target.read_bytes()
    status = _text(fns["tools.convert"](str(lora), "sdxl", "", "diffusers", str(target))[0])
    assert status == f"⚠ lorakit: error: {target}: already exists; choose another -o or move the file away"
    assert target.read_bytes() == first


def test_resize_and_merge_write_new_files_only(page, swept, in_process):
    fns, home, _, _ = page
    out, _ = swept
    a, b = out / "01_rank2" / "01_rank2.safetensors", out / "02_rank4" / "02_rank4.safetensors"
    status, text, files = fns["tools.resize"](str(b), "(from the file)", "", "2", "")
    assert files == [str(b.with_name("02_rank4-r2.safetensors"))], (status, text)
    with safe_open(files[0], "pt") as fh:
        assert {fh.get_tensor(k).shape[0] for k in fh.keys() if k.endswith("lora_down.weight")} == {2}
    merged = home / "merged.safetensors"
    status, text, files = fns["tools.merge"](str(a), "(from the file)", "", f"{b}:0.5", str(merged), "", "")
    assert files == [str(merged)] and f"{b}:0.5" in text, (status, text)
    with safe_open(merged, "pt") as fh:
        meta = json.loads(fh.metadata()["lorakit_merged_from"])
    assert [m["weight"] for m in meta] == [1.0, 0.5]
    # bad inputs: one line each, nothing written
    assert _text(fns["tools.resize"](str(b), "(from the file)", "", "zero", "")[0]).startswith(
        "⚠ New rank: give a rank (a whole number ≥ 1) or sv_ratio=X")
    assert _text(fns["tools.resize"](str(b), "(from the file)", "/base.safetensors", "2", "")[0]).startswith(
        "⚠ resize: Base checkpoint has no meaning here")
    assert _text(fns["tools.merge"]("", "(from the file)", "", str(a), "", "", "")[0]).startswith(
        "⚠ Output: give the new file's path")
    assert _text(fns["tools.merge"]("", "(from the file)", "", str(a), str(home / "m2.safetensors"), "x", "")[0]) \
        .startswith("⚠ Rank: give a whole number ≥ 1")
    assert _text(fns["tools.verify"](str(home / "none.safetensors"), "(from the file)", "")[0]) == \
        f"⚠ LoRA file: {home / 'none.safetensors'} does not exist"
    assert not (home / "m2.safetensors").exists()


def test_tools_keep_to_the_allowed_folders_while_listening(page, swept, tmp_path, monkeypatch):
    from lorakit.ui import dataset as ds

    fns, home, state, _ = page
    out, _ = swept
    monkeypatch.setattr(state, "roots", ds.Roots((out,)))
    outside = tmp_path / "x.safetensors"
    outside.write_bytes(b"")
    assert _text(fns["tools.verify"](str(outside), "(from the file)", "")[0]).startswith(
        f"⚠ {outside}: outside the folders this UI may use")
    lora = out / "01_rank2" / "01_rank2.safetensors"
    assert _text(fns["tools.convert"](str(lora), "sdxl", "", "kohya", str(tmp_path / "y.safetensors"))[0]) \
        .startswith(f"⚠ {tmp_path / 'y.safetensors'}: outside the folders")
    assert _text(fns["tools.push"](str(tmp_path), "me/x", False, True, "")[0]).startswith(
        f"⚠ {tmp_path}: outside the folders")
    assert not (tmp_path / "y.safetensors").exists()


def test_push_dry_run_lists_the_files_and_takes_no_token(page, swept, monkeypatch, in_process):
    import gradio as gr

    from lorakit.ui import tools

    fns, home, state, _ = page
    out, _ = swept
    run = out / "01_rank2"
    status, text, task_id = fns["tools.push"](str(run), "me/toy-lora", False, True, "")
    assert not status.startswith("<span") and task_id is None, (status, text)
    assert "would upload to https://huggingface.co/me/toy-lora (public):" in text
    assert "01_rank2.safetensors" in text and "README.md" in text and "civitai.json" in text
    assert text.startswith(f"$ lorakit push {run} --repo me/toy-lora --dry-run\n")
    assert _text(fns["tools.push"](str(run), "me/bad--name", False, True, "")[0]).startswith("⚠ lorakit: error: --repo")
    assert _text(fns["tools.push"](str(home), "me/x", False, True, "")[0]) == \
        f"⚠ Run folder: {home} holds no config.toml; give a run's folder (save.dir/save.name)"
    assert _text(fns["tools.push"](str(run), "me/x", False, True, "last")[0]).startswith("⚠ Step: give the step")
    # the page has no field for a token; the UI's own HF_HUB_OFFLINE default is not passed to a push
    demo = built_page(home / "again")[0]
    boxes = [b for b in demo.blocks.values() if isinstance(b, gr.Textbox)]
    labels = [str(b.label or "").lower() for b in boxes]
    assert "repository (user/name)" in labels and not any(b.type == "password" for b in boxes)
    assert not [lb for lb in labels if "token" in lb and lb not in ("tokenizer_dir", "keep_tokens", "max_token_length")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(state, "hub_offline_by_ui", True)
    assert "HF_HUB_OFFLINE" not in tools.push_env(state)
    # an upload (Dry run off) runs as a task of its own, with that environment
    from lorakit.ui import tasks

    started = []

    def fake_start(home_, kind, target, args, env=None):
        started.append((kind, target, args, env))
        return tasks.Task(7, home_ / "tasks" / "7", kind, target, args, "running", "starting")

    monkeypatch.setattr(tasks, "start", fake_start)
    status, text, task_id = fns["tools.push"](str(run), "me/toy-lora", True, False, "")
    assert status == "upload started as task 7 (it goes on without this page)" and task_id == 7
    kind, target, args, env = started[0]
    assert (kind, target, args) == ("push", "me/toy-lora", ["push", str(run), "--repo", "me/toy-lora", "--private"])
    assert "HF_HUB_OFFLINE" not in env
    monkeypatch.setattr(state, "hub_offline_by_ui", False)  # the user's own HF_HUB_OFFLINE=1 is kept
    assert tools.push_env(state)["HF_HUB_OFFLINE"] == "1"
    fns["tools.push"](str(run), "me/toy-lora", False, False, "10")
    assert started[1][2][-2:] == ["--step", "10"] and started[1][3]["HF_HUB_OFFLINE"] == "1"


def test_relative_paths_of_sweep_settings_are_the_ui_folders(tmp_path, monkeypatch):
    """The sweep runs in a task folder of its own: a relative path among the settings is made absolute against the
    folder the UI was started from (as the command typed there takes it); a hub id stays a hub id."""
    from lorakit.ui.sweeps import _absolute_paths

    monkeypatch.chdir(tmp_path)
    assert _absolute_paths(["data.validation_dir=val,/abs/v", "network.rank=2,4",
                            'model.checkpoint=org/model,"m.safetensors"']) == [
        f'data.validation_dir="{tmp_path / "val"}","/abs/v"', "network.rank=2,4",
        f'model.checkpoint="org/model","{tmp_path / "m.safetensors"}"']


def test_stop_reaches_the_command_and_the_task_ends_stopped(tmp_path):
    """*Stop* sends SIGINT to the task's runner, which passes it on (a sweep then stops as on Ctrl-C); a second
    Stop at once is refused; the task then reads `stopped`. A stand-in for `python -m lorakit` waits for the signal."""
    import os
    import stat
    import sys

    from lorakit.errors import LorakitError
    from lorakit.ui import tasks

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nif [ \"$2\" = lorakit.ui.runner ]; then exec {sys.executable} \"$@\"; fi\n"
                    "trap 'echo interrupted; exit 130' INT\necho waiting\nwhile :; do sleep 0.1; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    task = tasks.start(tmp_path, "sweep", tmp_path / "sw", ["sweep", "x.toml", "a.b=1,2"], python=str(fake),
                       env=dict(os.environ))
    deadline = time.time() + 30
    while "waiting" not in tasks.log_tail(task) and time.time() < deadline:
        time.sleep(0.1)
    assert tasks.get(tmp_path, task.id).state == "running"
    assert tasks.stop(tmp_path, task.id).state in ("stopping", "stopped")
    with pytest.raises(LorakitError, match=f"task {task.id} is (already stopping; wait|stopped; nothing to stop)"):
        tasks.stop(tmp_path, task.id)  # a double click (or the task already ended)
    while tasks.get(tmp_path, task.id).state == "stopping" and time.time() < deadline:
        time.sleep(0.1)
    done = tasks.get(tmp_path, task.id)
    assert done.state == "stopped" and "interrupted" in tasks.log_tail(done), (done, tasks.log_tail(done))
