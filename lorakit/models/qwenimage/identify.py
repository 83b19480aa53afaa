"""What a file in a Qwen-Image layout is, from its safetensors header's names and shapes (``identify`` of
docs/families.md; loading and `lorakit inspect` ask every family). Qwen-Image-Edit's transformer has exactly
Qwen-Image's tensors, so a header cannot tell them apart (the loader refuses Edit by its folder or file name);
Qwen-Image-Layered and Qwen-Image 2.1 have tensors of their own and are named as such."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .convert import detect, strip_prefix, what_is


def identify(header: Mapping[str, Any]) -> Optional[Any]:
    """A FileKind for a Qwen-Image transformer, its relatives, or its Qwen2.5-VL / Wan-VAE components; else None.
    ``header``: tensor name -> {"shape", "dtype"}."""
    from lorakit.models.base import FileKind  # the shared type (imported when asked)
    keys = [k for k in header if k != "__metadata__"]
    kind = what_is(keys)
    if kind in ("a Qwen-Image-Layered transformer", "a Qwen-Image 2.1 transformer"):
        return FileKind(f"{kind} (not trained by lorakit)")
    if kind == "a Wan / Qwen-Image autoencoder" and any(k.startswith("decoder.middle.") for k in keys):
        return FileKind("a Wan 2.1 / Qwen-Image autoencoder (model.vae of qwenimage)", role="component")
    if kind == "a Qwen2 / Qwen2.5-VL text encoder" and any(k.startswith(("visual.", "model.visual.")) for k in keys):
        return FileKind("a Qwen2.5-VL text encoder (model.text_encoder of qwenimage)", role="component")
    if kind != "a Qwen-Image transformer":
        return None
    shape = detect({k: v for k, v in strip_prefix(header).items() if k != "__metadata__"}, "header")
    if (shape.dim, shape.num_layers, shape.text_dim) == (3072, 60, 3584):
        return FileKind("a Qwen-Image transformer (Qwen-Image-Edit has the same tensors; lorakit trains Qwen-Image)",
                        family="qwenimage")
    return FileKind(f"a Qwen-Image-layout transformer of another size (width {shape.dim}, {shape.num_layers} blocks)",
                    family="qwenimage", standard=False)
