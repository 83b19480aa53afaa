"""The architecture configs of Stable Diffusion 1.5 as Python data, and a writer for diffusers config folders.

Single-file loading needs a diffusers-style folder of configs (no weights), or diffusers would go to the Hub to guess
one; lorakit ships the configs as dicts and writes the folder once into its cache (``shipped_config_dir()``), as the
SDXL family does. The numbers are those of ``runwayml/stable-diffusion-v1-5``'s folder (UNet, VAE, CLIP ViT-L/14).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

from lorakit.fsutil import write_folder_once, write_json
from lorakit.models.clip_t5 import CLIP_L
from lorakit.models.tokenizers import CLIP_EOS, write_clip_tokenizer_files

CONFIG_VERSION = "sd15-v1"  # bump when the dicts below change: the cache folder name follows it

UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": False,
}

VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# CLIP ViT-L/14 text tower as SD 1.5's folder ships it (eos_token_id 2: transformers then pools at the argmax id, the
# first <|endoftext|>).
TEXT_ENCODER: dict[str, Any] = {**CLIP_L, "torch_dtype": "float32"}  # the same tower as SDXL's TE1

# SD 1.5 ships a PNDM scheduler with these betas; lorakit samples with Euler / DPM++ built from the same numbers.
SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_config_folder(folder: Path, *, unet: Optional[dict] = None, vae: Optional[dict] = None,
                        text_encoder: Optional[dict] = None, scheduler: Optional[dict] = None) -> Path:
    """Write a weights-free diffusers SD 1.5 folder (configs + the CLIP tokenizer); defaults are full size."""
    folder = Path(folder)
    parts = {"unet": unet or UNET, "vae": vae or VAE, "text_encoder": text_encoder or TEXT_ENCODER}
    for sub, cfg in parts.items():
        write_json(folder / sub / "config.json", copy.deepcopy(cfg), sort_keys=True)
    write_json(folder / "scheduler" / "scheduler_config.json", copy.deepcopy(scheduler or SCHEDULER), sort_keys=True)
    write_json(folder / "model_index.json", copy.deepcopy(MODEL_INDEX), sort_keys=True)
    write_clip_tokenizer_files(folder / "tokenizer", pad_token=CLIP_EOS)
    return folder


def shipped_config_dir() -> Path:
    """The full-size SD 1.5 config folder, written once into lorakit's cache (temp dir + rename)."""
    from lorakit.models.common import cache_root  # the one cache-location rule

    target = cache_root() / "configs" / CONFIG_VERSION
    write_folder_once(target, write_config_folder, "model_index.json")
    return target
