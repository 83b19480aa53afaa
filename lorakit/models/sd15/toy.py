"""SD 1.5's toy: a 2-level UNet2DConditionModel with SD 1.5's block layout (cross-attention at the top level, a plain
DownBlock2D / UpBlock2D at the bottom, conv proj_in/out), one CLIP text encoder (16 wide, as the SDXL toy's CLIP-L)
and a 4-channel AutoencoderKL, saved as one LDM single file (the layout of ``v1-5-pruned-emaonly.safetensors``) plus a
diffusers config folder. Pretrained with the shared plan (lorakit/toy/build.py). The first recipe (3 levels
[32, 64, 64], a 32-wide CLIP) cost 0.32 s per denoiser step at batch 32 on one core, over 20 min of denoiser
training alone; this one costs 0.21 s and writes a 3.7 MB file instead of 6.7 MB."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from lorakit.models.base import ToyDemo, ToyRecipe, init_kwargs

LATENT_RES = 8                       # 64 px / VAE factor 8


def configs() -> dict[str, dict[str, Any]]:
    """Tiny SD 1.5: unet, vae, text_encoder (CLIP, 32 wide, pads with <|endoftext|> as SD 1.5's tokenizer)."""
    te = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 49408,
          "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "max_position_embeddings": 77, "projection_dim": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
          "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0, "bos_token_id": 49406,
          "eos_token_id": 49407, "pad_token_id": 49407}
    unet = {"_class_name": "UNet2DConditionModel", "sample_size": LATENT_RES, "in_channels": 4, "out_channels": 4,
            "layers_per_block": 1, "block_out_channels": [32, 64],
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "attention_head_dim": 8, "use_linear_projection": False, "norm_num_groups": 16,
            "cross_attention_dim": 16, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
            "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5}
    vae = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "block_out_channels": [8, 16, 32, 32], "layers_per_block": 1, "act_fn": "silu",
           "latent_channels": 4, "norm_num_groups": 8, "sample_size": 64, "scaling_factor": 1.0}
    return {"unet": unet, "vae": vae, "text_encoder": te}


def make(seed: int) -> dict[str, torch.nn.Module]:
    """Fresh seeded modules of the real classes: unet, vae, text_encoder (CLIPTextModel)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = configs()
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(**init_kwargs(cfg["text_encoder"])))
    vae = AutoencoderKL(**init_kwargs(cfg["vae"]))
    unet = UNet2DConditionModel(**init_kwargs(cfg["unet"]))
    return {"unet": unet, "vae": vae, "text_encoder": te.eval()}


def adapter(modules: dict[str, torch.nn.Module], cfg: Any) -> Any:
    """The SD 1.5 Adapter bound to in-memory toy modules, with the tokenizer a single-file load gives."""
    from lorakit.models.sd15.adapter import Adapter
    from lorakit.models.tokenizers import clip_tokenizer

    a = Adapter(cfg)
    a.attach(modules["unet"], modules["vae"], modules["text_encoder"], clip_tokenizer())
    return a


def save(modules: dict[str, torch.nn.Module], facts: dict[str, Any], out: Path) -> dict[str, Path]:
    """One fp16 LDM single file (``toy_sd15.safetensors``) + the diffusers config folder."""
    from lorakit.models.sd15.configs import write_config_folder
    from lorakit.models.sd15.convert import save_ldm_checkpoint

    cfg = copy.deepcopy(configs())
    cfg["vae"]["scaling_factor"] = facts["scaling_factor"]
    ckpt = Path(out) / TOY.files["checkpoint"]
    save_ldm_checkpoint(ckpt, unet=modules["unet"], vae=modules["vae"], text_encoder=modules["text_encoder"],
                        dtype=torch.float16, metadata={"lorakit.toy": "sd15"})
    write_config_folder(Path(out) / TOY.files["config"], unet=cfg["unet"], vae=cfg["vae"],
                        text_encoder=cfg["text_encoder"])
    return {"checkpoint": ckpt, "config": Path(out) / TOY.files["config"]}


TOY = ToyRecipe(
    files={"checkpoint": "toy_sd15.safetensors", "config": "config"},
    configs=configs, make=make, vae="vae", adapter=adapter, save=save,
    # lr 6e-3, not the other toys' 1e-3: with 1e-3 (and 3e-3) 400 steps raised the concept score but drew no cross
    # (rate 0.00 / 0.125); 6e-3 passes the learning benchmark's SDXL thresholds (benchmarks/RESULTS.md)
    demo=ToyDemo(steps=400, lr=6e-3, rank=8, sample_steps=20, cfg_scale=4.0),
    # the same scaled-linear schedule as SDXL leaves ~7 % of the signal at t=999: without a noise offset the
    # per-channel latent mean (the background colour) leaks through and the sampler's start picks the background
    pretrain={"noise_offset": 0.15},
    # issue 23's best measured setting (benchmarks/RESULTS.md, "Issue 23, fifth session"): SDXL's, min-SNR 5 at lr 6e-3
    # for 800 steps: concept rate 0.75 / 0.67 / 0.58 over training seeds 42 / 7 / 1234 (mean 0.67; the demo's 400
    # steps: 0.33 / 0.42 / 0.21), leak 0 / 0.08 / 0, trigger-free shapes kept 0.63 / 0.67 / 0.88, pixel drift
    # 0.16-0.19: above the demo on every seed (mean 0.67 against 0.32), below the 0.8 bar, and it moves trigger-free
    # images more than the demo does (shapes kept 0.83 / 0.83 / 0.75, pixel drift 0.12-0.15); seeds 100 / 2024 (sixth
    # session): 0.67 / 0.67, leak 0, kept 0.67 / 0.75, pixel 0.19 / 0.18 (mean of five 0.67); no neighbour measured
    # (lr 3e-3, 1,200 steps, prior_loss_weight 2, other concept sets) beat it
    quality=("optimizer.lr=6e-3", "training.min_snr_gamma=5", "training.max_steps=800"),
)
