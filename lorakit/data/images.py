"""Image decoding: every file a user may drop in a folder becomes the same 8-bit RGB picture.

Decisions (documented in the data report too):
* EXIF orientation is applied first, so sizes, buckets and crops refer to the picture as people see it.
* Transparency (RGBA, LA, PA, P with a transparent index) is composited on white: a LoRA trained on a
  black background it never saw in a viewer learns the wrong thing.
* 16-bit (I;16*) and 32-bit integer (I) images are read as 16-bit data and scaled by 255/65535; float (F)
  images in [0, 1] are scaled by 255. CMYK, palette and grayscale are converted by Pillow.
* Multi-frame files (animated GIF/WebP/PNG): the first frame is used and the report says so.
* Bad files raise :class:`ImageProblem` with a short reason; the scan turns that into a report line.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from lorakit.fsutil import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from lorakit.data.scan import ImageItem

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"} | ({".avif"} if features.check("avif") else set()))
"""Extensions the scan trains on (kohya's list, plus .gif: first frame; .avif when Pillow has it)."""

UNSUPPORTED_IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".tif", ".tiff", ".heic", ".heif", ".jxl", ".psd", ".svg", ".raw", ".cr2", ".nef", ".dng", ".avif"}
) - IMAGE_EXTENSIONS
"""Image-like files the scan lists as skipped (so a user sees why they are not trained on)."""

_FORMAT_EXTENSIONS = {"PNG": {".png"}, "JPEG": {".jpg", ".jpeg"}, "WEBP": {".webp"}, "BMP": {".bmp"},
                      "GIF": {".gif"}, "AVIF": {".avif"}}


class ImageProblem(Exception):
    """A file cannot be used as an image; `reason` is the short text shown in the report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What the scan learns from one full decode."""

    size: tuple[int, int]      # (w, h) after EXIF orientation
    format: str                # Pillow's format name of the content (PNG, JPEG, ...)
    frames: int                # > 1 for animations; the first frame is used
    mode: str                  # the file's own mode before conversion
    transparent: bool = False  # some pixel is not fully opaque: flattened onto FLATTEN_COLOUR


def caption_extension_problem(ext: str) -> Optional[str]:
    """Why ``ext`` cannot name caption files (None when it can): a dot and a plain name, never an image's extension
    (captions would be read from the images, and `lorakit caption` would write over them)."""
    if not ext.startswith(".") or len(ext) < 2:
        return 'must start with a dot, like ".txt"'
    if any(c in ext for c in "/\\\x00") or ext != ext.strip() or set(ext) == {"."}:
        return 'must be a plain extension like ".txt" (no / or \\, no surrounding spaces)'
    if ext.lower() in IMAGE_EXTENSIONS or ext.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
        return "is an image extension: captions would be read from, or written over, the images; use .txt or .caption"
    return None


