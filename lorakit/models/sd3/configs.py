"""Shipped configurations of the SD3 / SD3.5 components, so single files load fully offline.

SD3.5 (Stability AI) is an MMDiT: ``joint_blocks`` of two streams (image tokens ``x_block``, caption tokens
``context_block``) with joint attention; the last block's caption stream only feeds the attention (``pre_only``).
Sizes (diffusers' ``SD3Transformer2DModel``, heads of 64, width = 64 · depth):

* **large** (8.1 B) and **large-turbo** (the same tensors, step-distilled): 38 blocks, width 2432, RMS q/k norm, a
  192² position table;
* **medium** (2.5 B, "MMDiT-X"): 24 blocks, width 1536, RMS q/k norm, a second self-attention (``attn2``) in the
  image stream of blocks 0-12, a 384² position table;
* SD3 medium (2 B, 2024): 24 blocks, width 1536, no q/k norm, no ``attn2`` (loads and trains as well).

Text: CLIP-L and OpenCLIP bigG (``CLIPTextModelWithProjection``, penultimate hidden states and pooled projections)
and T5-XXL (optional). VAE: a 16-channel AutoencoderKL (FLUX.1's architecture, SD3's own weights), latents
(z − 0.0609) · 1.5305. Scheduler: FlowMatchEulerDiscreteScheduler with a static shift of 3.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from lorakit.models.common import read_config  # noqa: F401 (the one component-config reader: configs.read_config)

VAE_SCALE, VAE_SHIFT = 1.5305, 0.0609
SHIFT = 3.0                                # the scheduler's static shift (scheduler_config.json of all SD3.5 repos)
CLIP_TOKENS = 77
T5_TOKENS = 256                            # StableDiffusion3Pipeline's max_sequence_length default
VARIANTS = ("large", "large-turbo", "medium", "sd3-medium")
# (steps, CFG) of previews per variant: the model cards' (large 28 / 3.5, medium 40 / 4.5, turbo 4 / no CFG)
SAMPLE_DEFAULTS = {"large": (28, 3.5), "large-turbo": (4, 1.0), "medium": (40, 4.5), "sd3-medium": (28, 7.0)}
MEDIUM_DUAL_LAYERS = tuple(range(13))


def transformer_config(variant: str = "large") -> dict[str, Any]:
    """diffusers ``SD3Transformer2DModel`` config of a full-size model (``transformer/config.json``)."""
    base = {"_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 16,
            "out_channels": 16, "attention_head_dim": 64, "joint_attention_dim": 4096, "pooled_projection_dim": 2048}
    if variant in ("large", "large-turbo"):
        return {**base, "num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432,
                "pos_embed_max_size": 192, "qk_norm": "rms_norm", "dual_attention_layers": []}
    if variant == "medium":
        return {**base, "num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536,
                "pos_embed_max_size": 384, "qk_norm": "rms_norm", "dual_attention_layers": list(MEDIUM_DUAL_LAYERS)}
    if variant == "sd3-medium":
        return {**base, "num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536,
                "pos_embed_max_size": 192, "qk_norm": None, "dual_attention_layers": []}
    raise ValueError(f"unknown SD3 variant {variant!r}; one of {', '.join(VARIANTS)}")


def clip_l_config() -> dict[str, Any]:
    """transformers ``CLIPTextConfig`` of SD3's CLIP-L (``text_encoder/config.json``: with projection)."""
    from lorakit.models.clip_t5 import CLIP_L
    return {**CLIP_L, "architectures": ["CLIPTextModelWithProjection"]}


def clip_g_config() -> dict[str, Any]:
    """transformers ``CLIPTextConfig`` of SD3's OpenCLIP bigG (``text_encoder_2``), as SDXL's second encoder."""
    from lorakit.models.clip_t5 import CLIP_G
    return dict(CLIP_G)


def t5_config() -> dict[str, Any]:
    from lorakit.models.clip_t5 import t5_config as flux_t5
    return flux_t5()


def vae_config() -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` of SD3 (FLUX.1's layout, SD3's latent constants)."""
    from lorakit.models.ldm_vae import ae_config
    return {**ae_config(), "scaling_factor": VAE_SCALE, "shift_factor": VAE_SHIFT}


def scheduler_config() -> dict[str, Any]:
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": SHIFT}


def write_config_folder(folder: str | os.PathLike[str], transformer: dict[str, Any],
                        vae: Optional[dict[str, Any]] = None) -> Path:
    """A diffusers config folder (``transformer/config.json``, ``vae/config.json``, ``model_index.json``)."""
    root = Path(folder)
    (root / "transformer").mkdir(parents=True, exist_ok=True)
    (root / "transformer" / "config.json").write_text(json.dumps(transformer, indent=2, default=list) + "\n",
                                                      encoding="utf-8")
    if vae is not None:
        (root / "vae").mkdir(parents=True, exist_ok=True)
        (root / "vae" / "config.json").write_text(json.dumps(dict(vae), indent=2, default=list) + "\n",
                                                  encoding="utf-8")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}) + "\n",
                                           encoding="utf-8")
    return root
