"""Image decoding (modes, EXIF, transparency, bad files) and the bucket tensor (resize, crop, flip)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.data.buckets import BucketSettings, place
from lorakit.data.images import ImageProblem, decode, load_for_bucket, open_image, to_tensor
from lorakit.data.scan import ImageItem
from tests.unit.data_corpus import bad_corpus, rgb, save, snapshot


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    out = bad_corpus(root)
    out["_root"] = root
    return out


def test_rgba_composited_on_white(files):
    im = open_image(files["rgba"])
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 255, 255)            # fully transparent → white
    r, g, b = im.getpixel((1, 0))                             # 50 % blue over white
    a = 128 / 255
    expect = (255 * (1 - a), 255 * (1 - a), 255)
    assert max(abs(r - expect[0]), abs(g - expect[1]), abs(b - expect[2])) <= 1
    assert im.getpixel((5, 5)) == (255, 0, 0)


def test_exif_orientation_applied(files):
    im = open_image(files["exif"])
    assert im.size == (32, 64)                                # stored 64x32, orientation 6
    top, bottom = im.getpixel((16, 5)), im.getpixel((16, 58))
    assert top[0] > 200 and top[2] < 60                       # stored left (red) is now the top
    assert bottom[2] > 200 and bottom[0] < 60


def test_cmyk_16bit_palette_gray(files, tmp_path):
    r, g, b = open_image(files["cmyk"]).getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60                       # C=0 M=Y=255 K=0 is red
    deep = open_image(files["deep16"])
    assert deep.getpixel((0, 0)) == (255, 255, 255) and deep.getpixel((20, 0)) == (128, 128, 128)
    assert deep.getpixel((63, 0)) == (0, 0, 0)
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert open_image(save(pal, tmp_path / "p.png")).getpixel((0, 0)) == (10, 200, 30)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 1
    save(pal_t, tmp_path / "pt.png", transparency=1)
    assert open_image(tmp_path / "pt.png").getpixel((0, 0)) == (255, 255, 255)
    gray = Image.new("L", (4, 4), 77)
    assert open_image(save(gray, tmp_path / "g.webp", lossless=True)).getpixel((1, 1)) == (77, 77, 77)
    assert open_image(save(Image.new("RGB", (4, 4), (1, 2, 3)), tmp_path / "x.bmp")).getpixel((0, 0)) == (1, 2, 3)


def test_animated_gif_first_frame(files):
    img, info = decode(files["anim"])
    assert info.frames == 3 and img.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("name,reason", [("zero", "zero-byte file"), ("truncated", "truncated file"),
                                         ("text_png", "not an image despite its extension"),
                                         ("dir_png", "unreadable"), ("broken_link", "unreadable")])
def test_bad_files_raise_image_problem(files, name, reason):
    with pytest.raises(ImageProblem) as ei:
        open_image(files[name])
    assert ei.value.reason.startswith(reason)


def test_png_named_jpg_opens(files):
    img, info = decode(files["png_as_jpg"])
    assert info.format == "PNG" and img.size == (64, 64)


def _item(path: Path, size: tuple[int, int], settings: BucketSettings) -> ImageItem:
    pl = place(size, settings)
    return ImageItem(path=path, caption="", caption_source="empty", subset=0, repeats=1, is_reg=False,
                     loss_weight=1.0, original_size=size, bucket=pl.bucket, crop=pl.crop,
                     resized_size=pl.resized, sha256="")


def test_load_for_bucket_matches_resize_then_crop(tmp_path):
    """The windowed resize equals the naive 'resize whole image, then crop' within interpolation noise."""
    src = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (80, 1))).convert("RGB")
    path = save(src, tmp_path / "grad.png")
    item = _item(path, (120, 80), BucketSettings((64, 64), min_reso=32, max_reso=128, step=32))
    # buckets at 64² (32..128, step 32): 32x128, 32x96, 64x64, 96x32, 128x32; ar 1.5 is nearest 64x64
    assert (item.bucket, item.resized_size, item.crop) == ((64, 64), (96, 64), (16, 0))
    t = load_for_bucket(item)
    naive = src.resize(item.resized_size, Image.Resampling.LANCZOS)
    l, tp = item.crop
    naive = to_tensor(naive.crop((l, tp, l + item.bucket[0], tp + item.bucket[1])))
    assert t.shape == (3, item.bucket[1], item.bucket[0])
    assert float((t - naive).abs().mean()) < 0.02
    assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0


def test_crop_is_centred_and_flip_mirrors(tmp_path):
    # 3 vertical bands (red | green | blue), wide image → bucket crops equal amounts off left and right
    arr = np.zeros((64, 192, 3), np.uint8)
    arr[:, :64, 0] = 255
    arr[:, 64:128, 1] = 255
    arr[:, 128:, 2] = 255
    path = save(Image.fromarray(arr), tmp_path / "bands.png")
    item = replace(_item(path, (192, 64), BucketSettings((64, 64), enable_bucket=False)))
    assert item.bucket == (64, 64) and item.resized_size == (192, 64) and item.crop == (64, 0)
    t = load_for_bucket(item)
    assert torch.allclose(t[1, :, 5:-5], torch.ones(1)) and float(t[0].max()) < -0.9   # only the green band
    f = load_for_bucket(item, flip=True)
    assert torch.equal(f, torch.flip(t, dims=[2]))


def test_panorama_loads_without_huge_intermediate(files):
    with Image.open(files["pano"]) as im:
        size = im.size
    settings = BucketSettings((128, 128), min_reso=64, max_reso=256, step=32)
    item = _item(files["pano"], size, settings)
    t = load_for_bucket(item)
    assert t.shape == (3, 64, 256)
    # green = source x mod 256; resized 25600 wide, crop left 12672 → source x = (12672 + j) * 20000 / 25600
    for j in (5, 50, 150):
        x = (12672 + j + 0.5) * 20000 / 25600
        assert abs(float(t[1, 32, j]) - ((x % 256) / 127.5 - 1)) < 0.05, j
    assert float(t[0].max()) == -1.0 and float(t[2].max()) == -1.0


def test_size_change_after_scan_is_an_error(tmp_path):
    path = save(rgb(64, 64), tmp_path / "a.png")
    item = _item(path, (64, 64), BucketSettings((64, 64), min_reso=32, max_reso=128, step=32))
    save(rgb(80, 64), path)
    with pytest.raises(ImageProblem, match="size changed since the scan"):
        load_for_bucket(item)


def test_decoding_never_modifies_files(files):
    before = snapshot(files["_root"])
    for key, p in files.items():
        if key.startswith("_"):
            continue
        try:
            open_image(p)
        except ImageProblem:
            pass
    assert snapshot(files["_root"]) == before
