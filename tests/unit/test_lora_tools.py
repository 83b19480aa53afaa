"""LoRA tools (convert, resize, merge, extract, verify) checked against ΔW = (alpha/rank)·up@down computed here.

Tiny SDXL and FLUX.1 models of the real classes give the key maps; LoRAs are random (up ≠ 0).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.errors import LorakitError
from lorakit.lora.formats.layouts import read_lora, write_lora
from lorakit.lora.tools import files, ops
from lorakit.lora.tools.verify import verify


@pytest.fixture(scope="module")
def sdxl_keys():
    from lorakit.models.sdxl.keys import lora_keymap
    from lorakit.models.sdxl.load import build_models, tiny_configs

    m = build_models(tiny_configs())
    return lora_keymap(m["unet"], m["te1"], m["te2"])


@pytest.fixture(scope="module")
def flux_keys():
    from lorakit.models.flux1.keys import lora_keymap
    from lorakit.models.flux1.load import tiny_models

    m = tiny_models()
    return lora_keymap(m["transformer"], m["clip_l"], m["t5"])


def kohya_lora(keys, rank=4, alpha=2.0, every=1, seed=0, dtype=torch.float32):
    """A random kohya-layout LoRA on every ``every``-th module of ``keys``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m in keys.modules[::every]:
        name = keys.kohya_name(m)
        sd[name + ".lora_down.weight"] = torch.randn(rank, m.in_features, *m.kernel, generator=g).to(dtype)
        if m.kernel == (1, 1):
            sd[name + ".lora_down.weight"] = sd[name + ".lora_down.weight"].reshape(rank, m.in_features)
        up = torch.randn(m.out_features, rank, generator=g)
        sd[name + ".lora_up.weight"] = (up if m.kernel == (1, 1) else up.reshape(m.out_features, rank, 1, 1)).to(dtype)
        sd[name + ".alpha"] = torch.tensor(alpha)
    return sd


def ref_delta(sd, name):
    """ΔW of one kohya module, computed here: (alpha / rank) · up @ down."""
    down, up = sd[name + ".lora_down.weight"].double(), sd[name + ".lora_up.weight"].double()
    r = down.shape[0]
    alpha = float(sd[name + ".alpha"]) if name + ".alpha" in sd else r
    d = up.reshape(up.shape[0], r) @ down.reshape(r, -1)
    return (d * alpha / r).reshape(up.shape[0], *down.shape[1:])


def diffusers_delta(sd, keys, module):
    """ΔW of a (possibly split) module from a diffusers-layout dict: rows of each part's lora_B @ lora_A."""
    rows = []
    for path in module.diffusers:
        stem = keys.diffusers_prefix[module.component] + path
        a, b = sd[stem + ".lora_A.weight"].double(), sd[stem + ".lora_B.weight"].double()
        rows.append(b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1))
    return torch.cat(rows, 0).reshape(module.out_features, module.in_features, *((module.kernel,) if False else ()))


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


@pytest.mark.parametrize("fam", ["sdxl", "flux1"])
def test_convert_every_layout_keeps_delta(fam, sdxl_keys, flux_keys):
    keys = sdxl_keys if fam == "sdxl" else flux_keys
    sd = kohya_lora(keys, rank=4, alpha=3.0)
    state = read_lora(sd, {"ss_output_name": "x"}, [sdxl_keys, flux_keys], where="t")
    assert state.family == fam and state.layout == "kohya" and not state.unmatched
    for layout in ("comfyui", "diffusers"):
        written = write_lora(state, keys, layout)["tensors"]
        if layout == "diffusers":  # independent check: the diffusers dict's own B@A per module
            for m in keys.modules:
                if m.kernel != (1, 1):
                    continue
                got = diffusers_delta(written, keys, m)
                assert rel(got, ref_delta(sd, keys.kohya_name(m)).reshape(got.shape)) < 1e-6
        back = read_lora(written, {}, [sdxl_keys, flux_keys], where="t")
        assert back.family == fam and back.layout == layout and set(back.modules) == set(state.modules)
        for name, p in back.modules.items():
            assert rel(p.delta(), ref_delta(sd, name)) < 1e-6, (layout, name)


