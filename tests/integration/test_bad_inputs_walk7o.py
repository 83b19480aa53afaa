"""The seventh session's second walk (walk7o): training options a kohya / ai-toolkit user combines. Each test is an
option that did nothing without saying so, or a combination that misbehaved; config- and unit-level checks."""

from __future__ import annotations

import random

import pytest

from lorakit.config.kohya_import import import_kohya_args
from lorakit.config.load import load_config
from lorakit.data.captions import CaptionPipeline, CaptionSettings
from lorakit.errors import ConfigError
from tests.integration.test_bad_inputs_walk import run_toml  # noqa: F401 (fixture)


def test_keep_tokens_without_shuffle_or_tag_dropout_is_refused_not_ignored(run_toml):
    """`data.keep_tokens = 2` alone trained exactly as without it (only shuffling and tag dropout move tags); it is
    refused naming what it needs, and taken where it acts."""
    # the pipeline leaves a caption as written unless it shuffles or drops tags: keep_tokens changes nothing there
    plain = "ohwx, a, b, c, d, e"
    for keep in (0, 2):
        assert CaptionPipeline(CaptionSettings(keep_tokens=keep)).make(plain, random.Random(0)) == plain
    with pytest.raises(ConfigError) as e:
        load_config(run_toml, ["data.keep_tokens=2"])
    assert str(e.value) == ("data.keep_tokens: only has an effect with data.shuffle_caption = true or "
                            "data.caption_tag_dropout_rate > 0; remove it or set that too")
    # caption dropout drops the whole caption: keep_tokens does nothing there either
    with pytest.raises(ConfigError, match="^data.keep_tokens: only has an effect"):
        load_config(run_toml, ["data.keep_tokens=2", "data.caption_dropout_rate=0.1"])
    assert load_config(run_toml, ["data.keep_tokens=2", "data.shuffle_caption=true"]).data.keep_tokens == 2
    assert load_config(run_toml, ["data.keep_tokens=2", "data.caption_tag_dropout_rate=0.2"]).data.keep_tokens == 2
    # `lorakit import kohya` does not carry an inert keep_tokens over (it would make the imported config refused)
    out, skipped = import_kohya_args({"keep_tokens": 1, "network_dim": 4}, "sdxl")
    assert "keep_tokens" not in out["data"] and "keep_tokens" in skipped
    out, skipped = import_kohya_args({"keep_tokens": 1, "shuffle_caption": True}, "sdxl")
    assert out["data"]["keep_tokens"] == 1 and "keep_tokens" not in skipped


def test_a_missing_mis_sized_or_empty_mask_is_refused_at_the_scan_before_any_model_loads(tmp_path):
    """`data.mask_dir` with a mask missing for one image, or of the wrong size, stopped the run only after the base
    model had loaded and every latent was encoded; an all-black mask (or, with `data.alpha_mask`, a fully transparent
    image) trained nothing from its image without a word. All are now one line at the dataset scan."""
    from PIL import Image

    from lorakit.config.schema import DataCfg
    from lorakit.data.scan import scan_dataset
    from lorakit.errors import DataError
    from lorakit.toy.world import write_demo_dataset

    data, masks = tmp_path / "data", tmp_path / "masks"
    write_demo_dataset(data, n=2, repeats=1)
    images = sorted(data.glob("*/*.png"))
    masks.mkdir()
    size = Image.open(images[0]).size
    Image.new("L", size, 255).save(masks / f"{images[0].stem}.png")
    cfg = DataCfg(dir=str(data), mask_dir=str(masks), resolution=64, min_bucket_reso=64, max_bucket_reso=128)
    with pytest.raises(DataError, match=rf"^data\.mask_dir: no mask for .*{images[1].name} in {masks}"):
        scan_dataset(cfg)
    Image.new("L", (size[0] // 2, size[1]), 255).save(masks / f"{images[1].stem}.png")
    with pytest.raises(DataError, match=rf"^data\.mask_dir: .*{images[1].stem}\.png is {size[0] // 2}x{size[1]}"):
        scan_dataset(cfg)
    Image.new("L", size, 0).save(masks / f"{images[1].stem}.png")
    with pytest.raises(DataError, match=rf"^data\.mask_dir: .*{images[1].stem}\.png is all black, so .* would train "
                                        "nothing"):
        scan_dataset(cfg)
    Image.new("RGB", size, (255, 0, 0)).save(masks / f"{images[1].stem}.png")  # red channel: all learned
    assert len(scan_dataset(cfg).items) == 2
    # alpha_mask: an image without alpha counts whole; a fully transparent one is refused
    alpha = DataCfg(dir=str(data), alpha_mask=True, resolution=64, min_bucket_reso=64, max_bucket_reso=128)
    assert Image.open(images[0]).mode != "RGBA" and len(scan_dataset(alpha).items) == 2
    Image.new("RGBA", size, (10, 20, 30, 0)).save(images[1])
    with pytest.raises(DataError, match=rf"^data\.alpha_mask: .*{images[1].name} is fully transparent"):
        scan_dataset(alpha)


def test_resume_of_a_run_started_from_network_weights_does_not_need_the_file_any_more(tmp_path):
    """`lorakit train --resume` of a run that started from `network.weights` loaded the base model, then stopped with
    `network.weights: … does not exist` when the starting file had been moved or deleted, though the resume state
    holds the LoRA (and overwrote what the file gave). A resuming run no longer reads the file."""
    from types import SimpleNamespace

    import torch

    from lorakit.config.schema import Config
    from lorakit.lora.inject import extract_lora
    from lorakit.train import placement

    class Tiny:  # the part of a family adapter injection uses: one denoiser of two Linears
        spec = SimpleNamespace(denoiser_name="unet")

        def __init__(self):
            self.unet = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))

        def lora_targets(self, network):
            return {"unet": {"0": network.rank, "1": network.rank}}

        def denoiser(self):
            return self.unet

        def text_encoder_modules(self):
            return {}

    cfg = Config()
    cfg.model.family = "sdxl"
    cfg.network.rank, cfg.network.alpha, cfg.network.weights = 4, 4.0, str(tmp_path / "gone.safetensors")

    def lora(resuming):
        modules, targets, _ = placement.inject(cfg, Tiny(), torch.float32, log=lambda s: None, resuming=resuming)
        return extract_lora(modules["unet"])

    with pytest.raises(ConfigError, match=r"^network\.weights: .*gone\.safetensors does not exist$"):
        lora(False)  # a new run still needs the file
    resumed = lora(True)
    cfg.network.weights = None
    fresh = lora(False)  # what a run without the key injects (seeded): the resume state then overwrites it
    assert resumed.keys() == fresh.keys() == {"0", "1"}
    for name, m in fresh.items():
        assert torch.equal(resumed[name].down, m.down) and torch.equal(resumed[name].up, m.up)


