"""The seventh session's walk through the newer families (FLUX.2, SD3.5, Z-Image, Qwen-Image, SD 1.5) with files on
disk: a file of another kind in a [model] key, a truncated file, a variant the weights contradict. Each is one
ModelLoadError / ConfigError line naming the key, the file, what the file is and what to set. The files are the
shipped toy models' (real layouts, headers read in milliseconds); each family loads its toy transformer at most."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.toy.paths import model_section
from tests.family_fixtures import loaded_adapter


def toy(family: str, role: str = "checkpoint") -> str:
    return model_section(family)[role]


def _load(family: str, tmp_path: Path, **over: str):
    """The family's adapter on its toy files with ``over`` replacing [model] keys (the transformer is read now)."""
    model = {k: v for k, v in model_section(family).items() if k != "family"}
    return loaded_adapter(family, {**model, **over}, tmp_path)


def _line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ------------------------------------------------------------------ model.checkpoint: another family's file

@pytest.mark.parametrize("family, other, what", [
    ("flux2", "sdxl", "an SDXL-layout checkpoint of another size (U-Net width 32, context width 40; SDXL base 1.0 has "
                      "320 and 2048)"),
    ("zimage", "sd15", "a Stable Diffusion 1/2-type checkpoint (U-Net context width 16; SDXL's is 2048)"),
    ("qwenimage", "sd3", "an SD3-layout transformer of another size (width 64, 3 blocks) with clip_l, clip_g, t5xxl, "
                         "vae bundled"),
    ("flux2", "zimage", "a Z-Image-layout transformer of another size (width 64, 2 blocks)"),
])
def test_another_familys_checkpoint_names_the_file_what_it_is_and_the_family_to_set(tmp_path, family, other, what):
    # before: "model.checkpoint: this is an SD / SDXL U-Net checkpoint, not a Z-Image transformer" (no file, no family
    # to set; an SD 1.5 file called SDXL, a full SDXL file "U-Net only", the Qwen-Image VAE "not a recognised file")
    path = toy(other)
    with pytest.raises(ModelLoadError) as exc:
        _load(family, tmp_path, checkpoint=path)
    assert _line(exc) == (f"model.checkpoint: {path} is {what}, not a base model the {family} family trains on; "
                          f"set model.family = \"{other}\" to train on it")


def test_an_encoder_as_checkpoint_says_where_encoders_go(tmp_path):
    path = toy("qwenimage", "text_encoder")
    with pytest.raises(ModelLoadError) as exc:
        _load("flux2", tmp_path, checkpoint=path)
    assert _line(exc) == (f"model.checkpoint: {path} is a Qwen2.5-VL text encoder (model.text_encoder of qwenimage), "
                          "not a base model the flux2 family trains on; model.checkpoint takes the diffusion model "
                          "itself (a file or a diffusers folder), text encoders and VAEs go in their own [model] keys")


def test_sd15_names_the_family_of_a_transformer_file(tmp_path):
    # before: "…/z_image_toy.safetensors: no UNet weights (model.diffusion_model.*)…", and an SD3 file read
    # "SD3 is not an SD 1.x family" (there is an sd3 family)
    for other, what in (("zimage", "a Z-Image-layout transformer of another size (width 64, 2 blocks)"),
                        ("sd3", "a Stable Diffusion 3 (MMDiT) checkpoint")):
        path = toy(other)
        with pytest.raises(ModelLoadError) as exc:
            _load("sd15", tmp_path, checkpoint=path)
        assert _line(exc) == (f"model.checkpoint: {path} is {what}, not an SD 1.x checkpoint; "
                              f"set model.family = \"{other}\"")


# ------------------------------------------------------------------ encoders and VAEs: the key, the file, what it is

