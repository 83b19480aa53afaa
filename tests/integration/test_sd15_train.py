"""SD 1.5 through the CLI on the tiny LDM single file: train, previews, kohya export that `inspect` fits to sd15 with
sd-scripts' metadata, and a run stopped mid-way and resumed equal bit for bit to the uninterrupted one."""

from __future__ import annotations

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.models.sd15 import write_tiny_checkpoint
from tests.family_fixtures import finished_status, inspected, interrupted_at_call, run_losses
from tests.integration.test_train_e2e import write_run_toml


def test_sd15_trains_exports_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    paths = write_tiny_checkpoint(tmp_path / "model")
    full = write_run_toml(tmp_path, "sd15", paths, name="full")
    assert main(["train", str(full), "network.train_text_encoder=true"]) == 0
    run = tmp_path / "out" / "full"
    assert finished_status(run)["lora_effect"] > 0
    assert (run / "samples" / "before_after.png").exists()
    tensors = load_file(run / "full.safetensors")
    assert any(k.startswith("lora_te_text_model_") for k in tensors)
    assert all(k.startswith(("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_", "lora_te_"))
               for k in tensors)
    with safe_open(str(run / "full.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert "every key fits" in inspected(capsys, run / "full.safetensors", "sd15", len(tensors) // 3)

    part = write_run_toml(tmp_path, "sd15", paths, name="part")
    with interrupted_at_call(monkeypatch):  # after the step-3 checkpoint, in the middle of step 5
        assert main(["train", str(part), "network.train_text_encoder=true", "sample.prompts=[]"]) == 130
    assert main(["train", "--resume", str(tmp_path / "out" / "part")]) == 0
    b = load_file(tmp_path / "out" / "part" / "part.safetensors")
    assert tensors.keys() == b.keys() and all(torch.equal(tensors[k], b[k]) for k in tensors)
    assert run_losses(run) == run_losses(tmp_path / "out" / "part")
