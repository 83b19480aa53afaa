"""The LDM autoencoder of FLUX.1, SD3 and Z-Image (16 latent channels; FLUX.2 writes its own through the same key map).

* :func:`ae_config`: the diffusers ``AutoencoderKL`` config of the FLUX autoencoder; :data:`TINY_AE`: its tiny test
  version.
* :func:`ae_bfl_to_diffusers` / :func:`ae_diffusers_to_bfl`: BFL/LDM ``ae.safetensors`` <-> diffusers layout;
  :func:`infer_ae_config`: widths, depth and latent channels read from LDM weights.
* :func:`build_ae`: an ``AutoencoderKL`` from either layout, sizes from the weights, assigned on the meta device.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import torch
from torch import nn

from lorakit.errors import ModelLoadError
from lorakit.models.common import count_blocks
from lorakit.models.weights import assign_weights, upcast

__all__ = ["ae_config", "TINY_AE", "ae_bfl_to_diffusers", "ae_diffusers_to_bfl", "infer_ae_config", "build_ae"]


def ae_config() -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config of the FLUX autoencoder (16 channels, no quant convs)."""
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "force_upcast": True,
        "mid_block_add_attention": True,
    }


TINY_AE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
               up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 16, 16], layers_per_block=1,
               norm_num_groups=4, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
               scaling_factor=0.3611, shift_factor=0.1159, sample_size=64)


def ae_bfl_to_diffusers(sd: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """BFL/LDM ``ae.safetensors`` -> diffusers AutoencoderKL (diffusers' own LDM VAE converter handles it)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    return convert_ldm_vae_checkpoint(dict(sd), config)


def _vae_key_to_ldm(k: str, n_up: int) -> str:
    k = k.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
    k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(r"decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}.", k)
    k = re.sub(r"(decoder\.up\.\d+\.)resnets\.", r"\1block.", k)
    k = re.sub(r"(decoder\.up\.\d+\.)upsamplers\.0\.", r"\1upsample.", k)
    k = k.replace("conv_shortcut.", "nin_shortcut.").replace("conv_norm_out.", "norm_out.")
    if ".attn_1." in k:
        k = (k.replace("group_norm.", "norm.").replace("to_q.", "q.").replace("to_k.", "k.")
             .replace("to_v.", "v.").replace("to_out.0.", "proj_out."))
    return k


def ae_diffusers_to_bfl(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL -> BFL ``ae.safetensors`` layout (attention projections back to 1x1 convs)."""
    n_up = count_blocks(sd, "decoder.up_blocks.")
    out = {}
    for k, v in sd.items():
        nk = _vae_key_to_ldm(k, n_up)
        if ".attn_1." in nk and nk.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]
        out[nk] = v.contiguous()
    return out


def infer_ae_config(sd: Mapping[str, torch.Tensor], base: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """AutoencoderKL config with block widths, depth and latent channels read from BFL AE weights."""
    cfg = dict(base or {})
    try:
        n = count_blocks(sd, "encoder.down.")
        layers = count_blocks(sd, "encoder.down.0.block.")
        widths = [int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(n)]
        latent = int(sd["encoder.conv_out.weight"].shape[0]) // 2
    except KeyError as e:
        raise ModelLoadError(f"not a FLUX autoencoder: missing tensor {e.args[0]!r}") from None
    cfg.update({"block_out_channels": widths, "layers_per_block": layers, "latent_channels": latent,
                "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
                "use_quant_conv": "quant_conv.weight" in sd, "use_post_quant_conv": "post_quant_conv.weight" in sd})
    return cfg


def build_ae(sd: dict[str, torch.Tensor], dtype: torch.dtype, base: Optional[dict[str, Any]] = None,
             where: str = "ae") -> nn.Module:
    """AutoencoderKL from a BFL ``ae.safetensors`` (no prefix) or a ``first_stage_model.``/``vae.`` one."""
    from diffusers import AutoencoderKL
    for p in ("first_stage_model.", "vae."):
        if any(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    if "encoder.conv_in.weight" not in sd:
        raise ModelLoadError(f"{where}: not an autoencoder (no encoder.conv_in.weight)")
    if any(k.startswith("encoder.down_blocks.") for k in sd):          # already diffusers layout
        sd = ae_diffusers_to_bfl(sd)
    cfg = infer_ae_config(sd, base or ae_config())
    dsd = ae_bfl_to_diffusers(upcast(sd, dtype), cfg)
    with torch.device("meta"):
        model = AutoencoderKL(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    return assign_weights(model, dsd, where, dtype)
