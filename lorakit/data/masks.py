"""Loss masks (issue 23): kohya's ``alpha_mask`` (the image's alpha channel) and ``conditioning_data_dir``
(``data.mask_dir``: a mask image per training image, found by file stem; its red channel, as sd-scripts reads it,
so a grey-scale or black-and-white mask works as drawn). White = trained, black = ignored.

A mask goes through the same resize and bucket crop as its image (and the same flip), then is area-averaged to the
latent resolution (``vae_downscale`` pixels per latent pixel, as sd-scripts' ``interpolate(mode="area")``), values in
[0, 1]. Masks are cached on disk beside the latents (``<cache>/masks``), keyed by the mask's own content (the image's
bytes for an alpha mask, the mask file's bytes otherwise), the bucket geometry and the downscale, so an edited mask is
re-read and a stale one never used. Regularisation images have no mask: their loss stays whole.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from lorakit.data.images import ImageProblem, open_oriented, resize_and_crop
from lorakit.errors import DataError

VERSION = 1
MASK_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def mask_file(item, mask_dir: str | Path) -> Path:
    """The mask of ``item`` in ``mask_dir``: the image's file stem with any image suffix (one line if none)."""
    folder = Path(mask_dir)
    for suffix in MASK_SUFFIXES:
        for cand in (folder / (item.path.stem + suffix), folder / (item.path.stem + suffix.upper())):
            if cand.is_file():
                return cand
    if not folder.is_dir():
        raise DataError(f"data.mask_dir: folder {folder} not found (it should hold one mask per image, named like "
                        f"the image: {item.path.stem}.png)")
    raise DataError(f"data.mask_dir: no mask for {item.path} in {folder} (expected {item.path.stem}.png or another "
                    "image with the same stem); add one or remove data.mask_dir")


def mask_image(item, alpha_mask: bool, mask_dir: Optional[str]) -> Optional[Image.Image]:
    """The full-size mask of ``item`` as an 8-bit "L" image, or None (no mask: the loss is whole)."""
    if item.is_reg:
        return None
    if alpha_mask:
        im = open_oriented(item.path)
        if im.mode == "P":
            im = im.convert("RGBA")
        if "A" not in im.getbands():
            return Image.new("L", im.size, 255)  # no alpha channel: every pixel counts
        return im.getchannel("A")
    if mask_dir:
        path = mask_file(item, mask_dir)
        try:
            im = open_oriented(path)
        except ImageProblem as e:
            raise DataError(f"data.mask_dir: the mask {path} of {item.path} cannot be read ({e.reason}); replace it "
                            "with a valid image (white = trained, black = ignored) or remove data.mask_dir") from None
        if im.size != tuple(item.original_size):
            raise DataError(f"data.mask_dir: {path} is {im.size[0]}x{im.size[1]}, its image {item.path} is "
                            f"{item.original_size[0]}x{item.original_size[1]}; masks must match their images")
        return im.convert("RGB").getchannel("R")
    return None


def check_masks(items: Sequence, alpha_mask: bool, mask_dir: Optional[str]) -> None:
    """walk7o: at the dataset scan, before any model loads: every training image has its mask, of its size, and the
    mask keeps something (an all-black mask or a fully transparent image would train nothing from that image)."""
    if mask_dir and not alpha_mask:
        by_stem: dict[str, Path] = {}
        for item in items:
            if not item.is_reg and (other := by_stem.setdefault(item.path.stem, item.path)) != item.path:
                raise DataError(f"data.mask_dir: {other} and {item.path} share the file stem '{item.path.stem}', so "
                                f"both would use the one mask {item.path.stem}.png (masks are found by stem); rename "
                                "one image so that each has its own mask")
    for item in items:
        full = mask_image(item, alpha_mask, mask_dir)
        if full is not None and full.getextrema()[1] == 0:
            if alpha_mask:
                raise DataError(f"data.alpha_mask: {item.path} is fully transparent, so it would train nothing; "
                                "give it an alpha channel that keeps the subject, or remove the image")
            raise DataError(f"data.mask_dir: {mask_file(item, mask_dir)} is all black, so {item.path} would train "
                            "nothing; white marks what is learned (fix the mask or remove the image)")


def latent_mask(mask: Image.Image, item, downscale: int, flip: bool = False) -> torch.Tensor:
    """[1, h, w] float32 in [0, 1]: the bucket window of ``mask`` (as its image is cropped), area-averaged over
    ``downscale``×``downscale`` pixel blocks, flipped with the image if asked."""
    window = resize_and_crop(mask, item.resized_size, item.crop, item.bucket)
    arr = torch.from_numpy(np.asarray(window, dtype=np.float32) / 255.0)
    small = torch.nn.functional.avg_pool2d(arr[None, None], downscale)[0]
    return torch.flip(small, dims=[2]) if flip else small


class MaskCache:
    """Latent-resolution masks per (mask content, bucket geometry, downscale); see the module docstring."""

    def __init__(self, folder: Path, alpha_mask: bool, mask_dir: Optional[str], downscale: int):
        self.folder = Path(folder) / "masks"
        self.alpha_mask, self.mask_dir, self.downscale = alpha_mask, mask_dir, int(downscale)
        self._mem: dict[str, dict[str, torch.Tensor]] = {}

    def _source(self, item) -> str:
        if self.alpha_mask:
            return f"alpha:{item.sha256}"
        return "file:" + hashlib.sha256(mask_file(item, self.mask_dir).read_bytes()).hexdigest()

    def _path(self, item) -> Path:
        key = {"v": VERSION, "source": self._source(item), "bucket": list(item.bucket),
               "resized": list(item.resized_size), "crop": list(item.crop), "downscale": self.downscale}
        return self.folder / (hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest() + ".safetensors")

    def ensure(self, items: Sequence, flip: bool) -> None:
        """Compute and cache every training image's mask (a cached one is read back)."""
        from lorakit.data.cache import _load, _save  # the cache files' one reader and writer

        for item in items:
            if item.is_reg or str(item.path) in self._mem:
                continue
            path = self._path(item)
            loaded = _load(path)
            if loaded is not None and {"mask", "mask_flipped"} <= set(loaded[0]):
                self._mem[str(item.path)] = loaded[0]
                continue
            full = mask_image(item, self.alpha_mask, self.mask_dir)
            tensors = {"mask": latent_mask(full, item, self.downscale)}
            tensors["mask_flipped"] = torch.flip(tensors["mask"], dims=[2])
            path.parent.mkdir(parents=True, exist_ok=True)
            _save(path, tensors, {"image": str(item.path)})
            self._mem[str(item.path)] = tensors

    def get(self, item, flipped: bool, like: torch.Tensor) -> torch.Tensor:
        """[1, h, w] mask of ``item`` (ones for a regularisation image), shaped like latent ``like`` [C, h, w]."""
        if item.is_reg:
            return torch.ones(1, *like.shape[-2:])
        got = self._mem.get(str(item.path))
        if got is None:
            raise KeyError(f"{item.path}: no cached mask; run ensure() first")
        m = got["mask_flipped" if flipped else "mask"]
        if tuple(m.shape[-2:]) != tuple(like.shape[-2:]):
            raise DataError(f"{item.path}: its cached mask is {tuple(m.shape[-2:])}, the latent {tuple(like.shape[-2:])}")
        return m
