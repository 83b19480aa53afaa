"""The learning benchmark scores a LoRA file of a run (a step file, ``-best``, ``-ema``), not only the run's last state
(issue 23: concept scores at the step validation picks). One tiny SDXL toy run of 2 steps (2 concept + 2 reg
images, batch 1, a high lr so that the two steps' LoRAs differ visibly)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lorakit.errors import ModelLoadError
from lorakit.toy import world
from lorakit.toy.demo import _keymap, demo_config, lora_generator


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from lorakit.train.loop import train

    out = tmp_path_factory.mktemp("toyfile")
    world.write_demo_dataset(out / "dataset" / "train", n=2, repeats=1)
    world.write_reg_dataset(out / "dataset" / "reg", n=2)
    cfg = demo_config("sdxl", out / "dataset", out, "t", steps=2, overrides=(
        "sample.prompts=[]", "training.batch_size=1", "optimizer.lr=5e-2", "optimizer.warmup_steps=0",
        "save.every_n_steps=1", "log.progress=false", "log.tensorboard=false", "training.ema=true",
        "training.ema_decay=0.5"))
    result = train(cfg, log=lambda *_: None)
    return cfg, result.run_dir


def _images(generate):
    return [np.asarray(i, np.float32) for i in generate(["a red zkx on a blue background"], [0], True)]


def test_a_lora_file_is_scored_with_its_own_weights(run):
    cfg, run_dir = run
    state = _images(lora_generator(cfg, run_dir))
    final = _images(lora_generator(cfg, run_dir, run_dir / "t.safetensors"))
    step1 = lora_generator(cfg, run_dir, run_dir / "t-step00000001.safetensors")
    ema = _images(lora_generator(cfg, run_dir, run_dir / "t-ema.safetensors"))
    # the final file holds the last state's weights (as exported): the same images within rounding
    assert np.abs(final[0] - state[0]).max() <= 2.0
    # step 1's file and the EMA are other weights: other images
    assert np.abs(_images(step1)[0] - state[0]).mean() > 1.0
    assert np.abs(ema[0] - state[0]).mean() > 1.0


def test_a_file_of_another_model_and_a_variant_are_refused_in_one_line(run, tmp_path):
    from safetensors.torch import save_file
    import torch

    cfg, run_dir = run
    stray = tmp_path / "stray.safetensors"
    save_file({"lora_unet_nowhere.lora_down.weight": torch.zeros(8, 4),
               "lora_unet_nowhere.lora_up.weight": torch.zeros(4, 8)}, str(stray))
    with pytest.raises(Exception, match="stray.safetensors"):
        lora_generator(cfg, run_dir, stray)
    loha = {"lora": {"unet": {"a": SimpleNamespace(algo="loha")}}}
    with pytest.raises(ModelLoadError, match=r"x\.safetensors: only a LoRA file.*loha"):
        _keymap(SimpleNamespace(SPEC=SimpleNamespace(family="sdxl"), lora_keymap=None), None,
                tmp_path / "x.safetensors", loha)
