"""What a file in an SD3 layout is (original or diffusers names), from its safetensors header's names and shapes
(``identify`` of docs/families.md; loading and `lorakit inspect` ask every family)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .convert import ENCODER_PREFIXES, detect, layout, strip_prefix, what_is

_NAMES = {"large": "an SD3.5 Large (or Large Turbo) checkpoint", "medium": "an SD3.5 Medium checkpoint",
          "sd3-medium": "an SD3 Medium (2024) checkpoint"}


def identify(header: Mapping[str, Any]) -> Optional[Any]:
    """A FileKind for an SD3 transformer or bundled checkpoint (or an SD3 ControlNet, not trained), else None."""
    from lorakit.models.base import FileKind  # the shared type (imported when asked)
    keys = [k for k in header if k != "__metadata__"]
    sd = strip_prefix({k: header[k] for k in keys if not k.startswith(tuple(ENCODER_PREFIXES.values()))})
    if layout(sd) == "unknown":
        if what_is(sd) == "an SD3 ControlNet" or (any(k.startswith("controlnet_blocks.") for k in sd)
                                                  and any(k.startswith("transformer_blocks.") for k in sd)):
            return FileKind("an SD3 ControlNet (not trained by lorakit)")
        return None
    try:
        shape = detect(sd, "header")
    except Exception:  # noqa: BLE001  (a truncated header: not ours to describe)
        return None
    bundled = [r for r, p in ENCODER_PREFIXES.items() if any(k.startswith(p) for k in keys)]
    extra = f" with {', '.join(bundled)} bundled" if bundled else ""
    if shape.variant in _NAMES:
        return FileKind(_NAMES[shape.variant] + extra, family="sd3")
    return FileKind(f"an SD3-layout transformer of another size (width {shape.width}, {shape.depth} blocks)" + extra,
                    family="sd3", standard=False)
