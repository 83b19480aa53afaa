"""Lazy loading of the VAE / AE and text encoders (issue 6: time to the first step).

``adapter.load()`` reads the denoiser only; the encoders are read on first use. These tests check that the
lazily read parts are bit-identical to the eager load (state dicts: names, dtypes, values; configs; frozen,
eval mode; tokenizers), that nothing is read before it is used (identity, offload_encoders and
text_encoder_modules without text-encoder training read nothing), and that bad encoder files still fail
at load time with a message naming the file.
"""

from __future__ import annotations

import re

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.config.schema import Config
from lorakit.errors import LorakitError, ModelLoadError
from lorakit.models.flux1 import Adapter as FluxAdapter
from lorakit.models.flux1 import load as flux_load
from lorakit.models.sdxl import Adapter as SDXLAdapter
from lorakit.models.sdxl import configs as sdxl_configs
from lorakit.models.sdxl import load as sdxl_load
from lorakit.models.unet_parts import VAE_PREFIX


def assert_same_module(eager: torch.nn.Module, lazy: torch.nn.Module) -> None:
    assert type(eager) is type(lazy)
    a, b = eager.state_dict(), lazy.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), f"{k} differs"
    cfg_a, cfg_b = eager.config, lazy.config
    if hasattr(cfg_a, "to_dict"):
        cfg_a, cfg_b = cfg_a.to_dict(), cfg_b.to_dict()
    # the same config, but for where it was read from (a diffusers folder's model vs its unet/ subfolder)
    assert {**cfg_a, "_name_or_path": None} == {**cfg_b, "_name_or_path": None}
    assert not lazy.training and not any(p.requires_grad for p in lazy.parameters())


def assert_same_tokenizer(a, b) -> None:
    assert type(a) is type(b) and a.pad_token == b.pad_token and a.get_vocab() == b.get_vocab()
    text = ["a photo of a cat, zkx", ""]
    assert a(text, padding="max_length", max_length=77).input_ids == b(text, padding="max_length",
                                                                       max_length=77).input_ids


def model_cfg(**kw) -> SimpleNamespace:
    base = dict(checkpoint=None, config_dir=None, vae=None, tokenizer_dir=None, allow_pickle=False)
    base.update(kw)
    return SimpleNamespace(**base)


# ================================================================================================ SDXL

@pytest.fixture(scope="module")
def sdxl_tiny(tmp_path_factory):
    return sdxl_load.write_tiny_checkpoint(tmp_path_factory.mktemp("sdxl"), seed=5)


