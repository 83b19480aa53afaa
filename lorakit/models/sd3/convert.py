"""SD3 / SD3.5 weights: the original MMDiT layout (Stability AI's single files, ComfyUI's ``diffusion_models/``, with
or without ``model.diffusion_model.``) <-> diffusers' ``SD3Transformer2DModel``; the parts of a bundled single file;
what a file is; the shape of a model.

The name table was re-derived from diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers`` and ComfyUI's
``comfy/utils.py`` ``MMDIT_MAP_BASIC`` / ``MMDIT_MAP_BLOCK`` (the tests compare with diffusers' converter):
``joint_blocks.N.{x,context}_block`` = ``transformer_blocks.N`` (``attn.qkv`` fused = ``to_q/k/v`` or
``add_q/k/v_proj`` stacked on the output axis; ``attn2`` likewise), and the last block's caption modulation and the
final layer's modulation store (shift, scale) where diffusers stores (scale, shift).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import torch

from lorakit.errors import ModelLoadError
from lorakit.models import common
from lorakit.models.common import count_blocks as _count, strip_prefix, tensor_shape as _shape  # noqa: F401 (re-exported)

PREFIXES = common.DIT_PREFIXES
ORIGINAL_MARK = "joint_blocks.0.x_block.attn.qkv.weight"
DIFFUSERS_MARK = "transformer_blocks.0.attn.add_q_proj.weight"
ENCODER_PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.", "clip_g": "text_encoders.clip_g.transformer.",
                    "t5xxl": "text_encoders.t5xxl.transformer.", "vae": "first_stage_model."}

_BASIC = (("x_embedder.proj.weight", "pos_embed.proj.weight"), ("x_embedder.proj.bias", "pos_embed.proj.bias"),
          ("pos_embed", "pos_embed.pos_embed"),
          ("t_embedder.mlp.0.weight", "time_text_embed.timestep_embedder.linear_1.weight"),
          ("t_embedder.mlp.0.bias", "time_text_embed.timestep_embedder.linear_1.bias"),
          ("t_embedder.mlp.2.weight", "time_text_embed.timestep_embedder.linear_2.weight"),
          ("t_embedder.mlp.2.bias", "time_text_embed.timestep_embedder.linear_2.bias"),
          ("y_embedder.mlp.0.weight", "time_text_embed.text_embedder.linear_1.weight"),
          ("y_embedder.mlp.0.bias", "time_text_embed.text_embedder.linear_1.bias"),
          ("y_embedder.mlp.2.weight", "time_text_embed.text_embedder.linear_2.weight"),
          ("y_embedder.mlp.2.bias", "time_text_embed.text_embedder.linear_2.bias"),
          ("context_embedder.weight", "context_embedder.weight"), ("context_embedder.bias", "context_embedder.bias"),
          ("final_layer.linear.weight", "proj_out.weight"), ("final_layer.linear.bias", "proj_out.bias"))
# (original module inside a joint block, diffusers module(s) inside a transformer block, LoRA module type); the module
# type names are lorakit's network.module_ranks keys (img_* = the image stream x_block, txt_* = the caption stream)
_BLOCK = (("x_block.attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn"),
          ("x_block.attn.proj", ("attn.to_out.0",), "img_attn"),
          ("x_block.attn2.qkv", ("attn2.to_q", "attn2.to_k", "attn2.to_v"), "img_attn"),
          ("x_block.attn2.proj", ("attn2.to_out.0",), "img_attn"),
          ("x_block.mlp.fc1", ("ff.net.0.proj",), "img_mlp"), ("x_block.mlp.fc2", ("ff.net.2",), "img_mlp"),
          ("x_block.adaLN_modulation.1", ("norm1.linear",), "img_mod"),
          ("context_block.attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn"),
          ("context_block.attn.proj", ("attn.to_add_out",), "txt_attn"),
          ("context_block.mlp.fc1", ("ff_context.net.0.proj",), "txt_mlp"),
          ("context_block.mlp.fc2", ("ff_context.net.2",), "txt_mlp"),
          ("context_block.adaLN_modulation.1", ("norm1_context.linear",), "txt_mod"))
_NORMS = (("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
          ("x_block.attn2.ln_q", "attn2.norm_q"), ("x_block.attn2.ln_k", "attn2.norm_k"),
          ("context_block.attn.ln_q", "attn.norm_added_q"), ("context_block.attn.ln_k", "attn.norm_added_k"))


@dataclass(frozen=True)
class Shape:
    """What the weights say about an SD3 transformer."""

    depth: int
    width: int
    head_dim: int
    dual_layers: tuple[int, ...]
    qk_norm: bool
    pos_embed_max_size: int
    patch_size: int
    in_channels: int
    out_channels: int
    joint_attention_dim: int
    pooled_projection_dim: int

    @property
    def variant(self) -> str:
        """large / medium / sd3-medium for the released sizes; "custom" otherwise (tiny test models)."""
        if (self.depth, self.width) == (38, 2432) and self.qk_norm and not self.dual_layers:
            return "large"
        if (self.depth, self.width) == (24, 1536) and self.qk_norm and self.dual_layers:
            return "medium"
        if (self.depth, self.width) == (24, 1536) and not self.qk_norm and not self.dual_layers:
            return "sd3-medium"
        return "custom"


@dataclass(frozen=True)
class ModuleMap:
    original: str                    # joint_blocks.N.x_block.attn.qkv
    parts: tuple[str, ...]           # transformer_blocks.N.attn.to_q, ...
    kind: str                        # img_attn / txt_mlp / ...
    swap: bool = False               # output rows are (shift, scale) in the original, (scale, shift) in diffusers


def module_table(depth: int, dual_layers: Iterable[int] = ()) -> list[ModuleMap]:
    """Every Linear of the joint blocks: original module, diffusers parts, module type, scale/shift swap."""
    dual = set(dual_layers)
    out = []
    for i in range(depth):
        last = i == depth - 1
        for orig, parts, kind in _BLOCK:
            if ".attn2." in f".{orig}" and i not in dual:
                continue
            if last and orig.startswith("context_block.") and orig != "context_block.attn.qkv" and \
                    orig != "context_block.adaLN_modulation.1":
                continue
            out.append(ModuleMap(f"joint_blocks.{i}.{orig}", tuple(f"transformer_blocks.{i}.{p}" for p in parts),
                                 kind, swap=last and orig == "context_block.adaLN_modulation.1"))
    return out


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (b, a) along dim 0: the original's (shift, scale) <-> diffusers' (scale, shift)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def encoder_part(sd: Mapping[str, Any], role: str) -> dict[str, Any]:
    """The tensors of a bundled single file's ``role`` (clip_l / clip_g / t5xxl / vae), prefix removed."""
    p = ENCODER_PREFIXES[role]
    return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}


