"""The kohya settings a run takes from `data.config` (resolution, batch size, keep_tokens, flip) are the ones the
samples, the log and the metadata show (issue 26)."""

from __future__ import annotations

import json

from PIL import Image
from safetensors import safe_open

from lorakit.cli import main
from tests.integration.test_train_e2e import tiny_model, write_run_toml

DATASET = """
[general]
flip_aug = true
keep_tokens = 1
caption_extension = ".txt"

[[datasets]]
resolution = 64
batch_size = 2
min_bucket_reso = 64
max_bucket_reso = 128

  [[datasets.subsets]]
  image_dir = "{images}"
  num_repeats = 1
"""


def test_settings_from_a_kohya_dataset_toml_are_the_ones_shown(tmp_path, capsys):
    paths = tiny_model("sdxl", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "sdxl", paths)
    images = next((tmp_path / "data").iterdir())
    (tmp_path / "dataset.toml").write_text(DATASET.format(images=images))
    text = run_toml.read_text()
    # [data] says otherwise (resolution 96, batch 1, no flip): the dataset TOML is what the run takes
    text = text.replace(f'dir = "{tmp_path / "data"}"', f'config = "{tmp_path / "dataset.toml"}"')
    text = text.replace("resolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n", "resolution = 96\n")
    text = text.replace("batch_size = 2", "batch_size = 1")
    run_toml.write_text(text)
    capsys.readouterr()
    assert main(["train", str(run_toml), "training.max_steps=2", "save.every_n_steps=0"]) == 0, \
        capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    run = tmp_path / "out" / "tiny"
    assert "from data.config: resolution 64x64, batch size 2, keep_tokens 1, flip_aug true" in out
    report = json.loads((run / "data_report.json").read_text())
    assert report["from_config"]["resolution"] == [64, 64] and report["from_config"]["batch_size"] == 2
    with safe_open(str(run / "tiny.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_resolution"], meta["ss_batch_size_per_device"], meta["ss_keep_tokens"], meta["ss_flip_aug"]) \
        == ("(64, 64)", "2", "1", "True")
    assert meta["modelspec.resolution"] == "64x64"
    sample = sorted((run / "samples").glob("tiny_after_*.png"))[0]
    img = Image.open(sample)
    assert img.size == (64, 64) and json.loads(img.info["lorakit"])["width"] == 64
