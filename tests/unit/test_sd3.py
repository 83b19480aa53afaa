"""SD3.5: weights conversion against diffusers' own converter, prompt encoding against
StableDiffusion3Pipeline.encode_prompt, the forward and schedule against the pipeline, loading every layout users keep,
variant detection, and the LoRA layouts: ComfyUI's key map re-derived from its source (every key maps, the patched
weights reproduce lorakit's LoRA forward), sd-scripts' names, and diffusers' load_lora_weights (within 1e-4).

ComfyUI re-derived from comfyanonymous/ComfyUI: comfy/lora.py ``model_lora_keys_unet`` (``lora_unet_`` + the
underscored path of every ``diffusion_model.*.weight``; for SD3 ``transformer.<diffusers path>`` through
``comfy.utils.mmdit_to_diffusers``) and comfy/utils.py ``mmdit_to_diffusers`` / ``MMDIT_MAP_BASIC`` /
``MMDIT_MAP_BLOCK`` @ 2ba5cc8b867bc1aabe59fdaf0a8489e65012d603 (q/k/v as row slices of the fused qkv, the last block's
caption modulation through swap_scale_shift). sd-scripts: networks/lora_sd3.py
@ 077f6a4ff2ae39d43db738644b9ac6419e8812aa (``LORA_PREFIX_SD3 = "lora_unet"`` + the MMDiT module path, "." -> "_").
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.lora.inject import inject_lora, load_lora_into
from lorakit.models.base import LoraModule
from lorakit.models.sd3 import configs, convert, keys, lora_format, text, tiny
from tests.family_fixtures import check_fp8_upcast, exported_metadata, linear_outs, loaded_adapter, train_like

NET = SimpleNamespace(rank=4, alpha=2.0, module_ranks={}, train_text_encoder=False)
COMFYUI_UTILS_COMMIT = "2ba5cc8b867bc1aabe59fdaf0a8489e65012d603"
QUIET = lambda _m: None  # noqa: E731


@pytest.fixture(scope="module")
def models():
    return tiny.tiny_models(seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory, models):
    return tiny.save_split_files(tmp_path_factory.mktemp("sd3"), models, torch.float32)


def _pipeline(m, transformer=None, t5=True):
    from diffusers import StableDiffusion3Pipeline

    from lorakit.models.sd3.adapter import scheduler
    tl, tg, t3 = m["tokenizers"]
    return StableDiffusion3Pipeline(scheduler=scheduler(), vae=m["vae"], text_encoder=m["clip_l"], tokenizer=tl,
                                    text_encoder_2=m["clip_g"], tokenizer_2=tg,
                                    text_encoder_3=m["t5"] if t5 else None, tokenizer_3=t3 if t5 else None,
                                    transformer=transformer or m["transformer"])


# ------------------------------------------------------------------------------------------------ weights

def test_original_layout_matches_diffusers_single_file_converter(models):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
    want = models["transformer"].state_dict()
    orig = convert.diffusers_to_original(want)
    assert "joint_blocks.0.x_block.attn2.qkv.weight" in orig and "joint_blocks.1.x_block.attn2.qkv.weight" not in orig
    assert "joint_blocks.2.context_block.attn.proj.weight" not in orig     # the last caption stream is pre-only
    assert not any("to_q" in k or "transformer_blocks" in k for k in orig)
    theirs = convert_sd3_transformer_checkpoint_to_diffusers({"model.diffusion_model." + k: v.clone()
                                                              for k, v in orig.items()})
    ours = convert.original_to_diffusers({"model.diffusion_model." + k: v for k, v in orig.items()})
    assert set(theirs) == set(ours) == set(want)
    assert all(torch.equal(ours[k], want[k]) and torch.equal(theirs[k], want[k]) for k in want)


def test_variant_from_the_full_size_headers():
    """Header-only detection on the released sizes, built on the meta device from the shipped configs."""
    from diffusers import SD3Transformer2DModel

    from lorakit.models.sd3 import identify
    for variant, what in (("large", "SD3.5 Large"), ("medium", "SD3.5 Medium"), ("sd3-medium", "SD3 Medium")):
        cfg = {k: v for k, v in configs.transformer_config(variant).items() if not k.startswith("_")}
        with torch.device("meta"):
            model = SD3Transformer2DModel(**cfg)
        header = {"model.diffusion_model." + k: {"shape": list(v.shape), "dtype": "BF16"}
                  for k, v in convert.diffusers_to_original(model.state_dict()).items()}
        assert convert.detect(header, "x").variant == variant
        kind = identify(header)
        assert kind.family == "sd3" and kind.standard and what in kind.what, kind
    assert identify({"layers.0.attention.qkv.weight": {"shape": [9, 3], "dtype": "BF16"}}) is None
    with pytest.raises(ModelLoadError, match=r"^model.checkpoint: this is a FLUX.1 transformer, not an SD3"):
        convert.detect({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}, "model.checkpoint")


# ------------------------------------------------------------------------------------------------ text

@pytest.mark.parametrize("with_t5", [True, False])
def test_prompt_ids_and_embeddings_equal_the_pipeline(models, with_t5):
    pipe = _pipeline(models, t5=with_t5)
    prompts = ["a red circle zkx", "", "a photo of a blue square on a green field"]
    with torch.no_grad():
        pe, _npe, pooled, _npooled = pipe.encode_prompt(prompts, prompts, prompts, device=torch.device("cpu"),
                                                        do_classifier_free_guidance=False, max_sequence_length=24)
        got = text.encode(models["clip_l"], models["clip_g"], models["t5"] if with_t5 else None, models["tokenizers"],
                          prompts, max_length=24, joint_width=64)
    assert got["prompt_embeds"].shape == pe.shape == (3, 77 + 24, 64)
    assert torch.equal(got["prompt_embeds"], pe) and torch.equal(got["pooled"], pooled)
    assert got["ids_g"][1, 2].item() == models["tokenizers"][1].convert_tokens_to_ids("!")   # bigG pads with "!"
    assert got["ids_l"][1, 2].item() == models["tokenizers"][0].eos_token_id
    if not with_t5:
        assert not pe[:, 77:].any()


# ------------------------------------------------------------------------------------------------ adapter maths

def test_schedule_is_the_pipelines():
    from lorakit.models.sd3.adapter import sample_schedule
    s = _scheduler_sigmas(28)
    assert torch.allclose(sample_schedule(28), s, atol=1e-6)
    # independently: t from 1 down to the trained minimum σ_min = shift(1/1000), each shifted by 3, then 0
    shift = lambda t: 3 * t / (1 + 2 * t)  # noqa: E731
    t = torch.linspace(1.0, shift(torch.tensor(0.001, dtype=torch.float64)).item(), 28, dtype=torch.float64)
    assert torch.allclose(s[:-1].double(), shift(t), atol=1e-5) and s[-1] == 0


def _scheduler_sigmas(n):
    from diffusers import FlowMatchEulerDiscreteScheduler
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    s.set_timesteps(n)
    return s.sigmas.float()


@pytest.fixture(scope="module")
def adapter(files, tmp_path_factory):
    model = {**{k: files[k] for k in ("checkpoint", "clip_l", "clip_g", "t5xxl", "vae")}, "config_dir": files["config"]}
    return loaded_adapter("sd3", model, tmp_path_factory.mktemp("data"), t5_max_length=24)


def test_forward_and_euler_cfg_steps_match_the_pipeline(adapter, models):
    pipe = _pipeline(models, adapter.denoiser())
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 16, 8, 8, generator=g)
    with torch.no_grad():
        want = pipe(prompt="a red circle", negative_prompt="blue", height=64, width=64, num_inference_steps=2,
                    guidance_scale=4.0, latents=lat.clone(), output_type="latent", max_sequence_length=24).images
        cond, neg = adapter.encode_text(["a red circle"]), adapter.encode_text(["blue"])
        from lorakit.models.sd3.adapter import sample_schedule
        sig = sample_schedule(2)
        x = adapter.euler_cfg(lat.clone(), sig, 2, cond, neg, 4.0)  # the loop sample() runs
    assert torch.allclose(x, want, atol=1e-5)


def test_loading_layouts_and_variant(tmp_path, models, files):
    from lorakit.config.schema import ModelCfg
    from lorakit.models.sd3.load import load_components
    ref = models["transformer"].state_dict()
    # the official single file, every encoder bundled, bf16
    f = tiny.write_tiny_checkpoint(tmp_path / "single")
    c = load_components(ModelCfg(family="sd3", checkpoint=str(f["checkpoint"]), config_dir=str(f["config"])),
                        torch.float32, QUIET)
    assert c.files["t5xxl"] == c.files["clip_g"] == f["checkpoint"] and type(c.t5).__name__ == "T5EncoderModel"
    # bundled without T5 and a ComfyUI t5 file beside it: the file wins; without both: no T5 (zeros)
    g = tiny.save_single_file(tmp_path / "nt5" / "sd3.5_large_turbo.safetensors", models, torch.float32,
                              bundle=("clip_l", "clip_g"))
    cfg = dict(family="sd3", checkpoint=str(g), config_dir=str(files["config"]))
    assert load_components(ModelCfg(**cfg), torch.float32, QUIET).t5 is None
    c2 = load_components(ModelCfg(**cfg, t5xxl=str(files["t5xxl"])), torch.float32, QUIET)
    assert torch.equal(c2.t5.state_dict()["encoder.block.1.layer.1.DenseReluDense.wo.weight"],
                       models["t5"].state_dict()["encoder.block.1.layer.1.DenseReluDense.wo.weight"])
    assert torch.equal(c2.transformer.state_dict()["transformer_blocks.0.attn2.to_v.weight"],
                       ref["transformer_blocks.0.attn2.to_v.weight"])
    # ComfyUI split files (fp8 transformer, as ComfyUI's fp8 files): upcast on load
    check_fp8_upcast(load_components, tiny.model_cfg, files, tmp_path / "sd3.5_medium_fp8_e4m3fn.safetensors",
                     ref, "transformer_blocks.1.ff.net.0.proj.weight")
    # a diffusers folder (save_pretrained of the pipeline): everything from inside it
    folder = tmp_path / "stable-diffusion-3.5-medium"
    _pipeline(models).save_pretrained(str(folder))
    cd = load_components(ModelCfg(family="sd3", checkpoint=str(folder)), torch.float32, QUIET)
    assert torch.equal(cd.transformer.state_dict()["pos_embed.pos_embed"], ref["pos_embed.pos_embed"])
    assert cd.tokenizers[1]("red")["input_ids"] == models["tokenizers"][1]("red")["input_ids"]
    assert cd.clip_g.config.hidden_act == "gelu" and cd.vae.config.latent_channels == 16
    # a wrong file in a role / another family's checkpoint: one line naming what it is
    bad = load_components(tiny.model_cfg({**files, "clip_g": files["t5xxl"]}), torch.float32, QUIET)
    with pytest.raises(ModelLoadError, match="this is a T5 text encoder, not the CLIP text encoder SD3 needs"):
        bad.clip_g
    from lorakit.models.flux1.load import write_tiny_checkpoint as flux1_tiny
    f1 = flux1_tiny(tmp_path / "f1")
    with pytest.raises(ModelLoadError, match=r"model.checkpoint: .*flux1-dev.safetensors is a FLUX.1-dev-layout "
                       r"transformer .*, not a base model the sd3 family trains on; set model.family = \"flux1\""):
        load_components(tiny.model_cfg({**files, "checkpoint": f1["checkpoint"]}), torch.float32, QUIET)
    with pytest.raises(ConfigError, match="model.clip_l: required: sd3.5_medium_tiny.safetensors holds no clip_l"):
        load_components(ModelCfg(family="sd3", checkpoint=str(files["checkpoint"])), torch.float32, QUIET)


def test_variant_resolution():
    from lorakit.models.sd3.load import resolve_variant
    large = convert.Shape(38, 2432, 64, (), True, 192, 2, 16, 16, 4096, 2048)
    assert resolve_variant(large, "auto", "sd3.5_large_turbo.safetensors")[0] == "large-turbo"
    assert resolve_variant(large, "auto", "sd3.5_large.safetensors")[0] == "large"
    assert resolve_variant(large, "distilled", "x.safetensors")[0] == "large-turbo"
    medium = convert.Shape(24, 1536, 64, tuple(range(13)), True, 384, 2, 16, 16, 4096, 2048)
    assert resolve_variant(medium, "auto", "sd3.5_medium_turbo.safetensors")[0] == "medium"
    with pytest.raises(ConfigError, match="model.variant: 'distilled'"):
        resolve_variant(medium, "distilled", "x")


def test_metadata_values(adapter):
    meta = adapter.metadata(adapter.cfg)
    assert meta["modelspec.architecture"] == "stable-diffusion-v3.5-large/lora"      # a tiny ("custom") model
    from lorakit.models.sd3.adapter import ARCHITECTURE, BASE_VERSION
    assert ARCHITECTURE["medium"] == "stable-diffusion-v3.5-medium" and BASE_VERSION["medium"] == "5-medium"


def test_inspect_reads_every_variants_version_as_sd3():
    """`inspect` decides between families whose names a file fits by ss_base_model_version: each value the SD3
    variants write (5-large, 5-medium, medium) names sd3 and no other family."""
    from lorakit.lora.inspect import _claims
    from lorakit.models.registry import families
    from lorakit.models.sd3.adapter import BASE_VERSION

    for version in set(BASE_VERSION.values()):
        assert [f for f in families() if _claims(f, version)] == ["sd3"], version
    assert not _claims("sd3", "") and not _claims("sd3", "sdxl_base_v1-0")


# ------------------------------------------------------------------------------------------------ LoRA

def comfy_key_map(transformer) -> dict[str, tuple[str, tuple[int, int] | None, bool]]:
    """ComfyUI's key map for its SD3 model (see the module doc): name -> (original weight, row slice, swapped)."""
    orig = convert.diffusers_to_original(transformer.state_dict())
    out: dict[str, tuple[str, tuple[int, int] | None, bool]] = {}
    for k in orig:
        if k.endswith(".weight"):
            out["lora_unet_" + k[:-len(".weight")].replace(".", "_")] = (k, None, False)
    width = transformer.config.caption_projection_dim        # ComfyUI's offset = depth * 64 on the released sizes
    depth = transformer.config.num_layers
    for i in range(depth):
        b, o = f"transformer.transformer_blocks.{i}", f"joint_blocks.{i}"
        for j, p in enumerate("qkv"):
            out[f"{b}.attn.to_{p}"] = (f"{o}.x_block.attn.qkv.weight", (j * width, width), False)
            out[f"{b}.attn.add_{p}_proj"] = (f"{o}.context_block.attn.qkv.weight", (j * width, width), False)
            out[f"{b}.attn2.to_{p}"] = (f"{o}.x_block.attn2.qkv.weight", (j * width, width), False)
        for d, og in (("attn.to_out.0", "x_block.attn.proj"), ("attn2.to_out.0", "x_block.attn2.proj"),
                      ("ff.net.0.proj", "x_block.mlp.fc1"), ("ff.net.2", "x_block.mlp.fc2"),
                      ("norm1.linear", "x_block.adaLN_modulation.1"), ("attn.to_add_out", "context_block.attn.proj"),
                      ("ff_context.net.0.proj", "context_block.mlp.fc1"), ("ff_context.net.2", "context_block.mlp.fc2"),
                      ("norm1_context.linear", "context_block.adaLN_modulation.1")):
            out[f"{b}.{d}"] = (f"{o}.{og}.weight", None, i == depth - 1 and d == "norm1_context.linear")
    return {k: v for k, v in out.items() if v[0] in orig}


