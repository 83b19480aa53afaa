"""The same config gives the same LoRA: two runs of one config, each in its own process, folder and cache, give
bitwise-equal LoRA files on the CPU, for every family (SDXL's cached latents are posterior samples: their noise comes
from generators derived from the seed and each image)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lorakit.lora.io import load_lora_file

from tests.integration.test_train_e2e import tiny_model, write_run_toml


@pytest.mark.parametrize("family", ["sdxl", "flux1"])
def test_same_config_twice_in_separate_processes_gives_the_same_lora(tmp_path, family):
    paths = tiny_model(family, tmp_path / "model")
    files = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        toml = write_run_toml(folder, family, paths)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-m", "lorakit", "train", str(toml), "training.max_steps=3",
                               "sample.prompts=[]", "log.progress=false"], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        files.append(folder / "out" / "tiny" / "tiny.safetensors")
    (ta, ma), (tb, mb) = (load_lora_file(f) for f in files)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # every tensor, bit for bit
    # the metadata too, but for what names the moment or the folder of each run
    varying = {k for k in ma if "time" in k or "date" in k or "session" in k or k.endswith("_at") or "hash" in k
               or k in ("ss_output_name", "modelspec.title")}
    assert {k: v for k, v in ma.items() if k not in varying} == {k: v for k, v in mb.items() if k not in varying}
