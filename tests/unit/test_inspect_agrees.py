"""`lorakit inspect` agrees with the run for every layout lorakit writes or reads (issue 26): the LoRA's own rank
for fused FLUX.1 modules, diffusers-format files, a toy model's LoRA checked against its actual base (given with
--base or found through the run folder), a base checkpoint ("not a LoRA"), and folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorakit.cli import _keymaps, main
from lorakit.lora.formats.fused import Pair, fuse
from lorakit.lora.formats.layouts import LoraState
from lorakit.lora.tools.files import base_keymap, save_state
from lorakit.toy.paths import toy_paths


def toy_lora(family: str, rank: int, out: Path, layout: str = "kohya") -> tuple[Path, int, int]:
    """A LoRA of ``rank`` on every denoiser module of the shipped toy base (its own module names and shapes),
    written by lorakit's format writer; returns (file, modules, of which fused)."""
    base = toy_paths(family)["checkpoint"]
    keys = base_keymap(_keymaps(family)[0], base)
    g = torch.Generator().manual_seed(0)
    modules, fused = {}, 0
    for m in keys.modules:
        if m.component != "denoiser" or not m.checkpoint_key or m.kernel != (1, 1):
            continue
        sizes = m.part_sizes() if m.diffusers else (m.out_features,)   # () : a name only the toy has
        parts = [Pair(torch.randn(rank, m.in_features, generator=g), torch.randn(n, rank, generator=g), float(rank) / 2)
                 for n in sizes]
        modules[keys.kohya_name(m)] = parts[0] if len(parts) == 1 else fuse(parts, sizes)
        fused += len(parts) > 1
    from lorakit.models.registry import get_family

    version = {"ss_base_model_version": get_family(family).SPEC.metadata_base_version}  # as lorakit's export writes
    save_state(LoraState(modules, version, "kohya", family), keys, layout, out)
    return out, len(modules), fused


def inspect(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["inspect", *args]) == 0
    return capsys.readouterr().out


def test_fused_flux1_modules_show_the_lora_rank(tmp_path, capsys):
    path, n, fused = toy_lora("flux1", 16, tmp_path / "flux.safetensors")
    assert fused > 0
    out = inspect(capsys, str(path), "--base", str(toy_paths("flux1")["checkpoint"]))
    assert f"rank: 16 ({n} modules); {fused} modules store their parts side by side" in out, out
    assert f"alpha: 8 ({n} modules)" in out and "48" not in out.split("metadata:")[0].split("rank:")[1]
    assert f"fits flux1: {n}/{n} modules (checked against {toy_paths('flux1')['checkpoint']}" in out
    info = json.loads(inspect(capsys, str(path), "--json"))
    assert info["lora_ranks"] == {"16": n} and info["ranks"]["48"] > 0  # raw widths are still there, labelled


def test_a_toy_sdxl_lora_fits_its_own_base_and_its_run_folder_finds_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    path, n, _ = toy_lora("sdxl", 4, run / "toy.safetensors")
    full = inspect(capsys, str(path))                     # against full-size SDXL: the toy's extra names are named
    assert "modules (checked against full-size sdxl)" in full and "check with --base FILE" in full
    assert f"every key fits" in inspect(capsys, str(path), "--base", str(toy_paths("sdxl")["checkpoint"]))
    # in its run folder (run.json + config.toml naming the base), inspect checks against that base by itself
    (run / "run.json").write_text(json.dumps({"status": "finished", "lora": str(path)}))
    (run / "config.toml").write_text(f'[model]\nfamily = "sdxl"\ncheckpoint = "{toy_paths("sdxl")["checkpoint"]}"\n')
    for target in (path, run):
        out = inspect(capsys, str(target))
        assert f"{n}/{n} modules" in out and "every key fits" in out, out


def test_a_diffusers_format_lora_is_known(tmp_path, capsys):
    path, n, _ = toy_lora("flux1", 8, tmp_path / "pytorch_lora_weights.safetensors", layout="diffusers")
    for target in (path, tmp_path):                      # the file, and the folder diffusers saves it in
        out = inspect(capsys, str(target), "--base", str(toy_paths("flux1")["checkpoint"]))
        assert "diffusers layout" in out and f"rank: 8 ({n} modules)" in out and "every key fits" in out, out
        assert "no known family" not in out


def test_a_base_checkpoint_is_not_a_lora(capsys):
    out = inspect(capsys, str(toy_paths("sdxl")["checkpoint"]))
    assert out.strip() == f"{toy_paths('sdxl')['checkpoint']}: not a LoRA: this is an SDXL-layout checkpoint of " \
                          "another size (U-Net width 32, context width 40; SDXL base 1.0 has 320 and 2048)"


def test_folders(tmp_path, capsys):
    assert "not a LoRA: this is a diffusers model folder" in inspect(capsys, str(toy_paths("sdxl")["config"]))
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    assert main(["inspect", str(tmp_path)]) == 2
    assert "a folder with 2 .safetensors files (a.safetensors, b.safetensors); name the LoRA file" in \
        capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
