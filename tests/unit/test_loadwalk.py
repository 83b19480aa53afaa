"""The ninth session's walk through the base-model files users keep (loadwalk): GGUF files, BFL's ``.sft`` files,
pickles by content, damaged pickles, config folders and component folders, sharded diffusers components. Each is one
line naming the key and the file, or a load that works; the files are the shipped toy models' (real layouts)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
import torch

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.toy.paths import model_section
from tests.family_fixtures import loaded_adapter

FAMILIES = ("sdxl", "flux1", "flux2", "sd3", "sd15", "zimage", "qwenimage")


def _model(family: str, **over: object) -> dict:
    return {**{k: v for k, v in model_section(family).items() if k != "family"}, **over}


def _line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 0) * 2 + b"\0" * 64)
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_a_gguf_checkpoint_is_refused_as_gguf_naming_the_key(tmp_path, family):
    # before: "not a safetensors file (header length 14064895815 is over 104857600 bytes)" (SDXL, SD 1.5) or "only
    # .safetensors files are loaded; set model.allow_pickle = true" (the rest; with it set, torch.load's traceback)
    g = _gguf(tmp_path / "flux1-dev-Q4_K_S.gguf")
    with pytest.raises((ModelLoadError, ConfigError)) as exc:
        loaded_adapter(family, _model(family, checkpoint=g), tmp_path)
    assert _line(exc) == (f"model.checkpoint: {g}: a GGUF file (quantized weights, as ComfyUI-GGUF and llama.cpp read "
                          "them); lorakit trains on .safetensors weights (bf16, fp16 or fp8), not GGUF: give the "
                          "model's .safetensors release")


def test_a_gguf_encoder_names_its_key(tmp_path):
    g = _gguf(tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf")
    with pytest.raises(ModelLoadError) as exc:
        loaded_adapter("flux1", _model("flux1", t5xxl=g), tmp_path)
    assert _line(exc).startswith(f"model.t5xxl: {g}: a GGUF file")


@pytest.mark.parametrize("family", ["flux1", "flux2", "zimage"])
def test_a_safetensors_file_named_sft_loads(tmp_path, family):
    # BFL's first FLUX.1 release was flux1-dev.sft / ae.sft; before: "only .safetensors files are loaded; set
    # model.allow_pickle = true" (and with it set, torch.load of a safetensors file: UnpicklingError)
    sft = tmp_path / "model.sft"
    shutil.copy(model_section(family)["checkpoint"], sft)
    ref = loaded_adapter(family, _model(family), tmp_path)
    got = loaded_adapter(family, _model(family, checkpoint=sft), tmp_path)
    a, b = ref.comps.transformer, got.comps.transformer
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_pickle_named_safetensors_is_called_a_pickle(tmp_path):
    # before: "corrupt safetensors header (not JSON ...)" / "header length ... is over" for a renamed .ckpt
    p = tmp_path / "model.safetensors"
    torch.save({"state_dict": {"a": torch.zeros(2)}}, p)
    with pytest.raises(ModelLoadError) as exc:
        loaded_adapter("zimage", _model("zimage", checkpoint=p), tmp_path)
    assert _line(exc) == (f"model.checkpoint: {p}: a pickle file, which can run code when loaded; only .safetensors "
                          "files are loaded: convert it, or set model.allow_pickle = true if you trust it")


def test_a_damaged_pickle_with_allow_pickle_is_one_line(tmp_path):
    from lorakit.models.weights import load_safetensors

    p = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1000)}}, p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ModelLoadError) as exc:
        load_safetensors(p, allow_pickle=True)
    assert _line(exc).startswith(f"{p}: damaged pickle file, cannot be read (")
    q = tmp_path / "obj.pt"
    torch.save([1, 2, 3], q)
    with pytest.raises(ModelLoadError) as exc:
        load_safetensors(q, allow_pickle=True)
    assert _line(exc) == (f"{q}: the pickle holds no state dict of tensors (list); give the model's weights as a "
                          ".safetensors file")


@pytest.mark.parametrize("family", ["flux1", "flux2", "sd3", "zimage", "qwenimage"])
def test_a_config_dir_that_is_no_config_folder_is_refused(tmp_path, family):
    # before: silently replaced by the shipped configs (flux2), "num_channels (8) must be divisible by num_groups
    # (32)" (flux1, sd3: a ValueError traceback) or "pass the model's config folder as model.config_dir" (set!)
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as exc:
        loaded_adapter(family, _model(family, config_dir=missing), tmp_path)
    assert _line(exc) == (f"model.config_dir: {missing} does not exist; give the model's diffusers config folder (the "
                          "one holding transformer/config.json, vae/config.json, ...), or leave model.config_dir out "
                          "to use lorakit's shipped configs")
    with pytest.raises(ConfigError) as exc:
        loaded_adapter(family, _model(family, config_dir=tmp_path), tmp_path)  # a folder of no configs
    assert _line(exc).startswith(f"model.config_dir: {tmp_path} holds no component config (no model_index.json")


def test_a_damaged_component_config_names_the_file(tmp_path):
    cfg = tmp_path / "config"
    shutil.copytree(model_section("zimage")["config_dir"], cfg)
    (cfg / "transformer" / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        loaded_adapter("zimage", _model("zimage", config_dir=cfg), tmp_path)
    assert _line(exc).startswith(f"model.config_dir: {cfg / 'transformer' / 'config.json'} cannot be read as JSON (")


SDXL_VAE = "an SDXL VAE (4 latent channels, e.g. sdxl_vae.safetensors or sdxl.vae.safetensors)"


@pytest.mark.parametrize("other, what", [
    (("flux1", "ae"), "an autoencoder (VAE) of 16 latent channels"),
    (("sd15", "checkpoint"), "a Stable Diffusion 1/2-type checkpoint (U-Net context width 16; SDXL's is 2048)"),
    (("zimage", "checkpoint"), "a Z-Image-layout transformer of another size (width 64, 2 blocks)"),
])
def test_sdxl_model_vae_of_another_kind_is_refused_at_load(tmp_path, other, what):
    # before: accepted at load; at the first image diffusers' "Weights for this component appear to be missing" or
    # its several-hundred-character shape-mismatch text (an SD 1.5 file's VAE: used silently, other latents)
    path = model_section(other[0])[other[1]]
    with pytest.raises(ModelLoadError) as exc:
        loaded_adapter("sdxl", _model("sdxl", vae=path), tmp_path)
    assert _line(exc) == f"model.vae: {path} is {what}, not {SDXL_VAE}"


def test_sdxl_model_vae_a_lora_or_a_folder(tmp_path):
    from safetensors.torch import save_file

    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.ones(2, 4), "lora_unet_a.lora_up.weight": torch.ones(4, 2)},
              str(lora))
    with pytest.raises(ModelLoadError) as exc:
        loaded_adapter("sdxl", _model("sdxl", vae=lora), tmp_path)
    assert _line(exc) == f"model.vae: {lora} is a LoRA (kohya layout, 1 modules), not {SDXL_VAE}"
    with pytest.raises(ConfigError) as exc:
        loaded_adapter("sdxl", _model("sdxl", vae=tmp_path), tmp_path)
    assert _line(exc) == (f"model.vae: {tmp_path} is a folder; give the VAE's .safetensors file (for a diffusers VAE "
                          "folder: its diffusion_pytorch_model.safetensors)")  # was "does not exist"
    loaded_adapter("sdxl", _model("sdxl", vae=model_section("sdxl")["checkpoint"]), tmp_path)  # its own VAE: fine


def test_flux1_encoder_given_a_folder_says_so(tmp_path):
    # before: "model.clip_l: file not found: <the folder>"
    with pytest.raises(ConfigError) as exc:
        loaded_adapter("flux1", _model("flux1", clip_l=tmp_path), tmp_path)
    assert _line(exc) == (f"model.clip_l: {tmp_path} is a folder; give the .safetensors file (e.g. ComfyUI's "
                          "text_encoders/clip_l.safetensors), or set model.checkpoint to the diffusers FLUX.1 folder "
                          "and leave model.clip_l out to use its component")


def _sharded_folder(root: Path, family: str) -> Path:
    """A diffusers folder whose transformer/ is the toy transformer in two shards with their index json."""
    import json

    from safetensors.torch import load_file, save_file

    sd = load_file(model_section(family)["checkpoint"])
    keys = sorted(sd)
    sub = root / "transformer"
    sub.mkdir(parents=True)
    wm = {}
    for i, ks in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]), 1):
        name = f"diffusion_pytorch_model-0000{i}-of-00002.safetensors"
        save_file({k: sd[k] for k in ks}, str(sub / name))
        wm.update({k: name for k in ks})
    (sub / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    shutil.copy(Path(model_section(family)["config_dir"]) / "transformer" / "config.json", sub / "config.json")
    return root


@pytest.mark.parametrize("family", ["flux2", "zimage"])
def test_a_sharded_diffusers_transformer_with_a_missing_shard_names_it(tmp_path, family):
    # before: the shards present were read and then "not a known model layout (e.g. 'double_blocks.0…')" (flux2),
    # "a Z-Image transformer without x_embedder / q_norm / cap_embedder; truncated?" (zimage)
    root = _sharded_folder(tmp_path / "diff", family)
    model = _model(family, checkpoint=root)
    ref = loaded_adapter(family, model, tmp_path).comps.transformer.state_dict()
    # the same weights again as an fp16 variant beside them: not read on top (was: both sets read, twice the memory)
    from safetensors.torch import save_file
    save_file({"junk": torch.zeros(1)}, str(root / "transformer" / "diffusion_pytorch_model.fp16.safetensors"))
    got = loaded_adapter(family, model, tmp_path).comps.transformer.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    gone = root / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    gone.unlink()
    with pytest.raises(ConfigError) as exc:
        loaded_adapter(family, model, tmp_path)
    assert _line(exc) == (f"model.checkpoint: {gone} is missing (1 of the 2 files diffusion_pytorch_model.safetensors"
                          ".index.json lists are not there; an interrupted download?); download the folder again")


def test_folder_weights_prefers_the_plain_files_to_a_variant(tmp_path):
    from lorakit.models.common import folder_weights

    for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        (tmp_path / n).write_bytes(b"x")
    assert folder_weights(tmp_path, "k") == [tmp_path / "diffusion_pytorch_model.safetensors"]
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    assert folder_weights(tmp_path, "k") == [tmp_path / "diffusion_pytorch_model.fp16.safetensors"]
    (tmp_path / "model.safetensors.index.json").write_text("{")
    with pytest.raises(ConfigError, match=r"^k: .*model.safetensors.index.json is damaged \(JSONDecodeError"):
        folder_weights(tmp_path, "k")


def _scaled_fp8(src: str, dst: Path, newer: bool, fmt: str = "float8_e4m3fn") -> Path:
    """``src`` as ComfyUI's scaled fp8 files store it: each 2-D weight as e4m3 / its scale, the scale as
    ``x.scale_weight`` + a ``scaled_fp8`` marker (older files) or ``x.weight_scale`` + ``x.comfy_quant`` (the newer
    mixed-precision layout)."""
    import json

    from safetensors.torch import load_file, save_file

    out = {}
    for k, v in load_file(src).items():
        if v.ndim == 2 and k.endswith(".weight") and v.is_floating_point():
            s = v.float().abs().max() / 448
            out[k] = (v.float() / s).to(torch.float8_e4m3fn)
            if newer:
                out[k[:-6] + "weight_scale"] = s
                out[k[:-6] + "comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
            else:
                out[k[:-6] + "scale_weight"] = s.reshape(1)
        else:
            out[k] = v
    if not newer:
        out["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    save_file(out, str(dst))
    return dst


def _worst(ref: dict, got: dict) -> float:
    return max(((got[k].float() - ref[k].float()).norm() / ref[k].float().norm().clamp_min(1e-12)).item()
               for k in ref if ref[k].ndim == 2)


@pytest.mark.parametrize("newer", [False, True])
def test_scaled_fp8_sdxl_checkpoint_is_dequantized(tmp_path, newer):
    # before: the UNet's fp8 weights were cast without their scale: 3357x the base weights (relative error), trained
    # on silently
    ref = loaded_adapter("sdxl", _model("sdxl"), tmp_path).unet.state_dict()
    f = _scaled_fp8(model_section("sdxl")["checkpoint"], tmp_path / "sdxl_fp8_scaled.safetensors", newer)
    got = loaded_adapter("sdxl", _model("sdxl", checkpoint=f), tmp_path).unet.state_dict()
    assert _worst(ref, got) < 0.05  # e4m3's rounding


def test_comfy_mixed_precision_fp8_loads(tmp_path):
    # before: "unexpected tensors such as 'all_final_layer.2-1.adaLN_modulation.1.comfy_quant' (58 in all); is this
    # the right file for this role?" (every family reading it; FLUX.2: a RuntimeError from diffusers' converter)
    ref = loaded_adapter("zimage", _model("zimage"), tmp_path).comps.transformer.state_dict()
    f = _scaled_fp8(model_section("zimage")["checkpoint"], tmp_path / "z_image_fp8_scaled.safetensors", True)
    got = loaded_adapter("zimage", _model("zimage", checkpoint=f), tmp_path).comps.transformer.state_dict()
    assert _worst(ref, got) < 0.05


def test_upcast_scales_per_row_and_refuses_other_quantizations():
    import json

    from lorakit.models.weights import upcast

    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    s = torch.tensor([2.0, 0.5])
    got = upcast({"l.weight": w.to(torch.float8_e4m3fn), "l.weight_scale": s}, torch.float32)
    assert torch.equal(got["l.weight"], w * s[:, None]) and list(got) == ["l.weight"]
    q = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    with pytest.raises(ModelLoadError) as exc:
        upcast({"l.weight": torch.zeros(2, 1, dtype=torch.uint8), "l.weight_scale": s, "l.comfy_quant": q},
               torch.float32)
    assert _line(exc) == ("tensor 'l.weight' is quantized as nvfp4 (ComfyUI's mixed-precision layout), which lorakit "
                          "cannot train on; use the bf16, fp16 or fp8 file of this model")
    with pytest.raises(ModelLoadError, match=r"^tensor 'l.weight' has a scale of shape \(1, 2\) \(block-wise"):
        upcast({"l.weight": torch.zeros(4, 2).to(torch.float8_e4m3fn), "l.weight_scale": torch.ones(1, 2)},
               torch.float32)


@pytest.mark.parametrize("family, message", [
    ("flux2", "is a qwen3 encoder of width 96 (prompt width 288); this FLUX.2 transformer of a custom size (width "
              "{hidden}, not Klein 4B / 9B or dev) takes {dim}: use a Qwen3 encoder of width {width}, the one the model "
              "was made with"),  # loadleft: was "this FLUX.2 custom transformer … use its own encoder"
    ("zimage", "has width 96; this Z-Image transformer takes caption features of width {dim} (Qwen3-4B: 2560)"),
])
def test_a_text_encoder_of_another_size_is_refused_at_load_from_its_header(tmp_path, family, message):
    # e.g. Qwen3-8B given for Klein 4B or Z-Image; before: found only at the first caption, after the encoder (16 GB for
    # Qwen3-8B) was read whole
    from safetensors.torch import save_file

    from lorakit.safetensors_header import read_safetensors_header

    te = tmp_path / "qwen_3_8b.safetensors"
    save_file({"model.embed_tokens.weight": torch.zeros(10, 96), "model.layers.0.self_attn.q_norm.weight":
               torch.zeros(8)}, str(te))  # a header is all the check reads
    with pytest.raises(ModelLoadError) as exc:
        loaded_adapter(family, _model(family, text_encoder=te), tmp_path)
    h, _ = read_safetensors_header(model_section(family)["text_encoder"])
    width = next(v["shape"][1] for k, v in h.items() if k.endswith("embed_tokens.weight"))
    dim = 3 * width if family == "flux2" else width
    hidden = read_safetensors_header(model_section(family)["checkpoint"])[0].get("img_in.weight", {"shape": [0]})
    assert _line(exc) == f"model.text_encoder: {te} " + message.format(dim=dim, width=width, hidden=hidden["shape"][0])


def test_diffusers_folder_check_names_a_missing_or_truncated_shard_with_the_key(tmp_path):
    # the SDXL / SD 1.5 / FLUX.1 folders (read by diffusers' from_pretrained); before: "…: could not be loaded as a
    # diffusers SDXL folder (…/unet does not appear to have a file named … which is required according to the
    # checkpoint index.)", and a truncated shard's line without the key
    import json

    from safetensors.torch import save_file

    from lorakit.models.weights import check_weights_folder

    unet = tmp_path / "unet"
    unet.mkdir()
    one = unet / "diffusion_pytorch_model-00001-of-00002.safetensors"
    save_file({"a": torch.zeros(64)}, str(one))
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": one.name, "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}))
    with pytest.raises(ConfigError) as exc:
        check_weights_folder(tmp_path, False)
    assert _line(exc) == (f"model.checkpoint: {unet / 'diffusion_pytorch_model-00002-of-00002.safetensors'} is missing "
                          "(1 of the 2 files diffusion_pytorch_model.safetensors.index.json lists are not there; an "
                          "interrupted download?); download the folder again")
    (unet / "diffusion_pytorch_model-00002-of-00002.safetensors").write_bytes(one.read_bytes()[:-100])
    with pytest.raises(ModelLoadError) as exc:
        check_weights_folder(tmp_path, False)
    assert _line(exc).startswith(f"model.checkpoint: {unet / 'diffusion_pytorch_model-00002-of-00002.safetensors'}: "
                                 "truncated file: tensor 'a' ends at byte 256")


def test_flux1_refuses_flux2s_32_channel_ae_at_load(tmp_path):
    # before: loaded as a 32-latent-channel AutoencoderKL, whose latents the FLUX.1 transformer cannot take
    path = model_section("flux2")["ae"]
    with pytest.raises(ModelLoadError) as exc:
        loaded_adapter("flux1", _model("flux1", ae=path), tmp_path)
    assert _line(exc).startswith(f"model.ae: {path} is ")
    assert _line(exc).endswith(" of 32 latent channels, not FLUX.1's autoencoder (ae.safetensors, 16 latent channels)")


@pytest.mark.parametrize("n", [0x280, 0x380, 0x480, 0x580, 0x2080])
def test_weights_format_does_not_take_a_header_length_for_a_pickle_opcode(tmp_path, n):
    # a header of 640 bytes starts the file with 0x80 0x02, a protocol-2 pickle's first bytes
    import json

    from lorakit.safetensors_header import read_safetensors_header, weights_format

    raw = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    raw += b" " * (n - len(raw))
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", n) + raw + b"\0" * 4)
    assert weights_format(p) == "safetensors" and list(read_safetensors_header(p)[0]) == ["a"]
    torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    with open(tmp_path / "legacy.pt", "wb") as fh:
        torch.save({"a": torch.zeros(1)}, fh, _use_new_zipfile_serialization=False)
    assert weights_format(tmp_path / "x.pt") == weights_format(tmp_path / "legacy.pt") == "pickle"
