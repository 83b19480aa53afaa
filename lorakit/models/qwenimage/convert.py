"""Qwen-Image weights: what a file is, the shape of a transformer, and the two layouts of the autoencoder.

* Transformer: Qwen's diffusers folder, ComfyUI's ``diffusion_models/qwen_image_*.safetensors`` (bf16 / fp8_e4m3fn)
  and diffusers' single-file loader all use diffusers' own names (``transformer_blocks.N.attn.to_q``, ``img_mod.1``,
  ``img_mlp.net.0.proj`` ...; diffusers maps a Qwen-Image single file with the identity), ComfyUI's optionally under
  ``model.diffusion_model.``.
* Autoencoder: ComfyUI's ``vae/qwen_image_vae.safetensors`` is in Wan 2.1's original layout (``encoder.conv1``,
  ``encoder.downsamples.N.residual.K``, ``decoder.upsamples.N``, ``conv1``/``conv2``); diffusers'
  ``AutoencoderKLQwenImage`` renames them. :func:`vae_to_diffusers` is diffusers' own ``convert_wan_vae_to_diffusers``;
  :func:`vae_to_original` is its inverse (tested as such on every key).
* Text encoder: Qwen2.5-VL-7B as ComfyUI (``model.layers.N``, ``visual.*``, ``lm_head``), transformers 4
  (the same) or transformers 5 (``model.language_model.*``, ``model.visual.*``) store it; :func:`text_weights` keeps
  the language model's tensors under ``Qwen2_5_VLTextModel``'s names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from lorakit.errors import ModelLoadError
from lorakit.models import common
from lorakit.models.common import count_blocks as _count, strip_prefix, tensor_shape as _shape  # noqa: F401 (re-exported)

PREFIXES = common.DIT_PREFIXES
QWEN_MARK = "transformer_blocks.0.img_mod.1.weight"      # Qwen-Image's per-block image modulation
LAYERED_MARK = "time_text_embed.addition_t_embedding.weight"


@dataclass(frozen=True)
class Shape:
    """What the weights say about a Qwen-Image transformer."""

    dim: int
    num_layers: int
    head_dim: int
    text_dim: int
    in_channels: int
    out_channels: int

    @property
    def heads(self) -> int:
        return self.dim // self.head_dim


def what_is(keys: Iterable[str]) -> str:
    """A short description of what a weights file holds, for the one-line refusal of a wrong file."""
    ks = set(strip_prefix(dict.fromkeys(keys)))
    starts = lambda *ps: any(k.startswith(ps) for k in ks)  # noqa: E731
    if QWEN_MARK in ks:
        if LAYERED_MARK in ks:
            return "a Qwen-Image-Layered transformer"
        if any(".img_mlp.gate_up." in k or ".img_mlp.gate_layer." in k for k in ks):
            return "a Qwen-Image 2.1 transformer"
        return "a Qwen-Image transformer"
    other = common.what_transformer(ks, "qwenimage")
    if other:
        return other
    if starts("conditioner.embedders.", "input_blocks.", "down_blocks.", "cond_stage_model."):
        return "an SD / SDXL U-Net checkpoint"
    if "decoder.middle.0.residual.0.gamma" in ks or "decoder.mid_block.resnets.0.norm1.gamma" in ks:
        return "a Wan / Qwen-Image autoencoder"
    if any(k.endswith("self_attn.q_proj.weight") for k in ks):
        if any(k.endswith("self_attn.q_norm.weight") for k in ks):
            return "a Qwen3 text encoder"
        if any(k.endswith("self_attn.q_proj.bias") for k in ks):
            return "a Qwen2 / Qwen2.5-VL text encoder"
        return "a Llama / Mistral-type text encoder"
    return common.what_component(ks)


def detect(sd: Mapping[str, Any], where: str) -> Shape:
    """The transformer's shape from its tensors (or header entries); ModelLoadError naming what the file is
    otherwise."""
    sd = strip_prefix(sd)
    kind = what_is(sd)
    if kind != "a Qwen-Image transformer":
        raise ModelLoadError(f"{where}: this is {kind}, not a Qwen-Image transformer (e.g. ComfyUI's "
                             "diffusion_models/qwen_image_bf16.safetensors)")
    try:
        img_in, txt_in = _shape(sd["img_in.weight"]), _shape(sd["txt_in.weight"])
        head = _shape(sd["transformer_blocks.0.attn.norm_q.weight"])[0]
        out = _shape(sd["proj_out.weight"])[0]
    except KeyError as exc:
        raise ModelLoadError(f"{where}: a Qwen-Image transformer without {exc.args[0]}; truncated?") from None
    return Shape(dim=img_in[0], num_layers=_count(sd, "transformer_blocks."), head_dim=head, text_dim=txt_in[1],
                 in_channels=img_in[1], out_channels=out // 4)


def transformer_config(shape: Shape, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The diffusers config for ``shape``: widths and depths from the weights, the rest from ``base`` (a config
    folder) or the shipped full-size config; rotary axes must add up to the head width."""
    from . import configs
    cfg = dict(base or configs.transformer_config())
    cfg.update(num_layers=shape.num_layers, attention_head_dim=shape.head_dim, num_attention_heads=shape.heads,
               joint_attention_dim=shape.text_dim, in_channels=shape.in_channels, out_channels=shape.out_channels)
    if sum(cfg["axes_dims_rope"]) != shape.head_dim:
        raise ModelLoadError(f"model.checkpoint: head width {shape.head_dim} but rotary axes {cfg['axes_dims_rope']} "
                             f"add up to {sum(cfg['axes_dims_rope'])}; pass the model's config folder as "
                             "model.config_dir")
    if cfg.get("zero_cond_t") or cfg.get("use_additional_t_cond") or cfg.get("use_layer3d_rope"):
        raise ModelLoadError("model.checkpoint: the transformer config is Qwen-Image-Edit-2511's or -Layered's "
                             "(zero_cond_t / additional_t_cond / layer3d_rope); lorakit trains Qwen-Image "
                             "(text-to-image) only")
    return cfg


