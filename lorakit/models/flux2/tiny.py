"""Tiny FLUX.2 components of the real classes (Klein layout), for tests and the toy world, and writers of their files
in the real single-file layouts (BFL transformer, HF-layout Qwen3, BFL ``ae.safetensors``, a tokenizer folder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import configs

TINY_QWEN_WIDTH = 16
TINY_TRANSFORMER = dict(patch_size=1, in_channels=128, num_layers=2, num_single_layers=2, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=3 * TINY_QWEN_WIDTH, timestep_guidance_channels=256,
                        mlp_ratio=3.0, axes_dims_rope=[4, 4, 4, 4], rope_theta=2000, guidance_embeds=False)
TINY_QWEN3 = dict(hidden_size=TINY_QWEN_WIDTH, intermediate_size=32, num_hidden_layers=max(configs.QWEN3_LAYERS) + 1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, use_cache=False)
TINY_AE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
               up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 16, 16], layers_per_block=1,
               latent_channels=32, norm_num_groups=8, sample_size=64, use_quant_conv=True, use_post_quant_conv=True,
               batch_norm_eps=1e-4, patch_size=[2, 2])


def tiny_models(seed: int = 0, words: Sequence[str] = (), guidance: bool = False) -> dict[str, Any]:
    """{"transformer", "text_encoder" (Qwen3ForCausalLM), "ae", "tokenizer"}: tiny, seeded, eval mode. The AE's
    batch-norm statistics are set to non-trivial values so the normalisation is exercised."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from .text import tiny_qwen_tokenizer
    tok = tiny_qwen_tokenizer(words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = Flux2Transformer2DModel(**{**TINY_TRANSFORMER, "guidance_embeds": guidance})
        te = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_QWEN3))
        ae = AutoencoderKLFlux2(**TINY_AE)
        n = ae.bn.running_mean.numel()
        ae.bn.running_mean.copy_(0.1 * torch.randn(n))
        ae.bn.running_var.copy_(0.5 + torch.rand(n))
    return {"transformer": tr.eval(), "text_encoder": te.eval(), "ae": ae.eval(), "tokenizer": tok}


def save_files(root: str | os.PathLike[str], models: dict[str, Any], dtype: torch.dtype = torch.bfloat16,
               prefix: str = "") -> dict[str, Path]:
    """Write ``models`` as a user has them: ``diffusion_models/flux2-klein-tiny.safetensors`` (BFL names, optional
    ``prefix`` such as ``model.diffusion_model.``), ``text_encoders/qwen_3_tiny.safetensors`` (HF causal-LM names),
    ``vae/flux2-ae.safetensors`` (BFL ``ae.safetensors`` layout) and ``tokenizer/``. Returns role -> path."""
    from lorakit.lora.io import save_safetensors_atomic

    from .convert import ae_diffusers_to_bfl, diffusers_to_bfl
    root = Path(root)
    out = {"checkpoint": root / "diffusion_models" / "flux2-klein-tiny.safetensors",
           "text_encoder": root / "text_encoders" / "qwen_3_tiny.safetensors",
           "ae": root / "vae" / "flux2-ae.safetensors", "tokenizer": root / "tokenizer"}

    def cast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}

    tsd = {prefix + k: v for k, v in diffusers_to_bfl(models["transformer"].state_dict()).items()}
    save_safetensors_atomic(out["checkpoint"], cast(tsd), {})
    te = {k: v for k, v in models["text_encoder"].state_dict().items() if k != "lm_head.weight"}
    save_safetensors_atomic(out["text_encoder"], cast(te), {})
    ae = ae_diffusers_to_bfl(models["ae"].state_dict())
    save_safetensors_atomic(out["ae"], {k: (v.float() if k.startswith("bn.") and v.is_floating_point() else v)
                                        for k, v in cast(ae).items()}, {})
    models["tokenizer"].save_pretrained(str(out["tokenizer"]))
    return out


def model_cfg(files: dict[str, Path], **extra: Any) -> Any:
    """A ModelCfg for files written by :func:`save_files`."""
    from lorakit.config.schema import ModelCfg
    return ModelCfg(family="flux2", checkpoint=str(files["checkpoint"]), text_encoder=str(files["text_encoder"]),
                    ae=str(files["ae"]), tokenizer_dir=str(files["tokenizer"]), **extra)


def count_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())
