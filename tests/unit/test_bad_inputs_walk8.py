"""walk8: a demanding user on the less-used tools (sweep, its comparison, merge / extract / convert / resize,
package and push --dry-run): each bad input is one line naming the option, and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.toy.paths import model_section


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err.splitlines()[-1]


def _toy_sdxl_lora(path: Path, value: float = 1.0) -> Path:
    """A LoRA of the toy SDXL's topology (its middle block's 64-wide proj_in), as `lorakit demo` writes them."""
    import torch
    from safetensors.torch import save_file

    stem = "lora_unet_middle_block_1_proj_in"
    save_file({f"{stem}.lora_down.weight": torch.full((4, 64), value), f"{stem}.lora_up.weight": torch.ones(64, 4),
               f"{stem}.alpha": torch.tensor(4.0)}, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    return path


@pytest.mark.parametrize("extra, line", [
    (["--rank", "0"], "merge: --rank must be ≥ 1, got 0"),
    (["--rank", "-3"], "merge: --rank must be ≥ 1, got -3"),
    (["--into", "base.safetensors", "--rank", "0"],
     "merge --into: --rank has no meaning when merging into a checkpoint; drop it"),
])
def test_merge_refuses_a_rank_below_one_before_reading_a_file(tmp_path, capsys, extra, line):
    """Before: `merge A B --rank 0 -o OUT` wrote a LoRA of rank 0 (every module empty); `--into … --rank 0` passed."""
    lora = _toy_sdxl_lora(tmp_path / "a lora.safetensors")
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(lora), str(lora), "-o", str(out), *extra]) == 2
    assert _error(capsys) == f"lorakit: error: {line}"
    assert not out.exists()


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf"])
def test_merge_refuses_a_weight_that_is_not_finite(tmp_path, capsys, weight):
    """Before: `A:nan` was taken and the merged LoRA held NaN everywhere."""
    lora = _toy_sdxl_lora(tmp_path / "a lora.safetensors")
    out = tmp_path / "m.safetensors"
    assert main(["merge", f"{lora}:{weight}", str(lora), "-o", str(out)]) == 2
    assert _error(capsys) == (f"lorakit: error: {lora}:{weight}: the weight after ':' must be a finite number, e.g. "
                              f"{lora}:0.8")
    assert not out.exists()
    assert main(["merge", f"{lora}:0.5", f"{lora}:-0.25", "-o", str(out)]) == 0  # finite weights merge as before
    from safetensors.torch import load_file

    ups = load_file(str(out))["lora_unet_middle_block_1_proj_in.lora_up.weight"]
    assert ups.shape == (64, 8)


def test_merge_into_a_file_that_is_no_checkpoint_names_into_not_base(tmp_path, capsys):
    """Before: `merge --into LORA …` said `--base LORA: this is a LoRA …`, an option merge has not."""
    lora = _toy_sdxl_lora(tmp_path / "a lora.safetensors")
    out = tmp_path / "baked.safetensors"
    assert main(["merge", "--into", str(lora), str(lora), "-o", str(out)]) == 2
    assert _error(capsys).startswith(f"lorakit: error: --into {lora}: this is a LoRA (kohya layout")
    assert not out.exists()


@pytest.mark.parametrize("extra, line", [
    (["--rank", "0"], "extract: --rank must be ≥ 1, got 0"),
    (["--rank", "-2"], "extract: --rank must be ≥ 1, got -2"),
    (["--rank", "4", "--min-diff", "-1"], "extract: --min-diff must be a number ≥ 0, got -1"),
    (["--rank", "4", "--min-diff", "nan"], "extract: --min-diff must be a number ≥ 0, got nan"),
])
def test_extract_refuses_a_rank_below_one_and_a_bad_min_diff(tmp_path, capsys, extra, line):
    """Before: `extract TUNED BASE --rank 0` wrote '48 modules extracted' of rank 0, `--rank -2` a file of rank -2."""
    base = model_section("sdxl")["checkpoint"]
    out = tmp_path / "ex.safetensors"
    assert main(["extract", base, base, "-o", str(out), *extra]) == 2
    assert _error(capsys) == f"lorakit: error: {line}"
    assert not out.exists()


def test_the_ops_refuse_a_rank_below_one_through_the_python_api():
    import torch

    from lorakit.errors import LorakitError
    from lorakit.lora.tools.ops import extract_module, merge

    with pytest.raises(LorakitError, match=r"^merge: --rank must be ≥ 1, got 0$"):
        merge([({}, 1.0)], rank=0)
    with pytest.raises(LorakitError, match=r"^extract: --rank must be ≥ 1, got 0$"):
        extract_module(torch.ones(4, 4), 0, "x")


# ------------------------------------------------------------------ sweep


def _sweep_config(tmp: Path) -> Path:
    from tests.unit.test_sweep import write_config

    return write_config(tmp)


def test_sweep_takes_axes_and_overrides_after_its_options(tmp_path, capsys, monkeypatch):
    """Before: `lorakit sweep run.toml optimizer.lr=1e-4,3e-4 --steps 2 save.every_n_steps=1` stopped with
    `unrecognized arguments: save.every_n_steps=1` (train and plan take key=value after an option)."""
    import lorakit.sweep.run as sweep_run

    toml = _sweep_config(tmp_path)
    ran = []
    monkeypatch.setattr(sweep_run, "run_sweep", lambda sweep, **kw: ran.append(sweep.root))
    out = tmp_path / "sw with space"
    assert main(["sweep", str(toml), "optimizer.lr=1e-4,3e-4", "--steps", "2", "--out", str(out),
                 "save.every_n_steps=1", "network.rank=2,4"]) == 0
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["grid"] == {"optimizer.lr": ["1e-4", "3e-4"], "network.rank": ["2", "4"]}
    assert manifest["overrides"] == ["save.every_n_steps=1"] and ran == [out]
    # a bad value after an option is the sweep's own one line, and an option-looking word is still refused
    assert main(["sweep", str(toml), "optimizer.lr=1e-4,3e-4", "--steps", "2", "network.rank=0,4",
                 "--out", str(tmp_path / "sw2")]) == 2
    assert _error(capsys) == ("lorakit: error: sweep point lr=1e-4, rank=0: network.rank: must be an integer ≥ 1, "
                              "got 0")
    assert not (tmp_path / "sw2").exists()
    with pytest.raises(SystemExit):
        main(["sweep", str(toml), "optimizer.lr=1e-4,3e-4", "--steps", "2", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_sweep_report_names_only_the_files_it_wrote(tmp_path):
    """Before: `comparison: DIR (ranking.md, grid.png, loss_curves.png)` also when no point drew samples, so no
    grid.png was written."""
    from lorakit.sweep.report import write_report
    from lorakit.sweep.run import create, run_sweep
    from tests.unit.test_sweep import FakeTrain

    sweep = create(_sweep_config(tmp_path), ["optimizer.lr=1e-4,3e-4"], steps=3, out=tmp_path / "sw")
    lines: list[str] = []
    run_sweep(sweep, log=lines.append, train_fn=FakeTrain())
    cmp = tmp_path / "sw" / "comparison"
    assert lines[-1] == f"comparison: {cmp} (ranking.md, grid.png, loss_curves.png)"
    (cmp / "grid.png").unlink()
    for samples in (tmp_path / "sw").glob("*/samples"):
        shutil.rmtree(samples)
    lines.clear()
    result = write_report(tmp_path / "sw", log=lines.append)
    assert lines[-1] == (f"comparison: {cmp} (ranking.md, loss_curves.png); no grid.png: no point drew sample "
                         "images (sample.prompts)")
    assert result["files"]["grid"] is None and not (cmp / "grid.png").exists()


def test_sweep_preset_of_a_sweep_without_validation_gives_the_training_loss_as_evidence(tmp_path, capsys):
    """Before: the note said `was best (val loss — at step —); the others: 3e-4: —` for a sweep ranked by final
    training loss (no validation set)."""
    from lorakit.sweep.report import _fmt, write_report
    from lorakit.sweep.run import create, run_sweep
    from tests.unit.test_sweep import FakeTrain

    sweep = create(_sweep_config(tmp_path), ["optimizer.lr=1e-4,3e-4"], steps=3, out=tmp_path / "sw")
    run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())
    for metrics in (tmp_path / "sw").glob("*/metrics.jsonl"):  # as a run without a validation set logs
        metrics.write_text("".join(x + "\n" for x in metrics.read_text().splitlines() if '"val_loss"' not in x))
    points = write_report(tmp_path / "sw", log=lambda *_: None)["points"]
    win, other = points
    preset = tmp_path / "my preset.toml"
    preset.write_text('[optimizer]\nlr = 1e-4\n')
    assert main(["sweep", "preset", str(tmp_path / "sw"), str(preset)]) == 0
    note = " ".join(line.lstrip("# ") for line in preset.read_text().splitlines() if line.startswith("#"))
    assert f"was best (final train loss {_fmt(win['final_train_loss'])}); the others: " \
           f"{other['settings']['optimizer.lr']}: {_fmt(other['final_train_loss'])}" in note
    assert "—" not in note


def test_sweep_resume_refuses_an_edited_or_missing_run_toml_in_the_sweep_folder(tmp_path, capsys, monkeypatch):
    """Before: an edit of DIR/run.toml between an interrupted sweep and `sweep --resume` changed the points not yet
    run (rank 4 → 8, say) while the finished ones kept theirs, so the comparison compared unlike runs; a deleted one
    was a FileNotFoundError traceback."""
    import lorakit.train.loop as loop
    from lorakit.sweep.run import Sweep, create, run_sweep
    from tests.unit.test_sweep import FakeTrain

    sweep = create(_sweep_config(tmp_path), ["optimizer.lr=1e-4,3e-4"], steps=3, out=tmp_path / "sw")
    names = [p["name"] for p in sweep.read()["points"]]
    fake = FakeTrain(interrupt_at=names[1])
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, log=lambda *_: None, train_fn=fake)
    copy = tmp_path / "sw" / "run.toml"
    original = copy.read_text()
    copy.write_text(original.replace("max_steps = 5", "max_steps = 5\nseed = 7"))
    monkeypatch.setattr(loop, "train", fake)
    assert main(["sweep", "--resume", str(tmp_path / "sw")]) == 2
    assert _error(capsys) == (f"lorakit: error: {copy}: changed since the sweep began; every point must run with the "
                              "config the others ran with, so nothing was run: restore it (the sweep began from "
                              f"{tmp_path / 'run.toml'}), or start a new sweep with another --out")
    copy.unlink()
    assert main(["sweep", "--resume", str(tmp_path / "sw")]) == 2
    assert _error(capsys).startswith(f"lorakit: error: {copy}: cannot be read (No such file or directory); it is the "
                                     "config every point of the sweep runs with")
    assert len(fake.calls) == 2  # nothing ran
    copy.write_text(original)  # restored: the sweep goes on
    run_sweep(Sweep(tmp_path / "sw"), log=lambda *_: None, train_fn=fake)
    assert fake.calls[2:] == [(names[1], True)]


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_resize_refuses_a_ratio_that_is_not_finite(tmp_path, capsys, value):
    """Before: `--dynamic sv_ratio=nan` wrote rank 1 in every module, `sv_ratio=inf` an unchanged copy."""
    lora = _toy_sdxl_lora(tmp_path / "a lora.safetensors")
    out = tmp_path / "r.safetensors"
    assert main(["resize", str(lora), "--dynamic", f"sv_ratio={value}", "-o", str(out)]) == 2
    assert _error(capsys) == (f"lorakit: error: resize: --dynamic sv_ratio={value}: the ratio must be a finite "
                              "number ≥ 1")
    assert not out.exists()


@pytest.mark.parametrize("cmd", [["resize", "--rank", "2"], ["verify"], ["convert", "--to", "kohya"]])
def test_an_unknown_family_option_is_named_as_the_option(tmp_path, capsys, cmd):
    """Before: `--family nope` said `model.family: unknown family 'nope'`, a config key these tools do not read."""
    from lorakit.models.registry import families

    lora = _toy_sdxl_lora(tmp_path / "a lora.safetensors")
    assert main([cmd[0], str(lora), *cmd[1:], "--family", "nope", "-o" if cmd[0] != "verify" else "--json",
                 *([str(tmp_path / "o.safetensors")] if cmd[0] != "verify" else [])]) == 2
    assert _error(capsys) == f"lorakit: error: --family: unknown family 'nope'; available: {', '.join(families())}"
    assert not (tmp_path / "o.safetensors").exists()


# ------------------------------------------------------------------ publish


@pytest.mark.parametrize("repo", ["user/-name", "user/name-", "user/na..me", "user/na--me", ".user/name",
                                  "user/" + "x" * 97, "a b/c", "user/name/extra"])
def test_push_dry_run_refuses_a_repo_name_the_hub_refuses(tmp_path, capsys, repo):
    """Before: `push RUN --repo user/-name --dry-run` listed what it "would upload"; the real push then failed at
    the Hub's name check."""
    assert main(["push", str(tmp_path / "run"), "--repo", repo, "--dry-run"]) == 2
    assert _error(capsys).startswith(f"lorakit: error: --repo {repo!r}: use user/name (ASCII letters, digits, ")