@pytest.mark.parametrize("family, key, attr, other, what, wanted", [
    # before: ZeroDivisionError in transformers (a Qwen2.5-VL built as a Mistral of 0 heads)
    ("flux2", "text_encoder", "text_encoder", ("qwenimage", "text_encoder"),
     "a Qwen2.5-VL text encoder (model.text_encoder of qwenimage)",
     "a Qwen3 / Mistral text encoder (FLUX.2 Klein 4B: Qwen3-4B, Klein 9B: Qwen3-8B, dev: Mistral Small 3.1)"),
    # before: "…/clip_l.safetensors: this is a Qwen2 / Qwen2.5-VL text encoder, not the Qwen2.5-VL-7B…"
    ("qwenimage", "text_encoder", "text_encoder", ("flux1", "clip_l"), "a CLIP text encoder",
     "the Qwen2.5-VL-7B text encoder Qwen-Image uses (e.g. ComfyUI's text_encoders/qwen_2.5_vl_7b.safetensors)"),
    # before: "this is an SD3 transformer" for a Qwen-Image transformer
    ("sd3", "clip_l", "clip_l", ("qwenimage", "checkpoint"),
     "a Qwen-Image-layout transformer of another size (width 64, 4 blocks)",
     "the CLIP text encoder SD3 needs for model.clip_l (e.g. ComfyUI's text_encoders/clip_l.safetensors)"),
    # before: "FLUX.2 autoencoder: missing tensor 'encoder.conv_out.weight'" (the SDXL file's bundled VAE was read)
    ("flux2", "ae", "ae", ("sdxl", "checkpoint"),
     "an SDXL-layout checkpoint of another size (U-Net width 32, context width 40; SDXL base 1.0 has 320 and 2048)",
     "the FLUX.2 autoencoder (BFL's FLUX.2 ae.safetensors)"),
    # before: "this is not a recognised model file"
    ("zimage", "text_encoder", "text_encoder", ("qwenimage", "vae"),
     "a Wan 2.1 / Qwen-Image autoencoder (model.vae of qwenimage)",
     "the Qwen3 text encoder Z-Image uses (Qwen3-4B, e.g. ComfyUI's text_encoders/qwen_3_4b.safetensors)"),
])
def test_a_wrong_encoder_or_vae_file_names_the_key_the_file_and_what_it_is(tmp_path, family, key, attr, other, what,
                                                                           wanted):
    path = toy(*other)
    adapter = _load(family, tmp_path, **{key: path})
    with pytest.raises(ModelLoadError) as exc:
        getattr(adapter._c(), attr)
    assert _line(exc) == f"model.{key}: {path}: this is {what}, not {wanted}"


@pytest.mark.parametrize("family, key, attr, other, wanted", [
    # an SD3.5 file bundles a 16-channel VAE of FLUX.1's shapes but not its weights: before, Z-Image used it silently
    ("zimage", "ae", "ae", "sd3", "FLUX.1's autoencoder (ae.safetensors) Z-Image uses"),
    ("sd3", "vae", "vae", "sdxl", "the SD3 VAE"),
])
def test_another_familys_checkpoint_as_the_vae_is_refused_not_its_bundled_vae_used(tmp_path, family, key, attr,
                                                                                    other, wanted):
    from lorakit.models.registry import identify

    path = toy(other)
    adapter = _load(family, tmp_path, **{key: path})
    with pytest.raises(ModelLoadError) as exc:
        getattr(adapter._c(), attr)
    assert _line(exc) == f"model.{key}: {path} is {identify(Path(path)).what}, not {wanted}"


def test_sd15_refuses_an_sdxl_checkpoint_as_model_vae(tmp_path):
    from lorakit.models.registry import identify

    path = toy("sdxl")
    adapter = _load("sd15", tmp_path, vae=path)
    with pytest.raises(ModelLoadError) as exc:
        adapter.encode_images(torch.zeros(1, 3, 64, 64))
    assert _line(exc) == (f"model.vae: {path} is {identify(Path(path)).what}, not an SD 1.5 VAE (e.g. "
                          "vae-ft-mse-840000-ema-pruned.safetensors)")


