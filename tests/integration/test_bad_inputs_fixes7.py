"""The seventh session's second-wave fixes: an explicit empty option value, `lorakit inspect` / `verify` on a toy
SD 1.5 LoRA (names vs shapes, the base's own depth), a diffusers folder of another family, SD 1.5 given another VAE,
non-finite images into the ComfyUI Dataset node, two web UIs on one home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorakit.cli import build_parser, main
from lorakit.toy.paths import model_section


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ 1. an empty value is not "the default"

@pytest.mark.parametrize("argv, option, what", [
    (["caption", "DIR", "--captioner", "toy", "--extension", ""], "--extension", "caption file extension"),
    (["package", "RUN", "--license="], "--license", "licence text for the model card"),
    (["plan", "run.toml", "--card", ""], "--card", "a card of lorakit's table (rtx4090, rtx3060-12g, h100, ...)"),
])
def test_an_explicit_empty_option_value_is_refused_in_one_line(tmp_path, capsys, argv, option, what):
    # before: --extension "" wrote .txt captions, --license "" used the base model's licence, --card '' said "no CUDA
    # GPU here"; each read the empty value as the option left out
    argv = [str(tmp_path / a) if a in ("DIR", "RUN", "run.toml") else a for a in argv]
    assert main(argv) == 2
    assert _err(capsys) == (f"lorakit: error: {option} was given an empty value; give a value ({what}) or leave "
                            f"{option} out for its default")
    assert list(tmp_path.iterdir()) == []  # nothing read or written


def test_an_empty_value_stays_allowed_where_empty_is_the_default():
    from lorakit.cli import _empty_option

    parser = build_parser()
    args, _ = parser.parse_known_args(["caption", "d", "--captioner", "toy", "--prefix", "", "--trigger", ""])
    assert _empty_option(parser, args) is None
    args, _ = parser.parse_known_args(["caption", "d", "--captioner", "toy", "--model", ""])
    assert _empty_option(parser, args).startswith("--model was given an empty value")


# ------------------------------------------------------------------ 2, 3. a toy SD 1.5 LoRA: shapes, and its own base

TOY_SD15 = model_section("sd15")["checkpoint"]


@pytest.fixture(scope="module")
def toy_sd15_lora(tmp_path_factory) -> tuple[Path, int]:
    """A LoRA named and shaped as a trainer on the toy SD 1.5 U-Net writes it: sd-scripts' names of the toy's own
    diffusers module paths (1 layer per block, so ``up_blocks.1.attentions.1`` is the toy's output_blocks.3.1)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from lorakit.models.base import init_kwargs
    from lorakit.models.sd15.adapter import kohya_name, unet_lora_targets

    cfg = json.loads((Path(model_section("sd15")["config_dir"]) / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel(**init_kwargs(cfg))
    named, sd = dict(unet.named_modules()), {}
    for path in sorted(unet_lora_targets(unet, 1, conv_rank=0)):
        w, name = named[path].weight, kohya_name("unet", path)
        sd[f"{name}.lora_down.weight"] = torch.ones(2, *w.shape[1:])
        sd[f"{name}.lora_up.weight"] = torch.zeros(w.shape[0], 2, *([1, 1] if w.dim() == 4 else []))
        sd[f"{name}.alpha"] = torch.tensor(2.0)
    assert "lora_unet_up_blocks_1_attentions_1_proj_in.lora_up.weight" in sd
    out = tmp_path_factory.mktemp("lora") / "toy_sd15_lora.safetensors"
    save_file(sd, str(out))
    return out, len(sd) // 3


def _out(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_inspect_without_base_says_the_shapes_do_not_fit_full_size(toy_sd15_lora, capsys):
    # before: "base model: sd15; every key fits" (names only) while `lorakit verify` found 144 shape mismatches
    lora, n = toy_sd15_lora
    out = _out(capsys, "inspect", str(lora))
    assert f"fits sd15: {n}/{n} modules (checked against full-size sd15)" in out
    assert "every key fits" not in out
    assert (f"base model: sd15; every name fits, but {n}/{n} modules have other shapes than full-size sd15's (e.g. "
            "lora_unet_down_blocks_0_attentions_0_proj_in: LoRA 32x32 on weight 320x320): a LoRA of a smaller model "
            f"(a toy or pruned one); check it with --base FILE or `lorakit verify {lora} --base FILE`") in out


def test_a_toy_sd15_lora_fits_its_own_base_fully(toy_sd15_lora, capsys):
    # before: 36/48, the 12 modules of up_blocks_1_attentions_1 "fit nothing" (the map assumed 2 layers per block)
    lora, n = toy_sd15_lora
    out = _out(capsys, "inspect", str(lora), "--base", TOY_SD15)
    assert f"fits sd15: {n}/{n} modules (checked against {TOY_SD15}" in out
    assert "base model: sd15; every key fits" in out
    out = _out(capsys, "verify", str(lora), "--base", TOY_SD15)
    assert "every loader applies every key" in out and f"comfyui {3 * n:>11}        0               0" in out, out


def test_the_sd15_base_map_follows_the_files_blocks_and_full_size_is_unchanged():
    from diffusers import UNet2DConditionModel

    from lorakit.models.base import init_kwargs
    from lorakit.models.sd15 import configs
    from lorakit.models.sd15.keys import full_lora_keymap, keymap_for_base, unet_config_of
    from lorakit.models.unet_parts import unet_to_sgm
    from lorakit.safetensors_header import read_safetensors_header

    def header_of(cfg):  # a single file's header (SGM keys and shapes) of a U-Net of this config
        with torch.device("meta"):
            sd = UNet2DConditionModel(**init_kwargs(cfg)).state_dict()
        return {k: {"shape": list(v.shape)} for k, v in unet_to_sgm(sd, cfg).items()}

    full = header_of(configs.UNET)
    assert unet_config_of(full) == configs.UNET and keymap_for_base(full) is None  # a real SD 1.x file: as before
    deep = {**configs.UNET, "layers_per_block": 3}  # a non-standard depth of full width
    keys = keymap_for_base(header_of(deep))
    assert unet_config_of(header_of(deep))["layers_per_block"] == 3
    by = {m.native: m.diffusers[0] for m in keys.modules if m.component == "denoiser"}
    assert by["output_blocks.7.1.proj_in"] == "up_blocks.1.attentions.3.proj_in"  # 4 blocks per up level
    assert by["input_blocks.3.1.proj_in"] == "down_blocks.0.attentions.2.proj_in"
    assert set(by) - {m.native for m in full_lora_keymap().modules}  # names full size lacks
    toy_header, _ = read_safetensors_header(Path(TOY_SD15))
    toy_cfg = json.loads((Path(model_section("sd15")["config_dir"]) / "unet" / "config.json").read_text())
    got = unet_config_of(toy_header)
    for key in ("layers_per_block", "block_out_channels", "down_block_types", "up_block_types",
                "cross_attention_dim", "in_channels", "out_channels", "use_linear_projection"):
        assert got[key] == toy_cfg[key], key


# ------------------------------------------------------------------ 4. another family's diffusers folder

_LOADERS = {  # where each family reads model.checkpoint (the first check a folder meets)
    "sd15": ("lorakit.models.sd15.load", "_source"), "sdxl": ("lorakit.models.sdxl.load", "_source"),
    "flux1": ("lorakit.models.flux1.load", "load_components"),
    "flux2": ("lorakit.models.flux2.load", "load_components"),
    "sd3": ("lorakit.models.sd3.load", "load_components"), "zimage": ("lorakit.models.zimage.load", "load_components"),
    "qwenimage": ("lorakit.models.qwenimage.load", "load_components"),
}


@pytest.mark.parametrize("family, cls, other, shown", [
    ("flux2", "StableDiffusionXLPipeline", "sdxl", "SDXL"),
    ("sdxl", "FluxPipeline", "flux1", "FLUX.1"),
    ("sd15", "Flux2KleinPipeline", "flux2", "FLUX.2"),
    ("flux1", "StableDiffusion3Pipeline", "sd3", "SD3.5"),
    ("sd3", "ZImagePipeline", "zimage", "Z-Image"),
    ("zimage", "QwenImagePipeline", "qwenimage", "Qwen-Image"),
    ("qwenimage", "StableDiffusionPipeline", "sd15", "SD 1.5"),
])
def test_another_familys_diffusers_folder_names_the_family_to_set(tmp_path, family, cls, other, shown):
    # before: "model.checkpoint: folder … is not a diffusers FLUX.2 model (no transformer/)" for an SDXL folder
    import importlib
    from types import SimpleNamespace

    from lorakit.errors import ModelLoadError
    from lorakit.models.registry import folder_family, get_family

    folder = tmp_path / "pipe"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls, "_diffusers_version": "0.36.0"}))
    assert folder_family(folder) == (cls, other)
    module, fn = _LOADERS[family]
    cfg = SimpleNamespace(checkpoint=str(folder), family=family, config_dir=None, allow_pickle=False)
    with pytest.raises(ModelLoadError) as exc:
        getattr(importlib.import_module(module), fn)(cfg)
    assert str(exc.value) == (f"model.checkpoint: {folder} is a diffusers {shown} folder ({cls}), not a base model "
                              f"the {family} family trains on; set model.family = \"{other}\" to train on it")
    assert get_family(other).SPEC.display_name == shown
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    assert folder_family(folder) == ("KandinskyPipeline", None)  # no family claims it: the family's own check speaks


# ------------------------------------------------------------------ 5. SD 1.5 given another VAE as model.vae

SD15_VAE = "an SD 1.5 VAE (4 latent channels, e.g. vae-ft-mse-840000-ema-pruned.safetensors)"


@pytest.mark.parametrize("family, role, what", [
    ("flux1", "ae", "an autoencoder (VAE) of 16 latent channels"),
    ("flux2", "ae", "an autoencoder (VAE) of 32 latent channels"),
    ("qwenimage", "vae", "a Wan 2.1 / Qwen-Image autoencoder (model.vae of qwenimage)"),
])
def test_sd15_model_vae_of_another_model_is_one_short_line(family, role, what):
    # before: "model.vae: … could not be loaded as an SD 1.5 VAE (Cannot load because encoder.conv_out.weight expected
    # shape … but got …; 400 more characters of diffusers advice)"
    from types import SimpleNamespace

    from lorakit.errors import ModelLoadError
    from lorakit.models.sd15.load import _vae_file

    path = model_section(family)[role]
    with pytest.raises(ModelLoadError) as exc:
        _vae_file(SimpleNamespace(vae=path), Path(model_section("sd15")["config_dir"]))
    assert str(exc.value) == f"model.vae: {path} is {what}, not {SD15_VAE}"


def test_sd15_model_vae_that_fails_to_load_is_still_one_line(tmp_path):
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from lorakit.errors import ModelLoadError
    from lorakit.models.sd15.load import _vae_file

    path = tmp_path / "half_vae.safetensors"  # SD 1.5's 8 conv_out rows, the rest missing or of other shapes
    save_file({"encoder.conv_out.weight": torch.zeros(8, 32, 3, 3), "decoder.conv_in.weight": torch.zeros(7, 4, 3, 3)},
              str(path))
    with pytest.raises(ModelLoadError) as exc:
        _vae_file(SimpleNamespace(vae=str(path)), Path(model_section("sd15")["config_dir"]))
    msg = str(exc.value)
    assert msg.startswith(f"model.vae: {path} could not be loaded as {SD15_VAE}: ") and "\n" not in msg
    assert len(msg) <= len(f"model.vae: {path} could not be loaded as {SD15_VAE}: ") + 161


# ------------------------------------------------------------------ 6. NaN/Inf in the ComfyUI Dataset node's images

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_comfy_dataset_node_refuses_a_nonfinite_image_batch(tmp_path, monkeypatch, value):
    # before: the batch was written as PNGs (NaN → black, Inf → white pixels) and the run trained on them
    from lorakit.comfy import nodes
    from lorakit.errors import ConfigError

    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    images = torch.rand(3, 64, 64, 3)
    images[1, 4, 5, 0] = value
    with pytest.raises(ConfigError) as exc:
        nodes.LorakitDataset().load("", 1, "zkx", "", images=images, captions="")
    assert str(exc.value) == ("images: 1 of the 3 images of the IMAGE batch hold NaN/Inf values (image 2); fix or "
                              "remove the node that makes them (ComfyUI images are values in [0, 1]); nothing was "
                              "written")
    assert not (tmp_path / "home" / "comfy" / "datasets").exists() or not any(
        (tmp_path / "home" / "comfy" / "datasets").iterdir())
    images[1, 4, 5, 0] = 0.5  # the same batch, finite: written
    ds, _ = nodes.LorakitDataset().load("", 1, "zkx", "", images=images, captions="")
    assert len(list((Path(ds.folder) / "1_zkx").glob("*.png"))) == 3


# ------------------------------------------------------------------ 7. two web UIs on one home

def test_a_second_ui_on_a_home_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    # before: a second `lorakit ui --home H --port P2` started on the queue the first one ran
    import os
    import subprocess
    import sys

    from lorakit.errors import LorakitError
    from lorakit.ui.jobs import hold_home

    home = tmp_path / "home"
    home.mkdir()
    first = hold_home(home, 7861)
    with pytest.raises(LorakitError) as exc:
        hold_home(home, 7862)
    msg = str(exc.value)
    assert msg.startswith(f"--home {home}: another `lorakit ui` serves this home and its job queue "
                          f"(http://127.0.0.1:7861, pid {os.getpid()} on host ") and "\n" not in msg
    assert msg.endswith("); use that one, stop it first, or give another --home")
    first.release()
    hold_home(home, 7862).release()  # released (the UI stopped): the next one starts
    # a UI killed with SIGKILL leaves its lock file behind; the kernel dropped the lock, so the next UI takes it over
    code = ("import sys, time; from lorakit.ui.jobs import hold_home; hold_home(sys.argv[1], 7863); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LorakitError, match=rf"\(http://127.0.0.1:7863, pid {proc.pid} on host "):
            hold_home(home, 7864)
    finally:
        proc.kill()
        proc.wait()
    assert (home / "ui.lock").is_file()
    lock = hold_home(home, 7864)
    assert json.loads((home / "ui.lock").read_text())["port"] == 7864
    lock.release()


def test_two_processes_on_one_queue_never_run_two_jobs_on_one_device(tmp_path):
    # before: the device-busy check and the claim were two steps, so a UI (or the ComfyUI nodes) that had looked at the
    # queue before another process started job 1 then started job 2 on the same device too
    import shutil
    import time

    from lorakit.ui.jobs import JobStore

    home = tmp_path / "home"
    a, b = (JobStore(home, python=shutil.which("true") or "/bin/true") for _ in range(2))
    with a._db() as db:
        for name in ("one", "two"):
            db.execute("INSERT INTO jobs (name, created, device, run_dir, state, updated) VALUES (?, ?, 'cpu', ?, "
                       "'queued', ?)", (name, time.time(), str(tmp_path / name), time.time()))
    for job in a.list():
        job.job_dir.mkdir(parents=True, exist_ok=True)
    snapshot = a.list()  # what A saw before B moved
    assert b.schedule() == [1]
    a.list = lambda: snapshot  # A schedules from its earlier look (both still queued there)
    assert a.schedule() == []
    states = {j.name: j.state for j in b.list()}
    assert states == {"one": "running", "two": "queued"}
