"""Tiny Z-Image components of the real classes, for tests and the toy world, and writers of their files in the real
layouts: the original-layout transformer (ComfyUI ``diffusion_models/``), HF-layout Qwen3 (``text_encoders/``), the
FLUX.1 ``ae.safetensors`` (``vae/``), a tokenizer folder and a diffusers config folder; or a diffusers folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from . import configs

TINY_QWEN_WIDTH = 16
TINY_TRANSFORMER = dict(all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=32, n_layers=2,
                        n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                        cap_feat_dim=TINY_QWEN_WIDTH, rope_theta=256.0, t_scale=1000.0, axes_dims=[4, 6, 6],
                        axes_lens=[1536, 512, 512])
TINY_QWEN3 = dict(hidden_size=TINY_QWEN_WIDTH, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, tie_word_embeddings=True, use_cache=False)


def tiny_models(seed: int = 0, words: Sequence[str] = ()) -> dict[str, Any]:
    """{"transformer", "text_encoder" (Qwen3Model), "ae" (FLUX.1-style, 16 channels), "tokenizer"}: tiny, seeded,
    eval mode; the pad tokens are non-zero so their use is exercised."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from lorakit.models.ldm_vae import TINY_AE
    from lorakit.models.tokenizers import tiny_qwen_tokenizer
    tok = tiny_qwen_tokenizer(words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = ZImageTransformer2DModel(**TINY_TRANSFORMER)
        with torch.no_grad():
            tr.x_pad_token.normal_()
            tr.cap_pad_token.normal_()
        te = Qwen3Model(Qwen3Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_QWEN3))
        ae = AutoencoderKL(**TINY_AE)
    return {"transformer": tr.eval(), "text_encoder": te.eval(), "ae": ae.eval(), "tokenizer": tok}


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def write_config(folder: Path, transformer: dict[str, Any], ae: Any = None) -> Path:
    """A diffusers config folder (transformer/config.json, vae/config.json, model_index.json) for single files."""
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(
        {**configs.transformer_config(), **transformer}, indent=2) + "\n", encoding="utf-8")
    if ae is not None:
        (folder / "vae").mkdir(parents=True, exist_ok=True)
        (folder / "vae" / "config.json").write_text(json.dumps(dict(ae), indent=2, default=list) + "\n",
                                                    encoding="utf-8")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}) + "\n", encoding="utf-8")
    return folder


def save_files(root: str | os.PathLike[str], models: dict[str, Any], dtype: torch.dtype = torch.bfloat16,
               prefix: str = "", name: str = "z_image_turbo_tiny.safetensors") -> dict[str, Path]:
    """Write ``models`` as a ComfyUI user has them: ``diffusion_models/<name>`` (original names, optional ``prefix``
    such as ``model.diffusion_model.``), ``text_encoders/qwen_3_tiny.safetensors`` (HF causal-LM names),
    ``vae/ae.safetensors`` (BFL layout), ``tokenizer/`` and ``config/``. Returns role -> path."""
    from lorakit.lora.io import save_safetensors_atomic
    from lorakit.models.ldm_vae import ae_diffusers_to_bfl

    from .convert import diffusers_to_original
    root = Path(root)
    out = {"checkpoint": root / "diffusion_models" / name, "text_encoder": root / "text_encoders" /
           "qwen_3_tiny.safetensors", "ae": root / "vae" / "ae.safetensors", "tokenizer": root / "tokenizer",
           "config": root / "config"}
    tsd = {prefix + k: v for k, v in diffusers_to_original(models["transformer"].state_dict()).items()}
    save_safetensors_atomic(out["checkpoint"], _cast(tsd, dtype), {})
    te = {"model." + k: v for k, v in models["text_encoder"].state_dict().items()}
    save_safetensors_atomic(out["text_encoder"], _cast(te, dtype), {})
    save_safetensors_atomic(out["ae"], _cast(ae_diffusers_to_bfl(models["ae"].state_dict()), dtype), {})
    models["tokenizer"].save_pretrained(str(out["tokenizer"]))
    write_config(out["config"], dict(models["transformer"].config), models["ae"].config)
    return out


def write_tiny_checkpoint(directory: str | os.PathLike[str], seed: int = 0, dtype: torch.dtype = torch.bfloat16
                          ) -> dict[str, Path]:
    """Tiny Z-Image files as a ComfyUI user keeps them, plus a config folder; roles: checkpoint, text_encoder, ae,
    tokenizer, config (model.checkpoint / text_encoder / ae / tokenizer_dir / config_dir)."""
    return save_files(directory, tiny_models(seed), dtype)


def model_cfg(files: dict[str, Path], **extra: Any) -> Any:
    """A ModelCfg for files written by :func:`save_files`."""
    from lorakit.config.schema import ModelCfg
    return ModelCfg(family="zimage", checkpoint=str(files["checkpoint"]), text_encoder=str(files["text_encoder"]),
                    ae=str(files["ae"]), tokenizer_dir=str(files["tokenizer"]), config_dir=str(files["config"]),
                    **extra)
