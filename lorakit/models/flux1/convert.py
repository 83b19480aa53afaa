"""FLUX.1 weight layouts: BFL (the distributed single files) <-> diffusers, with widths read from the weights.

diffusers' own ``convert_flux_transformer_checkpoint_to_diffusers`` hard-codes inner_dim 3072, so tiny
test checkpoints cannot pass through it; this converter reads every width from the tensors, which lets
tiny and full-size files share one code path. The same module table (:func:`module_table`) names the
LoRA targets for the kohya export, so the weight converter and the LoRA names cannot drift apart.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch

from lorakit.errors import ModelLoadError
from lorakit.fsutil import atomic_path
from lorakit.models.ldm_vae import ae_diffusers_to_bfl

BFL_PREFIXES = ("model.diffusion_model.",)
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


@dataclass(frozen=True)
class ModuleMap:
    """One BFL Linear and the diffusers Linears it is made of (split along the output dimension)."""

    bfl: str                       # e.g. "double_blocks.0.img_attn.qkv"
    parts: tuple[str, ...]         # e.g. ("transformer_blocks.0.attn.to_q", ..._k, ..._v)
    kind: str                      # module type for per-type ranks: img_attn, txt_mod, single, ...; "" = none
    lora: bool                     # one of kohya's 304 block targets


def _double(i: int) -> list[ModuleMap]:
    d, t = f"double_blocks.{i}.", f"transformer_blocks.{i}."
    return [
        ModuleMap(d + "img_mod.lin", (t + "norm1.linear",), "img_mod", True),
        ModuleMap(d + "txt_mod.lin", (t + "norm1_context.linear",), "txt_mod", True),
        ModuleMap(d + "img_attn.qkv", (t + "attn.to_q", t + "attn.to_k", t + "attn.to_v"), "img_attn", True),
        ModuleMap(d + "img_attn.proj", (t + "attn.to_out.0",), "img_attn", True),
        ModuleMap(d + "txt_attn.qkv", (t + "attn.add_q_proj", t + "attn.add_k_proj", t + "attn.add_v_proj"),
                  "txt_attn", True),
        ModuleMap(d + "txt_attn.proj", (t + "attn.to_add_out",), "txt_attn", True),
        ModuleMap(d + "img_mlp.0", (t + "ff.net.0.proj",), "img_mlp", True),
        ModuleMap(d + "img_mlp.2", (t + "ff.net.2",), "img_mlp", True),
        ModuleMap(d + "txt_mlp.0", (t + "ff_context.net.0.proj",), "txt_mlp", True),
        ModuleMap(d + "txt_mlp.2", (t + "ff_context.net.2",), "txt_mlp", True),
    ]


def _single(i: int) -> list[ModuleMap]:
    s, t = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
    return [
        ModuleMap(s + "linear1", (t + "attn.to_q", t + "attn.to_k", t + "attn.to_v", t + "proj_mlp"), "single", True),
        ModuleMap(s + "linear2", (t + "proj_out",), "single", True),
        ModuleMap(s + "modulation.lin", (t + "norm.linear",), "single_mod", True),
    ]


_GLOBAL = [
    ModuleMap("img_in", ("x_embedder",), "", False),
    ModuleMap("txt_in", ("context_embedder",), "", False),
    ModuleMap("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",), "", False),
    ModuleMap("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",), "", False),
    ModuleMap("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",), "", False),
    ModuleMap("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",), "", False),
    ModuleMap("final_layer.linear", ("proj_out",), "", False),
]
_GUIDANCE = [
    ModuleMap("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",), "", False),
    ModuleMap("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",), "", False),
]
# RMSNorm scales: BFL "<prefix>.norm.{query,key}_norm.scale" <-> diffusers "<attn>.norm_{q,k,added_q,added_k}.weight".
_NORM_OUT = ("final_layer.adaLN_modulation.1", "norm_out.linear")   # shift/scale order differs: swap halves


def module_table(num_double: int, num_single: int, guidance: bool) -> list[ModuleMap]:
    """All Linear modules of a FLUX transformer, BFL name -> diffusers names."""
    table = list(_GLOBAL) + (list(_GUIDANCE) if guidance else [])
    for i in range(num_double):
        table += _double(i)
    for i in range(num_single):
        table += _single(i)
    return table


def _norm_pairs(num_double: int, num_single: int) -> list[tuple[str, str]]:
    pairs = []
    for i in range(num_double):
        d, t = f"double_blocks.{i}.", f"transformer_blocks.{i}.attn."
        pairs += [(d + "img_attn.norm.query_norm.scale", t + "norm_q.weight"),
                  (d + "img_attn.norm.key_norm.scale", t + "norm_k.weight"),
                  (d + "txt_attn.norm.query_norm.scale", t + "norm_added_q.weight"),
                  (d + "txt_attn.norm.key_norm.scale", t + "norm_added_k.weight")]
    for i in range(num_single):
        s, t = f"single_blocks.{i}.norm.", f"single_transformer_blocks.{i}.attn."
        pairs += [(s + "query_norm.scale", t + "norm_q.weight"), (s + "key_norm.scale", t + "norm_k.weight")]
    return pairs


def _count(keys: Iterable[str], pattern: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``model.diffusion_model.`` prefix (full ComfyUI checkpoints carry it)."""
    for p in BFL_PREFIXES:
        if any(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def is_bfl_transformer(sd: Mapping[str, Any]) -> bool:
    """True for a BFL-layout FLUX transformer state dict."""
    return any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in sd)


