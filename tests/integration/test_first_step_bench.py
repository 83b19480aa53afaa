"""benchmarks/first_step.py on tiny models (CPU): it writes the files in the real layouts, runs `lorakit train`
twice and reports the time to the first step as a markdown table row (also appended to $OUT/first_step.md)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "first_step.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("first_step_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                      # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_random_file_has_the_layout_and_sane_values(tmp_path):
    bench = load_bench()
    shapes = {"a.weight": ((3, 4), torch.float16), "a.bias": ((3,), torch.bfloat16),
              "norm.weight": ((4,), torch.float32), "big.weight": ((5, 2, 3, 3), torch.bfloat16)}
    path = bench.write_random_safetensors(tmp_path / "x.safetensors", shapes, "cpu", seed=1)
    with safe_open(str(path), framework="pt") as fh:
        got = {k: fh.get_tensor(k) for k in fh.keys()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in got.items()} == shapes
    assert torch.equal(got["a.bias"], torch.zeros(3, dtype=torch.bfloat16))
    assert torch.equal(got["norm.weight"], torch.ones(4))
    w = got["big.weight"].float()
    assert torch.isfinite(w).all() and 0.05 < w.std() < 0.7 and w.abs().sum() > 0   # ~ N(0, 1/fan_in = 1/18)


def test_tiny_run_reports_time_to_first_step(tmp_path, monkeypatch):
    bench = load_bench()
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("OUT", str(out))
    assert bench.main(["--dir", str(tmp_path / "fs"), "--tiny", "--device", "cpu", "--steps", "1",
                       "--images", "2"]) == 0
    # the files are the real single-file layout, and a second call reuses them
    ckpt = tmp_path / "fs" / "models" / "sdxl-tiny" / "sd_xl_base_1.0.safetensors"
    with safe_open(str(ckpt), framework="pt") as fh:
        prefixes = {k.split(".")[0] for k in fh.keys()}
    assert prefixes == {"model", "first_stage_model", "conditioner"}
    table = (out / "first_step.md").read_text().splitlines()
    assert table[0] == bench.TABLE_HEADER.splitlines()[0] and len(table) == 3
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    family, settings, run1, run2, phases = cells[:5]
    assert family == "sdxl" and settings.startswith("tiny, 2 img 64²") and cells[6] == torch.__version__
    run1_total = float(run1.split()[0])
    run2_first = float(re.fullmatch(r"\*\*([\d.]+)\*\*", run2)[1])
    assert 0.5 < run2_first < 120 and 0.5 < run1_total < 300
    for phase in ("import", "config+scan", "model load", "caches", "LoRA", "→ step 1"):
        assert phase in phases
    summary = json.loads(next((tmp_path / "fs" / "runs").glob("*/first_step.json")).read_text())
    assert summary["run2_first_step"][0] == run2_first or abs(summary["run2_first_step"][0] - run2_first) < 0.05
    assert abs(sum(summary["run2_phases"][0].values()) - summary["run2_first_step"][0]) < 1e-6
    # the first step was watched from outside: run 2 wrote its metrics line, after the model load
    run2_dir = Path(summary["runs"]) / "run2"
    assert json.loads((run2_dir / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
