"""The torchvision.transforms.functional calls the peers' data loading makes, for PIL images (and tensors where
torchvision accepts them); same results as torchvision for these inputs (see ../../README.md)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_PIL = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def _pair(size):
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def _size(img):
    """(width, height) of a PIL image or a [..., H, W] tensor."""
    if isinstance(img, torch.Tensor):
        return int(img.shape[-1]), int(img.shape[-2])
    return img.size


def _mode(interpolation):
    return _PIL[getattr(interpolation, "value", interpolation) if not isinstance(interpolation, int) else
                {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos"}[interpolation]]


def resize(img, size, interpolation="bilinear", **_):
    if isinstance(img, torch.Tensor):
        raise NotImplementedError("peers_shim: resize of tensors is not needed by the peers' data loading")
    w, h = img.size
    if isinstance(size, (int, float)) or len(size) == 1:  # the shorter side becomes size
        s = int(size if isinstance(size, (int, float)) else size[0])
        new_h, new_w = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
    else:
        new_h, new_w = int(size[0]), int(size[1])
    return img.resize((new_w, new_h), _mode(interpolation))


def crop(img, top, left, height, width):
    if isinstance(img, torch.Tensor):
        return img[..., top:top + height, left:left + width]
    return img.crop((left, top, left + width, top + height))


def center_crop(img, output_size):
    th, tw = _pair(output_size)
    w, h = _size(img)
    return crop(img, int(round((h - th) / 2.0)), int(round((w - tw) / 2.0)), th, tw)


def hflip(img):
    if isinstance(img, torch.Tensor):
        return img.flip(-1)
    return img.transpose(Image.FLIP_LEFT_RIGHT)


def pil_to_tensor(pic):
    arr = np.array(pic, copy=True)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_tensor(pic):
    if isinstance(pic, np.ndarray):
        arr = pic[:, :, None] if pic.ndim == 2 else pic
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
        return t.float().div(255) if t.dtype == torch.uint8 else t
    return pil_to_tensor(pic).float().div(255)


def normalize(tensor, mean, std, inplace=False):
    t = tensor if inplace else tensor.clone()
    m = torch.as_tensor(mean, dtype=t.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=t.dtype).view(-1, 1, 1)
    return t.sub_(m).div_(s)
