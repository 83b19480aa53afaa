"""Z-Image weights: the original layout (Tongyi-MAI's single file, ComfyUI's ``diffusion_models/`` files, optionally
with ``model.diffusion_model.``) <-> diffusers' ``ZImageTransformer2DModel``; what a file is; the shape of a model.

Original names differ from diffusers' in five places (re-derived from ComfyUI's ``z_image_to_diffusers`` table and
diffusers' single-file converter, then checked against both classes' state dicts in the tests):
``x_embedder`` = ``all_x_embedder.2-1``, ``final_layer`` = ``all_final_layer.2-1``, a fused ``attention.qkv`` =
``attention.to_q / to_k / to_v`` stacked on the output axis, ``attention.out`` = ``attention.to_out.0`` and
``attention.q_norm / k_norm`` = ``attention.norm_q / norm_k``. Everything else has one name in both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import torch

from lorakit.errors import ModelLoadError
from lorakit.models import common
from lorakit.models.common import count_blocks as _count, strip_prefix  # noqa: F401 (re-exported)

PREFIXES = common.DIT_PREFIXES
ORIGINAL_MARK = "layers.0.attention.qkv.weight"          # original layout
DIFFUSERS_MARK = "layers.0.attention.to_q.weight"        # diffusers layout
ZIMAGE_MARK = "layers.0.adaLN_modulation.0.weight"       # Z-Image's block modulation (Lumina 2's is .1: SiLU first)
_RENAME = (("x_embedder.", "all_x_embedder.2-1."), ("final_layer.", "all_final_layer.2-1."),
           (".attention.out.", ".attention.to_out.0."), (".attention.q_norm.", ".attention.norm_q."),
           (".attention.k_norm.", ".attention.norm_k."))


@dataclass(frozen=True)
class Shape:
    """What the weights say about a Z-Image transformer."""

    dim: int
    n_layers: int
    n_refiner: int
    head_dim: int
    cap_feat_dim: int
    in_channels: int

    @property
    def n_heads(self) -> int:
        return self.dim // self.head_dim


def what_is(keys: Iterable[str]) -> str:
    """A short description of what a weights file holds, for the one-line refusal of a wrong file."""
    ks = set(strip_prefix(dict.fromkeys(keys)))
    starts = lambda *ps: any(k.startswith(ps) for k in ks)  # noqa: E731
    if "siglip_embedder.0.weight" in ks:
        return "a Z-Image Omni transformer (SigLIP-conditioned)"
    if ZIMAGE_MARK in ks:
        return "a Z-Image transformer"
    if "layers.0.adaLN_modulation.1.weight" in ks and "cap_embedder.0.weight" in ks:
        return "a Lumina Image 2.0 transformer"
    if starts("control_layers.", "control_all_x_embedder."):
        return "a Z-Image ControlNet"
    return common.what_transformer(ks, "zimage") or common.what_else(ks)


def layout(sd: Mapping[str, Any]) -> str:
    return common.layout(sd, ORIGINAL_MARK, DIFFUSERS_MARK)


def detect(sd: Mapping[str, torch.Tensor], where: str) -> Shape:
    """The model's shape from its tensors (either layout); ModelLoadError naming what the file is otherwise."""
    sd = strip_prefix(sd)
    kind = what_is(sd)
    if kind != "a Z-Image transformer":
        raise ModelLoadError(f"{where}: this is {kind}, not a Z-Image transformer (Z-Image Turbo / base, e.g. "
                             "ComfyUI's diffusion_models/z_image_turbo_bf16.safetensors)")
    x = sd.get("x_embedder.weight", sd.get("all_x_embedder.2-1.weight"))
    qn = sd.get("layers.0.attention.q_norm.weight", sd.get("layers.0.attention.norm_q.weight"))
    cap = sd.get("cap_embedder.0.weight")
    if x is None or qn is None or cap is None:
        raise ModelLoadError(f"{where}: a Z-Image transformer without x_embedder / q_norm / cap_embedder; truncated?")
    return Shape(dim=int(x.shape[0]), n_layers=_count(sd, "layers."), n_refiner=_count(sd, "noise_refiner."),
                 head_dim=int(qn.shape[0]), cap_feat_dim=int(cap.shape[0]), in_channels=int(x.shape[1]) // 4)


def transformer_config(shape: Shape, base: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The diffusers config for ``shape``: widths and depths from the weights, the rest from ``base`` (a config
    folder) or the shipped full-size config; rotary axes must add up to the head width."""
    from . import configs
    cfg = dict(base or configs.transformer_config())
    cfg.update(dim=shape.dim, n_layers=shape.n_layers, n_refiner_layers=shape.n_refiner, n_heads=shape.n_heads,
               n_kv_heads=shape.n_heads, cap_feat_dim=shape.cap_feat_dim, in_channels=shape.in_channels)
    if sum(cfg["axes_dims"]) != shape.head_dim:
        raise ModelLoadError(f"model.checkpoint: head width {shape.head_dim} but rotary axes {cfg['axes_dims']} add up "
                             f"to {sum(cfg['axes_dims'])}; pass the model's config folder as model.config_dir")
    return cfg


def original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original (ComfyUI / Tongyi-MAI) names -> diffusers names; the fused qkv split into q, k, v."""
    out: dict[str, torch.Tensor] = {}
    for k, v in strip_prefix(sd).items():
        if k == "final_layer.norm_final.weight":      # a LayerNorm without affine in diffusers: nothing to load
            continue
        if k.endswith(".attention.qkv.weight"):
            base = k[: -len("qkv.weight")]
            for name, part in zip(("to_q", "to_k", "to_v"), v.chunk(3, dim=0)):
                out[f"{base}{name}.weight"] = part.contiguous()
            continue
        for a, b in _RENAME:
            if k.startswith(a) or (a.startswith(".") and a in k):
                k = b + k[len(a):] if k.startswith(a) else k.replace(a, b)
        out[k] = v
    return out


def diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers names -> the original layout (q, k, v fused into qkv), as ComfyUI and Tongyi-MAI store it."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(".attention.to_k.weight") or k.endswith(".attention.to_v.weight"):
            continue
        if k.endswith(".attention.to_q.weight"):
            base = k[: -len("to_q.weight")]
            out[f"{base}qkv.weight"] = torch.cat([v, sd[f"{base}to_k.weight"], sd[f"{base}to_v.weight"]]).contiguous()
            continue
        for a, b in _RENAME:
            if k.startswith(b) or (b.startswith(".") and b in k):
                k = a + k[len(b):] if k.startswith(b) else k.replace(b, a)
        out[k] = v
    return out


def module_original_name(path: str) -> str:
    """A diffusers Linear path -> its original module name (``to_q/k/v`` -> the fused ``qkv``)."""
    path = re.sub(r"\.attention\.to_[qkv]$", ".attention.qkv", path)
    for a, b in _RENAME:
        a, b = a.rstrip("."), b.rstrip(".")
        if path.startswith(b + ".") or path == b:
            return a + path[len(b):]
        if b.startswith(".") and (b + ".") in path + ".":
            return (path + ".").replace(b + ".", a + ".")[:-1]
    return path
