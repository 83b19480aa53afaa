"""The sixth session's walk through docs/first-hour.md, sweeps.md, validation.md, lora-tools.md and
training-options.md on the toy world: each test is a user's step that printed something wrong or confusing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorakit.cli import main
from lorakit.sweep.run import create, run_sweep
from lorakit.toy.paths import model_section
from lorakit.toy.world import write_demo_dataset
from tests.integration.test_bad_inputs_walk import _error, run_toml  # noqa: F401 (a fixture)
from tests.unit.test_sweep import FakeTrain, write_config


def test_a_sweep_without_validation_names_the_training_loss_it_ranked_by(tmp_path, capsys):
    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4"], steps=3, out=tmp_path / "sw")
    run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())
    for metrics in (tmp_path / "sw").glob("*/metrics.jsonl"):  # as a run without a validation set writes them
        rows = [json.loads(x) for x in metrics.read_text().splitlines()]
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows if "val_loss" not in r))
    capsys.readouterr()
    assert main(["sweep", "report", str(tmp_path / "sw")]) == 0
    ranked = json.loads((tmp_path / "sw" / "comparison" / "ranking.json").read_text())["points"]
    top = ranked[0]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("best: "))
    assert line == (f"best: {top['name']} ({top['label']}): final training loss {top['final_train_loss']:.5g} "
                    f"(no validation set); its LoRA: {tmp_path / 'sw' / 'best.safetensors'}")


@pytest.mark.parametrize("where", ["nothere", "run.toml"])
def test_a_missing_validation_dir_is_named_as_validation_dir_not_data_dir(run_toml, tmp_path, capsys, where):
    assert main(["train", str(run_toml), f"data.validation_dir={tmp_path / where}"]) == 2
    assert _error(capsys) == (f"lorakit: error: data.validation_dir: folder {tmp_path / where} not found (it should "
                              "hold subfolders like '1_ohwx woman', as data.dir does)")
    assert not (tmp_path / "out" / "ohwx").exists()


def _toy_sdxl_lora(path):
    """A LoRA of the toy SDXL's topology (its middle block's 64-wide proj_in), as `lorakit demo` writes them."""
    import torch
    from safetensors.torch import save_file

    stem = "lora_unet_middle_block_1_proj_in"
    save_file({f"{stem}.lora_down.weight": torch.ones(4, 64), f"{stem}.lora_up.weight": torch.zeros(64, 4),
               f"{stem}.alpha": torch.tensor(4.0)}, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    return path


def test_verify_of_a_checkpoint_says_what_the_file_is(capsys):
    base = model_section("sdxl")["checkpoint"]
    assert main(["verify", base]) == 2
    assert _error(capsys) == (f"lorakit: error: {base}: not a LoRA: this is an SDXL-layout checkpoint of another size "
                              "(U-Net width 32, context width 40; SDXL base 1.0 has 320 and 2048); verify checks "
                              "LoRA files")


def test_verify_with_a_family_the_lora_does_not_fit_names_the_one_it_fits(tmp_path, capsys):
    lora = _toy_sdxl_lora(tmp_path / "demo.safetensors")
    assert main(["verify", str(lora), "--family", "flux1"]) == 2
    line = _error(capsys)
    assert line.startswith(f"lorakit: error: {lora}: no module fits flux1 (--family); it fits sdxl (")
    assert line.endswith("drop --family or pass --family sdxl")


def test_inspect_with_a_base_of_another_family_is_refused_not_ignored(tmp_path, capsys):
    lora = _toy_sdxl_lora(tmp_path / "demo.safetensors")
    assert main(["inspect", str(lora), "--base", model_section("sdxl")["checkpoint"]]) == 0
    assert "base model: sdxl; every key fits" in capsys.readouterr().out
    flux = model_section("flux1")["checkpoint"]
    assert main(["inspect", str(lora), "--base", flux]) == 2
    assert _error(capsys).startswith(f"lorakit: error: --base {flux}: this is a FLUX.1-dev-layout transformer of "
                                     "another size (width 64; FLUX.1 has 3072); no module of this LoRA fits it")


def test_merge_names_a_weight_that_is_no_number(tmp_path, capsys):
    lora = _toy_sdxl_lora(tmp_path / "demo.safetensors")
    assert main(["merge", f"{lora}:O.8", str(lora), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert _error(capsys) == f"lorakit: error: {lora}:O.8: the weight after ':' must be a number, e.g. {lora}:0.8"
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("args, line", [
    (["--rank", "4"], "resize: --rank 4 is not below the LoRA's rank (its modules have rank ≤ 4): the file would not "
                      "change; nothing written (choose --rank < 4)"),
    (["--dynamic", "sv_fro=O.9"], "--dynamic sv_fro=O.9: 'O.9' is not a number (e.g. sv_fro=0.9)"),
])
def test_resize_refuses_a_rank_that_changes_nothing_and_a_value_that_is_no_number(tmp_path, capsys, args, line):
    lora = _toy_sdxl_lora(tmp_path / "demo.safetensors")
    assert main(["resize", str(lora), *args, "-o", str(tmp_path / "r.safetensors")]) == 2
    assert _error(capsys) == f"lorakit: error: {line}"
    assert not (tmp_path / "r.safetensors").exists()


def test_a_warmup_longer_than_the_epochs_run_is_warned(run_toml, tmp_path, monkeypatch, capsys):
    from lorakit.errors import TrainingError
    from lorakit.train import loop

    def stop(*_a, **_k):  # the warning is due before the model loads: stop there
        raise TrainingError("stopped before the model loads")

    monkeypatch.setattr(loop, "load_and_cache", stop)
    run_toml.write_text(run_toml.read_text().replace("max_steps = 2", "max_epochs = 2"))
    assert main(["train", str(run_toml), "optimizer.warmup_steps=10"]) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert "training.max_epochs = 2: 2 steps per epoch (2 batches of 1, gradient accumulation 1), 4 steps" in text
    assert ("warning: optimizer.warmup_steps (10) is not shorter than training.max_steps (4): the lr reaches only "
            "40% of optimizer.lr") in text


def test_data_check_gives_a_small_images_share_of_the_area_not_zero(tmp_path, capsys):
    write_demo_dataset(tmp_path / "data", n=1, repeats=1)  # 64x64 images; the default training area is 1024x1024
    assert main(["data", "check", str(tmp_path / "data")]) == 0
    share = 100 * 64 * 64 / (1024 * 1024)
    assert f"too small: 64x64 is {share:.3g}% of the training area 1024x1024" in capsys.readouterr().out


def test_sweep_preset_names_each_other_point_by_all_its_settings(tmp_path):
    from lorakit.sweep.preset import evidence

    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4", "network.rank=2,4"], steps=5, out=tmp_path / "sw")
    points = run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())["points"]
    text = " ".join(line.lstrip("# ") for line in evidence(tmp_path / "sw", points[0], points, "best validation loss",
                                                            "network.rank"))
    others = "; ".join(f"{p['label']}: {p['best_val_loss']:.5g}" for p in points[1:])
    assert text.endswith(f"the others: {others}")  # not '2: …; 4: …; 2: …', where a rank repeats the winner's
    assert all(p["label"].count("=") == 2 for p in points)


def test_sweep_preset_of_a_folder_that_is_no_sweep_says_so(tmp_path, capsys):
    preset = tmp_path / "p.toml"
    preset.write_text("[network]\nrank = 4\n")
    assert main(["sweep", "preset", str(tmp_path / "nothere"), str(preset)]) == 2
    assert _error(capsys) == (f"lorakit: error: {tmp_path / 'nothere'}: no sweep.json; is it a sweep folder (made by "
                              "`lorakit sweep`)?")
    assert preset.read_text() == "[network]\nrank = 4\n"


def test_a_resumed_run_folder_keeps_no_stale_error_and_names_files_absolutely(tmp_path, monkeypatch):
    from lorakit.train.rundir import RunDir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "ohwx").mkdir(parents=True)
    run = RunDir(Path("out/ohwx"), "ohwx")  # `lorakit train --resume out/ohwx`, from the folder above
    assert run.root == tmp_path / "out" / "ohwx" and run.lora_path().is_absolute()
    run.write_status(status="interrupted", step=62, error="interrupted at step 62")
    run.write_status(status="running", step=60)  # the resume
    assert "error" not in run.read_status()
    run.write_status(status="finished", step=100, lora=str(run.lora_path()))
    status = json.loads((tmp_path / "out" / "ohwx" / "run.json").read_text())
    assert status["status"] == "finished" and "error" not in status
    assert status["lora"] == str(tmp_path / "out" / "ohwx" / "ohwx.safetensors")
    run.write_status(status="failed", error="a NaN")  # a failure still says why
    assert run.read_status()["error"] == "a NaN"


def test_resume_of_a_run_extended_past_its_config_says_how_it_got_there(run_toml, tmp_path, capsys):
    from lorakit.config.load import dump_toml, load_config

    run = tmp_path / "out" / "ohwx"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(dump_toml(load_config(run_toml)))  # training.max_steps = 2
    (run / "run.json").write_text(json.dumps({"status": "finished", "step": 4, "max_steps": 4}))  # resumed to 4
    assert main(["train", "--resume", str(run)]) == 2
    assert _error(capsys).startswith(
        f"lorakit: error: --resume: {run} finished at step 4 (training.max_steps = 2 in its config.toml; an earlier "
        f"--resume trained on to 4); nothing was changed")


def test_package_of_the_best_step_takes_the_best_file_that_holds_it(tmp_path, capsys):
    """`lowest validation loss: … at step 5; its LoRA: …-best.safetensors`, then `lorakit package RUN --step 5`."""
    from safetensors.torch import save_file

    from tests.unit.test_lora_publish import _run_dir

    run = _run_dir(tmp_path)
    best = {"lora_unet_a.lora_down.weight": torch.ones(4, 8), "lora_unet_a.lora_up.weight": torch.ones(8, 4),
            "lora_unet_a.alpha": torch.tensor(2.0)}
    save_file(best, run / "ohwx-best.safetensors", metadata={"lorakit_best_step": "5", "ss_steps": "5"})
    assert main(["package", str(run), "--step", "5", "-o", str(tmp_path / "pkg")]) == 0
    assert (tmp_path / "pkg" / "ohwx-best.safetensors").read_bytes() == (run / "ohwx-best.safetensors").read_bytes()
    assert main(["package", str(run), "--step", "6", "-o", str(tmp_path / "pkg6")]) == 2  # held by no file
    assert _error(capsys) == (f"lorakit: error: --step 6: ohwx-step00000006.safetensors not in {run} (step "
                              "checkpoints: 10)")


def test_a_kohya_dataset_tomls_bucket_range_names_the_key_in_its_file(tmp_path, capsys):
    write_demo_dataset(tmp_path / "data", n=1, repeats=1)
    ds = tmp_path / "kds.toml"
    ds.write_text(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "data" / "1_zkx shape"}"\n')
    assert main(["data", "check", str(ds), "--family", "sdxl"]) == 2
    assert _error(capsys) == ("lorakit: error: kds.toml: datasets[0].min_bucket_reso: the square bucket of the resolution "
                              "(64) must lie between min_bucket_reso 256 and max_bucket_reso 2048; set "
                              "datasets[0].min_bucket_reso in kds.toml to at most 64 (or change the resolution)")


def test_inspect_checks_a_lycoris_file_against_the_base_given(tmp_path, capsys):
    from safetensors.torch import save_file

    lokr = {}
    for stem in ("lora_unet_middle_block_1_proj_in", "lora_unet_input_blocks_3_1_proj_in"):  # the second: toy only
        lokr.update({f"{stem}.lokr_w1": torch.ones(8, 8), f"{stem}.lokr_w2": torch.ones(8, 8),
                     f"{stem}.alpha": torch.tensor(8.0)})
    save_file(lokr, str(tmp_path / "lokr.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    base = model_section("sdxl")["checkpoint"]
    assert main(["inspect", str(tmp_path / "lokr.safetensors"), "--base", base]) == 0
    out = capsys.readouterr().out
    assert f"fits sdxl: 2/2 modules (checked against {base} (" in out and "base model: sdxl; every key fits" in out


def test_a_sweep_out_that_is_a_file_or_a_run_folder_is_refused_in_one_line(tmp_path, capsys):
    toml = write_config(tmp_path)
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    assert main(["sweep", str(toml), "optimizer.lr=1e-4,3e-4", "--out", str(afile)]) == 2
    assert _error(capsys) == (f"lorakit: error: --out {afile} is a file, not a folder; nothing was overwritten: "
                              "choose another --out")
    assert afile.read_text() == "mine"
    run = tmp_path / "out" / "t"  # a run folder, not a sweep: no --resume to suggest
    run.mkdir(parents=True)
    (run / "config.toml").write_text("")
    assert main(["sweep", str(toml), "optimizer.lr=1e-4,3e-4", "--out", str(run)]) == 2
    assert _error(capsys) == (f"lorakit: error: {run} is not empty; nothing was overwritten. It holds no sweep (no "
                              "sweep.json): choose another --out")


def test_sweep_steps_and_a_max_steps_axis_are_refused_together(tmp_path, capsys):
    toml = write_config(tmp_path)
    assert main(["sweep", str(toml), "optimizer.lr=1e-4,3e-4", "training.max_steps=3,4", "--steps", "5",
                 "--out", str(tmp_path / "sw")]) == 2
    assert _error(capsys) == ("lorakit: error: sweep: --steps 5 and training.max_steps=3,4 both set the steps; give "
                              "one of them")
    assert not (tmp_path / "sw").exists()


def test_demo_steps_zero_is_refused_not_replaced_by_the_default(tmp_path, capsys):
    assert main(["demo", "--steps", "0", "--out", str(tmp_path / "d")]) == 2
    assert _error(capsys) == "lorakit: error: training.max_steps: must be an integer ≥ 1, got 0"
    assert not (tmp_path / "d" / "runs").exists()


def test_a_missing_mask_dir_is_named_as_a_missing_folder(tmp_path):
    from types import SimpleNamespace

    from lorakit.data.masks import mask_file
    from lorakit.errors import DataError

    item = SimpleNamespace(path=tmp_path / "data" / "1_x" / "cat.jpg")
    with pytest.raises(DataError) as err:
        mask_file(item, tmp_path / "nothere")
    assert str(err.value) == (f"data.mask_dir: folder {tmp_path / 'nothere'} not found (it should hold one mask per "
                              "image, named like the image: cat.png)")
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=r"data.mask_dir: no mask for .*cat.jpg in"):  # a folder without that mask
        mask_file(item, tmp_path / "masks")
