"""Mistakes a new user makes on the way through the README (the walk of the fifth session): each is one lorakit
error line naming the key or file, changes nothing the user made, and leaves nothing that blocks the corrected
command. All stop before a model loads (the toy SDXL's files are only named)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorakit.cli import main
from lorakit.config.load import dump_toml, load_config
from lorakit.errors import TrainingError
from lorakit.toy.paths import model_section
from lorakit.toy.world import write_demo_dataset
from lorakit.train import resume
from lorakit.train.rundir import RunDir


def _toml_value(v) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


@pytest.fixture
def run_toml(tmp_path) -> Path:
    data = tmp_path / "data"
    write_demo_dataset(data, n=2, repeats=1)
    model = "\n".join(f"{k} = {_toml_value(v)}" for k, v in model_section("sdxl").items())
    path = tmp_path / "run.toml"
    path.write_text(f"""[model]
{model}

[data]
dir = "{data}"
resolution = 64
min_bucket_reso = 64
max_bucket_reso = 128

[network]
rank = 4
alpha = 4

[training]
max_steps = 2

[sample]
prompts = []

[save]
dir = "{tmp_path / 'out'}"
name = "ohwx"
""")
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err.splitlines()[-1]


@pytest.fixture
def a_file(tmp_path):
    """A file of the user's where a folder is asked for."""
    path = tmp_path / "afile"
    path.write_text("mine")
    return path


def test_a_save_dir_that_cannot_be_made_is_one_line_naming_save_dir(run_toml, tmp_path, a_file, capsys):
    assert main(["train", str(run_toml), f"save.dir={a_file}"]) == 2
    assert _error(capsys) == (f"lorakit: error: save.dir: cannot create the run folder {a_file / 'ohwx'} (Not a "
                              f"directory: {a_file / 'ohwx'}); set save.dir to a folder you can write")
    # save.dir/save.name is the user's file: refused, and the file is untouched
    assert main(["train", str(run_toml), f"save.dir={tmp_path}", "save.name=afile"]) == 2
    assert _error(capsys).startswith(f"lorakit: error: {a_file} is a file, not a run folder; nothing was overwritten")
    assert a_file.read_text() == "mine"


def test_a_cache_dir_that_cannot_be_made_stops_at_the_scan_and_leaves_no_run_folder(run_toml, tmp_path, a_file,
                                                                                    capsys):
    assert main(["train", str(run_toml), f"data.cache_dir={a_file / 'cache'}"]) == 2
    assert _error(capsys) == (f"lorakit: error: data.cache_dir: cannot create the cache folder {a_file / 'cache'}: "
                              f"{a_file} is a file, not a folder; set data.cache_dir to a folder you can write")
    assert not (tmp_path / "out" / "ohwx").exists() and a_file.read_text() == "mine"


def test_resume_of_a_finished_run_is_refused_and_changes_nothing(run_toml, tmp_path, capsys):
    run = tmp_path / "out" / "ohwx"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(dump_toml(load_config(run_toml)))
    (run / "run.json").write_text(json.dumps({"status": "finished", "step": 2, "max_steps": 2}))
    (run / "ohwx.safetensors").write_bytes(b"the user's LoRA")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    for _ in range(2):  # the second is refused alike: the first let go of the folder's lock
        assert main(["train", "--resume", str(run)]) == 2
        assert _error(capsys) == (
            f"lorakit: error: --resume: {run} finished at step 2 (training.max_steps = 2); nothing was changed (its "
            f"LoRA: {run / 'ohwx.safetensors'}). To train it further, raise the step count: `lorakit train --resume "
            f"{run} training.max_steps=4`")
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != ".lorakit.lock"} == before
    # more steps, an interrupted run, or a run counted in epochs go on to the resume as before
    rd = RunDir(run, "ohwx")
    resume.check_not_finished(rd, load_config(run_toml, ["training.max_steps=3"]))
    resume.check_not_finished(rd, SimpleNamespace(training=SimpleNamespace(max_steps=2, max_epochs=1)))
    with pytest.raises(TrainingError):
        resume.check_not_finished(rd, load_config(run_toml, ["training.max_steps=1"]))
    (run / "run.json").write_text(json.dumps({"status": "interrupted", "step": 2}))
    resume.check_not_finished(rd, load_config(run_toml))


