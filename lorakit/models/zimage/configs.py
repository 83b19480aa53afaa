"""Shipped configurations of the Z-Image components, so single files load fully offline.

Z-Image (Tongyi-MAI, 6 B) is one single-stream DiT (diffusers' ``ZImageTransformer2DModel``): 2 noise-refiner blocks
(image tokens, modulated), 2 context-refiner blocks (caption tokens, unmodulated), then 30 joint blocks, width 3840,
30 heads of 128, 3-axis rotary embedding (32, 48, 48). The caption features are Qwen3-4B's second-to-last hidden
state (width 2560); the autoencoder is FLUX.1's 16-channel AE. Z-Image Turbo (step-distilled: 8-9 steps, no CFG) and
the base model (about 50 steps with CFG) have the same tensors, names and shapes. Widths and depths are read from the
weights at load time (:mod:`.convert`); these dicts supply what the weights cannot tell.
"""

from __future__ import annotations

from typing import Any

from lorakit.models.common import read_config  # noqa: F401 (the one component-config reader: configs.read_config)

MAX_TEXT_TOKENS = 512               # the pipeline's max_sequence_length
VARIANTS = ("turbo", "base")
# (steps, CFG scale) of the previews per variant: Turbo as its model card (9 steps = 8 forward passes, guidance 0);
# base with CFG. lorakit's cfg_scale is the usual neg + s·(pos − neg); diffusers' ZImagePipeline writes
# pos + g·(pos − neg), so its guidance_scale g is lorakit's s − 1
SAMPLE_DEFAULTS = {"turbo": (9, 1.0), "base": (50, 5.0)}
SHIFT = 3.0                          # the scheduler's static time shift (use_dynamic_shifting = false)


def transformer_config() -> dict[str, Any]:
    """diffusers ``ZImageTransformer2DModel`` config of the full-size model."""
    return {"_class_name": "ZImageTransformer2DModel", "all_patch_size": [2], "all_f_patch_size": [1],
            "in_channels": 16, "dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30,
            "norm_eps": 1e-5, "qk_norm": True, "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0,
            "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512]}


def qwen3_config() -> dict[str, Any]:
    """transformers ``Qwen3Config`` of Qwen3-4B (Z-Image's text encoder)."""
    return {"architectures": ["Qwen3Model"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2560,
            "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "attention_bias": False, "tie_word_embeddings": True, "bos_token_id": 151643,
            "eos_token_id": 151645, "use_cache": False}


def scheduler_config() -> dict[str, Any]:
    """FlowMatchEulerDiscreteScheduler as ZImagePipeline ships it (static shift 3, no dynamic shifting)."""
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": SHIFT,
            "use_dynamic_shifting": False}
