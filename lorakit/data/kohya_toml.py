"""kohya's dataset TOML (`[general]`, `[[datasets]]`, `[[datasets.subsets]]`), read unchanged.

reference/kohya-format.md §2.3. Values fall back subset → dataset → general → lorakit's `data.*` section
(→ kohya's own default for keys lorakit has no field for, e.g. num_repeats = 1).

Keys lorakit does not implement yet are an error naming them — *unless* they hold their do-nothing value
(`color_aug = false`, `caption_dropout_every_n_epochs = 0` …). kohya_ss's GUI writes such keys into every
file it makes; refusing them would refuse files that ask for nothing lorakit lacks.

Relative `image_dir` paths are looked up next to the TOML file first, then in the working directory (kohya
uses the working directory only; both find the same folder when the TOML sits where kohya was run).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lorakit.config.resolution import resolution_wh
from lorakit.config.schema import DataCfg
from lorakit.data.buckets import BucketSettings
from lorakit.data.captions import CaptionSettings
from lorakit.errors import ConfigError


@dataclass(frozen=True)
class GroupSpec:
    """One `[[datasets]]` entry (or the whole of data.dir): its bucket settings and optional batch size."""

    buckets: BucketSettings
    batch_size: int | None = None
    key: str = "data"


@dataclass(frozen=True)
class SubsetSpec:
    """One folder to read, with every setting already resolved."""

    dir: Path
    repeats: int
    class_tokens: str
    is_reg: bool
    caption: CaptionSettings
    caption_extension: str
    flip_aug: bool
    group: int = 0
    key: str = ""            # where it came from, for messages: "datasets[0].subsets[1]" or the folder


_DATASET_KEYS = {"resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                 "bucket_reso_steps", "bucket_no_upscale"}
_ANY_KEYS = {"num_repeats", "shuffle_caption", "caption_separator", "keep_tokens", "flip_aug", "caption_prefix",
             "caption_suffix", "caption_dropout_rate", "caption_tag_dropout_rate", "caption_extension"}
_SUBSET_KEYS = {"image_dir", "is_reg", "class_tokens"}

_NOT_YET: dict[str, Any] = {  # kohya key → the value that asks for nothing (None: any value is refused)
    "validation_split": 0.0, "validation_seed": None, "resize_interpolation": None, "network_multiplier": 1.0,
    "keep_tokens_separator": "", "secondary_separator": None, "enable_wildcard": False, "color_aug": False,
    "face_crop_aug_range": None, "random_crop": False, "caption_dropout_every_n_epochs": 0,
    "token_warmup_min": 1, "token_warmup_step": 0, "custom_attributes": {}, "cache_info": False,
    "alpha_mask": False, "metadata_file": None,
}

_BOOL = {"enable_bucket", "bucket_no_upscale", "shuffle_caption", "flip_aug", "is_reg"}
_INT = {"batch_size": 1, "min_bucket_reso": 8, "max_bucket_reso": 8, "bucket_reso_steps": 8, "num_repeats": 1,
        "keep_tokens": 0}
_RATE = {"caption_dropout_rate", "caption_tag_dropout_rate"}
_STR = {"caption_separator", "caption_prefix", "caption_suffix", "caption_extension", "image_dir", "class_tokens"}


def _check_value(where: str, key: str, value: Any) -> None:
    bad = None
    if key in _BOOL and not isinstance(value, bool):
        bad = "must be true or false"
    elif key in _INT and (isinstance(value, bool) or not isinstance(value, int) or value < _INT[key]):
        bad = f"must be an integer >= {_INT[key]}"
    elif key in _RATE and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
        bad = "must be a number between 0 and 1"
    elif key in _STR and not isinstance(value, str):
        bad = "must be a string"
    elif key == "resolution":
        resolution_wh(value, f"{where}.{key}")
    if bad:
        raise ConfigError(f"{where}.{key}: {bad}, got {value!r}")


def _check_table(file: str, where: str, table: Any, allowed: set[str], elsewhere: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: {where} must be a table")
    for key, value in table.items():
        if key == "conditioning_data_dir":  # walk7o: sd-scripts' masked-loss folder (was "not a dataset-config key")
            raise ConfigError(f"{file}: {where}.conditioning_data_dir: per-subset mask folders are not offered; remove "
                              "it and set data.mask_dir in the run config (one folder of masks named like the images)")
        if key in _NOT_YET:
            noop = _NOT_YET[key]
            if key == "alpha_mask" and value is True:  # issue 23: one switch for the whole run
                raise ConfigError(f"{file}: {where}.alpha_mask: per-subset masks are not offered; remove it and set "
                                  "data.alpha_mask = true in the run config (it applies to every training image)")
            if noop is None or value != noop:
                raise ConfigError(f"{file}: {where}.{key} is not supported by lorakit yet; remove it")
            continue
        if key in allowed:
            _check_value(f"{file}: {where}", key, value)
            continue
        known = _DATASET_KEYS | _ANY_KEYS | _SUBSET_KEYS
        if key in known:
            raise ConfigError(f"{file}: {where}.{key} is not allowed here; it belongs in {elsewhere}")
        raise ConfigError(f"{file}: {where}.{key} is not a dataset-config key (typo?)")
    return {k: v for k, v in table.items() if k not in _NOT_YET}


def _resolve_dir(raw: str, toml_dir: Path, where: str) -> Path:
    p = Path(raw).expanduser()
    candidates = [p] if p.is_absolute() else [toml_dir / p, Path.cwd() / p]
    for c in candidates:
        if c.is_dir():
            return c
    raise ConfigError(f"{where}.image_dir: folder {raw!r} not found (looked in "
                      f"{', '.join(str(c) for c in candidates)})")


def caption_settings(get: Any) -> CaptionSettings:
    """CaptionSettings from a lookup function that applies the fall-back chain."""
    return CaptionSettings(prefix=get("caption_prefix"), suffix=get("caption_suffix"),
                           shuffle=get("shuffle_caption"), separator=get("caption_separator"),
                           keep_tokens=get("keep_tokens"), dropout_rate=float(get("caption_dropout_rate")),
                           tag_dropout_rate=float(get("caption_tag_dropout_rate")))


def bucket_settings(get: Any, key: str = "data") -> BucketSettings:
    """BucketSettings from a lookup function that applies the fall-back chain."""
    return BucketSettings(resolution=resolution_wh(get("resolution"), f"{key}.resolution"),
                          enable_bucket=get("enable_bucket"), min_reso=get("min_bucket_reso"),
                          max_reso=get("max_bucket_reso"), step=get("bucket_reso_steps"),
                          no_upscale=get("bucket_no_upscale"))


def load_dataset_toml(path: str | Path, data: DataCfg) -> tuple[list[GroupSpec], list[SubsetSpec]]:
    """Parse and validate a kohya dataset TOML into resolved groups and subsets (one-line errors)."""
    path = Path(path)
    name = path.name
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"data.config: file {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{name}: not valid TOML ({e})") from None
    for key in doc:
        if key not in ("general", "datasets"):
            raise ConfigError(f"{name}: top-level key {key!r} is not part of kohya's dataset config "
                              f"(expected [general] and [[datasets]])")
    general = _check_table(name, "general", doc.get("general", {}), _DATASET_KEYS | _ANY_KEYS, "a subset")
    datasets = doc.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        raise ConfigError(f"{name}: needs at least one [[datasets]] entry with [[datasets.subsets]]")
    defaults = {fl.name: getattr(data, fl.name) for fl in fields(data)}
    defaults["num_repeats"] = 1
    groups: list[GroupSpec] = []
    subsets: list[SubsetSpec] = []
    for di, ds_raw in enumerate(datasets):
        where = f"datasets[{di}]"
        ds = _check_table(name, where, ds_raw, _DATASET_KEYS | _ANY_KEYS | {"subsets"},
                          "[[datasets.subsets]]")
        ds_subsets = ds.pop("subsets", [])
        if not isinstance(ds_subsets, list) or not ds_subsets:
            raise ConfigError(f"{name}: {where} has no [[datasets.subsets]] entry")

        def get_ds(key: str, _ds: dict = ds) -> Any:
            for level in (_ds, general, defaults):
                if key in level:
                    return level[key]
            raise KeyError(key)

        groups.append(GroupSpec(bucket_settings(get_ds, f"{name}: {where}"), ds.get("batch_size",
                                general.get("batch_size")), key=where))
        for si, sub_raw in enumerate(ds_subsets):
            swhere = f"{where}.subsets[{si}]"
            sub = _check_table(name, swhere, sub_raw, _ANY_KEYS | _SUBSET_KEYS, "[[datasets]] or [general]")
            if "image_dir" not in sub:
                raise ConfigError(f"{name}: {swhere}.image_dir is required")

            def get(key: str, _sub: dict = sub, _get_ds: Any = get_ds) -> Any:
                return _sub[key] if key in _sub else _get_ds(key)

            subsets.append(SubsetSpec(
                dir=_resolve_dir(sub["image_dir"], path.parent, f"{name}: {swhere}"),
                repeats=get("num_repeats"), class_tokens=sub.get("class_tokens", ""),
                is_reg=sub.get("is_reg", False), caption=caption_settings(get),
                caption_extension=get("caption_extension"), flip_aug=get("flip_aug"), group=di, key=swhere))
    return groups, subsets
