"""package / push --dry-run on a run folder, import kohya, data check of a kohya dataset TOML, and the CLI's
one-line refusals and exit codes of the LoRA tools."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lorakit.cli import main


def _run_dir(tmp_path):
    from lorakit.config.load import dump_toml

    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    cfg = {"model": {"family": "sdxl", "checkpoint": "/home/me/models/sd_xl_base_1.0.safetensors"},
           "data": {"dir": "/home/me/datasets/ohwx"}, "save": {"name": "ohwx"},
           "sample": {"prompts": ["ohwx woman, portrait --d 7 --s 12", "ohwx woman on a bike --n blurry"]}}
    (run / "config.toml").write_text(dump_toml(cfg))
    meta = {"ss_dataset_dirs": json.dumps({"10_ohwx woman": {"n_repeats": 10, "img_count": 12}}),
            "ss_tag_frequency": json.dumps({"10_ohwx woman": {"ohwx": 12, "smile": 4}}), "ss_steps": "10",
            "ss_num_train_images": "120", "ss_network_dim": "4", "ss_network_alpha": "2",
            "modelspec.architecture": "stable-diffusion-xl-v1-base/lora", "sshs_model_hash": "ab" * 32}
    lora = {"lora_unet_a.lora_down.weight": torch.zeros(4, 8), "lora_unet_a.lora_up.weight": torch.zeros(8, 4),
            "lora_unet_a.alpha": torch.tensor(2.0)}
    save_file(lora, run / "ohwx-step00000010.safetensors", metadata=meta)
    save_file(lora, run / "ohwx.safetensors", metadata=meta)
    for label, idx, seed in (("before", 0, 7), ("step00000010", 0, 7), ("step00000010", 1, 0), ("after", 0, 7),
                             ("after", 1, 0)):
        Image.new("RGB", (16, 16), (idx * 50, 0, 0)).save(run / "samples" / f"ohwx_{label}_{idx:02d}_{seed}.png")
    return run


def test_package_run(tmp_path):
    run = _run_dir(tmp_path)
    assert main(["package", str(run), "--step", "10", "-o", str(tmp_path / "pkg")]) == 0
    pkg = tmp_path / "pkg"
    assert sorted(p.name for p in pkg.iterdir()) == ["README.md", "civitai.json", "ohwx-step00000010.safetensors",
                                                    "preview_00.png", "preview_01.png"]
    with Image.open(pkg / "preview_00.png") as im:
        params = im.text["parameters"]
        settings = json.loads(im.text["lorakit"])
    assert params.startswith("ohwx woman, portrait\n") and "Seed: 7" in params and "Steps: 12" in params
    assert settings["seed"] == 7 and settings["steps"] == 12 and settings["cfg_scale"] == 7.0
    with Image.open(pkg / "preview_01.png") as im:
        assert "Negative prompt: blurry" in im.text["parameters"]
    civ = json.loads((pkg / "civitai.json").read_text())
    assert civ["baseModel"] == "SDXL 1.0" and civ["type"] == "LORA" and civ["trainedWords"] == ["ohwx"]
    import hashlib
    assert civ["files"][0]["sha256"] == hashlib.sha256((pkg / "ohwx-step00000010.safetensors").read_bytes()).hexdigest()
    card = (pkg / "README.md").read_text()
    assert "`ohwx`" in card and "12 images (120 with repeats)" in card and "/home/me" not in card
    assert "/home/me" not in (pkg / "civitai.json").read_text()
    # the package folder is never overwritten; a missing step names the ones there
    assert main(["package", str(run), "--step", "10", "-o", str(tmp_path / "pkg")]) == 2
    assert main(["package", str(run), "--step", "5"]) == 2


def test_push_dry_run_and_offline(tmp_path, capsys, monkeypatch):
    run = _run_dir(tmp_path)
    assert main(["push", str(run), "--repo", "me/ohwx", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload to https://huggingface.co/me/ohwx" in out and "ohwx.safetensors" in out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(run), "--repo", "me/ohwx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "offline" in err[0]


def test_import_kohya_lists_mapped_and_dropped(tmp_path, capsys):
    cfg = tmp_path / "k.toml"
    cfg.write_text('network_module = "networks.lora_flux"\nnetwork_dim = 16\nlearning_rate = 1e-4\n'
                   '[extra]\nsave_every_n_epochs = 2\nsample_every_n_epochs = 2\nfrobnicate = true\n')
    ds = tmp_path / "ds.toml"
    ds.write_text('[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "img"\nnum_repeats = 2\n')
    out = tmp_path / "run.toml"
    assert main(["import", "kohya", str(cfg), "--dataset", str(ds), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mapped   network_dim -> network.rank" in text and "dropped  frobnicate: no lorakit equivalent" in text
    assert "dropped  sample_every_n_epochs" in text  # issue 23: save_every_n_epochs is mapped now
    assert "mapped   save_every_n_epochs -> save.every_n_epochs" in text
    import tomllib
    doc = tomllib.loads(out.read_text())
    assert doc["model"]["family"] == "flux1" and doc["network"]["rank"] == 16 and doc["data"]["config"] == str(ds)
    assert main(["import", "kohya", str(cfg), "-o", str(out)]) == 2  # never overwrites


def test_data_check_accepts_kohya_dataset_toml(tmp_path, capsys):
    img = tmp_path / "img"
    img.mkdir()
    for i in range(3):
        Image.new("RGB", (640, 512), (i * 40, 90, 30)).save(img / f"{i}.png")
        (img / f"{i}.txt").write_text("ohwx, photo")
    ds = tmp_path / "ds.toml"
    ds.write_text('[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "img"\nnum_repeats = 4\n'
                  'class_tokens = "ohwx"\n')
    rc = main(["data", "check", str(ds)])
    out = capsys.readouterr().out
    assert rc == 0 and "3" in out


def test_cli_verify_convert_exit_codes(tmp_path, capsys):
    from lorakit.models.sdxl.keys import full_lora_keymap

    keys = full_lora_keymap()
    mods = [m for m in keys.modules if m.kernel == (1, 1)][:3]
    sd = {}
    for m in mods:
        n = keys.kohya_name(m)
        sd[n + ".lora_down.weight"] = torch.randn(2, m.in_features).half()
        sd[n + ".lora_up.weight"] = torch.randn(m.out_features, 2).half()
        sd[n + ".alpha"] = torch.tensor(1.0)
    good = tmp_path / "good.safetensors"
    save_file(sd, good)
    assert main(["verify", str(good)]) == 0
    assert "every loader applies every key" in capsys.readouterr().out
    bad = tmp_path / "bad.safetensors"
    save_file({**sd, "lora_unet_not_a_module.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_not_a_module.lora_up.weight": torch.zeros(4, 2)}, bad)
    assert main(["verify", str(bad)]) == 1
    assert "ignored lora_unet_not_a_module" in capsys.readouterr().out
    # convert refuses a file with keys it cannot place, in one line, and writes nothing
    assert main(["convert", str(bad), "--to", "diffusers", "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fit no sdxl module" in err[0] and not (tmp_path / "x.safetensors").exists()
    assert main(["convert", str(good), "--to", "peft", "-o", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "adapter_config.json").is_file()
    assert main(["resize", str(good), "--dynamic", "sv_fro=2"]) == 2


def _as_family(run, family: str, meta: dict[str, str]) -> None:
    """The run folder of _run_dir re-labelled as a run of ``family`` whose LoRAs carry ``meta`` (its family keys)."""
    from safetensors import safe_open

    from lorakit.config.load import dump_toml
    cfg = {"model": {"family": family, "checkpoint": "/home/me/models/base.safetensors"},
           "data": {"dir": "/home/me/datasets/ohwx"}, "save": {"name": "ohwx"},
           "sample": {"prompts": ["ohwx woman, portrait", "ohwx woman on a bike"]}}
    (run / "config.toml").write_text(dump_toml(cfg))
    for f in run.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            tensors, old = {k: h.get_tensor(k) for k in h.keys()}, h.metadata()
        save_file(tensors, f, metadata={**old, **meta})


def _family_meta(family: str, variant: str) -> dict[str, str]:
    """The keys lorakit's adapter writes for that family / variant (from its own tables)."""
    if family == "flux2":
        from lorakit.models.flux2.adapter import ARCHITECTURE, BASE_VERSION
        size = variant.replace("base-", "") if variant != "dev" else "dev"
        return {"ss_base_model_version": BASE_VERSION[size], "modelspec.architecture": f"{ARCHITECTURE[size]}/lora",
                "lorakit_flux2_variant": variant}
    if family == "sd3":
        from lorakit.models.sd3.adapter import ARCHITECTURE, BASE_VERSION
        return {"ss_base_model_version": BASE_VERSION[variant], "lorakit_sd3_variant": variant,
                "modelspec.architecture": f"{ARCHITECTURE[variant]}/lora"}
    if family == "zimage":
        return {"ss_base_model_version": "z_image", "lorakit_zimage_variant": variant}
    from lorakit.models.registry import get_family
    return {"ss_base_model_version": get_family(family).SPEC.metadata_base_version}


