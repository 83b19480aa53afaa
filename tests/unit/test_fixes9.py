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
