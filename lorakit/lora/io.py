"""Reading and writing LoRA files safely, and the hashes kohya/A1111/CivitAI use to identify them.

* Writes are atomic: a temporary file in the target folder, flushed and fsynced, then ``os.replace``; a crash
  leaves either the old file or the new one, never half of one.
* Reads check the safetensors header before anything is allocated, so a truncated or crafted file gives a
  one-line ``ModelLoadError`` naming the file instead of a crash or a huge allocation.
* Pickle formats (.ckpt/.pt/.bin/.pth) can run code when loaded and are refused unless explicitly allowed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Union

import safetensors.torch
import torch

from lorakit.errors import LorakitError, ModelLoadError

PathLike = Union[str, os.PathLike]

MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# bytes per element of every dtype name the safetensors format defines that torch can hold
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


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


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    if path.exists() and not overwrite:
        raise LorakitError(f"{path}: already exists; choose another save.name or move the file away")
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(tensors)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        safetensors.torch.save_file(prepared, tmp, metadata=metadata)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


# ------------------------------------------------------------------------------------------------- read


def _fail(path: PathLike, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: {why}")


def read_safetensors_header(path: PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Read and validate the header of a .safetensors file without reading any tensor data.

    Returns (tensor name → {"dtype", "shape", "data_offsets"}, metadata). Usable on multi-GB base models.
    Checks: header length sane (< 100 MB and inside the file), JSON object, metadata str → str, known dtypes,
    integer shapes, offsets inside the data section, byte span == elements × dtype size, no overlaps.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _fail(path, f"not a safetensors file ({size} bytes, too short for a header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise _fail(path, f"not a safetensors file (header length {n} is over {MAX_HEADER_BYTES} bytes)")
            if 8 + n > size:
                raise _fail(path, f"truncated or not a safetensors file (header of {n} bytes, file of {size})")
            raw = fh.read(n)
    except OSError as e:
        raise _fail(path, f"cannot read ({e.strerror or e})") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"corrupt safetensors header (not JSON: {e})") from e
    if not isinstance(header, dict):
        raise _fail(path, "corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise _fail(path, "corrupt safetensors header (__metadata__ must map strings to strings)")
    data_size = size - 8 - n
    spans = []
    for name, info in header.items():
        _check_entry(path, name, info, data_size)
        spans.append((info["data_offsets"][0], info["data_offsets"][1], name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _fail(path, f"corrupt safetensors header (tensors {n0!r} and {n1!r} overlap)")
    return header, metadata


def _check_entry(path: Path, name: str, info: Any, data_size: int) -> None:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise _fail(path, f"corrupt safetensors header (entry {name!r} lacks dtype/shape/data_offsets)")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise _fail(path, f"tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _fail(path, f"corrupt safetensors header (tensor {name!r} has shape {shape!r})")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _fail(path, f"corrupt safetensors header (tensor {name!r} has offsets {offsets!r})")
    if offsets[1] > data_size:
        raise _fail(path, f"truncated file: tensor {name!r} ends at byte {offsets[1]} of a {data_size}-byte "
                          "data section")
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise _fail(path, f"corrupt safetensors header (tensor {name!r} is {dtype}{shape} = {nbytes} bytes "
                          f"but spans {offsets[1] - offsets[0]})")


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
        return _load_pickle(path), {}
    _, metadata = read_safetensors_header(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # the header passed, so this is a damaged data section or an exotic dtype
        raise _fail(path, f"cannot load tensors ({e})") from e
    return tensors, metadata


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
    (n,) = struct.unpack("<Q", blob[:8])
    model_hash = hashlib.sha256(blob[8 + n:]).hexdigest()
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
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for name, dtype, shape in entries:
                t = produce(name).detach().to("cpu").contiguous()
                if TORCH_TO_ST.get(t.dtype) != dtype or list(t.shape) != list(shape):
                    raise ValueError(f"{name}: produced {t.dtype}{list(t.shape)}, header says {dtype}{shape}")
                fh.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
