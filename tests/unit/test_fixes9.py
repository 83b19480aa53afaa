"""Ninth session's fixes: config checks (scheduler names, kohya import), sample sizes, prompt files, captioning."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.config.kohya_import import import_kohya_files
from lorakit.config.load import load_config
from lorakit.errors import ConfigError

BASE = {"model": {"family": "sdxl", "checkpoint": "/models/sdxl.safetensors"}, "data": {"dir": "/data/ohwx"}}


def _load(**sections):
    data = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_config(data=data)


def _refused(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        _load(**sections)
    return str(info.value)


def _kohya(tmp_path: Path, body: str):
    path = tmp_path / "kohya.toml"
    path.write_text('pretrained_model_name_or_path = "/m/sd_xl_base_1.0.safetensors"\n'
                    'network_module = "networks.lora"\ntrain_data_dir = "/data/img"\n' + body)
    return import_kohya_files(path)


# ------------------------------------------------------------------------------------------- scheduler names

def test_cosine_with_restarts_is_not_suggested_as_cosine_with_min_lr():
    msg = _refused(optimizer={"scheduler": "cosine_with_restarts"})
    assert "did you mean" not in msg and "cosine_with_min_lr?" not in msg
    assert "no restarts" in msg and "lr_scheduler_num_cycles has no lorakit key" in msg
    assert 'use "cosine" (one cosine decay' in msg
    assert 'use "constant"' in _refused(optimizer={"scheduler": "constant_with_warmup"})
    assert 'use "linear"' in _refused(optimizer={"scheduler": "polynomial"})
    assert "did you mean cosine?" in _refused(optimizer={"scheduler": "cosin"})   # a typo still gets difflib's hint


def test_kohya_cosine_with_restarts_of_one_cycle_imports_as_cosine(tmp_path):
    text, mapped, dropped, notes = _kohya(tmp_path, 'lr_scheduler = "cosine_with_restarts"\n'
                                          "network_train_unet_only = true\n")
    assert 'scheduler = "cosine"' in text and not any("refuses" in n for n in notes)
    assert any("cosine_with_restarts with 1 cycle" in n for n in notes)
    text, mapped, dropped, _ = _kohya(tmp_path, 'lr_scheduler = "cosine_with_restarts"\nlr_scheduler_num_cycles = 1\n'
                                      "network_train_unet_only = true\n")
    assert 'scheduler = "cosine"' in text and "lr_scheduler_num_cycles" not in dict(dropped)
    text, mapped, dropped, notes = _kohya(tmp_path, 'lr_scheduler = "cosine_with_restarts"\n'
                                          "lr_scheduler_num_cycles = 3\nnetwork_train_unet_only = true\n")
    assert "no restarts" in dict(dropped)["lr_scheduler_num_cycles"]
    assert any("refuses" in n and "optimizer.scheduler" in n and "no restarts" in n for n in notes)


# ------------------------------------------------------------------------ kohya import: sd-scripts' TE default

def test_kohya_without_unet_only_trains_the_text_encoder_as_sd_scripts(tmp_path):
    """sd-scripts' train_network.py: is_train_text_encoder = not network_train_unet_only (store_true, default off)."""
    text, _, _, notes = _kohya(tmp_path, "learning_rate = 1e-4\n")
    cfg = load_config(data=__import__("tomllib").loads(text))
    assert cfg.network.train_text_encoder is True and cfg.network.text_encoder_lr is None  # at optimizer.lr, 1e-4
    assert any(n.startswith("network_train_unet_only is not set, so sd-scripts trains a LoRA on the text encoder too")
               and "at lr 0.0001" in n for n in notes)
    # unet_lr alone: sd-scripts trains the text encoder at its default learning_rate, 2e-6
    text, _, _, notes = _kohya(tmp_path, "unet_lr = 1e-4\n")
    cfg = load_config(data=__import__("tomllib").loads(text))
    assert cfg.optimizer.lr == 1e-4 and cfg.network.text_encoder_lr == 2e-6
    assert any("sd-scripts' default learning_rate" in n for n in notes)
    # both: learning_rate reaches the text encoder
    text, _, _, _ = _kohya(tmp_path, "unet_lr = 1e-4\nlearning_rate = 5e-5\n")
    cfg = load_config(data=__import__("tomllib").loads(text))
    assert (cfg.optimizer.lr, cfg.network.text_encoder_lr) == (1e-4, 5e-5)
    # set: as written
    text, _, _, notes = _kohya(tmp_path, "network_train_unet_only = true\n")
    assert "train_text_encoder = false" in text and not any("network_train_unet_only" in n for n in notes)