def test_resume_may_raise_max_epochs_as_it_may_raise_max_steps():
    """`lorakit train --resume DIR training.max_epochs=4` on a run of 2 epochs was refused as a changed setting
    ("training.max_epochs: 2 → 4 … --force-resume"), while `training.max_steps=…` extends a run. The epochs are the
    run's length too: not compared (also against a state written before, which recorded them); anything else is."""
    import json
    from types import SimpleNamespace

    from lorakit.config.schema import Config
    from lorakit.train import checkpoint, resume

    def fp(epochs, seed=42):
        cfg = Config()
        cfg.training.max_epochs, cfg.training.seed = epochs, seed
        return json.loads(json.dumps(resume.run_fingerprint(cfg, SimpleNamespace(items=[]))))  # as stored

    assert "max_epochs" not in fp(2)["training"] and fp(2) == fp(4)
    older = fp(2)
    older["training"]["max_epochs"] = 2  # a train_state.json written before this change
    assert checkpoint.fingerprint_diff(older, fp(4)) == ["training.max_epochs: 2 in the saved state, absent now"]
    assert resume._changed(older, fp(4)) == []
    assert resume._changed(older, fp(4, seed=7)) == ["training.seed: 42 → 7"]


def test_data_check_with_long_sdxl_captions_counts_against_max_token_length(run_toml, tmp_path, capsys):
    """`lorakit data check run.toml` with `data.max_token_length = 225` warned "caption is 216 tokens; the text
    encoder only sees the first 77", though the run encodes 225 tokens (three chunks of 75 between BOS and EOS)."""
    from lorakit.cli import main

    caption = next((tmp_path / "data").glob("*/*.txt"))
    caption.write_text(", ".join(f"tag{i} word" for i in range(45)))  # 216 CLIP tokens with BOS and EOS
    for setting, seen in ((75, 77), (150, 152), (225, None)):
        assert main(["data", "check", str(run_toml), f"data.max_token_length={setting}"]) == 0
        out = capsys.readouterr().out
        lines = [x.split() for x in out.splitlines() if "caption is 216 tokens" in x]
        assert lines == ([] if seen is None else [
            ["warning", *f"{caption.parent.name}/{caption.stem}.png".split(), *f"caption is 216 tokens; the text "
             f"encoder only sees the first {seen}".split()]]), out


@pytest.mark.parametrize(("name", "key", "value"), [("adafactor", "optimizer.betas", "[0.8,0.99]"),
                                                     ("adafactor", "optimizer.eps", "1e-6"),
                                                     ("lion", "optimizer.eps", "1e-6"),
                                                     ("came", "optimizer.eps", "1e-6")])
