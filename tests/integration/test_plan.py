"""The memory plan is frozen and recorded: the run folder keeps config.toml as the user asked and plan.json with
what ran; a resume re-derives the plan and refuses a different one, naming each difference."""

from __future__ import annotations

import json

from lorakit.cli import main
from lorakit.config.load import dump_toml, load_config
from tests.integration.test_train_e2e import tiny_model, write_run_toml


def test_plan_json_records_what_ran_and_resume_refuses_a_different_plan(tmp_path, capsys):
    paths = tiny_model("sdxl", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "sdxl", paths)
    assert main(["train", str(run_toml), "training.max_steps=3"]) == 0
    run = tmp_path / "out" / "tiny"
    # config.toml: the loaded config as the user asked, nothing written into it by the run
    assert (run / "config.toml").read_text() == dump_toml(load_config(run_toml, ["training.max_steps=3"]))
    plan = json.loads((run / "plan.json").read_text())
    assert plan["vram_gb"] is None and plan["estimate_gib"] is None
    assert plan["settings"]["memory.gradient_checkpointing"] is True and plan["settings"]["memory.fp8_base"] is False
    assert plan["settings"]["training.batch_size"] == 2 and plan["settings"]["training.gradient_accumulation"] == 1
    assert set(plan["chosen_by"].values()) == {"config"}  # no budget: every setting is the config's own
    # the same card and settings: a resume runs (a finished run is refused in one line: it continues to more steps)
    assert main(["train", "--resume", str(run), "training.max_steps=4"]) == 0
    # a plan that differs from the one recorded (another card, another estimate) is refused, naming the key
    plan["settings"]["memory.fp8_base"] = True
    (run / "plan.json").write_text(json.dumps(plan))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "training.max_steps=5"]) == 2
    err = capsys.readouterr().err
    assert "memory plan differs" in err and "memory.fp8_base: True then, False now" in err, err
    # --force-resume continues with the new plan and records it
    assert main(["train", "--resume", str(run), "training.max_steps=5", "--force-resume"]) == 0
    assert json.loads((run / "plan.json").read_text())["settings"]["memory.fp8_base"] is False
