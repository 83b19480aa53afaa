"""FLUX.2 loading: size detection on full-size meta shapes, refusal of other families, BFL <-> diffusers conversion
against diffusers' own converter, and every file layout loading the same tensors."""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.flux2 import configs, convert, tiny
from lorakit.models.flux2.load import build_transformer, load_components, resolve_distilled
from tests.family_fixtures import flow_scheduler


def _meta_transformer(size: str):
    from diffusers import Flux2Transformer2DModel
    cfg = {k: v for k, v in configs.transformer_config(size).items() if not k.startswith("_")}
    with torch.device("meta"):
        return Flux2Transformer2DModel(**cfg)


@pytest.mark.parametrize("size,params_b", [("klein-4b", 3.9), ("klein-9b", 9.1), ("dev", 32.2)])
def test_size_detected_from_full_size_shapes_in_every_layout(size, params_b):
    model = _meta_transformer(size)
    n = sum(p.numel() for p in model.parameters()) / 1e9
    assert abs(n - params_b) < 0.3            # the published sizes: the shipped configs are the real models
    dsd = model.state_dict()
    bfl = convert.diffusers_to_bfl(dsd)
    nd, ns, text, guidance = configs.SIZE_FACTS[size]
    for sd in (dsd, bfl, {"model.diffusion_model." + k: v for k, v in bfl.items()}):
        shape = convert.detect(sd)
        assert (shape.size, shape.num_double, shape.num_single, shape.text_dim, shape.guidance) == \
            (size, nd, ns, text, guidance)
    # header shapes (what a safetensors header gives) detect the same, no tensor needed
    header = {k: {"shape": list(v.shape), "dtype": "BF16"} for k, v in bfl.items()}
    assert convert.detect(header).size == size


def test_bfl_names_are_exactly_diffusers_converter_inverse():
    m = tiny.tiny_models(seed=1, guidance=True)["transformer"]
    sd = m.state_dict()
    bfl = convert.diffusers_to_bfl(sd)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "guidance_in.in_layer.weight" in bfl
    back = convert.bfl_to_diffusers(bfl)                 # diffusers' own single-file converter
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_other_families_are_refused_in_one_line():
    from diffusers import FluxTransformer2DModel
    with torch.device("meta"):
        flux1 = FluxTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                       joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
    with pytest.raises(ModelLoadError, match=r"this is a FLUX.1-schnell-layout transformer of another size \(width 32.*, not a FLUX.2"):
        convert.detect(flux1.state_dict(), "model.checkpoint")
    te = tiny.tiny_models()["text_encoder"].state_dict()
    with pytest.raises(ModelLoadError, match="this is a Qwen3 text encoder, not a FLUX.2") as e:
        convert.detect(te, "model.checkpoint")
    assert "\n" not in str(e.value)


def test_pruned_full_width_file_is_refused():
    bfl = convert.diffusers_to_bfl(_meta_transformer("klein-4b").state_dict())
    pruned = {k: v for k, v in bfl.items() if not k.startswith("single_blocks.19.")}
    with pytest.raises(ModelLoadError, match="19 single blocks"):
        convert.detect(pruned)


def test_base_or_distilled_resolution():
    shape = convert.Shape("klein-4b", 3072, 5, 20, 7680, 128, False, 128)
    assert resolve_distilled(shape, "auto", None, "flux2-klein-base-4b.safetensors")[0] is False
    assert resolve_distilled(shape, "auto", None, "flux2-klein-4b.safetensors")[0] is True
    assert resolve_distilled(shape, "auto", False, "flux2-klein-4b.safetensors") == (False,
                                                                                     "model_index.json is_distilled")
    assert resolve_distilled(shape, "base", None, "flux2-klein-4b.safetensors") == (False, "model.variant")
    with pytest.raises(ConfigError, match="is_distilled = True"):
        resolve_distilled(shape, "base", True, "x")
    with pytest.raises(ConfigError, match="not a FLUX.2 choice"):
        resolve_distilled(shape, "schnell", None, "x")
    dev = convert.Shape("dev", 6144, 8, 48, 15360, 128, True, 128)
    with pytest.raises(ConfigError, match="for Klein"):
        resolve_distilled(dev, "base", None, "flux2-dev.safetensors")


@pytest.fixture(scope="module")
def models():
    return tiny.tiny_models(seed=2)


def _same(a: torch.nn.Module, b: torch.nn.Module, dtype=torch.float32) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k].to(dtype), sb[k].to(dtype)), k


