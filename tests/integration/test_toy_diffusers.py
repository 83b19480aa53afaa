"""The toy world against diffusers' own code: the toy SDXL single file loads through
`StableDiffusionXLPipeline.from_single_file` (with lorakit's shipped config folder) and draws the same image as
lorakit's sampler for the same seed; a LoRA trained by `lorakit train` and exported in kohya format, loaded with
diffusers' `load_lora_weights`, reproduces lorakit's LoRA samples.

FLUX: diffusers' `FluxTransformer2DModel.from_single_file` and its kohya-LoRA converter hard-code the full
width (3072), so the toy FLUX (width 64) is checked another way: lorakit's BFL converter is compared with
diffusers' at full width and the kohya export with `load_lora_weights` on tiny and full-width models
(tests/unit/test_flux1_convert.py, test_flux1_lora_diffusers.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorakit.config.load import load_config
from lorakit.lora.inject import inject_lora, load_lora_into
from lorakit.models.base import SamplePrompt
from lorakit.models.registry import get_family
from lorakit.toy.paths import toy_paths

PROMPTS = [("a red circle on a blue background", 1), ("a yellow zkx on a black background", 2)]


def lorakit_adapter(tmp_path):
    paths = toy_paths("sdxl")
    (tmp_path / "data").mkdir(exist_ok=True)
    cfg = load_config(None, data={"model": {"family": "sdxl", "checkpoint": str(paths["checkpoint"]),
                                            "config_dir": str(paths["config"])},
                                  "data": {"dir": str(tmp_path / "data"), "resolution": 64, "min_bucket_reso": 64},
                                  "training": {"mixed_precision": "no", "device": "cpu"}})
    adapter = get_family("sdxl").Adapter(cfg)
    adapter.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    return adapter


def diffusers_pipe():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    paths = toy_paths("sdxl")
    pipe = StableDiffusionXLPipeline.from_single_file(str(paths["checkpoint"]), config=str(paths["config"]),
                                                      torch_dtype=torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw_lorakit(adapter, prompt, seed):
    p = SamplePrompt(prompt=prompt, width=64, height=64, steps=12, seed=seed, cfg_scale=4.0, sampler="euler")
    with torch.no_grad():
        return np.asarray(adapter.sample(p, torch.Generator().manual_seed(seed)), dtype=np.int16)


def draw_diffusers(pipe, prompt, seed):
    img = pipe(prompt, negative_prompt="", num_inference_steps=12, guidance_scale=4.0, height=64, width=64,
               generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(img, dtype=np.int16)


def test_toy_sdxl_single_file_draws_the_same_in_diffusers(tmp_path):
    adapter = lorakit_adapter(tmp_path)
    pipe = diffusers_pipe()
    for prompt, seed in PROMPTS:
        ours, theirs = draw_lorakit(adapter, prompt, seed), draw_diffusers(pipe, prompt, seed)
        assert ours.shape == theirs.shape == (64, 64, 3)
        assert np.abs(ours - theirs).max() <= 2, prompt   # rounding of the last uint8 step only


def test_kohya_lora_in_diffusers_reproduces_lorakit_samples(tmp_path):
    from lorakit.toy.demo import demo_config, ensure_dataset
    from lorakit.train import checkpoint
    from lorakit.train.loop import train
    from lorakit.train.rundir import RunDir

    ensure_dataset(tmp_path / "dataset")
    cfg = demo_config("sdxl", tmp_path / "dataset", tmp_path, "lora", steps=60,
                      overrides=("sample.prompts=[]", "log.progress=false", "save.precision=fp32"))
    result = train(cfg, log=lambda *_: None)
    adapter = lorakit_adapter(tmp_path)
    state = checkpoint.load_state(RunDir(result.run_dir, "lora").latest_state())
    loras = state["lora"]["unet"]
    inject_lora(adapter.denoiser(), {n: int(m.down.shape[0]) for n, m in loras.items()},
                {n: float(m.alpha) for n, m in loras.items()}, 0.0)
    load_lora_into(adapter.denoiser(), loras)
    pipe = diffusers_pipe()
    base = draw_diffusers(pipe, *PROMPTS[1])
    pipe.load_lora_weights(str(result.lora_path))
    for prompt, seed in PROMPTS:
        ours, theirs = draw_lorakit(adapter, prompt, seed), draw_diffusers(pipe, prompt, seed)
        assert np.abs(ours - theirs).max() <= 2, prompt
    assert np.abs(draw_diffusers(pipe, *PROMPTS[1]) - base).max() > 10, "the LoRA must change the image"