def detect_variant(sd: Mapping[str, Any]) -> str:
    """'dev' when the guidance embedding is present (BFL or diffusers names), else 'schnell'."""
    return "dev" if any("guidance_in." in k or "guidance_embedder." in k for k in sd) else "schnell"


def _default_rope(head_dim: int) -> list[int]:
    """Rotary axes for a head size when no config says otherwise: (16, 56, 56) at 128, even parts."""
    t = max(2, 2 * round(head_dim / 16))
    rest = head_dim - t
    y = 2 * (rest // 4)
    return [t, rest - y, y]


def infer_transformer_config(sd: Mapping[str, torch.Tensor], base: Optional[dict[str, Any]] = None
                             ) -> dict[str, Any]:
    """diffusers config from BFL weights: widths, depths, head size and guidance read from the tensors.

    ``base`` (a shipped or user config) supplies what weights cannot tell (rotary axes); it is used only
    when consistent with the weights' head size.
    """
    try:
        inner, in_ch = sd["img_in.weight"].shape
        head_dim = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
        joint = sd["txt_in.weight"].shape[1]
        pooled = sd["vector_in.in_layer.weight"].shape[1]
        out_ch = sd["final_layer.linear.weight"].shape[0]
    except KeyError as e:
        raise ModelLoadError(f"not a FLUX.1 BFL transformer: missing tensor {e.args[0]!r}") from None
    cfg = dict(base or {})
    rope = cfg.get("axes_dims_rope")
    if rope is None or sum(rope) != head_dim:
        rope = _default_rope(head_dim)
    cfg.update({
        "_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": int(in_ch),
        "out_channels": None if out_ch == in_ch else int(out_ch),
        "num_layers": _count(sd, r"double_blocks\.(\d+)\."), "num_single_layers": _count(sd, r"single_blocks\.(\d+)\."),
        "attention_head_dim": int(head_dim), "num_attention_heads": int(inner // head_dim),
        "joint_attention_dim": int(joint), "pooled_projection_dim": int(pooled),
        "guidance_embeds": detect_variant(sd) == "dev", "axes_dims_rope": list(rope),
    })
    return cfg


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def bfl_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL FLUX transformer state dict -> diffusers ``FluxTransformer2DModel`` state dict (exact, any width)."""
    sd = strip_prefix(sd)
    inner = sd["img_in.weight"].shape[0]
    nd, ns = _count(sd, r"double_blocks\.(\d+)\."), _count(sd, r"single_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for m in module_table(nd, ns, detect_variant(sd) == "dev"):
        for p in ("weight", "bias"):
            key = f"{m.bfl}.{p}"
            if key not in sd:
                raise ModelLoadError(f"FLUX.1 transformer: missing tensor {key!r} (truncated or not a BFL file?)")
            t = sd[key]
            used.add(key)
            if len(m.parts) == 1:
                out[f"{m.parts[0]}.{p}"] = t
                continue
            sizes = [inner] * len(m.parts)
            if m.bfl.endswith("linear1"):                       # q, k, v, then the MLP input (the rest)
                sizes[-1] = t.shape[0] - 3 * inner
            for name, piece in zip(m.parts, torch.split(t, sizes, dim=0)):
                out[f"{name}.{p}"] = piece.contiguous()
    for bfl, dif in _norm_pairs(nd, ns):
        out[dif] = sd[bfl]
        used.add(bfl)
    for p in ("weight", "bias"):
        out[f"{_NORM_OUT[1]}.{p}"] = _swap_halves(sd[f"{_NORM_OUT[0]}.{p}"])
        used.add(f"{_NORM_OUT[0]}.{p}")
    extra = sorted(set(sd) - used)
    if extra:
        raise ModelLoadError(f"FLUX.1 transformer: unexpected tensors such as {extra[0]!r} "
                             f"({len(extra)} in all); is this a FLUX.1 (not FLUX.2 / Chroma) file?")
    return out


def diffusers_to_bfl(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``FluxTransformer2DModel`` state dict -> BFL layout (q/k/v and q/k/v/mlp fused again)."""
    nd = _count(sd, r"transformer_blocks\.(\d+)\.")          # re.match: not the single_ ones
    ns = _count(sd, r"single_transformer_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    for m in module_table(nd, ns, detect_variant(sd) == "dev"):
        for p in ("weight", "bias"):
            out[f"{m.bfl}.{p}"] = torch.cat([sd[f"{n}.{p}"] for n in m.parts], dim=0).contiguous()
    for bfl, dif in _norm_pairs(nd, ns):
        out[bfl] = sd[dif]
    for p in ("weight", "bias"):
        out[f"{_NORM_OUT[0]}.{p}"] = _swap_halves(sd[f"{_NORM_OUT[1]}.{p}"])
    return out


# ----------------------------------------------------------------------------------------------- dtypes

def save_safetensors_atomic(sd: Mapping[str, torch.Tensor], path: Path,
                            metadata: Optional[dict[str, str]] = None) -> Path:
    """Write through :func:`lorakit.fsutil.atomic_path`, so an interrupted write never leaves a broken file."""
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
    return path


# ----------------------------------------------------------------------------------------------- public

def save_bfl_files(directory: str | os.PathLike[str], *, transformer: torch.nn.Module, clip_l: torch.nn.Module,
                   t5: torch.nn.Module, ae: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[str, Path]:
    """Write diffusers/transformers FLUX components as the usual ComfyUI files, in their real layouts.

    Returns {"checkpoint", "clip_l", "t5xxl", "ae"} -> path. Existing files are never overwritten.
    """
    root = Path(directory)
    tsd = transformer.state_dict()
    variant = detect_variant(tsd)
    files = {"checkpoint": root / f"flux1-{variant}.safetensors", "clip_l": root / "clip_l.safetensors",
             "t5xxl": root / "t5xxl_fp16.safetensors", "ae": root / "ae.safetensors"}
    for p in files.values():
        if p.exists():
            raise FileExistsError(f"{p}: already exists; choose an empty folder (lorakit never overwrites files)")

    def cast(sd: Mapping[str, torch.Tensor], dt: torch.dtype) -> dict[str, torch.Tensor]:
        return {k: (v.to(dt) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}

    save_safetensors_atomic(cast(diffusers_to_bfl(tsd), dtype), files["checkpoint"])
    csd = {("text_model." + k if not k.startswith("text_model.") else k): v
           for k, v in clip_l.state_dict().items() if not k.endswith("position_ids")}
    save_safetensors_atomic(cast(csd, torch.float16), files["clip_l"])
    t5sd = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_safetensors_atomic(cast(t5sd, torch.float16), files["t5xxl"])
    save_safetensors_atomic(cast(ae_diffusers_to_bfl(ae.state_dict()), dtype), files["ae"])
    return files
