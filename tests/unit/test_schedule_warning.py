"""One honest line at the start when the warmup is not shorter than the run (issue 26)."""

from __future__ import annotations

import pytest

from lorakit.train.optim import lr_multiplier, schedule_warning


@pytest.mark.parametrize("name", ["constant", "cosine"])
def test_a_warmup_longer_than_the_run_is_named_with_the_lr_it_reaches(name):
    line = schedule_warning(name, 400, 100)
    peak = max(lr_multiplier(name, 400, 100, 0.1)(s) for s in range(100))   # what the run actually reaches
    assert line is not None and "\n" not in line
    assert line.startswith("warning: optimizer.warmup_steps (400) is not shorter than training.max_steps (100)")
    assert f"reaches only {peak:.0%} of optimizer.lr" in line
    assert ("decay never starts" in line) == (name != "constant")


def test_a_fitting_schedule_says_nothing():
    assert schedule_warning("cosine", 10, 100) is None and schedule_warning("constant", 0, 1) is None
    assert schedule_warning("linear", 100, 100) is not None   # equal: the whole run is warmup
