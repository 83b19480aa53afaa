"""lorakit's ComfyUI node pack: this folder, placed or linked under ComfyUI/custom_nodes/ (any name but "lorakit").

ComfyUI imports this file as a top-level module named after the folder; the nodes live in the lorakit package
(``pip install lorakit`` in ComfyUI's Python; the registry and ComfyUI-Manager install it from pyproject.toml). When
lorakit is not installed but this folder is a link into a lorakit checkout, the checkout is used.
"""

import os
import sys

if __name__ == "lorakit":
    raise ImportError("this node pack's folder under custom_nodes/ must not be named 'lorakit' (it would hide the "
                      "lorakit package); rename it, e.g. lorakit-nodes")

try:
    import lorakit.comfy  # noqa: F401
except ImportError:  # a link into a source checkout: <checkout>/lorakit/comfy/custom_node
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))))

from lorakit.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
