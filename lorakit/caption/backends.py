"""Captioner name → back-end; each loads from a local folder (``--model``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lorakit.caption.base import Captioner, pick_device
from lorakit.errors import ModelLoadError

CAPTIONERS = ("wd14", "florence2", "vlm", "blip", "toy")


def load_captioner(name: str, model: Optional[str | Path] = None, *, device: Optional[str] = None,
                   **options: Any) -> Captioner:
    """Build captioner ``name`` from the folder ``model`` (``toy``: the shipped toy captioner, no folder needed)."""
    device = pick_device(device)
    asked = name
    if name == "toy":
        from lorakit.caption.toy import TOY_CAPTIONER

        if model is not None and not Path(model).expanduser().exists():
            raise ModelLoadError(f"--model: {model} not found; --captioner toy uses the toy captioner lorakit ships "
                                 "(leave --model out)")
        name, model = "blip", model or TOY_CAPTIONER
    if name not in CAPTIONERS:
        raise ModelLoadError(f"--captioner: {name!r} is not one of {', '.join(CAPTIONERS)}")
    if model is None:
        raise ModelLoadError(f"--model: give the folder of the {name} captioner (lorakit downloads nothing)")
    folder = Path(model).expanduser()
    if name == "wd14":
        from lorakit.caption.tagger import TagOptions, WD14Tagger

        return WD14Tagger(folder, TagOptions(**options), device=device)
    from lorakit.caption import hf

    cls = {"florence2": hf.Florence2Captioner, "vlm": hf.VLMCaptioner, "blip": hf.BlipCaptioner}[name]
    captioner = cls(folder, device=device, **options)
    if asked == "toy":
        captioner.name = "toy (BLIP)"  # the progress line names the captioner asked for
    return captioner
