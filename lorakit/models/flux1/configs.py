"""Shipped configurations of the FLUX.1 components, so single files load fully offline.

The numbers are the published architecture of FLUX.1 (dev / schnell), CLIP ViT-L/14's text tower,
T5 v1.1 XXL's encoder and the FLUX autoencoder. Widths that can be read from the weights are taken
from the weights at load time (see :mod:`.convert`); these dicts supply what weights cannot tell
(rotary axes, norm groups, activation functions, token ids).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from lorakit.fsutil import write_json
from lorakit.models.clip_t5 import t5_config
from lorakit.models.ldm_vae import ae_config

VARIANTS = ("dev", "schnell")


def transformer_config(variant: str = "dev") -> dict[str, Any]:
    """diffusers ``FluxTransformer2DModel`` config of the full-size model; only dev has guidance_in."""
    if variant not in VARIANTS:
        raise ValueError(f"model.variant: unknown FLUX.1 variant {variant!r}; use 'dev' or 'schnell'")
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": 64,
        "out_channels": None,
        "num_layers": 19,
        "num_single_layers": 38,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "pooled_projection_dim": 768,
        "guidance_embeds": variant == "dev",
        "axes_dims_rope": [16, 56, 56],
    }


def clip_l_config() -> dict[str, Any]:
    """transformers ``CLIPTextConfig`` of openai/clip-vit-large-patch14's text tower."""
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def scheduler_config() -> dict[str, Any]:
    """FlowMatchEulerDiscreteScheduler as FluxPipeline uses it (resolution-dependent shift)."""
    return {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    }


SUBFOLDERS = {"transformer": "config.json", "text_encoder": "config.json", "text_encoder_2": "config.json",
              "vae": "config.json", "scheduler": "scheduler_config.json"}


def write_config_folder(directory: str | os.PathLike[str], variant: str = "dev", *,
                        transformer: Optional[dict[str, Any]] = None, clip_l: Optional[dict[str, Any]] = None,
                        t5: Optional[dict[str, Any]] = None, ae: Optional[dict[str, Any]] = None) -> Path:
    """Write a diffusers-layout config folder (no weights): model_index.json + one config per component.

    The keyword dicts override the shipped full-size values key by key (tiny test models use this).
    """
    root = Path(directory)
    parts = {
        "transformer": {**transformer_config(variant), **(transformer or {})},
        "text_encoder": {**clip_l_config(), **(clip_l or {})},
        "text_encoder_2": {**t5_config(), **(t5 or {})},
        "vae": {**ae_config(), **(ae or {})},
        "scheduler": scheduler_config(),
    }
    for sub, cfg in parts.items():
        write_json(root / sub / SUBFOLDERS[sub], cfg, sort_keys=True)
    write_json(root / "model_index.json", {
        "_class_name": "FluxPipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, sort_keys=True)
    return root


def read_config(config_dir: Optional[str | os.PathLike[str]], sub: str) -> Optional[dict[str, Any]]:
    """The JSON config of one component from a user config folder, or None when absent (the one reader,
    :func:`lorakit.models.common.read_config`: a config_dir that is no config folder is one line)."""
    from lorakit.models.common import read_config as read
    return read(config_dir, sub, SUBFOLDERS[sub])
