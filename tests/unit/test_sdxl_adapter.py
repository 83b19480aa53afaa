"""The SDXL adapter on a tiny single-file checkpoint: loading, conditioning, objective, step 0, sampling."""

import pytest
import torch

from lorakit.config.schema import Config
from lorakit.errors import ConfigError, LorakitError
from lorakit.models.base import Batch, SamplePrompt
from lorakit.models.sdxl import SPEC, Adapter
from lorakit.models.sdxl.load import write_tiny_checkpoint


def _cfg(ckpt, config_dir):
    cfg = Config()
    cfg.model.family, cfg.model.checkpoint, cfg.model.config_dir = "sdxl", str(ckpt), str(config_dir)
    cfg.network.rank, cfg.network.alpha = 4, 2.0
    cfg.memory.gradient_checkpointing = False
    return cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=2)


@pytest.fixture(scope="module")
def adapter(tiny):
    cfg = _cfg(tiny["checkpoint"], tiny["config"])
    ad = Adapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    return ad


def _batch(ad, captions=("a photo of a cat", "")):
    text = ad.encode_text(list(captions))
    n = len(captions)
    return Batch(latents=torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(1)), text=text,
                 original_sizes=[(64, 64), (100, 80)][:n], crop_top_lefts=[(0, 0), (4, 8)][:n],
                 target_sizes=[(64, 64)] * n, loss_weight=torch.ones(n))


def test_registry_finds_sdxl():
    from lorakit.models.registry import families, get_family

    assert "sdxl" in families()
    fam = get_family("sdxl")
    assert fam.SPEC is SPEC and fam.Adapter is Adapter
    with pytest.raises(ConfigError, match="sdxl"):
        get_family("sd9")


