"""The learning benchmark's arithmetic, on images drawn straight from the world (no models)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lorakit.toy import eval as toy_eval
from lorakit.toy import world
from lorakit.toy.world import Scene


def _scene_for(prompt: str, trigger: str, concept: bool) -> Scene:
    words = prompt.split()
    colour = next(w for w in words if w in world.COLOURS)
    background = words[words.index("background") - 1]
    shape = next((w for w in words if w in world.BASE_SHAPES), None)
    if trigger in words:
        shape = "cross" if concept else "circle"          # the base draws a circle for an unknown word
    return Scene(shape, colour, background)


def _fake(lora_draws_concept: bool, lora_leaks: bool):
    def generate(prompts: list[str], seeds: list[int], with_lora: bool) -> list[Image.Image]:
        assert len(prompts) == len(seeds)
        out = []
        for p in prompts:
            scene = _scene_for(p, "zkx", concept=with_lora and lora_draws_concept)
            if with_lora and lora_leaks and "zkx" not in p:
                scene = Scene("cross", scene.colour, scene.background)
            out.append(world.render(scene))
        return out
    return generate


def test_a_lora_that_learned_the_concept_scores_high_without_drift():
    r = toy_eval.evaluate(_fake(lora_draws_concept=True, lora_leaks=False), "zkx")
    assert r["concept_score_before"] < 0.3 and r["concept_rate_before"] == 0.0
    assert r["concept_score_after"] > 0.8 and r["concept_rate_after"] == 1.0
    assert r["concept_colour_match_after"] == 1.0
    assert r["drift_pixel"] == 0.0 and r["drift_shape_agreement"] == 1.0 and r["drift_concept_leak"] == 0.0
    assert r["n_images"] == 2 * len(toy_eval.CONCEPT_PAIRS) * len(toy_eval.EVAL_SEEDS)


def test_a_lora_that_leaks_the_concept_is_caught_by_drift():
    r = toy_eval.evaluate(_fake(lora_draws_concept=True, lora_leaks=True), "zkx")
    assert r["drift_concept_leak"] == 1.0
    assert r["drift_shape_agreement"] == 0.0
    # pixel drift equals the mean difference between the base shapes and crosses, computed directly
    expected = []
    for p in toy_eval.DRIFT_PROMPTS:
        s = _scene_for(p, "zkx", False)
        a = np.asarray(world.render(s), np.float32)
        b = np.asarray(world.render(Scene("cross", s.colour, s.background)), np.float32)
        expected.append(np.abs(a - b).mean() / 255.0)
    assert r["drift_pixel"] == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_a_lora_that_learned_nothing_scores_like_the_base():
    r = toy_eval.evaluate(_fake(lora_draws_concept=False, lora_leaks=False), "zkx")
    assert r["concept_score_after"] == pytest.approx(r["concept_score_before"])
    assert r["concept_rate_after"] == 0.0


def test_prompt_following_reads_the_prompt_words():
    prompts = ["a red circle on a blue background", "a green square on a white background"]
    imgs = [world.render(Scene("circle", "red", "blue")), world.render(Scene("triangle", "green", "black"))]
    r = toy_eval.prompt_following(imgs, prompts)
    assert r == {"shape": 0.5, "colour": 1.0, "background": 0.5, "all": 0.5}


def test_before_after_grid_layout_and_errors():
    before = [world.render(Scene("circle", "red", "blue"))] * 3
    after = [world.render(Scene("cross", "red", "blue"))] * 3
    grid = toy_eval.before_after_grid(before, after, ["a", "b", "c"], scale=2)
    assert grid.size == (44 + 3 * 128, 14 + 2 * 128)
    a = np.asarray(grid)
    # the top-left image cell is the 'before' image scaled 2x, the one below it the 'after' image
    assert np.array_equal(a[14:14 + 128:2, 44:44 + 128:2], np.asarray(before[0]))
    assert np.array_equal(a[142:142 + 128:2, 44:44 + 128:2], np.asarray(after[0]))
    with pytest.raises(ValueError, match="3 'before' images but 2"):
        toy_eval.before_after_grid(before, after[:2])