@pytest.fixture(scope="module")
def trained(models):
    base = models["transformer"]
    model = copy.deepcopy(base)
    c = base.config
    targets = lora_format.transformer_targets(NET, c.num_layers, c.dual_attention_layers)
    targets["transformer_blocks.0.attn.to_k"] = 6                     # uneven rank/alpha inside one fused qkv
    targets[f"transformer_blocks.{c.num_layers - 1}.norm1_context.linear"] = 4   # not a default target: swapped rows
    del targets["transformer_blocks.1.attn.add_v_proj"]               # and an untrained part
    lora = train_like(model, targets, lambda p: 3.0 if p.endswith("to_k") else NET.alpha)
    return SimpleNamespace(base=base, model=model, lora={"transformer": lora}, outs=linear_outs(model),
                           n=(c.num_layers, tuple(c.dual_attention_layers)))


def _run(model):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 8, 8, generator=g)
    ctx = torch.randn(1, 9, model.config.joint_attention_dim, generator=g)
    pooled = torch.randn(1, model.config.pooled_projection_dim, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([400.0]), encoder_hidden_states=ctx,
                     pooled_projections=pooled, return_dict=False)[0]


def test_targets_and_module_ranks():
    t = lora_format.transformer_targets(NET, 38, ())
    # per block 3+1 (x attn) + 3+1 (context attn) + 2 + 2 (mlps) + 2 (mods); the last: no context proj / mlp
    assert len(t) == 38 * 14 - 4 and "transformer_blocks.36.norm1_context.linear" in t
    assert "transformer_blocks.37.norm1_context.linear" not in t      # (shift, scale) vs (scale, shift): left out
    med = lora_format.transformer_targets(NET, 24, tuple(range(13)))
    assert len(med) == 24 * 14 - 4 + 13 * 4 and "transformer_blocks.12.attn2.to_q" in med
    only = lora_format.transformer_targets(SimpleNamespace(**{**vars(NET), "module_ranks": {"img_mod": 0,
                                                                                            "txt_mod": 0}}), 38, ())
    assert not any("norm1" in p for p in only) and len(only) == len(t) - 75
    with pytest.raises(ConfigError, match="network.module_ranks: 'single' is not a SD3 module type"):
        lora_format.transformer_targets(SimpleNamespace(**{**vars(NET), "module_ranks": {"single": 4}}), 38, ())


