"""FLUX.1 weight layouts: BFL <-> diffusers round trips, variant detection, fp8 files, AE, text encoders."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models import ldm_vae, weights
from lorakit.models.flux1 import convert, load


@pytest.fixture(scope="module")
def tiny() -> dict:
    return load.tiny_models("dev", seed=1)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict:
    return load.write_tiny_checkpoint(tmp_path_factory.mktemp("flux"), "dev", seed=3, dtype=torch.float32)


def _cfg(files: dict, **kw) -> SimpleNamespace:
    base = dict(checkpoint=str(files["checkpoint"]), clip_l=str(files["clip_l"]), t5xxl=str(files["t5xxl"]),
                ae=str(files["ae"]), config_dir=str(files["config"]), variant="auto", allow_pickle=False,
                tokenizer_dir=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_bfl_round_trip_is_identity(tiny):
    sd = tiny["transformer"].state_dict()
    bfl = convert.diffusers_to_bfl(sd)
    # the real BFL key set: fused qkv / linear1, no diffusers names left
    assert "double_blocks.1.img_attn.qkv.weight" in bfl and "single_blocks.1.linear1.weight" in bfl
    assert bfl["double_blocks.0.img_attn.qkv.weight"].shape == (96, 32)
    assert bfl["single_blocks.0.linear1.weight"].shape == (32 * 3 + 128, 32)
    assert not any("transformer_blocks" in k for k in bfl)
    back = convert.bfl_to_diffusers(dict(bfl))
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_norm_out_halves_swapped(tiny):
    """BFL stores (shift, scale); diffusers (scale, shift)."""
    sd = tiny["transformer"].state_dict()
    bfl = convert.diffusers_to_bfl(sd)
    w = sd["norm_out.linear.weight"]
    n = w.shape[0] // 2
    assert torch.equal(bfl["final_layer.adaLN_modulation.1.weight"][:n], w[n:])


def test_qkv_fusion_order_matches_bfl(tiny):
    sd = tiny["transformer"].state_dict()
    bfl = convert.diffusers_to_bfl(sd)
    q = sd["transformer_blocks.0.attn.to_q.weight"]
    mlp = sd["single_transformer_blocks.0.proj_mlp.weight"]
    assert torch.equal(bfl["double_blocks.0.img_attn.qkv.weight"][:32], q)
    assert torch.equal(bfl["single_blocks.0.linear1.weight"][96:], mlp)


def test_inferred_config_from_weights(tiny):
    bfl = convert.diffusers_to_bfl(tiny["transformer"].state_dict())
    cfg = convert.infer_transformer_config(bfl)
    want = dict(tiny["transformer"].config)
    for k in ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
              "joint_attention_dim", "pooled_projection_dim", "guidance_embeds"):
        assert cfg[k] == want[k], k
    assert sum(cfg["axes_dims_rope"]) == want["attention_head_dim"]


def test_matches_diffusers_converter_at_full_width_structure():
    """diffusers' own converter (hard-coded inner_dim 3072) and ours agree on a 1+1-block, 3072-wide BFL dict.

    Weights get 2 input columns (rows are what the converters split), so the check stays small and fast."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
    inner, mlp = 3072, 12288
    shapes = {"img_in.weight": (inner, 64), "txt_in.weight": (inner, 8), "vector_in.in_layer.weight": (inner, 8),
              "double_blocks.0.img_attn.norm.query_norm.scale": (128,), "final_layer.linear.weight": (64, inner)}
    # build a full BFL dict of the right shapes with cheap expanded tensors
    from lorakit.models.flux1.convert import module_table, _norm_pairs
    sd = {}
    gen = torch.Generator().manual_seed(0)
    for m in module_table(1, 1, True):
        out = {"double_blocks.0.img_attn.qkv": 3 * inner, "double_blocks.0.txt_attn.qkv": 3 * inner,
               "single_blocks.0.linear1": 3 * inner + mlp}.get(m.bfl)
        rows = out or (shapes.get(m.bfl + ".weight", (inner,))[0])
        sd[m.bfl + ".bias"] = torch.randn(rows, generator=gen)
        sd[m.bfl + ".weight"] = sd[m.bfl + ".bias"][:, None].expand(rows, 2)   # weights: cheap 2 columns
    for bfl, _ in _norm_pairs(1, 1):
        sd[bfl] = torch.randn(128, generator=gen)
    for p in ("weight", "bias"):
        sd[f"final_layer.adaLN_modulation.1.{p}"] = torch.randn(2 * inner, *((2,) if p == "weight" else ()),
                                                                generator=gen)
    ours = convert.bfl_to_diffusers(dict(sd))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(sd))
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_variant_detection(tiny):
    dev = convert.diffusers_to_bfl(tiny["transformer"].state_dict())
    schnell = convert.diffusers_to_bfl(load.tiny_models("schnell")["transformer"].state_dict())
    assert convert.detect_variant(dev) == "dev" and convert.detect_variant(schnell) == "schnell"
    assert not any(k.startswith("guidance_in") for k in schnell)


