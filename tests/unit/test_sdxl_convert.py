"""diffusers ↔ SGM converters: exact round trips, and diffusers' own single-file loader reads our file."""

import pytest
import torch

from lorakit.models import unet_parts
from lorakit.models.sdxl import convert
from lorakit.models.sdxl.load import build_models, tiny_configs, write_tiny_checkpoint


@pytest.fixture(scope="module")
def models():
    return build_models(tiny_configs(), seed=3)


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))[:5]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_unet_round_trip(models):
    unet = models["unet"]
    sgm = unet_parts.unet_to_sgm(unet.state_dict(), unet.config)
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight" in sgm
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in sgm  # upsampler after attention
    assert "model.diffusion_model.label_emb.0.0.weight" in sgm
    _same(unet_parts.sgm_to_unet(sgm, unet.config), unet.state_dict())


def test_vae_round_trip(models):
    vae = models["vae"]
    sgm = unet_parts.vae_to_sgm(vae.state_dict(), vae.config)
    assert sgm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # stored as 1×1 convs
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in sgm
    _same(convert.sgm_to_vae(sgm, vae.config), vae.state_dict())


def test_text_encoders_round_trip(models):
    te1, te2 = models["te1"], models["te2"]
    sgm1 = unet_parts.te1_to_sgm(te1.state_dict())
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in sgm1
    _same(convert.sgm_to_te1(sgm1), te1.state_dict())
    sgm2 = convert.te2_to_sgm(te2.state_dict())
    w = te2.config.hidden_size
    assert sgm2["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * w, w)
    proj = sgm2["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(proj, te2.state_dict()["text_projection.weight"].t())
    _same(convert.sgm_to_te2(sgm2, te2), te2.state_dict())


def test_unet_module_map_examples():
    from lorakit.models.sdxl.configs import UNET

    m = unet_parts.unet_module_to_sgm
    assert m("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", UNET) == \
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    assert m("down_blocks.0.resnets.0.conv1", UNET) == "input_blocks.1.0.in_layers.2"
    assert m("down_blocks.1.resnets.0.conv_shortcut", UNET) == "input_blocks.4.0.skip_connection"
    assert m("mid_block.resnets.1.time_emb_proj", UNET) == "middle_block.2.emb_layers.1"
    assert m("up_blocks.2.resnets.2.conv2", UNET) == "output_blocks.8.0.out_layers.3"
    assert m("up_blocks.1.upsamplers.0.conv", UNET) == "output_blocks.5.2.conv"
    with pytest.raises(KeyError):
        m("nonsense.module", UNET)


def test_from_single_file_loads_tiny_checkpoint(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    out = write_tiny_checkpoint(tmp_path, seed=5)
    pipe = StableDiffusionXLPipeline.from_single_file(str(out["checkpoint"]), config=str(out["config"]),
                                                      local_files_only=True)
    ref = build_models(tiny_configs(), seed=5)
    for name, module in (("unet", pipe.unet), ("vae", pipe.vae), ("te1", pipe.text_encoder),
                         ("te2", pipe.text_encoder_2)):
        _same(module.state_dict(), ref[name].state_dict())
    with pytest.raises(FileExistsError):  # never overwrites
        convert.save_sgm_checkpoint(out["checkpoint"], **ref)


def test_fp16_file_holds_fp16(tmp_path, models):
    from safetensors import safe_open

    path = convert.save_sgm_checkpoint(tmp_path / "half.safetensors", **models)  # default dtype fp16
    with safe_open(str(path), "pt") as fh:
        key = next(iter(fh.keys()))
        assert fh.get_tensor(key).dtype == torch.float16
