"""tinydit's base-model file: one ``.safetensors`` holding the transformer (``transformer.``), the VAE (``vae.``) and
the text encoder (``text_encoder.``), with each component's config as JSON in the file's metadata, so a single file
loads with nothing beside it. Also the tiny configs the tests build, and the LoRA key universe for `lorakit inspect`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from lorakit.errors import ModelLoadError
from lorakit.safetensors_header import read_safetensors_header

PARTS = ("transformer", "vae", "text_encoder")
META_KEY = "tinydit.config.{}"

TRANSFORMER = {"num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 4,
               "num_layers": 2, "cross_attention_dim": 16, "sample_size": 8, "patch_size": 2,
               "caption_channels": 32, "norm_type": "ada_norm_single", "num_embeds_ada_norm": 1000,
               "use_additional_conditions": False}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 8, 8, 8],
       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
       "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64, "scaling_factor": 0.5, "shift_factor": 0.1}
TEXT_ENCODER = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, "max_position_embeddings": 77, "projection_dim": 32,
                "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
TINY = {"transformer": TRANSFORMER, "vae": VAE, "text_encoder": TEXT_ENCODER}


def build(configs: dict[str, dict[str, Any]]) -> dict[str, torch.nn.Module]:
    """The three components from their configs (random weights; on the current default device)."""
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return {"transformer": PixArtTransformer2DModel(**configs["transformer"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))}


def write_tiny_checkpoint(folder: Path | str, seed: int = 0) -> dict[str, Path]:
    """Write a tiny random tinydit base model as one file; returns ``{"checkpoint": path}``."""
    from lorakit.lora.io import save_safetensors_atomic

    torch.manual_seed(seed)
    models = build(TINY)
    tensors = {f"{part}.{k}": v.detach().float().contiguous() for part, m in models.items()
               for k, v in m.state_dict().items()}
    meta = {META_KEY.format(part): json.dumps(TINY[part], sort_keys=True) for part in PARTS}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tinydit.safetensors"
    save_safetensors_atomic(path, tensors, meta)
    return {"checkpoint": path}


def read_checkpoint(path: Path | str) -> tuple[dict[str, torch.nn.Module], dict[str, dict[str, Any]]]:
    """The frozen components and their configs from a tinydit file; ModelLoadError naming the file otherwise."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        raise ModelLoadError(f"model.checkpoint: {path} is not a .safetensors file; tinydit loads one file written "
                             "by write_tiny_checkpoint")
    _, meta = read_safetensors_header(path)
    missing = [p for p in PARTS if META_KEY.format(p) not in meta]
    if missing:
        raise ModelLoadError(f"model.checkpoint: {path} is not a tinydit file (no {META_KEY.format(missing[0])} "
                             "in its metadata)")
    configs = {p: json.loads(meta[META_KEY.format(p)]) for p in PARTS}
    models = build(configs)
    tensors = load_file(str(path))
    for part, module in models.items():
        prefix = part + "."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        result = module.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            bad = (result.missing_keys or result.unexpected_keys)[0]
            raise ModelLoadError(f"model.checkpoint: {path}: {part} weights do not match its config (e.g. {bad})")
        module.requires_grad_(False).eval()
    return models, configs


@lru_cache(maxsize=1)
def lora_key_universe() -> frozenset[str]:
    """Every LoRA module name (kohya and diffusers layouts) a tinydit base accepts, built on the meta device."""
    from .adapter import export_names, lora_targets

    with torch.device("meta"):
        models = build(TINY)
    targets = lora_targets(models["transformer"], models["text_encoder"], rank=1, text_encoder=True)
    return frozenset(name for fmt in ("kohya", "diffusers") for name in export_names(targets, fmt))
