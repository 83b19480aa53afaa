"""Qwen-Image through `lorakit train` on tiny files the test writes in ComfyUI's layout (diffusion_models/,
text_encoders/ with the vision tower, vae/ in Wan 2.1's layout): two steps, previews with Qwen-Image's sampler and
true CFG, the ComfyUI-layout LoRA that `inspect` matches to qwenimage with its metadata; (slow) gradient checkpointing
and fp8 storage (the generic memory features through the spec) with the diffusers layout, and an interrupted run
resumed to the same LoRA bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.models.qwenimage.tiny import write_tiny_checkpoint
from tests.family_fixtures import finished_status, inspected, interrupted_at_call, run_losses
from tests.integration.test_train_e2e import write_run_toml


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("qwenimage-model"))


def test_train_two_steps_previews_and_inspect(tmp_path, model, capsys):
    full = write_run_toml(tmp_path, "qwenimage", model, name="full")
    args = ["training.text_max_length=32", "training.max_steps=2", "save.every_n_steps=0"]
    assert main(["train", str(full), *args, "sample.prompts=[\"a red zkx --n blue --l 4 --s 2 --d 1\"]"]) == 0
    run = tmp_path / "out" / "full"
    for name in ("full.safetensors", "metrics.jsonl", "run.json", "samples/before_after.png"):
        assert (run / name).exists(), name
    finished_status(run)
    losses = run_losses(run)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    lora = load_file(run / "full.safetensors")
    assert lora and all(k.startswith("lora_unet_transformer_blocks_") for k in lora)
    assert "lora_unet_transformer_blocks_1_txt_mlp_net_2.lora_up.weight" in lora
    assert "ss_base_model_version: qwen_image" in inspected(capsys, run / "full.safetensors", "qwenimage", len(lora) // 3)


@pytest.mark.slow
def test_gradient_checkpointing_fp8_storage_and_diffusers_layout(tmp_path, model, capsys):
    """The generic memory features through the spec (the fast test above covers training and both layouts are
    checked against their loaders in tests/unit/test_qwenimage.py)."""
    args = ["training.text_max_length=32", "training.max_steps=2", "save.every_n_steps=0", "sample.prompts=[]"]
    plain = write_run_toml(tmp_path, "qwenimage", model, name="plain")
    assert main(["train", str(plain), *args]) == 0
    losses = run_losses(tmp_path / "out" / "plain")
    mem = write_run_toml(tmp_path, "qwenimage", model, name="mem")
    assert main(["train", str(mem), *args, "memory.gradient_checkpointing=true",
                 "memory.fp8_base=true", "save.format=diffusers"]) == 0
    assert "fp8_base: " in capsys.readouterr().out
    d = load_file(tmp_path / "out" / "mem" / "mem.safetensors")
    assert d and all(k.startswith("transformer.transformer_blocks.") and ".lora_" in k for k in d)
    assert run_losses(tmp_path / "out" / "mem") == pytest.approx(losses, rel=2e-2)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_lora(tmp_path, model, monkeypatch):
    """Interrupted after the step-3 checkpoint, resumed: the same LoRA bit for bit as an uninterrupted run."""
    args = ["training.text_max_length=32", "sample.prompts=[]"]
    full = write_run_toml(tmp_path, "qwenimage", model, name="full")
    assert main(["train", str(full), *args]) == 0
    part = write_run_toml(tmp_path, "qwenimage", model, name="part")
    with interrupted_at_call(monkeypatch):
        assert main(["train", str(part), *args]) == 130
    assert main(["train", "--resume", str(tmp_path / "out" / "part")]) == 0
    a = load_file(tmp_path / "out" / "full" / "full.safetensors")
    b = load_file(tmp_path / "out" / "part" / "part.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert run_losses(tmp_path / "out" / "part") == run_losses(tmp_path / "out" / "full")
