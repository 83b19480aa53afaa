"""The ModelAdapter contract, run over every registered family on its tiny checkpoint.

Adding a family package makes these tests run for it with no edit here: each family must provide
``write_tiny_checkpoint(dir)`` (in its package or its ``load`` module) returning the roles its ModelCfg needs. A family
outside lorakit joins through ``LORAKIT_FAMILIES`` (e.g. ``LORAKIT_FAMILIES=tests.families.tinydit``).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from lorakit.config.load import load_config
from lorakit.lora.inject import enable_lora, extract_lora, inject_lora
from lorakit.models.base import Batch, ModelSpec, SamplePrompt
from lorakit.models.registry import families, get_family


@pytest.fixture(scope="module", params=families())
def loaded(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    package = get_family(family)
    writer = getattr(package, "write_tiny_checkpoint", None) or \
        importlib.import_module(f"{package.__name__}.load").write_tiny_checkpoint
    paths = writer(folder / "model")
    model = {"family": family, "checkpoint": str(paths["checkpoint"])}
    for role in ("config_dir", "clip_l", "t5xxl", "ae", "text_encoder", "vae"):
        if role.replace("_dir", "") in paths:
            model[role] = str(paths[role.replace("_dir", "")])
    if "tokenizer" in paths:
        model["tokenizer_dir"] = str(paths["tokenizer"])
    (folder / "data").mkdir()
    cfg = load_config(None, data={"model": model, "data": {"dir": str(folder / "data"), "resolution": 64,
                                                                           "min_bucket_reso": 64},
                                  "network": {"rank": 4, "alpha": 2.0},
                                  "training": {"mixed_precision": "no", "device": "cpu"}})
    adapter = get_family(family).Adapter(cfg)
    adapter.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    return family, cfg, adapter


def make_batch(adapter, captions: list[str]) -> Batch:
    torch.manual_seed(0)
    pixels = torch.rand(len(captions), 3, 64, 64) * 2 - 1
    latents = adapter.encode_images(pixels)
    return Batch(latents=latents, text=adapter.encode_text(captions), original_sizes=[(64, 64)] * len(captions),
                 crop_top_lefts=[(0, 0)] * len(captions), target_sizes=[(64, 64)] * len(captions),
                 loss_weight=torch.ones(len(captions)), captions=captions)


def test_spec_is_frozen_data(loaded):
    family, _, adapter = loaded
    spec = get_family(family).SPEC
    assert isinstance(spec, ModelSpec) and spec.family == family and adapter.spec is spec
    with pytest.raises(Exception):
        spec.family = "x"  # frozen


def test_encoders_shapes_and_identity(loaded):
    _, _, adapter = loaded
    batch = make_batch(adapter, ["a red circle", "a blue square on a green background"])
    assert batch.latents.shape[:2] == (2, adapter.spec.latent_channels)
    assert all(v.shape[0] == 2 and v.device.type == "cpu" for v in batch.text.values())
    ident = adapter.identity()
    assert {"vae", "text"} <= set(ident) and all(isinstance(v, str) and v for v in ident.values())


def test_noise_predict_target_agree_and_zero_lora_is_identity(loaded):
    family, cfg, adapter = loaded
    batch = make_batch(adapter, ["a red circle", "a zkx"])
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(batch.latents.shape, generator=g)
    noised = adapter.noise(batch.latents, noise, batch, cfg.training, g)
    assert noised.weight.shape == (2,) and noised.timesteps.shape[0] == 2
    with torch.no_grad():
        base = adapter.predict(noised, batch)
    assert base.shape == noised.target.shape and torch.isfinite(base).all()
    targets = adapter.lora_targets(cfg.network)
    assert set(targets) <= {"unet", "transformer", "te1", "te2"} and all(targets.values())
    denoiser = adapter.denoiser()
    component = next(iter(targets))
    inject_lora(denoiser, targets[component], cfg.network.alpha, 0.0)
    with torch.no_grad():
        same = adapter.predict(noised, batch)
    assert torch.equal(base, same), "a fresh LoRA (up = 0) must reproduce the base model exactly"
    lora = extract_lora(denoiser)
    with torch.no_grad():
        for m in denoiser.modules():
            if hasattr(m, "lora_B"):
                for layer in m.lora_B.values():
                    layer.weight.normal_(0, 0.1)
        changed = adapter.predict(noised, batch)
    assert not torch.allclose(base, changed)
    enable_lora(denoiser, False)
    with torch.no_grad():
        off = adapter.predict(noised, batch)
    enable_lora(denoiser, True)
    assert torch.equal(base, off)
    for fmt in ("kohya", "diffusers"):
        sd = adapter.export({component: extract_lora(denoiser)}, fmt)
        assert sd and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
    assert len(lora) == len(targets[component])


def test_metadata_strings_and_sample_image(loaded):
    family, cfg, adapter = loaded
    meta = adapter.metadata(cfg)
    assert meta and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    # a family of several sizes refines the version per size (FLUX.2: flux_2_klein_4b, as musubi-tuner writes)
    assert meta.get("ss_base_model_version", "").startswith(adapter.spec.metadata_base_version)
    img = adapter.sample(SamplePrompt(prompt="a red circle", width=64, height=64, steps=2, seed=3,
                                      cfg_scale=adapter.spec.default_cfg_scale), torch.Generator().manual_seed(3))
    again = adapter.sample(SamplePrompt(prompt="a red circle", width=64, height=64, steps=2, seed=3,
                                        cfg_scale=adapter.spec.default_cfg_scale), torch.Generator().manual_seed(3))
    assert img.size == (64, 64) and img.tobytes() == again.tobytes()
