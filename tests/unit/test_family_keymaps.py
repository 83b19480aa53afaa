"""The LoRA tools' key maps of SD 1.5, FLUX.2 and Z-Image (``full_lora_keymap``), checked against independent
computations: the full-size module lists (sd-scripts' SD 1.x counts, FLUX.2's 80 / 112 / 160 block modules, Z-Image's
trainable Linears), ComfyUI's key map re-derived from its source (tests/unit/comfyui_rederived.py) applied to tiny
models of the real classes, A1111's SD 1.x name conversion re-derived from its source, and diffusers' own
``load_lora_weights`` on tiny pipelines."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from lorakit.lora.formats.layouts import read_lora, write_lora
from lorakit.lora.tools.verify import verify
from tests.unit import comfyui_rederived as cu
from tests.unit.test_lora_tools import kohya_lora, ref_delta, rel


# ------------------------------------------------------------------------------------------------ full size

def test_full_size_flux2_maps_hold_each_sizes_block_modules():
    from lorakit.models.flux2 import configs, full_lora_keymap, lora_format

    maps = full_lora_keymap()
    assert [k.variant for k in maps] == list(configs.SIZES) and {k.family for k in maps} == {"flux2"}
    for keys, want in zip(maps, (80, 112, 160)):
        nd, ns, _ctx, guidance = configs.SIZE_FACTS[keys.variant]
        blocks = {keys.kohya_name(m) for m in keys.modules if m.native.startswith(("double_blocks.", "single_blocks."))}
        assert blocks == set(lora_format.comfy_module_names(nd, ns)) and len(blocks) == want
        hidden = 3072 if keys.variant == "klein-4b" else 4096 if keys.variant == "klein-9b" else 6144
        qkv = keys.by_kohya["lora_unet_double_blocks_0_img_attn_qkv"]
        assert (qkv.out_features, qkv.in_features, qkv.part_sizes()) == (3 * hidden, hidden, (hidden,) * 3)
        lin1 = keys.by_kohya[f"lora_unet_single_blocks_{ns - 1}_linear1"]   # q, k, v + the SwiGLU MLP's 2 x 3 x hidden
        assert (lin1.out_features, lin1.diffusers) == (9 * hidden, (f"single_transformer_blocks.{ns - 1}.attn."
                                                                        "to_qkv_mlp_proj",))
        assert ("lora_unet_guidance_in_in_layer" in keys.by_kohya) == guidance
        assert "lora_unet_final_layer_adaLN_modulation_1" not in keys.by_kohya   # halves swapped: kept by name only


def test_full_size_sd15_map_is_sd_scripts_names():
    """sd-scripts: 192 U-Net + 72 text-encoder modules, 278 U-Net modules with conv_dim; names from diffusers paths."""
    from lorakit.models.sd15 import full_lora_keymap, lora_key_universe
    from lorakit.models.sd15.adapter import kohya_name

    keys = full_lora_keymap()
    assert set(keys.by_kohya) == lora_key_universe() and len(keys.modules) == 350
    for m in keys.modules:
        assert keys.kohya_name(m) == kohya_name("unet" if m.component == "denoiser" else "te1", m.diffusers[0])
    m = keys.by_kohya["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert (m.native, m.checkpoint_key, m.kernel) == ("input_blocks.1.1.proj_in",
                                                       "model.diffusion_model.input_blocks.1.1.proj_in.weight", (1, 1))
    assert keys.by_kohya["lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k"].in_features == 768
    te = keys.by_kohya["lora_te_text_model_encoder_layers_11_mlp_fc1"]
    assert (te.out_features, te.checkpoint_key) == (
        3072, "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight")
    # the LDM-path names A1111 / ComfyUI also read are resolved to the same modules
    assert keys.by_kohya_diffusers["lora_unet_input_blocks_1_1_proj_in"] == (m, -1)


def test_full_size_zimage_map():
    from lorakit.models.zimage import full_lora_keymap, lora_format, lora_key_universe

    keys = full_lora_keymap()
    assert set(keys.by_kohya) <= lora_key_universe() and len(keys.modules) == 208
    assert set(lora_format.comfy_module_names(30, 2)) <= set(keys.by_kohya)          # 34 blocks x 5 trained Linears
    qkv = keys.by_kohya["lora_unet_layers_29_attention_qkv"]
    assert qkv.diffusers == tuple(f"layers.29.attention.to_{p}" for p in "qkv") and qkv.part_sizes() == (3840,) * 3
    assert keys.by_kohya["lora_unet_all_final_layer_2-1_linear".replace("all_final_layer_2-1", "final_layer")] \
        .diffusers == ("all_final_layer.2-1.linear",)


# ------------------------------------------------------------------------------------------------ tiny models

@pytest.fixture(scope="module")
def tiny():
    """Per family: the tiny model's key map, its ComfyUI state dicts (model, clip) and ComfyUI's key map for them."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from lorakit.models.flux2 import convert as f2conv, lora_keymap as flux2_keymap, tiny as f2tiny
    from lorakit.models.sd15 import lora_keymap as sd15_keymap
    from lorakit.models.sd15.convert import ldm_state_dict
    from lorakit.models.sd15.load import build_models, tiny_configs
    from lorakit.models.zimage import convert as zconv, lora_keymap as zimage_keymap, tiny as ztiny

    out = {}
    sd = build_models(tiny_configs(), seed=0)
    ldm = ldm_state_dict(dtype=None, **sd)
    model = {k[len("model."):]: v.float() for k, v in ldm.items() if k.startswith("model.diffusion_model.")}
    clip = {"clip_l.transformer." + k[len("cond_stage_model.transformer."):]: v.float() for k, v in ldm.items()
            if k.startswith("cond_stage_model.transformer.")}
    order = sorted(model)                  # unet_to_diffusers, read off diffusers' own LDM converter (tagged tensors)
    back = convert_ldm_unet_checkpoint({"model." + k: torch.full((1,), float(i)) for i, k in enumerate(order)},
                                       dict(tiny_configs()["unet"]))
    dmap = {k: order[int(t.item())] for k, t in back.items() if k.endswith(".weight")}
    out["sd15"] = dict(keys=sd15_keymap(sd["unet"], sd["text_encoder"]), model=model, clip=clip, modules=sd,
                       key_map={**cu.model_lora_keys_unet_full(model, "sd", dmap), **cu.model_lora_keys_clip(clip)})
    f2 = f2tiny.tiny_models(seed=1)
    tr = f2["transformer"]
    model = {"diffusion_model." + k: v.float() for k, v in f2conv.diffusers_to_bfl(tr.state_dict()).items()}
    fmap = cu.flux_to_diffusers(len(tr.transformer_blocks), len(tr.single_transformer_blocks), tr.inner_dim)
    out["flux2"] = dict(keys=flux2_keymap(tr), model=model, clip={}, modules=f2,
                        key_map=cu.model_lora_keys_unet_full(model, "flux", fmap))
    z = ztiny.tiny_models(seed=2)
    tr = z["transformer"]
    model = {"diffusion_model." + k: v.float() for k, v in zconv.diffusers_to_original(tr.state_dict()).items()}
    c = tr.config
    zmap = cu.z_image_to_diffusers(c.n_layers, c.dim, c.n_refiner_layers)
    out["zimage"] = dict(keys=zimage_keymap(tr), model=model, clip={}, modules=z,
                         key_map=cu.model_lora_keys_unet_full(model, "lumina2", zmap))
    from lorakit.models.qwenimage import lora_keymap as qwen_keymap, tiny as qtiny
    q = qtiny.tiny_models(seed=3)
    tr = q["transformer"]                 # ComfyUI's Qwen-Image model keeps diffusers' module paths
    model = {"diffusion_model." + k: v.float() for k, v in tr.state_dict().items()}
    out["qwenimage"] = dict(keys=qwen_keymap(tr), model=model, clip={}, modules=q,
                            key_map=cu.model_lora_keys_unet_full(model, "qwenimage", {}))
    return out


