"""Checks of a diffusers / transformers weights folder before anything in it is loaded.

``model.allow_pickle = false`` (the default) means ".safetensors only" for folders too: a component folder whose
weights exist only as pickle files (``diffusion_pytorch_model.bin``, ``pytorch_model.bin``, ``.pt``, ``.ckpt``)
is refused with one line naming the file and the key, before diffusers or transformers would read it. Every
``.safetensors`` file in the folder has its header checked by the one header reader (a crafted or truncated
header is one line too, not a RecursionError from deep inside a loader).

Also the one weights reader (:func:`load_safetensors`), the fp8 upcast (:func:`upcast`) and the meta-device
assign-loads (:func:`assign_weights`, :func:`assign_weights_rotary`) every family's loader uses (torch is imported
inside them, so this module stays light).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.safetensors_header import QUANT_AUX as _QUANT_AUX  # ComfyUI's scale / quantization tensors
from lorakit.safetensors_header import read_safetensors_header

if TYPE_CHECKING:
    import torch
    from torch import nn

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights_folder(folder: Path, allow_pickle: bool, key: str = "model.checkpoint") -> None:
    """Refuse pickle-only components unless ``allow_pickle``; validate every safetensors header (two levels: the
    folder and its component subfolders)."""
    from lorakit.models.common import folder_weights, keyed

    folder = Path(folder)
    dirs = [folder] + sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in dirs:
        files = sorted(p for p in d.iterdir() if p.is_file())
        safe = [p for p in files if p.suffix == ".safetensors"]
        if any(d.glob("*.safetensors.index.json")):
            folder_weights(d, key)  # a shard the index lists is missing: named now, with the key
        with keyed(key):  # a truncated shard: the header reader's line, with the key
            for p in safe:
                read_safetensors_header(p)
        pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles and not safe and not allow_pickle:
            raise ConfigError(f"{key}: {pickles[0]} is a pickle file, which can run code when loaded, and "
                              f"{d.name}/ has no .safetensors weights; convert the folder to .safetensors or set "
                              "model.allow_pickle = true if you trust it")


# ------------------------------------------------------------------------------------- reading, dtypes, assign
# Shared by every family's loader (moved here from flux1/zimage so that no family imports another).

def load_safetensors(path: str | os.PathLike[str], allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file; pickle formats only when the user allowed them (they can run code)."""
    import torch

    from lorakit.safetensors_header import GGUF_WHY, weights_format

    p = Path(path)
    if p.is_dir():
        raise ModelLoadError(f"{p}: is a folder; give the .safetensors file itself (in a diffusers component folder: "
                             "its diffusion_pytorch_model.safetensors or model.safetensors)")
    if not p.is_file():
        raise ModelLoadError(f"{p}: file not found")
    kind = weights_format(p)  # by the content, not the name: BFL's .sft files are safetensors, a renamed GGUF is not
    if kind == "safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(p))
        except Exception as e:  # header errors, truncation
            read_safetensors_header(p)  # the one header reader's line ("truncated file: tensor ... ends at byte ...")
            raise ModelLoadError(f"{p}: not a readable .safetensors file ({e})") from None
    if kind == "gguf":
        raise ModelLoadError(f"{p}: {GGUF_WHY}")
    if kind != "pickle":
        read_safetensors_header(p)  # "too short for a header", "not a safetensors file (header length ...)"
        raise ModelLoadError(f"{p}: not a weights file lorakit reads (neither safetensors nor a PyTorch pickle)")
    if not allow_pickle:
        raise ModelLoadError(f"{p}: only .safetensors files are loaded; set model.allow_pickle = true to load "
                             "pickle-based files (unsafe: they can run code)")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (a truncated or damaged pickle: one line naming it)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(f"{p}: damaged pickle file, cannot be read ({type(e).__name__}: {first})") from None
    obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{p}: the pickle holds no state dict of tensors ({type(obj).__name__}); give the "
                             "model's weights as a .safetensors file")
    return obj


def _quant_format(v: torch.Tensor) -> str:
    """The ``format`` of a ComfyUI ``x.comfy_quant`` tensor (JSON bytes), or "?"."""
    import json
    try:
        return str(json.loads(bytes(v.flatten().tolist()).decode("utf-8")).get("format", "?"))
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        return "?"


