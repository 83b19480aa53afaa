"""The seventh session's walk (the web UI, captioning, the ComfyUI nodes, `lorakit plan`, a resumed run, publishing):
each test is a user's step that printed something wrong or confusing, or lost what the user had."""

from __future__ import annotations

import json
import tomllib

import pytest

from lorakit.cli import main
from tests.integration.test_bad_inputs_walk import _error, run_toml  # noqa: F401 (a fixture)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_a_resume_with_more_steps_records_them_in_config_toml_and_keeps_the_old_one(run_toml, tmp_path, capsys):
    """`lorakit train --resume DIR training.max_steps=4`: config.toml said 2 after the run went on to 4 (publish,
    sweep reports and the next resume read it); and the metrics' lr column showed each step the next step's lr, so
    the last two rows repeated one value."""
    run = tmp_path / "out" / "ohwx"
    common = ["optimizer.scheduler=linear", "optimizer.warmup_steps=0", "optimizer.lr=1e-3", "log.every_n_steps=1",
              "log.tensorboard=false", "training.device=cpu", "training.mixed_precision=no"]
    assert main(["train", str(run_toml), *common]) == 0
    first = (run / "config.toml").read_text()
    assert tomllib.loads(first)["training"]["max_steps"] == 2
    # linear decay over 2 steps from 1e-3: step 1 trains at 1e-3, step 2 at 5e-4
    assert [(r["step"], r["lr"]) for r in _rows(run)] == [(1, pytest.approx(1e-3)), (2, pytest.approx(5e-4))]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "training.max_steps=4"]) == 0
    out = capsys.readouterr().out
    assert tomllib.loads((run / "config.toml").read_text())["training"]["max_steps"] == 4
    kept = run / "config.until-step00000002.toml"
    assert kept.read_text() == first  # what the run trained with until step 2, byte for byte
    assert (f"{run / 'config.toml'} now holds this resume's settings (training.max_steps 2 → 4); the config it "
            f"replaced is kept as {kept.name}") in out
    assert json.loads((run / "run.json").read_text())["step"] == 4
    # steps 3 and 4 on the schedule of 4 steps: 1e-3 × (1 − 2/4), 1e-3 × (1 − 3/4)
    assert [r["lr"] for r in _rows(run)] == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4])
    # the finished run is refused with the step count config.toml now holds, and nothing changes
    assert main(["train", "--resume", str(run)]) == 2
    assert _error(capsys).startswith(f"lorakit: error: --resume: {run} finished at step 4 (training.max_steps = 4); "
                                     "nothing was changed")
    assert kept.read_text() == first and set(run.glob("config*.toml")) == {kept, run / "config.toml"}
