"""The validation set: images held out of training (``data.validation_split``) or read from their own folder
(``data.validation_dir``), each with the fixed caption text it is scored with.

Which images a split holds out depends only on ``training.seed`` and each image's folder and file name (never on
scan order, the dataset's location or the other images' contents), so the same data and seed hold out the same
images in every run, resume and sweep point. A held-out image is removed from training entirely; a validation
folder image that is also a training image is refused. Nothing under the dataset folders is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.config.schema import DataCfg
from lorakit.data.captions import add_prefix_suffix
from lorakit.data.report import check
from lorakit.data.scan import Dataset, ImageItem, scan_dataset
from lorakit.errors import ConfigError, DataError


@dataclass
class ValidationSet:
    """Validation images and the caption each is scored with (prefix/suffix applied; never shuffled or dropped)."""

    items: list[ImageItem] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def names(self) -> list[str]:
        return [image_name(it) for it in self.items]


def image_name(item: ImageItem) -> str:
    """``<folder>/<file>``: what fixes an image's place in the split and its validation noise."""
    return f"{Path(item.path).parent.name}/{Path(item.path).name}"


def split_key(seed: int, item: ImageItem) -> str:
    return hashlib.sha256(f"{seed}|{image_name(item)}".encode()).hexdigest()


def held_out_count(fraction: float, n: int) -> int:
    """round(fraction · n), at least 1 and at most n − 1 (one image must stay for training)."""
    return min(max(1, round(fraction * n)), n - 1)


def make_validation(dataset: Dataset, data: DataCfg, seed: int, divisibility: int) -> tuple[Dataset, ValidationSet]:
    """The training dataset (without held-out images) and the validation set; empty when neither key is set."""
    if data.validation_split > 0:
        return split_validation(dataset, data.validation_split, seed)
    if data.validation_dir is not None:
        return dataset, scan_validation_dir(dataset, data, divisibility)
    return dataset, ValidationSet()


def split_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, ValidationSet]:
    """Hold out ``held_out_count`` training images (regularisation images are never held out)."""
    train = [it for it in dataset.items if not it.is_reg]
    if len(train) < 2:
        raise ConfigError(f"data.validation_split: {len(train)} training image(s) leave none to hold out and train "
                          "on; add images or use data.validation_dir")
    ranked = sorted(train, key=lambda it: split_key(seed, it))
    held = sorted(ranked[:held_out_count(fraction, len(train))], key=image_name)
    held_ids = {id(it) for it in held}
    kept = [it for it in dataset.items if id(it) not in held_ids]
    subsets = [dataclasses.replace(s, items=[it for it in s.items if id(it) not in held_ids])
               for s in dataset.subsets]
    out = Dataset(subsets=subsets, items=kept, groups=dataset.groups, problems=dataset.problems)
    out.report = check(out)
    captions = [add_prefix_suffix(it.caption, dataset.subsets[it.subset].caption) for it in held]
    return out, ValidationSet(held, captions, f"data.validation_split = {fraction}")


def scan_validation_dir(dataset: Dataset, data: DataCfg, divisibility: int) -> ValidationSet:
    """Scan ``data.validation_dir`` with the training data's bucket and caption settings."""
    if not Path(data.validation_dir).is_dir():  # named here: the scan below would name data.dir
        raise ConfigError(f"data.validation_dir: folder {data.validation_dir} not found (it should hold subfolders "
                          "like '1_ohwx woman', as data.dir does)")
    vcfg = dataclasses.replace(data, dir=data.validation_dir, config=None, reg_dir=None, validation_dir=None,
                               validation_split=0.0, alpha_mask=False, mask_dir=None)  # validation: no loss masks
    try:
        found = scan_dataset(vcfg, divisibility=divisibility)
    except DataError as exc:
        raise DataError(f"data.validation_dir: {exc}") from None
    training = {it.sha256: it for it in dataset.items}
    for it in found.items:
        if it.sha256 in training:
            raise DataError(f"data.validation_dir: {it.path} is also a training image ({training[it.sha256].path}); "
                            "a validation image must never be trained on: remove it from one of the folders")
    items = sorted(found.items, key=image_name)
    captions = [add_prefix_suffix(it.caption, found.subsets[it.subset].caption) for it in items]
    return ValidationSet(items, captions, f"data.validation_dir = {data.validation_dir}")