def test_a_new_sweep_whose_first_point_cannot_start_leaves_no_sweep_folder(run_toml, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", str(run_toml), "optimizer.lr=1e-4,2e-4", "--steps", "2", "--out", str(out)]
    assert main([*args[:3], f"data.dir={tmp_path / 'nope'}", *args[3:]]) == 2
    err = _error(capsys)
    assert err.startswith(f"lorakit: error: data.dir: folder {tmp_path / 'nope'} not found") and err.endswith(
        f"; nothing was trained, so {out} was removed and the corrected command starts cleanly"), err
    assert not out.exists()


def test_a_sweep_folder_is_kept_once_a_point_has_a_run_folder(run_toml, tmp_path):
    from lorakit.sweep.run import create

    sweep = create(run_toml, ["optimizer.lr=1e-4,2e-4"], steps=2, out=tmp_path / "sw")
    (sweep.root / "logs").mkdir()
    (sweep.root / "logs" / "01_lr1e-4.log").write_text("x")
    (sweep.root / "01_lr1e-4").mkdir()
    assert not sweep.discard_untrained() and (sweep.root / "sweep.json").is_file()
    (sweep.root / "01_lr1e-4").rmdir()
    (sweep.root / "notes.txt").write_text("the user's")  # anything lorakit did not write keeps the folder
    assert not sweep.discard_untrained() and (sweep.root / "notes.txt").is_file()
    (sweep.root / "notes.txt").unlink()
    assert sweep.discard_untrained() and not sweep.root.exists()


def test_a_demo_family_typo_suggests_the_family_and_writes_nothing(tmp_path, capsys):
    assert main(["demo", "--family", "sdxxl", "--out", str(tmp_path / "demo")]) == 2
    assert _error(capsys) == ("lorakit: error: --family: 'sdxxl' is not a family with a toy model; use one of flux1, "
                              "flux2, qwenimage, sd15, sd3, sdxl, zimage (did you mean sdxl?)")
    assert not (tmp_path / "demo").exists()
    # the other --family flags name the flag too, before anything runs
    for argv in (["toy", "path", "sd3x"], ["toy", "eval", "--family", "sd3x", "--out", str(tmp_path / "e")],
                 ["data", "check", str(tmp_path), "--family", "sd3x"]):
        assert main(argv) == 2, argv
        line = _error(capsys)
        assert line.startswith("lorakit: error: --family: 'sd3x' is not ") and line.endswith("(did you mean sd3?)"), \
            line
    assert not (tmp_path / "e").exists()


def test_the_toy_captioner_is_named_as_asked(tmp_path, capsys):
    folder = write_demo_dataset(tmp_path / "ds", n=2, repeats=1)
    for txt in folder.glob("*.txt"):
        txt.unlink()
    assert main(["caption", str(tmp_path / "ds"), "--captioner", "toy", "--trigger", "zkx", "--device", "cpu"]) == 0
    assert "2 image(s) to caption with toy (BLIP), 0 kept" in capsys.readouterr().err
    assert all(p.read_text().startswith("zkx, a ") for p in folder.glob("*.txt")) and len(list(folder.glob("*.txt"))) == 2


def test_a_closed_pipe_ends_the_command_quietly(tmp_path, monkeypatch, capsys):
    """`lorakit config schema | head`: the reader leaves early; no BrokenPipeError traceback."""
    import sys

    class ClosedPipe:
        def __init__(self, fh):
            self.fh = fh

        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return self.fh.fileno()

    with open(tmp_path / "stdout", "w") as fh:
        monkeypatch.setattr(sys, "stdout", ClosedPipe(fh))
        assert main(["config", "schema"]) == 141
    assert capsys.readouterr().err == ""


def test_nothing_to_cache_draws_no_empty_progress_bar(tmp_path, capsys):
    """A run without validation images printed `caching latents: 0img [00:00, ?img/s]`; nothing to cache now prints
    nothing, and caches reused whole say so in one line (benchmarks/first_step.py times the model load up to it)."""
    import torch

    from lorakit.data.cache import LatentCache, TextCache

    LatentCache(tmp_path, "vae").ensure([], encode=None, flip=False, progress=True)
    TextCache(tmp_path, "te").ensure([], encode=None, progress=True)
    assert capsys.readouterr() == ("", "")
    cache = TextCache(tmp_path, "te")
    cache.ensure(["a zkx", "a zkx", "a dog"], encode=lambda caps: {"context": torch.zeros(len(caps), 2, 3)},
                 progress=False)
    capsys.readouterr()
    cache.ensure(["a zkx", "a dog"], encode=None, progress=True)  # all cached: encode is not called
    out, err = capsys.readouterr()
    assert out == "caching text: all 2 caption(s) already cached\n" and err == ""


@pytest.mark.parametrize("family", ["flux1", "flux2", "qwenimage", "zimage"])
def test_another_familys_checkpoint_is_named_before_the_missing_encoders(run_toml, tmp_path, capsys, family):
    """The toy SDXL file under family = "zimage" (no text encoder set) said `model.text_encoder: required ...`; the
    user gave one and only then learnt the checkpoint was the wrong family's."""
    ckpt = model_section("sdxl")["checkpoint"]
    assert main(["train", str(run_toml), f"model.family={family}"]) == 2
    assert _error(capsys) == (
        f"lorakit: error: model.checkpoint: {ckpt} is an SDXL-layout checkpoint of another size (U-Net width 32, "
        f"context width 40; SDXL base 1.0 has 320 and 2048), not a base model the {family} family trains on; set "
        'model.family = "sdxl" to train on it')
    assert not (tmp_path / "out" / "ohwx").exists()


def test_an_sd15_checkpoint_under_family_sdxl_names_the_sd15_family(run_toml, capsys):
    """Since the sd15 family exists, an SD 1.x file given to the sdxl family says which family trains on it."""
    from lorakit.models.registry import identify

    ckpt = model_section("sd15")["checkpoint"]
    kind = identify(ckpt)
    assert (kind.family, kind.standard, kind.role) == ("sd15", False, "checkpoint")
    assert main(["train", str(run_toml), f"model.checkpoint={ckpt}"]) == 2
    assert _error(capsys) == (
        f"lorakit: error: model.checkpoint: {ckpt} is a Stable Diffusion 1/2-type checkpoint (U-Net context width 16; "
        "SDXL's is 2048), not a base model the sdxl family trains on; set model.family = \"sd15\" to train on it")


def _flux2_kohya_lora(path: Path, width: int, rows: int) -> Path:
    """A rank-2 kohya FLUX.2 Klein LoRA on single_blocks.0.linear1 (``width`` inputs, ``rows`` outputs), as lorakit
    writes it (with its ss_base_model_version)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    stem = "lora_unet_single_blocks_0_linear1"
    save_file({f"{stem}.lora_down.weight": torch.randn(2, width, generator=g),
               f"{stem}.lora_up.weight": torch.randn(rows, 2, generator=g), f"{stem}.alpha": torch.tensor(2.0)},
              str(path), metadata={"ss_base_model_version": "flux_2_klein_4b"})
    return path


def test_convert_of_a_flux2_lora_uses_flux2s_names(tmp_path, capsys):
    """FLUX.1 and FLUX.2 LoRAs share BFL's kohya names: on the toy FLUX.2 (--base), `convert --to diffusers` took
    FLUX.1's key map (to_q, to_k, to_v, proj_mlp; "20 modules (flux1)"); the file's ss_base_model_version now picks
    FLUX.2's (to_qkv_mlp_proj)."""
    from safetensors import safe_open

    src = _flux2_kohya_lora(tmp_path / "toy.safetensors", 64, 576)  # the toy FLUX.2's linear1: 64 → 576
    out = tmp_path / "toy-diffusers.safetensors"
    base = model_section("flux2")["checkpoint"]
    assert main(["convert", str(src), "--to", "diffusers", "--base", base, "-o", str(out)]) == 0
    assert "(flux2)" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        assert sorted(f.keys()) == ["transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A.weight",
                                    "transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_B.weight"]
    # without --base its rows do not split as the full-size model's: one line pointing at --base, nothing written
    assert main(["convert", str(src), "--to", "diffusers", "--family", "flux1", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert _error(capsys).endswith("(the flux1 key map's sizes); a LoRA of a model of another size converts with "
                                   "--base <its base checkpoint>; nothing written")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("lines, family", [
    ('pretrained_model_name_or_path = "/m/sd_xl_base_1.0.safetensors"', "sdxl"),      # the name says
    ('pretrained_model_name_or_path = "/m/base.safetensors"\nsdxl = true', "sdxl"),   # kohya_ss's flag
    ('pretrained_model_name_or_path = "/m/v1-5-pruned-emaonly.safetensors"', "sd15"),
    ("pretrained_model_name_or_path = \"{sd15_toy}\"", "sd15"),                       # the file's header
    ('pretrained_model_name_or_path = "/m/base.safetensors"', None),                  # nothing tells: --family
])
def test_import_kohya_tells_sdxl_from_sd15(tmp_path, capsys, lines, family):
    """sd-scripts' networks.lora trains SD 1.x and SDXL; since the sd15 family exists every such config was imported
    as family "sd15" (the first family of that module), an SDXL one included."""
    config = tmp_path / "kohya.toml"
    config.write_text(lines.format(sd15_toy=model_section("sd15")["checkpoint"])
                      + '\nnetwork_module = "networks.lora"\nnetwork_dim = 8\n')
    out = tmp_path / "run.toml"
    rc = main(["import", "kohya", str(config), "-o", str(out)])
    if family is None:
        assert rc == 2 and not out.exists()
        assert _error(capsys).endswith("pass --family, e.g. --family sdxl, --family sd15 or --family flux1")
    else:
        assert rc == 0 and tomllib.loads(out.read_text())["model"]["family"] == family


def test_data_check_of_a_folder_without_usable_images_shows_the_report_it_points_at(tmp_path, capsys):
    """Images straight in the folder (no `10_name` subfolder): the error said "see the data report" and none was
    printed."""
    folder = write_demo_dataset(tmp_path / "ds", n=3, repeats=1)
    flat = tmp_path / "flat"
    folder.rename(flat)
    assert main(["data", "check", str(flat), "--family", "sdxl"]) == 2
    out, err = capsys.readouterr()
    assert "usable images: 0   skipped: 1" in out
    assert any(line.startswith("skipped  ") and line.endswith("3 image(s) directly in this folder are not used: move "
               "them into a subfolder named like '10_ohwx woman'") for line in out.splitlines()), out
    assert err.strip().endswith("`lorakit data check` reports each file")


def test_a_family_typo_under_a_preset_names_the_family_not_the_preset(run_toml, capsys):
    """With a preset, `model.family=sdxxl` said "preset sdxl/character is for sdxl, got sdxxl; use a sdxxl/... preset
    ()"."""
    text = run_toml.read_text()
    run_toml.write_text('preset = "sdxl/character"\n' + text)
    assert main(["config", "show", str(run_toml), "model.family=sdxxl"]) == 2
    assert _error(capsys) == ('lorakit: error: model.family: must be one of flux1, flux2, qwenimage, sd15, sd3, sdxl, '
                              'zimage, got "sdxxl"; did you mean sdxl?')
    assert main(["config", "show", str(run_toml), "model.family=flux1"]) == 2  # a real family: the preset's line
    assert _error(capsys) == ("lorakit: error: model.family: preset sdxl/character is for sdxl, got flux1; use a "
                              "flux1/... preset (flux1/character, flux1/product, flux1/style)")


def test_convert_to_diffusers_of_a_toy_topology_module_says_which_layouts_keep_it(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from lorakit.safetensors_header import read_safetensors_header

    base = model_section("sdxl")["checkpoint"]
    header, _ = read_safetensors_header(Path(base))
    tensors = {}
    # input_blocks.3.1: a module full-size SDXL has not (its input_blocks.3 is a downsampler); middle_block.1 has
    for stem, native in (("lora_unet_input_blocks_3_1_proj_in", "input_blocks.3.1.proj_in"),
                         ("lora_unet_middle_block_1_proj_in", "middle_block.1.proj_in")):
        out_f, in_f = header[f"model.diffusion_model.{native}.weight"]["shape"][:2]
        tensors.update({f"{stem}.lora_down.weight": torch.ones(2, in_f), f"{stem}.lora_up.weight": torch.ones(out_f, 2),
                        f"{stem}.alpha": torch.tensor(2.0)})
    src = tmp_path / "toy.safetensors"
    save_file(tensors, str(src), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    assert main(["convert", str(src), "--to", "diffusers", "--base", base, "-o", str(tmp_path / "d.safetensors")]) == 2
    assert _error(capsys).endswith("cannot write diffusers: --to kohya or --to comfyui keep it under its own name")
    assert main(["convert", str(src), "--to", "comfyui", "--base", base, "-o", str(tmp_path / "c.safetensors")]) == 0
    assert (tmp_path / "c.safetensors").is_file() and not (tmp_path / "d.safetensors").exists()


def test_verify_counts_a_loader_that_skips_a_variant_instead_of_saying_it_loads_nothing():
    """A DoRA LoRA: diffusers' row said "loads no sdxl LoRA at all" (it loads SDXL LoRAs; it skips dora modules)."""
    from lorakit.lora.tools.verify import render

    loader = {"applied": 237, "ignored": ["m.dora_scale"] * 79, "mismatched": [], "on_unknown": "drops them"}
    report = {"keys": 316, "modules": [], "layout": "lycoris", "family": "sdxl", "variants": ["dora"], "ok": True,
              "loaders": {"diffusers": {**loader, "unsupported": ["dora"]},
                          "kohya": {"applied": 0, "ignored": [], "mismatched": [], "unsupported": True}}}
    lines = render(report).splitlines()
    assert "diffusers       237       79               0" in lines
    assert "kohya      loads no sdxl LoRA at all (not counted)" in lines