@pytest.mark.parametrize("family,variant,civitai", [
    ("flux2", "klein-4b", "Flux.2 Klein 4B"), ("flux2", "klein-base-4b", "Flux.2 Klein 4B-base"),
    ("flux2", "klein-9b", "Flux.2 Klein 9B"), ("flux2", "klein-base-9b", "Flux.2 Klein 9B-base"),
    ("flux2", "dev", "Flux.2 D"), ("sd3", "large", "SD 3.5 Large"), ("sd3", "large-turbo", "SD 3.5 Large Turbo"),
    ("sd3", "medium", "SD 3.5 Medium"), ("sd3", "sd3-medium", "SD 3"), ("qwenimage", "", "Qwen"),
    ("zimage", "turbo", "ZImageTurbo"), ("zimage", "base", "ZImageBase"), ("sd15", "", "SD 1.5")])
def test_package_names_civitais_base_model_and_licence(tmp_path, family, variant, civitai):
    # civitai.json's baseModel is one of CivitAI's names, the one of that variant, with CivitAI's licence for it
    # (tests/unit/metadata_rederived.py, from civitai/civitai's basemodel.constants.ts)
    from tests.unit.metadata_rederived import CIVITAI_BASE_MODELS
    run = _run_dir(tmp_path)
    _as_family(run, family, _family_meta(family, variant))
    assert main(["package", str(run), "-o", str(tmp_path / "pkg")]) == 0
    civ = json.loads((tmp_path / "pkg" / "civitai.json").read_text())
    assert civ["baseModel"] == civitai and civitai in CIVITAI_BASE_MODELS
    assert civ["license"].startswith(CIVITAI_BASE_MODELS[civitai] + " ")
    card = (tmp_path / "pkg" / "README.md").read_text()
    assert f"A LoRA for **{civitai}**" in card


def test_package_refuses_a_variant_civitai_has_no_name_for(tmp_path, capsys):
    run = _run_dir(tmp_path)
    _as_family(run, "sd3", _family_meta("sd3", "custom"))
    assert main(["package", str(run), "-o", str(tmp_path / "pkg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CivitAI base model" in err[0] and not (tmp_path / "pkg").exists()