def test_tiny_checkpoint_loads_exactly(tiny_files):
    comps = load.load_single_files(_cfg(tiny_files), torch.float32)
    ref = load.tiny_models("dev", seed=3)
    assert comps.variant == "dev"
    for name, mod in (("transformer", comps.transformer), ("ae", comps.ae)):
        a, b = ref[name].state_dict(), mod.state_dict()
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    for name, mod in (("clip_l", comps.clip_l), ("t5", comps.t5)):       # stored fp16, as the real files
        a, b = ref[name].state_dict(), mod.state_dict()
        assert set(a) == set(b), name
        assert all(torch.equal(a[k].half().float(), b[k]) for k in a), name
    assert comps.t5.encoder.embed_tokens.weight is comps.t5.shared.weight
    # the written files really are in the original layouts
    assert "text_model.embeddings.token_embedding.weight" in load_file(tiny_files["clip_l"])
    assert "encoder.down.0.block.0.conv1.weight" in load_file(tiny_files["ae"])
    assert "double_blocks.0.img_attn.qkv.weight" in load_file(tiny_files["checkpoint"])


def test_ae_layout_round_trip_through_diffusers_converter(tiny):
    sd = tiny["ae"].state_dict()
    bfl = ldm_vae.ae_diffusers_to_bfl(sd)
    assert bfl["encoder.mid.attn_1.q.weight"].ndim == 4
    back = ldm_vae.ae_bfl_to_diffusers(bfl, ldm_vae.infer_ae_config(bfl, dict(tiny["ae"].config)))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_fp8_files_load_upcast(tiny_files, tmp_path):
    sd = load_file(tiny_files["checkpoint"])
    f8 = {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}
    path = tmp_path / "flux1-dev-fp8.safetensors"
    save_file(f8, path)
    comps = load.load_single_files(_cfg(tiny_files, checkpoint=str(path)), torch.float32)
    want = convert.bfl_to_diffusers({k: v.to(torch.float8_e4m3fn).to(torch.float32) for k, v in sd.items()})
    got = comps.transformer.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert got["x_embedder.weight"].dtype == torch.float32


def test_scaled_fp8_weight_uses_scale():
    w = torch.tensor([[1.0, 2.0]]).to(torch.float8_e4m3fn)
    out = weights.upcast({"a.weight": w, "a.scale_weight": torch.tensor(0.5), "scaled_fp8": torch.zeros(0)},
                         torch.float32)
    assert set(out) == {"a.weight"} and torch.equal(out["a.weight"], torch.tensor([[0.5, 1.0]]))


def test_variant_mismatch_and_missing_files_are_clear(tiny_files, tmp_path):
    with pytest.raises(ConfigError, match="model.variant"):
        load.load_single_files(_cfg(tiny_files, variant="schnell"), torch.float32)
    with pytest.raises(ConfigError, match="model.clip_l"):
        load.load_single_files(_cfg(tiny_files, clip_l=None), torch.float32)
    pt = tmp_path / "x.ckpt"
    pt.write_bytes(b"junk")  # told by its content: no pickle, no weights file at all
    with pytest.raises(ModelLoadError, match="too short for a header"):
        load.load_single_files(_cfg(tiny_files, checkpoint=str(pt)), torch.float32)
    torch.save({"a": torch.zeros(1)}, pt)
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load.load_single_files(_cfg(tiny_files, checkpoint=str(pt)), torch.float32)
    with pytest.raises(ModelLoadError, match="not a CLIP"):
        load.load_single_files(_cfg(tiny_files, clip_l=str(tiny_files["ae"])), torch.float32)


def test_save_bfl_files_never_overwrites(tiny_files, tiny):
    with pytest.raises(FileExistsError):
        convert.save_bfl_files(tiny_files["checkpoint"].parent, transformer=tiny["transformer"],
                               clip_l=tiny["clip_l"], t5=tiny["t5"], ae=tiny["ae"])


def test_diffusers_folder_loads(tiny, tmp_path):
    for sub, key in (("transformer", "transformer"), ("text_encoder", "clip_l"), ("text_encoder_2", "t5"),
                     ("vae", "ae")):
        tiny[key].save_pretrained(tmp_path / sub)
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    comps = load.load_components(SimpleNamespace(checkpoint=str(tmp_path), variant="auto", allow_pickle=False,
                                                 tokenizer_dir=None), torch.float32)
    assert comps.variant == "dev" and comps.clip_tokenizer is not None and comps.t5_tokenizer is not None
    a, b = tiny["transformer"].state_dict(), comps.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ae_matches_diffusers_from_single_file(tiny_files):
    """Independent loader: diffusers' AutoencoderKL.from_single_file with the shipped config folder."""
    from diffusers import AutoencoderKL
    ref = AutoencoderKL.from_single_file(str(tiny_files["ae"]), config=str(tiny_files["config"]), subfolder="vae")
    ours = load.build_ae(load_file(tiny_files["ae"]), torch.float32,
                         {k: v for k, v in load.TINY_AE.items()})
    a, b = ref.state_dict(), ours.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_fp8_text_encoders_load_upcast(tiny_files, tmp_path):
    paths = {}
    for role in ("clip_l", "t5xxl"):
        sd = load_file(tiny_files[role])
        paths[role] = tmp_path / f"{role}_fp8_e4m3fn.safetensors"
        save_file({k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in sd.items()},
                  paths[role])
    comps = load.load_single_files(_cfg(tiny_files, clip_l=str(paths["clip_l"]), t5xxl=str(paths["t5xxl"])),
                                   torch.float32)
    want = load_file(tiny_files["t5xxl"])["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    got = comps.t5.state_dict()["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    assert torch.equal(got, want.to(torch.float8_e4m3fn).float())
    want = load_file(tiny_files["clip_l"])["text_model.encoder.layers.0.mlp.fc1.weight"]
    assert torch.equal(comps.clip_l.state_dict()["encoder.layers.0.mlp.fc1.weight"],
                       want.to(torch.float8_e4m3fn).float())