def _open_checked(path: Path, fh) -> Image.Image:
    """Identify the open file `fh` of `path` as an image or raise ImageProblem with a readable reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fh)
    except UnidentifiedImageError:
        raise ImageProblem("not an image despite its extension") from None
    except Image.DecompressionBombError:
        raise ImageProblem("image too large to decode safely (decompression bomb limit)") from None
    except OSError as e:
        raise ImageProblem(f"unreadable ({e})") from None


def _full_load(im: Image.Image) -> None:
    """Decode every pixel; a truncated file is an error, never half-grey training data."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped Pillow's global switch: refuse to hide truncation
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; lorakit needs it False to detect "
                           "truncated images")
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        if "truncated" in msg or "broken data stream" in msg or "image file is" in msg:
            raise ImageProblem("truncated file") from None
        raise ImageProblem(f"cannot decode ({msg})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see module docstring for the rules)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im).astype(np.float64)
        if mode == "F":
            arr = arr * 255.0 if arr.size and float(arr.max()) <= 1.0 else arr
        else:
            arr = arr * (255.0 / 65535.0)
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return im.convert("RGB")


def _open_file(path: Path):
    try:
        if os.path.getsize(path) == 0:
            raise ImageProblem("zero-byte file")
        return open(path, "rb")
    except OSError as e:
        raise ImageProblem(f"unreadable ({e.strerror or e})") from None


def _decoded(path: Path) -> tuple[Image.Image, str, int, str]:
    """(first frame fully decoded with EXIF applied, in its own mode; format; frames; mode as stored)."""
    with _open_file(path) as fh:
        im = _open_checked(path, fh)
        frames = int(getattr(im, "n_frames", 1) or 1)
        fmt = im.format or "?"
        if frames > 1:
            im.seek(0)
        _full_load(im)
        mode = im.mode
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block must not lose an otherwise good image
            pass
        im.load()
    return im, fmt, frames, mode


def open_oriented(path: str | os.PathLike) -> Image.Image:
    """The first frame of ``path`` fully decoded with EXIF applied, its mode (alpha, palette) kept; raises
    ImageProblem on bad files (what loss masks read)."""
    return _decoded(Path(path))[0]


def decode(path: Path) -> tuple[Image.Image, ImageInfo]:
    """Fully decode `path` (first frame) to RGB with EXIF applied; raise ImageProblem if it is unusable."""
    im, fmt, frames, mode = _decoded(path)
    transparent = _has_transparency(im)
    rgb = _to_rgb(im)
    rgb.load()
    return rgb, ImageInfo(size=rgb.size, format=fmt, frames=frames, mode=mode, transparent=transparent)


FLATTEN_COLOUR = "white"
"""What transparent pixels are composited onto (``_to_rgb``); the data report names it."""


def _has_transparency(im: Image.Image) -> bool:
    """Whether any pixel of ``im`` is less than fully opaque (an alpha channel or a transparent palette index)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB with EXIF orientation applied (raises ImageProblem on bad files)."""
    return decode(Path(path))[0]


def extension_mismatch(path: Path, fmt: str) -> bool:
    """True when the content's format does not match the file extension (e.g. a PNG named .jpg)."""
    exts = _FORMAT_EXTENSIONS.get(fmt)
    return exts is not None and path.suffix.lower() not in exts


def resize_and_crop(img: Image.Image, resized: tuple[int, int], crop: tuple[int, int],
                    bucket: tuple[int, int]) -> Image.Image:
    """The bucket window of `img` resized to `resized`, without materialising the full resized image.

    Pillow's `box` argument resamples only the source region that maps onto the window, so a 20000×50
    panorama does not become a 200-megapixel intermediate. Lanczos is used (it is area-averaging when
    downscaling, sharp when upscaling).
    """
    w, h = img.size
    rw, rh = resized
    sx, sy = w / rw, h / rh
    left, top = crop
    box = (left * sx, top * sy, (left + bucket[0]) * sx, (top + bucket[1]) * sy)
    return img.resize(bucket, Image.Resampling.LANCZOS, box=box)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → float32 [3, H, W] in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """The inverse of :func:`to_tensor`: [3, H, W] or [B, 3, H, W] in [-1, 1] (any dtype or device) → 8-bit
    RGB images (values outside [-1, 1] are clipped; rounding to nearest, so to_tensor → to_images is exact)."""
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"to_images: expected [3, H, W] or [B, 3, H, W], got {tuple(x.shape)}")
    x = x.detach().float().reshape(-1, *x.shape[-3:])
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def save_image(img: Image.Image, path: str | os.PathLike, text: Optional[dict[str, str]] = None) -> Path:
    """Save ``img`` atomically (:func:`lorakit.fsutil.atomic_path`), in the format of the file's extension;
    ``text``: PNG text chunks (key → value; what drew the image), for a .png only."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: no image format for the extension {path.suffix!r}")
    extra = {}
    if text and fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, str(value))
        extra["pnginfo"] = info
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **extra)
    return path


def load_for_bucket(item: "ImageItem", flip: bool = False) -> torch.Tensor:
    """The training tensor of `item`: resized to cover its bucket, centre-cropped as recorded, flipped if asked."""
    img = open_image(item.path)
    if img.size != tuple(item.original_size):
        raise ImageProblem(f"{item.path}: size changed since the scan ({item.original_size} → {img.size}); "
                           f"run the scan again")
    out = to_tensor(resize_and_crop(img, item.resized_size, item.crop, item.bucket))
    return torch.flip(out, dims=[2]) if flip else out
