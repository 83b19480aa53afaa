"""One detector says what a weights file is, from its header's key names and shapes (issue 26): loading refuses a
checkpoint of another family, size or variant (or a LoRA) in one line that says what the file is, and `inspect`
uses the same answer. The files are header-only (sparse data) in the real key layouts and real full-size shapes."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorakit.errors import LorakitError, ModelLoadError
from lorakit.models.registry import identify, require_base

SGM = "model.diffusion_model."


def write_header_file(path: Path, shapes: dict[str, list[int]], dtype: str = "BF16") -> Path:
    """A valid .safetensors file with these tensor names and shapes; its data is a sparse hole (never read)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape) * 2
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    return path


def sgm_checkpoint(width: int, in_ch: int, ctx: int, adm: bool, te: str = "conditioner.embedders.0.transformer.") -> dict:
    shapes = {SGM + "input_blocks.0.0.weight": [width, in_ch, 3, 3],
              SGM + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [width, ctx],
              "first_stage_model.encoder.conv_in.weight": [128, 3, 3, 3],
              te + "text_model.embeddings.token_embedding.weight": [49408, 768]}
    if adm:
        shapes[SGM + "label_emb.0.0.weight"] = [1280, 2816]
        shapes["conditioner.embedders.1.model.token_embedding.weight"] = [49408, 1280]
    return shapes


def flux1(in_ch: int = 64, width: int = 3072, guidance: bool = True, prefix: str = "") -> dict:
    shapes = {prefix + "img_in.weight": [width, in_ch], prefix + "double_blocks.0.img_mod.lin.weight": [6 * width, width],
              prefix + "double_blocks.0.img_attn.qkv.weight": [3 * width, width]}
    if guidance:
        shapes[prefix + "guidance_in.in_layer.weight"] = [width, 256]
    return shapes


def flux2_klein4b() -> dict:
    shapes = {"img_in.weight": [3072, 128], "txt_in.weight": [3072, 7680],
              "double_stream_modulation_img.lin.weight": [18432, 3072],
              "double_blocks.0.img_attn.norm.query_norm.scale": [128]}
    shapes.update({f"double_blocks.{i}.img_attn.qkv.weight": [9216, 3072] for i in range(5)})
    shapes.update({f"single_blocks.{i}.linear1.weight": [27648, 3072] for i in range(20)})
    return shapes


CASES = {
    "sd15": (sgm_checkpoint(320, 4, 768, adm=False, te="cond_stage_model.transformer."), "sdxl",
             "is an SD1.x (e.g. SD1.5) checkpoint (U-Net context width 768; SDXL's is 2048)"),
    "sd15_inpaint": (sgm_checkpoint(320, 9, 768, adm=False, te="cond_stage_model.transformer."), "sdxl",
                     "is an SD1.x (e.g. SD1.5) inpainting checkpoint"),
    "sdxl_inpaint": (sgm_checkpoint(320, 9, 2048, adm=True), "sdxl", "is an SDXL inpainting checkpoint (9 U-Net input"),
    "sdxl_refiner": (sgm_checkpoint(384, 4, 1280, adm=True), "sdxl", "is an SDXL refiner checkpoint"),
    "flux1_as_flux2": (flux1(), "flux2", "is a FLUX.1-dev transformer"),
    "flux1_fill": (flux1(in_ch=384, prefix=SGM), "flux1", "is a FLUX.1 Fill (inpainting / outpainting) transformer"),
    "flux1_depth": (flux1(in_ch=128), "flux1", "is a FLUX.1 Canny / Depth (control) transformer"),
    "flux2_as_flux1": (flux2_klein4b(), "flux1", 'is a FLUX.2 Klein 4B transformer, not a base model the flux1 family '
                                                 'trains on; set model.family = "flux2"'),
    "sdxl_as_flux1": (sgm_checkpoint(320, 4, 2048, adm=True), "flux1",
                      'is an SDXL base checkpoint, not a base model the flux1 family trains on; set model.family = '
                      '"sdxl"'),
    "lora_as_base": ({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": [16, 640],
                      "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": [640, 16],
                      "lora_unet_input_blocks_4_1_proj_in.alpha": []}, "sdxl",
                     "is a LoRA (kohya layout, 1 modules), not a base model the sdxl family trains on; give the base "
                     "model here"),
    "peft_lora_as_base": ({"transformer.single_transformer_blocks.0.proj_out.lora_A.weight": [16, 15360],
                           "transformer.single_transformer_blocks.0.proj_out.lora_B.weight": [3072, 16]}, "flux1",
                          "is a LoRA (diffusers/PEFT layout, 1 modules)"),
    "vae_as_base": ({"encoder.conv_in.weight": [128, 3, 3, 3], "decoder.conv_out.weight": [3, 128, 3, 3]}, "flux1",
                    "is an autoencoder (VAE), not a base model"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_checkpoint_of_another_family_size_or_variant_is_refused_in_one_line(tmp_path, case):
    shapes, family, says = CASES[case]
    path = write_header_file(tmp_path / f"{case}.safetensors", shapes)
    with pytest.raises(ModelLoadError) as e:
        require_base(path, family)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"model.checkpoint: {path} ") and says in msg, msg


def test_the_right_files_pass_and_say_what_they_are(tmp_path):
    sdxl = write_header_file(tmp_path / "sdxl.safetensors", sgm_checkpoint(320, 4, 2048, adm=True))
    assert require_base(sdxl, "sdxl").what == "an SDXL base checkpoint"
    schnell = write_header_file(tmp_path / "schnell.safetensors", flux1(guidance=False, prefix=SGM))
    assert require_base(schnell, "flux1").what == "a FLUX.1-schnell transformer"
    klein = write_header_file(tmp_path / "klein.safetensors", flux2_klein4b())
    assert require_base(klein, "flux2").what == "a FLUX.2 Klein 4B transformer"
    # a file no family knows passes to the family's own loader (which says what is missing)
    odd = write_header_file(tmp_path / "odd.safetensors", {"foo.weight": [2, 2]})
    assert identify(odd).role == "unknown" and require_base(odd, "sdxl").role == "unknown"


def test_the_shipped_toys_are_known_as_their_family_at_another_size():
    from lorakit.toy.paths import toy_paths

    for family in ("sdxl", "flux1", "flux2"):
        kind = identify(toy_paths(family)["checkpoint"])
        assert (kind.family, kind.standard, kind.role) == (family, False, "checkpoint"), kind


def test_the_sdxl_loader_refuses_an_sd15_file_before_loading(tmp_path):
    from lorakit.models.sdxl.load import _source

    path = write_header_file(tmp_path / "v1-5-pruned.safetensors",
                             CASES["sd15"][0])
    cfg = SimpleNamespace(checkpoint=str(path), config_dir=None, allow_pickle=False)
    with pytest.raises(LorakitError, match=r"is an SD1.x \(e.g. SD1.5\) checkpoint"):
        _source(cfg)


def test_the_flux2_loader_says_what_a_flux1_file_is(tmp_path):
    from lorakit.models.flux2.convert import detect
    from lorakit.safetensors_header import read_safetensors_header

    path = write_header_file(tmp_path / "flux1-fill-dev.safetensors", flux1(in_ch=384))
    header, _ = read_safetensors_header(path)
    with pytest.raises(ModelLoadError, match=r"this is a FLUX.1 Fill \(inpainting / outpainting\) transformer .*, not "
                                             r"a FLUX.2 transformer"):
        detect(header, "model.checkpoint")