def test_kohya_names_are_sd_scripts_names(trained):
    """sd-scripts names each Linear of its MMDiT's joint blocks lora_unet_<path with _>: for the tiny model exactly the
    original weights' names (one per Linear), e.g. lora_unet_joint_blocks_0_x_block_attn_qkv."""
    sd = lora_format.to_comfy(trained.lora, trained.outs, *trained.n)
    names = {k.rsplit(".", 2)[0] for k in sd if k.endswith("lora_down.weight")}
    orig = convert.diffusers_to_original(trained.base.state_dict())
    expected = {"lora_unet_" + k[:-len(".weight")].replace(".", "_") for k in orig if k.startswith("joint_blocks.")
                and k.endswith(".weight") and ".ln_" not in k}
    assert names == expected and "lora_unet_joint_blocks_0_x_block_attn2_qkv" in names
    assert sd["lora_unet_joint_blocks_0_x_block_attn_qkv.alpha"].item() == 6 + 2 * 4  # uneven: alpha = total rank


def test_every_comfy_key_maps_with_the_right_shape(trained):
    kmap = comfy_key_map(trained.base)
    orig = convert.diffusers_to_original(trained.base.state_dict())
    for sd in (lora_format.to_comfy(trained.lora, trained.outs, *trained.n), lora_format.to_diffusers(trained.lora)):
        names = {k.rsplit(".", 2)[0] for k in sd if k.endswith("weight")}
        assert names <= set(kmap), sorted(names - set(kmap))[:3]
        for n in names:
            target, sl, _swap = kmap[n]
            up = sd.get(n + ".lora_up.weight", sd.get(n + ".lora_B.weight"))
            down = sd.get(n + ".lora_down.weight", sd.get(n + ".lora_A.weight"))
            assert (up.shape[0], down.shape[1]) == (sl[1] if sl else orig[target].shape[0], orig[target].shape[1])