# ----------------------------------------------------------------------------------------------- text encoder

def text_weights(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen2.5-VL weights in any stored layout -> the language model's tensors under ``Qwen2_5_VLTextModel``'s
    names (the vision tower and the LM head are not used by Qwen-Image and are dropped)."""
    for p in ("model.language_model.", "language_model.model.", "language_model.", "model."):
        if any(k.startswith(p + "layers.") for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p) and not k[len(p):].startswith("visual.")}
    return {k: v for k, v in sd.items() if not k.startswith(("visual.", "lm_head.", "model.visual."))}


# ----------------------------------------------------------------------------------------------- autoencoder

def vae_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan 2.1 original layout (ComfyUI's qwen_image_vae.safetensors) -> ``AutoencoderKLQwenImage`` names, through
    diffusers' own converter; a diffusers-layout dict is returned as it is."""
    if "encoder.conv_in.weight" in sd:
        return dict(sd)
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    return convert_wan_vae_to_diffusers(dict(sd))


_RESIDUAL = (("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."), ("norm2.gamma", "residual.3.gamma"),
             ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut."))
_FIXED = {"encoder.conv_in.": "encoder.conv1.", "decoder.conv_in.": "decoder.conv1.", "quant_conv.": "conv1.",
          "post_quant_conv.": "conv2.", "encoder.norm_out.gamma": "encoder.head.0.gamma",
          "decoder.norm_out.gamma": "decoder.head.0.gamma", "encoder.conv_out.": "encoder.head.2.",
          "decoder.conv_out.": "decoder.head.2.", "encoder.mid_block.attentions.0.": "encoder.middle.1.",
          "decoder.mid_block.attentions.0.": "decoder.middle.1."}


def _residual(rest: str) -> str:
    for d, o in _RESIDUAL:
        if rest.startswith(d):
            return o + rest[len(d):]
    return rest


def vae_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``AutoencoderKLQwenImage`` names -> Wan 2.1's original layout (as ComfyUI stores qwen_image_vae): the inverse
    of :func:`vae_to_diffusers` for the 4-level, 2-residual-block layout every Qwen-Image VAE has."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        new = None
        for d, o in _FIXED.items():
            if k.startswith(d):
                new = o + k[len(d):]
                break
        if new is None and (m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", k)):
            new = f"{m.group(1)}.middle.{2 * int(m.group(2))}.{_residual(m.group(3))}"
        elif new is None and (m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", k)):
            new = f"encoder.downsamples.{m.group(1)}.{_residual(m.group(2))}"
        elif new is None and (m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k)):
            b, r, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if rest.startswith("conv_shortcut."):
                new = f"decoder.upsamples.{4 * b + r}.shortcut.{rest[len('conv_shortcut.'):]}"
            else:
                new = f"decoder.upsamples.{4 * b + r}.{_residual(rest)}"
        elif new is None and (m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k)):
            new = f"decoder.upsamples.{4 * int(m.group(1)) + 3}.{m.group(2)}"
        out[new or k] = v
    return out
