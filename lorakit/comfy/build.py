"""The Dataset and Config nodes' work: a dataset handle with ``data check``'s report, and the run's TOML.

A dataset is always a kohya folder (``N_trigger class`` subfolders) by the time training sees it. A plain folder of
images + captions, or images arriving as a ComfyUI IMAGE batch with one caption per line, become such a folder under
``<lorakit home>/comfy/datasets/<id>/`` (links to the user's files, or PNGs written there); the user's folder is
never written to.

The TOML is built in layers, later winning, and validated by the CLI's own loader (one line naming the key on any
problem): preset < TOML file or text < the node's widgets (0 / empty / "(preset)" leave a key to the layers below)
< the model files picked < the dataset < ``section.key=value`` lines. Without a ``save.name`` the run is named after
a hash of everything else, so re-queueing the same graph finds the same run, and two Train nodes with different
settings train into two folders.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from lorakit.errors import ConfigError, DataError, LorakitError

NONE = "(none)"
TOY = "(toy model)"
PRESET_NONE = "(none)"
KOHYA_DIR_RE = re.compile(r"^\d+_")


@dataclass(frozen=True)
class DatasetHandle:
    """What the Dataset node passes on: the run's [data] keys, where the images are, and the report."""

    data: Mapping[str, Any]
    folder: str
    report: str
    usable: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- dataset

