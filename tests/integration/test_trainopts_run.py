"""One tiny SDXL run through the CLI with the training options of issue 23 together: it starts from a LoRA file
(network.weights), runs max_epochs (steps from images × repeats / batch), saves every epoch, trains with Lion, keeps
an EMA and ships <name>-ema.safetensors, which equals the EMA formula over the weights of
every step (read back from the resume states)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.config.schema import Config
from lorakit.models.sdxl import Adapter
from lorakit.lora.io import save_safetensors_atomic
from lorakit.train.checkpoint import load_state
from tests.integration.test_train_e2e import tiny_model, write_run_toml

DECAY = 0.5


@pytest.mark.slow  # ~45 s on a loaded 2-core machine; the fast variants: tests/unit/test_trainopts_*.py
def test_continue_from_a_file_with_epochs_lion_and_ema(tmp_path):
    paths = tiny_model("sdxl", tmp_path / "model")
    # a "trained" start in the diffusers layout: the keys of the tiny UNet's LoRA, seeded values
    cfg = Config()
    cfg.model.family, cfg.model.checkpoint, cfg.model.config_dir = "sdxl", str(paths["checkpoint"]), str(paths["config"])
    cfg.network.rank, cfg.network.alpha = 4, 2.0
    ad = Adapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(11)
    start = {}
    for path, rank in ad.lora_targets(cfg.network)["unet"].items():
        w = ad.unet.get_submodule(path).weight
        start[f"unet.{path}.lora_A.weight"] = (torch.randn(rank, *w.shape[1:], generator=g) * 0.1).half()
        start[f"unet.{path}.lora_B.weight"] = (torch.randn(w.shape[0], rank, generator=g) * 0.1).half()  # Linears
    save_safetensors_atomic(tmp_path / "start.safetensors", start, {})

    run_toml = write_run_toml(tmp_path, "sdxl", paths, name="ema")
    # 4 images × 2 repeats in one bucket, batch 8: one step per epoch
    args = ["train", str(run_toml), "sample.prompts=[]", f"network.weights={tmp_path / 'start.safetensors'}", "training.batch_size=8",
            "training.max_epochs=3", "save.every_n_epochs=1", "save.keep_last=5", "training.ema=true",
            f"training.ema_decay={DECAY}", "optimizer.name=lion", "optimizer.lr=1e-3",
            "save.format=diffusers", "data.alpha_mask=true"]  # RGB images: whole masks, the wiring runs
    text = run_toml.read_text()
    run_toml.write_text(text.replace("max_steps = 6\n", "").replace("every_n_steps = 3\n", ""))
    assert main(args) == 0
    run = tmp_path / "out" / "ema"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 3
    assert sorted(p.name for p in run.glob("ema-step*.safetensors")) == ["ema-step00000001.safetensors",
                                                                          "ema-step00000002.safetensors"]
    # the EMA formula over w0 (the file), w1, w2, w3 (the resume states hold each step's fp32 LoRA)
    weights = []
    for step in (1, 2, 3):
        lora = load_state(run / "state" / f"step{step:08d}")["lora"]["unet"]
        weights.append({p: m for p, m in lora.items()})
    expected = {}
    for key, t in start.items():
        expected[key] = t.float()
    for w in weights:
        for path, m in w.items():
            for part, value in (("lora_A", m.down), ("lora_B", m.up * (m.alpha / m.down.shape[0]))):
                key = f"unet.{path}.{part}.weight"
                expected[key] = DECAY * expected[key] + (1 - DECAY) * value
    got = load_file(run / "ema-ema.safetensors")
    final = load_file(run / "ema.safetensors")
    assert got.keys() == expected.keys() == final.keys()
    for key in got:
        torch.testing.assert_close(got[key].float(), expected[key], rtol=2e-3, atol=2e-4)
    assert any(not torch.equal(got[k], final[k]) for k in got)  # the EMA lags the trained LoRA
    assert any(not torch.equal(final[k], start[k]) for k in final)  # Lion moved it
