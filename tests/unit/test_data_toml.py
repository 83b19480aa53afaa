"""kohya dataset TOML: fall-back order, unsupported and unknown keys, paths, multi-dataset groups."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lorakit.config.schema import DataCfg
from lorakit.data.kohya_toml import load_dataset_toml
from lorakit.data.scan import scan_dataset
from lorakit.errors import ConfigError
from tests.unit.data_corpus import simple_dataset


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "dataset.toml"
    p.write_text(textwrap.dedent(body))
    return p


@pytest.fixture
def dirs(tmp_path):
    simple_dataset(tmp_path, {"1_a": [(64, 64)] * 2, "1_b": [(96, 64)] * 3})
    return tmp_path


def test_fallback_subset_dataset_general_datacfg(dirs):
    p = write(dirs, """
        [general]
        shuffle_caption = true
        keep_tokens = 1
        caption_prefix = "gen"
        [[datasets]]
        resolution = [128, 96]
        batch_size = 2
        keep_tokens = 2
        [[datasets.subsets]]
        image_dir = "1_a"
        num_repeats = 5
        keep_tokens = 3
        class_tokens = "ohwx dog"
        [[datasets.subsets]]
        image_dir = "1_b"
        is_reg = true
        """)
    data = DataCfg(caption_suffix="cfg", flip_aug=True, min_bucket_reso=64, bucket_reso_steps=32)
    groups, subs = load_dataset_toml(p, data)
    assert groups[0].buckets.resolution == (128, 96) and groups[0].batch_size == 2
    assert groups[0].buckets.min_reso == 64 and groups[0].buckets.max_reso == 2048   # DataCfg values
    a, b = subs
    assert (a.repeats, a.caption.keep_tokens, a.class_tokens, a.is_reg) == (5, 3, "ohwx dog", False)
    assert (b.repeats, b.caption.keep_tokens, b.class_tokens, b.is_reg) == (1, 2, "", True)
    for s in subs:
        assert s.caption.shuffle and s.caption.prefix == "gen" and s.caption.suffix == "cfg" and s.flip_aug
    assert a.dir == dirs / "1_a"                                  # relative to the TOML's folder


def test_unsupported_key_is_named(dirs):
    p = write(dirs, """
        [[datasets]]
        [[datasets.subsets]]
        image_dir = "1_a"
        [[datasets.subsets]]
        image_dir = "1_b"
        face_crop_aug_range = [2.0, 4.0]
        """)
    with pytest.raises(ConfigError) as ei:
        load_dataset_toml(p, DataCfg())
    assert str(ei.value) == ("dataset.toml: datasets[0].subsets[1].face_crop_aug_range is not supported by "
                             "lorakit yet; remove it")


def test_noop_values_of_unsupported_keys_are_accepted(dirs):
    p = write(dirs, """
        [general]
        color_aug = false
        random_crop = false
        caption_dropout_every_n_epochs = 0
        [[datasets]]
        [[datasets.subsets]]
        image_dir = "1_a"
        """)
    load_dataset_toml(p, DataCfg())
    p = write(dirs, "[general]\nrandom_crop = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = '1_a'\n")
    with pytest.raises(ConfigError, match=r"general.random_crop is not supported"):
        load_dataset_toml(p, DataCfg())


@pytest.mark.parametrize("body,match", [
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = '1_a'\nnum_repeat = 2\n",
     r"datasets\[0\].subsets\[0\].num_repeat is not a dataset-config key"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = '1_a'\nresolution = 512\n",
     r"datasets\[0\].subsets\[0\].resolution is not allowed here"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = '1_a'\nnum_repeats = 0\n",
     r"num_repeats: must be an integer >= 1"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'nope'\n", r"image_dir: folder 'nope' not found"),
    ("[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n", r"image_dir is required"),
    ("[[datasets]]\nresolution = 'big'\n[[datasets.subsets]]\nimage_dir = '1_a'\n", r"resolution"),
    ("[foo]\n", r"top-level key 'foo'"),
    ("[[datasets]\n", r"not valid TOML"),
    ("[general]\n", r"at least one \[\[datasets\]\]"),
])
def test_errors_name_the_key(dirs, body, match):
    with pytest.raises(ConfigError, match=match):
        load_dataset_toml(write(dirs, body), DataCfg())


def test_scan_with_toml_two_groups(dirs):
    p = write(dirs, """
        [general]
        min_bucket_reso = 64
        bucket_reso_steps = 32
        [[datasets]]
        resolution = 64
        batch_size = 2
        [[datasets.subsets]]
        image_dir = "1_a"
        class_tokens = "a"
        [[datasets]]
        resolution = 128
        max_bucket_reso = 256
        [[datasets.subsets]]
        image_dir = "1_b"
        num_repeats = 4
        """)
    ds = scan_dataset(DataCfg(config=str(p)), divisibility=32)
    assert [(it.group, it.bucket) for it in ds.items] == [(0, (64, 64))] * 2 + [(1, (160, 96))] * 3
    assert ds.report.steps_per_epoch(batch_size=1) == 1 + 12      # group 0: 2 samples / bs 2; group 1: 12 / 1


def test_toml_subset_without_class_tokens_gets_empty_caption(tmp_path):
    from tests.unit.data_corpus import rgb, save
    save(rgb(64, 64), tmp_path / "imgs" / "a.png")
    p = write(tmp_path, "[general]\nmin_bucket_reso = 64\nbucket_reso_steps = 32\nresolution = 64\n"
                        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\nnum_repeats = 3\n")
    ds = scan_dataset(DataCfg(config=str(p)), divisibility=32)
    (it,) = ds.items
    assert (it.caption, it.caption_source, it.repeats) == ("", "empty", 3)
    assert ds.report.problems[0].reason == "missing caption (a.txt): trained with an empty caption"


def test_config_with_dir_or_reg_dir_refused(dirs):
    p = write(dirs, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '1_a'\n")
    with pytest.raises(ConfigError, match="^data.reg_dir: not used when data.config is set"):
        scan_dataset(DataCfg(config=str(p), reg_dir=str(dirs)))
    with pytest.raises(ConfigError, match="^data.dir: not used"):
        scan_dataset(DataCfg(config=str(p), dir=str(dirs)))
