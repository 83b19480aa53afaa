"""What a file in a FLUX.2 layout is (BFL or diffusers names), from its header's names and shapes: the size from
the transformer's width (:func:`lorakit.models.flux2.convert.detect`), and the FLUX.3 layout told apart."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from lorakit.errors import ModelLoadError
from lorakit.models.base import FileKind

from .convert import PREFIXES, detect, layout, strip_prefix

NAMES = {"klein-4b": "FLUX.2 Klein 4B", "klein-9b": "FLUX.2 Klein 9B", "dev": "FLUX.2 dev"}


def identify(header: Mapping[str, Any]) -> Optional[FileKind]:
    """A FileKind for a FLUX.2 (or FLUX.3) transformer, else None."""
    sd = strip_prefix(header) if any(k.startswith(PREFIXES) for k in header) else dict(header)
    if "early_stream_modulations.image.lin.weight" in sd:
        return FileKind("a FLUX.3 transformer (not trained by lorakit yet)")
    if layout(sd) is None:
        return None
    try:
        shape = detect(sd)
    except ModelLoadError as exc:
        return FileKind(f"a FLUX.2 transformer lorakit cannot train ({str(exc).split(': ', 1)[-1]})")
    if shape.size == "custom":
        return FileKind(f"a FLUX.2-layout transformer of another size (width {shape.hidden})", family="flux2",
                        standard=False)
    return FileKind(f"a {NAMES.get(shape.size, 'FLUX.2 ' + shape.size)} transformer", family="flux2")
