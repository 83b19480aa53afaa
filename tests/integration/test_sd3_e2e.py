"""SD3.5 through `lorakit train` on a tiny official-layout single file (every encoder bundled): every output, the
kohya / ComfyUI-layout LoRA (transformer, CLIP-L and CLIP-G) that `inspect` matches to sd3 with SD3's metadata,
previews with its sampler; (slow) the diffusers layout, gradient checkpointing giving the same losses, fp8 storage,
and a resumed run equal bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.models.sd3.tiny import write_tiny_checkpoint
from tests.family_fixtures import finished_status, inspected, interrupted_at_call, run_losses
from tests.integration.test_train_e2e import write_run_toml

FAST = ["training.max_steps=2", "training.batch_size=1", "training.t5_max_length=16", "save.every_n_steps=0"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sd3-model"))


def test_two_step_train_export_inspect(tmp_path, model, capsys):
    toml = write_run_toml(tmp_path, "sd3", model, name="two")
    assert main(["train", str(toml), *FAST, "sample.prompts=[\"a red zkx --d 1 --s 2\"]",
                 "network.train_text_encoder=true"]) == 0
    run = tmp_path / "out" / "two"
    for name in ("two.safetensors", "metrics.jsonl", "run.json", "samples/before_after.png"):
        assert (run / name).exists(), name
    finished_status(run)
    losses = run_losses(run)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    lora = load_file(run / "two.safetensors")
    assert lora and all(k.startswith(("lora_unet_joint_blocks_", "lora_te1_text_model_encoder_layers_",
                                      "lora_te2_text_model_encoder_layers_")) for k in lora)
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2.lora_up.weight" in lora   # CLIP-G trained too
    assert "lora_unet_joint_blocks_0_x_block_attn2_qkv.lora_up.weight" in lora   # sd-scripts / ComfyUI names
    assert "ss_base_model_version: 5-large" in inspected(capsys, run / "two.safetensors", "sd3", len(lora) // 3)


@pytest.mark.slow
def test_diffusers_layout_checkpointing_fp8_and_resume(tmp_path, model, capsys, monkeypatch):
    base = write_run_toml(tmp_path, "sd3", model, name="full")
    assert main(["train", str(base), "training.t5_max_length=16", "save.format=diffusers"]) == 0
    run = tmp_path / "out" / "full"
    lora = load_file(run / "full.safetensors")
    assert all(k.startswith("transformer.transformer_blocks.") for k in lora)
    losses = run_losses(run)
    ckpt = write_run_toml(tmp_path, "sd3", model, name="ckpt")
    assert main(["train", str(ckpt), "training.t5_max_length=16", "sample.prompts=[]",
                 "memory.gradient_checkpointing=true", "save.format=diffusers"]) == 0
    assert run_losses(tmp_path / "out" / "ckpt") == pytest.approx(losses, rel=1e-5)
    fp8 = write_run_toml(tmp_path, "sd3", model, name="fp8")
    assert main(["train", str(fp8), "training.t5_max_length=16", "sample.prompts=[]", "memory.fp8_base=true"]) == 0
    assert run_losses(tmp_path / "out" / "fp8") == pytest.approx(losses, rel=2e-2)

    part = write_run_toml(tmp_path, "sd3", model, name="part")
    with interrupted_at_call(monkeypatch):
        assert main(["train", str(part), "training.t5_max_length=16", "save.format=diffusers"]) == 130
    assert main(["train", "--resume", str(tmp_path / "out" / "part")]) == 0
    b = load_file(tmp_path / "out" / "part" / "part.safetensors")
    assert lora.keys() == b.keys() and all(torch.equal(lora[k], b[k]) for k in lora)