def _target(fam: str, keys, m) -> str:
    if m.component == "denoiser":
        return "diffusion_model." + m.native + ".weight"
    return "clip_l.transformer." + m.native + ".weight"


# the layouts ComfyUI reads for each family (SD's diffusers layout names attention without ".processor.": not read)
COMFY_LAYOUTS = {"sd15": ("kohya", "comfyui"), "flux2": ("kohya", "comfyui", "diffusers"),
                 "zimage": ("kohya", "comfyui", "diffusers"), "qwenimage": ("kohya", "comfyui", "diffusers")}


@pytest.mark.parametrize("fam", sorted(COMFY_LAYOUTS))
def test_every_module_in_every_layout_lands_on_its_weight_in_comfyui(tiny, fam):
    """A LoRA on every module of the tiny map, written by the LoRA tools in each layout, applied as ComfyUI's
    re-derived key map does: no key is "not loaded", every weight (or its q/k/v row slice) moves by exactly
    (alpha/rank)·up@down, and `lorakit verify` counts the same keys applied."""
    t = tiny[fam]
    keys = t["keys"]
    sd = kohya_lora(keys, rank=3, alpha=2.0, seed=5)
    state = read_lora(sd, {}, [keys], where="t")
    assert not state.unmatched and len(state.modules) == len(keys.modules)
    weights = {**t["model"], **t["clip"]}
    for layout in COMFY_LAYOUTS[fam]:
        file = write_lora(state, keys, layout)["tensors"]
        patches, not_loaded = cu.load_lora_sliced(file, t["key_map"])
        report = verify(file, keys)["loaders"]["comfyui"]
        # `lorakit verify` says exactly what ComfyUI drops (FLUX.2: its embedders / shared modulation by diffusers name)
        assert set(report["ignored"]) == not_loaded and not report["mismatched"], layout
        assert report["applied"] == len(file) - len(not_loaded)
        if layout != "diffusers" or fam != "flux2":
            assert not not_loaded, (layout, sorted(not_loaded)[:3])
        else:
            assert {k.split(".")[1] for k in not_loaded} == {"time_guidance_embed", "double_stream_modulation_img",
                                                            "double_stream_modulation_txt", "single_stream_modulation"}
        patched = cu.apply_sliced(weights, patches)
        for m in keys.modules:
            target = _target(fam, keys, m)
            want = ref_delta(sd, keys.kohya_name(m)).float()
            if any(k.startswith(keys.diffusers_prefix["denoiser"] + p + ".") for p in m.diffusers for k in not_loaded):
                want = torch.zeros_like(want)
            got = patched[target] - weights[target]
            assert rel(got, want.reshape(got.shape)) < 1e-5 if want.any() else not got.any(), (layout, m.native)


