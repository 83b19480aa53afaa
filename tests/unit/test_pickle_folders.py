"""model.allow_pickle = false covers diffusers folders: a component folder with only .bin weights is refused in one
line naming the file and the key, before any loader reads it; with allow_pickle = true the folder loads. A crafted
safetensors header inside a folder is one line too."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from lorakit.config.load import load_config
from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.sdxl import configs
from lorakit.models.sdxl.load import open_components
from lorakit.models.weights import check_weights_folder


@pytest.fixture(scope="module")
def bin_folder(tmp_path_factory):
    """A diffusers SDXL folder (the shipped tiny configs) whose UNet and VAE are pickle (.bin) files."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorakit.models.sdxl.load import tiny_configs

    tmp = tmp_path_factory.mktemp("binsdxl")
    cfgs = tiny_configs()
    out = configs.write_config_folder(tmp / "folder", unet=cfgs["unet"], vae=cfgs["vae"], te1=cfgs["te1"],
                                      te2=cfgs["te2"])
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(out / "unet")))
    unet.save_pretrained(str(out / "unet"), safe_serialization=False)
    AutoencoderKL.from_config(AutoencoderKL.load_config(str(out / "vae"))).save_pretrained(
        str(out / "vae"), safe_serialization=False)
    for sub, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        cls(CLIPTextConfig.from_pretrained(str(out / sub))).save_pretrained(str(out / sub))
    assert (out / "unet" / "diffusion_pytorch_model.bin").is_file()
    return out, unet.state_dict()


def _cfg(folder, allow):
    return load_config(None, data={"model": {"family": "sdxl", "checkpoint": str(folder), "allow_pickle": allow},
                                   "data": {"dir": "/d"}})


def test_pickle_only_folder_refused_naming_file_and_key(bin_folder):
    folder, _ = bin_folder
    with pytest.raises(ConfigError) as e:
        open_components(_cfg(folder, False).model)
    msg = str(e.value)
    assert msg.startswith(f"model.checkpoint: {folder}/unet/diffusion_pytorch_model.bin is a pickle file"), msg
    assert "model.allow_pickle = true" in msg and "\n" not in msg


def test_pickle_folder_loads_with_allow_pickle(bin_folder):
    folder, state = bin_folder
    parts = open_components(_cfg(folder, True).model)
    loaded = parts.unet.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_folder_with_safetensors_beside_a_bin_is_fine_and_headers_are_checked(tmp_path):
    comp = tmp_path / "unet"
    comp.mkdir()
    (comp / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    from safetensors.torch import save_file
    save_file({"w": torch.ones(2)}, str(comp / "diffusion_pytorch_model.safetensors"))
    check_weights_folder(tmp_path, allow_pickle=False)  # diffusers reads the .safetensors one
    deep = ('{"a": ' + "[" * 50000 + "]" * 50000 + "}").encode()
    (comp / "diffusion_pytorch_model.safetensors").write_bytes(struct.pack("<Q", len(deep)) + deep)
    with pytest.raises(ModelLoadError, match=r"corrupt safetensors header \(JSON nested more than 8 deep\)"):
        check_weights_folder(tmp_path, allow_pickle=False)


def test_shipped_configs_hold_no_weights():
    # the shipped config folders are what single-file loading reads: no pickle weights could hide there
    root = configs.shipped_config_dir()
    assert not [p for p in root.rglob("*") if p.suffix in (".bin", ".pt", ".ckpt", ".pth")]
    assert json.loads((root / "model_index.json").read_text())["_class_name"].startswith("StableDiffusionXL")


def test_generated_configs_honour_xdg_cache_home_and_say_so_once(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LORAKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first = configs.shipped_config_dir()
    assert first.parent == tmp_path / "xdg" / "lorakit" / "configs" and (first / "model_index.json").is_file()
    err = capsys.readouterr().err
    assert err.count("note: model.config_dir is not set") == 1 and str(first) in err
    assert configs.shipped_config_dir() == first and capsys.readouterr().err == ""  # once
    assert not (tmp_path / ".cache").exists()