def test_flux_fused_alpha_from_split_parts(flux_keys):
    """diffusers q/k/v with rank 2, alpha 1 -> one kohya qkv module of rank 6, alpha 3 (scale kept 1/2)."""
    m = next(x for x in flux_keys.modules if x.native == "double_blocks.0.img_attn.qkv")
    g = torch.Generator().manual_seed(1)
    sd, parts = {}, []
    for path in m.diffusers:
        a, b = torch.randn(2, m.in_features, generator=g), torch.randn(m.out_features // 3, 2, generator=g)
        sd[f"transformer.{path}.lora_A.weight"], sd[f"transformer.{path}.lora_B.weight"] = a, b
        sd[f"transformer.{path}.alpha"] = torch.tensor(1.0)
        parts.append(b @ a * 0.5)
    state = read_lora(sd, {}, [flux_keys], where="t")
    out = write_lora(state, flux_keys, "kohya")["tensors"]
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    assert out[name + ".lora_down.weight"].shape[0] == 6 and float(out[name + ".alpha"]) == 3.0
    assert rel(ref_delta(out, name), torch.cat(parts, 0)) < 1e-6


def test_fp16_roundtrip_within_rounding(sdxl_keys, tmp_path):
    sd = kohya_lora(sdxl_keys, every=7, dtype=torch.float16)
    src = tmp_path / "a.safetensors"
    save_file(sd, src, metadata={"ss_output_name": "a", "ss_network_dim": "4"})
    state = files.load_state(src, [sdxl_keys])
    out = files.save_state(state, sdxl_keys, "diffusers", tmp_path / "b.safetensors")[0]
    back = files.load_state(out, [sdxl_keys])
    from lorakit.lora.io import read_safetensors_header
    assert read_safetensors_header(out)[1]["ss_output_name"] == "a"
    for name, p in back.modules.items():
        assert rel(p.delta(), ref_delta(sd, name)) < 2e-3


def test_peft_folder_roundtrip(sdxl_keys, tmp_path):
    sd = kohya_lora(sdxl_keys, every=5, alpha=8.0)
    state = read_lora(sd, {}, [sdxl_keys], where="t")
    files.save_state(state, sdxl_keys, "peft", tmp_path / "peft", dtype=torch.float32)
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    assert (tmp_path / "peft" / "text_encoder_2" / "adapter_model.safetensors").is_file()
    back = files.load_state(tmp_path / "peft", [sdxl_keys])
    assert set(back.modules) == set(state.modules)
    for name, p in back.modules.items():
        assert rel(p.delta(), ref_delta(sd, name)) < 1e-6


def test_unknown_layout_is_one_line(sdxl_keys):
    with pytest.raises(LorakitError, match="unknown LoRA layout"):
        read_lora({"foo.weight": torch.zeros(2, 2)}, {}, [sdxl_keys], where="x.safetensors")
    with pytest.raises(LorakitError, match="x.safetensors: a LyCORIS loha file; this works on LoRA/LoCon files only"):
        read_lora({"foo.hada_w1_a": torch.zeros(2, 2)}, {}, [sdxl_keys], where="x.safetensors")  # issue 23


def test_resize_fixed_and_dynamic(sdxl_keys):
    sd = kohya_lora(sdxl_keys, rank=8, alpha=4.0, every=9)
    state = read_lora(sd, {}, [sdxl_keys], where="t")
    # make one module exactly rank 2 so sv_ratio finds it
    name = next(iter(state.modules))
    p = state.modules[name]
    p.up[:, 2:] = 0
    out, rows = ops.resize(state.modules, "rank", 3)
    for row in rows:
        new = out[row["module"]]
        full = ref_delta(sd, row["module"]) if row["module"] != name else p.delta()
        s = torch.linalg.svdvals(full.reshape(full.shape[0], -1).double())
        best = (s[3:] ** 2).sum().sqrt() / (s ** 2).sum().sqrt()   # Eckart–Young: the optimum at rank 3
        assert new.rank == 3 and abs(new.scale - p.scale) < 1e-9 if row["module"] == name else new.rank == 3
        assert rel(new.delta(), full) == pytest.approx(float(best), abs=1e-4)
        assert row["energy"] == pytest.approx(float((s[:3] ** 2).sum() / (s ** 2).sum()), abs=1e-5)
    dyn, rows = ops.resize(state.modules, "sv_ratio", 1e6)
    assert dict((r["module"], r["new_rank"]) for r in rows)[name] == 2
    assert rel(dyn[name].delta(), p.delta()) < 1e-5
    fro, rows = ops.resize(state.modules, "sv_fro", 0.9)
    for row in rows:
        assert row["energy"] >= 0.81 - 1e-6
    with pytest.raises(LorakitError, match="fraction"):
        ops.resize(state.modules, "sv_fro", 1.5)


def test_merge_concat_exact_and_svd(sdxl_keys):
    a = read_lora(kohya_lora(sdxl_keys, rank=4, alpha=2.0, every=11, seed=1), {}, [sdxl_keys], where="a")
    b = read_lora(kohya_lora(sdxl_keys, rank=2, alpha=2.0, every=11, seed=2), {}, [sdxl_keys], where="b")
    out, _ = ops.merge([(a.modules, 0.7), (b.modules, -0.3)])
    for name, p in out.items():
        want = 0.7 * a.modules[name].delta() - 0.3 * b.modules[name].delta()
        assert p.rank == 6 and rel(p.delta(), want) < 1e-5
    svd, rows = ops.merge([(a.modules, 1.0), (b.modules, 1.0)], rank=6)
    name = next(iter(svd))
    assert rel(svd[name].delta(), a.modules[name].delta() + b.modules[name].delta()) < 1e-4
    small, rows = ops.merge([(a.modules, 1.0), (b.modules, 1.0)], rank=1)
    assert all(0 < r["energy"] < 1 for r in rows)
    bad = {name: type(a.modules[name])(torch.zeros(1, 3), torch.zeros(5, 1), 1.0)}
    with pytest.raises(LorakitError, match="different base models"):
        ops.merge([(a.modules, 1.0), (bad, 1.0)])


def test_merge_into_and_extract_tiny_checkpoint(sdxl_keys, tmp_path):
    from safetensors import safe_open

    from lorakit.models.sdxl.load import write_tiny_checkpoint

    base = write_tiny_checkpoint(tmp_path / "m")["checkpoint"]
    sd = kohya_lora(sdxl_keys, rank=2, alpha=1.0, every=3)
    state = read_lora(sd, {}, [sdxl_keys], where="t")
    keys = files.base_keymap(sdxl_keys, base)
    merged = tmp_path / "merged.safetensors"
    info = files.merge_into(base, [(state, 0.5)], keys, merged)
    assert info["weights_changed"] > 0
    with safe_open(str(base), "pt") as fb, safe_open(str(merged), "pt") as fm:
        assert list(fb.keys()) == list(fm.keys())
        for m in keys.modules:
            name = keys.kohya_name(m)
            if name not in state.modules:
                continue
            w0, w1 = fb.get_tensor(m.checkpoint_key), fm.get_tensor(m.checkpoint_key)
            rows = m.rows_in(w0.shape[0])
            if rows:
                w0, w1 = w0[rows[0]:rows[1]], w1[rows[0]:rows[1]]
            assert rel(w1 - w0, 0.5 * ref_delta(sd, name).reshape(w0.shape)) < 1e-5, name
        untouched = [k for k in fb.keys() if "norm" in k][0]
        assert torch.equal(fb.get_tensor(untouched), fm.get_tensor(untouched))
    # extract at full rank recovers the merged ΔW (a 2-rank difference at rank 2: error ~0)
    lora, rows = files.extract_from(merged, base, keys, rank=2, min_diff=1e-7)
    assert {r["module"] for r in rows if r["rank"]} == set(state.modules)
    for name, p in lora.modules.items():
        want = 0.5 * ref_delta(sd, name)
        assert rel(p.delta().reshape(want.shape), want) < 1e-3
    with pytest.raises(LorakitError, match="larger than layer"):
        files.extract_from(merged, base, keys, rank=100000, min_diff=1e-7)


def test_verify_loaders(sdxl_keys, flux_keys):
    sd = kohya_lora(sdxl_keys, every=13)
    report = verify(sd, sdxl_keys)
    assert report["ok"], report["loaders"]
    assert all(v["applied"] == len(sd) for v in report["loaders"].values())
    # a diffusers-layout SDXL file: ComfyUI/Forge map attention only under .processor. names, so they drop to_q
    state = read_lora(sd, {}, [sdxl_keys], where="t")
    d = write_lora(state, sdxl_keys, "diffusers")["tensors"]
    r = verify(d, sdxl_keys)
    assert not r["ok"] and r["loaders"]["diffusers"]["applied"] == len(d)
    assert any(".attn1.to_q." in k for k in r["loaders"]["comfyui"]["ignored"]) or \
        not any(".attn1.to_q." in k for k in d)
    # FLUX: T5 keys are applied by ComfyUI/kohya, dropped by diffusers
    f = kohya_lora(flux_keys, every=1)
    rf = verify(f, flux_keys)
    t5 = [k for k in f if k.startswith("lora_te3_")]
    assert set(t5) <= set(rf["loaders"]["diffusers"]["ignored"])
    assert rf["loaders"]["comfyui"]["applied"] == len(f)
    assert any(k.startswith("lora_unet_final_layer") for k in rf["loaders"]["kohya"]["ignored"])
    # a wrong shape is a mismatch, an unknown name is ignored everywhere
    bad = dict(sd)
    k = next(x for x in sd if x.endswith(".lora_up.weight"))
    bad[k] = torch.zeros(sd[k].shape[0] + 1, sd[k].shape[1])
    bad["lora_unet_nowhere.lora_down.weight"] = torch.zeros(1, 1)
    rb = verify(bad, sdxl_keys)
    assert all(any(x[0] == k for x in v["mismatched"]) for v in rb["loaders"].values())
    assert all("lora_unet_nowhere.lora_down.weight" in v["ignored"] for v in rb["loaders"].values())
    mod = rb["modules"][0]
    assert mod["rank"] == 4 and mod["alpha"] == 2.0 and mod["scale"] == 0.5 and mod["effective_rank"] == 4


def test_flux_split_and_fuse_back_keeps_rank(flux_keys):
    """kohya qkv (rank 4, dense up) -> diffusers q/k/v (each the full down) -> kohya: rank 4 again, same ΔW."""
    sd = kohya_lora(flux_keys, rank=4, alpha=2.0)
    state = read_lora(sd, {}, [flux_keys], where="t")
    d = write_lora(state, flux_keys, "diffusers")["tensors"]
    back = read_lora(d, {}, [flux_keys], where="t")
    name = "lora_unet_single_blocks_0_linear1"
    assert back.modules[name].rank == 4 and rel(back.modules[name].delta(), ref_delta(sd, name)) < 1e-6


def test_flux_merge_into_bfl_file_and_verify_base(flux_keys, tmp_path):
    """A fused qkv/linear1 LoRA merged into a BFL single file lands on the fused weight's rows."""
    from safetensors import safe_open

    from lorakit.models.flux1.load import write_tiny_checkpoint

    base = write_tiny_checkpoint(tmp_path / "f", dtype=torch.float32)["checkpoint"]
    sd = {k: v for k, v in kohya_lora(flux_keys, rank=2, alpha=1.0).items() if k.startswith("lora_unet_")}
    keys = files.base_keymap(flux_keys, base)
    assert verify(sd, keys)["ok"] is False  # kohya has no final_layer module
    assert all(not v["mismatched"] for v in verify(sd, keys)["loaders"].values())
    state = read_lora(sd, {}, [flux_keys], where="t")
    out = tmp_path / "merged.safetensors"
    files.merge_into(base, [(state, 1.0)], keys, out)
    with safe_open(str(base), "pt") as fb, safe_open(str(out), "pt") as fm:
        prefix = "" if "double_blocks.0.img_attn.qkv.weight" in fb.keys() else "model.diffusion_model."
        for native in ("double_blocks.0.img_attn.qkv", "single_blocks.1.linear1", "double_blocks.1.txt_mod.lin"):
            k = prefix + native + ".weight"
            want = ref_delta(sd, "lora_unet_" + native.replace(".", "_"))
            assert rel(fm.get_tensor(k) - fb.get_tensor(k), want) < 1e-5, native
    wrong = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 7),
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(5, 2)}
    bad = verify(wrong, keys)
    assert len(bad["loaders"]["comfyui"]["mismatched"]) == 2


def test_reads_text_encoder_names_without_text_model(sdxl_keys):
    te = next(m for m in sdxl_keys.modules if m.component == "te1")
    path = te.native[len("text_model."):]
    sd = {f"text_encoder.{path}.lora_A.weight": torch.ones(2, te.in_features),
          f"text_encoder.{path}.lora_B.weight": torch.ones(te.out_features, 2)}
    state = read_lora(sd, {}, [sdxl_keys], where="t")
    assert list(state.modules) == [sdxl_keys.kohya_name(te)] and not state.unmatched
