"""The FLUX.1 adapter on tiny single files: conventions checked against diffusers' FluxPipeline helpers."""

from __future__ import annotations

import math

import pytest
import torch

from lorakit.config.schema import Config
from lorakit.models.base import Batch, SamplePrompt
from lorakit.models.flux1 import SPEC, Adapter
from lorakit.models.flux1.load import write_tiny_checkpoint


def _config(files, **training) -> Config:
    cfg = Config()
    cfg.model.family = "flux1"
    cfg.model.checkpoint = str(files["checkpoint"])
    cfg.model.clip_l, cfg.model.t5xxl, cfg.model.ae = str(files["clip_l"]), str(files["t5xxl"]), str(files["ae"])
    cfg.model.config_dir = str(files["config"])
    cfg.training.t5_max_length = 16
    for k, v in training.items():
        setattr(cfg.training, k, v)
    return cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("flux"), "dev", seed=2, dtype=torch.float32)


@pytest.fixture(scope="module")
def adapter(files):
    a = Adapter(_config(files))
    a.load(a.cfg.model, a.cfg.memory, torch.device("cpu"), torch.float32)
    return a


def _batch(text, b=1, h=8, w=8):
    return Batch(latents=torch.zeros(b, 16, h, w), text=text, original_sizes=[(64, 64)] * b,
                 crop_top_lefts=[(0, 0)] * b, target_sizes=[(64, 64)] * b, loss_weight=torch.ones(b))


def test_pack_and_ids_match_flux_pipeline():
    from diffusers import FluxPipeline

    from lorakit.diffusion.packing import image_position_ids, pack_latents, unpack_latents
    x = torch.randn(2, 16, 6, 10)
    ref = FluxPipeline._pack_latents(x, 2, 16, 6, 10)
    assert torch.equal(pack_latents(x), ref)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32)
    assert torch.equal(image_position_ids(6, 10), ids)
    assert torch.equal(unpack_latents(ref, 6, 10), FluxPipeline._unpack_latents(ref, 48, 80, 8))


