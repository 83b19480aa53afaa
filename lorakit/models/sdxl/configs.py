"""The architecture configs of SDXL base 1.0 as Python data, and a writer for diffusers config folders.

Single-file loading needs a diffusers-style folder of configs (no weights) or diffusers goes to the Hub
to guess one. lorakit ships the configs as dicts here and writes the folder at run time into a cache
(``shipped_config_dir()``), so nothing is ever fetched. Tiny test models use the same writer.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Optional

from lorakit.fsutil import write_folder_once, write_json
from lorakit.models.common import cache_root
from lorakit.models.clip_t5 import CLIP_G as TE2, CLIP_L as TE1  # noqa: F401  (SDXL's two text towers)
from lorakit.models.tokenizers import CLIP_EOS, write_clip_tokenizer_files

CONFIG_VERSION = "sdxl-base-1.0-v1"  # bump when the dicts below change: the cache folder name follows it

UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_config_folder(folder: Path, *, unet: Optional[dict] = None, vae: Optional[dict] = None,
                        te1: Optional[dict] = None, te2: Optional[dict] = None,
                        scheduler: Optional[dict] = None, force_zeros_for_empty_prompt: bool = True) -> Path:
    """Write a weights-free diffusers SDXL folder (configs + both tokenizers); defaults are full size.

    Tokenizer 2 pads with ``"!"`` as SDXL's does. ``force_zeros_for_empty_prompt`` (true for SDXL base) says
    whether an empty negative prompt is a zero embedding or the encoding of "" (what a model trained with
    caption dropout to "" expects). Returns ``folder``.
    """
    folder = Path(folder)
    parts = {"unet": unet or UNET, "vae": vae or VAE, "text_encoder": te1 or TE1, "text_encoder_2": te2 or TE2}
    for sub, cfg in parts.items():
        write_json(folder / sub / "config.json", copy.deepcopy(cfg), sort_keys=True)
    write_json(folder / "scheduler" / "scheduler_config.json", copy.deepcopy(scheduler or SCHEDULER), sort_keys=True)
    write_json(folder / "model_index.json", {**copy.deepcopy(MODEL_INDEX),
                                             "force_zeros_for_empty_prompt": force_zeros_for_empty_prompt},
               sort_keys=True)
    write_clip_tokenizer_files(folder / "tokenizer", pad_token=CLIP_EOS)
    write_clip_tokenizer_files(folder / "tokenizer_2", pad_token="!")
    return folder


def shipped_config_dir() -> Path:
    """The full-size SDXL base config folder, written once into the cache (atomically: temp dir + rename)."""
    target = cache_root() / "configs" / CONFIG_VERSION
    if write_folder_once(target, write_config_folder, "model_index.json"):
        # said once: the one time lorakit writes outside the run folder without being asked
        print(f"note: model.config_dir is not set: wrote the SDXL config folder (configs only, no weights) to "
              f"{target}; $XDG_CACHE_HOME or $LORAKIT_CACHE move it, model.config_dir replaces it",
              file=sys.stderr)
    return target
