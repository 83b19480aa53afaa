"""Z-Image: weights conversion against diffusers' own converter, prompt encoding against ZImagePipeline.encode_prompt,
the adapter's forward and schedule against the pipeline, loading every layout users keep, and the LoRA layouts:
ComfyUI's key map re-derived from its source (every key maps) and diffusers' load_lora_weights (output within 1e-4)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.zimage import configs, convert, keys, lora_format, text, tiny
from tests.family_fixtures import (check_fp8_upcast, exported_metadata, flow_scheduler, linear_outs, loaded_adapter,
                                   train_like)

NET = SimpleNamespace(rank=4, alpha=2.0, module_ranks={}, train_text_encoder=False)


@pytest.fixture(scope="module")
def models():
    return tiny.tiny_models(seed=3, words=["red", "circle", "zkx"])


@pytest.fixture(scope="module")
def files(tmp_path_factory, models):
    return tiny.save_files(tmp_path_factory.mktemp("zimage"), models, torch.float32)


def _pipeline(m, transformer=None):
    from diffusers import ZImagePipeline
    return ZImagePipeline(scheduler=flow_scheduler(configs.scheduler_config()),
                          vae=m["ae"], text_encoder=m["text_encoder"], tokenizer=m["tokenizer"],
                          transformer=transformer or m["transformer"])


# ------------------------------------------------------------------------------------------------ weights

def test_original_layout_matches_diffusers_single_file_converter(models):
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers
    want = models["transformer"].state_dict()
    orig = convert.diffusers_to_original(want)
    assert "layers.0.attention.qkv.weight" in orig and "x_embedder.weight" in orig and "final_layer.linear.bias" in orig
    assert not any("to_q" in k or "all_x_embedder" in k for k in orig)
    theirs = convert_z_image_transformer_checkpoint_to_diffusers({"model.diffusion_model." + k: v.clone()
                                                                  for k, v in orig.items()})
    ours = convert.original_to_diffusers({"model.diffusion_model." + k: v for k, v in orig.items()})
    assert set(theirs) == set(ours) == set(want)
    assert all(torch.equal(ours[k], want[k]) and torch.equal(theirs[k], want[k]) for k in want)


def test_what_is_names_other_families(tmp_path):
    from lorakit.models.flux1.load import write_tiny_checkpoint as flux1_tiny
    from lorakit.models.weights import load_safetensors
    paths = flux1_tiny(tmp_path / "f1")
    assert convert.what_is(load_safetensors(paths["checkpoint"])) == "a FLUX.1 transformer"
    assert convert.what_is(["layers.0.self_attn.q_norm.weight", "embed_tokens.weight"]) == "a Qwen3 text encoder"
    assert convert.what_is(["layers.0.adaLN_modulation.1.weight", "cap_embedder.0.weight"]).startswith("a Lumina")
    with pytest.raises(ModelLoadError, match=r"^model.checkpoint: this is a FLUX.1 transformer, not a Z-Image"):
        convert.detect(load_safetensors(paths["checkpoint"]), "model.checkpoint")


# ------------------------------------------------------------------------------------------------ text

def test_prompt_ids_and_embeddings_equal_the_pipeline(models):
    pipe = _pipeline(models)
    prompts = ["a red circle zkx", "", "red"]
    with torch.no_grad():
        want = pipe.encode_prompt(list(prompts), device=torch.device("cpu"), do_classifier_free_guidance=False,
                                  max_sequence_length=24)[0]
        emb, ids, mask = text.encode(models["text_encoder"], models["tokenizer"], prompts, max_length=24)
    got = text.unpad(emb, mask)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    # the exact template: thinking enabled (no empty <think> block), the assistant turn opened
    turn = models["tokenizer"](text.QWEN3_USER_TURN.format(prompt="red"))["input_ids"]
    assert ids[2, :len(turn)].tolist() == turn and mask[2].sum() == len(turn) and ids[2, len(turn)] == \
        models["tokenizer"].pad_token_id
    assert "<think>" not in text.prompt_texts(models["tokenizer"], ["x"])[0]


# ------------------------------------------------------------------------------------------------ adapter maths

def test_schedule_is_the_pipelines():
    from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas
    from lorakit.models.zimage.adapter import sample_schedule
    s = flow_scheduler(configs.scheduler_config())
    s.set_timesteps(sigmas=get_default_z_image_sigmas(9), device="cpu")
    assert torch.allclose(sample_schedule(9), s.sigmas.float(), atol=1e-6)


@pytest.fixture(scope="module")
def adapter(files, tmp_path_factory):
    model = {**{k: files[k] for k in ("checkpoint", "text_encoder", "ae")}, "tokenizer_dir": files["tokenizer"],
             "config_dir": files["config"]}
    return loaded_adapter("zimage", model, tmp_path_factory.mktemp("data"), text_max_length=24)


def test_forward_and_euler_step_match_the_pipeline(adapter, models):
    pipe = _pipeline(models, adapter.denoiser())
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 16, 8, 8, generator=g)
    with torch.no_grad():
        want = pipe(prompt="a red circle", height=64, width=64, num_inference_steps=2, guidance_scale=0.0,
                    latents=lat.clone(), output_type="latent", max_sequence_length=24).images
        text_in = adapter.encode_text(["a red circle"])
        from lorakit.models.zimage.adapter import sample_schedule
        sig = sample_schedule(2)
        x = adapter.euler_cfg(lat.clone(), sig, 2, text_in, None, 1.0)  # the loop sample() runs (no CFG)
    assert torch.allclose(x, want, atol=1e-5)


def test_loading_layouts_and_variant(tmp_path, models, files):
    from lorakit.models.zimage.load import load_components
    ref = models["transformer"].state_dict()
    quiet = lambda _m: None  # noqa: E731
    # ComfyUI prefix, bf16
    pre = tiny.save_files(tmp_path / "pre", models, torch.bfloat16, prefix="model.diffusion_model.",
                          name="z_image_bf16.safetensors")
    c = load_components(tiny.model_cfg(pre), torch.float32, quiet)
    assert c.variant == "base" and "no 'turbo'" in c.how
    assert torch.equal(c.transformer.state_dict()["layers.1.attention.to_v.weight"],
                       ref["layers.1.attention.to_v.weight"].bfloat16().float())
    assert load_components(tiny.model_cfg(files), torch.float32, quiet).variant == "turbo"
    assert load_components(tiny.model_cfg(files, variant="base"), torch.float32, quiet).variant == "base"
    # fp8 (e4m3) storage as ComfyUI's fp8 files: upcast on load
    check_fp8_upcast(load_components, tiny.model_cfg, files, tmp_path / "z_image_turbo_fp8_e4m3fn.safetensors",
                     ref, "layers.0.feed_forward.w1.weight")
    # a diffusers folder (save_pretrained of the pipeline): everything from inside it
    folder = tmp_path / "Z-Image-Turbo"
    _pipeline(models).save_pretrained(str(folder))
    from lorakit.config.schema import ModelCfg
    cd = load_components(ModelCfg(family="zimage", checkpoint=str(folder)), torch.float32, quiet)
    assert cd.variant == "turbo" and torch.equal(cd.transformer.state_dict()["cap_pad_token"], ref["cap_pad_token"])
    assert torch.equal(cd.text_encoder.state_dict()["layers.0.mlp.up_proj.weight"],
                       models["text_encoder"].state_dict()["layers.0.mlp.up_proj.weight"])
    assert cd.tokenizer("red")["input_ids"] == models["tokenizer"]("red")["input_ids"]
    assert cd.ae.config.latent_channels == 16
    # another family's file / a wrong file in a role: one line naming what it is
    from lorakit.models.flux1.load import write_tiny_checkpoint as flux1_tiny
    f1 = flux1_tiny(tmp_path / "f1")
    with pytest.raises(ModelLoadError, match=r"is a FLUX.1-dev-layout transformer .*, not a base model the zimage "
                                             r"family trains on; set model.family = \"flux1\""):
        load_components(tiny.model_cfg({**files, "checkpoint": f1["checkpoint"]}), torch.float32, quiet)
    bad = load_components(tiny.model_cfg({**files, "text_encoder": f1["t5xxl"]}), torch.float32, quiet)
    with pytest.raises(ModelLoadError, match="this is a T5 text encoder, not the Qwen3 text encoder"):
        bad.text_encoder
    with pytest.raises(ConfigError, match="model.variant"):
        load_components(tiny.model_cfg(files, variant="schnell"), torch.float32, quiet)


def test_metadata_values(adapter):
    meta = adapter.metadata(adapter.cfg)
    assert meta["ss_base_model_version"] == "z_image" and meta["modelspec.architecture"] == "z-image/lora"


# ------------------------------------------------------------------------------------------------ LoRA

def comfy_key_map(transformer) -> dict[str, tuple[str, tuple[int, int] | None]]:
    """ComfyUI's ``model_lora_keys_unet`` for its Z-Image (Lumina2) model, re-derived from comfy/lora.py and
    comfy/utils.py ``z_image_to_diffusers``: ``lora_unet_`` + the underscored original path and
    ``diffusion_model.<path>`` of every ``diffusion_model.*.weight``; ``transformer.`` / ``diffusion_model.`` +
    the diffusers path of every block Linear and embedder, q/k/v as (offset, size) slices of the fused qkv."""
    orig = convert.diffusers_to_original(transformer.state_dict())
    out: dict[str, tuple[str, tuple[int, int] | None]] = {}
    for k in orig:
        if k.endswith(".weight"):
            out["lora_unet_" + k[:-len(".weight")].replace(".", "_")] = (k, None)
            out["diffusion_model." + k[:-len(".weight")]] = (k, None)
    dim = transformer.config.dim
    blocks = [f"{n}.{i}" for n, c in (("layers", transformer.config.n_layers),
                                      ("noise_refiner", transformer.config.n_refiner_layers),
                                      ("context_refiner", transformer.config.n_refiner_layers)) for i in range(c)]
    for b in blocks:
        for j, p in enumerate("qkv"):
            for pre in ("transformer.", "diffusion_model.", ""):
                out[f"{pre}{b}.attention.to_{p}"] = (f"{b}.attention.qkv.weight", (j * dim, dim))
        for d, o in (("attention.to_out.0", "attention.out"), ("feed_forward.w1", "feed_forward.w1"),
                     ("feed_forward.w2", "feed_forward.w2"), ("feed_forward.w3", "feed_forward.w3")):
            for pre in ("transformer.", "diffusion_model.", ""):
                out[f"{pre}{b}.{d}"] = (f"{b}.{o}.weight", None)
    return out


@pytest.fixture(scope="module")
def trained(models):
    base = models["transformer"]
    model = copy.deepcopy(base)
    c = base.config
    targets = lora_format.transformer_targets(NET, c.n_layers, c.n_refiner_layers)
    targets["layers.0.attention.to_k"] = 6                    # uneven rank/alpha inside one fused qkv
    del targets["layers.1.attention.to_v"]                     # and an untrained part
    lora = train_like(model, targets, lambda p: 3.0 if p.endswith("to_k") else NET.alpha)
    return SimpleNamespace(base=base, model=model, lora={"transformer": lora}, outs=linear_outs(model),
                           n=(c.n_layers, c.n_refiner_layers))


def _run(model):
    g = torch.Generator().manual_seed(5)
    x = [torch.randn(16, 1, 8, 8, generator=g)]
    cap = [torch.randn(7, model.config.cap_feat_dim, generator=g)]
    with torch.no_grad():
        return model(x, torch.tensor([0.4]), cap, return_dict=False)[0][0]


def test_targets_and_module_ranks():
    t = lora_format.transformer_targets(NET, 30, 2)
    assert len(t) == (30 + 4) * 7 and "context_refiner.1.feed_forward.w3" in t and "layers.29.attention.to_out.0" in t
    only = lora_format.transformer_targets(SimpleNamespace(**{**vars(NET), "module_ranks": {"ffn": 0}}), 30, 2)
    assert not any("feed_forward" in p for p in only) and len(only) == 34 * 4
    with pytest.raises(ConfigError, match="network.module_ranks: 'img_mod' is not a Z-Image module type"):
        lora_format.transformer_targets(SimpleNamespace(**{**vars(NET), "module_ranks": {"img_mod": 4}}), 30, 2)


def test_every_comfy_key_maps_with_the_right_shape(trained):
    kmap = comfy_key_map(trained.base)
    orig = convert.diffusers_to_original(trained.base.state_dict())
    for sd in (lora_format.to_comfy(trained.lora, trained.outs, *trained.n), lora_format.to_diffusers(trained.lora)):
        names = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in sd}
        assert names <= set(kmap), sorted(names - set(kmap))[:3]
        for n in names:
            target, sl = kmap[n]
            up = sd.get(n + ".lora_up.weight", sd.get(n + ".lora_B.weight"))
            down = sd.get(n + ".lora_down.weight", sd.get(n + ".lora_A.weight"))
            rows = sl[1] if sl else orig[target].shape[0]
            assert (up.shape[0], down.shape[1]) == (rows, orig[target].shape[1])


def test_metadata_in_the_exported_header(adapter, trained, tmp_path):
    # SwarmUI's Z-Image LoRA class (Turbo and base alike) and musubi-tuner's version (tests/unit/metadata_rederived.py)
    meta = exported_metadata(adapter, trained.lora, tmp_path / "z.safetensors")
    assert meta["ss_base_model_version"] == "z_image" and meta["modelspec.architecture"] == "z-image/lora"
    assert meta["lorakit_zimage_variant"] == adapter.variant


def test_comfy_file_patches_the_original_weights_exactly(trained):
    """Apply the ComfyUI file as ComfyUI does (W += alpha/rank · up @ down on the mapped original weight), convert
    to diffusers and compare with lorakit's own LoRA forward."""
    sd = lora_format.to_comfy(trained.lora, trained.outs, *trained.n)
    kmap = comfy_key_map(trained.base)
    orig = {k: v.clone() for k, v in convert.diffusers_to_original(trained.base.state_dict()).items()}
    for k in sd:
        if k.endswith(".lora_down.weight"):
            n = k[:-len(".lora_down.weight")]
            down, up, alpha = sd[k], sd[n + ".lora_up.weight"], float(sd[n + ".alpha"])
            orig[kmap[n][0]] += alpha / down.shape[0] * (up @ down)
    patched = copy.deepcopy(trained.base)
    patched.load_state_dict(convert.original_to_diffusers(orig))
    assert torch.allclose(_run(patched), _run(trained.model), atol=1e-4, rtol=0)


