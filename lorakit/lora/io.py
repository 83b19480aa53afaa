"""Reading and writing LoRA files safely, and the hashes kohya/A1111/CivitAI use to identify them.

* Writes go through :func:`lorakit.fsutil.atomic_path` (temp file, fsync, ``os.replace``, the user's umask):
  a crash leaves either the old file or the new one, never half of one.
* Reads check the header with :func:`lorakit.safetensors_header.read_safetensors_header` before anything is
  allocated, so a truncated or crafted file gives a one-line ``ModelLoadError`` naming the file.
* Pickle formats (.ckpt/.pt/.bin/.pth) can run code when loaded and are refused unless explicitly allowed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Union

import safetensors.torch
import torch

from lorakit.errors import ModelLoadError
from lorakit.fsutil import atomic_path, fsync_dir  # noqa: F401  (fsync_dir: re-exported for older callers)
from lorakit.safetensors_header import DTYPE_SIZES, raw_header, read_safetensors_header

PathLike = Union[str, os.PathLike]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


# ------------------------------------------------------------------------------------------------ write


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two entries sharing storage (safetensors refuses shared tensors, which
    exporters easily produce with views, e.g. one down matrix reused for split q/k/v)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def save_safetensors_atomic(path: PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *,
                            overwrite: bool = True) -> None:
    """Write ``tensors`` + ``metadata`` to ``path`` atomically (temp file in the same folder, fsync, replace).

    Tensors are moved to the CPU and made contiguous; every metadata value must already be a ``str`` (the
    format only allows strings, and silently ``str()``-ing a dict would write Python repr instead of JSON).
    With ``overwrite=False`` an existing file is an error (never clobber something the user made).
    """
    path = Path(path)
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    assert not bad, f"metadata values must be str; not str: {bad[:5]}"
    prepared = _prepare(tensors)
    with atomic_path(path, overwrite=overwrite) as tmp:
        safetensors.torch.save_file(prepared, str(tmp), metadata=metadata)


# ------------------------------------------------------------------------------------------------- read


def _fail(path: PathLike, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: {why}")


# the names diffusers' own training scripts write (convert_state_dict_to_diffusers: SDXL / SD 1.5 DreamBooth LoRAs;
# older attention-processor files ``…processor.to_q_lora.down.weight``) for the pair PEFT names lora_A / lora_B
_DIFFUSERS_SCRIPT_SUFFIXES = ((".lora.down.weight", ".lora_A.weight"), (".lora.up.weight", ".lora_B.weight"),
                              (".lora_linear_layer.down.weight", ".lora_A.weight"),
                              (".lora_linear_layer.up.weight", ".lora_B.weight"),
                              ("_lora.down.weight", ".lora_A.weight"), ("_lora.up.weight", ".lora_B.weight"))


def canonical_pair_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with diffusers' training-script pair names (``x.lora.down.weight``, ``x.lora_linear_layer.up.weight``,
    ``x.to_q_lora.down.weight``) as ``x.lora_A.weight`` / ``x.lora_B.weight``, the names every reader here knows (the
    same factors: diffusers' converter and ComfyUI read both); other keys, and any name that would collide, unchanged."""
    renamed = pair_renames(tensors)
    return {renamed.get(key, key): value for key, value in tensors.items()}


def pair_renames(keys: Any) -> dict[str, str]:
    """file key -> the name :func:`canonical_pair_names` gives it, for the keys it renames ({} when a name would
    collide); the reverse map shows a report in the file's own names."""
    renamed = {}
    for key in keys:
        for old, new in _DIFFUSERS_SCRIPT_SUFFIXES:
            if key.endswith(old) and not key.endswith(".lora_down.weight") and not key.endswith(".lora_up.weight"):
                renamed[key] = key[: -len(old)] + new
                break
    if len(set(renamed.values())) != len(renamed) or set(renamed.values()) & (set(keys) - set(renamed)):
        return {}
    return renamed


def load_lora_file(path: PathLike, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a LoRA file → (tensors on the CPU, metadata).

    Pickle-based files are refused unless ``allow_pickle``; even then they are read with
    ``torch.load(weights_only=True)`` (plain tensors only), and they carry no metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise _fail(path, f"{path.suffix} files are Python pickles that can run code when loaded; convert it "
                              "to .safetensors, or set model.allow_pickle = true if you trust its source")
        return canonical_pair_names(_load_pickle(path)), {}
    _, metadata = read_safetensors_header(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # the header passed, so this is a damaged data section or an exotic dtype
        raise _fail(path, f"cannot load tensors ({e})") from e
    return canonical_pair_names(tensors), metadata


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _fail(path, f"cannot load as a plain tensor file ({type(e).__name__}); it holds more than tensors") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise _fail(path, "does not hold a flat name → tensor dictionary")
    return obj


# ------------------------------------------------------------------------------------------------ hashes


def model_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of a LoRA as kohya writes them (kohya-format.md §4).

    Both hash one in-memory safetensors serialisation of ``tensors`` (already in the save dtype) whose header
    carries only the ``ss_*`` entries of ``metadata``:

    * sshs_model_hash: full SHA-256 hex of the bytes after the 8-byte length and the JSON header, i.e. the
      tensor data only (so it does not change when metadata changes; CivitAI's "AutoV3").
    * sshs_legacy_hash: the first 8 hex digits of the SHA-256 of the 0x10000 bytes at offset 0x100000 of that
      serialisation (A1111's old "addnet" hash; a file shorter than 1 MiB hashes the empty string).

    Interpretation: the byte layout is the one ``safetensors.torch.save`` produces (the same library kohya
    uses), so the hashes match kohya's for the same tensors and ss_* metadata.
    """
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    prepared = _prepare(tensors)
    blob = safetensors.torch.save(prepared, metadata=ss_only)
    header = raw_header(io.BytesIO(blob), len(blob))
    assert header is not None, "safetensors.torch.save wrote no header"
    model_hash = hashlib.sha256(blob[8 + len(header):]).hexdigest()
    legacy = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def file_legacy_hash(path: PathLike) -> str:
    """A1111's old model hash (ss_sd_model_hash): SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex."""
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Full-file SHA-256 hex (ss_new_sd_model_hash, CivitAI's "SHA256"), streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk_size)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- streaming

TORCH_TO_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}
for _name in ("float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        TORCH_TO_ST[getattr(torch, _name)] = "F8_E4M3" if _name.endswith("e4m3fn") else "F8_E5M2"


def save_safetensors_streaming(path: PathLike, entries: list[tuple[str, str, list[int]]], produce,
                               metadata: dict[str, str]) -> None:
    """Write a safetensors file one tensor at a time (RAM: one tensor), atomically.

    ``entries``: (name, safetensors dtype, shape) in file order; ``produce(name)`` returns that tensor (its dtype
    and shape must match the entry). The header is laid out first from the entries, so nothing is held back.
    """
    path = Path(path)
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        n = math.prod(shape) * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # the one atomic writer: umask mode, fsync, rename
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name, dtype, shape in entries:
            t = produce(name).detach().to("cpu").contiguous()
            if TORCH_TO_ST.get(t.dtype) != dtype or list(t.shape) != list(shape):
                raise ValueError(f"{name}: produced {t.dtype}{list(t.shape)}, header says {dtype}{shape}")
            fh.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