def upcast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast floating tensors to ``dtype``; fp8 tensors are upcast with their ComfyUI scale if present.

    "Scaled fp8" files store ``W = w_fp8 * scale``: the scale as ``x.scale_weight`` (older ComfyUI files) or
    ``x.weight_scale`` (the mixed-precision layout, ``x.comfy_quant`` saying ``float8_e4m3fn``), one per tensor or
    one per output row; plain e4m3 files have no scale. A layer quantized otherwise (nvfp4, int8 blocks: packed
    integers, block scales) cannot be read as weights: one ModelLoadError line naming the tensor and the format.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(".comfy_quant"):
            fmt = _quant_format(v)
            if not fmt.startswith("float8"):
                raise ModelLoadError(f"tensor {k[: -len('.comfy_quant')] + '.weight'!r} is quantized as {fmt} "
                                     "(ComfyUI's mixed-precision layout), which lorakit cannot train on; use the "
                                     "bf16, fp16 or fp8 file of this model")
    for k, v in sd.items():
        if k == "scaled_fp8" or k.endswith(_QUANT_AUX):
            continue
        stem = k[: -len("weight")] if k.endswith(".weight") else None
        scale = next((sd[stem + n] for n in ("scale_weight", "weight_scale") if stem and stem + n in sd), None)
        if scale is not None and (not v.is_floating_point() or v.element_size() != 1):
            if not v.is_floating_point():
                raise ModelLoadError(f"tensor {k!r} is stored as packed {v.dtype} with a scale (a quantized layout "
                                     "such as nvfp4 or int8), which lorakit cannot train on; use the bf16, fp16 or "
                                     "fp8 file of this model")
            scale = None  # a 16-bit weight kept unquantized in a mixed file: its scale is 1
        if v.is_floating_point():
            if scale is not None:
                s = scale.to(torch.float32)
                if s.numel() > 1:
                    if s.numel() != v.shape[0]:
                        raise ModelLoadError(f"tensor {k!r} has a scale of shape {tuple(scale.shape)} (block-wise "
                                             "quantization), which lorakit cannot read; use the bf16, fp16 or fp8 "
                                             "file of this model")
                    s = s.reshape(-1, *([1] * (v.ndim - 1)))
                v = v.to(torch.float32) * s
            v = v.to(dtype)
        out[k] = v
    return out


def _fill_meta_buffers(model: nn.Module, where: str) -> None:
    """Non-persistent buffers stay on meta after an assign-load; rebuild the known ones, refuse the rest."""
    import torch

    for name, mod in model.named_modules():
        for bname, buf in list(mod.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta:
                if bname == "position_ids":
                    mod.register_buffer(bname, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
                else:
                    raise ModelLoadError(f"{where}: internal error, buffer {name}.{bname} was not loaded")
    for pname, p in model.named_parameters():
        if p.is_meta:
            raise ModelLoadError(f"{where}: tensor {pname!r} is missing from the file")


def assign_weights(model: nn.Module, sd: dict[str, torch.Tensor], where: str, dtype: torch.dtype) -> nn.Module:
    """Load ``sd`` into a meta-device ``model`` (strict but for ``position_ids``, which are rebuilt), cast to
    ``dtype``, freeze, eval mode (FLUX.1's CLIP / T5 / AE / transformer, SD3's encoders)."""
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if unexpected:
        raise ModelLoadError(f"{where}: unexpected tensors such as {sorted(unexpected)[0]!r} "
                             f"({len(unexpected)} in all); wrong file for this role?")
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing:
        raise ModelLoadError(f"{where}: missing tensors such as {sorted(real_missing)[0]!r} "
                             f"({len(real_missing)} in all); truncated or wrong file?")
    _fill_meta_buffers(model, where)
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model.to(dtype)
    model.requires_grad_(False)
    return model.eval()


def assign_weights_rotary(model: nn.Module, sd: dict[str, torch.Tensor], where: str, dtype: torch.dtype
                          ) -> nn.Module:
    """Load ``sd`` into a meta-device ``model`` (assign, strict), rebuild rotary tables, freeze (Z-Image,
    Qwen-Image: their transformers and Qwen text encoders)."""
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if unexpected:
        raise ModelLoadError(f"{where}: unexpected tensors such as {sorted(unexpected)[0]!r} ({len(unexpected)} in "
                             "all); is this the right file for this role?")
    if missing:
        raise ModelLoadError(f"{where}: missing tensors such as {sorted(missing)[0]!r} ({len(missing)} in all); "
                             "truncated or wrong file?")
    for name, mod in list(model.named_modules()):
        metas = [b for b, t in mod.named_buffers(recurse=False) if t is not None and t.is_meta]
        if metas and type(mod).__name__.endswith("RotaryEmbedding"):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], type(mod)(config=mod.config))
        elif metas:
            raise ModelLoadError(f"{where}: internal error, buffer {name}.{metas[0]} was not loaded")
    model.to(dtype)
    model.requires_grad_(False)
    return model.eval()