def test_the_repo_name_rule_agrees_with_huggingface_hub():
    hub = pytest.importorskip("huggingface_hub.utils")
    from lorakit.publish import valid_repo_id

    for repo in ["user/name", "u_1/n.a-m_e", "user/-name", "user/name.", "user/a..b", "user/a--b", "_u/n",
                 "user/" + "x" * 96, "user/" + "x" * 97, "user/ná", "user/name/x", "/name"]:
        try:
            hub.validate_repo_id(repo)
            ok = "/" in repo  # lorakit asks for user/name; the Hub also takes a bare name
        except hub.HFValidationError:
            ok = False
        assert valid_repo_id(repo) == ok, repo


def test_a_point_that_failed_before_its_first_validation_has_no_final_val_loss(tmp_path):
    """Before: the table showed the validation loss before training (step 0) as the failed point's final val loss,
    while its best val loss (after step 0) was empty."""
    from lorakit.sweep.report import point_summary

    run = tmp_path / "02_lr100"
    run.mkdir()
    rows = [{"step": 0, "val_loss": 0.0815}, {"step": 1, "loss": 0.09}, {"step": 2, "loss": 0.02}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    point = {"name": "02_lr100", "label": "lr=100", "settings": {"optimizer.lr": "100"}, "state": "failed",
             "error": "step 3: loss nan"}
    e = point_summary(tmp_path, point)
    assert (e["best_val_loss"], e["final_val_loss"], e["last_step"]) == (None, None, 2)
    rows += [{"step": 2, "val_loss": 0.07}, {"step": 4, "loss": 0.01}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert point_summary(tmp_path, point)["final_val_loss"] == 0.07


def test_a_lora_holding_nan_is_refused_by_the_tools_and_flagged_by_verify(tmp_path, capsys):
    """Before: resize failed with a LinAlgError traceback, `merge --into` baked the NaN into a checkpoint, merge and
    convert passed it on, and verify said `every loader applies every key` with exit code 0."""
    base = model_section("sdxl")["checkpoint"]
    lora = _toy_sdxl_lora(tmp_path / "diverged.safetensors", value=float("nan"))
    key = "lora_unet_middle_block_1_proj_in.lora_down.weight"
    line = (f"lorakit: error: {lora}: 1 tensor(s) hold NaN or Inf values (e.g. {key}): the LoRA is damaged or its "
            "training diverged, and would break every image; nothing written (`lorakit inspect` lists them)")
    out = tmp_path / "out.safetensors"
    for args in (["resize", str(lora), "--rank", "2"], ["merge", str(lora)], ["merge", "--into", base, str(lora)],
                 ["convert", str(lora), "--to", "comfyui", "--base", base]):
        assert main([*args, "-o", str(out)]) == 2, args
        assert _error(capsys) == line, args
        assert not out.exists()
    assert main(["verify", str(lora), "--base", base]) == 1
    text = capsys.readouterr().out
    assert (f"1 tensor(s) hold NaN or Inf (e.g. {key}): the LoRA is damaged or its training diverged, and would break "
            "every image; exit code 1") in text
    assert main(["verify", str(_toy_sdxl_lora(tmp_path / "fine.safetensors")), "--base", base]) == 0
    assert "NaN" not in capsys.readouterr().out


@pytest.mark.parametrize("cmd", [["merge", "{lora}"], ["resize", "{lora}", "--rank", "2"],
                                 ["convert", "{lora}", "--to", "kohya"], ["extract", "{base}", "{base}", "--rank", "2"],
                                 ["merge", "--into", "{base}", "{lora}"]])
@pytest.mark.parametrize("name, fix", [("lora.pt", "lora.safetensors"), ("lora", "lora.safetensors")])
def test_an_output_not_named_safetensors_is_refused_before_any_work(tmp_path, capsys, cmd, name, fix):
    """Before: `merge A -o lora.pt` wrote safetensors bytes under .pt (A1111 and ComfyUI open a .pt as a pickle and
    fail), `-o lora` a file no loader lists."""
    lora = _toy_sdxl_lora(tmp_path / "a lora.safetensors")
    args = [a.format(lora=lora, base=model_section("sdxl")["checkpoint"]) for a in cmd]
    out = tmp_path / name
    assert main([*args, "-o", str(out)]) == 2
    assert _error(capsys) == (f"lorakit: error: -o {out}: lorakit writes .safetensors files, and loaders go by the "
                              f"extension; name it {tmp_path / fix}")
    assert not out.exists()


def test_an_existing_output_is_refused_before_the_inputs_are_read(tmp_path, capsys):
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"mine")
    assert main(["extract", str(tmp_path / "huge-tuned.safetensors"), str(tmp_path / "huge-base.safetensors"),
                 "--rank", "4", "-o", str(out)]) == 2
    assert _error(capsys) == f"lorakit: error: {out}: already exists; choose another -o or move the file away"
    assert out.read_bytes() == b"mine"


def test_a_second_sweep_process_on_a_running_sweep_is_refused(tmp_path, capsys, monkeypatch):
    """Before: `sweep --resume DIR` while DIR's sweep ran marked the running point "failed" (its "in use" error),
    trained the next point alongside, and both processes wrote sweep.json."""
    import lorakit.train.loop as loop
    from lorakit.fsutil import FileLock
    from lorakit.sweep.run import Sweep, create, run_sweep
    from tests.unit.test_sweep import FakeTrain

    sweep = create(_sweep_config(tmp_path), ["optimizer.lr=1e-4,3e-4"], steps=3, out=tmp_path / "sw")
    before = (tmp_path / "sw" / "sweep.json").read_text()
    fake = FakeTrain()
    monkeypatch.setattr(loop, "train", fake)
    running = FileLock(tmp_path / "sw" / ".lorakit.lock").acquire(sweep=str(tmp_path / "sw"))  # the first sweep
    try:
        assert main(["sweep", "--resume", str(tmp_path / "sw")]) == 2
        line = _error(capsys)
        assert line.startswith(f"lorakit: error: {tmp_path / 'sw'} is in use: another `lorakit sweep` runs it (pid ")
        assert line.endswith("wait for it to end or stop it, then try again")
        assert fake.calls == [] and (tmp_path / "sw" / "sweep.json").read_text() == before
    finally:
        running.release()
    run_sweep(Sweep(tmp_path / "sw"), log=lambda *_: None, train_fn=fake)  # once it ended, the sweep goes on
    assert [c[0] for c in fake.calls] == [p["name"] for p in sweep.read()["points"]]
    assert main(["sweep", "--resume", str(tmp_path / "nope")]) == 2
    assert "no sweep.json; is it a sweep folder" in _error(capsys)


def test_the_sweep_report_says_when_a_point_folder_or_its_final_lora_is_gone(tmp_path):
    """Before: a deleted point folder was ranked "finished" with every number "—", and a deleted final LoRA of a
    sweep without validation said `kept no LoRA of step None (save.keep_best = true keeps it)`."""
    from lorakit.sweep.report import write_report
    from lorakit.sweep.run import create, run_sweep
    from tests.unit.test_sweep import FakeTrain

    sweep = create(_sweep_config(tmp_path), ["optimizer.lr=1e-4,3e-4"], steps=3, out=tmp_path / "sw")
    run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())
    a, b = [p["name"] for p in sweep.read()["points"]]
    shutil.rmtree(tmp_path / "sw" / b)
    for metrics in (tmp_path / "sw").glob("*/metrics.jsonl"):  # no validation set: ranked by training loss
        metrics.write_text("".join(x + "\n" for x in metrics.read_text().splitlines() if '"val_loss"' not in x))
    (tmp_path / "sw" / a / f"{a}.safetensors").unlink()
    (tmp_path / "sw" / "best.safetensors").unlink()
    lines: list[str] = []
    points = {e["name"]: e for e in write_report(tmp_path / "sw", log=lines.append)["points"]}
    assert points[b]["state"] == "missing" and points[b]["rank"] == 2
    assert points[b]["error"] == f"its run folder {tmp_path / 'sw' / b} is gone (deleted or moved)"
    assert "| missing |" in (tmp_path / "sw" / "comparison" / "ranking.md").read_text()
    assert (f"best.safetensors: {a}'s final LoRA {tmp_path / 'sw' / a / (a + '.safetensors')} is missing (deleted or "
            "moved); not written") in lines
    assert not (tmp_path / "sw" / "best.safetensors").exists()


