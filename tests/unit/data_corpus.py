"""Builds small datasets and a corpus of bad inputs in a temporary folder (used by tests/unit/test_data_*)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN = "10_ohwx woman"


def rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    """A deterministic noisy RGB picture (noise keeps JPEGs big enough to truncate meaningfully)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def save(img: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def caption(path: Path, text: str | bytes, ext: str = ".txt") -> Path:
    cap = path.parent / (path.stem + ext)
    cap.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return cap


def simple_dataset(root: Path, folders: dict[str, list[tuple[int, int]]], seed: int = 0) -> Path:
    """Folders of PNGs with the given sizes, each with a caption naming the folder's first class token."""
    for name, sizes in folders.items():
        token = name.split("_", 1)[1].split()[0] if "_" in name else "x"
        for i, (w, h) in enumerate(sizes):
            p = save(rgb(w, h, seed=seed + 1000 * len(name) + i), root / name / f"img{i:03d}.png")
            caption(p, f"{token}, picture {i}, tag{i % 3}")
    return root


def bad_corpus(root: Path) -> dict[str, Path]:
    """Every kind of bad or unusual input, in one `10_ohwx woman` folder (+ one folder without repeats)."""
    d = root / TRAIN
    d.mkdir(parents=True)
    out: dict[str, Path] = {}
    out["good"] = save(rgb(96, 64, 1), d / "good.png")
    caption(out["good"], "ohwx woman, smiling")
    out["dup"] = d / "good_copy.png"
    out["dup"].write_bytes(out["good"].read_bytes())
    caption(out["dup"], "ohwx woman, copy")
    out["zero"] = d / "zero.png"
    out["zero"].write_bytes(b"")
    jpg = io.BytesIO()
    rgb(96, 96, 2).save(jpg, "JPEG", quality=95)
    out["truncated"] = d / "truncated.jpg"
    out["truncated"].write_bytes(jpg.getvalue()[: len(jpg.getvalue()) * 6 // 10])
    out["png_as_jpg"] = save(rgb(64, 64, 3), d / "really_png.jpg", "PNG")
    caption(out["png_as_jpg"], "ohwx woman")
    out["text_png"] = d / "notes.png"
    out["text_png"].write_text("this is not an image\n")
    out["cmyk"] = save(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), d / "cmyk.jpg", "JPEG", quality=95)
    deep = np.zeros((64, 64), dtype=np.uint16)
    deep[:, :16] = 65535
    deep[:, 16:32] = 128 * 257
    out["deep16"] = save(Image.fromarray(deep), d / "deep16.png", "PNG")
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    out["anim"] = d / "anim.gif"
    frames[0].save(out["anim"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["tiny"] = save(Image.new("RGB", (1, 1), (10, 20, 30)), d / "tiny.png")
    pano = np.zeros((50, 20000, 3), dtype=np.uint8)
    pano[:, :, 1] = (np.arange(20000) % 256).astype(np.uint8)
    out["pano"] = save(Image.fromarray(pano), d / "pano.png")
    out["bom"] = save(rgb(64, 64, 4), d / "bom.png")
    caption(out["bom"], "\ufeffohwx woman, with bom\nsecond line ignored")
    out["latin1"] = save(rgb(64, 64, 5), d / "latin1.png")
    caption(out["latin1"], "ohwx woman au caf\xe9".encode("latin-1"))
    # Root can read chmod-000 files, so an unreadable path is emulated with things open() refuses:
    out["dir_png"] = d / "folder.png"
    out["dir_png"].mkdir()
    out["broken_link"] = d / "broken.png"
    os.symlink(d / "does-not-exist.png", out["broken_link"])
    exif_img = Image.new("RGB", (64, 32), (255, 0, 0))
    exif_img.paste((0, 0, 255), (32, 0, 64, 32))  # stored: left red, right blue
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90° clockwise to display: left column becomes the top row
    out["exif"] = save(exif_img, d / "exif.jpg", "JPEG", quality=95, exif=ex.tobytes())
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 128))
    out["rgba"] = save(rgba, d / "rgba.png")
    out["no_repeats_dir"] = root / "ohwx woman"
    save(rgb(64, 64, 6), out["no_repeats_dir"] / "lost.png")
    return out


def snapshot(root: Path) -> dict[str, tuple]:
    """(bytes, mtime_ns, mode) of everything under root (links not followed), to prove nothing changed."""
    snap: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            snap[str(p)] = (data, st.st_mtime_ns, st.st_mode)
    return snap
