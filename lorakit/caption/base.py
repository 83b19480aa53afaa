"""The captioner interface and what every back-end shares (device choice, the missing-file message)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, Sequence, Union

from PIL import Image

from lorakit.errors import ModelLoadError

Raw = Union[str, list[str]]   # a sentence, or tags ordered most confident first


class Captioner(Protocol):
    """Captions a batch of RGB images. ``kind`` says what ``caption`` returns: 'tags' (lists) or 'sentence'."""

    name: str
    kind: Literal["tags", "sentence"]

    def caption(self, images: Sequence[Image.Image]) -> list[Raw]: ...


def require(path: Path, files: Sequence[str], what: str, where: str) -> None:
    """One line naming the first missing file of a model folder and where to get it (offline, nothing is fetched).

    ``files`` entries may be alternatives separated by '|' (``model.safetensors|model.safetensors.index.json``).
    """
    if not path.exists():
        raise ModelLoadError(f"{path}: not found; put the {what} there ({where})")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: the {what} is a folder ({', '.join(f.split('|')[0] for f in files)}); "
                             f"give that folder ({where})")
    for name in files:
        options = name.split("|")
        if not any((path / o).is_file() for o in options):
            raise ModelLoadError(f"{path / options[0]}: missing; the {what} folder needs "
                                 f"{' or '.join(options)} ({where})")


def pick_device(device: str | None) -> str:
    """'cuda' when a GPU is there (captioning batches on it), else 'cpu'; an explicit choice is checked."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device}: no CUDA device is available; use --device cpu")
    return device
