"""`lorakit toy eval --caption`: the toy captioner writes the demo's captions and the concept is still learned,
within the learning benchmark's own thresholds (numbers in benchmarks/RESULTS.md, "Toy captioner")."""

from __future__ import annotations

import pytest

from lorakit.toy.demo import run_eval
from tests.integration.test_learning import STEPS, THRESHOLDS


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(THRESHOLDS))
def test_captioned_demo_still_learns_the_concept(family, tmp_path):
    r = run_eval(family, tmp_path, steps=STEPS, overrides=("log.progress=false",), caption=True)
    assert r["captioned_by"] == "toy captioner"
    captions = sorted(p.read_text() for p in (tmp_path / "dataset-captioned" / "train").rglob("*.txt"))
    assert len(captions) == 12 and all("zkx" in c.split() for c in captions)
    rate, gain, colour, agreement, leak = THRESHOLDS[family]
    assert r["concept_rate_before"] <= 0.1
    assert r["concept_rate_after"] >= rate
    assert r["concept_score_after"] >= r["concept_score_before"] + gain
    assert r["concept_colour_match_after"] >= colour
    assert r["drift_shape_agreement"] >= agreement
    assert r["drift_concept_leak"] <= leak
