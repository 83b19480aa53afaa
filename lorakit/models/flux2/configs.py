"""Shipped configurations of the FLUX.2 components, so single files load fully offline.

Three transformer sizes share one architecture (diffusers' ``Flux2Transformer2DModel``): Klein 4B, Klein 9B and
dev (32 B). The numbers are the published ones (BFL's model cards, diffusers' configs, musubi-tuner's
``Klein4BParams`` / ``Klein9BParams`` / ``Flux2Params``). Klein's base (un-distilled) and distilled releases have
the same tensors, names and shapes; only the sampling differs (base: ~50 steps with CFG; distilled: 4 steps, no
CFG). Widths and depths are read from the weights at load time (:mod:`.convert`); these dicts supply what the
weights cannot tell (rotary axes, theta, norm eps, token ids).
"""

from __future__ import annotations

from typing import Any

from lorakit.models.common import read_config  # noqa: F401 (the one component-config reader: configs.read_config)

SIZES = ("klein-4b", "klein-9b", "dev")
VARIANTS = ("klein-4b", "klein-base-4b", "klein-9b", "klein-base-9b", "dev")

# hidden width of the transformer -> size (the only tensor shape that tells the three apart on its own; depths and
# the text width agree with it, see detect_size)
HIDDEN_TO_SIZE = {3072: "klein-4b", 4096: "klein-9b", 6144: "dev"}
# (double blocks, single blocks, text width = 3 x the text encoder's hidden size, guidance embedder)
SIZE_FACTS = {"klein-4b": (5, 20, 7680, False), "klein-9b": (8, 24, 12288, False), "dev": (8, 48, 15360, True)}

# hidden states stacked into the prompt embedding (diffusers' Flux2KleinPipeline / Flux2Pipeline defaults)
QWEN3_LAYERS = (9, 18, 27)
MISTRAL_LAYERS = (10, 20, 30)
MAX_TEXT_TOKENS = 512

# the sampling defaults of BFL / musubi-tuner per variant: (steps, CFG scale for base or guidance value for dev)
SAMPLE_DEFAULTS = {"klein-4b": (4, 1.0), "klein-9b": (4, 1.0), "klein-base-4b": (50, 4.0),
                   "klein-base-9b": (50, 4.0), "dev": (50, 4.0)}


def transformer_config(size: str = "klein-4b") -> dict[str, Any]:
    """diffusers ``Flux2Transformer2DModel`` config of a full-size model."""
    if size not in SIZES:
        raise ValueError(f"unknown FLUX.2 size {size!r}; use one of {', '.join(SIZES)}")
    hidden = {v: k for k, v in HIDDEN_TO_SIZE.items()}[size]
    nd, ns, ctx, guidance = SIZE_FACTS[size]
    return {"_class_name": "Flux2Transformer2DModel", "patch_size": 1, "in_channels": 128, "out_channels": None,
            "num_layers": nd, "num_single_layers": ns, "attention_head_dim": 128, "num_attention_heads": hidden // 128,
            "joint_attention_dim": ctx, "timestep_guidance_channels": 256, "mlp_ratio": 3.0,
            "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": guidance}


def qwen3_config(size: str = "klein-4b") -> dict[str, Any]:
    """transformers ``Qwen3Config`` of Qwen3-4B (Klein 4B) or Qwen3-8B (Klein 9B)."""
    big = size == "klein-9b"
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
            "hidden_size": 4096 if big else 2560, "intermediate_size": 12288 if big else 9728,
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "hidden_act": "silu", "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "attention_bias": False, "tie_word_embeddings": not big, "bos_token_id": 151643,
            "eos_token_id": 151645, "use_cache": False}


def mistral_config() -> dict[str, Any]:
    """transformers ``MistralConfig`` of Mistral-Small-3.1-24B's language model (FLUX.2 dev's text encoder)."""
    return {"architectures": ["MistralModel"], "model_type": "mistral", "vocab_size": 131072, "hidden_size": 5120,
            "intermediate_size": 32768, "num_hidden_layers": 40, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5, "rope_theta": 1000000000.0, "sliding_window": None, "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "use_cache": False}


def ae_config() -> dict[str, Any]:
    """diffusers ``AutoencoderKLFlux2`` config of the FLUX.2 autoencoder (32 channels, 2x2 patches, batch norm)."""
    return {"_class_name": "AutoencoderKLFlux2", "in_channels": 3, "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
            "latent_channels": 32, "norm_num_groups": 32, "sample_size": 1024, "use_quant_conv": True,
            "use_post_quant_conv": True, "mid_block_add_attention": True, "batch_norm_eps": 1e-4,
            "batch_norm_momentum": 0.1, "patch_size": [2, 2]}


def scheduler_config() -> dict[str, Any]:
    """FlowMatchEulerDiscreteScheduler as the FLUX.2 pipelines use it (μ passed per call: compute_empirical_mu)."""
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
            "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
            "max_image_seq_len": 4096, "time_shift_type": "exponential"}
