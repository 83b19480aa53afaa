"""What the UI reads from a run folder (progress, samples, files, health) and its plan's weight count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lorakit.train.rundir import RunDir
from lorakit.train.sampling import sample_filename
from lorakit.ui import runs


def _run(tmp_path: Path) -> Path:
    run = RunDir(tmp_path / "my_run", "my_run")
    run.create()
    rows = [{"step": s, "loss": 0.1 * s, "lr": 1e-3, "seconds": 9.0 if s == 1 else 0.5 + 0.1 * (s % 2),
             "peak_mem_gib": 1.0 + s / 100} for s in range(1, 11)]
    rows.insert(3, {"step": 3, "skipped_step": True, "skipped_total": 1})
    rows.append({"step": 10, "sample_problem": "black", "sample": "x.png"})
    with open(run.root / "metrics.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
        fh.write('{"step": 11, "loss"')  # a torn last line from a kill
    run.write_status(status="running", step=10, max_steps=50)
    for step, tag in ((0, "before"), (10, ""), (50, "after")):
        for i in range(2):
            Image.new("RGB", (8, 8)).save(run.samples / sample_filename("my_run", step, i, 40 + i, tag))
    for p in (run.lora_path(5), run.lora_path(10), run.lora_path()):
        p.write_bytes(b"x")
    return run.root


def test_progress_samples_files_health(tmp_path):
    root = _run(tmp_path)
    rows = runs.metrics(root)
    prog = runs.progress(root, rows)
    times = sorted([0.5 + 0.1 * (s % 2) for s in range(2, 11)])  # first step of the attempt left out
    assert prog["step"] == 10 and prog["max_steps"] == 50
    assert prog["s_per_step"] == pytest.approx(times[len(times) // 2])
    assert prog["eta_s"] == pytest.approx(40 * prog["s_per_step"])
    assert prog["peak_mem_gib"] == pytest.approx(1.10) and prog["loss"] == pytest.approx(1.0)
    labels = [(s.label, s.index, s.seed) for s in runs.samples(root)]
    assert labels == [("before", 0, 40), ("before", 1, 41), ("step 10", 0, 40), ("step 10", 1, 41),
                      ("after", 0, 40), ("after", 1, 41)]
    assert [p.name for p in runs.lora_files(root)] == ["my_run.safetensors", "my_run-step00000010.safetensors",
                                                        "my_run-step00000005.safetensors"]
    warnings = runs.health(root, rows, "x\nwarning: export check: 2 keys fit nothing\n")
    assert warnings[0].startswith("1 step(s) skipped") and "looks black" in warnings[1]
    assert warnings[2] == "export check: 2 keys fit nothing"


def test_plan_counts_the_toy_weights():
    from safetensors import safe_open

    from lorakit.config.load import load_config
    from lorakit.toy.paths import toy_paths
    from lorakit.ui.plan import base_elements, estimate

    ckpt = str(toy_paths("sdxl")["checkpoint"])
    with safe_open(ckpt, "pt") as f:
        expected = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert base_elements([ckpt]) == expected
    cfg = load_config(None, ["model.family=sdxl", f"model.checkpoint={ckpt}", "data.dir=/d", "data.resolution=512",
                             "training.batch_size=2"])
    text = estimate(cfg, "8 GB GPU")
    weights = expected * 2 / 2**30
    act = 0.9 * 2 * 0.25  # checkpointing rate × batch × (512² / 1024²)
    assert f"weights {weights:.2f} GiB + activations {act:.2f} GiB" in text
    assert "fits the card's 8 GB" in text
    assert "time: not measured on this card" in text or "no benchmark" in text


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
