"""training.max_epochs / save.every_n_epochs (issue 23): steps from images × repeats / batch, as kohya counts them;
epoch and step keys set together are refused with one line; the kohya importer maps the epoch options."""

import math

import pytest
from PIL import Image

from lorakit.config.kohya_import import import_kohya_args
from lorakit.config.load import load_config
from lorakit.data.scan import scan_dataset
from lorakit.data.stream import BatchStream
from lorakit.errors import ConfigError
from lorakit.train import epochs


def _base(tmp_path, **training):
    return {"model": {"family": "sdxl", "checkpoint": str(tmp_path / "x.safetensors")},
            "data": {"dir": str(tmp_path / "data"), "resolution": 64, "min_bucket_reso": 64,
                     "max_bucket_reso": 128, "bucket_reso_steps": 64},
            "training": training}


def _dataset(tmp_path):
    # 5 square images (3 repeats) and 3 wide ones (2 repeats): two buckets
    for folder, n, size in (("3_ohwx cat", 5, (64, 64)), ("2_ohwx dog", 3, (128, 64))):
        d = tmp_path / "data" / folder
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, (i * 20, 50, 90)).save(d / f"{i}.png")
            (d / f"{i}.txt").write_text("ohwx")


@pytest.mark.parametrize("batch,accum", [(1, 1), (2, 1), (4, 3)])
def test_steps_from_images_repeats_and_batch(tmp_path, batch, accum):
    _dataset(tmp_path)
    cfg = load_config(data=_base(tmp_path, max_epochs=3, batch_size=batch, gradient_accumulation=accum))
    cfg.save.every_n_epochs = 2
    ds = scan_dataset(cfg.data, divisibility=64)
    stream = BatchStream(ds, batch, cfg.training.seed)
    # independent count: per bucket ceil(images × repeats / batch) batches, optimizer steps ceil(batches / accum)
    batches = math.ceil(5 * 3 / batch) + math.ceil(3 * 2 / batch)
    per_epoch = math.ceil(batches / accum)
    out = epochs.apply(cfg, stream.steps_per_epoch, log=lambda s: None)
    assert stream.steps_per_epoch == batches
    assert out.training.max_steps == 3 * per_epoch and out.save.every_n_steps == 2 * per_epoch
    assert cfg.training.max_steps == 1500 and cfg.save.every_n_steps == 500  # the loaded config is not written


def test_epochs_with_steps_set_by_hand_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.max_epochs: set either training\.max_epochs or "
                                          r"training\.max_steps, not both"):
        load_config(data=_base(tmp_path, max_epochs=3, max_steps=100))
    d = _base(tmp_path)
    d["save"] = {"every_n_epochs": 1, "every_n_steps": 100}
    with pytest.raises(ConfigError, match=r"save\.every_n_epochs: set either"):
        load_config(data=d)
    # a preset's max_steps gives way to the user's max_epochs
    cfg = load_config(data={**_base(tmp_path, max_epochs=2), "preset": "sdxl/character"})
    assert cfg.training.max_epochs == 2
    with pytest.raises(ConfigError, match=r"optimizer\.scheduler: .*adamw_schedulefree"):
        load_config(data={**_base(tmp_path), "optimizer": {"name": "adamw_schedulefree", "scheduler": "cosine"}})


def test_kohya_epoch_options_and_network_weights_import():
    out, skipped = import_kohya_args({"max_train_epochs": 10, "max_train_steps": 1600, "save_every_n_epochs": 2,
                                      "network_weights": "old.safetensors"}, family="sdxl")
    assert out["training"] == {"max_epochs": 10} and out["save"] == {"every_n_epochs": 2}
    # no network_train_unet_only: the text-encoder LoRA trains, as in sd-scripts (tests/unit/test_fixes9.py)
    assert out["network"] == {"weights": "old.safetensors", "train_text_encoder": True}
    assert skipped == ["max_train_steps"]


def test_unbuilt_network_types_and_bad_token_lengths_are_refused_in_one_line(tmp_path):
    for kind in ("loha", "lokr", "dora"):  # built for SDXL/SD 1.5 (tests/unit/test_lora_variants.py), refused elsewhere
        assert load_config(data={**_base(tmp_path), "network": {"type": kind}}).network.type == kind
        with pytest.raises(ConfigError, match=rf'^network\.type: "{kind}" is built for sdxl and sd15'):
            load_config(data={**_base(tmp_path), "model": {"family": "flux1", "checkpoint": "x.safetensors"},
                              "network": {"type": kind}})
    with pytest.raises(ConfigError, match=r"^network\.type: \"locon\" trains the 3x3 convolutions too"):
        load_config(data={**_base(tmp_path), "network": {"type": "locon"}})
    assert load_config(data={**_base(tmp_path), "network": {"type": "locon", "conv_rank": 8}}).network.conv_rank == 8
    with pytest.raises(ConfigError, match=r"^data\.max_token_length: must be 75, 150 or 225"):
        load_config(data={**_base(tmp_path), "data": {**_base(tmp_path)["data"], "max_token_length": 100}})
    with pytest.raises(ConfigError, match=r"^data\.mask_dir: set either data\.alpha_mask or data\.mask_dir"):
        load_config(data={**_base(tmp_path), "data": {**_base(tmp_path)["data"], "alpha_mask": True,
                                                      "mask_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"data\.max_token_length.*flux1"):  # SDXL only
        load_config(data={**_base(tmp_path), "model": {"family": "flux1", "checkpoint": "x.safetensors"},
                          "data": {**_base(tmp_path)["data"], "max_token_length": 150}})


@pytest.mark.parametrize("extra", [{"training": {"max_epochs": 3}}, {"save": {"every_n_epochs": 2}}])
def test_a_config_in_epochs_survives_its_own_config_toml(tmp_path, extra):
    """The run folder's config.toml (dump_toml) of an epoch-based config loads back to the same config: the step key
    the epoch key replaces is not written (a --resume of such a run would otherwise be refused as setting both)."""
    from lorakit.config.load import dump_toml

    cfg = load_config(None, data={"model": {"family": "sdxl", "checkpoint": "/m.safetensors"}, "data": {"dir": "/d"},
                                  **extra})
    text = dump_toml(cfg)
    import tomllib

    written = tomllib.loads(text)
    assert "max_steps" not in written["training"] if "training" in extra else "every_n_steps" not in written["save"]
    (tmp_path / "config.toml").write_text(text)
    assert load_config(tmp_path / "config.toml") == cfg
