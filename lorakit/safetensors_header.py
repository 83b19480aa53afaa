"""The one reader of safetensors headers: validated before anything is allocated.

A ``.safetensors`` file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON (tensor name →
``{"dtype", "shape", "data_offsets"}``, plus an optional ``"__metadata__"`` of strings), then the tensor data.
:func:`read_safetensors_header` checks that header without trusting it, so a truncated, corrupt or crafted
file gives one :class:`~lorakit.errors.ModelLoadError` line naming the file instead of a crash, a huge
allocation or a deep recursion. :func:`raw_header` returns the header bytes unparsed (for fingerprints).

Layer-neutral (standard library only): data, lora, models and train all import it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

from lorakit.errors import ModelLoadError

PathLike = Union[str, os.PathLike]

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest header accepted (safetensors' own limit); a real one is a few hundred KiB."""

MAX_HEADER_DEPTH = 8
"""Deepest JSON nesting accepted; a valid header needs 3 (object → entry → shape list)."""

# bytes per element of every dtype name the safetensors format defines that torch can hold
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


def _fail(path: PathLike, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: {why}")


GGUF_WHY = ("a GGUF file (quantized weights, as ComfyUI-GGUF and llama.cpp read them); lorakit trains on .safetensors "
            "weights (bf16, fp16 or fp8), not GGUF: give the model's .safetensors release")
PICKLE_WHY = "a PyTorch pickle file (.ckpt / .pt / .bin content), not a .safetensors file, whatever its name says"


# what ComfyUI's quantized files hold beside the weights: the older "scaled fp8" (``x.scale_weight``, ``x.scale_input``,
# a ``scaled_fp8`` marker) and the newer mixed-precision layout (``x.weight_scale``, ``x.input_scale``, a per-layer
# ``x.comfy_quant`` JSON of its format, ``_quantization_metadata`` in the header)
QUANT_AUX = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale", ".comfy_quant", ".weight_scale_2")


def quantized_tensor(names) -> Optional[str]:
    """The first tensor name (or the ``scaled_fp8`` marker) of a scaled-fp8 / quantized file, None for plain weights."""
    return next((k for k in names if k == "scaled_fp8" or k.endswith(QUANT_AUX)), None)


def _kind_of_head(head: bytes) -> str:
    if len(head) >= 9:  # first: a header length of 640 starts with the bytes 0x80 0x02, a pickle's first two
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= MAX_HEADER_BYTES and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04" or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "pickle"  # torch.save's zip container, or a bare pickle (protocol 2-5)
    return "other"


def weights_format(path: PathLike) -> str:
    """What a weights file is by its first bytes, never its name: ``"safetensors"`` (also a truncated one, and
    BFL's ``.sft`` files), ``"gguf"``, ``"pickle"`` (torch.save's zip or a bare pickle), ``"other"``; ``"missing"``
    for a path that is not a readable file."""
    try:
        with open(path, "rb") as fh:
            return _kind_of_head(fh.read(9))
    except OSError:
        return "missing"


def is_pickle(path: PathLike) -> bool:
    """Whether ``path`` is a PyTorch pickle file (``.ckpt`` / ``.pt`` / ``.bin``) by its content, whatever its name."""
    return Path(path).is_file() and weights_format(path) == "pickle"


def is_safetensors(path: PathLike) -> bool:
    """Whether ``path`` is a file in the safetensors format (by its content: ``x.sft`` is, ``x.safetensors``
    holding a pickle or a GGUF is not)."""
    return Path(path).is_file() and weights_format(path) == "safetensors"


def raw_header(fh: BinaryIO, size: int) -> Optional[bytes]:
    """The header bytes of an open file of ``size`` bytes (read from its start), or None when the length
    field is missing, zero, over :data:`MAX_HEADER_BYTES` or past the end of the file. Never parses it."""
    fh.seek(0)
    head = fh.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    if not 0 < n <= MAX_HEADER_BYTES or 8 + n > size:
        return None
    return fh.read(n)


def _too_deep(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests dicts/lists deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def read_safetensors_header(path: PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Read and validate the header of a .safetensors file without reading any tensor data.

    Returns (tensor name → {"dtype", "shape", "data_offsets"}, metadata). Usable on multi-GB base models.
    Checks: header length sane (≤ 100 MB and inside the file), JSON object nested at most
    :data:`MAX_HEADER_DEPTH` deep, metadata str → str, known dtypes, integer shapes, offsets inside the data
    section, byte span == elements × dtype size, no overlaps. Raises :class:`ModelLoadError` naming the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _fail(path, f"not a safetensors file ({size} bytes, too short for a header)")
            kind = _kind_of_head(head + fh.read(1))
            if kind in ("gguf", "pickle"):
                raise _fail(path, GGUF_WHY if kind == "gguf" else PICKLE_WHY)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise _fail(path, f"not a safetensors file (header length {n} is over {MAX_HEADER_BYTES} bytes)")
            if 8 + n > size:
                raise _fail(path, f"truncated or not a safetensors file (header of {n} bytes, file of {size})")
            fh.seek(8)
            raw = fh.read(n)
    except FileNotFoundError as e:  # the same words as the LoRA reader's (lorakit/lora/io.py)
        raise _fail(path, "no such file") from e
    except OSError as e:
        raise _fail(path, f"cannot read ({e.strerror or e})") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise _fail(path, f"corrupt safetensors header (JSON nested more than {MAX_HEADER_DEPTH} deep)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"corrupt safetensors header (not JSON: {e})") from e
    if not isinstance(header, dict):
        raise _fail(path, "corrupt safetensors header (not a JSON object)")
    if _too_deep(header, MAX_HEADER_DEPTH):
        raise _fail(path, f"corrupt safetensors header (JSON nested more than {MAX_HEADER_DEPTH} deep)")
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


MAX_METADATA_JSON_DEPTH = 32
"""Deepest JSON accepted inside one metadata value (kohya's ss_tag_frequency nests 2 deep)."""


def metadata_json(value: str) -> Any:
    """A ``__metadata__`` value parsed as JSON. ValueError (never a RecursionError) when it is not JSON or nests
    deeper than :data:`MAX_METADATA_JSON_DEPTH`: a crafted value such as 100,000 ``[`` is refused, not followed."""
    try:
        parsed = json.loads(value)
    except RecursionError:
        raise ValueError(f"JSON nested more than {MAX_METADATA_JSON_DEPTH} deep") from None
    if _too_deep(parsed, MAX_METADATA_JSON_DEPTH):
        raise ValueError(f"JSON nested more than {MAX_METADATA_JSON_DEPTH} deep")
    return parsed
