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


def test_ui_plan_is_the_text_of_lorakit_plan(tmp_path, capsys, monkeypatch):
    """One estimator: the Train page shows exactly what `lorakit plan run.toml --card NAME` prints, and the run's time
    from that plan's s/step. The model planned is a small stand-in with SDXL's spec (building the full-size U-Net on
    the meta device takes ~20 s here; the full-size plans are tested in test_autoplan.py / test_flux2_planning.py)."""
    import torch
    from torch import nn

    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family
    from lorakit.train import planview
    from lorakit.ui.plan import CPU, card_choices, estimate

    blocks = [nn.Linear(4096, 4096, dtype=torch.bfloat16, device="meta").requires_grad_(False) for _ in range(8)]
    model = nn.Sequential(*blocks)
    monkeypatch.setattr(planview, "meta_model", lambda cfg: (get_family("sdxl").SPEC, model, blocks,
                                                            [torch.empty(10**6, device="meta")]))

    path = tmp_path / "run.toml"
    path.write_text('[model]\nfamily = "sdxl"\ncheckpoint = "/nonexistent/sdxl.safetensors"\n[data]\ndir = "/d"\n'
                    '[network]\nrank = 32\n[training]\nmax_steps = 1000\n', encoding="utf-8")
    assert planview.main(str(path), [], "rtx4090") == 0
    cli = capsys.readouterr().out.strip()
    cfg = load_config(str(path))
    label = next(k for k, v in card_choices().items() if v == "rtx4090")
    ui = estimate(cfg, label, label=str(path))
    assert f"```\n{cli}\n```" in ui and "estimated peak" in cli
    plan = planview.plan_for(cfg, planview.cards.card("rtx4090"))[0]
    assert f"at the estimated {plan.step.seconds:.2f} s/step" in ui
    assert "lorakit plan" not in estimate(cfg, CPU)  # the CPU has no GPU plan, only the measured CPU time
    assert "12.0 s/step" not in estimate(cfg, CPU, cpu_seconds=12.0) and "12.00 s per batch" in estimate(cfg, CPU,
                                                                                                 cpu_seconds=12.0)


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_lora_files_of_a_renamed_run_folder_follow_its_save_name(tmp_path):
    """The files keep the run's save.name when the user renames the folder (walk8: the UI listed none)."""
    root = tmp_path / "renamed by hand"
    root.mkdir()
    (root / "config.toml").write_text('[save]\nname = "my_run"\ndir = "runs"\n', encoding="utf-8")
    for f in ("my_run.safetensors", "my_run-step00000004.safetensors", "my_run-ema.safetensors", "other.safetensors"):
        (root / f).write_bytes(b"x")
    assert [p.name for p in runs.lora_files(root)] == ["my_run.safetensors", "my_run-step00000004.safetensors",
                                                        "my_run-ema.safetensors"]
    (root / "config.toml").write_text("[save\n", encoding="utf-8")  # damaged: the folder's name, nothing listed here
    assert runs.lora_files(root) == []