def test_a_peft_folder_without_its_config_is_refused_not_read_at_another_strength(tmp_path, capsys):
    """Before: `convert ADAPTER_DIR --to kohya` without adapter_config.json read every module at alpha = rank: a LoRA
    of alpha 1, rank 2 came out twice as strong, silently. And `verify ADAPTER_DIR` said `no such file`."""
    from safetensors.torch import load_file, save_file

    from lorakit.models.registry import get_family
    from tests.unit.test_lora_tools import kohya_lora

    keys = get_family("sdxl").full_lora_keymap()
    some = [m for m in keys.modules if ".attentions." in m.diffusers[0]][::60]
    src = tmp_path / "full.safetensors"
    save_file(kohya_lora(keys.with_modules(tuple(some)), rank=2, alpha=1.0), str(src))
    peft = tmp_path / "my adapter"
    assert main(["convert", str(src), "--to", "peft", "-o", str(peft), "--family", "sdxl"]) == 0
    back = tmp_path / "back.safetensors"
    assert main(["convert", str(peft), "--to", "kohya", "-o", str(back), "--family", "sdxl"]) == 0
    assert {float(v) for k, v in load_file(str(back)).items() if k.endswith(".alpha")} == {1.0}
    capsys.readouterr()
    (peft / "adapter_config.json").unlink()
    out = tmp_path / "back2.safetensors"
    assert main(["convert", str(peft), "--to", "kohya", "-o", str(out), "--family", "sdxl"]) == 2
    assert _error(capsys) == (f"lorakit: error: {peft}: no adapter_config.json beside adapter_model.safetensors; it "
                              "holds the adapter's lora_alpha (its strength), so the folder cannot be read faithfully "
                              f"without it: restore it, or give {peft / 'adapter_model.safetensors'} itself to read "
                              "it at scale 1 (alpha = rank)")
    assert not out.exists()
    assert main(["verify", str(peft)]) == 2
    assert _error(capsys) == (f"lorakit: error: {peft}: a folder; verify reads one .safetensors file (this PEFT "
                              f"adapter's: {peft / 'adapter_model.safetensors'})")


