"""The torchvision.transforms classes the peers' data loading uses, on PIL images (see ../../README.md)."""
from __future__ import annotations

import enum
import random

from . import functional  # noqa: F401
from . import functional as F


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class ToTensor:
    def __call__(self, pic):
        return F.to_tensor(pic)


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, t):
        return F.normalize(t, self.mean, self.std)


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR, **_):
        self.size, self.interpolation = size, interpolation

    def __call__(self, img):
        return F.resize(img, self.size, self.interpolation)


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        return F.center_crop(img, self.size)


class RandomCrop:
    def __init__(self, size):
        self.size = F._pair(size)

    @staticmethod
    def get_params(img, output_size):
        w, h = F._size(img)
        th, tw = F._pair(output_size)
        if h < th or w < tw:
            raise ValueError(f"crop {output_size} larger than the image {(h, w)}")
        return random.randint(0, h - th), random.randint(0, w - tw), th, tw

    def __call__(self, img):
        return F.crop(img, *self.get_params(img, self.size))


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img):
        return F.hflip(img) if random.random() < self.p else img