def test_metadata_in_the_exported_header(adapter, trained, tmp_path):
    # sd-scripts' MMDiT type and SwarmUI's SD 3.5 Large LoRA class (a tiny model is "custom", written as Large;
    # every variant's pair: tests/unit/test_family_metadata_ids.py)
    meta = exported_metadata(adapter, trained.lora, tmp_path / "s.safetensors")
    assert meta["ss_base_model_version"] == "5-large"
    assert meta["modelspec.architecture"] == "stable-diffusion-v3.5-large/lora" and meta["lorakit_sd3_variant"] == "custom"


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_comfy_patching_reproduces_lorakit_exactly(trained, layout):
    """Apply the file as ComfyUI does (W += alpha/rank · up @ down on the mapped original weight or its row slice;
    swap_scale_shift for the last caption modulation of a diffusers-layout file), convert to diffusers and compare
    with lorakit's own LoRA forward."""
    sd = lora_format.to_comfy(trained.lora, trained.outs, *trained.n) if layout == "kohya" else \
        lora_format.to_diffusers(trained.lora)
    kmap = comfy_key_map(trained.base)
    orig = {k: v.clone() for k, v in convert.diffusers_to_original(trained.base.state_dict()).items()}
    for k in sd:
        if k.endswith((".lora_down.weight", ".lora_A.weight")):
            n = k.rsplit(".", 2)[0]
            down = sd[k]
            up = sd.get(n + ".lora_up.weight", sd.get(n + ".lora_B.weight"))
            alpha = float(sd[n + ".alpha"]) if n + ".alpha" in sd else down.shape[0]
            delta = alpha / down.shape[0] * (up @ down)
            target, sl, swap = kmap[n]
            delta = convert.swap_halves(delta) if swap else delta
            if sl:
                orig[target][sl[0]:sl[0] + sl[1]] += delta
            else:
                orig[target] += delta
    patched = copy.deepcopy(trained.base)
    patched.load_state_dict(convert.original_to_diffusers(orig))
    want, plain = _run(trained.model), _run(trained.base)
    assert (want - plain).abs().max() > 1e-3
    assert torch.allclose(_run(patched), want, atol=1e-4, rtol=0)