def test_sd15_a1111_reads_every_kohya_name(tiny):
    """A1111's extensions-builtin/Lora/networks.py (convert_diffusers_name_to_compvis for SD 1.x, then the compvis
    module names of assign_network_names_to_compvis_modules, the lora_unet -> diffusion_model fallback), re-derived:
    every sd-scripts name lorakit writes, and every LDM-path name, lands on an LDM module of the LoRA's shape."""
    t = tiny["sd15"]
    keys = t["keys"]
    suffix = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
              "conv_shortcut": "skip_connection"}

    def compvis(key: str) -> str:
        m = re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
        if m:
            s = suffix.get(m[4], m[4]) if m[2] == "resnets" else m[4]
            return f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{s}"
        m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key)
        if m:
            s = suffix.get(m[3], m[3]) if m[1] == "resnets" else m[3]
            return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{s}"
        m = re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
        if m:
            s = suffix.get(m[4], m[4]) if m[2] == "resnets" else m[4]
            return f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{s}"
        m = re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key)
        if m:
            return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
        m = re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key)
        if m:
            return f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"
        m = re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key)
        if m:
            return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
        return key

    layers = {k[:-len(".weight")].replace(".", "_"): v.shape for k, v in t["model"].items()}
    layers.update({k[len("clip_l."):-len(".weight")].replace(".", "_"): v.shape for k, v in t["clip"].items()})

    def resolve(name: str):
        key = compvis(name)
        if key not in layers and "lora_unet" in name:
            key = name.replace("lora_unet", "diffusion_model")
        return layers.get(key)

    sd = kohya_lora(keys, rank=2, alpha=1.0)
    out = write_lora(read_lora(sd, {}, [keys], where="t"), keys, "kohya")["tensors"]
    names = {k.rsplit(".", 2)[0] for k in out if k.endswith(".lora_up.weight")}
    assert any(n.startswith("lora_unet_down_blocks_") for n in names) and any(n.startswith("lora_te_") for n in names)
    for name in names:
        shape = resolve(name)
        assert shape is not None, name
        assert out[name + ".lora_up.weight"].shape[0] == shape[0] and \
            out[name + ".lora_down.weight"].flatten(1).shape[1] == torch.Size(shape[1:]).numel(), name
    for m in keys.modules:                                   # the LDM-path kohya names, read by both A1111 and lorakit
        if m.component == "denoiser":
            name = "lora_unet_" + m.native.replace(".", "_")
            assert resolve(name) is not None and keys.by_kohya_diffusers[name][0] is m


# the modules lorakit trains (kohya's SD targets without LoCon, CLIP; FLUX.2 / Z-Image block Linears)
TRAINED = {"sd15": lambda m: ".attentions." in m.diffusers[0] or m.component == "te1",
           "flux2": lambda m: m.native.startswith(("double_blocks.", "single_blocks.")),
           "zimage": lambda m: m.native.startswith(("layers.", "noise_refiner.", "context_refiner."))}


