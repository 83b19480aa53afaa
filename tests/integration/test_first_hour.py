"""A failed start costs nothing, and an interrupted run says where a resume continues (issue: the first hour)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from lorakit.cli import main
from tests.integration.test_train_e2e import tiny_model, write_run_toml


def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_command(tmp_path, capsys):
    paths = tiny_model("sdxl", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "sdxl", paths)
    run = tmp_path / "out" / "tiny"
    # a wrong data.dir, a missing checkpoint: each fails before the first step and leaves no run folder
    for wrong in (f"data.dir={tmp_path / 'nope'}", f"model.checkpoint={tmp_path / 'missing.safetensors'}"):
        assert main(["train", str(run_toml), wrong, "training.max_steps=2"]) == 2, wrong
        assert not run.exists(), (wrong, sorted(p.name for p in run.iterdir()) if run.exists() else None)
    # the corrected command then just runs (no "already holds a run ... --resume")
    assert main(["train", str(run_toml), "training.max_steps=2", "sample.prompts=[]"]) == 0
    assert (run / "tiny.safetensors").is_file()
    # a folder that holds a run is never removed by a failed start
    capsys.readouterr()
    assert main(["train", str(run_toml), "training.max_steps=2"]) == 2
    assert "already holds a run" in capsys.readouterr().err and (run / "tiny.safetensors").is_file()


def test_sigterm_names_the_last_checkpoint_and_marks_the_run_interrupted(tmp_path):
    paths = tiny_model("sdxl", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "sdxl", paths)
    run = tmp_path / "out" / "tiny"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "train", str(run_toml), "training.max_steps=100000",
                             "save.every_n_steps=2", "sample.prompts=[]", "log.progress=false"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "state" / "step00000002" / "COMPLETE").exists():
        time.sleep(0.5)
    assert (run / "state" / "step00000002" / "COMPLETE").exists(), proc.stderr.read() if proc.poll() else "no state"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "interrupted"
    last = max(int(p.name.removeprefix("step")) for p in (run / "state").iterdir() if (p / "COMPLETE").exists())
    assert f"the last complete checkpoint is step {last}; `lorakit train --resume {run}`" in err, err[-2000:]
