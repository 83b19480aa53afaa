"""SDXL state-dict converters between the diffusers layout and the original SGM single-file layout.

Original (SGM/LDM) → diffusers uses diffusers' own converters (``diffusers.loaders.single_file_utils``),
which are what ``from_single_file`` runs. diffusers → original is ours (nothing in the wheel does it);
it is derived from the config (levels, ``layers_per_block``, block types), so the same code serves the
full-size model and tiny test models, and it is proven by round trip through diffusers' converters.

The UNet map is also a *module* map (:func:`unet_module_to_sgm`): kohya names UNet LoRA modules by their
SGM path (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``).

SGM prefixes: UNet ``model.diffusion_model.``, VAE ``first_stage_model.``, CLIP-L
``conditioner.embedders.0.transformer.text_model.``, OpenCLIP bigG ``conditioner.embedders.1.model.``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from lorakit.fsutil import atomic_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."

_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _cfg(config: Any, key: str) -> Any:
    """Read a config entry from a dict or a diffusers FrozenDict/ConfigMixin config."""
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def _layers_per_block(config: Any) -> int:
    lpb = _cfg(config, "layers_per_block")
    if not isinstance(lpb, int):
        raise ValueError(f"SDXL conversion needs an int layers_per_block, got {lpb!r}")
    return lpb


def _map_resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _UNET_RESNET:
        raise KeyError(f"unknown UNet resnet part {rest!r}")
    return _UNET_RESNET[head] + (("." + tail) if tail else "")


def unet_module_to_sgm(name: str, unet_config: Any) -> str:
    """Map a diffusers UNet module (or parameter) path to its SGM path.

    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` → ``input_blocks.4.1.transformer_blocks.0.attn1.to_q``
    (with SDXL's ``layers_per_block`` 2). Resnet parts are renamed (conv1 → in_layers.2, time_emb_proj →
    emb_layers.1, conv_shortcut → skip_connection); attention internals keep their names. A trailing
    ``.weight``/``.bias`` passes through unchanged.
    """
    for src, dst in _UNET_TOP.items():
        if name == src or name.startswith(src + "."):
            return dst + name[len(src):]
    lpb = _layers_per_block(unet_config)
    step = lpb + 1
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)(?:\.(.*))?$", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "downsamplers":
            return f"input_blocks.{(i + 1) * step}.0.op" + rest.removeprefix("conv")
        idx = 1 + i * step + j
        if kind == "resnets":
            return f"input_blocks.{idx}.0.{_map_resnet(rest)}"
        return f"input_blocks.{idx}.1" + (f".{rest}" if rest else "")
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3] or ""
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_map_resnet(rest)}"
        return f"middle_block.{2 * j + 1}" + (f".{rest}" if rest else "")
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)(?:\.(.*))?$", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "upsamplers":
            has_attn = "CrossAttn" in _cfg(unet_config, "up_block_types")[i]
            return f"output_blocks.{i * step + lpb}.{2 if has_attn else 1}" + (f".{rest}" if rest else "")
        idx = i * step + j
        if kind == "resnets":
            return f"output_blocks.{idx}.0.{_map_resnet(rest)}"
        return f"output_blocks.{idx}.1" + (f".{rest}" if rest else "")
    raise KeyError(f"no SGM equivalent for UNet module {name!r}")


def unet_to_sgm(state_dict: Mapping[str, torch.Tensor], unet_config: Any, prefix: str = UNET_PREFIX
                ) -> dict[str, torch.Tensor]:
    """Diffusers UNet2DConditionModel state dict → SGM keys (with ``prefix``)."""
    return {prefix + unet_module_to_sgm(k, unet_config): v for k, v in state_dict.items()}


def _vae_key(key: str, n_levels: int) -> str:
    enc = re.match(r"(encoder|decoder)\.(.*)$", key)
    if not enc:
        return key  # quant_conv / post_quant_conv keep their names
    side, rest = enc[1], enc[2]
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)$", rest)
    if m:
        direction, i, kind, j, tail = m[1], int(m[2]), m[3], int(m[4]), m[5]
        level = i if direction == "down" else n_levels - 1 - i  # decoder levels are stored reversed
        if kind == "resnets":
            head, _, p = tail.partition(".")
            return f"{side}.{direction}.{level}.block.{j}.{_VAE_RESNET.get(head, head)}.{p}"
        return f"{side}.{direction}.{level}.{'downsample' if direction == 'down' else 'upsample'}.{tail}"
    m = re.match(r"mid_block\.resnets\.(\d+)\.(.*)$", rest)
    if m:
        head, _, p = m[2].partition(".")
        return f"{side}.mid.block_{int(m[1]) + 1}.{_VAE_RESNET.get(head, head)}.{p}"
    m = re.match(r"mid_block\.attentions\.0\.(.*)\.(weight|bias)$", rest)
    if m:
        return f"{side}.mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}"
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out." + rest.removeprefix("conv_norm_out.")
    return key


def vae_to_sgm(state_dict: Mapping[str, torch.Tensor], vae_config: Any, prefix: str = VAE_PREFIX
               ) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL state dict → SGM keys. Mid-attention q/k/v/proj_out become 1×1 convs."""
    n_levels = len(_cfg(vae_config, "down_block_types"))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _vae_key(key, n_levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[prefix + new] = value
    return out


def te1_to_sgm(state_dict: Mapping[str, torch.Tensor], prefix: str = TE1_PREFIX) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict → SGM keys; transformers 5 drops ``text_model.``, SGM has it."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state_dict.items()}


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

def sgm_to_unet(checkpoint: Mapping[str, torch.Tensor], unet_config: Any) -> dict[str, torch.Tensor]:
    """SGM checkpoint → diffusers UNet state dict (diffusers' ``convert_ldm_unet_checkpoint``)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(dict(checkpoint), dict(unet_config))


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
