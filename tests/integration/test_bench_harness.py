"""The GPU benchmark harnesses in their CPU smoke modes (tiny models), so that a broken row or probe is found here
and not after a GPU machine has started: benchmarks/bench.py with BENCH_TINY=1 (fp8 storage and fp8 compute, eager
and compiled, each in its own process, losses compared with fp8 storage's), benchmarks/probe_blocks.py and
benchmarks/lora_linear.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", OUT=str(tmp_path),
                   **env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow  # 50-95 s of CPU: outside make test's budget (run with -m slow)
def test_bench_rows_for_fp8_compute_run_and_agree_with_fp8_storage(tmp_path):
    rows = ["flux1/fp8", "flux1/fp8c", "flux1/fp8c+compile"]  # the same placement path: same weights and batches
    done = run(["benchmarks/bench.py", *rows, "--steps", "6", "--no-append"], tmp_path, BENCH_TINY="1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = {r["row"]: r for r in map(json.loads, (tmp_path / "bench.jsonl").read_text().splitlines())}
    assert set(rows) <= set(results), results.keys()
    base = results["flux1/fp8"]["losses"]
    for name in rows[1:]:
        losses = results[name]["losses"]
        assert len(losses) == 6 and all(abs(a - b) <= 0.01 * abs(b) for a, b in zip(losses, base)), (name, losses)
    table = (tmp_path / "RESULTS.md").read_text()
    settings = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| flux1/fp8")}
    assert set(settings) == set(rows), settings.keys()
    assert "fp8 storage" in settings["flux1/fp8"] and "fp8 compute" not in settings["flux1/fp8"]
    assert all("fp8 compute" in settings[name] and "fp8 storage" not in settings[name] for name in rows[1:])


@pytest.mark.slow  # 50-95 s of CPU: outside make test's budget (run with -m slow)
def test_block_probe_reports_every_mode(tmp_path):
    done = run(["benchmarks/probe_blocks.py", "bf16", "fp8c"], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    modes = {(cells[1].strip(), cells[2].strip()) for cells in (line.split("|") for line in lines[1:])}
    assert modes == {(m, b) for m in ("bf16", "fp8c") for b in ("double", "single")}, lines
    assert not any("FAILED" in line for line in lines)


def test_lora_linear_formulations_agree_and_print_a_row_per_shape(tmp_path):
    """benchmarks/lora_linear.py on the CPU: it first checks that its four LoRA formulations give peft's output and
    input gradient (it exits non-zero otherwise), then prints one row per shape with a cell per formulation."""
    done = run(["benchmarks/lora_linear.py"], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and line.split("|")[1].strip()[:1].isdigit()]
    assert len(rows) == 2 and all(line.count("|") == 7 and "failed" not in line for line in rows), rows