def what_is(keys: Iterable[str]) -> str:
    """A short description of what a weights file holds, for the one-line refusal of a wrong file."""
    ks = set(strip_prefix(dict.fromkeys(keys)))
    starts = lambda *ps: any(k.startswith(ps) for k in ks)  # noqa: E731
    if starts("joint_blocks.") or DIFFUSERS_MARK in ks:
        return "an SD3 transformer"
    if starts("controlnet_blocks."):
        return "an SD3 ControlNet"
    return common.what_transformer(ks, "sd3") or common.what_else(ks)


def layout(sd: Mapping[str, Any]) -> str:
    return common.layout(sd, ORIGINAL_MARK, DIFFUSERS_MARK)


def detect(sd: Mapping[str, Any], where: str, head_dim: Optional[int] = None) -> Shape:
    """The model's shape from its tensors or header entries (original layout, prefix allowed); ModelLoadError naming
    what the file is otherwise."""
    sd = strip_prefix(sd)
    if layout(sd) == "diffusers":
        sd = diffusers_to_original_names(sd)
    if layout(sd) != "original":
        raise ModelLoadError(f"{where}: this is {what_is(sd)}, not an SD3 / SD3.5 transformer (e.g. "
                             "sd3.5_large.safetensors or ComfyUI's diffusion_models/sd3.5_medium.safetensors)")
    try:
        x = _shape(sd["x_embedder.proj.weight"])
        ctx = _shape(sd["context_embedder.weight"])
        y = _shape(sd["y_embedder.mlp.0.weight"])
        pos = _shape(sd["pos_embed"])
        final = _shape(sd["final_layer.linear.weight"])
    except KeyError as e:
        raise ModelLoadError(f"{where}: an SD3 transformer without {e.args[0]!r}; truncated file?") from None
    depth = _count(sd, "joint_blocks.")
    dual = tuple(sorted({int(m.group(1)) for k in sd if (m := re.match(r"joint_blocks\.(\d+)\.x_block\.attn2\.", k))}))
    lnq = sd.get("joint_blocks.0.x_block.attn.ln_q.weight")
    hd = _shape(lnq)[0] if lnq is not None else (head_dim or 64)
    patch = x[-1]
    side = int(round(pos[1] ** 0.5))
    return Shape(depth=depth, width=x[0], head_dim=hd, dual_layers=dual, qk_norm=lnq is not None,
                 pos_embed_max_size=side, patch_size=patch, in_channels=x[1], out_channels=final[0] // (patch * patch),
                 joint_attention_dim=ctx[1], pooled_projection_dim=y[1])


