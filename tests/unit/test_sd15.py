"""SD 1.5 family: single-file and diffusers-folder loading, variant detection and refusals, conditioning and sampling
equal to diffusers' StableDiffusionPipeline, the ε / v objective, kohya names against ComfyUI's key map, the diffusers
layout through ``load_lora_weights``, metadata."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lorakit.config.load import load_config
from lorakit.errors import ModelLoadError
from lorakit.models.base import Batch, LoraModule, SamplePrompt
from lorakit.models.sd15 import SPEC, Adapter, lora_key_universe
from lorakit.models.sd15.convert import V_PRED_MARKER, detect_file, ldm_state_dict
from lorakit.models.sd15.load import build_models, tiny_configs, write_tiny_checkpoint
from lorakit.models.tokenizers import clip_tokenizer


def _cfg(tmp: Path, model: dict, **training) -> object:
    (tmp / "data").mkdir(exist_ok=True)
    return load_config(None, data={"model": {"family": "sd15", **model}, "data": {"dir": str(tmp / "data"),
                                                                                  "resolution": 64,
                                                                                  "min_bucket_reso": 64},
                                   "network": {"rank": 4, "alpha": 2.0, "train_text_encoder": True},
                                   "training": {"mixed_precision": "no", "device": "cpu", **training}})


def _load(tmp: Path, model: dict, **training) -> Adapter:
    cfg = _cfg(tmp, model, **training)
    a = Adapter(cfg)
    a.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    return a


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny LDM single file, its modules, and the same model as a diffusers folder."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from lorakit.models.sd15 import configs

    root = tmp_path_factory.mktemp("sd15")
    paths = write_tiny_checkpoint(root / "model")
    modules = build_models(tiny_configs(), seed=0)
    pipe = StableDiffusionPipeline(vae=modules["vae"], text_encoder=modules["text_encoder"],
                                   tokenizer=clip_tokenizer(), unet=modules["unet"],
                                   scheduler=EulerDiscreteScheduler.from_config(configs.SCHEDULER),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "folder", safe_serialization=True)
    return {"root": root, "paths": paths, "modules": modules, "folder": root / "folder"}


def _file_model(tiny) -> dict:
    return {"checkpoint": str(tiny["paths"]["checkpoint"]), "config_dir": str(tiny["paths"]["config"])}


def test_single_file_and_folder_load_the_same_weights(tiny, tmp_path):
    a = _load(tmp_path, _file_model(tiny))
    b = _load(tmp_path, {"checkpoint": str(tiny["folder"])})
    assert a.prediction == b.prediction == "epsilon"
    assert a.loaded_parts() == []  # VAE and CLIP read on first use only
    assert a.unet.is_gradient_checkpointing  # memory.gradient_checkpointing (on by default) reaches the UNet
    for name, mod in (("unet", a.unet), ("vae", a.vae), ("text_encoder", a.te1)):
        ref = tiny["modules"][name].state_dict()
        got = mod.state_dict()
        other = {"unet": b.unet, "vae": b.vae, "text_encoder": b.te1}[name].state_dict()
        keys = [k for k in ref if not k.endswith("position_ids")]
        assert keys and all(torch.equal(got[k], ref[k]) and torch.equal(other[k], ref[k]) for k in keys), name


def test_variant_detection_and_the_explicit_setting(tiny, tmp_path):
    v = write_tiny_checkpoint(tmp_path / "v", v_prediction=True)
    assert detect_file(v["checkpoint"]).prediction == "v_prediction"
    assert detect_file(tiny["paths"]["checkpoint"]).prediction == "epsilon"
    assert _load(tmp_path, {"checkpoint": str(v["checkpoint"]), "config_dir": str(v["config"])}).prediction == \
        "v_prediction"
    # what the user sets wins over the file
    assert _load(tmp_path, {"checkpoint": str(v["checkpoint"]), "config_dir": str(v["config"])},
                 prediction="epsilon").prediction == "epsilon"
    # sd-scripts / lorakit metadata says v without the marker
    sd = ldm_state_dict(dtype=None, **build_models(tiny_configs(), seed=1))
    save_file(sd, str(tmp_path / "meta_v.safetensors"), metadata={"modelspec.prediction_type": "v"})
    assert detect_file(tmp_path / "meta_v.safetensors").prediction == "v_prediction"


def _fake(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


_SD1 = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 768),
        "first_stage_model.encoder.conv_in.weight": (2, 3, 3, 3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)}


@pytest.mark.parametrize("shapes, says", [
    ({"conditioner.embedders.1.model.ln_final.weight": (4,), **_SD1}, ('an SDXL checkpoint', 'set model.family = "sdxl"')),
    ({"double_blocks.0.img_attn.qkv.weight": (6, 2)}, ('a FLUX.1 transformer', 'set model.family = "flux1"')),
    ({"double_blocks.0.img_attn.qkv.weight": (6, 2), "double_stream_modulation_img.lin.weight": (6, 2)},
     ('a FLUX.2 transformer', 'set model.family = "flux2"')),
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (6, 2)}, ("Stable Diffusion 3",)),
    ({**_SD1, "model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)}, ("an inpainting model (9 input",)),
    ({**_SD1, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 1024)},
     ("Stable Diffusion 2.x",)),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8)}, ("a LoRA file",)),
    ({"encoder.down.0.block.0.conv1.weight": (2, 2, 3, 3)}, ("a bare VAE",)),
])
def test_other_files_are_refused_in_one_line_naming_them(tmp_path, shapes, says):
    path = _fake(tmp_path / "other.safetensors", shapes)
    with pytest.raises(ModelLoadError) as exc:
        _load(tmp_path, {"checkpoint": str(path)})
    msg = str(exc.value)
    assert all(s in msg for s in says) and str(path) in msg and "\n" not in msg


def test_other_diffusers_folders_are_refused(tiny, tmp_path):
    import json
    import shutil

    folder = tmp_path / "sdxl_like"
    shutil.copytree(tiny["folder"], folder)
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    for change, says in (({"addition_embed_type": "text_time"}, "SDXL folder"),
                         ({"in_channels": 9}, "inpainting model"), ({"cross_attention_dim": 1024}, "2.x")):
        (folder / "unet" / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ModelLoadError, match=says):
            _load(tmp_path, {"checkpoint": str(folder)})


def test_text_encoding_and_sampling_equal_diffusers_pipeline(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    a = _load(tmp_path, _file_model(tiny))
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny["folder"]), local_files_only=True)
    prompt = "a red circle on a blue background"
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(a.token_ids([prompt]), ids)
    emb, neg = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt="")
    assert torch.allclose(a.encode_text([prompt])["context"], emb, atol=1e-6)
    assert torch.allclose(a.encode_text([""])["context"], neg, atol=1e-6)
    image = a.sample(SamplePrompt(prompt, width=64, height=64, steps=4, cfg_scale=4.0, sampler="euler"),
                     torch.Generator().manual_seed(3))
    ref = pipe(prompt, height=64, width=64, num_inference_steps=4, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - ref).max() <= 1.5 / 255


def test_objective_eps_and_v_against_the_formulas(tiny, tmp_path):
    a = _load(tmp_path, _file_model(tiny))
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    batch = Batch(latents=x0, text={}, original_sizes=[], crop_top_lefts=[], target_sizes=[],
                  loss_weight=torch.ones(3))
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    for prediction in ("epsilon", "v_prediction"):
        a.prediction = prediction
        training = _cfg(tmp_path, _file_model(tiny), min_snr_gamma=5.0).training
        n = a.noise(x0, eps, batch, training, torch.Generator().manual_seed(0))
        s, r = ac[n.timesteps].sqrt().float().view(3, 1, 1, 1), (1 - ac[n.timesteps]).sqrt().float().view(3, 1, 1, 1)
        assert torch.allclose(n.model_input, s * x0 + r * eps, atol=1e-5)
        want = eps if prediction == "epsilon" else s * eps - r * x0
        assert torch.allclose(n.target, want, atol=1e-5)
        snr = (ac[n.timesteps] / (1 - ac[n.timesteps])).float()
        w = torch.minimum(snr, torch.tensor(5.0)) / (snr if prediction == "epsilon" else snr + 1)
        assert torch.allclose(n.weight, w, rtol=1e-4)


def _trained_lora(a: Adapter, cfg) -> dict[str, dict[str, LoraModule]]:
    g = torch.Generator().manual_seed(5)
    named = {c: dict(m.named_modules()) for c, m in (("unet", a.unet), ("te1", a.te1))}
    out: dict[str, dict[str, LoraModule]] = {}
    for comp, paths in a.lora_targets(cfg.network).items():
        out[comp] = {}
        for path, rank in paths.items():
            w = named[comp][path].weight
            kernel = tuple(w.shape[2:]) if w.dim() == 4 else ()
            down = torch.randn(rank, w.shape[1], *kernel, generator=g) * 0.1
            up = torch.randn(w.shape[0], rank, *((1, 1) if kernel else ()), generator=g) * 0.1
            out[comp][path] = LoraModule(down=down, up=up, alpha=2.0)
    return out


def test_kohya_names_map_through_comfyui_key_map(tiny, tmp_path):
    """ComfyUI (comfy/lora.py) maps ``lora_unet_<diffusers key>`` to the LDM weight through ``unet_to_diffusers``
    and ``lora_te_text_model_encoder_layers_<b>_<part>`` to CLIP-L; both re-derived here from the LDM file with
    diffusers' converter (each tensor tagged by identity), so every exported module must land on an LDM weight of its
    shape."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    a = _load(tmp_path, _file_model(tiny))
    run_cfg = _cfg(tmp_path, _file_model(tiny))
    lora = _trained_lora(a, run_cfg)
    sd = ldm_state_dict(dtype=None, unet=tiny["modules"]["unet"], vae=tiny["modules"]["vae"],
                        text_encoder=tiny["modules"]["text_encoder"])
    unet_ldm = {k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    tagged = {k: torch.full((1,), float(i)) for i, k in enumerate(sorted(unet_ldm))}
    back = convert_ldm_unet_checkpoint(tagged, dict(tiny_configs()["unet"]))
    order = sorted(unet_ldm)
    key_map = {}
    for diff_key, t in back.items():
        if diff_key.endswith(".weight"):
            ldm = order[int(t.item())]
            key_map["lora_unet_" + diff_key[:-len(".weight")].replace(".", "_")] = ldm
    clip_parts = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                  "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                  "self_attn.out_proj": "self_attn_out_proj"}
    for b in range(8):
        for part, name in clip_parts.items():
            k = f"cond_stage_model.transformer.text_model.encoder.layers.{b}.{part}.weight"
            if k in sd:
                key_map[f"lora_te_text_model_encoder_layers_{b}_{name}"] = k
    out = a.export(lora, "kohya")
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k[:-len(".alpha")] for k in out}
    assert len(names) == sum(len(v) for v in lora.values()) and any(n.startswith("lora_te_") for n in names)
    for name in names:
        assert name in key_map, name
        w = sd[key_map[name]]
        assert out[name + ".lora_up.weight"].shape[0] == w.shape[0]
        assert out[name + ".lora_down.weight"].shape[1] == w.shape[1]
        assert out[name + ".alpha"].item() == 2.0