def _images(folder: Path) -> list[Path]:
    from lorakit.data.images import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _fresh(folder: Path) -> None:
    """Empty one of our own dataset folders (under the lorakit home) before filling it again."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src, dst)
    except OSError:  # no symlinks (Windows without the privilege): a copy
        shutil.copy2(src, dst)


def _subfolder_name(repeats: int, trigger: str, class_word: str) -> str:
    words = " ".join(w for w in (trigger.strip(), class_word.strip()) if w) or "concept"
    if "/" in words or "\\" in words or words.startswith("."):
        raise ConfigError(f"trigger: {words!r} cannot be part of a folder name; use a plain word")
    return f"{int(repeats)}_{words}"


def plain_folder_dataset(folder: Path, home: Path, repeats: int, trigger: str, class_word: str) -> Path:
    """A kohya parent folder of links to a plain folder's images and captions, kept in step with the folder (made
    again only when its files changed, so a run reading it is not disturbed by an unchanged re-queue). Returns the
    parent folder."""
    key = hashlib.sha256(f"{folder.resolve()}|{repeats}|{trigger}|{class_word}".encode()).hexdigest()[:12]
    root = home / "comfy" / "datasets" / f"folder-{key}"
    sub = root / _subfolder_name(repeats, trigger, class_word)
    want: dict[str, Path] = {}
    for img in _images(folder):
        want[img.name] = img.resolve()
        for cap in folder.glob(f"{glob_escape(img.stem)}.*"):
            if cap.suffix.lower() in (".txt", ".caption") and cap.is_file():
                want[cap.name] = cap.resolve()
    have = {p.name: p.resolve() for p in sub.iterdir()} if sub.is_dir() else None
    if have != want or sorted(os.listdir(root)) != [sub.name]:
        _fresh(root)
        sub.mkdir()
        for name, src in want.items():
            _link_or_copy(src, sub / name)
    return root


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def image_batch_dataset(images: Any, captions: str, home: Path, repeats: int, trigger: str,
                        class_word: str) -> Path:
    """A kohya parent folder holding a ComfyUI IMAGE batch (B×H×W×C floats in [0, 1]) as PNGs, with one caption per
    line of ``captions`` (a single line captions every image). The folder is named after the pixels and captions,
    so the same batch gives the same folder (and the same latent cache)."""
    from lorakit.comfy.images import comfy_to_pil

    _refuse_nonfinite(images)
    pics = comfy_to_pil(images)
    lines = [ln.strip() for ln in (captions or "").splitlines() if ln.strip()]
    if len(lines) not in (0, 1, len(pics)):
        raise ConfigError(f"captions: {len(lines)} lines for {len(pics)} images; give one caption per image "
                          "(one per line), one caption for all, or none")
    caps = lines * len(pics) if len(lines) == 1 else (lines or [""] * len(pics))
    digest = hashlib.sha256(f"{repeats}|{trigger}|{class_word}".encode())
    for pic, cap in zip(pics, caps):
        digest.update(pic.tobytes())
        digest.update(f"{pic.size}|{cap}".encode())
    root = home / "comfy" / "datasets" / f"images-{digest.hexdigest()[:12]}"
    sub = root / _subfolder_name(repeats, trigger, class_word)
    if not (root / ".complete").is_file():
        from lorakit.data.images import save_image
        from lorakit.fsutil import write_text

        _fresh(root)
        sub.mkdir()
        for i, (pic, cap) in enumerate(zip(pics, caps)):
            save_image(pic, sub / f"{i:04d}.png")
            if cap:
                write_text(sub / f"{i:04d}.txt", cap + "\n")
        write_text(root / ".complete", "")
    return root


def _refuse_nonfinite(images: Any) -> None:
    """NaN/Inf pixels in the IMAGE batch (a broken upstream node): one line naming the Dataset node's ``images`` input
    and the images, not PNGs with black or white pixels written and trained on."""
    import torch

    x = images if images.dim() == 4 else images.unsqueeze(0)
    bad = [i for i in range(x.shape[0]) if not bool(torch.isfinite(x[i]).all())]
    if bad:
        shown = ", ".join(str(i + 1) for i in bad[:10]) + (", …" if len(bad) > 10 else "")
        raise ConfigError(f"images: {len(bad)} of the {x.shape[0]} images of the IMAGE batch hold NaN/Inf values "
                          f"(image {shown}); fix or remove the node that makes them (ComfyUI images are values in "
                          "[0, 1]); nothing was written")


def data_report(data: Mapping[str, Any], check: Mapping[str, Any] = {}) -> tuple[str, int]:
    """``lorakit data check``'s table for these [data] keys plus ``check`` (keys only the check assumes, e.g. the
    resolution; the Config node sets the run's), buckets and caption lengths checked for the strictest installed
    family as the CLI does without one, and the number of usable images; DataError if none is."""
    import math

    from lorakit.caption.text import family_limit
    from lorakit.config.schema import DataCfg
    from lorakit.data.report import duplicate_captions
    from lorakit.data.scan import scan_dataset
    from lorakit.models.registry import families, get_family

    names = families()
    divisibility = math.lcm(*(get_family(f).SPEC.bucket_divisibility for f in names))
    limit, counter = min((family_limit(f) for f in names), key=lambda lc: lc[0])
    dataset = scan_dataset(DataCfg(**{**dict(data), **dict(check)}), divisibility=divisibility, count_tokens=counter, max_tokens=limit)
    report = dataset.report
    report.problems += duplicate_captions(dataset)
    return report.to_table(), report.usable


def make_dataset(folder: str, repeats: int, trigger: str, class_word: str, home: Path,
                 images: Any = None, captions: str = "", resolution: int = 1024) -> DatasetHandle:
    """The Dataset node: a kohya folder as is, a plain folder (linked), or an IMAGE batch (written)."""
    trigger = (trigger or "").strip()
    linked = False
    if images is not None:
        if str(folder or "").strip():  # one source: the folder would silently not be used
            raise ConfigError(f"folder: {str(folder).strip()!r} is set and an IMAGE batch is connected; give one "
                              "(clear the folder to train on the connected images, or disconnect them)")
        root = image_batch_dataset(images, captions, home, repeats, trigger, class_word)
        n = images.shape[0] if getattr(images, "dim", lambda: 4)() == 4 else 1  # one [H, W, C] image is one image
        source = f"{n} image{'s' if n != 1 else ''} from the graph"
    else:
        if not str(folder or "").strip():
            raise ConfigError("folder: empty; give a dataset folder (kohya `10_trigger class` subfolders, or "
                              "images with .txt captions), or connect an IMAGE batch")
        path = Path(os.path.expanduser(str(folder).strip())).resolve()
        if not path.is_dir():
            raise DataError(f"folder: {path} is not a folder")
        if any(p.is_dir() and KOHYA_DIR_RE.match(p.name) for p in path.iterdir()):
            root, source = path, f"kohya folder {path}"
        elif _images(path):
            root = plain_folder_dataset(path, home, repeats, trigger, class_word)
            linked = True
            source = f"images + captions in {path} (linked from {root})"
        else:
            raise DataError(f"folder: {path} has neither `10_trigger class` subfolders nor images")
    data: dict[str, Any] = {"dir": str(root)}
    if linked:  # lorakit's own links to the images the user picked, outside the generated folder: follow them
        data["follow_symlinks"] = True
    if trigger:
        data["trigger"] = trigger
    table, usable = data_report(data, check_keys(resolution))
    return DatasetHandle(data=data, folder=str(root), report=f"{source}\n{table}", usable=usable)


def check_keys(resolution: int) -> dict[str, int]:
    """The [data] keys the check assumes for a training resolution (smallest bucket side at most the resolution)."""
    r = int(resolution)
    return {"resolution": r, "min_bucket_reso": min(256, r), "max_bucket_reso": max(2048, 2 * r)}


# ------------------------------------------------------------------------------------------- config

def _toml_layer(toml: str) -> dict[str, Any]:
    """The TOML widget: a path to a .toml file (relative paths in it resolved against its folder) or TOML text
    (relative paths resolved against ComfyUI's working folder, as the CLI's overrides are)."""
    from lorakit.config.toml_io import read_toml
    from lorakit.config.validate import check_layer, resolve_paths

    text = (toml or "").strip()
    if not text:
        return {}
    candidate = Path(os.path.expanduser(text))
    if "\n" not in text and (text.endswith(".toml") or not any(c in text for c in "=[")):  # a path, not TOML text
        if not candidate.is_file():
            raise ConfigError(f"toml: {candidate} is not a file" + ("; give the run.toml in that folder"
                                                                    if candidate.is_dir() else ""))
        raw, label, base = read_toml(candidate, str(candidate)), str(candidate), candidate.resolve().parent
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"toml: invalid TOML: {str(exc).splitlines()[0]}") from None
        label, base = "toml", Path.cwd()
    layer = check_layer(raw, label)
    resolve_paths(layer, base)
    return layer


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    section, name = key.split(".")
    body = data.setdefault(section, {})
    if not isinstance(body, dict):
        raise ConfigError(f"{section}: must be a table")
    body[name] = value


def model_files(family: str, picks: Mapping[str, str]) -> dict[str, str]:
    """[model] paths from the model-file widgets: "(toy model)" is lorakit's shipped toy of the family; a file name
    is looked up in ComfyUI's model folders."""
    from lorakit.comfy.host import model_path

    out: dict[str, str] = {}
    if picks.get("checkpoint") == TOY:
        from lorakit.toy.paths import model_section

        out.update({k: v for k, v in model_section(family).items() if k != "family"})
    for key, name in picks.items():
        if name in (None, "", NONE, TOY):
            continue
        out[key] = str(model_path(key, name))
    if "checkpoint" in out and picks.get("checkpoint") not in (None, "", NONE, TOY):
        _refuse_other_base(out["checkpoint"], family)
    return out


