"""Z-Image through `lorakit train` on the tiny ComfyUI-layout files: every output, the ComfyUI-layout LoRA that
`inspect` matches to zimage with Z-Image's metadata, previews with its sampler, gradient checkpointing giving the same
losses, fp8 storage training, and an interrupted run resumed to the same LoRA bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.models.zimage.tiny import write_tiny_checkpoint
from tests.family_fixtures import finished_status, inspected, interrupted_at_call, run_losses
from tests.integration.test_train_e2e import write_run_toml


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("zimage-model"))


def test_train_inspect_resume(tmp_path, model, capsys, monkeypatch):
    full = write_run_toml(tmp_path, "zimage", model, name="full")
    assert main(["train", str(full), "training.text_max_length=32"]) == 0
    run = tmp_path / "out" / "full"
    for name in ("full.safetensors", "full-step00000003.safetensors", "metrics.jsonl", "run.json",
                 "samples/before_after.png"):
        assert (run / name).exists(), name
    assert finished_status(run)["lora_effect"] > 0
    losses = run_losses(run)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    lora = load_file(run / "full.safetensors")
    assert lora and all(k.startswith("lora_unet_") for k in lora)
    assert "lora_unet_layers_1_attention_qkv.lora_up.weight" in lora          # q/k/v fused as ComfyUI loads them
    assert "ss_base_model_version: z_image" in inspected(capsys, run / "full.safetensors", "zimage", len(lora) // 3)

    # gradient checkpointing (the blocks the generic placement recomputes) changes no loss
    ckpt = write_run_toml(tmp_path, "zimage", model, name="ckpt")
    assert main(["train", str(ckpt), "training.text_max_length=32", "sample.prompts=[]",
                 "memory.gradient_checkpointing=true"]) == 0
    assert run_losses(tmp_path / "out" / "ckpt") == pytest.approx(losses, rel=1e-5)
    # fp8 storage of the frozen Linears (the generic memory.fp8_base): trains, close to the bf16/fp32 losses
    fp8 = write_run_toml(tmp_path, "zimage", model, name="fp8")
    assert main(["train", str(fp8), "training.text_max_length=32", "sample.prompts=[]", "memory.fp8_base=true"]) == 0
    assert "fp8_base: " in capsys.readouterr().out
    assert run_losses(tmp_path / "out" / "fp8") == pytest.approx(losses, rel=2e-2)

    # interrupted after the step-3 checkpoint, resumed: the same LoRA bit for bit
    part = write_run_toml(tmp_path, "zimage", model, name="part")
    with interrupted_at_call(monkeypatch):
        assert main(["train", str(part), "training.text_max_length=32"]) == 130
    assert main(["train", "--resume", str(tmp_path / "out" / "part")]) == 0
    b = load_file(tmp_path / "out" / "part" / "part.safetensors")
    assert lora.keys() == b.keys() and all(torch.equal(lora[k], b[k]) for k in lora)
    assert run_losses(tmp_path / "out" / "part") == losses