def test_comfy_split_files_with_prefix_fp8_and_sharded_encoder(models, tmp_path):
    files = tiny.save_files(tmp_path, models, torch.float32, prefix="model.diffusion_model.")
    from safetensors.torch import load_file, save_file
    te = load_file(str(files["text_encoder"]))
    keys = sorted(te)
    shard_dir = tmp_path / "qwen_split"
    shard_dir.mkdir()
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]), 1):
        save_file({k: te[k] for k in part}, str(shard_dir / f"model-0000{i}-of-00002.safetensors"))
    cfg = tiny.model_cfg(files, variant="base")
    cfg.text_encoder = str(shard_dir / "model-00001-of-00002.safetensors")
    c = load_components(cfg, torch.float32, log=lambda s: None)
    assert c.variant == "klein-base-custom" and not c.distilled
    _same(models["transformer"], c.transformer)
    _same(models["text_encoder"].model, c.text_encoder)
    _same(models["ae"], c.ae)
    # an fp8 (e4m3) transformer file loads upcast to the tensors' fp8 values
    sd = load_file(str(files["checkpoint"]))
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}
    tr, shape = build_transformer(fp8, torch.float32)
    want = convert.bfl_to_diffusers({k: v.float() for k, v in fp8.items()})
    assert all(torch.equal(tr.state_dict()[k], want[k]) for k in want) and shape.size == "custom"


def test_wrong_text_encoder_and_ae_are_refused(models, tmp_path):
    files = tiny.save_files(tmp_path, models, torch.float32)
    cfg = tiny.model_cfg(files)
    cfg.text_encoder = str(files["ae"])
    c = load_components(cfg, torch.float32, log=lambda s: None)
    with pytest.raises(ModelLoadError, match="this is an autoencoder"):
        c.text_encoder
    cfg = tiny.model_cfg(files)
    cfg.ae = str(files["text_encoder"])
    with pytest.raises(ModelLoadError, match="not the FLUX.2 autoencoder"):
        load_components(cfg, torch.float32, log=lambda s: None).ae
    # no tokenizer anywhere: Klein takes lorakit's shipped Qwen3 tokenizer (tests/unit/test_qwen_tokenizer.py)


def test_diffusers_folder_loads_with_is_distilled(models, tmp_path):
    from diffusers import Flux2KleinPipeline
    pipe = Flux2KleinPipeline(scheduler=flow_scheduler(configs.scheduler_config()), vae=models["ae"],
        text_encoder=models["text_encoder"], tokenizer=models["tokenizer"], transformer=models["transformer"],
        is_distilled=False)
    pipe.save_pretrained(str(tmp_path / "klein"))
    assert json.loads((tmp_path / "klein" / "model_index.json").read_text())["is_distilled"] is False
    from lorakit.config.schema import ModelCfg
    c = load_components(ModelCfg(family="flux2", checkpoint=str(tmp_path / "klein")), torch.float32,
                        log=lambda s: None)
    assert c.variant == "klein-base-custom" and c.how == "model_index.json is_distilled"
    _same(models["transformer"], c.transformer)
    _same(models["text_encoder"].model, c.text_encoder)
    _same(models["ae"], c.ae)
    assert c.tokenizer("a red circle").input_ids == models["tokenizer"]("a red circle").input_ids


def test_settings_a_klein_model_cannot_honour_are_refused(models, tmp_path):
    from lorakit.config.load import load_config
    from lorakit.models.flux2 import Adapter
    files = tiny.save_files(tmp_path, models, torch.float32)
    (tmp_path / "d").mkdir()
    base = {"family": "flux2", "checkpoint": str(files["checkpoint"]), "text_encoder": str(files["text_encoder"]),
            "ae": str(files["ae"]), "tokenizer_dir": str(files["tokenizer"])}
    cases = [({"training": {"guidance_scale": 3.5}}, "training.guidance_scale: FLUX.2 klein-custom has no guidance"),
             ({"sample": {"guidance": 4.0}}, "sample.guidance: FLUX.2 klein-custom has no guidance"),
             ({"sample": {"cfg_scale": 4.0}}, "sample.cfg_scale: klein-custom is step-distilled")]
    for extra, msg in cases:
        cfg = load_config(None, data={"model": base, "data": {"dir": str(tmp_path / "d")},
                                      "training": {"device": "cpu", **extra.get("training", {})},
                                      **{k: v for k, v in extra.items() if k != "training"}})
        with pytest.raises(ConfigError, match=msg):
            Adapter(cfg).load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
