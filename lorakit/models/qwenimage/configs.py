"""Shipped configurations of the Qwen-Image components, so split files load fully offline.

Qwen-Image (Qwen, 20 B) is one MMDiT (diffusers' ``QwenImageTransformer2DModel``): 60 two-stream blocks of width 3072
(24 heads of 128), 3-axis rotary embedding (16, 56, 56), image tokens of 2×2-packed 16-channel latents (64 features).
Its prompt features are the last hidden state of Qwen2.5-VL-7B's language model (width 3584) under a fixed chat
template; its autoencoder is ``AutoencoderKLQwenImage`` (Wan 2.1's causal 3-D VAE, 8× down, 16 channels, normalised
per channel with ``latents_mean`` / ``latents_std``). Widths and depths are read from the weights at load time
(:mod:`.convert`); these dicts supply what the weights cannot tell.
"""

from __future__ import annotations

from typing import Any

from lorakit.models.common import read_config  # noqa: F401 (the one component-config reader: configs.read_config)

# QwenImagePipeline's prompt template and the template tokens it drops (prompt_template_encode_start_idx): the system
# turn and "<|im_start|>user\n" are 34 tokens in Qwen2.5-VL's vocabulary
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
DROP_IDX = 34
TOKENIZER_MAX_LENGTH = 1024         # the pipeline's tokenizer_max_length (tokens after the dropped template part)
MAX_TEXT_TOKENS = 512               # the pipeline's default max_sequence_length (prompt features kept per caption)
SAMPLE_STEPS = 50                   # the pipeline's num_inference_steps
CFG_SCALE = 4.0                     # the pipeline's true_cfg_scale default (with a negative prompt)

# AutoencoderKLQwenImage's per-channel latent statistics (vae/config.json of Qwen/Qwen-Image)
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
                -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
               1.1253, 2.8251, 1.9160)


def transformer_config() -> dict[str, Any]:
    """diffusers ``QwenImageTransformer2DModel`` config of the full-size model (transformer/config.json)."""
    return {"_class_name": "QwenImageTransformer2DModel", "patch_size": 2, "in_channels": 64, "out_channels": 16,
            "num_layers": 60, "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
            "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]}


def text_config() -> dict[str, Any]:
    """transformers ``Qwen2_5_VLTextConfig`` of Qwen2.5-VL-7B's language model (the part Qwen-Image reads)."""
    return {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "use_cache": False, "tie_word_embeddings": False, "bos_token_id": 151643,
            "eos_token_id": 151645,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}


def vae_config() -> dict[str, Any]:
    """diffusers ``AutoencoderKLQwenImage`` config (vae/config.json of Qwen/Qwen-Image)."""
    return {"_class_name": "AutoencoderKLQwenImage", "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0,
            "latents_mean": list(LATENTS_MEAN), "latents_std": list(LATENTS_STD)}


def scheduler_config() -> dict[str, Any]:
    """FlowMatchEulerDiscreteScheduler as Qwen/Qwen-Image ships it: dynamic (exponential) shifting, μ on the line
    through (256 tokens, 0.5) and (8192 tokens, 0.9), sigmas stretched to end at 0.02."""
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
            "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 0.9, "base_image_seq_len": 256,
            "max_image_seq_len": 8192, "shift_terminal": 0.02, "time_shift_type": "exponential",
            "invert_sigmas": False, "stochastic_sampling": False, "use_karras_sigmas": False,
            "use_exponential_sigmas": False, "use_beta_sigmas": False}
