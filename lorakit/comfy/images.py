"""ComfyUI's IMAGE type (a float32 tensor B×H×W×C, values in [0, 1], C = 3) to and from PIL images.

Into ComfyUI: 8-bit values / 255, exactly as ComfyUI's own LoadImage does (lorakit's training helper
:func:`lorakit.data.images.to_tensor` maps to [-1, 1], whose way back to [0, 1] is not exact in float32). Out of
ComfyUI: through :func:`lorakit.data.images.to_images` (rounded to the nearest 8-bit value)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("lorakit.comfy")


def pil_to_comfy(images: Sequence[Any]) -> Any:
    """PIL images of one size → IMAGE [B, H, W, 3] float32 in [0, 1]."""
    import numpy as np
    import torch

    if not images:
        raise ValueError("pil_to_comfy: no images")
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]))


def comfy_to_pil(images: Any) -> list[Any]:
    """IMAGE [B, H, W, C] (or one [H, W, C]) in [0, 1] → 8-bit RGB PIL images (an alpha channel is dropped)."""
    from lorakit.data.images import to_images

    x = images if images.dim() == 4 else images.unsqueeze(0)
    if x.shape[-1] not in (3, 4):
        raise ValueError(f"images: expected B×H×W×3 (ComfyUI IMAGE), got {tuple(images.shape)}")
    return to_images(x[..., :3].permute(0, 3, 1, 2).float().mul(2.0).sub(1.0))


def load_pngs(paths: Sequence[Path]) -> Any:
    """Image files → one IMAGE batch. Files of another size than the first are left out with a logged warning
    (a batch has one size); decoding goes through lorakit's checked reader."""
    from lorakit.data.images import ImageProblem, open_image
    from lorakit.errors import DataError

    pics = []
    for p in paths:
        try:
            pics.append(open_image(p).convert("RGB"))
        except ImageProblem as exc:  # a damaged preview (a kill mid-write of an older release, a disk error)
            raise DataError(f"{p}: {exc}; this image file of the run folder is damaged: delete it (or replace "
                            "it) and run the node again") from None
    keep = [im for im in pics if im.size == pics[0].size]
    for p, im in zip(paths, pics):
        if im.size != pics[0].size:
            log.warning("lorakit: %s is %dx%d, not %dx%d like the first image; left out of the batch",
                        p, im.size[0], im.size[1], *pics[0].size)
    return pil_to_comfy(keep)