def test_encode_text_is_penultimate_concat(adapter):
    caps = ["a photo of a cat", "a much longer caption " * 20]
    enc = adapter.encode_text(caps)
    h1, h2 = adapter.te1.config.hidden_size, adapter.te2.config.hidden_size
    assert enc["context"].shape == (2, 77, h1 + h2) and enc["pooled"].shape == (2, adapter.te2.config.projection_dim)
    # independent computation straight through transformers
    ids1 = adapter.tokenizer1(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids2 = adapter.tokenizer2(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids2[0, 7:].eq(0).all() and ids1[0, 7:].eq(49407).all()  # pads: "!" vs <|endoftext|>
    with torch.no_grad():
        o1 = adapter.te1(ids1, output_hidden_states=True)
        o2 = adapter.te2(ids2, output_hidden_states=True)
    n = adapter.te1.config.num_hidden_layers
    assert len(o1.hidden_states) == n + 1
    torch.testing.assert_close(enc["context"][..., :h1], o1.hidden_states[n - 1])
    torch.testing.assert_close(enc["context"][..., h1:], o2.hidden_states[-2])
    # pooled = projection of the final-layer-normed state at the first EOS token
    eos = int((ids2[0] == 49407).nonzero()[0])
    final = adapter.te2.text_model.final_layer_norm(o2.last_hidden_state[0, eos])
    torch.testing.assert_close(enc["pooled"][0], adapter.te2.text_projection(final))
    # single caption == same caption in a batch
    torch.testing.assert_close(adapter.encode_text(caps[:1])["context"][0], enc["context"][0])


def test_encode_images_scale_and_size(adapter):
    import hashlib

    px = torch.rand(1, 3, 64, 48) * 2 - 1
    torch.manual_seed(0)
    z = adapter.encode_images(px)
    assert z.shape == (1, 4, 8, 6)
    # a posterior sample whose noise comes from a generator derived from the run's seed and the image's pixels:
    # the same latents in every process, whatever torch's global generator holds
    digest = hashlib.sha256(f"{adapter.training.seed}:".encode() + px[0].numpy().tobytes()).digest()
    eps = torch.randn((4, 8, 6), generator=torch.Generator().manual_seed(int.from_bytes(digest[:8], "little")))
    dist = adapter.vae.encode(px).latent_dist
    torch.testing.assert_close(z, (dist.mean + dist.std * eps) * 0.13025)
    torch.manual_seed(123)
    assert torch.equal(adapter.encode_images(px), z)
    with pytest.raises(ValueError, match="multiple"):
        adapter.encode_images(torch.zeros(1, 3, 60, 64))


def test_time_ids_from_real_sizes(adapter):
    batch = _batch(adapter)
    assert adapter.time_ids(batch).tolist() == [[64, 64, 0, 0, 64, 64], [100, 80, 4, 8, 64, 64]]


def test_noise_follows_ddpm_formula(adapter):
    cfg = Config()
    cfg.training.min_timestep, cfg.training.max_timestep, cfg.training.min_snr_gamma = 100, 200, 5.0
    batch = _batch(adapter)
    noise = torch.randn_like(batch.latents)
    noised = adapter.noise(batch.latents, noise, batch, cfg.training, torch.Generator().manual_seed(0))
    t = noised.timesteps
    assert ((t >= 100) & (t < 200)).all()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ab = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(noised.model_input, ab.sqrt() * batch.latents + (1 - ab).sqrt() * noise)
    assert torch.equal(noised.target, noise)
    snr = (ab / (1 - ab)).flatten()
    torch.testing.assert_close(noised.weight, torch.clamp(snr, max=5.0) / snr)


def test_predict_at_step_zero_equals_plain_unet(adapter):
    from lorakit.lora.inject import lora_disabled
    from peft import LoraConfig, inject_adapter_in_model

    batch = _batch(adapter)
    cfg = Config()
    noised = adapter.noise(batch.latents, torch.randn_like(batch.latents), batch, cfg.training,
                           torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = adapter.predict(noised, batch)
    targets = adapter.lora_targets(Config().network)
    assert targets.keys() == {"unet"}
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2, target_modules=list(targets["unet"])), adapter.unet)
    try:
        with torch.no_grad():
            after = adapter.predict(noised, batch)
            assert torch.equal(after, before)  # up (lora_B) starts at zero
            for name, p in adapter.unet.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
            moved = adapter.predict(noised, batch)
        assert not torch.allclose(moved, before)
        # micro-conditioning reaches the UNet: other original sizes give another prediction
        batch.original_sizes = [(1024, 1024), (1024, 1024)]
        with torch.no_grad():
            assert not torch.allclose(adapter.predict(noised, batch), moved)
    finally:
        with torch.no_grad():
            for name, p in adapter.unet.named_parameters():
                if "lora_B" in name:
                    p.zero_()


def test_predict_does_not_walk_the_unet_for_its_device_or_dtype(adapter, monkeypatch):
    """diffusers' ``unet.dtype`` / ``unet.device`` visit every submodule (15 ms each on the full-size U-Net with
    LoRA, with the GPU idle meanwhile); the training step reads both from the first parameter instead."""
    batch = _batch(adapter)
    noised = adapter.noise(batch.latents, torch.randn_like(batch.latents), batch, Config().training,
                           torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = adapter.predict(noised, batch)
    assert adapter._unet_place() == (adapter.unet.device, adapter.unet.dtype)

    def walked(self):
        raise AssertionError("the step asked diffusers for the U-Net's device/dtype")

    cls = type(adapter.unet)
    monkeypatch.setattr(cls, "dtype", property(walked))
    monkeypatch.setattr(cls, "device", property(walked))
    with torch.no_grad():
        assert torch.equal(adapter.predict(noised, batch), want)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_sample_gives_deterministic_image(adapter, sampler):
    p = SamplePrompt(prompt="a cat", negative="blurry", width=64, height=64, steps=3, seed=1, cfg_scale=5.0,
                     sampler=sampler)
    a = adapter.sample(p, torch.Generator().manual_seed(1))
    b = adapter.sample(p, torch.Generator().manual_seed(1))
    assert a.size == (64, 64) and a.mode == "RGB"
    assert list(a.getdata()) == list(b.getdata())


def test_identity_is_stable_and_cheap(adapter, tiny):
    ids = adapter.identity()
    assert set(ids) >= {"vae", "text"} and ids["vae"] != ids["text"]
    assert adapter.identity() == ids


def test_metadata_entries(adapter):
    md = adapter.metadata(Config())
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert md["ss_base_model_version"] == "sdxl_base_v1-0" and md["modelspec.prediction_type"] == "epsilon"
    assert all(isinstance(v, str) for v in md.values())


def test_load_errors_are_clear(tmp_path, tiny):
    bad = tmp_path / "model.ckpt"
    torch.save({"a": torch.zeros(1)}, bad)  # a pickle by its content (junk bytes are "not a safetensors file")
    for path, match in ((bad, "pickle"), (tmp_path / "missing.safetensors", "does not exist")):
        cfg = _cfg(path, tiny["config"])
        with pytest.raises(LorakitError, match=match):
            Adapter(cfg).load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    cfg = _cfg(junk, tiny["config"])
    with pytest.raises(LorakitError, match="junk.safetensors"):
        Adapter(cfg).load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)


def test_wrong_file_and_diffusers_folder(tmp_path, tiny, adapter):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(other))
    cfg = _cfg(other, tiny["config"])
    with pytest.raises(LorakitError, match="not an SDXL checkpoint"):
        Adapter(cfg).load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    # a diffusers folder of the same model loads to the same weights, with its tokenizers
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(str(tiny["checkpoint"]), config=str(tiny["config"]),
                                                      local_files_only=True)
    pipe.save_pretrained(str(tmp_path / "folder"))
    cfg = _cfg(tmp_path / "folder", tiny["config"])
    cfg.model.config_dir = None
    ad = Adapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(ad.encode_text(["a cat"])["context"], adapter.encode_text(["a cat"])["context"])
    assert ad.tokenizer2.pad_token == "!"


def test_text_encoder_lora_gets_gradients_only_when_trained(tiny):
    """network.train_text_encoder: the encoders' LoRA must receive gradients through encode_text (it once ran
    under no_grad, so text-encoder LoRA silently never trained); caching (no trainable parameters) stays
    gradient-free."""
    from lorakit.lora.inject import inject_lora

    cfg = _cfg(tiny["checkpoint"], tiny["config"])
    cfg.network.train_text_encoder = True
    ad = Adapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    assert not ad.encode_text(["a cat"])["context"].requires_grad  # frozen: nothing to train
    targets = ad.lora_targets(cfg.network)
    params, last = [], []
    for name in ("te1", "te2"):
        module = ad.text_encoder_modules()[name]
        got = inject_lora(module, targets[name], 2.0, 0.0, seed=1)
        params += got
        if name == "te1":  # CLIP-L's last layer feeds nothing SDXL uses (context = penultimate states)
            n = module.config.num_hidden_layers - 1
            last = [p for k, p in module.named_parameters() if p.requires_grad and f"layers.{n}." in k]
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)
    text = ad.encode_text(["a photo of a cat"])
    assert text["context"].requires_grad and text["pooled"].requires_grad
    (text["context"].square().mean() + text["pooled"].square().mean()).backward()
    used = [p for p in params if all(p is not q for q in last)]
    assert last and len(used) == len(params) - len(last)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in used)
    with torch.no_grad():
        assert not ad.encode_text(["a cat"])["context"].requires_grad
