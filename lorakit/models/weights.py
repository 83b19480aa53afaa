"""Checks of a diffusers / transformers weights folder before anything in it is loaded.

``model.allow_pickle = false`` (the default) means ".safetensors only" for folders too: a component folder whose
weights exist only as pickle files (``diffusion_pytorch_model.bin``, ``pytorch_model.bin``, ``.pt``, ``.ckpt``)
is refused with one line naming the file and the key, before diffusers or transformers would read it. Every
``.safetensors`` file in the folder has its header checked by the one header reader (a crafted or truncated
header is one line too, not a RecursionError from deep inside a loader).
"""

from __future__ import annotations

from pathlib import Path

from lorakit.errors import ConfigError
from lorakit.safetensors_header import read_safetensors_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights_folder(folder: Path, allow_pickle: bool, key: str = "model.checkpoint") -> None:
    """Refuse pickle-only components unless ``allow_pickle``; validate every safetensors header (two levels: the
    folder and its component subfolders)."""
    folder = Path(folder)
    dirs = [folder] + sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in dirs:
        files = sorted(p for p in d.iterdir() if p.is_file())
        safe = [p for p in files if p.suffix == ".safetensors"]
        for p in safe:
            read_safetensors_header(p)
        pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles and not safe and not allow_pickle:
            raise ConfigError(f"{key}: {pickles[0]} is a pickle file, which can run code when loaded, and "
                              f"{d.name}/ has no .safetensors weights; convert the folder to .safetensors or set "
                              "model.allow_pickle = true if you trust it")