@pytest.mark.parametrize("args, line", [
    (["report", "{sw}", "--steps", "5"], "sweep report: --steps has no meaning here; drop it"),
    (["report", "{sw}", "--out", "x", "--gpus", "0"], "sweep report: --out, --gpus have no meaning here; drop them"),
    (["report", "{sw}", "--parallel", "2"], "sweep report: --parallel has no meaning here; drop it (--parallel N "
                                            "scores N points at once with --concept)"),
    (["report", "{sw}", "--concept", "--parallel", "-2"], "sweep --parallel must be at least 1, got -2"),
    (["preset", "{sw}", "p.toml", "--resume", "{sw}"], "sweep preset: --resume has no meaning here; drop it"),
])
def test_sweep_report_and_preset_refuse_options_they_do_not_use(tmp_path, capsys, args, line):
    """Before: `sweep report DIR --steps 5` / `--out` / `--gpus`, and `--parallel` without --concept, were ignored;
    `--concept --parallel -2` ran as 1."""
    assert main(["sweep", *[a.format(sw=tmp_path / "sw") for a in args]]) == 2
    assert _error(capsys) == f"lorakit: error: {line}"


def test_merge_and_resize_read_a_flux2_lora_as_flux2s(tmp_path, capsys):
    """Before: merge and resize took a FLUX.2 LoRA (BFL's module names, like FLUX.1's) for FLUX.1's, so their
    messages said flux1 (`merge --into SDXL …: no flux1 weight …`; `different families (flux1, sdxl)`), where
    convert and verify, which read ss_base_model_version, said flux2."""
    import torch
    from safetensors.torch import save_file

    stem = "lora_unet_single_blocks_0_linear1"
    flux2 = tmp_path / "klein lora.safetensors"
    save_file({f"{stem}.lora_down.weight": torch.ones(2, 64), f"{stem}.lora_up.weight": torch.ones(576, 2),
               f"{stem}.alpha": torch.tensor(2.0)}, str(flux2), metadata={"ss_base_model_version": "flux_2_klein_4b"})
    sdxl = _toy_sdxl_lora(tmp_path / "sdxl lora.safetensors")
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(flux2), str(sdxl), "-o", str(out)]) == 2
    assert _error(capsys) == "lorakit: error: merge: the LoRAs are for different families (flux2, sdxl)"
    assert main(["merge", "--into", model_section("sdxl")["checkpoint"], str(flux2), "-o", str(out)]) == 2
    assert "with no flux2 weight of any LoRA target; give the flux2 single-file checkpoint" in _error(capsys)
    assert main(["merge", "--into", model_section("flux2")["checkpoint"], str(flux2), "-o", str(out)]) == 0
    assert main(["resize", str(flux2), "--rank", "1", "-o", str(tmp_path / "r.safetensors")]) == 0
    assert not list(tmp_path.glob("*.safetensors.tmp*"))


