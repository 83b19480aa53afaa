"""Masked loss (issue 23): data.alpha_mask / data.mask_dir give latent-resolution masks (the bucket crop, then the
mean of each downscale×downscale block), cached; the loss equals a hand-computed masked MSE and a fully masked
region gets no gradient."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.diffusion.objectives import loss_per_sample
from lorakit.data.masks import MaskCache, latent_mask, mask_image
from lorakit.errors import DataError


@dataclass
class Item:
    path: Path
    original_size: tuple
    bucket: tuple
    crop: tuple
    resized_size: tuple
    sha256: str = "x"
    is_reg: bool = False


def test_masked_loss_is_the_hand_computed_masked_mse_and_zero_mask_has_no_gradient():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 6, 8, generator=g).requires_grad_(True)
    target = torch.randn(2, 4, 6, 8, generator=g)
    mask = torch.rand(2, 1, 6, 8, generator=g)
    mask[:, :, :, :3] = 0.0  # the left columns are masked out entirely
    got = loss_per_sample(pred, target, "l2", mask=mask)
    p = pred.detach()
    hand = [sum(float(mask[b, 0, y, x]) * float(p[b, c, y, x] - target[b, c, y, x]) ** 2
                for c in range(4) for y in range(6) for x in range(8)) / (4 * 6 * 8) for b in range(2)]
    torch.testing.assert_close(got, torch.tensor(hand), rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert pred.grad[:, :, :, :3].abs().max() == 0 and pred.grad[:, :, :, 3:].abs().max() > 0
    # an all-ones mask is the plain loss
    torch.testing.assert_close(loss_per_sample(pred, target, "l2", mask=torch.ones(2, 1, 6, 8)),
                               loss_per_sample(pred, target, "l2"))
    with pytest.raises(ValueError, match="loss mask"):
        loss_per_sample(pred, target, "l2", mask=torch.ones(2, 1, 3, 4))


def _rgba(path, size=(64, 48)):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    arr[:, : size[0] // 2, 3] = 0  # left half transparent
    Image.fromarray(arr, "RGBA").save(path)
    return arr


def test_alpha_mask_at_latent_resolution_cached(tmp_path):
    arr = _rgba(tmp_path / "a.png")
    item = Item(tmp_path / "a.png", (64, 48), bucket=(64, 48), crop=(0, 0), resized_size=(64, 48))
    m = latent_mask(mask_image(item, True, None), item, 8)
    # independent: the mean of each 8×8 block of the alpha channel / 255 (the bucket is the image here)
    blocks = arr[:, :, 3].reshape(6, 8, 8, 8).mean(axis=(1, 3)) / 255.0
    assert m.shape == (1, 6, 8)
    torch.testing.assert_close(m[0], torch.from_numpy(blocks).float(), rtol=0, atol=1e-6)
    assert m[0, :, :4].max() == 0 and m[0, :, 4:].min() > 0
    cache = MaskCache(tmp_path / "cache", True, None, 8)
    cache.ensure([item], flip=True)
    like = torch.zeros(4, 6, 8)
    assert torch.equal(cache.get(item, False, like), m) and torch.equal(cache.get(item, True, like), m.flip(2))
    files = list((tmp_path / "cache" / "masks").glob("*.safetensors"))
    assert len(files) == 1
    again = MaskCache(tmp_path / "cache", True, None, 8)  # read back from disk
    again.ensure([item], flip=True)
    assert torch.equal(again.get(item, False, like), m)
    reg = Item(tmp_path / "a.png", (64, 48), (64, 48), (0, 0), (64, 48), is_reg=True)
    assert torch.equal(cache.get(reg, False, like), torch.ones(1, 6, 8))  # regularisation images: whole loss


def test_mask_dir_by_stem_cropped_like_its_image(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (96, 64)).save(tmp_path / "img" / "cat.jpg")
    mask = np.zeros((64, 96), np.uint8)
    mask[:, 48:] = 255
    Image.fromarray(mask, "L").save(tmp_path / "masks" / "cat.png")
    # a 64×64 bucket: resized to 96×64, the window starts at x = 16
    item = Item(tmp_path / "img" / "cat.jpg", (96, 64), bucket=(64, 64), crop=(16, 0), resized_size=(96, 64))
    m = latent_mask(mask_image(item, False, str(tmp_path / "masks")), item, 8)
    expected = mask[:, 16:80].reshape(8, 8, 8, 8).mean(axis=(1, 3)) / 255.0
    torch.testing.assert_close(m[0], torch.from_numpy(expected).float(), rtol=0, atol=2e-2)  # Lanczos at the edge
    assert m[0, :, :3].max() == 0 and m[0, :, 5:].min() == 1
    Image.fromarray(mask[:32], "L").save(tmp_path / "masks" / "cat.png")
    with pytest.raises(DataError, match=r"cat\.png is 96x32, its image .*cat\.jpg is 96x64"):
        mask_image(item, False, str(tmp_path / "masks"))
    (tmp_path / "masks" / "cat.png").unlink()
    with pytest.raises(DataError, match=r"data\.mask_dir: no mask for .*cat\.jpg"):
        mask_image(item, False, str(tmp_path / "masks"))
