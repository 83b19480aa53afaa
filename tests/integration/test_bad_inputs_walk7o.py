"""The seventh session's second walk (walk7o): training options a kohya / ai-toolkit user combines. Each test is an
option that did nothing without saying so, or a combination that misbehaved; config- and unit-level checks."""

from __future__ import annotations

import random

import pytest

from lorakit.config.kohya_import import import_kohya_args
from lorakit.config.load import load_config
from lorakit.data.captions import CaptionPipeline, CaptionSettings
from lorakit.errors import ConfigError
from tests.integration.test_bad_inputs_walk import run_toml  # noqa: F401 (fixture)


def test_keep_tokens_without_shuffle_or_tag_dropout_is_refused_not_ignored(run_toml):
    """`data.keep_tokens = 2` alone trained exactly as without it (only shuffling and tag dropout move tags); it is
    refused naming what it needs, and taken where it acts."""
    # the pipeline leaves a caption as written unless it shuffles or drops tags: keep_tokens changes nothing there
    plain = "ohwx, a, b, c, d, e"
    for keep in (0, 2):
        assert CaptionPipeline(CaptionSettings(keep_tokens=keep)).make(plain, random.Random(0)) == plain
    with pytest.raises(ConfigError) as e:
        load_config(run_toml, ["data.keep_tokens=2"])
    assert str(e.value) == ("data.keep_tokens: only has an effect with data.shuffle_caption = true or "
                            "data.caption_tag_dropout_rate > 0; remove it or set that too")
    # caption dropout drops the whole caption: keep_tokens does nothing there either
    with pytest.raises(ConfigError, match="^data.keep_tokens: only has an effect"):
        load_config(run_toml, ["data.keep_tokens=2", "data.caption_dropout_rate=0.1"])
    assert load_config(run_toml, ["data.keep_tokens=2", "data.shuffle_caption=true"]).data.keep_tokens == 2
    assert load_config(run_toml, ["data.keep_tokens=2", "data.caption_tag_dropout_rate=0.2"]).data.keep_tokens == 2
    # `lorakit import kohya` does not carry an inert keep_tokens over (it would make the imported config refused)
    out, skipped = import_kohya_args({"keep_tokens": 1, "network_dim": 4}, "sdxl")
    assert "keep_tokens" not in out["data"] and "keep_tokens" in skipped
    out, skipped = import_kohya_args({"keep_tokens": 1, "shuffle_caption": True}, "sdxl")
    assert out["data"]["keep_tokens"] == 1 and "keep_tokens" not in skipped
