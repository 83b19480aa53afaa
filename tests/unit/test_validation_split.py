"""The validation set: which images data.validation_split holds out (fixed by the seed and the file names, never
trained on), data.validation_dir (scanned like training data; an image also in training refused), the config rules,
the validation noise seeds, and loss.png with validation and learning-rate series."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from lorakit.config.load import load_config
from lorakit.config.schema import DataCfg
from lorakit.data.scan import scan_dataset
from lorakit.data.validation import held_out_count, make_validation
from lorakit.errors import ConfigError, DataError
from lorakit.toy.world import write_demo_dataset, write_reg_dataset
from lorakit.train.metrics import plot_loss
from lorakit.train.validation import best_of, noise_seed


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("split") / "data"
    write_demo_dataset(root, n=10, repeats=2)
    return root


def split(root, fraction, seed, **kw):
    data = DataCfg(dir=str(root), resolution=64, min_bucket_reso=64, max_bucket_reso=128, validation_split=fraction,
                   **kw)
    return make_validation(scan_dataset(data, divisibility=8), data, seed, 8)


def expected_held(root, fraction, seed) -> list[str]:
    """Independently: the images whose sha256(seed|folder/file) sort first."""
    names = sorted(f"{p.parent.name}/{p.name}" for p in root.rglob("*.png"))
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}|{n}".encode()).hexdigest())
    return sorted(ranked[:held_out_count(fraction, len(names))])


def test_split_is_fixed_by_seed_and_file_names_and_never_trained_on(data_dir, tmp_path):
    train, val = split(data_dir, 0.3, 42)
    assert val.names() == expected_held(data_dir, 0.3, 42) and len(val) == 3
    held = {str(it.path) for it in val.items}
    assert not held & {str(it.path) for it in train.items} and len(train.items) == 7
    assert all(not held & {str(it.path) for it in s.items} for s in train.subsets)
    assert sum(s.images for s in train.report.subsets) == 7
    # the same images held out from a copy elsewhere; another seed holds out others
    copy = tmp_path / "elsewhere"
    shutil.copytree(data_dir, copy)
    assert split(copy, 0.3, 42)[1].names() == val.names()
    assert split(data_dir, 0.3, 7)[1].names() == expected_held(data_dir, 0.3, 7) != val.names()
    assert val.captions == [it.caption for it in val.items]       # no prefix/suffix set: the raw caption
    assert held_out_count(0.01, 10) == 1 and held_out_count(0.99, 10) == 9


def test_regularisation_images_are_never_held_out(tmp_path):
    write_demo_dataset(tmp_path / "d", n=4, repeats=1)
    write_reg_dataset(tmp_path / "r", n=4)
    train, val = split(tmp_path / "d", 0.5, 1, reg_dir=str(tmp_path / "r"))
    assert len(val) == 2 and not any(it.is_reg for it in val.items)
    assert sum(it.is_reg for it in train.items) >= 4


def test_validation_dir_scanned_and_overlap_refused(data_dir, tmp_path):
    vroot = tmp_path / "val"
    write_demo_dataset(vroot, n=2, repeats=1, seed=999)
    data = DataCfg(dir=str(data_dir), resolution=64, min_bucket_reso=64, max_bucket_reso=128,
                   validation_dir=str(vroot))
    dataset = scan_dataset(data, divisibility=8)
    train, val = make_validation(dataset, data, 42, 8)
    assert train is dataset and len(val) == 2 and all(it.bucket == (64, 64) for it in val.items)
    one = next(iter(sorted(data_dir.rglob("*.png"))))
    shutil.copy(one, next(vroot.iterdir()) / "copy.png")
    with pytest.raises(DataError, match="data.validation_dir: .*copy.png is also a training image"):
        make_validation(dataset, data, 42, 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="^data.validation_dir: no usable image"):
        make_validation(dataset, DataCfg(dir=str(data_dir), validation_dir=str(empty)), 42, 8)


@pytest.mark.parametrize("overrides, words", [
    (["save.keep_best=true"], "save.keep_best: only has an effect with a validation set"),
    (["validation.every_n_steps=5"], "validation.every_n_steps: only has an effect with a validation set"),
    (["data.validation_split=0.2", "data.validation_dir=v"], "data.validation_dir: set either"),
    (["data.validation_split=1.0"], "data.validation_split"),
    (["validation.timesteps=0", "data.validation_split=0.2"], "validation.timesteps"),
])
def test_config_rules(tmp_path, overrides, words):
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nfamily = "sdxl"\ncheckpoint = "m.safetensors"\n[data]\ndir = "d"\n')
    with pytest.raises(ConfigError, match=words):
        load_config(toml, overrides)
    cfg = load_config(toml, ["data.validation_split=0.2", "save.keep_best=true", "validation.every_n_steps=5"])
    assert cfg.validation.every_n_steps == 5 and cfg.save.keep_best


def test_noise_seed_and_best_step():
    assert noise_seed(42, "a/b.png") == noise_seed(42, "a/b.png") != noise_seed(43, "a/b.png")
    assert 0 <= noise_seed(1, "x") < 2**63
    rows = [{"step": 0, "val_loss": 0.1}, {"step": 1, "loss": 0.5}, {"step": 2, "val_loss": 0.4},
            {"step": 4, "val_loss": 0.3}, {"step": 6, "val_loss": 0.3}, {"step": 8, "val_loss": None}]
    assert best_of(rows) == (4, 0.3)                  # step 0 (the untrained base) is not a candidate; ties: earliest
    assert best_of([{"step": 0, "val_loss": 1.0}]) is None


def test_loss_png_draws_validation_and_learning_rate(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-4 * s} for s in range(1, 11)]
    only_train = plot_loss(rows, tmp_path / "a.png")
    both = plot_loss(rows + [{"step": s, "val_loss": 0.5} for s in (0, 5, 10)], tmp_path / "b.png")
    a, b = np.asarray(Image.open(only_train).convert("RGB")), np.asarray(Image.open(both).convert("RGB"))
    assert a.shape == b.shape == (360, 640, 3)
    red = lambda x: ((x[..., 0] > 180) & (x[..., 1] < 110) & (x[..., 2] < 80)).sum()  # the validation colour
    assert red(b) > red(a) + 50
    green = lambda x: ((x[..., 1] > 120) & (x[..., 0] < 90) & (x[..., 2] < 90)).sum()  # the learning-rate axis
    assert green(a) > 50
    assert plot_loss([{"step": 1, "loss": 1.0}], tmp_path / "c.png") is None
