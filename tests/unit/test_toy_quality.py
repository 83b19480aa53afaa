"""Issue 23's quality bar on the toy world: a toy recipe's best measured setting (``TOY.quality``) reaches the learning
benchmark through ``run_eval(quality=True)`` and ``lorakit toy eval --quality`` (the training itself is measured in
tests/integration/test_learning.py, slow, and benchmarks/RESULTS.md)."""

from __future__ import annotations

import tomllib

import pytest

from lorakit.errors import ModelLoadError
from lorakit.toy import demo
from lorakit.toy.paths import toy_families, toy_recipe


def _with_quality() -> list[str]:
    return [f for f in toy_families() if toy_recipe(f).quality]


def test_some_toy_has_a_quality_setting():
    assert {"sdxl", "sd15"} <= set(_with_quality())


@pytest.mark.parametrize("family", _with_quality())
def test_quality_overrides_reach_the_run_config(family, tmp_path):
    """Every ``section.key=value`` of TOY.quality is a schema key, and the resolved Config holds that value."""
    best = toy_recipe(family).quality
    cfg = demo.demo_config(family, tmp_path / "data", tmp_path / "out", "q", overrides=best)
    plain = demo.demo_config(family, tmp_path / "data", tmp_path / "out", "p")
    for item in best:
        key, raw = item.split("=", 1)
        section, name = key.split(".")
        want = tomllib.loads(f"v = {raw}")["v"]
        assert getattr(getattr(cfg, section), name) == pytest.approx(want), item
    # the setting changes the run (else it would be no setting): at least one key differs from the demo recipe's
    assert any(getattr(getattr(cfg, k.split("=")[0].split(".")[0]), k.split("=")[0].split(".")[1]) !=
               getattr(getattr(plain, k.split("=")[0].split(".")[0]), k.split("=")[0].split(".")[1]) for k in best)


def test_quality_without_a_measured_setting_is_refused_in_one_line(tmp_path, monkeypatch):
    family = next(f for f in toy_families() if not toy_recipe(f).quality)
    with pytest.raises(ModelLoadError, match=rf"--quality: the {family} toy has no measured setting"):
        demo.run_eval(family, tmp_path, quality=True)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_quality_overrides_go_first_and_steps_still_win(tmp_path, monkeypatch):
    """run_eval(quality=True) trains with TOY.quality, then an explicit step count, then the caller's overrides."""
    seen = {}

    def fake_demo_config(family, dataset_dir, out_dir, name, steps=None, overrides=()):
        seen["overrides"] = overrides
        raise RuntimeError("stop before training")

    monkeypatch.setattr(demo, "demo_config", fake_demo_config)
    monkeypatch.setattr(demo, "ensure_dataset", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="stop before training"):
        demo.run_eval("sdxl", tmp_path, steps=123, overrides=("log.progress=false",), quality=True)
    best = tuple(toy_recipe("sdxl").quality)
    assert seen["overrides"] == ("sample.prompts=[]",) + best + ("training.max_steps=123", "log.progress=false")


def test_cli_toy_eval_quality_flag(tmp_path, monkeypatch):
    from lorakit.cli import main

    calls = []
    monkeypatch.setattr(demo, "run_eval", lambda family, out, **kw: calls.append((family, kw)) or {"ok": 1})
    assert main(["toy", "eval", "--family", "sdxl", "--quality", "--out", str(tmp_path)]) == 0
    assert main(["toy", "eval", "--family", "sdxl", "--out", str(tmp_path)]) == 0
    assert [kw["quality"] for _, kw in calls] == [True, False]