def test_kohya_without_unet_only_text_encoder_lr_zero_and_te_cache(tmp_path):
    text, _, dropped, notes = _kohya(tmp_path, "text_encoder_lr = 0\n")
    assert "train_text_encoder = false" in text and dict(dropped)["text_encoder_lr"].startswith("0: sd-scripts trains no")
    assert not any("refuses" in n for n in notes)
    text, _, dropped, notes = _kohya(tmp_path, "cache_text_encoder_outputs = true\n")
    assert "train_text_encoder = true" in text and "cache_text_encoder_outputs" not in text
    assert "keeps the text encoders loaded" in dict(dropped)["cache_text_encoder_outputs"]
    assert not any("refuses" in n for n in notes)


def test_kohya_without_unet_only_for_a_family_without_text_encoder_lora_says_so(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text('pretrained_model_name_or_path = "/m/z.safetensors"\nnetwork_module = "networks.lora_zimage"\n'
                    'train_data_dir = "/d"\n')
    text, _, _, notes = import_kohya_files(path)
    assert "train_text_encoder" not in text and not any("refuses" in n for n in notes)
    assert any("offers no text-encoder LoRA for zimage: the denoiser alone is trained" in n for n in notes)


def test_spec_text_encoder_lora_matches_what_each_family_refuses():
    """ModelSpec.text_encoder_lora (read by the import) says what the family's own check says."""
    import torch

    from lorakit.models.registry import families, get_family

    for name in families():
        family = get_family(name)
        cfg = load_config(data={"model": {"family": name, "checkpoint": "/m/x.safetensors"}, "data": {"dir": "/d"},
                                "network": {"train_text_encoder": True}})
        try:
            family.Adapter.check_config(cfg, torch.device("cpu"))
            refused = ""
        except ConfigError as e:
            refused = str(e)
        assert family.SPEC.text_encoder_lora == (not refused.startswith("network.train_text_encoder")), (name, refused)


# ------------------------------------------------------------------------------------------ sample sizes

def test_sample_size_not_a_multiple_of_the_family_s_is_refused_once_for_every_family():
    from lorakit.models.registry import get_family

    assert (get_family("sdxl").SPEC.sample_multiple, get_family("sd15").SPEC.sample_multiple,
            get_family("flux1").SPEC.sample_multiple) == (32, 64, 16)
    assert _refused(sample={"width": 1000}) == ("sample.width: must be a multiple of 32 for sdxl (the sampler's "
                                                "latent grid), got 1000; use 992")
    msg = _refused(model={"family": "flux1"}, sample={"height": 1010})
    assert msg.startswith("sample.height: must be a multiple of 16 for flux1") and msg.endswith("use 1008")
    assert _load(model={"family": "flux1"}, sample={"height": 1008}).sample.height == 1008
    # a prompt's --w / --h: the same rule, naming the line
    from lorakit.models.base import SamplePrompt
    from lorakit.train.sampling import parse_prompt

    with pytest.raises(ConfigError) as info:
        parse_prompt("a cat --w 1000", SamplePrompt(prompt=""), "p.txt:3", multiple=32)
    assert str(info.value) == ("p.txt:3: --w in 'a cat --w 1000' must be a multiple of 32 between 32 and 16384 (the "
                               "sampler's latent grid), got 1000; use 992")
    assert parse_prompt("a cat --w 992 --h 1024", SamplePrompt(prompt=""), multiple=32).width == 992


def test_previews_round_a_default_size_from_the_resolution_with_a_note(tmp_path):
    from types import SimpleNamespace

    from lorakit.models.registry import get_family
    from lorakit.train.previews import Previews

    cfg = _load(data={"resolution": 1000}, sample={"prompts": ["a cat", "a dog --w 512"]})
    logged: list[str] = []
    pv = Previews(cfg, get_family("sdxl").SPEC, None, SimpleNamespace(), None, None, None, logged.append)
    assert [(p.width, p.height) for p in pv.prompts] == [(992, 992), (512, 992)]
    assert logged == ["note: previews are drawn at 992x992: the training resolution 1000x1000 is not a multiple of "
                      "32, which the sampler needs (set sample.width / sample.height to choose)"]
    logged.clear()
    Previews(_load(data={"resolution": 1024}), get_family("sdxl").SPEC, None, SimpleNamespace(), None, None, None,
             logged.append)
    assert logged == []
