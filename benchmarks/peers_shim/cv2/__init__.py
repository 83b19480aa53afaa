"""Stand-in for OpenCV (benchmarks/peers_shim/README.md): what sd-scripts' data loading calls, on uint8 HxWxC arrays.
Resizing goes through PIL (same interpolation kinds); colour conversions are the channel swaps sd-scripts asks for."""
from __future__ import annotations

import numpy as np
from PIL import Image

__version__ = "0.0.0+lorakit-peers-shim"
INTER_NEAREST, INTER_LINEAR, INTER_CUBIC, INTER_AREA, INTER_LANCZOS4, INTER_NEAREST_EXACT = 0, 1, 2, 3, 4, 6
COLOR_BGR2RGB, COLOR_RGB2BGR, COLOR_BGRA2RGBA, COLOR_RGBA2BGRA = 4, 4, 5, 5
_PIL = {INTER_NEAREST: Image.NEAREST, INTER_NEAREST_EXACT: Image.NEAREST, INTER_LINEAR: Image.BILINEAR,
        INTER_CUBIC: Image.BICUBIC, INTER_AREA: Image.BOX, INTER_LANCZOS4: Image.LANCZOS}


def resize(image, dsize, interpolation=INTER_LINEAR, **_):
    """dsize = (width, height), as OpenCV takes it."""
    return np.asarray(Image.fromarray(np.asarray(image)).resize(tuple(int(v) for v in dsize), _PIL[interpolation]))


def cvtColor(image, code):  # noqa: N802 - OpenCV's name
    if code in (COLOR_BGR2RGB, COLOR_BGRA2RGBA):
        a = np.asarray(image)
        order = [2, 1, 0] + ([3] if a.shape[-1] == 4 else [])
        return np.ascontiguousarray(a[..., order])
    raise NotImplementedError(f"peers_shim: cv2.cvtColor code {code} is not needed by the peers' data loading")