def _refuse_other_base(path: str, family: str) -> None:
    """The checkpoint picked, told from its header at the Config node: another family's model, a LoRA, an encoder or a
    VAE is one line naming the file, what it is and what to pick (was: accepted here, and the queued job failed after
    starting, its reason only in the Train node's summary)."""
    from lorakit.models.registry import families, require_base
    from lorakit.safetensors_header import is_safetensors, read_safetensors_header, weights_format

    if family not in families():
        return  # the config's own check names an unknown family
    if weights_format(path) == "gguf":
        read_safetensors_header(path)  # "a GGUF file (...)": one line
    if is_safetensors(path):
        try:
            require_base(path, family)
        except LorakitError as exc:
            raise ConfigError(str(exc).replace("model.family = ", "family = ", 1)) from None


def build_toml(*, family: str, preset: str, toml: str, widgets: Mapping[str, Any], picks: Mapping[str, str],
               dataset: Optional[DatasetHandle], overrides: Sequence[str], runs_dir: Path,
               seed: Optional[int] = None) -> str:
    """The run's TOML text (see the module doc for the layers), validated as ``lorakit train`` would read it."""
    from lorakit.config.load import dump_toml
    from lorakit.ui.form import apply_overrides_to_toml, validate_toml

    data = _toml_layer(toml)
    if preset and preset != PRESET_NONE:
        data["preset"] = preset
    if family:
        _set(data, "model.family", family)
    for key, value in widgets.items():
        if value is None or value == "" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                            and value == 0):
            continue
        _set(data, key, value)
    if seed is not None:  # 0 is a seed, not "unset"
        _set(data, "training.seed", int(seed))
    fam = data.get("model", {}).get("family") or family
    for key, value in model_files(fam, picks).items():
        _set(data, f"model.{key}", value)
    if dataset is not None:
        for key, value in dataset.data.items():
            _set(data, f"data.{key}", value)
    data.setdefault("save", {}).setdefault("dir", str(runs_dir))
    text = dump_toml(data)
    lines = [ln.strip() for ln in overrides if ln.strip() and not ln.strip().startswith("#")]
    if lines:
        text = apply_overrides_to_toml(text, lines)
    data = tomllib.loads(text)
    if not data.get("save", {}).get("name"):
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        trigger = (data.get("data", {}).get("trigger") or "lora").replace(" ", "_")
        data["save"]["name"] = f"comfy-{trigger}-{digest}"
        text = dump_toml(data)
    validate_toml(text)
    return text
