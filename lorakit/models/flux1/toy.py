"""FLUX.1-dev's toy: a FluxTransformer2DModel of inner width 64 (2 heads of 32, 2 double + 2 single blocks, guidance
embedding), CLIP-L and T5 encoders of width 16 and a 16-channel AutoencoderKL without quant convs, saved as the four
ComfyUI files in BFL's layouts plus a diffusers config folder. See :class:`ToyRecipe`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from lorakit.models.base import Batch, NoisedInput, ToyDemo, ToyRecipe, init_kwargs

# Text length the toy was trained with (T5 padding); real dev uses 512. Every toy run sets it (TOY.training).
T5_MAX_LENGTH = 64
GUIDANCE_RANGE = (1.0, 5.0)          # the guidance input during pretraining, uniform per sample (dev layout)


def configs() -> dict[str, dict[str, Any]]:
    """Tiny FLUX.1-dev: inner dim 64 (2 heads of 32), 2 double + 2 single blocks, guidance embedding."""
    transformer = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64,
                   "out_channels": None, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 32,
                   "num_attention_heads": 2, "joint_attention_dim": 16, "pooled_projection_dim": 16,
                   "guidance_embeds": True, "axes_dims_rope": [8, 12, 12]}
    clip_l = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 49408,
              "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "max_position_embeddings": 77, "projection_dim": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
              "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0, "bos_token_id": 49406,
              "eos_token_id": 49407, "pad_token_id": 49407}
    t5 = {"architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": 32128, "d_model": 16,
          "d_kv": 8, "d_ff": 32, "num_layers": 2, "num_heads": 2, "relative_attention_num_buckets": 32,
          "relative_attention_max_distance": 128, "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6,
          "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu", "is_gated_act": True,
          "dense_act_fn": "gelu_new", "tie_word_embeddings": False, "is_encoder_decoder": False,
          "use_cache": False, "pad_token_id": 0, "eos_token_id": 1}
    ae = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "block_out_channels": [8, 16, 32, 32], "layers_per_block": 1, "act_fn": "silu",
          "latent_channels": 16, "norm_num_groups": 8, "sample_size": 64,
          "scaling_factor": 1.0, "force_upcast": True, "mid_block_add_attention": True,
          "shift_factor": 0.0, "use_quant_conv": False, "use_post_quant_conv": False}
    return {"transformer": transformer, "clip_l": clip_l, "t5": t5, "ae": ae}


def make(seed: int) -> dict[str, torch.nn.Module]:
    """Fresh seeded modules of the real classes: transformer, clip_l, t5, ae."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    cfg = configs()
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(**init_kwargs(cfg["clip_l"])))
    t5 = T5EncoderModel(T5Config(**init_kwargs(cfg["t5"])))
    ae = AutoencoderKL(**init_kwargs(cfg["ae"]))
    transformer = FluxTransformer2DModel(**init_kwargs(cfg["transformer"]))
    return {"transformer": transformer, "clip_l": clip.eval(), "t5": t5.eval(), "ae": ae}


def adapter(modules: dict[str, torch.nn.Module], cfg: Any) -> Any:
    """The FLUX.1 Adapter bound to in-memory toy modules (dev), with the tokenizers a single-file load gives."""
    from lorakit.models.flux1.adapter import Adapter
    from lorakit.models.flux1.load import default_tokenizers

    a = Adapter(cfg)
    clip_tok, t5_tok = default_tokenizers()
    a.attach(modules["transformer"], modules["clip_l"], modules["t5"], modules["ae"], clip_tok, t5_tok, "dev")
    return a


def pretrain_predict(adapter: Any, noised: NoisedInput, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    """The dev transformer with a random guidance input per sample, so that sampling may use any value in range."""
    lo, hi = GUIDANCE_RANGE
    guidance = lo + (hi - lo) * torch.rand(noised.model_input.shape[0], generator=generator)
    return adapter.predict(noised, batch, guidance=guidance)


def save(modules: dict[str, torch.nn.Module], facts: dict[str, Any], out: Path) -> dict[str, Path]:
    """BFL / ComfyUI files in bf16 (flux1-dev, clip_l, t5xxl_fp16, ae) + the diffusers config folder."""
    from lorakit.models.flux1.configs import write_config_folder
    from lorakit.models.flux1.convert import save_bfl_files

    cfg = copy.deepcopy(configs())
    cfg["ae"].update(scaling_factor=facts["scaling_factor"], shift_factor=facts["shift_factor"])
    files = save_bfl_files(out, transformer=modules["transformer"], clip_l=modules["clip_l"], t5=modules["t5"],
                           ae=modules["ae"], dtype=torch.bfloat16)
    write_config_folder(Path(out) / TOY.files["config"], "dev", transformer=cfg["transformer"], clip_l=cfg["clip_l"],
                        t5=cfg["t5"], ae=cfg["ae"])
    return {**{k: Path(v) for k, v in files.items()}, "config": Path(out) / TOY.files["config"]}


TOY = ToyRecipe(
    files={"checkpoint": "flux1-dev.safetensors", "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors",
           "ae": "ae.safetensors", "config": "config"},
    configs=configs, make=make, vae="ae", adapter=adapter, save=save,
    # guidance-distilled sampling (dev): the guidance input, no true CFG
    demo=ToyDemo(steps=400, lr=1e-3, rank=8, sample_steps=20, cfg_scale=1.0),
    training={"t5_max_length": T5_MAX_LENGTH},
    pretrain={"timestep_sampling": "flux_shift"},
    pretrain_predict=pretrain_predict,
)