def test_flux2_ae_of_flux1_names_the_key_and_file(tmp_path):
    path = toy("flux1", "ae")
    adapter = _load("flux2", tmp_path, ae=path)
    with pytest.raises(ModelLoadError) as exc:
        adapter._c().ae
    assert _line(exc) == (f"model.ae: {path}: no bn.running_mean; this looks like the FLUX.1 ae.safetensors (16 "
                          "channels); FLUX.2 needs its own ae.safetensors (32 channels, with batch norm)")


def test_flux2_encoder_too_shallow_is_refused_at_load_naming_the_file(tmp_path):
    # before: "text_encoder: the text encoder has 4 layers; FLUX.2 takes hidden states (9, 18, 27)" at the first
    # encoding, naming neither the key nor the file
    path = toy("zimage", "text_encoder")
    adapter = _load("flux2", tmp_path, text_encoder=path)
    with pytest.raises(ModelLoadError) as exc:
        adapter._c().text_encoder
    # (a custom-size FLUX.2, the toy, names the encoder width it takes: loadleft)
    assert _line(exc) == (f"model.text_encoder: {path} has 4 layers; FLUX.2 takes its hidden states (9, 18, 27): "
                          "use a Qwen3 encoder of width 16, the one the model was made with")


def test_a_tokenizer_larger_than_the_encoders_vocabulary_is_one_line(tmp_path):
    # before: IndexError (index out of range in self) at the first caption, e.g. no tokenizer_dir beside a small
    # encoder (the shipped full Qwen3 tokenizer, 151,669 ids) or another encoder's tokenizer folder (here Qwen-Image's
    # toy tokenizer, 421 ids, beside Z-Image's toy encoder)
    adapter = _load("zimage", tmp_path, tokenizer_dir=toy("qwenimage", "tokenizer_dir"))
    rows = adapter._c().text_encoder.get_input_embeddings().num_embeddings
    with pytest.raises(ConfigError) as exc:
        adapter.encode_text(["a zkx shape"])
    assert _line(exc) == (f"model.tokenizer_dir: the tokenizer has {len(adapter._c().tokenizer)} tokens, but the text "
                          f"encoder {toy('zimage', 'text_encoder')} embeds only {rows}; set model.tokenizer_dir to the "
                          "tokenizer folder that comes with this encoder")


# ------------------------------------------------------------------ truncated files, a variant the weights contradict

