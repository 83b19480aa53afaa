"""ComfyUI nodes over lorakit's jobs: train a LoRA from a ComfyUI graph, as an ordinary lorakit run.

``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` are what ComfyUI reads from a custom-node folder. The folder
to put (or link) under ``ComfyUI/custom_nodes/`` is :func:`pack_dir` (``lorakit/comfy/custom_node``: its
``__init__.py`` re-exports these, its ``pyproject.toml`` is the Comfy registry's metadata, ``example_workflows/``
holds the example graphs); ``python -m lorakit.comfy install /path/to/ComfyUI`` makes the link. See docs/comfyui.md.

``host``   ComfyUI's own modules (folder_paths, ProgressBar, Cancel, memory), imported lazily with fallbacks
``build``  the Dataset and Config nodes' work (dataset folders, data check's report, the run's TOML)
``train``  the Train node's work (the web UI's job store, following a run, the LoRA into ComfyUI's loras folder)
``images`` ComfyUI's IMAGE tensors to and from PIL images
``nodes``  the node classes
"""

from __future__ import annotations

from pathlib import Path

from lorakit.comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "pack_dir"]


def pack_dir() -> Path:
    """The custom-node folder to link into ComfyUI's custom_nodes/."""
    return Path(__file__).resolve().parent / "custom_node"