@pytest.mark.parametrize("line, fix", [("a zkx shape --seed 3", "--d"), ("a zkx shape --n ugly --cfg 7", "--l"),
                                       ("a zkx shape --steps 20", "--s"), ("a zkx shape --foo", None)])
def test_a_prompt_flag_that_is_not_one_is_refused_not_drawn_into_the_prompt(line, fix):
    """Before: `a zkx shape --seed 3` (the sweep grid's prompts included) drew "a zkx shape --seed 3" with the default
    seed: the flag stayed in the prompt text."""
    from lorakit.errors import ConfigError
    from lorakit.models.base import SamplePrompt
    from lorakit.train.sampling import parse_prompt

    name = line.split(" --")[-1].split()[0]
    with pytest.raises(ConfigError) as exc:
        parse_prompt(line, SamplePrompt(prompt=""), "sample.prompts[0]")
    assert str(exc.value) == (f"sample.prompts[0]: --{name} is not a prompt flag in {line!r} (the flags: --n negative "
                              "prompt, --w width, --h height, --s steps, --d seed, --l CFG scale, --g guidance, --ss "
                              "sampler)" + (f"; write {fix} instead" if fix else ""))
    ok = parse_prompt("a photo -- cinematic --d 3 --n low-res", SamplePrompt(prompt=""))
    assert (ok.prompt, ok.seed, ok.negative) == ("a photo -- cinematic", 3, "low-res")


