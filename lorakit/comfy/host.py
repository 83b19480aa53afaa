"""What the nodes use of ComfyUI itself, imported lazily so that lorakit imports (and is tested) without it.

ComfyUI is no package: inside ComfyUI, ``folder_paths``, ``comfy.utils`` and ``comfy.model_management`` are top-level
modules of its folder. Outside (tests, ``python -m lorakit.comfy``) each function here falls back to a stated default:
no model folders, no progress bar, never interrupted, nothing to free. The calls are the ones ComfyUI's own nodes make
(read from ComfyUI's source; the commit is named in tests/unit/comfyui_rederived.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("lorakit.comfy")

# lorakit's model-file keys → the ComfyUI model folders offered for them (folder_paths names; the first that exists)
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoint": ("checkpoints", "diffusion_models"),
    "vae": ("vae",),
    "ae": ("vae",),
    "clip_l": ("text_encoders", "clip"),
    "t5xxl": ("text_encoders", "clip"),
    "text_encoder": ("text_encoders", "clip"),
    "clip_g": ("text_encoders", "clip"),
}


def folder_paths() -> Any:
    """ComfyUI's ``folder_paths`` module, or None outside ComfyUI."""
    try:
        import folder_paths as fp  # type: ignore[import-not-found]
    except ImportError:
        return None
    return fp


def filenames(folder: str) -> list[str]:
    """``folder_paths.get_filename_list(folder)``; [] outside ComfyUI or for a folder name it does not know."""
    fp = folder_paths()
    if fp is None:
        return []
    try:
        return list(fp.get_filename_list(folder))
    except KeyError:  # an older ComfyUI without this folder name ("text_encoders" was "clip")
        return []


def model_choices(key: str) -> list[str]:
    """The file names a model-file widget offers: every file of the key's folders, sorted, without duplicates."""
    out: list[str] = []
    for folder in MODEL_FOLDERS[key]:
        out += [n for n in filenames(folder) if n not in out]
    return sorted(out)


def model_path(key: str, name: str) -> Path:
    """The full path of a file picked in a model-file widget (``folder_paths.get_full_path``), searched in the key's
    folders in order; a clear error when ComfyUI has no such file (moved or deleted since the graph was made)."""
    from lorakit.errors import ConfigError

    fp = folder_paths()
    if fp is not None:
        for folder in MODEL_FOLDERS[key]:
            try:
                full = fp.get_full_path(folder, name)
            except KeyError:
                full = None
            if full:
                return Path(full)
    raise ConfigError(f"model.{key}: {name!r} is not in ComfyUI's {' or '.join(MODEL_FOLDERS[key])} folder "
                      "(refresh the node, or pick another file)")


def loras_dir() -> Optional[Path]:
    """ComfyUI's first ``loras`` folder (where LoraLoader looks), or None outside ComfyUI."""
    fp = folder_paths()
    if fp is None:
        return None
    try:
        folders = fp.get_folder_paths("loras")
    except KeyError:
        return None
    return Path(folders[0]) if folders else None


class _NoBar:
    def update_absolute(self, value: int, total: Optional[int] = None, preview: Any = None) -> None:
        pass


def progress_bar(total: int) -> Any:
    """``comfy.utils.ProgressBar(total)`` (the bar on the node in ComfyUI's page); a no-op outside ComfyUI."""
    try:
        from comfy.utils import ProgressBar  # type: ignore[import-not-found]
    except ImportError:
        return _NoBar()
    return ProgressBar(max(int(total), 1))


def check_interrupted() -> None:
    """Raises ComfyUI's InterruptProcessingException when the user pressed Cancel (ComfyUI's own check, which also
    clears the flag); nothing outside ComfyUI."""
    try:
        from comfy.model_management import throw_exception_if_processing_interrupted  # type: ignore
    except ImportError:
        return
    throw_exception_if_processing_interrupted()


def free_memory() -> None:
    """Unload ComfyUI's cached models and empty its CUDA cache, so a run started beside ComfyUI has the GPU memory
    (``comfy.model_management.unload_all_models`` / ``soft_empty_cache``); nothing outside ComfyUI."""
    try:
        import comfy.model_management as mm  # type: ignore[import-not-found]
    except ImportError:
        return
    mm.unload_all_models()
    mm.soft_empty_cache()


def lorakit_home() -> Path:
    """The web UI's home (``lorakit ui --home``; ``$LORAKIT_HOME``, else ``~/.lorakit``): same jobs, same runs."""
    return Path(os.environ.get("LORAKIT_HOME", "~/.lorakit")).expanduser().resolve()