def test_full_size_universe_has_sd_scripts_module_counts():
    """sd-scripts reports 192 U-Net + 72 text-encoder modules for an SD 1.5 LoRA, 278 U-Net modules with conv_dim."""
    names = lora_key_universe()
    unet = [n for n in names if n.startswith("lora_unet_")]
    te = [n for n in names if n.startswith("lora_te_")]
    assert len(te) == 72 and len(unet) == 278 and len(names) == 350
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in names
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k" in names
    assert "lora_te_text_model_encoder_layers_11_self_attn_out_proj" in names
    assert len([n for n in unet if "_attentions_" in n]) == 192


def test_diffusers_layout_loads_through_load_lora_weights(tiny, tmp_path):
    """The diffusers file through StableDiffusionPipeline.load_lora_weights gives the UNet and CLIP outputs of the
    base weights plus (alpha/rank)·up·down, within 1e-4."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file as save

    a = _load(tmp_path, _file_model(tiny))
    lora = _trained_lora(a, _cfg(tmp_path, _file_model(tiny)))
    save(a.export(lora, "diffusers"), str(tmp_path / "lora.safetensors"))
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny["folder"]), local_files_only=True)
    pipe.load_lora_weights(str(tmp_path), weight_name="lora.safetensors")
    merged = {"unet": copy.deepcopy(tiny["modules"]["unet"]), "te1": copy.deepcopy(tiny["modules"]["text_encoder"])}
    with torch.no_grad():
        for comp, mods in lora.items():
            named = dict(merged[comp].named_modules())
            for path, m in mods.items():
                w = named[path].weight
                delta = (m.up.flatten(1) @ m.down.flatten(1)).view(w.shape[0], *m.down.shape[1:])
                w += (m.alpha / m.down.shape[0]) * delta.view_as(w)
    ids = a.token_ids(["a zkx"])
    assert torch.allclose(pipe.text_encoder(ids).last_hidden_state, merged["te1"](ids).last_hidden_state, atol=1e-4)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        got = pipe.unet(x, t, encoder_hidden_states=ctx).sample
        want = merged["unet"](x, t, encoder_hidden_states=ctx).sample
        base = tiny["modules"]["unet"](x, t, encoder_hidden_states=ctx).sample
    assert (want - base).abs().max() > 1e-2          # the LoRA changes the output
    assert torch.allclose(got, want, atol=1e-4)


def test_metadata_values_civitai_and_comfyui_read(tiny, tmp_path):
    a = _load(tmp_path, _file_model(tiny))
    md = a.metadata(_cfg(tmp_path, _file_model(tiny)))
    assert md["ss_base_model_version"] == "sd_v1" and md["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert md["modelspec.prediction_type"] == "epsilon" and md["ss_v2"] == "False"
    assert all(isinstance(v, str) for v in md.values())
    a.prediction = "v_prediction"
    assert a.metadata(None)["modelspec.prediction_type"] == "v"
    assert SPEC.default_resolution == 512 and SPEC.metadata_base_version == "sd_v1"
    with pytest.raises(ValueError, match="save.format"):
        a.export({}, "comfy")


@pytest.mark.parametrize("prediction,version", [("epsilon", "sd_v1"), ("v_prediction", "sd_v1_v")])
def test_metadata_in_the_exported_header(tiny, tmp_path, prediction, version):
    # sd-scripts' ss_base_model_version (sd_v1 / sd_v1_v) and SwarmUI's SD v1 LoRA class for both
    from tests.family_fixtures import exported_metadata
    a = _load(tmp_path, _file_model(tiny))
    a.prediction = prediction
    meta = exported_metadata(a, _trained_lora(a, a.cfg), tmp_path / "l.safetensors")
    assert meta["ss_base_model_version"] == version and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.prediction_type"] == ("v" if prediction == "v_prediction" else "epsilon")
