"""The ninth session's walk through the LoRA tools with files other trainers write (loadwalk): damaged pairs (rank 0,
factors that disagree on the rank, an alpha of several values), diffusers' training-script names. The LoRAs are random,
on every 50th module of the full-size SDXL key map (built on the meta device)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.cli import main


@pytest.fixture(scope="module")
def sdxl_map():
    from lorakit.models.sdxl import full_lora_keymap
    return full_lora_keymap()


def kohya(keys, every=50, rank=4, alpha=2.0, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m in keys.modules[::every]:
        n = keys.kohya_name(m)
        down = torch.randn(rank, m.in_features, *m.kernel, generator=g) * 0.1
        up = torch.randn(m.out_features, rank, generator=g) * 0.1
        sd[n + ".lora_down.weight"] = down.reshape(rank, m.in_features) if m.kernel == (1, 1) else down
        sd[n + ".lora_up.weight"] = up if m.kernel == (1, 1) else up.reshape(m.out_features, rank, 1, 1)
        sd[n + ".alpha"] = torch.tensor(alpha)
    return sd


def run(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def _first_module(sd: dict) -> str:
    return sorted(k for k in sd if k.endswith(".lora_down.weight"))[0][: -len(".lora_down.weight")]


@pytest.mark.parametrize("damage, why", [
    ("rank0", "lora_down is 0x{i}, lora_up {o}x0: a zero-size factor (rank 0)"),
    ("rank", "lora_up has 3 columns, lora_down 4 rows: the two factors disagree on the rank"),
    ("alpha", "alpha holds 4 values (shape 4); one number is expected"),
    ("flat", "lora_down is {n}, lora_up {o}x4: each must be a matrix (rank x in, out x rank)"),
])
def test_a_damaged_pair_is_named_by_every_tool_and_nothing_is_written(tmp_path, capsys, sdxl_map, damage, why):
    # before: RuntimeError tracebacks ("cannot reshape tensor of 0 elements", "a Tensor with 4 elements cannot be
    # converted to Scalar", "mat1 and mat2 shapes cannot be multiplied") from inspect / verify / resize / merge, and
    # convert wrote the damaged module into a new file
    sd = kohya(sdxl_map)
    m = _first_module(sd)
    o, i = sd[m + ".lora_up.weight"].shape[0], sd[m + ".lora_down.weight"].shape[1]
    if damage == "rank0":
        sd[m + ".lora_down.weight"], sd[m + ".lora_up.weight"] = torch.zeros(0, i), torch.zeros(o, 0)
    elif damage == "rank":
        sd[m + ".lora_up.weight"] = torch.zeros(o, 3)
    elif damage == "alpha":
        sd[m + ".alpha"] = torch.full((4,), 2.0)
    else:
        sd[m + ".lora_down.weight"] = sd[m + ".lora_down.weight"].flatten()
    f = tmp_path / "bad.safetensors"
    save_file(sd, str(f))
    problem = f"{m}: " + why.format(i=i, o=o, n=4 * i)
    refusal = f"lorakit: error: {f}: 1 module(s) are damaged, e.g. {problem}; nothing written (`lorakit inspect` lists them)"
    for argv in (["convert", str(f), "--to", "diffusers", "-o", str(tmp_path / "c.safetensors")],
                 ["resize", str(f), "--rank", "2", "-o", str(tmp_path / "r.safetensors")],
                 ["merge", str(f), "-o", str(tmp_path / "m.safetensors")]):
        code, out = run(capsys, *argv)
        assert code == 2 and out.strip() == refusal, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]
    code, out = run(capsys, "verify", str(f))
    assert code == 1 and f"damaged module {problem}" in out and "Traceback" not in out
    code, out = run(capsys, "inspect", str(f))
    assert code == 0 and f"warning: 1 module(s) are damaged (no loader can apply them; lorakit's tools refuse the " \
                          f"file): {problem}" in out


def _diffusers_script_names(sd: dict, processor: bool) -> dict:
    """A diffusers-layout dict under the names diffusers' training scripts write: ``x.lora.down.weight`` (and with
    ``processor`` the older attention-processor names ``…attn1.processor.to_q_lora.down.weight``)."""
    out = {}
    for k, v in sd.items():
        if processor and k.startswith("unet.") and re.search(r"attn[12]\.to_(q|k|v|out\.0)\.lora_[AB]\.weight$", k):
            k = re.sub(r"\.to_(q|k|v|out)(\.0)?\.lora_([AB])\.weight$",
                       lambda mt: f".processor.to_{mt.group(1)}_lora.{'down' if mt.group(3) == 'A' else 'up'}.weight",
                       k)
        out[k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight")] = v
    return out


@pytest.mark.parametrize("processor", [False, True])
def test_diffusers_training_script_names_convert(tmp_path, capsys, sdxl_map, processor):
    # SDXL / SD 1.5 LoRAs from diffusers' train_dreambooth_lora_sdxl.py (convert_state_dict_to_diffusers) and older
    # attention-processor files; before: "unknown LoRA layout; convert reads kohya, comfyui, diffusers, peft" and
    # inspect "base model: no known family matches these keys"
    src = tmp_path / "k.safetensors"
    save_file(kohya(sdxl_map, every=23), str(src))
    assert run(capsys, "convert", str(src), "--to", "diffusers", "-o", str(tmp_path / "d.safetensors"))[0] == 0
    d = load_file(str(tmp_path / "d.safetensors"))
    script = tmp_path / "script.safetensors"
    named = _diffusers_script_names(d, processor)
    assert any("processor.to_" in k for k in named) == processor
    save_file(named, str(script))
    code, out = run(capsys, "convert", str(script), "--to", "kohya", "-o", str(tmp_path / "back.safetensors"))
    assert code == 0, out
    a, b = load_file(str(src)), load_file(str(tmp_path / "back.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        if k.endswith(".lora_up.weight"):  # ΔW per module kept (alpha folded into lora_B by the diffusers file)
            stem = k[: -len(".lora_up.weight")]
            da = (a[k].flatten(1) @ a[stem + ".lora_down.weight"].flatten(1)) * (a[stem + ".alpha"] / 4)
            db = (b[k].flatten(1) @ b[stem + ".lora_down.weight"].flatten(1)) * (b[stem + ".alpha"] / 4)
            assert torch.allclose(da, db, atol=1e-6)
    code, out = run(capsys, "inspect", str(script))
    assert "base model: sdxl; every key fits (names and shapes)" in out


@pytest.mark.parametrize("family", ["sdxl", "flux1"])
def test_inspect_names_the_family_of_a_diffusers_layout_file(tmp_path, capsys, family):
    # before: lorakit's own `convert --to diffusers` output was "base model: no known family matches these keys"
    # (SDXL) or "fits sd3: 37/37 … base model: sd3; modules that fit nothing: text_encoder_2…" (FLUX.1: SD3 shares
    # FLUX.1's diffusers transformer names)
    from lorakit.models.registry import get_family

    src = tmp_path / "k.safetensors"
    save_file(kohya(get_family(family).full_lora_keymap(), every=20), str(src))
    out_file = tmp_path / "d.safetensors"
    assert run(capsys, "convert", str(src), "--to", "diffusers", "-o", str(out_file))[0] == 0
    code, out = run(capsys, "inspect", str(out_file))
    n = len(load_file(str(src))) // 3
    assert code == 0 and f"fits {family}: {n}/{n} modules (checked against full-size {family})" in out
    assert f"base model: {family}; every key fits (names and shapes)" in out


def test_resize_of_a_peft_folder_writes_a_peft_folder(tmp_path, capsys, sdxl_map):
    # before: `resize ADAPTER --rank 2` was refused ("-o ADAPTER-r2: lorakit writes .safetensors files") and
    # `-o out.safetensors` wrote a *folder* named out.safetensors
    import json

    src = tmp_path / "k.safetensors"
    save_file(kohya(sdxl_map), str(src))
    peft = tmp_path / "adapter"
    assert run(capsys, "convert", str(src), "--to", "peft", "-o", str(peft))[0] == 0
    code, out = run(capsys, "resize", str(peft), "--rank", "2", "-o", str(tmp_path / "r.safetensors"))
    assert code == 2 and out.strip() == (
        f"lorakit: error: -o {tmp_path / 'r.safetensors'}: the output is a PEFT adapter, a folder "
        f"(adapter_model.safetensors + adapter_config.json); give a folder name, e.g. {tmp_path / 'r'} (lorakit "
        "convert --to kohya makes one .safetensors file of it)")
    assert not (tmp_path / "r.safetensors").exists()
    code, out = run(capsys, "resize", str(peft), "--rank", "2")
    assert code == 0 and f"written to {tmp_path / 'adapter-r2'}" in out
    assert json.loads((tmp_path / "adapter-r2" / "adapter_config.json").read_text())["r"] == 2


# ------------------------------------------------------------------------------------------ the ComfyUI Config node

def test_comfy_config_node_refuses_another_familys_checkpoint(tmp_path, monkeypatch):
    # before: accepted at the Config node; the queued job failed after it started, its reason in the Train node's
    # summary only
    import shutil

    from lorakit.comfy import nodes
    from lorakit.errors import ConfigError, LorakitError
    from lorakit.toy.paths import model_section
    from lorakit.toy.world import write_demo_dataset
    from tests.unit import comfyui_rederived as cu

    models = tmp_path / "ComfyUI" / "models"
    (models / "diffusion_models").mkdir(parents=True)
    (models / "checkpoints").mkdir(parents=True)
    flux = models / "diffusion_models" / "flux1-dev.safetensors"
    shutil.copy(model_section("flux1")["checkpoint"], flux)
    (models / "diffusion_models" / "flux1-dev-Q4_K_S.gguf").write_bytes(b"GGUF" + bytes(60))
    shutil.copy(model_section("sdxl")["checkpoint"], models / "checkpoints" / "sdxl.safetensors")
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    cu.install_fake_comfy(monkeypatch, models)
    write_demo_dataset(tmp_path / "kohya", n=2, repeats=1)
    ds, _ = nodes.LorakitDataset().load(str(tmp_path / "kohya"), 1, "zkx", "")
    args = dict(dataset=ds, family="sdxl", preset="(none)", checkpoint="flux1-dev.safetensors", resolution=0, rank=0,
                alpha=0.0, learning_rate=0.0, optimizer="(preset)", max_steps=0, batch_size=0, training_seed=-1,
                save_every=0, sample_every=0, sample_prompts="", name="", output_dir="",
                train_text_encoder="(preset)", overrides="model.config_dir=" + model_section("sdxl")["config_dir"])
    with pytest.raises(ConfigError) as exc:
        nodes.LorakitConfig().build(**args)
    assert str(exc.value) == (f"model.checkpoint: {flux} is a FLUX.1-dev-layout transformer of another size (width 64; "
                              "FLUX.1 has 3072), not a base model the sdxl family trains on; set family = \"flux1\" to "
                              "train on it")
    with pytest.raises(LorakitError, match=r"flux1-dev-Q4_K_S.gguf: a GGUF file"):
        nodes.LorakitConfig().build(**{**args, "checkpoint": "flux1-dev-Q4_K_S.gguf"})
    nodes.LorakitConfig().build(**{**args, "checkpoint": "sdxl.safetensors"})  # its own family's file: fine


def test_peft_in_memory_names_convert_with_a_note_and_verify_says_what_they_are(tmp_path, capsys, sdxl_map):
    # a PEFT model's state_dict saved as is (….lora_A.default.weight); before: "unknown LoRA layout" from every tool
    src = tmp_path / "k.safetensors"
    save_file(kohya(sdxl_map, alpha=4.0), str(src))  # alpha = rank: scale 1, what such a file is read at
    assert run(capsys, "convert", str(src), "--to", "diffusers", "-o", str(tmp_path / "d.safetensors"))[0] == 0
    raw = tmp_path / "raw.safetensors"
    save_file({k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"):
               v for k, v in load_file(str(tmp_path / "d.safetensors")).items()}, str(raw))
    code, out = run(capsys, "verify", str(raw))
    assert code == 2 and "PEFT's in-memory names (….lora_A.default.weight: a model's state_dict saved as is), which " \
                         "no loader reads; `lorakit convert FILE --to diffusers` (or --to kohya) writes a file they " \
                         "read" in out
    code, out = run(capsys, "convert", str(raw), "--to", "kohya", "-o", str(tmp_path / "k2.safetensors"))
    assert code == 0 and "read at scale 1 (alpha = rank)" in out
    a, b = load_file(str(src)), load_file(str(tmp_path / "k2.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_extract_given_a_lora_says_it_is_one(tmp_path, capsys, sdxl_map):
    # before: "extract: lora.safetensors holds no weight of a known family's LoRA targets"
    from lorakit.toy.paths import model_section

    lora = tmp_path / "lora.safetensors"
    save_file(kohya(sdxl_map), str(lora))
    code, out = run(capsys, "extract", str(lora), model_section("sdxl")["checkpoint"], "--rank", "4", "-o",
                    str(tmp_path / "x.safetensors"))
    assert code == 2 and out.strip() == (
        f"lorakit: error: extract: TUNED {lora} is a LoRA (kohya layout, {len(load_file(str(lora))) // 3} modules); "
        "extract takes two checkpoints of one family (the fine-tuned model and its base) and writes the LoRA of their "
        "difference")


def test_merge_records_the_file_names_without_their_weights(tmp_path, capsys, sdxl_map):
    import json

    from lorakit.safetensors_header import read_safetensors_header

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(kohya(sdxl_map, seed=1), str(a))
    save_file(kohya(sdxl_map, seed=2), str(b))
    out = tmp_path / "m.safetensors"
    assert run(capsys, "merge", str(a), f"{b}:0.5", "-o", str(out))[0] == 0
    meta = read_safetensors_header(out)[1]
    assert json.loads(meta["lorakit_merged_from"]) == [{"file": "a.safetensors", "weight": 1.0},
                                                      {"file": "b.safetensors", "weight": 0.5}]  # was "b.safetensors:0.5"


def test_comfy_config_node_takes_sd3s_clip_g(tmp_path, monkeypatch):
    # SD3.5 from ComfyUI's split files needs clip_l, clip_g and t5xxl; before: no clip_g widget (only `overrides`)
    import shutil
    import tomllib

    from lorakit.comfy import nodes
    from lorakit.toy.paths import model_section
    from lorakit.toy.world import write_demo_dataset
    from tests.unit import comfyui_rederived as cu

    models = tmp_path / "ComfyUI" / "models"
    (models / "text_encoders").mkdir(parents=True)
    (models / "checkpoints").mkdir(parents=True)
    shutil.copy(model_section("sd3")["checkpoint"], models / "checkpoints" / "sd3.5_medium.safetensors")
    for name in ("clip_l", "clip_g", "t5xxl_fp16"):
        (models / "text_encoders" / f"{name}.safetensors").write_bytes(b"x")
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    cu.install_fake_comfy(monkeypatch, models)
    assert "clip_g.safetensors" in nodes.LorakitConfig.INPUT_TYPES()["optional"]["clip_g"][0]
    write_demo_dataset(tmp_path / "kohya", n=2, repeats=1)
    ds, _ = nodes.LorakitDataset().load(str(tmp_path / "kohya"), 1, "zkx", "")
    _, text = nodes.LorakitConfig().build(
        dataset=ds, family="sd3", preset="(none)", checkpoint="sd3.5_medium.safetensors", resolution=0, rank=0,
        alpha=0.0, learning_rate=0.0, optimizer="(preset)", max_steps=0, batch_size=0, training_seed=-1, save_every=0,
        sample_every=0, sample_prompts="", name="", output_dir="", train_text_encoder="(preset)",
        clip_l="clip_l.safetensors", clip_g="clip_g.safetensors", t5xxl="t5xxl_fp16.safetensors")
    model = tomllib.loads(text)["model"]
    assert model["clip_g"] == str(models / "text_encoders" / "clip_g.safetensors")
    assert model["clip_l"] == str(models / "text_encoders" / "clip_l.safetensors")


@pytest.mark.parametrize("damage, why", [
    ("alpha", "alpha holds 3 values; one number is expected"),
    ("zero", "hada_w1_a, hada_w1_b: zero-size (rank 0)"),
])
def test_verify_lists_a_damaged_loha_module(tmp_path, capsys, damage, why):
    # before: RuntimeError tracebacks ("a Tensor with 3 elements cannot be converted to Scalar", "cannot reshape tensor
    # of 0 elements")
    n = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    sd = {n + ".hada_w1_a": torch.randn(640, 4), n + ".hada_w1_b": torch.randn(4, 640),
          n + ".hada_w2_a": torch.randn(640, 4), n + ".hada_w2_b": torch.randn(4, 640), n + ".alpha": torch.tensor(4.0)}
    if damage == "alpha":
        sd[n + ".alpha"] = torch.ones(3)
    else:
        sd[n + ".hada_w1_a"], sd[n + ".hada_w1_b"] = torch.zeros(640, 0), torch.zeros(0, 640)
    f = tmp_path / "loha.safetensors"
    save_file(sd, str(f))
    code, out = run(capsys, "verify", str(f))
    assert code == 1 and f"damaged module {n}: {why}" in out and "Traceback" not in out
    assert run(capsys, "inspect", str(f))[0] == 0


def test_inspect_of_a_peft_folder_names_its_text_encoder_adapters(tmp_path, capsys, sdxl_map):
    # before: "fits sdxl: 113/113 modules … every key fits" for a 151-module adapter, its text encoders unmentioned
    src = tmp_path / "k.safetensors"
    save_file(kohya(sdxl_map, every=7), str(src))
    peft = tmp_path / "adapter"
    assert run(capsys, "convert", str(src), "--to", "peft", "-o", str(peft))[0] == 0
    code, out = run(capsys, "inspect", str(peft))
    assert code == 0 and ("note: this is the folder's denoiser adapter; its text encoders' adapters "
                          "(text_encoder/adapter_model.safetensors, text_encoder_2/adapter_model.safetensors) are not "
                          "counted here: inspect each of them") in out


def test_verify_lists_diffusers_script_keys_under_the_files_own_names(tmp_path, capsys, sdxl_map):
    # after the names were read as lora_A / lora_B, verify listed keys the file does not hold (….lora_A.weight)
    src = tmp_path / "k.safetensors"
    save_file(kohya(sdxl_map), str(src))
    assert run(capsys, "convert", str(src), "--to", "diffusers", "-o", str(tmp_path / "d.safetensors"))[0] == 0
    script = tmp_path / "script.safetensors"
    save_file(_diffusers_script_names(load_file(str(tmp_path / "d.safetensors")), False), str(script))
    code, out = run(capsys, "verify", str(script))
    ignored = [ln.split("ignored ", 1)[1] for ln in out.splitlines() if ": ignored " in ln]
    assert code == 1 and ignored and all(k in load_file(str(script)) for k in ignored)  # sd-scripts reads none
    assert all(".lora.down.weight" in k or ".lora.up.weight" in k for k in ignored)