def _truncated(src: str, dst: Path) -> Path:
    data = Path(src).read_bytes()
    dst.write_bytes(data[: len(data) * 3 // 5])
    return dst


@pytest.mark.parametrize("family, key, attr", [("qwenimage", "text_encoder", "text_encoder"),
                                               ("flux2", "ae", "ae")])
def test_a_truncated_encoder_or_vae_says_truncated_with_its_key(tmp_path, family, key, attr):
    # before: "…: not a readable .safetensors file (Error while deserializing header: incomplete metadata, file not
    # fully covered)", no key
    path = _truncated(toy(family, key), tmp_path / "cut.safetensors")
    adapter = _load(family, tmp_path, **{key: str(path)})
    with pytest.raises(ModelLoadError) as exc:
        getattr(adapter._c(), attr)
    line = _line(exc)
    assert line.startswith(f"model.{key}: {path}: truncated file: tensor ") and "-byte data section" in line


def test_a_truncated_checkpoint_names_the_key(tmp_path):
    path = _truncated(toy("zimage"), tmp_path / "cut.safetensors")
    with pytest.raises(ModelLoadError) as exc:
        _load("zimage", tmp_path, checkpoint=str(path))
    assert _line(exc).startswith(f"model.checkpoint: {path}: truncated file: tensor ")


def test_flux2_variant_dev_on_klein_weights_says_what_the_weights_are(tmp_path):
    # before: "model.variant: 'dev' is not a FLUX.2 choice" (FLUX.2 dev is one)
    with pytest.raises(ConfigError) as exc:
        loaded_adapter("flux2", {**{k: v for k, v in model_section("flux2").items() if k != "family"},
                                 "variant": "dev"}, tmp_path)
    name = Path(toy("flux2")).name
    assert _line(exc) == (f"model.variant: 'dev', but {name} holds FLUX.2 Klein weights (custom, width 64; dev has "
                          "6144); use auto, base or distilled, or give the FLUX.2 dev file")


# ------------------------------------------------------------------ tools: a LoRA of family A given with --family B

def _flux2_toy_lora(path: Path) -> Path:
    """A kohya FLUX.2 LoRA of the toy's width (64) with FLUX.2's metadata, as `lorakit train` writes them: FLUX.1 and
    FLUX.2 share BFL's block names, so only the metadata tells them apart."""
    from safetensors.torch import save_file

    stem = "lora_unet_double_blocks_0_img_attn_proj"
    save_file({f"{stem}.lora_down.weight": torch.ones(4, 64), f"{stem}.lora_up.weight": torch.zeros(64, 4),
               f"{stem}.alpha": torch.tensor(4.0)}, str(path),
              metadata={"ss_base_model_version": "flux_2_klein_4b", "modelspec.architecture": "Flux.2-klein-4b/lora"})
    return path


@pytest.mark.parametrize("command", ["verify", "convert"])
def test_a_flux2_lora_with_another_family_names_flux2_not_flux1(tmp_path, capsys, command):
    # before: verify said "it fits flux1" (FLUX.1's names, the metadata ignored); convert said "kohya layout, but no
    # module name fits sd3" without what it fits, and for a Z-Image LoRA with --family flux2 "fits flux2 or flux2 or
    # flux2"
    from lorakit.cli import main

    lora = _flux2_toy_lora(tmp_path / "mine.safetensors")
    extra = ["--to", "diffusers", "-o", str(tmp_path / "out.safetensors")] if command == "convert" else []
    assert main([command, str(lora), "--family", "sd3", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"lorakit: error: {lora}: no module fits sd3 (--family); it fits flux2 (1 of 1 "
                                    "modules): drop --family or pass --family flux2")
    assert not (tmp_path / "out.safetensors").exists()


def test_verify_of_a_toy_size_lora_says_to_pass_base(tmp_path, capsys):
    from lorakit.cli import main

    lora = _flux2_toy_lora(tmp_path / "mine.safetensors")
    assert main(["verify", str(lora)]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "no key has the full-size model's shapes: a LoRA of a model of another size (a toy, a pruned model) is "
        "checked with --base <its base checkpoint>")
    assert main(["verify", str(lora), "--base", toy("flux2")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "every loader applies every key"


@pytest.mark.parametrize("command, does", [("verify", "verify checks"), ("convert", "convert converts")])
def test_an_sd35_checkpoint_given_to_the_lora_tools_says_what_it_is(tmp_path, capsys, command, does):
    # before: its bundled text_encoders.* keys made it a "comfyui layout" LoRA: verify printed a table of dropped keys
    # (exit 1) and convert "comfyui layout, but no module name fits flux1 or … (e.g. -)"; a Z-Image transformer got
    # "unknown LoRA layout" from convert
    from lorakit.cli import main
    from lorakit.models.registry import identify

    for family in ("sd3", "zimage"):
        path = toy(family)
        extra = ["--to", "diffusers", "-o", str(tmp_path / "out.safetensors")] if command == "convert" else []
        assert main([command, path, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err
        assert err.splitlines()[-1] == f"lorakit: error: {path}: not a LoRA: this is {identify(Path(path)).what}; " \
                                       f"{does} LoRA files"
    assert not (tmp_path / "out.safetensors").exists()


def test_sd15_model_vae_folder_is_not_said_to_be_missing(tmp_path):
    folder = Path(toy("sd15", "config_dir")) / "vae"  # a diffusers VAE folder (its config; the weights beside it)
    with pytest.raises(ConfigError) as exc:
        _load("sd15", tmp_path, vae=str(folder))
    assert _line(exc) == (f"model.vae: {folder} is a folder; give the VAE's .safetensors file (for a diffusers VAE "
                          "folder: its diffusion_pytorch_model.safetensors)")


def test_verify_base_of_another_family_says_what_the_base_is(tmp_path, capsys):
    # before: "--base …: no flux2 weight of any LoRA target in it; is it a flux2 single-file checkpoint?"
    from lorakit.cli import main
    from lorakit.models.registry import identify

    lora, base = _flux2_toy_lora(tmp_path / "mine.safetensors"), toy("zimage", "ae")
    assert main(["verify", str(lora), "--base", base]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"lorakit: error: --base {base}: this is {identify(Path(base)).what}, with no "
                                    "flux2 weight of any LoRA target; give the flux2 single-file checkpoint the LoRA "
                                    "was trained on")


def test_network_weights_of_another_familys_lora_says_what_the_file_is_for(tmp_path):
    from lorakit.train import warmstart

    lora = _flux2_toy_lora(tmp_path / "mine.safetensors")
    adapter = _load("zimage", tmp_path)
    from lorakit.config.load import load_config
    model = {k: str(v) for k, v in model_section("zimage").items()}
    run = load_config(None, data={"model": model, "data": {"dir": str(tmp_path)}, "network": {"weights": str(lora)},
                                  "training": {"device": "cpu", "mixed_precision": "no"}})
    with pytest.raises(ConfigError) as exc:
        warmstart.read(run, adapter, {}, {}, lambda *_: None)
    assert _line(exc) == (f"network.weights: {lora}: kohya layout, but no module name fits zimage (e.g. "
                          "lora_unet_double_blocks_0_img_attn_proj); the file says it is a LoRA of flux_2_klein_4b "
                          "(ss_base_model_version)")


@pytest.mark.parametrize("which, width, named, takes", [("clip_l", 1280, "CLIP-G (model.clip_g)", "CLIP-L (768)"),
                                                         ("clip_g", 768, "CLIP-L (model.clip_l)", "CLIP-G (1280)")])
def test_sd3_swapped_clip_files_are_refused(which, width, named, takes):
    # before: CLIP-L and CLIP-G swapped gave the same 2048-wide embedding and trained on wrong text features silently
    from lorakit.models.sd3.load import build_clip

    sd = {"text_model.embeddings.token_embedding.weight": torch.zeros(2, width),
          "text_projection.weight": torch.zeros(width, width)}  # the widths are what the check reads
    with pytest.raises(ModelLoadError) as exc:
        build_clip(sd, torch.float32, which, "/m/te.safetensors")
    assert _line(exc) == (f"model.{which}: /m/te.safetensors: a CLIP text encoder of width {width}, the {named}; "
                          f"model.{which} takes the {takes}: swap model.clip_l and model.clip_g")


def test_sd15_a_lora_as_checkpoint_names_a_key_that_exists(tmp_path):
    # before: "…; load LoRAs with network.init" (no such key: it is network.weights)
    from lorakit.config.load import field_specs
    from safetensors.torch import save_file

    lora = tmp_path / "mine.safetensors"
    stem = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{stem}.lora_down.weight": torch.ones(4, 32), f"{stem}.lora_up.weight": torch.zeros(32, 4)}, str(lora))
    with pytest.raises(ModelLoadError) as exc:
        _load("sd15", tmp_path, checkpoint=str(lora))
    assert _line(exc) == (f"model.checkpoint: {lora} is a LoRA file, not an SD 1.x checkpoint; model.checkpoint takes "
                          "the base model; a LoRA to start from goes in network.weights")
    assert "weights" in field_specs()["network"]
