"""The one resolution normaliser (config/resolution.py) and the one tensor-to-image helper (data/images.py):
behaviour, and every former copy now calling them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.config.resolution import resolution_wh
from lorakit.data.images import save_image, to_images, to_tensor
from lorakit.errors import ConfigError


@pytest.mark.parametrize("value, expected", [(1024, (1024, 1024)), ([832, 1216], (832, 1216)), ((64, 96), (64, 96)),
                                             (1024.0, (1024, 1024)), ([512.0, 768], (512, 768))])
def test_resolution_forms(value, expected):
    assert resolution_wh(value) == expected


@pytest.mark.parametrize("value", [True, "1024", [1024], [1024, 0], [1024, 768, 3], 1024.5, None, {"w": 1},
                                   [True, 64], -64])
def test_resolution_refusals_name_the_key(value):
    with pytest.raises(ConfigError) as e:
        resolution_wh(value, "datasets[0].resolution")
    msg = str(e.value)
    assert msg.startswith("datasets[0].resolution: must be an integer ≥ 1 (square side) or [width, height]"), msg
    assert "\n" not in msg


def test_resolution_bounds():
    assert resolution_wh([64, 16384], minimum=64, maximum=16384) == (64, 16384)
    with pytest.raises(ConfigError, match=r"^data.resolution: must be an integer ≥ 64 .* \(at most 16384\), got 32$"):
        resolution_wh(32, minimum=64, maximum=16384)
    with pytest.raises(ConfigError, match="got \\[64, 16400\\]"):
        resolution_wh([64, 16400], minimum=64, maximum=16384)


def test_every_reader_of_data_resolution_agrees(tmp_path):
    """The config loader keeps the form the user wrote; metadata, buckets and the dataset TOML read (w, h)."""
    from lorakit.config.load import load_config
    from lorakit.data.kohya_toml import bucket_settings
    from lorakit.lora import metadata

    (tmp_path / "d").mkdir()
    for res, wh in ((768, (768, 768)), ([832, 1216], (832, 1216))):
        cfg = load_config(data={"model": {"family": "sdxl", "checkpoint": str(tmp_path / "m.safetensors")},
                                "data": {"dir": str(tmp_path / "d"), "resolution": res}})
        assert cfg.data.resolution == res
        assert resolution_wh(cfg.data.resolution) == wh
        assert bucket_settings(lambda k: cfg.data.resolution if k == "resolution" else getattr(cfg.data, k)
                               ).resolution == wh
    assert not hasattr(metadata, "_resolution")
    import lorakit.train.loop as loop

    assert not hasattr(loop, "_res")


def test_to_images_inverts_to_tensor():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    back = to_images(to_tensor(img))
    assert len(back) == 1 and back[0].mode == "RGB" and back[0].size == (7, 5)
    assert np.array_equal(np.asarray(back[0]), arr)
    batch = torch.stack([to_tensor(img), -to_tensor(img)]).to(torch.bfloat16)
    two = to_images(batch)
    assert len(two) == 2 and np.abs(np.asarray(two[1]).astype(int) - (255 - arr.astype(int))).max() <= 2


def test_to_images_clips_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0]).reshape(1, 1, 6).expand(3, 1, 6)
    out = np.asarray(to_images(x)[0])[0, :, 0]
    assert out.tolist() == [0, 0, 128, 255, 255, 255]   # (x + 1) * 127.5 rounded: 127.5 → 128, 254.87 → 255
    with pytest.raises(ValueError, match=r"expected \[3, H, W\] or \[B, 3, H, W\], got \(1, 4, 4\)"):
        to_images(torch.zeros(1, 4, 4))


def test_save_image_uses_the_extension_and_refuses_unknown(tmp_path):
    img = Image.new("RGB", (4, 3), (10, 20, 30))
    save_image(img, tmp_path / "a.png")
    save_image(img, tmp_path / "b.jpg")
    assert Image.open(tmp_path / "a.png").format == "PNG" and Image.open(tmp_path / "b.jpg").format == "JPEG"
    with pytest.raises(ValueError, match=r"c\.xyz: no image format"):
        save_image(img, tmp_path / "c.xyz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.jpg"]


def test_families_and_toy_convert_through_the_one_helper():
    import inspect

    import lorakit.models.flux1.adapter as flux
    import lorakit.models.sdxl.adapter as sdxl
    import lorakit.models.unet as unet  # SDXL's and SD 1.5's shared adapter decodes through it
    import lorakit.toy.eval as toy_eval

    for mod in (flux, sdxl, unet, toy_eval):
        src = inspect.getsource(mod)
        assert "* 127.5" not in src and "Image.fromarray" not in src, mod.__name__
    for mod in (flux, unet):  # the toy samples through the family adapters, which convert
        assert "to_images(" in inspect.getsource(mod), mod.__name__