def test_predict_at_step0_equals_plain_transformer(adapter):
    """With LoRA injected (up = 0) predict() is the plain transformer called the FluxPipeline way."""
    from diffusers import FluxPipeline

    from lorakit.lora.inject import inject_lora
    text = adapter.encode_text(["a photo of ohwx", "a cat"])
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 16, 8, 12, generator=g), torch.randn(2, 16, 8, 12, generator=g)
    batch = _batch(text, 2, 8, 12)
    noised = adapter.noise(x0, eps, batch, adapter.cfg.training, torch.Generator().manual_seed(1))
    tr = adapter.denoiser()
    with torch.no_grad():                         # reference: FluxPipeline's own packing, ids and t/1000
        packed = FluxPipeline._pack_latents(noised.model_input, 2, 16, 8, 12)
        t = noised.timesteps * 1000
        ref = tr(hidden_states=packed, timestep=t / 1000, guidance=torch.full([2], 1.0),
                 pooled_projections=text["pooled"], encoder_hidden_states=text["t5"], txt_ids=torch.zeros(16, 3),
                 img_ids=FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32), return_dict=False)[0]
        ref = FluxPipeline._unpack_latents(ref, 64, 96, 8)
        plain = adapter.predict(noised, batch)
        targets = adapter.lora_targets(adapter.cfg.network)["transformer"]
        inject_lora(tr, targets, adapter.cfg.network.alpha, 0.0, seed=0)
        with_lora = adapter.predict(noised, batch)
    assert plain.shape == x0.shape
    torch.testing.assert_close(plain, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_lora, plain, rtol=0, atol=0)
    # another bucket shape in between (the adapter keeps the position ids per shape): its own ids, and the first
    # shape's output unchanged afterwards
    x1 = torch.randn(2, 16, 8, 8, generator=g)
    square = adapter.noise(x1, torch.randn(2, 16, 8, 8, generator=g), _batch(text, 2, 8, 8), adapter.cfg.training,
                           torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_sq = tr(hidden_states=FluxPipeline._pack_latents(square.model_input, 2, 16, 8, 8),
                    timestep=square.timesteps, guidance=torch.full([2], 1.0), pooled_projections=text["pooled"],
                    encoder_hidden_states=text["t5"], txt_ids=torch.zeros(16, 3),
                    img_ids=FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32),
                    return_dict=False)[0]
        torch.testing.assert_close(adapter.predict(square, _batch(text, 2, 8, 8)),
                                   FluxPipeline._unpack_latents(ref_sq, 64, 64, 8), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(adapter.predict(noised, batch), plain, rtol=0, atol=0)
    # guidance really enters (dev): a different guidance value changes the output
    adapter.cfg.training.guidance_scale = 4.0
    try:
        with torch.no_grad():
            assert not torch.allclose(adapter.predict(noised, batch), plain)
    finally:
        adapter.cfg.training.guidance_scale = 1.0


def test_noise_is_rectified_flow_with_flux_shift(adapter):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 16, 8, 8, generator=g), torch.randn(3, 16, 8, 8, generator=g)
    n = adapter.noise(x0, eps, _batch({}, 3), adapter.cfg.training, torch.Generator().manual_seed(7))
    s = torch.sigmoid(torch.randn(3, generator=torch.Generator().manual_seed(7)))
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (16 - 256)            # 16 packed tokens at 8x8 latents
    sigma = math.exp(mu) / (math.exp(mu) + 1 / s - 1)
    torch.testing.assert_close(n.timesteps, sigma)
    torch.testing.assert_close(n.model_input, (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * eps)
    torch.testing.assert_close(n.target, eps - x0)
    assert torch.equal(n.weight, torch.ones(3))


def test_encode_text_and_images(adapter):
    text = adapter.encode_text(["a photo", "b"])
    assert text["pooled"].shape == (2, 32) and text["t5"].shape == (2, 16, 32)
    n = len(adapter.comps.t5_tokenizer("b").input_ids)                # pieces + eos, then padding
    assert text["t5_mask"][1].tolist() == [1] * n + [0] * (16 - n)
    ids = adapter.comps.clip_tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    eos = int((ids[0] == 49407).nonzero()[0])
    with torch.no_grad():
        hidden = adapter.comps.clip_l(ids).last_hidden_state
    torch.testing.assert_close(text["pooled"][0], hidden[0, eos])
    px = torch.rand(1, 3, 64, 48) * 2 - 1
    lat = adapter.encode_images(px)
    assert lat.shape == (1, 16, 8, 6)
    with torch.no_grad():
        z = adapter.comps.ae.encode(px).latent_dist.mean
    torch.testing.assert_close(lat, (z - 0.1159) * 0.3611)
    with pytest.raises(ValueError, match="multiple of 16"):
        adapter.encode_images(torch.zeros(1, 3, 64, 40))


def test_t5_length_defaults(files):
    cfg = _config(files)
    cfg.training.t5_max_length = None
    assert Adapter(cfg).t5_length() == 512
    cfg.model.variant = "schnell"
    assert Adapter(cfg).t5_length() == 256


def test_sample_and_metadata(adapter):
    p = SamplePrompt(prompt="a cat", width=64, height=48, steps=2, seed=1, cfg_scale=1.0, guidance=3.5)
    a = adapter.sample(p, torch.Generator().manual_seed(1))
    b = adapter.sample(p, torch.Generator().manual_seed(1))
    assert a.size == (64, 48) and a.tobytes() == b.tobytes()
    p2 = SamplePrompt(prompt="a cat", negative="blurry", width=64, height=48, steps=2, seed=1, cfg_scale=3.0)
    assert adapter.sample(p2, torch.Generator().manual_seed(1)).tobytes() != a.tobytes()
    md = adapter.metadata(adapter.cfg)
    assert md["modelspec.architecture"] == "flux-1-dev/lora" and md["ss_base_model_version"] == "flux1"
    assert md["ss_model_prediction_type"] == "raw" and md["ss_timestep_sampling"] == "flux_shift"
    assert all(isinstance(v, str) for v in md.values())
    assert SPEC.family == "flux1" and SPEC.network_module == "networks.lora_flux"


def test_te1_targets_and_export(adapter):
    adapter.cfg.network.train_text_encoder = True
    try:
        t = adapter.lora_targets(adapter.cfg.network)
    finally:
        adapter.cfg.network.train_text_encoder = False
    assert len(t["te1"]) == 12 and "encoder.layers.1.mlp.fc2" in t["te1"]
    from lorakit.models.base import LoraModule
    lora = {"te1": {"encoder.layers.0.mlp.fc1": LoraModule(torch.ones(2, 32), torch.ones(64, 2), 1.0)},
            "transformer": {"transformer_blocks.0.attn.to_q": LoraModule(torch.ones(2, 32), torch.ones(32, 2), 1.0)}}
    sd = adapter.export(lora, "kohya")
    assert sd["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (96, 2)
    assert "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha" in sd


def test_identity_is_cheap_and_tracks_files(adapter, files):
    ident = adapter.identity()
    assert set(ident) >= {"vae", "text", "model"} and ident == adapter.identity()
    adapter.cfg.training.t5_max_length = 8                 # text settings change the text key only
    try:
        other = adapter.identity()
    finally:
        adapter.cfg.training.t5_max_length = 16
    assert other["text"] != ident["text"] and other["vae"] == ident["vae"]


def test_schnell_t5_mask_hides_padding(tmp_path):
    """schnell: no guidance input; with apply_t5_attn_mask, padded T5 positions cannot change the output."""
    files = write_tiny_checkpoint(tmp_path, "schnell", seed=4, dtype=torch.float32)
    a = Adapter(_config(files, apply_t5_attn_mask=True))
    a.load(a.cfg.model, a.cfg.memory, torch.device("cpu"), torch.float32)
    assert a.variant == "schnell" and a.metadata(a.cfg)["modelspec.architecture"] == "flux-1-schnell/lora"
    text = a.encode_text(["a cat"])
    batch = _batch(text)
    n = a.noise(torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8), batch, a.cfg.training,
                torch.Generator().manual_seed(0))
    k = int(text["t5_mask"].sum())
    assert 0 < k < 16
    changed = dict(text, t5=text["t5"].clone())
    changed["t5"][:, k:] += 5.0
    with torch.no_grad():
        p1 = a.predict(n, batch)
        p2 = a.predict(n, _batch(changed))
        a.cfg.training.apply_t5_attn_mask = False
        p3 = a.predict(n, _batch(changed))
    torch.testing.assert_close(p1, p2, rtol=0, atol=1e-6)
    assert not torch.allclose(p1, p3)


def test_text_encoder_lora_gets_gradients(files):
    from lorakit.lora.inject import inject_lora
    a = Adapter(_config(files))
    a.load(a.cfg.model, a.cfg.memory, torch.device("cpu"), torch.float32)
    a.cfg.network.train_text_encoder = True
    targets = a.lora_targets(a.cfg.network)["te1"]
    params = inject_lora(a.text_encoder_modules()["te1"], targets, 1.0, 0.0, seed=0)
    text = a.encode_text(["a cat"])
    assert text["pooled"].requires_grad and not text["t5"].requires_grad
    (text["pooled"] * torch.randn(text["pooled"].shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