def test_convert_of_a_toy_size_lora_without_base_says_to_give_base(tmp_path, capsys):
    """Before: `convert demo.safetensors --to kohya` (a LoRA of the toy SDXL) said only `… keys fit no sdxl module
    …; nothing written (`lorakit verify` lists them)`; --base is what converts it."""
    demo = tmp_path / "demo.safetensors"
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for stem in ("lora_unet_middle_block_1_proj_in",  # a name full-size SDXL has too
                 "lora_unet_input_blocks_3_1_proj_in"):  # a module the toy has and full-size SDXL has not
        tensors.update({f"{stem}.lora_down.weight": torch.ones(4, 64), f"{stem}.lora_up.weight": torch.ones(64, 4),
                        f"{stem}.alpha": torch.tensor(4.0)})
    save_file(tensors, str(demo), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    out = tmp_path / "k.safetensors"
    assert main(["convert", str(demo), "--to", "comfyui", "-o", str(out)]) == 2
    assert _error(capsys).endswith("nothing written (`lorakit verify` lists them); a LoRA of a model of another size "
                                   "(a toy, a pruned model) converts with --base <its base checkpoint>")
    assert main(["convert", str(demo), "--to", "comfyui", "-o", str(out), "--base",
                 model_section("sdxl")["checkpoint"]]) == 0
    assert out.is_file()


@pytest.mark.parametrize("weights, extra, line", [
    ((1, -1), [], "merge: the weighted LoRAs cancel out: the merged LoRA would change nothing; nothing written (check "
                  "the weights after ':')"),
    ((1, -1), ["--rank", "2"], "merge: the weighted LoRAs cancel out: the merged LoRA would change nothing; nothing "
                               "written (check the weights after ':')"),
    ((0, 0), [], "merge: every weight is 0: the merged LoRA would change nothing; nothing written (check the weights "
                 "after ':')"),
    ((0,), ["--into", "{base}"], "merge --into: every weight is 0, so the checkpoint would not change; nothing "
                                 "written"),
])
def test_a_merge_that_changes_nothing_is_refused(tmp_path, capsys, weights, extra, line):
    """Before: `merge A:1 A:-1` and `merge A:0` wrote a LoRA of zeros (and `--into BASE A:0` a copy of the
    checkpoint), reporting the energy kept as if it were a LoRA."""
    lora = _toy_sdxl_lora(tmp_path / "a.safetensors")
    out = tmp_path / "m.safetensors"
    args = [a.format(base=model_section("sdxl")["checkpoint"]) for a in extra]
    assert main(["merge", *[f"{lora}:{w}" for w in weights], *args, "-o", str(out)]) == 2
    assert _error(capsys) == f"lorakit: error: {line}"
    assert not out.exists()


def test_merging_loras_that_are_all_zero_is_refused(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    stem = "lora_unet_middle_block_1_proj_in"
    zero = tmp_path / "fresh.safetensors"
    save_file({f"{stem}.lora_down.weight": torch.ones(4, 64), f"{stem}.lora_up.weight": torch.zeros(64, 4),
               f"{stem}.alpha": torch.tensor(4.0)}, str(zero))
    assert main(["merge", str(zero), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert _error(capsys) == ("lorakit: error: merge: the LoRAs given change nothing (every ΔW is 0: untrained, or "
                              "lora_up all zeros); nothing written")


def test_package_of_a_sweep_folder_names_the_point_to_package(tmp_path, capsys):
    """Before: `package SWEEP_DIR` said `no config.toml; is it a lorakit run folder?`."""
    from lorakit.sweep.run import create, run_sweep
    from tests.unit.test_sweep import FakeTrain

    sweep = create(_sweep_config(tmp_path), ["optimizer.lr=1e-4,3e-4"], steps=3, out=tmp_path / "sw")
    result = run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())
    for cmd in (["package", str(tmp_path / "sw"), "-o", str(tmp_path / "pkg")],
                ["push", str(tmp_path / "sw"), "--repo", "user/name", "--dry-run"]):
        assert main(cmd) == 2
        assert _error(capsys) == (f"lorakit: error: {tmp_path / 'sw'}: a sweep folder; package one of its points' run "
                                  f"folders, e.g. its best: {tmp_path / 'sw' / result['best']['best']['point']}")
    assert not (tmp_path / "pkg").exists()
