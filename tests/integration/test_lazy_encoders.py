"""Two `lorakit train` runs on the same data (issue 6): the first reads the VAE / AE and the text encoders
to fill the caches; the second, with complete caches, reads neither (only the denoiser), and trains the
same first steps. Checked per family on the tiny single-file checkpoints, through lorakit.train.loop.train.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.config.load import load_config
from lorakit.toy.world import write_demo_dataset
from lorakit.train.loop import train


def spy_on_encoder_reads(monkeypatch, family: str) -> list[str]:
    """Record every encoder part the adapter reads from disk (names appended to the returned list)."""
    reads: list[str] = []
    if family == "sdxl":
        from lorakit.models.sdxl import load

        real = load.open_components

        def open_components(*args, **kwargs):
            parts = real(*args, **kwargs)
            vae, text = parts.load_vae, parts.load_text
            parts.load_vae = lambda: (reads.append("vae"), vae())[1]
            parts.load_text = lambda: (reads.append("text"), text())[1]
            return parts

        monkeypatch.setattr(load, "open_components", open_components)
    else:
        from lorakit.models.flux1 import load

        real = load.load_components

        def load_components(*args, **kwargs):
            comps = real(*args, **kwargs)
            for name, fn in list(comps._loaders.items()):
                comps._loaders[name] = (lambda n, f: lambda: (reads.append(n), f())[1])(name, fn)
            return comps

        monkeypatch.setattr(load, "load_components", load_components)
    return reads


@pytest.mark.parametrize("family", ["sdxl", "flux1"])
def test_second_run_reads_no_encoder(family, tmp_path, monkeypatch):
    if family == "sdxl":
        from lorakit.models.sdxl.load import write_tiny_checkpoint
    else:
        from lorakit.models.flux1.load import write_tiny_checkpoint
    paths = write_tiny_checkpoint(tmp_path / "model")
    write_demo_dataset(tmp_path / "data", n=2, repeats=1)
    model = {"family": family, **{role: str(p) for role, p in paths.items() if role != "config"},
             "config_dir": str(paths["config"])}
    reads = spy_on_encoder_reads(monkeypatch, family)

    def run(name: str) -> list[dict]:
        cfg = load_config(None, data={
            "model": model,
            "data": {"dir": str(tmp_path / "data"), "resolution": 64, "min_bucket_reso": 64,
                     "cache_dir": str(tmp_path / "cache")},
            "network": {"rank": 2, "alpha": 1.0}, "optimizer": {"name": "adamw"},
            "training": {"max_steps": 2, "batch_size": 1, "seed": 3, "mixed_precision": "no", "device": "cpu",
                         **({"t5_max_length": 16} if family == "flux1" else {})},
            "save": {"dir": str(tmp_path / "out"), "name": name, "every_n_steps": 0},
            "log": {"tensorboard": False, "progress": False}})
        train(cfg, log=lambda _msg: None)
        lines = (Path(cfg.save.dir) / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    first = run("first")
    expected = {"sdxl": {"vae", "text"}, "flux1": {"ae", "clip_l", "t5", "clip_tokenizer", "t5_tokenizer"}}[family]
    assert set(reads) == expected and len(reads) == len(expected)      # each part read once, to fill the caches
    reads.clear()
    second = run("second")
    assert reads == [], f"the run with complete caches read {reads}"
    assert [r["loss"] for r in second] == [r["loss"] for r in first]  # same steps from the cached tensors
