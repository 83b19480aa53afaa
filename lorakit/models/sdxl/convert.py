"""SDXL state-dict converters between the diffusers layout and the original SGM single-file layout.

Original (SGM/LDM) → diffusers uses diffusers' own converters (``diffusers.loaders.single_file_utils``),
which are what ``from_single_file`` runs. diffusers → original is ours (nothing in the wheel does it);
it is derived from the config (levels, ``layers_per_block``, block types), so the same code serves the
full-size model and tiny test models, and it is proven by round trip through diffusers' converters.

The UNet, VAE and CLIP-L maps (shared with SD 1.5) live in :mod:`lorakit.models.unet_parts`; the UNet map is also
a *module* map (``unet_module_to_sgm``): kohya names UNet LoRA modules by their SGM path
(``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``). Here: OpenCLIP bigG and the whole checkpoint.

SGM prefixes: UNet ``model.diffusion_model.``, VAE ``first_stage_model.``, CLIP-L
``conditioner.embedders.0.transformer.text_model.``, OpenCLIP bigG ``conditioner.embedders.1.model.``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from lorakit.fsutil import atomic_path
from lorakit.models.unet_parts import TE1_PREFIX, VAE_PREFIX, te1_to_sgm, unet_to_sgm, vae_to_sgm

TE2_PREFIX = "conditioner.embedders.1.model."

_TE2_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
              "self_attn.out_proj": "attn.out_proj"}


def te2_to_sgm(state_dict: Mapping[str, torch.Tensor], prefix: str = TE2_PREFIX) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection state dict → OpenCLIP keys.

    q/k/v are fused into ``attn.in_proj_weight``/``_bias`` (q, k, v order) and ``text_projection`` is
    stored transposed (OpenCLIP computes ``x @ text_projection``).
    """
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    for key, value in sd.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t().contiguous()
        elif key == "embeddings.position_ids":
            continue
        else:
            m = re.match(r"encoder\.layers\.(\d+)\.(.*)\.(weight|bias)$", key)
            if not m:
                raise KeyError(f"no OpenCLIP equivalent for text encoder 2 key {key!r}")
            layer, part, kind = int(m[1]), m[2], m[3]
            base = f"{prefix}transformer.resblocks.{layer}."
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                if part == "self_attn.q_proj":
                    parts = [sd[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                    out[base + f"attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
                continue
            out[base + _TE2_LAYER[part] + "." + kind] = value
    return out


# ---- original → diffusers (diffusers' own converters) ----

def sgm_to_vae(checkpoint: Mapping[str, torch.Tensor], vae_config: Any) -> dict[str, torch.Tensor]:
    """SGM checkpoint → diffusers AutoencoderKL state dict (diffusers' ``convert_ldm_vae_checkpoint``)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_only = {k: v for k, v in checkpoint.items() if k.startswith(VAE_PREFIX)} or dict(checkpoint)
    return convert_ldm_vae_checkpoint(vae_only, dict(vae_config))


def sgm_to_te1(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SGM checkpoint → CLIPTextModel state dict in transformers 5's flattened naming."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    te = {k: v for k, v in checkpoint.items() if k.startswith(TE1_PREFIX)}
    sd = convert_ldm_clip_checkpoint(te)
    return {k.removeprefix("text_model."): v for k, v in sd.items() if not k.endswith("position_ids")}


def sgm_to_te2(checkpoint: Mapping[str, torch.Tensor], te2_model: Any) -> dict[str, torch.Tensor]:
    """SGM checkpoint → CLIPTextModelWithProjection state dict (diffusers' ``convert_open_clip_checkpoint``)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    te = {k: v for k, v in checkpoint.items() if k.startswith(TE2_PREFIX)}
    return convert_open_clip_checkpoint(te2_model, te, prefix=TE2_PREFIX)


# ---- writing a single-file checkpoint ----

def sgm_state_dict(*, unet: Any, vae: Any, te1: Any, te2: Any,
                   dtype: Optional[torch.dtype] = torch.float16) -> dict[str, torch.Tensor]:
    """The four diffusers/transformers modules → one SGM state dict (tensors cast to ``dtype``)."""
    sd: dict[str, torch.Tensor] = {}
    sd.update(unet_to_sgm(unet.state_dict(), unet.config))
    sd.update(vae_to_sgm(vae.state_dict(), vae.config))
    sd.update(te1_to_sgm({k: v for k, v in te1.state_dict().items() if not k.endswith("position_ids")}))
    sd.update(te2_to_sgm(te2.state_dict()))
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save_sgm_checkpoint(path: Path | str, *, unet: Any, vae: Any, te1: Any, te2: Any,
                        dtype: Optional[torch.dtype] = torch.float16,
                        metadata: Optional[dict[str, str]] = None) -> Path:
    """Write an SDXL single-file checkpoint in the original layout, atomically (temp file + rename).

    Refuses to overwrite an existing file: nothing the user made is ever replaced.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another name or remove it first")
    sd = sgm_state_dict(unet=unet, vae=vae, te1=te1, te2=te2, dtype=dtype)
    with atomic_path(path, overwrite=False) as tmp:
        save_file(sd, str(tmp), metadata=dict(metadata or {}))
    return path
