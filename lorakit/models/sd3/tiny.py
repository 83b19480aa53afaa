"""Tiny SD3.5 components of the real classes, for tests and the toy world, and writers of their files in the real
layouts: the official single file (``model.diffusion_model.`` + ``first_stage_model.``, encoders optionally bundled
under ``text_encoders.*.transformer.``), ComfyUI's split files (``diffusion_models/``, ``text_encoders/clip_l``,
``clip_g``, ``t5xxl_fp16``, ``vae/``) and a diffusers config folder (component configs, no weights)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import configs
from .convert import ENCODER_PREFIXES, diffusers_to_original

TINY_CLIP_L = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                   projection_dim=16, hidden_act="quick_gelu", max_position_embeddings=77)
TINY_CLIP_G = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                   projection_dim=24, hidden_act="gelu", max_position_embeddings=77)
TINY_T5 = dict(d_model=64, d_kv=16, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
               feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
TINY_TRANSFORMER = dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=3,
                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                        caption_projection_dim=32, pooled_projection_dim=40, pos_embed_max_size=32,
                        qk_norm="rms_norm", dual_attention_layers=[0])


def tiny_models(seed: int = 0, **transformer: Any) -> dict[str, Any]:
    """{"transformer" (medium-like: a dual-attention block), "clip_l", "clip_g", "t5", "vae", "tokenizers"}: tiny,
    seeded, eval mode; the real tokenizers (CLIP-L, CLIP-G with "!" padding, T5) from lorakit's package data."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from lorakit.models.ldm_vae import TINY_AE
    from lorakit.models.tokenizers import clip_tokenizer, t5_tokenizer
    base_l, base_g = configs.clip_l_config(), configs.clip_g_config()
    clean = lambda c: {k: v for k, v in c.items() if k not in ("architectures", "torch_dtype")}  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = SD3Transformer2DModel(**{**TINY_TRANSFORMER, **transformer})
        cl = CLIPTextModelWithProjection(CLIPTextConfig(**{**clean(base_l), **TINY_CLIP_L}))
        cg = CLIPTextModelWithProjection(CLIPTextConfig(**{**clean(base_g), **TINY_CLIP_G}))
        t5 = T5EncoderModel(T5Config(**{**clean(configs.t5_config()), **TINY_T5}))
        vae = AutoencoderKL(**{**TINY_AE, "scaling_factor": configs.VAE_SCALE, "shift_factor": configs.VAE_SHIFT})
    toks = (clip_tokenizer(pad_token="<|endoftext|>"), clip_tokenizer(pad_token="!"), t5_tokenizer())
    return {"transformer": tr.eval(), "clip_l": cl.eval(), "clip_g": cg.eval(), "t5": t5.eval(), "vae": vae.eval(),
            "tokenizers": toks}


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def _clip_sd(model: Any) -> dict[str, torch.Tensor]:
    """HF layout as ComfyUI's clip_l / clip_g files hold it: ``text_model.*`` and ``text_projection.weight``."""
    sd = model.state_dict()
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in sd.items()
            if not k.endswith("position_ids")}


def _t5_sd(model: Any) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def write_config(folder: Path, models: dict[str, Any]) -> Path:
    """A diffusers config folder for ``models``: transformer/, vae/, text_encoder/ (CLIP-L), text_encoder_2/ (CLIP-G),
    text_encoder_3/ (T5), model_index.json."""
    configs.write_config_folder(folder, {"_class_name": "SD3Transformer2DModel", **dict(models["transformer"].config)},
                                models["vae"].config)
    for sub, key in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g"), ("text_encoder_3", "t5")):
        if models.get(key) is not None:
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / "config.json").write_text(models[key].config.to_json_string(), encoding="utf-8")
    return folder


def save_single_file(path: str | os.PathLike[str], models: dict[str, Any], dtype: torch.dtype = torch.bfloat16,
                     bundle: tuple[str, ...] = ("clip_l", "clip_g", "t5xxl")) -> Path:
    """The official layout: ``model.diffusion_model.`` (original names), ``first_stage_model.`` (LDM VAE) and the
    ``bundle`` encoders under ``text_encoders.<role>.transformer.``."""
    from lorakit.lora.io import save_safetensors_atomic
    from lorakit.models.ldm_vae import ae_diffusers_to_bfl
    sd = {"model.diffusion_model." + k: v for k, v in diffusers_to_original(models["transformer"].state_dict()).items()}
    sd.update({"first_stage_model." + k: v for k, v in ae_diffusers_to_bfl(models["vae"].state_dict()).items()})
    parts = {"clip_l": _clip_sd(models["clip_l"]), "clip_g": _clip_sd(models["clip_g"]), "t5xxl": _t5_sd(models["t5"])}
    for role in bundle:
        sd.update({ENCODER_PREFIXES[role] + k: v for k, v in parts[role].items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(path, _cast(sd, dtype), {})
    return path


def save_split_files(root: str | os.PathLike[str], models: dict[str, Any], dtype: torch.dtype = torch.bfloat16,
                     name: str = "sd3.5_medium_tiny.safetensors") -> dict[str, Path]:
    """ComfyUI's split files: ``diffusion_models/<name>`` (original names, no prefix), ``text_encoders/clip_l``,
    ``clip_g``, ``t5xxl_fp16.safetensors``, ``vae/sd35_vae.safetensors`` (diffusers layout) and ``config/``."""
    from lorakit.lora.io import save_safetensors_atomic
    root = Path(root)
    out = {"checkpoint": root / "diffusion_models" / name, "clip_l": root / "text_encoders" / "clip_l.safetensors",
           "clip_g": root / "text_encoders" / "clip_g.safetensors",
           "t5xxl": root / "text_encoders" / "t5xxl_fp16.safetensors", "vae": root / "vae" / "sd35_vae.safetensors",
           "config": root / "config"}
    save_safetensors_atomic(out["checkpoint"], _cast(diffusers_to_original(models["transformer"].state_dict()), dtype),
                            {})
    save_safetensors_atomic(out["clip_l"], _cast(_clip_sd(models["clip_l"]), dtype), {})
    save_safetensors_atomic(out["clip_g"], _cast(_clip_sd(models["clip_g"]), dtype), {})
    save_safetensors_atomic(out["t5xxl"], _cast(_t5_sd(models["t5"]), dtype), {})
    save_safetensors_atomic(out["vae"], _cast(models["vae"].state_dict(), dtype), {})
    write_config(out["config"], models)
    return out


def write_tiny_checkpoint(directory: str | os.PathLike[str], seed: int = 0, dtype: torch.dtype = torch.bfloat16
                          ) -> dict[str, Path]:
    """A tiny official-layout single file with every encoder bundled, plus a config folder; roles: checkpoint,
    config (model.checkpoint / model.config_dir)."""
    root = Path(directory)
    models = tiny_models(seed)
    ckpt = save_single_file(root / "sd3.5_medium_tiny.safetensors", models, dtype)
    return {"checkpoint": ckpt, "config": write_config(root / "config", models)}


def model_cfg(files: dict[str, Path], **extra: Any) -> Any:
    """A ModelCfg for files written by :func:`save_split_files` or :func:`write_tiny_checkpoint`."""
    from lorakit.config.schema import ModelCfg
    roles = {r: str(files[r]) for r in ("clip_l", "clip_g", "t5xxl", "vae") if r in files}
    return ModelCfg(family="sd3", checkpoint=str(files["checkpoint"]), config_dir=str(files["config"]),
                    **roles, **extra)
