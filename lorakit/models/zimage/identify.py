"""What a file in a Z-Image layout is (original or diffusers names), from its safetensors header's names and shapes
(``identify`` of docs/families.md; loading and `lorakit inspect` ask every family)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from lorakit.models.common import tensor_shape as _shape

from .convert import ZIMAGE_MARK, _count, strip_prefix, what_is


def identify(header: Mapping[str, Any]) -> Optional[Any]:
    """A FileKind for a Z-Image transformer (or its Omni / ControlNet relatives, which lorakit does not train), else
    None. ``header``: tensor name -> {"shape", "dtype"}."""
    from lorakit.models.base import FileKind  # the shared type (imported when asked)
    sd = strip_prefix(header)
    kind = what_is(sd)
    if kind in ("a Z-Image Omni transformer (SigLIP-conditioned)", "a Z-Image ControlNet"):
        return FileKind(f"{kind} (not trained by lorakit)")
    if ZIMAGE_MARK not in sd:
        return None
    x = sd.get("x_embedder.weight", sd.get("all_x_embedder.2-1.weight"))
    dim = _shape(x)[0] if x is not None else 0
    layers = _count(sd, "layers.")
    if (dim, layers) == (3840, 30):
        return FileKind("a Z-Image transformer (Turbo or base: their tensors are identical)", family="zimage")
    return FileKind(f"a Z-Image-layout transformer of another size (width {dim}, {layers} blocks)", family="zimage",
                    standard=False)