def test_an_optimizer_setting_the_optimizer_does_not_take_is_refused(run_toml, name, key, value):
    """`optimizer.name = "adafactor"` with `optimizer.betas` / `optimizer.eps`, or Lion / CAME with `optimizer.eps`:
    accepted, and never passed to the optimizer (its package has no such argument). Refused naming the key; the
    optimizers that take them still do."""
    import torch

    from lorakit.train import optim

    with pytest.raises(ConfigError, match=rf"^{key}: only has an effect with "):
        load_config(run_toml, [f"optimizer.name={name}", f"{key}={value}"])
    # independent: the optimizer built with the value keeps none of it (what the key would have set is not there)
    built = optim.build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], name, 1e-3, 0.0, [0.8, 0.99],
                                  1e-6).defaults
    if key == "optimizer.eps":
        assert built.get("eps") != 1e-6
    else:
        assert tuple(built.get("betas") or ())[:2] != (0.8, 0.99) and built.get("beta1") is None
    assert load_config(run_toml, ["optimizer.name=adamw", f"{key}={value}"]).optimizer.name == "adamw"
    assert load_config(run_toml, ["optimizer.name=prodigy", "optimizer.lr=1", "optimizer.eps=1e-6"]).optimizer.eps \
        == 1e-6


def test_kohyas_conditioning_data_dir_in_a_dataset_toml_points_at_data_mask_dir(tmp_path):
    """A kohya dataset TOML with `conditioning_data_dir` (sd-scripts' masked-loss folder) was refused as "not a
    dataset-config key (typo?)"; it is a real kohya key, so the line says what lorakit offers instead."""
    from lorakit.config.schema import DataCfg
    from lorakit.data.kohya_toml import load_dataset_toml

    (tmp_path / "1_a").mkdir()
    toml = tmp_path / "dataset.toml"
    toml.write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "1_a"\nconditioning_data_dir = "masks"\n')
    with pytest.raises(ConfigError) as e:
        load_dataset_toml(toml, DataCfg())
    assert str(e.value) == ("dataset.toml: datasets[0].subsets[0].conditioning_data_dir: per-subset mask folders are "
                            "not offered; remove it and set data.mask_dir in the run config (one folder of masks named "
                            "like the images)")


def test_validation_dir_images_need_no_masks(tmp_path):
    """The scan's mask check covers the training images only: a `data.validation_dir` image (validation loss is
    never masked) needs no mask in `data.mask_dir`."""
    from PIL import Image

    from lorakit.config.schema import DataCfg
    from lorakit.data.scan import scan_dataset
    from lorakit.data.validation import scan_validation_dir
    from lorakit.toy.world import write_demo_dataset

    write_demo_dataset(tmp_path / "data", n=1, repeats=1)
    write_demo_dataset(tmp_path / "val", n=2, repeats=1)
    (tmp_path / "val" / next((tmp_path / "val").iterdir()).name / "000.png").unlink()  # not the training image
    (tmp_path / "masks").mkdir()
    image = next((tmp_path / "data").glob("*/*.png"))
    Image.new("L", Image.open(image).size, 255).save(tmp_path / "masks" / f"{image.stem}.png")
    cfg = DataCfg(dir=str(tmp_path / "data"), mask_dir=str(tmp_path / "masks"), resolution=64, min_bucket_reso=64,
                  max_bucket_reso=128, validation_dir=str(tmp_path / "val"))
    val = scan_validation_dir(scan_dataset(cfg), cfg, 64)
    assert [it.path.name for it in val.items] == ["001.png"]  # no mask for it in data.mask_dir: none needed


def test_resume_of_a_finished_epochs_run_is_refused_unless_its_epochs_are_raised(tmp_path, capsys):
    """`lorakit train --resume DIR` of a finished run counted in `training.max_epochs` loaded the model and wrote its
    LoRA again (a finished run counted in steps is refused in one line); now refused alike, naming the epochs."""
    from types import SimpleNamespace

    from lorakit.errors import TrainingError
    from lorakit.train import resume
    from lorakit.train.rundir import RunDir

    run = RunDir(tmp_path / "ohwx", "ohwx")
    run.root.mkdir()
    (run.root / "config.toml").write_text("[training]\nmax_epochs = 4\n")
    (run.root / "run.json").write_text('{"status": "finished", "step": 8, "max_steps": 8}')

    def cfg(epochs):
        return SimpleNamespace(training=SimpleNamespace(max_steps=1500, max_epochs=epochs))

    for epochs in (4, 3):  # the same epochs, or fewer
        with pytest.raises(TrainingError) as e:
            resume.check_not_finished(run, cfg(epochs))
        assert str(e.value) == (f"--resume: {run.root} finished at step 8 (training.max_epochs = {epochs}); nothing "
                                f"was changed (its LoRA: {run.root / 'ohwx.safetensors'}). To train it further, raise "
                                f"the epochs: `lorakit train --resume {run.root} training.max_epochs={2 * epochs}`")
    resume.check_not_finished(run, cfg(5))  # more epochs: the resume goes on
    (run.root / "run.json").write_text('{"status": "interrupted", "step": 6}')
    resume.check_not_finished(run, cfg(4))  # an interrupted run goes on
