"""Z-Image's toy: a ZImageTransformer2DModel of width 64 (2 heads of 32, 1 + 1 refiner and 2 main blocks), a Qwen3
text encoder of width 16 (a tokenizer of the real class with one token per toy-world word) and FLUX.1's 16-channel
AutoencoderKL, pretrained with the shared recipe (lorakit/toy/build.py) through this family's own Adapter: Z-Image's
noising, t = 1 − σ and its masked caption features. Saved as ComfyUI keeps the files (original-layout transformer,
HF-layout Qwen3, BFL ``ae.safetensors``) plus ``tokenizer/`` and a config folder. Sampled as the base model (CFG).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorakit.models.base import ToyDemo, ToyRecipe, init_kwargs

TEXT_LENGTH = 32          # toy prompt tokens, chat wrapper included (the pipeline uses 512)
FILES = {"checkpoint": "z_image_toy.safetensors", "text_encoder": "qwen_3_toy.safetensors", "ae": "ae.safetensors",
         "tokenizer_dir": "tokenizer", "config": "config"}


def configs() -> dict[str, dict[str, Any]]:
    transformer = {"_class_name": "ZImageTransformer2DModel", "all_patch_size": [2], "all_f_patch_size": [1],
                   "in_channels": 16, "dim": 64, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2,
                   "norm_eps": 1e-5, "qk_norm": True, "cap_feat_dim": 16, "rope_theta": 256.0, "t_scale": 1000.0,
                   "axes_dims": [8, 12, 12], "axes_lens": [1536, 512, 512]}
    qwen3 = {"architectures": ["Qwen3Model"], "model_type": "qwen3", "hidden_size": 16, "intermediate_size": 32,
             "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
             "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
             "tie_word_embeddings": True, "use_cache": False}
    ae = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "block_out_channels": [8, 16, 32, 32], "layers_per_block": 1, "act_fn": "silu", "latent_channels": 16,
          "norm_num_groups": 8, "sample_size": 64, "scaling_factor": 1.0, "force_upcast": True,
          "mid_block_add_attention": True, "shift_factor": 0.0, "use_quant_conv": False,
          "use_post_quant_conv": False}
    return {"transformer": transformer, "text_encoder": qwen3, "ae": ae}


def world_words() -> list[str]:
    """Every word of the base world's captions (one token each in the toy tokenizer), sorted."""
    from lorakit.toy import world  # the toy world's vocabulary: asked only when the tiny tokenizer is built

    scenes = world.sample_scenes(2000, 7)
    return sorted({w.strip(",.") for s in scenes for w in world.caption(s).split()})


def make(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from lorakit.models.tokenizers import tiny_qwen_tokenizer
    tok = tiny_qwen_tokenizer(world_words(), bare=("user", "assistant"))
    cfg = configs()
    torch.manual_seed(seed)
    te = Qwen3Model(Qwen3Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=None,
                                eos_token_id=tok.eos_token_id, **init_kwargs(cfg["text_encoder"]))).eval()
    ae = AutoencoderKL(**init_kwargs(cfg["ae"]))
    tr = ZImageTransformer2DModel(**init_kwargs(cfg["transformer"]))
    return {"transformer": tr, "text_encoder": te, "ae": ae, "tokenizer": tok}


def adapter(modules: dict, cfg: Any) -> Any:
    """The Z-Image Adapter bound to the in-memory toy modules (the build trains ``modules["transformer"]`` itself)."""
    from .adapter import Adapter
    from .convert import Shape
    from .load import ZImageComponents

    tr = modules["transformer"]
    c = tr.config
    shape = Shape(dim=c.dim, n_layers=c.n_layers, n_refiner=c.n_refiner_layers, head_dim=c.dim // c.n_heads,
                  cap_feat_dim=c.cap_feat_dim, in_channels=c.in_channels)
    out = Adapter(cfg)
    out.comps = ZImageComponents(tr, shape, "base", "toy", {}, {},
                                 {"text_encoder": modules["text_encoder"], "ae": modules["ae"],
                                  "tokenizer": modules["tokenizer"]})
    return out


def save(modules: dict, facts: dict, out: Path) -> dict[str, Path]:
    """ComfyUI files (bf16 transformer and Qwen3, fp32 AE) + tokenizer + config folder (model_index says base)."""
    from lorakit.lora.io import save_safetensors_atomic
    from lorakit.models.ldm_vae import ae_diffusers_to_bfl

    from .convert import diffusers_to_original
    from .tiny import _cast, write_config
    out.mkdir(parents=True, exist_ok=True)
    paths = {role: out / name for role, name in FILES.items()}
    meta = {"lorakit.toy": "zimage"}
    save_safetensors_atomic(paths["checkpoint"], _cast(diffusers_to_original(modules["transformer"].state_dict()),
                                                       torch.bfloat16), meta)
    te = {"model." + k: v for k, v in modules["text_encoder"].state_dict().items()}
    save_safetensors_atomic(paths["text_encoder"], _cast(te, torch.bfloat16), meta)
    save_safetensors_atomic(paths["ae"], _cast(ae_diffusers_to_bfl(modules["ae"].state_dict()), torch.float32), meta)
    modules["tokenizer"].save_pretrained(str(paths["tokenizer_dir"]))
    ae_cfg = {**configs()["ae"], "scaling_factor": facts.get("scaling_factor", 0.3611),
              "shift_factor": facts.get("shift_factor", 0.1159)}
    write_config(paths["config"], configs()["transformer"], ae_cfg)
    return paths


TOY = ToyRecipe(files=FILES, configs=configs, make=make, vae="ae", adapter=adapter, save=save,
                # sampled as a base model with true CFG (10 % of captions dropped in pretraining)
                # lr 6e-3: at 1e-3 the 400 steps raised the concept score but drew no cross (rate 0.00); 6e-3 meets
                # the learning benchmark's FLUX.1 thresholds (benchmarks/RESULTS.md)
                demo=ToyDemo(steps=400, lr=6e-3, rank=8, sample_steps=20, cfg_scale=4.0),
                training={"text_max_length": TEXT_LENGTH, "timestep_sampling": "flux_shift"})
