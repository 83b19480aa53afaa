"""Issue 23's quality bar on the toy world: a toy recipe's best measured setting (``TOY.quality``) reaches the learning
benchmark through ``run_eval(quality=True)`` and ``lorakit toy eval --quality`` (the training itself is measured in
tests/integration/test_learning.py, slow, and benchmarks/RESULTS.md)."""

from __future__ import annotations

import tomllib

import pytest

from lorakit.errors import DataError, ModelLoadError
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


def _stop_at_config(monkeypatch) -> dict:
    """run_eval stops where it would build the run's config; returns what it was given (dataset folder, overrides)."""
    seen = {}

    def fake_demo_config(family, dataset_dir, out_dir, name, steps=None, overrides=()):
        seen.update(dir=dataset_dir, overrides=overrides)
        raise RuntimeError("stop before training")

    monkeypatch.setattr(demo, "demo_config", fake_demo_config)
    return seen


def test_quality_overrides_go_first_and_steps_still_win(tmp_path, monkeypatch):
    """run_eval(quality=True) trains with TOY.quality, then an explicit step count, then the caller's overrides."""
    seen = _stop_at_config(monkeypatch)
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


# ------------------------------------------------------------- the opt-in all-pairs concept set (issue 23, sixth session)

def test_all_pairs_concept_set_draws_every_colour_pair_as_a_large_cross(tmp_path):
    """30 images, one per ordered (colour, background) pair of the six colours, every cross large; the detector
    (an independent reading of the pixels) sees a cross in the captioned colours on every one."""
    from PIL import Image

    from lorakit.toy import detector, world

    folder = world.write_all_pairs_dataset(tmp_path)
    pngs = sorted(folder.glob("*.png"))
    assert folder.name == f"{world.DEMO_REPEATS}_{world.DEFAULT_TRIGGER} {world.DEMO_CLASS}" and len(pngs) == 30
    seen = set()
    for png in pngs:
        words = png.with_suffix(".txt").read_text().split()  # "a RED zkx on a BLUE background"
        assert words[2] == world.DEFAULT_TRIGGER and "small" not in words, words
        colour, background = words[1], words[5]
        r = detector.read(Image.open(png))
        assert (r.shape, r.colour, r.background) == ("cross", colour, background), png.name
        seen.add((colour, background))
    assert seen == {(c, b) for c in world.COLOURS for b in world.COLOURS if c != b}
    with pytest.raises(DataError, match="already exists and is not empty"):
        world.write_all_pairs_dataset(tmp_path)  # nothing written over


def test_run_eval_all_pairs_trains_on_that_set_and_the_demo_set_is_unchanged(tmp_path, monkeypatch):
    seen = _stop_at_config(monkeypatch)
    for all_pairs, n in ((True, 30), (False, 12)):
        with pytest.raises(RuntimeError, match="stop before training"):
            demo.run_eval("sdxl", tmp_path, all_pairs=all_pairs)
        assert len(list((seen["dir"] / "train").rglob("*.png"))) == n
        assert len(list((seen["dir"] / "reg").rglob("*.png"))) == 24
    assert (tmp_path / "dataset-all-pairs").is_dir() and (tmp_path / "dataset").is_dir()