@pytest.mark.parametrize("fam", ["sd15", "flux2", "zimage"])
def test_diffusers_load_lora_weights_applies_the_tools_files(tiny, fam):
    """The LoRA tools' diffusers-layout file (and the kohya-layout one) through the family pipeline's own
    load_lora_weights: the denoiser's output equals the base weights plus (alpha/rank)·up@down, within 1e-4."""
    t = tiny[fam]
    keys = t["keys"]
    sub = keys.with_modules(tuple(m for m in keys.modules if TRAINED[fam](m)))
    sd = kohya_lora(sub, rank=2, alpha=1.0, seed=7)
    sd = {k: v * 0.3 for k, v in sd.items()}
    sd.update({k: torch.tensor(1.0) for k in sd if k.endswith(".alpha")})
    state = read_lora(sd, {}, [sub], where="t")
    den, pipe_den = _denoiser(fam, t)
    merged = copy.deepcopy(den)
    named = dict(merged.named_modules())
    with torch.no_grad():
        for m in sub.modules:
            if m.component != "denoiser":
                continue
            delta = ref_delta(sd, sub.kohya_name(m)).float()
            rows = 0
            for path, n in zip(m.diffusers, m.part_sizes()):
                w = named[path].weight
                w += delta[rows:rows + n].reshape(w.shape)
                rows += n
    want, plain = _run(fam, merged), _run(fam, den)
    assert (want - plain).abs().max() > 1e-3
    for layout in ("diffusers", "kohya"):
        if fam == "zimage" and layout == "kohya":
            continue          # diffusers never splits Z-Image's fused qkv (verify says so below)
        file = write_lora(state, sub, layout)["tensors"]
        pipe = pipe_den(copy.deepcopy(den))
        pipe.load_lora_weights({k: v.clone() for k, v in file.items()})
        got = _run(fam, _pipe_denoiser(fam, pipe))
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (layout, (got - want).abs().max())
        assert verify(file, sub)["loaders"]["diffusers"]["applied"] == len(file), layout
    if fam == "zimage":
        report = verify(write_lora(state, sub, "kohya")["tensors"], sub)["loaders"]["diffusers"]
        assert report["ignored"] and all("_attention_qkv." in k for k in report["ignored"])


def _denoiser(fam, t):
    m = t["modules"]
    if fam == "sd15":
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        from lorakit.models.sd15 import configs
        from lorakit.models.tokenizers import clip_tokenizer

        def make(unet):
            return StableDiffusionPipeline(vae=m["vae"], text_encoder=copy.deepcopy(m["text_encoder"]),
                                           tokenizer=clip_tokenizer(), unet=unet,
                                           scheduler=EulerDiscreteScheduler.from_config(configs.SCHEDULER),
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return m["unet"], make
    if fam == "flux2":
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
        return m["transformer"], lambda tr: Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                                                               text_encoder=None, tokenizer=None, transformer=tr)
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    return m["transformer"], lambda tr: ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=m["ae"],
                                                       text_encoder=m["text_encoder"], tokenizer=m["tokenizer"],
                                                       transformer=tr)


def _pipe_denoiser(fam, pipe):
    return pipe.unet if fam == "sd15" else pipe.transformer


def _run(fam, model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if fam == "sd15":
            x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, model.config.cross_attention_dim,
                                                                      generator=g)
            return model(x, torch.tensor([500]), encoder_hidden_states=ctx).sample
        if fam == "flux2":
            from lorakit.models.flux2.maths import image_position_ids
            from lorakit.models.flux2.text import text_position_ids
            c = model.config
            return model(hidden_states=torch.randn(1, 16, c.in_channels, generator=g),
                         encoder_hidden_states=torch.randn(1, 6, c.joint_attention_dim, generator=g),
                         timestep=torch.tensor([0.6]), img_ids=image_position_ids(4, 4), txt_ids=text_position_ids(6),
                         guidance=None, return_dict=False)[0]
        x = [torch.randn(model.config.in_channels, 1, 8, 8, generator=g)]
        cap = [torch.randn(7, model.config.cap_feat_dim, generator=g)]
        return model(x, torch.tensor([0.4]), cap, return_dict=False)[0][0]


# ------------------------------------------------------------------------------------------------ the CLI tools

