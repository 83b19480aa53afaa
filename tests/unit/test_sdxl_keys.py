"""Golden LoRA key list of the full-size SDXL UNet (built on the meta device) in kohya's naming."""

from pathlib import Path

import pytest
import torch

from lorakit.models.base import LoraModule
from lorakit.models.sdxl import configs
from lorakit.models.clip_t5 import text_encoder_lora_targets
from lorakit.models.sdxl.adapter import export_kohya
from lorakit.models.unet_parts import UNET_PREFIX, unet_lora_targets, unet_to_sgm

GOLDEN = Path(__file__).parent / "golden" / "sdxl_unet_lora_keys.txt"
RANK = 4


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**{k: v for k, v in configs.UNET.items() if not k.startswith("_")})


def _fake_lora(module: torch.nn.Module, targets: dict[str, int], alpha: float = 2.0) -> dict[str, LoraModule]:
    """LoRA pairs with the shapes peft gives (values irrelevant: names and shapes are under test)."""
    out = {}
    for path, r in targets.items():
        w = module.get_submodule(path).weight
        if w.ndim == 4:
            down, up = torch.zeros(r, w.shape[1], *w.shape[2:]), torch.zeros(w.shape[0], r, 1, 1)
        else:
            down, up = torch.zeros(r, w.shape[1]), torch.zeros(w.shape[0], r)
        out[path] = LoraModule(down=down, up=up, alpha=alpha)
    return out


def test_full_size_unet_golden_keys(unet):
    targets = unet_lora_targets(unet, RANK)
    assert len(targets) == 722
    sd = export_kohya({"unet": _fake_lora(unet, targets)}, unet.config)
    assert len(sd) == 2166
    assert sd["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight"].shape == (RANK, 640)
    assert sd["lora_unet_middle_block_1_transformer_blocks_0_ff_net_0_proj.lora_up.weight"].shape == (10240, RANK)
    assert sd["lora_unet_output_blocks_2_1_proj_out.alpha"].ndim == 0
    assert sorted(sd) == GOLDEN.read_text().split()


def test_names_agree_with_diffusers_converter(unet):
    """Independent path: diffusers' SGM→diffusers converter, applied to the full SGM state dict, moves
    each tensor object from its SGM key to its diffusers key; the LoRA name must be that SGM module."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    sgm = unet_to_sgm(unet.state_dict(), unet.config)
    back = convert_ldm_unet_checkpoint(sgm, dict(unet.config))
    sgm_of = {id(v): k for k, v in sgm.items()}
    targets = unet_lora_targets(unet, RANK, conv_rank=8)
    names = set(export_kohya({"unet": _fake_lora(unet, targets)}, unet.config))
    for path in targets:
        sgm_key = sgm_of[id(back[path + ".weight"])]
        expected = "lora_unet_" + sgm_key.removeprefix(UNET_PREFIX).removesuffix(".weight").replace(".", "_")
        assert expected + ".lora_down.weight" in names, path


def test_locon_adds_kohya_66(unet):
    targets = unet_lora_targets(unet, RANK, conv_rank=8)
    assert len(targets) == 722 + 66
    convs = [p for p, r in targets.items() if r == 8]
    assert len(convs) == 38
    assert sum(p.endswith("time_emb_proj") for p in targets) == 17
    assert sum(p.endswith("conv_shortcut") for p in targets) == 11
    sd = export_kohya({"unet": _fake_lora(unet, targets)}, unet.config)
    assert sd["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"].shape == (8, 320, 3, 3)
    assert sd["lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight"].shape == (320, 8, 1, 1)
    assert "lora_unet_input_blocks_3_0_op.lora_down.weight" in sd      # downsampler
    assert "lora_unet_output_blocks_2_2_conv.lora_down.weight" in sd   # upsampler after attention
    assert "lora_unet_input_blocks_4_0_skip_connection.lora_down.weight" in sd
    assert "lora_unet_output_blocks_0_0_emb_layers_1.lora_up.weight" in sd


def test_text_encoder_names():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def cfg(d):
        return CLIPTextConfig(**{k: v for k, v in d.items() if k not in ("architectures", "torch_dtype")})

    with torch.device("meta"):
        te1, te2 = CLIPTextModel(cfg(configs.TE1)), CLIPTextModelWithProjection(cfg(configs.TE2))
    t1, t2 = text_encoder_lora_targets(te1, RANK), text_encoder_lora_targets(te2, RANK)
    assert (len(t1), len(t2)) == (72, 192)  # kohya: 12 and 32 layers × 6, not text_projection
    sd = export_kohya({"te1": _fake_lora(te1, t1), "te2": _fake_lora(te2, t2)}, configs.UNET)
    assert sd["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"].shape == (RANK, 768)
    assert sd["lora_te2_text_model_encoder_layers_31_mlp_fc1.lora_up.weight"].shape == (5120, RANK)
    assert all(k.startswith(("lora_te1_text_model_encoder_layers_", "lora_te2_text_model_encoder_layers_"))
               for k in sd)


def test_shipped_full_size_config_folder(tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    from lorakit.models.sdxl.configs import shipped_config_dir
    from lorakit.models.tokenizers import clip_tokenizer

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    folder = shipped_config_dir()
    assert folder.is_relative_to(tmp_path) and shipped_config_dir() == folder
    assert UNet2DConditionModel.load_config(str(folder / "unet"))["cross_attention_dim"] == 2048
    assert CLIPTextConfig.from_pretrained(str(folder / "text_encoder_2")).hidden_size == 1280
    assert CLIPTextConfig.from_pretrained(str(folder / "text_encoder")).hidden_size == 768
    assert clip_tokenizer(folder=folder / "tokenizer_2").pad_token_id == 0
    assert clip_tokenizer(folder=folder / "tokenizer")("a photo of a cat").input_ids[-1] == 49407
