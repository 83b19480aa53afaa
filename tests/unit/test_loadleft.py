"""The ninth session's fixes to what the LoRA-tool walk (loadwalk) left: the PEFT in-memory note for resize / merge,
damaged LyCORIS modules in inspect, FLUX.2 Klein sizes in merge, encoder folders of unrelated files, SD3 .ckpt
encoders."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.unit.test_loratools_walk9 import kohya, run, sdxl_map  # noqa: F401  (sdxl_map: a fixture)


NOTE = "holds PEFT's in-memory names (….lora_A.default.weight), which carry no lora_alpha: read at scale 1 (alpha = rank)"


def test_resize_and_merge_of_peft_in_memory_names_print_the_note(tmp_path, capsys, sdxl_map):
    # before: only convert said the file is read at scale 1; resize and merge read it silently
    src = tmp_path / "k.safetensors"
    save_file(kohya(sdxl_map, alpha=4.0), str(src))
    assert run(capsys, "convert", str(src), "--to", "diffusers", "-o", str(tmp_path / "d.safetensors"))[0] == 0
    raw = tmp_path / "raw.safetensors"
    save_file({k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"):
               v for k, v in load_file(str(tmp_path / "d.safetensors")).items()}, str(raw))
    for argv in (["convert", str(raw), "--to", "kohya", "-o", str(tmp_path / "c.safetensors")],
                 ["resize", str(raw), "--rank", "2", "-o", str(tmp_path / "r.safetensors")],
                 ["merge", str(raw), "-o", str(tmp_path / "m.safetensors")]):
        code, out = run(capsys, *argv)
        assert code == 0 and out.count(f"note: {raw} {NOTE}") == 1, (argv, out)
    code, out = run(capsys, "merge", str(src), "-o", str(tmp_path / "m2.safetensors"))
    assert code == 0 and "in-memory" not in out