def _sized_lora(keys, names, seed=0):
    """A rank-1 kohya LoRA on the named modules with the shapes of ``keys`` (a full-size map)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for n in names:
        m = keys.by_kohya[n]
        sd[n + ".lora_down.weight"] = torch.randn(1, m.in_features, generator=g) * 0.01
        sd[n + ".lora_up.weight"] = torch.randn(m.out_features, 1, generator=g) * 0.01
        sd[n + ".alpha"] = torch.tensor(1.0)
    return sd


def test_the_readers_pick_the_flux2_size_the_shapes_fit():
    """The fast variant of the CLI test below: equal names, the shapes decide (9B file -> klein-9b, 4B -> klein-4b)."""
    from lorakit.models.flux2 import full_lora_keymap

    maps = full_lora_keymap()
    names = ["lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_3_linear1"]
    for keys in maps:
        state = read_lora(_sized_lora(keys, names), {}, maps, where="t")
        assert state.keys is keys and not state.unmatched


@pytest.mark.slow  # ~20 s: three CLI round trips on full-size shapes
def test_cli_tools_pick_the_flux2_size_the_shapes_fit(tmp_path, capsys):
    """Klein 4B / 9B / dev share their lower block names: the tools pick the map whose shapes fit, so a 9B file
    converts and verifies (sd-scripts loads no FLUX.2: not counted) as 9B, a 4B file as 4B."""
    from safetensors.torch import load_file, save_file

    from lorakit.cli import main
    from lorakit.models.flux2 import full_lora_keymap

    k4, k9, _dev = full_lora_keymap()
    names = ["lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_img_mlp_0",
             "lora_unet_single_blocks_3_linear1"]
    for keys, variant in ((k9, "klein-9b"), (k4, "klein-4b")):
        sd = _sized_lora(keys, names)
        src = tmp_path / f"{variant}.safetensors"
        save_file(sd, str(src), metadata={"ss_base_model_version": "flux2"})
        state = read_lora(sd, {}, full_lora_keymap(), where="t")
        assert (state.family, state.keys.variant) == ("flux2", variant)
        assert main(["verify", str(src), "--family", "flux2"]) == 0
        out = capsys.readouterr().out
        assert "kohya      loads no flux2 LoRA at all" in out and "every loader applies every key" in out
        assert main(["convert", str(src), "--to", "diffusers", "--family", "flux2",
                     "-o", str(tmp_path / f"{variant}-d.safetensors")]) == 0
        d = load_file(str(tmp_path / f"{variant}-d.safetensors"))
        hidden = keys.by_kohya[names[0]].in_features
        assert d["transformer.transformer_blocks.0.attn.to_k.lora_B.weight"].shape == (hidden, 1)
        assert main(["convert", str(tmp_path / f"{variant}-d.safetensors"), "--to", "kohya", "--family", "flux2",
                     "-o", str(tmp_path / f"{variant}-k.safetensors")]) == 0
        back = load_file(str(tmp_path / f"{variant}-k.safetensors"))
        for n in names:
            assert rel(ref_delta(back, n), ref_delta(sd, n)) < 1e-5
    capsys.readouterr()


def test_cli_merge_into_and_extract_sd15_single_file(tmp_path, capsys):
    """`lorakit merge --into` an SD 1.5 LDM file with an sd-scripts-named LoRA, then `lorakit extract` it back: the
    weights move by ΔW, the extracted LoRA has sd-scripts' names and the same ΔW."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lorakit.cli import main
    from lorakit.lora.tools.files import base_keymap
    from lorakit.models.sd15 import full_lora_keymap
    from lorakit.models.sd15.load import write_tiny_checkpoint

    base = write_tiny_checkpoint(tmp_path / "m")["checkpoint"]
    keys = base_keymap(full_lora_keymap(), base)
    some = [m for m in keys.modules if ".attentions." in m.diffusers[0] or m.component == "te1"][::5]
    sd = kohya_lora(keys.with_modules(tuple(some)), rank=2, alpha=1.0)
    src = tmp_path / "l.safetensors"
    save_file(sd, str(src))
    assert all(k.startswith(("lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_", "lora_te_"))
               for k in sd)
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", str(src), "--into", str(base), "-o", str(merged)]) == 0
    with safe_open(str(base), "pt") as fb, safe_open(str(merged), "pt") as fm:
        for m in some:
            d = fm.get_tensor(m.checkpoint_key).float() - fb.get_tensor(m.checkpoint_key).float()
            assert rel(d, ref_delta(sd, keys.kohya_name(m)).reshape(d.shape).float()) < 1e-4, m.native
    out = tmp_path / "x.safetensors"
    assert main(["extract", str(merged), str(base), "--rank", "2", "-o", str(out)]) == 0
    got = load_file(str(out))
    assert {k.rsplit(".", 2)[0] for k in got if k.endswith("lora_up.weight")} == {keys.kohya_name(m) for m in some}
    for m in some:
        n = keys.kohya_name(m)
        assert rel(ref_delta(got, n).reshape(-1), ref_delta(sd, n).reshape(-1)) < 1e-2, n
    capsys.readouterr()
