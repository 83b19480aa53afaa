"""Honest refusals (issue 26): a rank larger than the narrowest targeted layer is refused with that reason, and the
disk estimate comes from the LoRA's actual parameter count, not a fixed FLUX-sized guess."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest
from torch import nn

from lorakit.errors import ConfigError, TrainingError
import shutil

from lorakit.train import health
from lorakit.train.placement import check_rank_fits


def test_a_rank_wider_than_the_narrowest_targeted_layer_is_refused_naming_it():
    m = nn.Sequential(nn.Linear(64, 320), nn.Linear(320, 32), nn.Conv2d(8, 16, 1))
    check_rank_fits(m, {"0": 32, "1": 32})                       # 32 fits both (min widths 64 and 32)
    with pytest.raises(ConfigError) as e:
        check_rank_fits(m, {"0": 48, "1": 48})
    assert str(e.value) == ("network.rank: 48 is larger than the narrowest targeted layer (1, 32 wide; 1 layers are "
                            "narrower than the rank); choose at most 32")
    with pytest.raises(ConfigError, match=r"^network.conv_rank: 12 .*\(2, 8 wide.*choose at most 8$"):
        check_rank_fits(m, {"2": 12})


def _check(monkeypatch, free: int, lora_params: int) -> None:
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(free, 0, free))
    cfg = SimpleNamespace(data=SimpleNamespace(resolution=64, flip_aug=False, cache_next_to_images=False, cache_dir=None),
                          save=SimpleNamespace(keep_last=3, dir="."),
                          sample=SimpleNamespace(prompts=[], prompts_file=None))
    spec = SimpleNamespace(latent_channels=4, vae_downscale=8)
    run = SimpleNamespace(root=__import__("pathlib").Path("."))
    health.check_disk(cfg, run, SimpleNamespace(items=[0] * 10, subsets=[]), spec, lora_params=lora_params)


def test_the_disk_estimate_follows_the_actual_lora(monkeypatch):
    # a rank-128 SDXL-sized LoRA (~ 186 M parameters at rank 128 on SDXL's attention) needs ~ 10 GiB for 4 checkpoints:
    # 20 GB free is enough (the old fixed estimate asked for ~ 35 GB at any model size)
    params = 186_000_000
    _check(monkeypatch, 20 * 10**9, params)
    need = params * 14 * 4                                      # 16-bit file + fp32 weights + 2 moments, keep_last + 1
    with pytest.raises(TrainingError, match=r"about (\d+\.\d+) GiB needed") as e:
        _check(monkeypatch, need // 2, params)
    assert float(str(e.value).split("about ")[1].split(" GiB")[0]) == pytest.approx(need / 2**30, rel=0.01)
    _check(monkeypatch, 10**8, 0)                               # before injection: caches and samples only
