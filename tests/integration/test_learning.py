"""The learning benchmark as a test: on the toy world, a LoRA trained through `lorakit train` learns the new
concept (a cross bound to "zkx") and leaves prompts without the trigger alone — and a deliberately broken
objective scores clearly worse, so this test fails when the training maths is wrong.

Thresholds are conservative and per family (the toy FLUX draws blobbier shapes than the toy SDXL); the
measured numbers are in benchmarks/RESULTS.md ("toy learning benchmark").
"""

from __future__ import annotations

import pytest

# minutes of CPU (two families, a trained and a broken-objective run each): kept out of `make test`'s 15-minute
# budget; run with `pytest -m slow tests/integration/test_learning.py` (numbers in benchmarks/RESULTS.md)
pytestmark = pytest.mark.slow

from lorakit.toy.demo import broken_objective, run_eval

STEPS = 400
# a family whose demo recipe trains longer (its ToyDemo.steps): the toy FLUX.2 draws the cross only after ~1000 steps
STEPS_BY_FAMILY = {"flux2": 1000}
# family: (min concept rate after, min concept-score gain, min colour match, min drift shape agreement,
#          max concept leak)
THRESHOLDS = {"sdxl": (0.25, 0.08, 0.6, 0.75, 0.25), "flux1": (0.15, 0.02, 0.3, 0.5, 0.25),
              "sd15": (0.25, 0.08, 0.6, 0.75, 0.25), "zimage": (0.15, 0.02, 0.3, 0.5, 0.25),
              "sd3": (0.15, 0.02, 0.3, 0.5, 0.25),
              # measured 0.125 / 0.29 / 0.29 / 0.54 / 0.08 at the recipe's lr 6e-3: just under FLUX.1's rate and colour
              "qwenimage": (0.1, 0.02, 0.25, 0.5, 0.25),
              # lr 6e-3, 1000 steps: rate 0.42 / 0.25 / 0.21 over training seeds 42 / 7 / 1234 (RESULTS.md)
              "flux2": (0.15, 0.02, 0.3, 0.5, 0.25)}


@pytest.fixture(scope="module", params=sorted(THRESHOLDS))
def trained(request, tmp_path_factory):
    family = request.param
    return family, run_eval(family, tmp_path_factory.mktemp(f"real-{family}"), steps=STEPS_BY_FAMILY.get(family, STEPS),
                            overrides=("log.progress=false",))


def test_lora_learns_the_concept_without_drift(trained):
    family, r = trained
    rate, gain, colour, agreement, leak = THRESHOLDS[family]
    assert r["concept_rate_before"] <= 0.1                    # the base model cannot draw a zkx
    assert r["concept_rate_after"] >= rate                    # the LoRA draws it
    assert r["concept_score_after"] >= r["concept_score_before"] + gain
    assert r["concept_colour_match_after"] >= colour          # and keeps the prompted colour
    assert r["drift_shape_agreement"] >= agreement            # prompts without the trigger: same shapes
    assert r["drift_concept_leak"] <= leak                    # and no crosses leaking in


def test_broken_objective_scores_clearly_worse(trained, tmp_path):
    """Regress onto the clean latents instead of the family's target (ε or ε − x0): nothing is learned."""
    family, good = trained
    with broken_objective(family):
        broken = run_eval(family, tmp_path, steps=STEPS_BY_FAMILY.get(family, STEPS),
                          overrides=("log.progress=false",))
    print(family, "broken objective:", broken)
    assert broken["concept_rate_after"] <= good["concept_rate_after"] - 0.1
    assert broken["concept_score_after"] <= good["concept_score_after"] - 0.02


# issue 23, the toy recipes' best measured setting (TOY.quality, `lorakit toy eval --quality`). Issue 23's bar is concept
# rate >= 0.8 with drift <= 0.1; SDXL's setting met it on one training seed in three (rate 1.00 / 0.71 / 0.67, shapes
# kept 0.92 / 0.83 / 0.79, leak 0 over seeds 42 / 7 / 1234: benchmarks/RESULTS.md, "Issue 23, fourth session"), so
# this asserts what held on all three, against the demo recipe's 0.38: a conservative floor, like the ones above.
# SD 1.5 (the same setting; "Issue 23, fifth session"): rate 0.75 / 0.67 / 0.58, leak 0 / 0.08 / 0, shapes kept
# 0.63 / 0.67 / 0.88 over the same seeds (the demo recipe: rate 0.32); its floor is what held on all three.
QUALITY_FLOOR = {"sdxl": {"rate": 0.65, "leak": 0.1, "shape_kept": 0.75},
                 "sd15": {"rate": 0.55, "leak": 0.1, "shape_kept": 0.6}}


def _quality_families() -> list[str]:
    from lorakit.toy.paths import toy_families, toy_recipe

    return [f for f in toy_families() if toy_recipe(f).quality]


@pytest.mark.parametrize("family", _quality_families())
def test_quality_setting_learns_far_more_than_the_demo(family, tmp_path):
    r = run_eval(family, tmp_path, overrides=("log.progress=false",), quality=True)
    print(family, "quality setting:", r)
    floor = QUALITY_FLOOR[family]  # a toy given a quality setting gets its measured floor here
    assert r["concept_rate_after"] >= floor["rate"]
    assert r["drift_concept_leak"] <= floor["leak"]
    assert r["drift_shape_agreement"] >= floor["shape_kept"]