def transformer_config(shape: Shape, base: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The diffusers config for ``shape``: sizes from the weights, the rest from ``base`` (a config folder) or the
    shipped config of the nearest release."""
    from . import configs
    v = shape.variant if shape.variant != "custom" else "large"
    cfg = dict(base or configs.transformer_config(v))
    if shape.width % shape.head_dim:
        raise ModelLoadError(f"model.checkpoint: width {shape.width} is not a multiple of the head width "
                             f"{shape.head_dim}; pass the model's config folder as model.config_dir")
    cfg.update(num_layers=shape.depth, num_attention_heads=shape.width // shape.head_dim,
               attention_head_dim=shape.head_dim, caption_projection_dim=shape.width,
               dual_attention_layers=list(shape.dual_layers), qk_norm="rms_norm" if shape.qk_norm else None,
               pos_embed_max_size=shape.pos_embed_max_size, patch_size=shape.patch_size,
               in_channels=shape.in_channels, out_channels=shape.out_channels,
               joint_attention_dim=shape.joint_attention_dim, pooled_projection_dim=shape.pooled_projection_dim)
    return cfg


def _pairs(depth: int, dual: Iterable[int]) -> list[tuple[str, str, bool]]:
    """(original key, diffusers key, swap) for every tensor that is renamed one to one."""
    dual = set(dual)
    out = [(o, d, False) for o, d in _BASIC]
    out += [("final_layer.adaLN_modulation.1.weight", "norm_out.linear.weight", True),
            ("final_layer.adaLN_modulation.1.bias", "norm_out.linear.bias", True)]
    for m in module_table(depth, dual):
        if len(m.parts) == 1:
            for end in ("weight", "bias"):
                out.append((f"{m.original}.{end}", f"{m.parts[0]}.{end}", m.swap))
    for i in range(depth):
        for o, d in _NORMS:
            if ".attn2." in f".{o}" and i not in dual:
                continue
            out.append((f"joint_blocks.{i}.{o}.weight", f"transformer_blocks.{i}.{d}.weight", False))
    return out


def original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original (Stability AI / ComfyUI) names -> diffusers names; fused qkv split, scale/shift swapped."""
    sd = strip_prefix(sd)
    depth = _count(sd, "joint_blocks.")
    dual = {int(m.group(1)) for k in sd if (m := re.match(r"joint_blocks\.(\d+)\.x_block\.attn2\.", k))}
    out: dict[str, torch.Tensor] = {}
    for o, d, swap in _pairs(depth, dual):
        if o in sd:
            out[d] = swap_halves(sd[o]) if swap else sd[o]
    for m in module_table(depth, dual):
        if len(m.parts) == 3:
            for end in ("weight", "bias"):
                if f"{m.original}.{end}" in sd:
                    for p, t in zip(m.parts, sd[f"{m.original}.{end}"].chunk(3, dim=0)):
                        out[f"{p}.{end}"] = t.contiguous()
    return out


def diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers names -> the original layout (q/k/v fused, scale/shift swapped back), as Stability AI stores it."""
    depth = _count(sd, "transformer_blocks.")
    dual = {int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.attn2\.", k))}
    out: dict[str, torch.Tensor] = {}
    for o, d, swap in _pairs(depth, dual):
        if d in sd:
            out[o] = swap_halves(sd[d]) if swap else sd[d]
    for m in module_table(depth, dual):
        if len(m.parts) == 3:
            for end in ("weight", "bias"):
                if f"{m.parts[0]}.{end}" in sd:
                    out[f"{m.original}.{end}"] = torch.cat([sd[f"{p}.{end}"] for p in m.parts]).contiguous()
    return out


def diffusers_to_original_names(header: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers-layout header/state dict renamed to original names without touching values (shapes of fused
    parts are not needed by :func:`detect`): used to read the shape of a diffusers-layout file."""
    depth = _count(header, "transformer_blocks.")
    dual = {int(m.group(1)) for k in header if (m := re.match(r"transformer_blocks\.(\d+)\.attn2\.", k))}
    out = {o: header[d] for o, d, _s in _pairs(depth, dual) if d in header}
    for m in module_table(depth, dual):
        if len(m.parts) == 3 and f"{m.parts[0]}.weight" in header:
            out[f"{m.original}.weight"] = header[f"{m.parts[0]}.weight"]
    return out
