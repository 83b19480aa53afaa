"""Qwen-Image: prompt encoding against QwenImagePipeline.encode_prompt (tiny Qwen2.5-VL of the real class), the
adapter's forward, schedule, CFG and latent normalisation against the pipeline, loading every layout users keep
(ComfyUI split files with prefix / fp8, a diffusers folder; Edit and other families refused in one line), the VAE's
two layouts against diffusers' own converter, and the LoRA layouts: ComfyUI's key map re-derived from its source
(every key maps) and diffusers' load_lora_weights (output within 1e-4).

ComfyUI's key map is read from Comfy-Org/ComfyUI @ ec93dcacb96b922f7cb1417b3ba22bccb082df32, comfy/lora.py
``model_lora_keys_unet`` (the generic ``lora_unet_`` / ``diffusion_model.`` keys and the QwenImage branch: bare path,
``transformer.``, ``lycoris_``), and ComfyUI's Qwen-Image model names from comfy/ldm/qwen_image/model.py
(comfyanonymous/ComfyUI @ c708d0a433c2f93e97d6e149ccda313192ee4f1e): diffusers' module names."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.qwenimage import configs, convert, keys, lora_format, text, tiny
from tests.family_fixtures import check_fp8_upcast, exported_metadata, flow_scheduler, loaded_adapter, train_like

NET = SimpleNamespace(rank=4, alpha=2.0, module_ranks={}, train_text_encoder=False)


@pytest.fixture(scope="module")
def models():
    return tiny.tiny_models(seed=3, words=["red", "circle", "zkx"])


@pytest.fixture(scope="module")
def files(tmp_path_factory, models):
    return tiny.save_files(tmp_path_factory.mktemp("qwenimage"), models, torch.float32)


def _pipeline(m, transformer=None):
    from diffusers import QwenImagePipeline
    sched = flow_scheduler(configs.scheduler_config())
    return QwenImagePipeline(scheduler=sched, vae=m["vae"], text_encoder=m["text_encoder"], tokenizer=m["tokenizer"],
                             transformer=transformer or m["transformer"])


@pytest.fixture(scope="module")
def adapter(files, tmp_path_factory):
    model = {**{k: files[k] for k in ("checkpoint", "text_encoder", "vae")}, "tokenizer_dir": files["tokenizer"],
             "config_dir": files["config"]}
    return loaded_adapter("qwenimage", model, tmp_path_factory.mktemp("data"), text_max_length=24)


# ------------------------------------------------------------------------------------------------ text

def test_prompt_embeddings_equal_the_pipeline(models, adapter):
    tok = models["tokenizer"]
    # the tiny vocabulary tokenizes the template's system turn into 34 tokens, as Qwen2.5-VL's does (drop_idx)
    assert len(tok(configs.PROMPT_TEMPLATE.split("{}")[0])["input_ids"]) == configs.DROP_IDX == \
        _pipeline(models).prompt_template_encode_start_idx
    assert configs.PROMPT_TEMPLATE == _pipeline(models).prompt_template_encode
    prompts = ["a red circle zkx", "", "red"]
    with torch.no_grad():
        want, want_mask = _pipeline(models).encode_prompt(prompts, device=torch.device("cpu"), max_sequence_length=24)
        got = adapter.encode_text(prompts)            # through the loaded Qwen2_5_VLTextModel of the ComfyUI file
    assert got["prompt_embeds"].shape == (3, 24, 16) and got["prompt_mask"].sum(1).tolist() == want_mask.sum(1).tolist()
    emb, mask = text.trim(got["prompt_embeds"], got["prompt_mask"])
    assert torch.equal(mask, want_mask) and torch.allclose(emb, want, atol=1e-6, rtol=0)
    assert got["prompt_embeds"][1, 5:].abs().sum() == 0          # zero padding beyond the real tokens
    # one caption alone gives the same features as in the batch (captions are cached one by one)
    with torch.no_grad():
        alone = adapter.encode_text(["red"])
    assert torch.allclose(alone["prompt_embeds"][0], got["prompt_embeds"][2], atol=1e-6)


# ------------------------------------------------------------------------------------------------ maths

def test_schedule_and_dynamic_shift_are_the_pipelines():
    import numpy as np
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
    from lorakit.models.qwenimage.adapter import dynamic_mu, sample_schedule, training_sigmas
    for seq in (16, 4096, 6400):
        assert dynamic_mu(seq) == pytest.approx(calculate_shift(seq, 256, 8192, 0.5, 0.9), abs=1e-12)
    s = flow_scheduler(configs.scheduler_config())
    s.set_timesteps(sigmas=np.linspace(1.0, 1 / 7, 7), mu=calculate_shift(4096, 256, 8192, 0.5, 0.9))
    sig, ts = sample_schedule(7, 4096)
    assert torch.equal(sig, s.sigmas.float()) and torch.equal(ts, s.timesteps.float())
    assert sig[-2] == pytest.approx(0.02, abs=1e-6) and sig[-1] == 0           # shift_terminal, then 0
    # training: the sigmoid sample time-shifted with e^μ (musubi-tuner's qwen_shift)
    tr = SimpleNamespace(timestep_sampling="flux_shift", sigmoid_scale=1.0, logit_mean=0.0, logit_std=1.0,
                         discrete_flow_shift=3.0)
    got = training_sigmas(5, tr, torch.Generator().manual_seed(0), 4096)
    u = torch.sigmoid(torch.randn(5, generator=torch.Generator().manual_seed(0)))
    k = float(np.exp(calculate_shift(4096, 256, 8192, 0.5, 0.9)))
    assert torch.allclose(got, k * u / (1 + (k - 1) * u), atol=1e-6)


def test_latents_forward_and_sampling_match_the_pipeline(adapter, models):
    pipe = _pipeline(models, adapter.denoiser())
    g = torch.Generator().manual_seed(0)
    # encode: the pipeline's normalisation (z − mean) · (1 / std) of the posterior mode
    px = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    z = adapter.encode_images(px)
    with torch.no_grad():
        mode = models["vae"].encode(px.unsqueeze(2)).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(configs.LATENTS_MEAN).view(1, 16, 1, 1)
    std = torch.tensor(configs.LATENTS_STD).view(1, 16, 1, 1)
    assert z.shape == (1, 16, 4, 4) and torch.allclose(z, (mode - mean) * (1.0 / std), atol=1e-5)
    # four Euler steps with true CFG and a negative prompt, from the same packed noise
    lat = torch.randn(1, 16, 8, 8, generator=g)
    from lorakit.diffusion.packing import pack_latents
    with torch.no_grad():
        want = pipe(prompt="a red circle", negative_prompt="zkx", true_cfg_scale=4.0, height=64, width=64,
                    num_inference_steps=4, latents=pack_latents(lat), output_type="latent",
                    max_sequence_length=24).images
        got = adapter.denoise(lat.clone(), "a red circle", "zkx", 4, 4.0)
    assert torch.allclose(pack_latents(got), want, atol=1e-5)
    with torch.no_grad():                                       # without CFG (cfg_scale 1: no negative pass)
        want1 = pipe(prompt="a red circle", true_cfg_scale=1.0, height=64, width=64, num_inference_steps=2,
                     latents=pack_latents(lat), output_type="latent", max_sequence_length=24).images
        got1 = adapter.denoise(lat.clone(), "a red circle", None, 2, 1.0)
    assert torch.allclose(pack_latents(got1), want1, atol=1e-5)
    # decoding inverts the normalisation as the pipeline does
    with torch.no_grad():
        img = adapter.decode(got)
        ref = models["vae"].decode((got * std + mean).unsqueeze(2)).sample[:, :, 0]
    from lorakit.data.images import to_images
    assert list(img.getdata()) == list(to_images(ref[0])[0].getdata())


# ------------------------------------------------------------------------------------------------ loading

def test_vae_original_layout_is_diffusers_converters(models):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    want = models["vae"].state_dict()
    orig = convert.vae_to_original(want)
    assert "encoder.conv1.weight" in orig and "decoder.upsamples.4.shortcut.weight" in orig and "conv2.weight" in orig
    assert not any(k.startswith(("encoder.down_blocks", "decoder.up_blocks")) for k in orig)
    back = convert_wan_vae_to_diffusers(dict(orig))
    assert set(back) == set(want) and all(back[k] is want[k] for k in want)


def test_loading_layouts(tmp_path, models, files):
    from lorakit.models.qwenimage.load import load_components
    from safetensors.torch import load_file
    ref = models["transformer"].state_dict()
    quiet = lambda _m: None  # noqa: E731
    # ComfyUI prefix, bf16; all parts of the ComfyUI text encoder file (vision tower, lm_head) accepted
    pre = tiny.save_files(tmp_path / "pre", models, torch.bfloat16, prefix="model.diffusion_model.")
    c = load_components(tiny.model_cfg(pre), torch.float32, quiet)
    k = "transformer_blocks.1.attn.add_v_proj.weight"
    assert torch.equal(c.transformer.state_dict()[k], ref[k].bfloat16().float())
    assert "visual.blocks.0.attn.qkv.weight" in load_file(str(pre["text_encoder"]))
    assert type(c.text_encoder).__name__ == "Qwen2_5_VLTextModel"
    # fp8 (e4m3) storage as ComfyUI's qwen_image_fp8_e4m3fn: upcast on load
    check_fp8_upcast(load_components, tiny.model_cfg, files, tmp_path / "qwen_image_fp8_e4m3fn.safetensors",
                     ref, "transformer_blocks.0.img_mlp.net.2.weight")
    # a diffusers folder (the pipeline's save_pretrained): everything from inside it
    folder = tmp_path / "Qwen-Image"
    _pipeline(models).save_pretrained(str(folder))
    from lorakit.config.schema import ModelCfg
    cd = load_components(ModelCfg(family="qwenimage", checkpoint=str(folder)), torch.float32, quiet)
    assert torch.equal(cd.transformer.state_dict()[k], ref[k])
    lm = {n[len("model.language_model."):]: v for n, v in models["text_encoder"].state_dict().items()
          if n.startswith("model.language_model.")}
    assert all(torch.equal(cd.text_encoder.state_dict()[n], v) for n, v in lm.items())
    assert cd.tokenizer("red")["input_ids"] == models["tokenizer"]("red")["input_ids"]
    conv = "decoder.conv_in.weight"
    assert torch.equal(cd.vae.state_dict()[conv], models["vae"].state_dict()[conv])
    # Qwen-Image-Edit: refused in one line (by its pipeline class and by its name)
    (folder / "model_index.json").write_text('{"_class_name": "QwenImageEditPlusPipeline"}')
    with pytest.raises(ConfigError, match="QwenImageEditPlusPipeline folder; Qwen-Image-Edit is not trained"):
        load_components(ModelCfg(family="qwenimage", checkpoint=str(folder)), torch.float32, quiet)
    edit = tmp_path / "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
    edit.write_bytes((tmp_path / "qwen_image_fp8_e4m3fn.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="named as Qwen-Image-Edit"):
        load_components(tiny.model_cfg({**files, "checkpoint": edit}), torch.float32, quiet)
    # another family's file / a wrong file in a role: one line naming what it is
    from lorakit.models.flux1.load import write_tiny_checkpoint as flux1_tiny
    f1 = flux1_tiny(tmp_path / "f1")
    with pytest.raises(ModelLoadError, match=r"is a FLUX.1-dev-layout transformer .*, not a base model the qwenimage "
                                             r"family trains on; set model.family = \"flux1\""):
        load_components(tiny.model_cfg({**files, "checkpoint": f1["checkpoint"]}), torch.float32, quiet)
    bad = load_components(tiny.model_cfg({**files, "text_encoder": f1["t5xxl"], "vae": f1["ae"]}), torch.float32, quiet)
    with pytest.raises(ModelLoadError, match="this is a T5 text encoder, not the Qwen2.5-VL-7B"):
        bad.text_encoder
    with pytest.raises(ModelLoadError, match="not the Qwen-Image autoencoder"):
        bad.vae


def test_text_encoder_from_a_transformers4_config(models):
    """Qwen/Qwen-Image's text_encoder/config.json is transformers 4's flat Qwen2_5_VLConfig (rope_scaling "mrope")."""
    from lorakit.models.qwenimage.load import build_text_encoder
    flat = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rms_norm_eps": 1e-6, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "rope_theta": 1000000.0, "vision_config": {"depth": 1}, "image_token_id": 151655,
            "torch_dtype": "bfloat16", "vocab_size": len(models["tokenizer"]), "tie_word_embeddings": False}
    te = build_text_encoder(tiny.comfy_text_layout(models["text_encoder"].state_dict()), torch.float32, "x", flat)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = models["text_encoder"].model.language_model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        assert torch.equal(te(input_ids=ids, output_hidden_states=True).hidden_states[-1], want)


def test_identify_from_the_header(files):
    from lorakit.models.qwenimage import identify
    from lorakit.models.registry import identify_header
    from lorakit.safetensors_header import read_safetensors_header
    header, _ = read_safetensors_header(files["checkpoint"])
    kind = identify(header)
    assert kind.family == "qwenimage" and kind.standard is False and "width 32, 2 blocks" in kind.what
    full = {k: {"shape": list(v.shape), "dtype": "BF16"} for k, v in keys._meta_transformer().state_dict().items()}
    kind = identify({"model.diffusion_model." + k: v for k, v in full.items()})
    assert kind.family == "qwenimage" and kind.standard and "Qwen-Image-Edit has the same tensors" in kind.what
    layered = {**full, convert.LAYERED_MARK: {"shape": [2, 3072], "dtype": "BF16"}}
    assert identify(layered).family is None and "Layered" in identify(layered).what
    te, _ = read_safetensors_header(files["text_encoder"])
    vae, _ = read_safetensors_header(files["vae"])
    assert identify_header(te).what.startswith("a Qwen2.5-VL text encoder") and identify_header(te).role == "component"
    assert identify_header(vae).what.startswith("a Wan 2.1 / Qwen-Image autoencoder")
    assert identify({"layers.0.self_attn.q_norm.weight": {"shape": [8], "dtype": "BF16"}}) is None


def test_metadata_values(adapter):
    meta = adapter.metadata(adapter.cfg)
    assert meta["ss_base_model_version"] == "qwen_image" and meta["ss_network_module"] == "networks.lora_qwen_image"
    assert meta["modelspec.architecture"] == "qwen-image/lora" and meta["ss_timestep_sampling"] == "qwen_shift"


# ------------------------------------------------------------------------------------------------ LoRA

def comfy_key_map(transformer) -> dict[str, str]:
    """ComfyUI's ``model_lora_keys_unet`` for its QwenImage model (see the module docstring): for every
    ``diffusion_model.<path>.weight``, ``lora_unet_<path _>``, ``diffusion_model.<path>``, ``<path>``,
    ``transformer.<path>`` and ``lycoris_<path _>``."""
    out = {}
    for k in transformer.state_dict():
        if k.endswith(".weight"):
            p = k[:-len(".weight")]
            for name in ("lora_unet_" + p.replace(".", "_"), "diffusion_model." + p, p, "transformer." + p,
                         "lycoris_" + p.replace(".", "_")):
                out[name] = k
    return out


@pytest.fixture(scope="module")
def trained(models):
    base = models["transformer"]
    model = copy.deepcopy(base)
    targets = lora_format.transformer_targets(NET, base.config.num_layers)
    targets["transformer_blocks.0.attn.add_k_proj"] = 6
    del targets["transformer_blocks.1.txt_mlp.net.2"]
    lora = train_like(model, targets, lambda p: 3.0 if p.endswith("add_k_proj") else NET.alpha)
    return SimpleNamespace(base=base, model=model, lora={"transformer": lora}, n=base.config.num_layers)


def _run(model):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 64, generator=g)
    enc = torch.randn(1, 7, model.config.joint_attention_dim, generator=g)
    mask = torch.ones(1, 7, dtype=torch.int64)
    mask[0, 5:] = 0
    with torch.no_grad():
        return model(hidden_states=x, encoder_hidden_states=enc, encoder_hidden_states_mask=mask,
                     timestep=torch.tensor([0.4]), img_shapes=[[(1, 4, 4)]], return_dict=False)[0]


def test_targets_and_module_ranks():
    t = lora_format.transformer_targets(NET, 60)
    assert len(t) == 60 * 12 and "transformer_blocks.59.txt_mlp.net.0.proj" in t
    assert not any("_mod" in p for p in t)
    only = lora_format.transformer_targets(SimpleNamespace(**{**vars(NET), "module_ranks": {"txt_mlp": 0,
                                                                                             "img_attn": 8}}), 60)
    assert not any("txt_mlp" in p for p in only) and only["transformer_blocks.3.attn.to_q"] == 8 and len(only) == 600
    with pytest.raises(ConfigError, match="network.module_ranks: 'ffn' is not a Qwen-Image module type"):
        lora_format.transformer_targets(SimpleNamespace(**{**vars(NET), "module_ranks": {"ffn": 4}}), 60)


def test_every_comfy_key_maps_and_patches_exactly(trained):
    kmap = comfy_key_map(trained.base)
    base_sd = trained.base.state_dict()
    for sd in (lora_format.to_comfy(trained.lora, trained.n), lora_format.to_diffusers(trained.lora)):
        names = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in sd}
        assert names and names <= set(kmap), sorted(names - set(kmap))[:3]
    # apply the ComfyUI file as ComfyUI does (W += alpha/rank · up @ down on the mapped weight)
    sd = lora_format.to_comfy(trained.lora, trained.n)
    assert "lora_unet_transformer_blocks_0_attn_add_k_proj.alpha" in sd
    patched_sd = {k: v.clone() for k, v in base_sd.items()}
    for k in sd:
        if k.endswith(".lora_down.weight"):
            n = k[:-len(".lora_down.weight")]
            down, up, alpha = sd[k], sd[n + ".lora_up.weight"], float(sd[n + ".alpha"])
            patched_sd[kmap[n]] += alpha / down.shape[0] * (up @ down)
    patched = copy.deepcopy(trained.base)
    patched.load_state_dict(patched_sd)
    assert torch.allclose(_run(patched), _run(trained.model), atol=1e-4, rtol=0)


def test_metadata_in_the_exported_header(adapter, trained, tmp_path):
    # SwarmUI's Qwen Image LoRA class and musubi-tuner's version (tests/unit/metadata_rederived.py)
    meta = exported_metadata(adapter, trained.lora, tmp_path / "q.safetensors")
    assert meta["ss_base_model_version"] == "qwen_image" and meta["modelspec.architecture"] == "qwen-image/lora"
    assert meta["ss_network_module"] == "networks.lora_qwen_image" and meta["modelspec.sai_model_spec"] == "1.0.1"


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_diffusers_load_lora_weights_reproduces_lorakit(trained, models, fmt):
    pipe = _pipeline(models, copy.deepcopy(trained.base))
    sd = lora_format.to_diffusers(trained.lora) if fmt == "diffusers" else lora_format.to_comfy(trained.lora,
                                                                                                  trained.n)
    pipe.load_lora_weights({k: v.clone() for k, v in sd.items()})
    got, want, plain = _run(pipe.transformer), _run(trained.model), _run(trained.base)
    assert (want - plain).abs().max() > 1e-3
    assert torch.allclose(got, want, atol=1e-4, rtol=0)


def test_full_size_universe_and_keymap():
    names = lora_format.comfy_module_names(60)
    u = keys.lora_key_universe()
    assert len(names) == 720 and set(names) <= u
    assert "transformer.transformer_blocks.59.attn.to_add_out" in u and "lora_unet_img_in" in u
    assert "lora_unet_transformer_blocks_60_attn_to_q" not in u
    fk = keys.full_lora_keymap()
    m = fk.by_kohya["lora_unet_transformer_blocks_0_img_mlp_net_0_proj"]
    assert (m.out_features, m.in_features) == (12288, 3072)


# ------------------------------------------------------------------------------------------------ toy recipe

def _toy_batch(a):
    from lorakit.models.base import Batch
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 16, 8, 8, generator=g)
    text_in = a.encode_text(["a red circle on a blue background", ""])
    batch = Batch(latents=x0, text=text_in, original_sizes=[(64, 64)] * 2, crop_top_lefts=[(0, 0)] * 2,
                  target_sizes=[(64, 64)] * 2, loss_weight=torch.ones(2))
    return batch, a.noise(x0, torch.randn(x0.shape, generator=g), batch, a.cfg.training, g)


def test_toy_recipe_saves_and_loads_back_through_the_real_loader(tmp_path):
    """The toy recipe (freshly made modules, not the shipped files): at most 8 MB, its in-memory adapter
    trains the transformer it was given, and the files ``save`` writes (ComfyUI layout) load through Adapter.load to
    the same predictions."""
    import dataclasses

    from lorakit.models.qwenimage import Adapter
    from lorakit.models.qwenimage.toy import FILES, TOY, _config
    mods = TOY.make(0)
    size = sum(p.numel() * 2 for m in ("transformer", "text_encoder") for p in mods[m].parameters()) + \
        sum(p.numel() * 4 for p in mods["vae"].parameters())
    assert size < 8 * 2**20
    cfg = _config()
    a = TOY.adapter(mods, cfg)
    assert a.denoiser() is mods["transformer"]
    batch, noised = _toy_batch(a)
    paths = TOY.save(mods, {}, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == set(FILES.values())
    model = tiny.model_cfg({"checkpoint": paths["checkpoint"], "text_encoder": paths["text_encoder"],
                            "vae": paths["vae"], "tokenizer": paths["tokenizer_dir"], "config": paths["config"]})
    b = Adapter(dataclasses.replace(cfg, model=model))
    b.load(model, cfg.memory, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        for m in ("transformer", "text_encoder"):
            mods[m].load_state_dict({k: v.bfloat16().float() for k, v in mods[m].state_dict().items()})
        assert torch.equal(b.encode_text(["a red circle"])["prompt_embeds"],
                           a.encode_text(["a red circle"])["prompt_embeds"])
        assert torch.allclose(b.predict(noised, batch), a.predict(noised, batch), atol=1e-5)


@pytest.mark.slow
def test_toy_quick_build_learns_vae_statistics(tmp_path):
    """The family's own pretraining (quick plan): the VAE's latents_mean / std become the toy's statistics."""
    import time

    from lorakit.models.qwenimage import toy
    from lorakit.toy.build import kit
    models, facts = toy.build(kit(), "quick", 0, time.time())
    assert len(facts["loss_curve"]) >= 1 and all(torch.isfinite(torch.tensor(facts["loss_curve"])))
    assert list(models["vae"].config.latents_mean) != list(configs.LATENTS_MEAN)
    paths = toy.save(models, facts, tmp_path)
    assert sum(p.stat().st_size for p in paths.values() if p.is_file()) < 8 * 2**20


def test_write_config_orders_sets_whatever_the_hash_seed(tmp_path):
    """diffusers keeps ``_use_default_values`` as a set: written sorted, so a toy rebuild in another process writes
    the same config bytes (a list of the set came out in either order)."""
    import json

    from lorakit.models.qwenimage.tiny import write_config
    write_config(tmp_path, {}, {"_use_default_values": {"input_channels", "dropout", "attn_scales"}}, {})
    got = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert got["_use_default_values"] == ["attn_scales", "dropout", "input_channels"]
