"""The learning benchmark as a test: on the toy world, a LoRA trained through `lorakit train` learns the new
concept (a cross bound to "zkx") and leaves prompts without the trigger alone — and a deliberately broken
objective scores clearly worse, so this test fails when the training maths is wrong.

Thresholds are conservative; the measured numbers are in benchmarks/RESULTS.md ("toy learning benchmark").
"""

from __future__ import annotations

import pytest

from lorakit.models.registry import get_family
from lorakit.toy.demo import run_eval

STEPS = 400


@pytest.fixture(scope="module")
def sdxl_real(tmp_path_factory):
    return run_eval("sdxl", tmp_path_factory.mktemp("real"), steps=STEPS, overrides=("log.progress=false",))


def test_sdxl_lora_learns_the_concept_without_drift(sdxl_real):
    r = sdxl_real
    assert r["concept_rate_before"] <= 0.1                    # the base model cannot draw a zkx
    assert r["concept_rate_after"] >= 0.25                    # the LoRA draws it
    assert r["concept_score_after"] >= r["concept_score_before"] + 0.08
    assert r["concept_colour_match_after"] >= 0.6             # and keeps the prompted colour
    assert r["drift_shape_agreement"] >= 0.75                 # prompts without the trigger: same shapes
    assert r["drift_concept_leak"] <= 0.25                    # and no crosses leaking in


def test_broken_objective_scores_clearly_worse(sdxl_real, tmp_path, monkeypatch):
    """Regress onto the clean latents instead of the noise (a wrong target): the concept is not learned."""
    adapter_cls = get_family("sdxl").Adapter
    real_noise = adapter_cls.noise

    def wrong_target(self, latents, noise, batch, training, generator):
        noised = real_noise(self, latents, noise, batch, training, generator)
        noised.target = latents
        return noised

    monkeypatch.setattr(adapter_cls, "noise", wrong_target)
    broken = run_eval("sdxl", tmp_path, steps=STEPS, overrides=("log.progress=false",))
    good = sdxl_real
    assert broken["concept_rate_after"] <= good["concept_rate_after"] - 0.2
    assert broken["concept_score_after"] <= good["concept_score_after"] - 0.05