def test_diffusers_load_lora_weights_reproduces_lorakit(trained, models):
    pipe = _pipeline(models, copy.deepcopy(trained.base))
    pipe.load_lora_weights({k: v.clone() for k, v in lora_format.to_diffusers(trained.lora).items()})
    got, want = _run(pipe.transformer), _run(trained.model)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)


def test_full_size_universe_and_keymap():
    large = lora_format.kohya_module_names(38)
    assert len(large) == 38 * 10 - 3 and set(large) <= keys.lora_key_universe()
    u = keys.lora_key_universe()
    assert "lora_unet_joint_blocks_37_x_block_attn_qkv" in u and "lora_unet_joint_blocks_12_x_block_attn2_proj" in u
    assert "transformer.transformer_blocks.0.attn2.to_q" in u and "lora_unet_joint_blocks_38_x_block_attn_qkv" not in u
    assert "lora_unet_joint_blocks_23_context_block_mlp_fc1" not in keys.size_universe("medium")  # last block
    assert keys.lora_sizes({"lora_unet_joint_blocks_30_x_block_attn_proj"},
                           {"lora_unet_joint_blocks_30_x_block_attn_proj": 2432}) == ["large"]
    km = keys.full_lora_keymap()
    m = km.by_kohya["lora_unet_joint_blocks_0_x_block_attn_qkv"]
    assert m.out_features == 3 * 2432 and m.part_sizes() == (2432,) * 3
    assert km.by_kohya["lora_unet_joint_blocks_0_context_block_adaLN_modulation_1"].out_features == 6 * 2432
    assert "lora_unet_joint_blocks_37_context_block_adaLN_modulation_1" not in km.by_kohya   # swapped rows: left out
    assert "lora_unet_joint_blocks_12_x_block_attn2_qkv" in km.by_kohya                   # medium's attn2 too


