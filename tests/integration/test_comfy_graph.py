"""lorakit's ComfyUI nodes run the way ComfyUI's executor runs a graph (tests/unit/comfyui_rederived.py, with the
ComfyUI commits it was read from): dataset → config → train (20 steps on the toy SDXL, a real job in the web UI's
store, a real `lorakit train` process) → samples and loss plot as IMAGE → the trained LoRA applied to the toy model
through ComfyUI's LoRA key map, every key of the file used."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lorakit.comfy import NODE_CLASS_MAPPINGS
from lorakit.comfy.train import STOP_RUN
from lorakit.toy.paths import toy_paths
from lorakit.toy.world import write_demo_dataset
from lorakit.ui.jobs import JobStore
from tests.unit import comfyui_rederived as cu

OVERRIDES = "\n".join(["training.device=cpu", "training.mixed_precision=no", "data.min_bucket_reso=64",
                       "data.max_bucket_reso=128", "log.tensorboard=false",
                       "log.progress=false"])


def graph(dataset_dir: Path, steps: int) -> dict:
    return {
        "1": {"class_type": "LorakitDataset", "inputs": {"folder": str(dataset_dir), "repeats": 10, "trigger": "zkx",
                                                          "class_word": "", "resolution": 64}},
        "2": {"class_type": "LorakitConfig", "inputs": {
            "dataset": ["1", 0], "family": "sdxl", "preset": "(none)", "checkpoint": "(toy model)",
            "resolution": 64, "rank": 4, "alpha": 4.0, "learning_rate": 0.001, "optimizer": "adamw",
            "max_steps": steps, "batch_size": 2, "training_seed": 7, "save_every": steps // 2, "sample_every": 0,
            "sample_prompts": "a red zkx on a blue background --d 1 --s 3", "name": "", "output_dir": "",
            "train_text_encoder": "true", "overrides": OVERRIDES}},
        "3": {"class_type": "LorakitTrain", "inputs": {"config": ["2", 0], "wait": True, "on_cancel": STOP_RUN,
                                                        "step": 0, "free_comfy_memory": True}},
        "4": {"class_type": "LorakitSamples", "inputs": {"run": ["3", 0], "which": "before/after grid"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        "6": {"class_type": "LorakitLossPlot", "inputs": {"run": ["3", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "8": {"class_type": "ToyCheckpointLoader", "inputs": {}},
        "9": {"class_type": "LorakitLoadLoRA", "inputs": {"model": ["8", 0], "clip": ["8", 1], "run": ["3", 0],
                                                           "strength_model": 1.0, "strength_clip": 0.5}},
        "10": {"class_type": "Capture", "inputs": {"model": ["9", 0], "clip": ["9", 1]}},
    }


def pixels(path: Path) -> torch.Tensor:
    """An independent decode: 8-bit RGB / 255 as H×W×3."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)


# the brief's run is 20 steps (a minute and more of wall time on a shared 2-core machine: `slow`); the 2-step run
# asserts every same behaviour in a third of the time
@pytest.mark.parametrize("steps", [pytest.param(20, marks=pytest.mark.slow), 2])
def test_graph_trains_on_the_toy_and_applies_every_lora_key(tmp_path, monkeypatch, steps):
    home = tmp_path / "home"
    monkeypatch.setenv("LORAKIT_HOME", str(home))
    models = tmp_path / "ComfyUI" / "models"
    (models / "loras").mkdir(parents=True)
    state = cu.install_fake_comfy(monkeypatch, models)
    write_demo_dataset(tmp_path / "data", n=4, repeats=2)
    captured: list = []
    classes = {**NODE_CLASS_MAPPINGS, **cu.core_nodes(__import__("folder_paths")),
               "ToyCheckpointLoader": cu.toy_loader_node(toy_paths("sdxl")["checkpoint"]),
               "Capture": cu.capture_node(captured)}
    prompt = graph(tmp_path / "data", steps)

    out = cu.run_prompt(prompt, classes)

    assert "usable images: 4" in out["1"][1][0] and "warnings: 0" in out["1"][1][0]  # data check's table
    # the Train node: one job in the web UI's store, finished, its TOML the Config node's, an ordinary run folder
    store = JobStore(home)
    [job] = store.list()
    run, lora_path, lora_name, summary = (v[0] for v in out["3"])
    assert job.state == "finished" and run.job_id == job.id and run.state == "finished"
    assert job.toml_path.read_text() == out["2"][1][0]
    assert job.run_dir == home / "runs" / job.name and Path(lora_path) == job.run_dir / f"{job.name}.safetensors"
    for name in ("config.toml", "run.json", "metrics.jsonl", f"{job.name}-step{steps // 2:08d}.safetensors"):
        assert (job.run_dir / name).is_file(), name
    assert json.loads((job.run_dir / "run.json").read_text())["step"] == steps
    assert state.unloaded == 1 and state.emptied == 1  # ComfyUI's models unloaded before the run
    assert state.bars and state.bars[-1].seen[-1] == (steps, steps)
    assert f"job {job.id}" in summary and f"finished, step {steps}/{steps}" in summary
    # the LoRA is linked into ComfyUI's loras folder under the name LoraLoader's list shows
    assert lora_name in __import__("folder_paths").get_filename_list("loras")
    assert (models / "loras" / lora_name).resolve() == Path(lora_path).resolve()

    # samples and loss plot: IMAGE tensors B×H×W×3 in [0, 1] with the PNGs' pixels
    grid = out["4"][0][0]
    assert grid.dtype == torch.float32 and grid.dim() == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
    assert torch.equal(grid[0], pixels(job.run_dir / "samples" / "before_after.png"))
    assert torch.equal(out["6"][0][0][0], pixels(job.run_dir / "loss.png"))

    # the LoRA through ComfyUI's key map: every key of the file loaded, every target a weight of the model
    lora = load_file(lora_path)
    assert {k.split("_")[1] for k in lora} == {"unet", "te1", "te2"}
    assert state.not_loaded == set()
    [(model, clip)] = captured
    base_unet, base_clip = cu.comfy_layout(load_file(str(toy_paths("sdxl")["checkpoint"])))
    modules = {k[: -len(".lora_up.weight")] for k in lora if k.endswith(".lora_up.weight")}
    assert len(state.patched) == len(modules)
    key_map = {**cu.model_lora_keys_unet(base_unet), **cu.model_lora_keys_clip(base_clip)}
    for module in modules:
        target = key_map[module]
        up, down = lora[f"{module}.lora_up.weight"].float(), lora[f"{module}.lora_down.weight"].float()
        scale = lora[f"{module}.alpha"].item() / down.shape[0] * (1.0 if module.startswith("lora_unet_") else 0.5)
        want = (base_unet if target.startswith("diffusion_model.") else base_clip)[target] + \
            scale * (up.flatten(1) @ down.flatten(1)).reshape(-1).reshape(
                (base_unet if target.startswith("diffusion_model.") else base_clip)[target].shape)
        got = (model if target.startswith("diffusion_model.") else clip).weights[target]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(model.weights[t], base_unet[t]) for t in state.patched if t in base_unet)

    # queued again (ComfyUI's cache cleared): the same job, returned at once, nothing retrained
    t0 = time.perf_counter()
    again = cu.run_prompt({k: prompt[k] for k in ("1", "2", "3")}, classes)
    assert time.perf_counter() - t0 < 15
    assert again["3"][0][0].job_id == job.id and len(store.list()) == 1
