"""The ninth session's fixes to what the LoRA-tool walk (loadwalk) left: the PEFT in-memory note for resize / merge,
damaged LyCORIS modules in inspect, FLUX.2 Klein sizes in merge, encoder folders of unrelated files, SD3 .ckpt
encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.unit.test_loratools_walk9 import kohya, run, sdxl_map  # noqa: F401  (sdxl_map: a fixture)


NOTE = "holds PEFT's in-memory names (….lora_A.default.weight), which carry no lora_alpha: read at scale 1 (alpha = rank)"


def test_resize_and_merge_of_peft_in_memory_names_print_the_note(tmp_path, capsys, sdxl_map):
    # before: only convert said the file is read at scale 1; resize and merge read it silently
    src = tmp_path / "k.safetensors"
    save_file(kohya(sdxl_map, alpha=4.0), str(src))
    assert run(capsys, "convert", str(src), "--to", "diffusers", "-o", str(tmp_path / "d.safetensors"))[0] == 0
    raw = tmp_path / "raw.safetensors"
    save_file({k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"):
               v for k, v in load_file(str(tmp_path / "d.safetensors")).items()}, str(raw))
    for argv in (["convert", str(raw), "--to", "kohya", "-o", str(tmp_path / "c.safetensors")],
                 ["resize", str(raw), "--rank", "2", "-o", str(tmp_path / "r.safetensors")],
                 ["merge", str(raw), "-o", str(tmp_path / "m.safetensors")]):
        code, out = run(capsys, *argv)
        assert code == 0 and out.count(f"note: {raw} {NOTE}") == 1, (argv, out)
    code, out = run(capsys, "merge", str(src), "-o", str(tmp_path / "m2.safetensors"))
    assert code == 0 and "in-memory" not in out


@pytest.mark.parametrize("algo, damage, why", [
    ("loha", "zero", "hada_w1_a, hada_w1_b: zero-size (rank 0)"),
    ("lokr", "zero", "lokr_w2_a, lokr_w2_b: zero-size (rank 0)"),
])
def test_inspect_lists_a_damaged_lycoris_module_as_verify_does(tmp_path, capsys, algo, damage, why):
    # before: inspect printed no warning for a LoHa/LoKr module no loader can apply (verify listed it)
    n = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    if algo == "loha":
        sd = {n + ".hada_w1_a": torch.randn(640, 4), n + ".hada_w1_b": torch.randn(4, 640),
              n + ".hada_w2_a": torch.randn(640, 4), n + ".hada_w2_b": torch.randn(4, 640)}
        if damage == "zero":
            sd[n + ".hada_w1_a"], sd[n + ".hada_w1_b"] = torch.zeros(640, 0), torch.zeros(0, 640)
    else:
        sd = {n + ".lokr_w1": torch.randn(8, 8), n + ".lokr_w2_a": torch.zeros(80, 0), n + ".lokr_w2_b": torch.zeros(0, 80)}
    sd[n + ".alpha"] = torch.tensor(4.0)
    f = tmp_path / f"{algo}.safetensors"
    save_file(sd, str(f))
    code, out = run(capsys, "verify", str(f))
    assert code == 1 and f"damaged module {n}: {why}" in out
    code, out = run(capsys, "inspect", str(f))
    assert code == 0 and ("warning: 1 module(s) are damaged (no loader can apply them; lorakit's tools refuse the "
                          f"file): {n}: {why}") in out and "Traceback" not in out
    ok = tmp_path / "ok.safetensors"  # an undamaged LoHa: no warning
    save_file({n + ".hada_w1_a": torch.randn(640, 4), n + ".hada_w1_b": torch.randn(4, 640),
               n + ".hada_w2_a": torch.randn(640, 4), n + ".hada_w2_b": torch.randn(4, 640),
               n + ".alpha": torch.tensor(4.0)}, str(ok))
    assert "module(s) are damaged" not in run(capsys, "inspect", str(ok))[1]


def test_merge_of_klein_4b_and_klein_9b_loras_names_the_two_sizes(tmp_path, capsys):
    # before: "merge: lora_unet_double_blocks_0_img_attn_qkv has shape (12288,)x(4096,) in one LoRA and ..."
    from lorakit.models.flux2.keys import lora_keymap

    a, b = tmp_path / "k4.safetensors", tmp_path / "k9.safetensors"
    save_file(kohya(lora_keymap(size="klein-4b"), every=30), str(a))
    save_file(kohya(lora_keymap(size="klein-9b"), every=30, seed=1), str(b))
    out = tmp_path / "m.safetensors"
    code, text = run(capsys, "merge", str(a), f"{b}:0.5", "-o", str(out))
    assert code == 2 and text.strip() == (
        "lorakit: error: merge: the LoRAs are for different sizes of one model (k4.safetensors fits flux2 klein-4b, "
        "k9.safetensors fits flux2 klein-9b); merge LoRAs of one size; nothing written")
    assert not out.exists()
    assert run(capsys, "merge", str(a), f"{a}:0.5", "-o", str(out))[0] == 0  # one size: merged


def test_sd3_ckpt_with_allow_pickle_finds_its_bundled_encoders(tmp_path):
    # before: "model.clip_l: required: sd3.5_medium.ckpt holds no clip_l" (the .safetensors file of the same tensors
    # loads, its bundled encoders found by name)
    from safetensors.torch import load_file as load_st

    from lorakit.config.load import load_config
    from lorakit.models.sd3.load import load_components
    from lorakit.toy.paths import model_section

    m = {k: v for k, v in model_section("sd3").items() if k != "family"}
    ckpt = tmp_path / "sd3.5_medium.ckpt"
    torch.save({"state_dict": load_st(m["checkpoint"])}, ckpt)

    def comps(**over):
        cfg = load_config(None, data={"model": {"family": "sd3", **m, **over}, "data": {"dir": str(tmp_path)}})
        return load_components(cfg.model, torch.float32, log=lambda _: None)

    got, ref = comps(checkpoint=str(ckpt), allow_pickle=True), comps()
    for role in ("clip_l", "clip_g", "t5"):
        a, b = getattr(got, role).state_dict(), getattr(ref, role).state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), role


@pytest.mark.parametrize("family", ["flux2", "zimage", "qwenimage"])
def test_an_encoder_folder_of_unrelated_files_names_the_odd_file(tmp_path, family):
    # before: the files were read as the shards of one model and the error named the folder
    import shutil

    from lorakit.errors import ConfigError
    from lorakit.models.common import shards
    from lorakit.toy.paths import model_section

    m = model_section(family)
    te = tmp_path / "text_encoders"
    te.mkdir()
    shutil.copy(m["text_encoder"], te / "qwen.safetensors")
    vae = m.get("ae") or m.get("vae")
    shutil.copy(vae, te / "ae.safetensors")  # another model's keys (and a third file: the encoder's again)
    shutil.copy(m["text_encoder"], te / "qwen_copy.safetensors")
    with pytest.raises(ConfigError) as exc:
        shards(te, "model.text_encoder")
    assert str(exc.value).startswith(f"model.text_encoder: {te / 'qwen_copy.safetensors'} holds tensor ")
    assert "which qwen.safetensors in the same folder holds too: two models (or two copies of one)" in str(exc.value)
    (te / "qwen_copy.safetensors").unlink()
    with pytest.raises(ConfigError) as exc:
        shards(te, "model.text_encoder")
    assert str(exc.value).startswith(f"model.text_encoder: the files of {te} are not the shards of one model (ae.")
    # the encoder split in two shards beside the odd file: the odd one is named
    from safetensors.torch import load_file as load_st
    sd = load_st(str(te / "qwen.safetensors"))
    names = sorted(sd)
    save_file({k: sd[k] for k in names[: len(names) // 2]}, str(te / "qwen-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in names[len(names) // 2:]}, str(te / "qwen-00002-of-00002.safetensors"))
    (te / "qwen.safetensors").unlink()
    with pytest.raises(ConfigError) as exc:
        shards(te, "model.text_encoder")
    assert str(exc.value).startswith(f"model.text_encoder: {te / 'ae.safetensors'} is not a shard of the model the "
                                     f"other files of {te} make (its names under ")
    (te / "ae.safetensors").unlink()
    assert [p.name for p in shards(te, "model.text_encoder")] == ["qwen-00001-of-00002.safetensors",
                                                                    "qwen-00002-of-00002.safetensors"]
    save_file({"head_only.weight": torch.zeros(4, 4)}, str(te / "qwen-00002-of-00002.safetensors"))
    assert len(shards(te, "model.text_encoder")) == 2  # a complete split whose last part holds a head only: fine


def test_merge_into_records_the_lora_files_and_drops_the_bases_weight_hashes(tmp_path, capsys):
    # before: lorakit_merged_loras held no file name (an extracted LoRA's output_name is ""), and the base's
    # sshs_model_hash / modelspec.hash_sha256 were copied onto the changed weights
    import json

    from lorakit.safetensors_header import read_safetensors_header
    from lorakit.toy.paths import model_section

    sd = load_file(model_section("sdxl")["checkpoint"])
    base = tmp_path / "base.safetensors"
    save_file(sd, str(base), metadata={"sshs_model_hash": "0" * 64, "modelspec.hash_sha256": "0x" + "0" * 64,
                                       "modelspec.architecture": "stable-diffusion-xl-v1-base"})
    key = "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    o, i = sd[key].shape
    lora = tmp_path / "style.safetensors"
    save_file({name + ".lora_down.weight": torch.randn(2, i), name + ".lora_up.weight": torch.randn(o, 2),
               name + ".alpha": torch.tensor(2.0)}, str(lora), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    out = tmp_path / "baked.safetensors"
    code, text = run(capsys, "merge", f"{lora}:0.5", "--into", str(base), "-o", str(out))
    assert code == 0, text
    meta = read_safetensors_header(out)[1]
    assert json.loads(meta["lorakit_merged_loras"]) == [{"file": "style.safetensors", "modules": 1, "weight": 0.5,
                                                         "output_name": ""}]
    assert "sshs_model_hash" not in meta and "modelspec.hash_sha256" not in meta
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert not torch.equal(load_file(str(out))[key], sd[key])


def test_extract_and_merge_into_name_a_folder_or_pickle_with_its_flag(tmp_path, capsys):
    # before: "fold: cannot read (Is a directory)", and a pickle's line without the flag or what to do
    from lorakit.toy.paths import model_section

    ckpt = model_section("sdxl")["checkpoint"]
    fold = tmp_path / "fold"
    fold.mkdir()
    pkl = tmp_path / "base.ckpt"
    torch.save({"a": torch.zeros(1)}, pkl)
    lora = tmp_path / "l.safetensors"
    lora.write_bytes(b"x")
    folder = "a folder; {} reads one single-file .safetensors checkpoint (as ComfyUI's models/checkpoints/ holds), " \
             "not a diffusers folder"
    pickle = "a PyTorch pickle (.ckpt / .pt / .bin content); {} reads .safetensors checkpoints: convert it to " \
             ".safetensors first (only if you trust the file)"
    out = tmp_path / "o.safetensors"
    for argv, want in (
            (["extract", str(fold), ckpt], f"extract: TUNED {fold}: " + folder.format("extract")),
            (["extract", ckpt, str(pkl)], f"extract: BASE {pkl}: " + pickle.format("extract")),
            (["extract", ckpt, str(tmp_path / "nope.safetensors")],
             f"extract: BASE {tmp_path / 'nope.safetensors'}: no such file"),
            (["merge", str(lora), "--into", str(fold)], f"--into {fold}: " + folder.format("merge --into")),
            (["merge", str(lora), "--into", str(pkl)], f"--into {pkl}: " + pickle.format("merge --into"))):
        code, text = run(capsys, *argv, *(["--rank", "2"] if argv[0] == "extract" else []), "-o", str(out))
        assert code == 2 and text.strip() == f"lorakit: error: {want}", argv
    assert not out.exists()


def test_merge_into_reads_a_lora_of_shared_names_as_the_checkpoints_family(tmp_path, capsys):
    # a LoRA of CLIP-L modules only (lora_te1_…: FLUX.1 and SDXL share the names) and no metadata; before: read as
    # FLUX.1's, then "--into …: this is an SDXL-layout checkpoint …, with no flux1 weight of any LoRA target"
    from lorakit.toy.paths import model_section

    base = model_section("sdxl")["checkpoint"]
    sd = load_file(base)
    key = "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    o, i = sd[key].shape
    lora = tmp_path / "te.safetensors"
    save_file({name + ".lora_down.weight": torch.randn(2, i), name + ".lora_up.weight": torch.randn(o, 2),
               name + ".alpha": torch.tensor(2.0)}, str(lora))
    out = tmp_path / "baked.safetensors"
    code, text = run(capsys, "merge", str(lora), "--into", base, "-o", str(out))
    assert code == 0 and f"1 of {len(sd)} tensors changed" in text, text
    assert not torch.equal(load_file(str(out))[key], sd[key])


def test_extract_of_two_families_checkpoints_names_both(tmp_path, capsys):
    # before: "extract: TUNED and BASE share no sdxl LoRA-target weight; are they the same model family and layout?"
    from lorakit.models.registry import identify
    from lorakit.toy.paths import model_section

    a, b = model_section("sdxl")["checkpoint"], model_section("flux1")["checkpoint"]
    code, text = run(capsys, "extract", a, b, "--rank", "2", "-o", str(tmp_path / "x.safetensors"))
    assert code == 2 and text.strip() == (
        f"lorakit: error: extract: TUNED {a} is {identify(a).what} (sdxl), BASE {b} is {identify(b).what} (flux1); "
        "extract takes two checkpoints of one family: give the sdxl base the tuned model was trained from")
    assert not (tmp_path / "x.safetensors").exists()


def test_merge_into_a_transformer_only_file_says_it_has_no_text_encoder(tmp_path, capsys):
    # a FLUX.1 LoRA with CLIP-L modules baked into a transformer-only file (FLUX.1's usual release); before: "1 LoRA
    # modules have no weight in this checkpoint (…); is it the base the LoRA was trained for?"
    from lorakit.safetensors_header import read_safetensors_header
    from lorakit.toy.paths import model_section

    base = model_section("flux1")["checkpoint"]
    o, i = read_safetensors_header(base)[0]["double_blocks.0.img_attn.proj.weight"]["shape"]
    te = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    lora = tmp_path / "f.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.randn(2, i),
               "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.randn(o, 2),
               te + ".lora_down.weight": torch.randn(2, 768), te + ".lora_up.weight": torch.randn(768, 2)},
              str(lora), metadata={"ss_base_model_version": "flux1"})
    out = tmp_path / "m.safetensors"
    code, text = run(capsys, "merge", str(lora), "--into", base, "-o", str(out))
    assert code == 2 and text.strip() == (
        f"lorakit: error: merge --into {base}: the checkpoint holds no text encoder (a denoiser-only file, as ComfyUI's "
        f"models/diffusion_models/ holds), and 1 of the LoRA's modules are text-encoder modules (e.g. {te}); bake into "
        "a single-file checkpoint that bundles the text encoder, or load the LoRA at generation time; nothing written")
    assert not out.exists()


def test_merge_into_a_checkpoint_of_another_size_names_the_loras_size(tmp_path, capsys):
    # a FLUX.2 Klein 4B LoRA into a checkpoint of another size (here the toy's width 64; a Klein 9B file alike);
    # before: "merge --into: lora_unet_double_blocks_0_img_attn_proj ΔW (3072, 3072) does not fit … (64, 64)" only
    from lorakit.models.flux2.keys import lora_keymap
    from lorakit.models.registry import identify
    from lorakit.toy.paths import model_section

    base = model_section("flux2")["checkpoint"]
    lora = tmp_path / "k4.safetensors"
    save_file({k: v for k, v in kohya(lora_keymap(size="klein-4b"), every=1).items() if "_blocks_0_" in k}, str(lora),
              metadata={"ss_base_model_version": "flux2"})
    out = tmp_path / "m.safetensors"
    code, text = run(capsys, "merge", str(lora), "--into", base, "-o", str(out))
    assert code == 2 and text.strip().endswith(
        f": the LoRA fits flux2 klein-4b, and {Path(base).name} is {identify(base).what}; bake it into a flux2 "
        "klein-4b checkpoint; nothing written"), text
    assert not out.exists()


def test_extract_of_a_checkpoint_holding_nan_names_the_file_and_tensor(tmp_path, capsys):
    # before: torch._C._LinAlgError traceback ("linalg.svd: The algorithm failed to converge …")
    from lorakit.toy.paths import model_section

    base = model_section("sdxl")["checkpoint"]
    sd = load_file(base)
    key = next(k for k in sorted(sd) if k.endswith("attn1.to_q.weight") and k.startswith("model.diffusion_model."))
    sd[key] = sd[key].clone()
    sd[key][0, 0] = float("nan")
    tuned = tmp_path / "tuned.safetensors"
    save_file(sd, str(tuned))
    out = tmp_path / "x.safetensors"
    code, text = run(capsys, "extract", str(tuned), base, "--rank", "2", "-o", str(out))
    assert code == 2 and text.strip() == (
        f"lorakit: error: extract: {tuned}: tensor {key!r} holds NaN or Inf values (a damaged file, or a diverged "
        "training run); extract needs finite weights; nothing written")
    assert not out.exists()


def test_extract_and_merge_into_refuse_a_scaled_fp8_checkpoint(tmp_path, capsys):
    # before: the fp8 values were read without their scale_weight: extract wrote, and merge --into baked, a wrong ΔW
    from lorakit.toy.paths import model_section

    base = model_section("sdxl")["checkpoint"]
    sd = load_file(base)
    key = next(k for k in sorted(sd) if k.endswith("attn1.to_q.weight") and k.startswith("model.diffusion_model."))
    scaled = dict(sd)
    scaled[key] = (sd[key].float() / 2).to(torch.float8_e4m3fn)
    scaled[key[: -len("weight")] + "scale_weight"] = torch.tensor(2.0)
    fp8 = tmp_path / "fp8_scaled.safetensors"
    save_file(scaled, str(fp8))
    lora = tmp_path / "l.safetensors"
    lora.write_bytes(b"x")
    out = tmp_path / "o.safetensors"
    why = (f": a scaled-fp8 / quantized file (e.g. {key[: -len('weight')] + 'scale_weight'!r}: its weights are stored "
           "times a scale); {} reads bf16, fp16, fp32 or plain fp8 weights: give the model's bf16 or fp16 file")
    code, text = run(capsys, "extract", str(fp8), base, "--rank", "2", "-o", str(out))
    assert code == 2 and text.strip() == f"lorakit: error: extract: TUNED {fp8}" + why.format("extract")
    code, text = run(capsys, "merge", str(lora), "--into", str(fp8), "-o", str(out))
    assert code == 2 and text.strip() == f"lorakit: error: --into {fp8}" + why.format("merge --into")
    assert not out.exists()