# ------------------------------------------------------------------------------------------------ toy recipe

def test_toy_recipe_trains_saves_and_loads_back_through_the_real_loader(tmp_path):
    """The toy recipe (the shipped files: tests/integration/test_sd3_toy.py): at most 8 MB in bf16, its in-memory
    adapter trains the transformer it was given, and the single file ``save`` writes loads through Adapter.load to the
    same predictions."""
    import dataclasses

    from lorakit.config.schema import Config, ModelCfg, TrainingCfg
    from lorakit.models.base import Batch
    from lorakit.models.sd3 import Adapter
    from lorakit.models.sd3.toy import FILES, TOY
    mods = TOY.make(0)
    assert sum(p.numel() * 2 for m in mods.values() for p in m.parameters()) < 8 * 2**20
    cfg = Config(training=dataclasses.replace(TrainingCfg(), device="cpu", mixed_precision="no", **TOY.training))
    a = TOY.adapter(mods, cfg)
    assert a.denoiser() is mods["transformer"]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 16, 8, 8, generator=g)
    text_in = a.encode_text(["a red circle on a blue background", ""])
    assert text_in["prompt_embeds"].shape == (2, 77 + 32, 32) and text_in["pooled"].shape == (2, 32)
    batch = Batch(latents=x0, text=text_in, original_sizes=[(64, 64)] * 2, crop_top_lefts=[(0, 0)] * 2,
                  target_sizes=[(64, 64)] * 2, loss_weight=torch.ones(2))
    noised = a.noise(x0, torch.randn(x0.shape, generator=g), batch, cfg.training, g)
    with torch.no_grad():                                    # what the bf16 files hold
        for m in mods.values():
            m.to(torch.bfloat16).float()
    paths = TOY.save(mods, {"scaling_factor": 1.5305, "shift_factor": 0.0609}, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == set(FILES.values())
    assert paths["checkpoint"].stat().st_size < 8 * 2**20
    model = ModelCfg(family="sd3", checkpoint=str(paths["checkpoint"]), config_dir=str(paths["config"]))
    b = Adapter(dataclasses.replace(cfg, model=model))
    b.load(model, cfg.memory, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        assert torch.allclose(b.encode_text(["a red circle on a blue background", ""])["prompt_embeds"],
                              text_in["prompt_embeds"], atol=0.05)
        assert torch.allclose(b.predict(noised, batch), a.predict(noised, batch), atol=1e-5)


def test_import_of_an_sd_scripts_sd3_config(tmp_path):
    """sd3_train_network.py's options: network_module networks.lora_sd3 chooses sd3, clip_l / clip_g / t5xxl /
    t5xxl_max_token_length arrive as sd3's model and training keys, and the result loads."""
    from lorakit.config.kohya_import import import_kohya_args, kohya_family
    from lorakit.config.load import load_config
    args = {"pretrained_model_name_or_path": "/m/sd3.5_large.safetensors", "network_module": "networks.lora_sd3",
            "clip_l": "/m/clip_l.safetensors", "clip_g": "/m/clip_g.safetensors", "t5xxl": "/m/t5xxl_fp16.safetensors",
            "t5xxl_max_token_length": 154, "network_dim": 16, "train_data_dir": "/d"}
    assert kohya_family(args) == "sd3"
    data, _skipped = import_kohya_args(args, family="sd3")
    cfg = load_config(tmp_path / "imported.toml", data={**data, "model": {**data["model"], "family": "sd3"}})
    assert (cfg.model.clip_g, cfg.model.t5xxl, cfg.training.t5_max_length) == ("/m/clip_g.safetensors",
                                                                             "/m/t5xxl_fp16.safetensors", 154)


# ------------------------------------------------------------------------------------------------ text-encoder LoRA

def test_clip_lora_names_and_diffusers_load_reproduce_lorakit(models):
    """network.train_text_encoder: CLIP-L / CLIP-G LoRA as sd-scripts names it (lora_te1_ / lora_te2_ +
    text_model path, which ComfyUI's model_lora_keys_clip maps: lora_te1_text_model_encoder_layers_{i}_{LORA_CLIP_MAP}),
    and the diffusers layout, which StableDiffusion3Pipeline.load_lora_weights loads to the same prompt embeddings."""
    from lorakit.models.sd3.lora_format import text_encoder_names
    from lorakit.models.clip_t5 import text_encoder_lora_targets
    g = torch.Generator().manual_seed(2)
    lora, trained = {}, {}
    for comp, key in (("te1", "clip_l"), ("te2", "clip_g")):
        te = copy.deepcopy(models[key])
        targets = text_encoder_lora_targets(te, 4)
        inject_lora(te, targets, dict.fromkeys(targets, 2.0), 0.0, seed=0)
        mods = dict(te.named_modules())
        lora[comp] = {p: LoraModule(down=torch.randn(4, mods[p].base_layer.in_features, generator=g) * 0.3,
                                    up=torch.randn(mods[p].base_layer.out_features, 4, generator=g) * 0.3, alpha=2.0)
                      for p in targets}
        load_lora_into(te, lora[comp])
        trained[key] = te
    kohya = text_encoder_names(lora, "kohya")
    clip_map = ("mlp_fc1", "mlp_fc2", "self_attn_k_proj", "self_attn_q_proj", "self_attn_v_proj", "self_attn_out_proj")
    comfy = {f"lora_te{n}_text_model_encoder_layers_{b}_{c}" for n, layers in ((1, 2), (2, 2)) for b in range(layers)
             for c in clip_map}
    assert {k.rsplit(".", 2)[0] for k in kohya if k.endswith("lora_down.weight")} == comfy
    prompts = ["a red circle zkx", ""]
    with torch.no_grad():
        want = text.encode(trained["clip_l"], trained["clip_g"], models["t5"], models["tokenizers"], prompts, 24, 64)
        plain = text.encode(models["clip_l"], models["clip_g"], models["t5"], models["tokenizers"], prompts, 24, 64)
        pipe = _pipeline({**models, "clip_l": copy.deepcopy(models["clip_l"]),
                          "clip_g": copy.deepcopy(models["clip_g"])})
        pipe.load_lora_weights({k: v.clone() for k, v in text_encoder_names(lora, "diffusers").items()})
        pe, _n, pooled, _np = pipe.encode_prompt(prompts, prompts, prompts, device=torch.device("cpu"),
                                                 do_classifier_free_guidance=False, max_sequence_length=24)
    assert (want["prompt_embeds"] - plain["prompt_embeds"]).abs().max() > 1e-3
    assert torch.allclose(pe, want["prompt_embeds"], atol=1e-4, rtol=0)
    assert torch.allclose(pooled, want["pooled"], atol=1e-4, rtol=0)


def test_adapter_trains_clips_when_asked(adapter):
    import dataclasses
    net = dataclasses.replace(adapter.cfg.network, train_text_encoder=True)
    a = copy.copy(adapter)
    a.cfg = dataclasses.replace(adapter.cfg, network=net)
    targets = a.lora_targets(net)
    assert set(targets) == {"transformer", "te1", "te2"} and set(a.text_encoder_modules()) == {"te1", "te2"}
    assert "text_model.encoder.layers.1.mlp.fc2" in targets["te2"] or "encoder.layers.1.mlp.fc2" in targets["te2"]
    assert adapter.text_encoder_modules() == {}                                   # off: nothing of the CLIPs trains


def test_network_weights_warm_start_from_a_kohya_file(adapter, tmp_path):
    """network.weights: a kohya SD3 file (fused qkv) put back on the run's split Linears with the family's key map
    built on the loaded model, every ΔW equal to the file's."""
    import dataclasses

    from lorakit.lora.io import save_safetensors_atomic
    from lorakit.train import warmstart
    tr = adapter.denoiser()
    c = tr.config
    targets = lora_format.transformer_targets(NET, c.num_layers, c.dual_attention_layers)
    mods = dict(tr.named_modules())
    g = torch.Generator().manual_seed(4)
    lora = {p: LoraModule(down=torch.randn(4, mods[p].in_features, generator=g),
                          up=torch.randn(mods[p].out_features, 4, generator=g), alpha=2.0) for p in targets}
    f = tmp_path / "prev.safetensors"
    save_safetensors_atomic(f, lora_format.to_comfy({"transformer": lora}, common_widths(tr), c.num_layers,
                                                    c.dual_attention_layers), {})
    cfg = dataclasses.replace(adapter.cfg, network=dataclasses.replace(adapter.cfg.network, weights=str(f), rank=4,
                                                                       alpha=2.0))
    got = warmstart.read(cfg, adapter, {"transformer": targets}, {"transformer": dict.fromkeys(targets, 2.0)},
                         QUIET)["transformer"]
    assert set(got) == set(targets)
    for p in ("transformer_blocks.0.attn2.to_k", "transformer_blocks.2.attn.add_v_proj",
              "transformer_blocks.1.ff.net.2"):
        assert torch.allclose(got[p].up @ got[p].down, lora[p].up @ lora[p].down, atol=1e-4)


def common_widths(model):
    from lorakit.models.common import linear_widths
    return linear_widths(model)


# ------------------------------------------------------------------------------------------------ LoRA tools

@pytest.mark.parametrize("layout", ["kohya", "comfyui", "diffusers"])
def test_lora_tools_files_land_on_their_weights_in_comfyui_and_verify_agrees(models, layout):
    """A LoRA on every module of the tiny model's key map (joint blocks, CLIP-L, CLIP-G), written by the LoRA tools
    (convert) in each layout, applied through ComfyUI's SD3 map re-derived above (comfy_key_map) and its CLIP map
    (tests/unit/comfyui_rederived.py): no key is left over, every weight or q/k/v row slice moves by exactly
    (alpha/rank)·up@down, and `lorakit verify` counts the same keys applied by ComfyUI, the diffusers-layout file
    alone applied by diffusers and the kohya layout alone by sd-scripts."""
    from lorakit.lora.formats.layouts import read_lora, write_lora
    from lorakit.lora.tools.verify import verify
    from tests.unit import comfyui_rederived as cu
    from tests.unit.test_lora_tools import kohya_lora, ref_delta, rel

    tr = models["transformer"]
    km = keys.lora_keymap(tr, models["clip_l"], models["clip_g"])
    assert {m.component for m in km.modules} == {"denoiser", "te1", "te2"}
    sd = kohya_lora(km, rank=3, alpha=2.0, seed=5)
    state = read_lora(sd, {}, [km], where="t")
    assert not state.unmatched and len(state.modules) == len(km.modules)
    weights = {"diffusion_model." + k: v.float() for k, v in convert.diffusers_to_original(tr.state_dict()).items()}
    clip = {f"clip_{w}.transformer.{k}": v.float() for w in "lg" for k, v in tiny._clip_sd(models[f"clip_{w}"]).items()}
    weights.update(clip)
    kmap: dict = {n: ("diffusion_model." + t if sl is None else ("diffusion_model." + t, (0, *sl)))
                  for n, (t, sl, swap) in comfy_key_map(tr).items() if not swap}
    kmap.update({k[:-len(".weight")]: k for k in weights if k.startswith("diffusion_model.")})  # the generic form
    kmap.update(cu.model_lora_keys_clip(clip))
    # model_lora_keys_clip: clip_g with clip_l present is also read as text_encoder_2.<path> (diffusers names)
    kmap.update({"text_encoder_2." + k[len("clip_g.transformer."):-len(".weight")]: k for k in clip
                 if k.startswith("clip_g.transformer.text_model.encoder.layers.")})
    file = write_lora(state, km, layout)["tensors"]
    patches, not_loaded = cu.load_lora_sliced(file, kmap)
    assert not not_loaded, sorted(not_loaded)[:3]
    loaders = verify(file, km)["loaders"]
    assert loaders["comfyui"]["applied"] == len(file) and not loaders["comfyui"]["ignored"]
    assert loaders["diffusers"]["applied"] == (len(file) if layout == "diffusers" else 0)
    assert loaders["kohya"]["applied"] == (len(file) if layout == "kohya" else 0)
    patched = cu.apply_sliced(weights, patches)
    for m in km.modules:
        target = ("diffusion_model." if m.component == "denoiser" else
                  "clip_l.transformer." if m.component == "te1" else "clip_g.transformer.") + m.native + ".weight"
        want = ref_delta(sd, km.kohya_name(m)).float()
        got = patched[target] - weights[target]
        assert rel(got, want.reshape(got.shape)) < 1e-5, (layout, m.native)