def test_diffusers_load_lora_weights_reproduces_lorakit(trained, models):
    pipe = _pipeline(models, copy.deepcopy(trained.base))
    pipe.load_lora_weights({k: v.clone() for k, v in lora_format.to_diffusers(trained.lora).items()})
    got, want, plain = _run(pipe.transformer), _run(trained.model), _run(trained.base)
    assert (want - plain).abs().max() > 1e-3
    assert torch.allclose(got, want, atol=1e-4, rtol=0)


def test_full_size_universe():
    names = lora_format.comfy_module_names(30, 2)
    assert len(names) == 34 * 5 and set(names) <= keys.lora_key_universe()
    u = keys.lora_key_universe()
    assert "transformer.layers.29.attention.to_q" in u and "lora_unet_layers_29_attention_qkv" in u
    assert "lora_unet_layers_30_attention_qkv" not in u and "lora_unet_layers_0_attention_q_norm" not in u


# ------------------------------------------------------------------------------------------------ toy recipe

def test_toy_recipe_trains_saves_and_loads_back_through_the_real_loader(tmp_path):
    """The toy recipe (not yet exposed as TOY: its pretrained files are not built): its in-memory adapter trains the
    transformer it was given, and the files ``save`` writes load through Adapter.load to the same predictions."""
    import dataclasses

    from lorakit.config.schema import Config, ModelCfg, TrainingCfg
    from lorakit.models.base import Batch
    from lorakit.models.zimage import Adapter
    from lorakit.models.zimage.toy import FILES, TOY
    mods = TOY.make(0)
    assert sum(p.numel() * 2 for m in ("transformer", "text_encoder") for p in mods[m].parameters()) + \
        sum(p.numel() * 4 for p in mods["ae"].parameters()) < 8 * 2**20
    cfg = Config(training=dataclasses.replace(TrainingCfg(), device="cpu", mixed_precision="no", **TOY.training))
    a = TOY.adapter(mods, cfg)
    assert a.denoiser() is mods["transformer"]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 16, 8, 8, generator=g)
    text_in = a.encode_text(["a red circle on a blue background", ""])
    batch = Batch(latents=x0, text=text_in, original_sizes=[(64, 64)] * 2, crop_top_lefts=[(0, 0)] * 2,
                  target_sizes=[(64, 64)] * 2, loss_weight=torch.ones(2))
    noised = a.noise(x0, torch.randn(x0.shape, generator=g), batch, cfg.training, g)
    paths = TOY.save(mods, {"scaling_factor": 0.3611, "shift_factor": 0.1159}, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == set(FILES.values())
    model = ModelCfg(family="zimage", checkpoint=str(paths["checkpoint"]), text_encoder=str(paths["text_encoder"]),
                     ae=str(paths["ae"]), tokenizer_dir=str(paths["tokenizer_dir"]), config_dir=str(paths["config"]))
    b = Adapter(dataclasses.replace(cfg, model=model))
    b.load(model, cfg.memory, torch.device("cpu"), torch.float32)
    assert b.variant == "base"                                    # the toy is sampled as a base model, with CFG
    with torch.no_grad():
        for m in mods.values():
            if isinstance(m, torch.nn.Module):
                m.to(torch.bfloat16).float()
        mods["transformer"].load_state_dict({k: v.bfloat16().float() for k, v in
                                             mods["transformer"].state_dict().items()})
        assert torch.allclose(b.predict(noised, batch), a.predict(noised, batch), atol=1e-5)


def test_identify_from_the_header(files, tmp_path):
    from lorakit.models import base
    if not hasattr(base, "FileKind"):
        pytest.skip("FileKind (the identify hook) is not in this branch's base.py yet")
    from lorakit.models.zimage import identify
    from lorakit.safetensors_header import read_safetensors_header
    header, _meta = read_safetensors_header(files["checkpoint"])
    kind = identify(header)
    assert kind.family == "zimage" and kind.standard is False and "width 32, 2 blocks" in kind.what
    assert identify({"layers.0.self_attn.q_norm.weight": {"shape": [8], "dtype": "BF16"}}) is None
    full = {k: {"shape": list(v.shape), "dtype": "BF16"} for k, v in
            convert.diffusers_to_original(_meta_model().state_dict()).items()}
    assert identify({"model.diffusion_model." + k: v for k, v in full.items()}).standard is True


def _meta_model():
    from diffusers import ZImageTransformer2DModel
    with torch.device("meta"):
        return ZImageTransformer2DModel(**{k: v for k, v in configs.transformer_config().items()
                                           if not k.startswith("_")})
