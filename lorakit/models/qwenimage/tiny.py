"""Tiny Qwen-Image components of the real classes, for tests and the toy world, and writers of their files in the
real layouts: ComfyUI's ``diffusion_models/`` transformer (diffusers names), ``text_encoders/`` Qwen2.5-VL (its
transformers-4 / ComfyUI names, vision tower and LM head included), ``vae/`` in Wan 2.1's layout, a tokenizer folder
and a diffusers config folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from . import configs

TINY_WIDTH = 16
TINY_TRANSFORMER = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=TINY_WIDTH, axes_dims_rope=[4, 6, 6])
TINY_TEXT = dict(hidden_size=TINY_WIDTH, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, rms_norm_eps=1e-6, max_position_embeddings=2048, use_cache=False,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]})
TINY_VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TINY_WIDTH,
                   patch_size=2, spatial_merge_size=1, temporal_patch_size=1, window_size=4, fullatt_block_indexes=[0])
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True])


def tiny_vl(tok: Any, text: dict[str, Any] = TINY_TEXT) -> Any:
    """A tiny ``Qwen2_5_VLForConditionalGeneration`` (what the pipeline runs) for ``tok``'s vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(text_config={**text, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                                        "bos_token_id": None, "eos_token_id": tok.eos_token_id},
                           vision_config=TINY_VISION)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def tiny_models(seed: int = 0, words: Sequence[str] = ()) -> dict[str, Any]:
    """{"transformer", "text_encoder" (Qwen2_5_VLForConditionalGeneration), "vae", "tokenizer"}: tiny, seeded, eval
    mode, the VAE's statistics Qwen-Image's own."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    from .text import tiny_tokenizer
    tok = tiny_tokenizer(words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = QwenImageTransformer2DModel(**TINY_TRANSFORMER)
        te = tiny_vl(tok)
        vae = AutoencoderKLQwenImage(**TINY_VAE, latents_mean=list(configs.LATENTS_MEAN),
                                     latents_std=list(configs.LATENTS_STD))
    return {"transformer": tr.eval(), "text_encoder": te, "vae": vae.eval(), "tokenizer": tok}


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def comfy_text_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers-5 names of Qwen2_5_VLForConditionalGeneration -> the stored layout of ComfyUI's
    qwen_2.5_vl_7b.safetensors and of transformers 4 (``model.layers.*``, ``visual.*``, ``lm_head.weight``)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        elif k.startswith("model.visual."):
            k = k[len("model."):]
        out[k] = v
    return out


def write_config(folder: Path, transformer: dict[str, Any], vae: dict[str, Any], text: dict[str, Any]) -> Path:
    """A diffusers config folder (transformer/, vae/, text_encoder/ config.json, model_index.json) for split files."""
    for sub, cfg in (("transformer", transformer), ("vae", vae), ("text_encoder", text)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / "config.json").write_text(json.dumps(dict(cfg), indent=2, default=sorted) + "\n",
                                                  encoding="utf-8")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}) + "\n",
                                             encoding="utf-8")
    return folder


def save_files(root: str | os.PathLike[str], models: dict[str, Any], dtype: torch.dtype = torch.bfloat16,
               prefix: str = "", name: str = "qwen_image_tiny_bf16.safetensors") -> dict[str, Path]:
    """Write ``models`` as a ComfyUI user has them: ``diffusion_models/<name>`` (optional ``prefix`` such as
    ``model.diffusion_model.``), ``text_encoders/qwen_2.5_vl_tiny.safetensors``, ``vae/qwen_image_vae.safetensors``
    (Wan 2.1 layout, float32), ``tokenizer/`` and ``config/``. Returns role -> path."""
    from lorakit.lora.io import save_safetensors_atomic

    from .convert import vae_to_original
    root = Path(root)
    out = {"checkpoint": root / "diffusion_models" / name,
           "text_encoder": root / "text_encoders" / "qwen_2.5_vl_tiny.safetensors",
           "vae": root / "vae" / "qwen_image_vae.safetensors", "tokenizer": root / "tokenizer",
           "config": root / "config"}
    tsd = {prefix + k: v for k, v in models["transformer"].state_dict().items()}
    save_safetensors_atomic(out["checkpoint"], _cast(tsd, dtype), {})
    te = comfy_text_layout(models["text_encoder"].state_dict())
    save_safetensors_atomic(out["text_encoder"], _cast(te, dtype), {})
    save_safetensors_atomic(out["vae"], _cast(vae_to_original(models["vae"].state_dict()), torch.float32), {})
    models["tokenizer"].save_pretrained(str(out["tokenizer"]))
    write_config(out["config"], {**configs.transformer_config(), **dict(models["transformer"].config)},
                 {**configs.vae_config(), **dict(models["vae"].config)},
                 models["text_encoder"].config.text_config.to_dict())
    return out


def write_tiny_checkpoint(directory: str | os.PathLike[str], seed: int = 0, dtype: torch.dtype = torch.bfloat16
                          ) -> dict[str, Path]:
    """Tiny Qwen-Image files as a ComfyUI user keeps them, plus a config folder; roles: checkpoint, text_encoder, vae,
    tokenizer, config (model.checkpoint / text_encoder / vae / tokenizer_dir / config_dir)."""
    return save_files(directory, tiny_models(seed), dtype)


def model_cfg(files: dict[str, Path], **extra: Any) -> Any:
    """A ModelCfg for files written by :func:`save_files`."""
    from lorakit.config.schema import ModelCfg
    return ModelCfg(family="qwenimage", checkpoint=str(files["checkpoint"]), text_encoder=str(files["text_encoder"]),
                    vae=str(files["vae"]), tokenizer_dir=str(files["tokenizer"]), config_dir=str(files["config"]),
                    **extra)