def _compare_sdxl(cfg, dtype) -> None:
    eager = sdxl_load.load_components(cfg, dtype)
    parts = sdxl_load.open_components(cfg, dtype)
    assert_same_module(eager.unet, parts.unet)
    assert parts.scheduler_config == eager.scheduler_config
    assert parts.force_zeros_for_empty_prompt == eager.force_zeros_for_empty_prompt
    assert parts.vae_scaling_factor == eager.vae.config.scaling_factor
    assert_same_module(eager.vae, parts.load_vae())
    te1, te2, tok1, tok2 = parts.load_text()
    assert_same_module(eager.te1, te1)
    assert_same_module(eager.te2, te2)
    assert_same_tokenizer(eager.tokenizer1, tok1)
    assert_same_tokenizer(eager.tokenizer2, tok2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdxl_single_file_parts_equal_the_eager_load(sdxl_tiny, dtype):
    _compare_sdxl(model_cfg(checkpoint=str(sdxl_tiny["checkpoint"]), config_dir=str(sdxl_tiny["config"])), dtype)


def test_sdxl_separate_vae_file_and_diffusers_folder_equal_the_eager_load(sdxl_tiny, tmp_path):
    # model.vae: a VAE-only file in the original layout (no first_stage_model. prefix)
    vae_sd = {k.removeprefix(VAE_PREFIX): v * 1.5 for k, v in load_file(sdxl_tiny["checkpoint"]).items()
              if k.startswith(VAE_PREFIX)}
    vae_file = tmp_path / "vae.safetensors"
    save_file(vae_sd, str(vae_file))
    cfg = model_cfg(checkpoint=str(sdxl_tiny["checkpoint"]), config_dir=str(sdxl_tiny["config"]),
                    vae=str(vae_file))
    _compare_sdxl(cfg, torch.float32)
    assert torch.equal(sdxl_load.open_components(cfg).load_vae().state_dict()["decoder.conv_out.weight"],
                       vae_sd["decoder.conv_out.weight"])
    # a config folder whose model_index says an empty negative prompt is *not* zeros
    cfgs = sdxl_load.tiny_configs()
    other = sdxl_configs.write_config_folder(tmp_path / "config", unet=cfgs["unet"], vae=cfgs["vae"],
                                             te1=cfgs["te1"], te2=cfgs["te2"], force_zeros_for_empty_prompt=False)
    parts = sdxl_load.open_components(model_cfg(checkpoint=str(sdxl_tiny["checkpoint"]), config_dir=str(other)))
    assert parts.force_zeros_for_empty_prompt is False
    # a diffusers folder
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(str(sdxl_tiny["checkpoint"]), config=str(sdxl_tiny["config"]),
                                                      local_files_only=True)
    pipe.save_pretrained(str(tmp_path / "folder"))
    _compare_sdxl(model_cfg(checkpoint=str(tmp_path / "folder")), torch.float32)


def _sdxl_config(sdxl_tiny, train_te: bool = False) -> Config:
    cfg = Config()
    cfg.model.family, cfg.model.checkpoint = "sdxl", str(sdxl_tiny["checkpoint"])
    cfg.model.config_dir = str(sdxl_tiny["config"])
    cfg.network.rank, cfg.network.alpha, cfg.network.train_text_encoder = 4, 2.0, train_te
    cfg.memory.gradient_checkpointing = False
    return cfg


def test_sdxl_adapter_reads_encoders_on_first_use_only(sdxl_tiny):
    cfg = _sdxl_config(sdxl_tiny)
    lazy = SDXLAdapter(cfg)
    lazy.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    eager = SDXLAdapter(cfg)
    c = sdxl_load.load_components(cfg.model, torch.float32)
    eager.attach(c.unet, c.vae, c.te1, c.te2, c.tokenizer1, c.tokenizer2, c.scheduler_config)
    eager.model_cfg = cfg.model
    assert lazy.loaded_parts() == []
    # the cache keys are those of the eager adapter, and asking for them (or offloading) reads nothing
    assert lazy.identity() == eager.identity()
    lazy.offload_encoders()
    assert lazy.text_encoder_modules() == {} and lazy.loaded_parts() == []
    assert lazy.scheduler_config == eager.scheduler_config
    assert_same_module(eager.unet, lazy.unet)
    # text first: only the text encoders are read, and they encode exactly as the eager ones
    text = ["a red circle", "a zkx on a blue background"]
    got, want = lazy.encode_text(text), eager.encode_text(text)
    assert lazy.loaded_parts() == ["text"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert set(lazy.text_encoder_modules()) == {"te1", "te2"}       # in memory now: handed out
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.manual_seed(0)
    got = lazy.encode_images(pixels)
    torch.manual_seed(0)
    want = eager.encode_images(pixels)
    assert lazy.loaded_parts() == ["vae", "text"] and torch.equal(got, want)
    assert lazy.identity() == eager.identity()


def test_sdxl_text_encoder_training_reads_the_encoders(sdxl_tiny):
    cfg = _sdxl_config(sdxl_tiny, train_te=True)
    ad = SDXLAdapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    assert ad.loaded_parts() == []
    modules = ad.text_encoder_modules()
    assert set(modules) == {"te1", "te2"} and ad.loaded_parts() == ["text"]
    assert set(ad.lora_targets(cfg.network)) == {"unet", "te1", "te2"}


def test_sdxl_bad_parts_fail_at_load_naming_the_file(sdxl_tiny, tmp_path):
    cfg = _sdxl_config(sdxl_tiny)
    cfg.model.vae = str(tmp_path / "vae.ckpt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "vae.ckpt")  # a pickle by content (junk is "not a safetensors file")
    with pytest.raises(LorakitError, match=r"^model\.vae: .*vae\.ckpt is a pickle file"):
        SDXLAdapter(cfg).load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    # a VAE tensor of the wrong shape is only read on first use; the error then names the checkpoint
    sd = load_file(sdxl_tiny["checkpoint"])
    key = next(k for k in sd if k.startswith(VAE_PREFIX) and k.endswith("conv_in.weight"))
    sd[key] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    cfg = _sdxl_config(sdxl_tiny)
    cfg.model.checkpoint = str(bad)
    ad = SDXLAdapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    with pytest.raises(ModelLoadError, match=r"bad\.safetensors: could not be loaded as SDXL"):
        ad.encode_images(torch.zeros(1, 3, 64, 64))


# ================================================================================================ FLUX.1

@pytest.fixture(scope="module")
def flux_files(tmp_path_factory):
    return flux_load.write_tiny_checkpoint(tmp_path_factory.mktemp("flux"), "dev", seed=4, dtype=torch.float32)


def _flux_cfg(files, **kw) -> SimpleNamespace:
    return model_cfg(checkpoint=str(files["checkpoint"]), clip_l=str(files["clip_l"]), t5xxl=str(files["t5xxl"]),
                     ae=str(files["ae"]), config_dir=str(files["config"]), variant="auto", **kw)


def _compare_flux(cfg, dtype) -> None:
    eager = flux_load.load_components(cfg, dtype)
    lazy = flux_load.load_components(cfg, dtype, lazy=True)
    assert lazy.variant == eager.variant and lazy.files == eager.files
    assert not any(lazy.loaded(n) for n in ("clip_l", "t5", "ae", "clip_tokenizer", "t5_tokenizer"))
    assert_same_module(eager.transformer, lazy.transformer)
    for name in ("clip_l", "t5", "ae"):
        assert_same_module(getattr(eager, name), getattr(lazy, name))
        assert lazy.loaded(name)
    assert lazy.t5.encoder.embed_tokens.weight is lazy.t5.shared.weight
    assert_same_tokenizer(eager.clip_tokenizer, lazy.clip_tokenizer)
    assert eager.t5_tokenizer("a cat").input_ids == lazy.t5_tokenizer("a cat").input_ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flux_single_files_lazy_parts_equal_the_eager_load(flux_files, dtype):
    _compare_flux(_flux_cfg(flux_files), dtype)


def test_flux_diffusers_folder_lazy_parts_equal_the_eager_load(tmp_path):
    tiny = flux_load.tiny_models("dev", seed=6)
    for sub, key in (("transformer", "transformer"), ("text_encoder", "clip_l"), ("text_encoder_2", "t5"),
                     ("vae", "ae")):
        tiny[key].save_pretrained(tmp_path / sub)
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    _compare_flux(model_cfg(checkpoint=str(tmp_path), variant="auto"), torch.float32)


def _flux_config(files, train_te: bool = False) -> Config:
    cfg = Config()
    cfg.model.family, cfg.model.checkpoint = "flux1", str(files["checkpoint"])
    cfg.model.clip_l, cfg.model.t5xxl, cfg.model.ae = str(files["clip_l"]), str(files["t5xxl"]), str(files["ae"])
    cfg.model.config_dir = str(files["config"])
    cfg.training.t5_max_length = 16
    cfg.network.train_text_encoder = train_te
    return cfg


def test_flux_adapter_reads_encoders_on_first_use_only(flux_files):
    cfg = _flux_config(flux_files)
    ad = FluxAdapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    eager = FluxAdapter(cfg)
    eager.comps = flux_load.load_components(cfg.model, torch.float32)
    eager.device, eager.dtype = torch.device("cpu"), torch.float32
    parts = ("clip_l", "t5", "ae", "clip_tokenizer", "t5_tokenizer")

    def loaded() -> list[str]:
        return [n for n in parts if ad.comps.loaded(n)]

    assert ad.identity() == eager.identity() and ad.variant == "dev"
    ad.offload_encoders()
    assert ad.text_encoder_modules() == {} and loaded() == []
    text = ["a red circle", "a zkx"]
    got, want = ad.encode_text(text), eager.encode_text(text)
    assert loaded() == ["clip_l", "t5", "clip_tokenizer", "t5_tokenizer"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(ad.encode_images(pixels), eager.encode_images(pixels)) and ad.comps.loaded("ae")
    assert set(ad.text_encoder_modules()) == {"te1"}

    cfg = _flux_config(flux_files, train_te=True)
    ad = FluxAdapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    assert "te1" in ad.lora_targets(cfg.network) and ad.comps.loaded("clip_l") and not ad.comps.loaded("t5")


def test_flux_bad_encoder_files_fail_at_load(flux_files, tmp_path):
    for role, other, message in (("clip_l", "ae", "not a CLIP text encoder"), ("t5xxl", "clip_l", "not a T5 encoder"),
                                 ("ae", "t5xxl", "not an autoencoder")):
        cfg = _flux_config(flux_files)
        setattr(cfg.model, role, str(flux_files[other]))
        with pytest.raises(ModelLoadError, match=rf"{re.escape(flux_files[other].name)}(: | is [^;]+; ){message}"):
            FluxAdapter(cfg).load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    pickle = tmp_path / "t5xxl.pt"
    torch.save({"a": torch.zeros(1)}, pickle)
    cfg = _flux_config(flux_files)
    cfg.model.t5xxl = str(pickle)
    with pytest.raises(ModelLoadError, match="t5xxl.pt: only .safetensors files are loaded; set model.allow_pickle"):
        FluxAdapter(cfg).load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    cut = tmp_path / "clip_cut.safetensors"
    cut.write_bytes(flux_files["clip_l"].read_bytes()[:-100])
    cfg = _flux_config(flux_files)
    cfg.model.clip_l = str(cut)
    with pytest.raises(ModelLoadError, match="clip_cut.safetensors"):
        FluxAdapter(cfg).load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)


def test_sdxl_truncated_unet_names_the_file(sdxl_tiny, tmp_path):
    sd = {k: v for k, v in load_file(sdxl_tiny["checkpoint"]).items() if "out.2." not in k}   # no conv_out
    cut = tmp_path / "cut.safetensors"
    save_file(sd, str(cut))
    with pytest.raises(ModelLoadError, match=r"cut\.safetensors: UNet tensors missing, such as 'conv_out\."):
        sdxl_load.open_components(model_cfg(checkpoint=str(cut), config_dir=str(sdxl_tiny["config"])))
