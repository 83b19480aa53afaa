"""Dataset scan: folders (or a kohya dataset TOML) → a list of checked, bucketed images with captions.

Decisions, in one place (the report shows each as a line with action `skipped` or `warning`):

* Folder convention (reference/kohya-format.md §2.1): `data.dir` holds `N_class tokens` subfolders,
  N = repeats. A subfolder with images but no `N_` prefix, or with N = 0, is *skipped and reported*;
  images lying directly in `data.dir` are reported too. Hidden folders are ignored.
* Captions: `<stem><caption_extension>`, first line, BOM stripped. Missing, empty or non-UTF-8 caption
  files fall back to the class tokens (else the empty caption) with a warning; a subset with no caption
  files at all gets one line instead of one per image.
* Skipped: unreadable paths (permission, a folder or broken link named like an image), zero-byte,
  truncated, not-an-image, images with a side shorter than one bucket step (nothing left to train on),
  exact duplicates (same content sha256; the first in scan order is kept: a duplicate would silently
  double an image's weight), files with an image-like extension lorakit cannot read (.tiff, .heic…).
* Warnings (image still used): content format does not match the extension, animated (first frame
  used), too small (area under 25 % of the training area: upscaled more than 2× per side, so blurry;
  not checked with bucket_no_upscale, which never upscales), extreme aspect ratio (cropping keeps less
  than half of the picture), caption longer than the text encoder's token limit, trigger word missing.
* Regularisation images are repeated until they match training images × repeats, as kohya does: a first
  pass gives each its folder repeats (stopping once the target is reached), later passes add one each.
* Nothing under `data.dir` is ever written or modified.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lorakit.config.schema import DataCfg
from lorakit.data.buckets import BucketSettings, bucket_list, place, validate
from lorakit.data.captions import CaptionSettings, add_prefix_suffix
from lorakit.data.images import (FLATTEN_COLOUR, IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, ImageProblem,
                                 caption_extension_problem, decode, extension_mismatch)
from lorakit.data.kohya_toml import (GroupSpec, SubsetSpec, bucket_settings, caption_settings,
                                     load_dataset_toml)
from lorakit.data.report import DataReport, Problem, check
from lorakit.errors import ConfigError, DataError
from lorakit.fsutil import inside_folder, printable, utf8_name

TOO_SMALL_AREA_FRACTION = 0.25
EXTREME_CROP_KEPT_FRACTION = 0.5
_FOLDER_RE = re.compile(r"^(\d+)_(.*)$", re.DOTALL)


def folder_repeats(name: str) -> int:
    """The repeats of a kohya 'N_name' image folder (10 for '10_ohwx woman'); 0 for a name without the prefix (such a
    folder is not used)."""
    m = _FOLDER_RE.match(name)
    return int(m.group(1)) if m else 0


@dataclass
class ImageItem:
    """One usable image: where it is, its caption, and exactly how it becomes a training tensor."""

    path: Path
    caption: str                         # raw caption after fall-back (no prefix/suffix/shuffle)
    caption_source: str                  # 'file' | 'class_tokens' | 'empty'
    subset: int                          # index into Dataset.subsets
    repeats: int                         # effective repeats per epoch (reg: after balancing)
    is_reg: bool
    loss_weight: float
    original_size: tuple[int, int]       # (w, h) after EXIF orientation
    bucket: tuple[int, int]              # (w, h) of the training tensor
    crop: tuple[int, int]                # (left, top) of the bucket window in the resized image
    resized_size: tuple[int, int]        # (w, h) the image is resized to before cropping
    sha256: str                          # of the file's bytes
    group: int = 0                       # [[datasets]] index (buckets and batch size are per group)

    # The (height, width)-ordered views that models.base.Batch and SDXL's size conditioning use.
    @property
    def original_hw(self) -> tuple[int, int]:
        return (self.original_size[1], self.original_size[0])

    @property
    def crop_top_left(self) -> tuple[int, int]:
        return (self.crop[1], self.crop[0])

    @property
    def target_hw(self) -> tuple[int, int]:
        return (self.bucket[1], self.bucket[0])


@dataclass
class Subset:
    """One folder with its resolved settings and its usable items."""

    dir: Path
    repeats: int
    class_tokens: str
    is_reg: bool
    caption: CaptionSettings
    caption_extension: str
    flip_aug: bool
    loss_weight: float
    group: int = 0
    items: list[ImageItem] = field(default_factory=list)


@dataclass
class Dataset:
    """The result of a scan: subsets, usable items, problems, per-group bucket settings and the report."""

    subsets: list[Subset]
    items: list[ImageItem]
    groups: list[GroupSpec]
    problems: list[Problem]
    report: DataReport = field(default_factory=DataReport)

    @property
    def buckets(self) -> dict[tuple[int, int], int]:
        """Histogram (w, h) → number of images (not × repeats)."""
        return dict(Counter(it.bucket for it in self.items))


# ---------------------------------------------------------------------------------------------- folders

def _has_images(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())
    except OSError:
        return False


NOT_UTF8 = ("name is not valid UTF-8 (bytes the file system could not decode): not used; rename it with UTF-8 "
            "characters (e.g. `convmv -f latin1 -t utf8`)")


def entry_problem(path: Path, roots: list[Path], follow: bool) -> str | None:
    """Why a dataset entry is not used: a name that is not UTF-8, or a symlink that leads out of every dataset
    folder in ``roots`` (unless data.follow_symlinks). None when it may be used."""
    if not utf8_name(path.name):
        return NOT_UTF8
    if not follow and path.is_symlink() and not any(inside_folder(path, r) for r in roots):
        return (f"symlink to {printable(Path(path).resolve())}, outside the dataset folder: not followed; set "
                "data.follow_symlinks = true to use it")
    return None


def folder_subsets(root: Path, *, is_reg: bool, data: DataCfg, key: str) -> tuple[list[SubsetSpec], list[Problem]]:
    """Subsets of a kohya-style parent folder; folders that cannot be used are reported, not dropped silently."""
    if not root.is_dir():
        raise ConfigError(f"{key}: folder {root} not found (it should hold subfolders like '10_ohwx woman')")
    cap = caption_settings(lambda k: getattr(data, k))
    specs: list[SubsetSpec] = []
    problems: list[Problem] = []
    loose = 0
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        why = entry_problem(entry, [root], data.follow_symlinks)
        if why is not None:
            problems.append(Problem(printable(entry), why, "skipped"))
            continue
        if not entry.is_dir():
            loose += entry.suffix.lower() in IMAGE_EXTENSIONS
            continue
        m = _FOLDER_RE.match(entry.name)
        if folder_repeats(entry.name) == 0:
            if _has_images(entry):
                why = ("0 repeats" if m else "folder name has no repeats prefix")
                problems.append(Problem(str(entry), f"{why}: not used; rename it like "
                                        f"'10_{m.group(2) if m else entry.name}' (10 = repeats)", "skipped"))
            continue
        specs.append(SubsetSpec(dir=entry, repeats=int(m.group(1)), class_tokens=m.group(2).strip(),
                                is_reg=is_reg, caption=cap, caption_extension=data.caption_extension,
                                flip_aug=data.flip_aug, group=0, key=str(entry)))
    if loose:
        problems.append(Problem(str(root), f"{loose} image(s) directly in this folder are not used: move them "
                                f"into a subfolder named like '10_ohwx woman'", "skipped"))
    return specs, problems


# ---------------------------------------------------------------------------------------------- captions

def read_caption(image: Path, extension: str, roots: list[Path] | None = None) -> tuple[str | None, str | None]:
    """(caption, problem) for `image`: caption None means 'use the fall-back'; problem explains why. With
    ``roots`` (the dataset folders), a caption file that is a symlink leading out of them is not read."""
    cap_path = image.parent / (image.stem + extension)
    if not cap_path.exists():
        other = caption_case_variant(cap_path)
        if other is None and (other := _unicode_form_variant(cap_path)) is not None:
            return None, (f"caption file {other.name} is not read: its name spells {cap_path.name} with other Unicode "
                          f"code points (macOS's decomposed accents, NFD); rename the files to one form, e.g. "
                          f"`convmv -r -f utf8 -t utf8 --nfc --notest FOLDER`")
        return None, ("missing caption" if other is None else f"caption file {other.name} is not read: captions are "
                      f"read as {cap_path.name} (the extension's case differs); rename it to {cap_path.name}")
    if roots is not None and cap_path.is_symlink() and not any(inside_folder(cap_path, r) for r in roots):
        return None, (f"caption file {cap_path.name} is a symlink outside the dataset folder: not read (set "
                      "data.follow_symlinks = true to use it)")
    try:
        raw = cap_path.read_bytes()
    except OSError as e:
        return None, f"caption file unreadable ({e.strerror or e})"
    try:
        text = decode_caption_bytes(raw)
    except UnicodeDecodeError:
        return None, f"caption file {cap_path.name} is not UTF-8: ignored; re-save it as UTF-8"
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    if not first:
        return None, "empty caption"
    extra = sum(1 for ln in lines[1:] if ln.strip())
    return first, (f"caption has {extra + 1} lines; only the first is used" if extra else None)


def decode_caption_bytes(raw: bytes) -> str:
    """A caption file's text: UTF-8 (a BOM dropped), or UTF-16 when it starts with a UTF-16 BOM (what Windows
    Notepad's "Unicode" saves; the BOM makes it unambiguous). Raises UnicodeDecodeError otherwise (Latin-1 …)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) and not raw.startswith(b"\xff\xfe\x00\x00"):
        return raw.decode("utf-16")
    if b"\x00" in raw:  # valid UTF-8 to the letter, but NULs between letters: UTF-16 saved without a BOM
        body = raw[:len(raw) // 2 * 2]
        if len(raw) % 2 == 0 and body[1::2].count(0) > len(body) // 4 and 0 not in body[0::2]:
            return raw.decode("utf-16-le")
        if len(raw) % 2 == 0 and body[0::2].count(0) > len(body) // 4 and 0 not in body[1::2]:
            return raw.decode("utf-16-be")
        raise UnicodeDecodeError("utf-8", raw, raw.index(0), raw.index(0) + 1, "NUL byte in a caption")
    return raw.decode("utf-8-sig")


def _unicode_form_variant(cap_path: Path) -> Path | None:
    """A file beside the missing ``cap_path`` whose name is the same text in another Unicode normal form (an image
    ``café.png`` in NFC, its caption ``café.txt`` in NFD: two names on Linux)."""
    import unicodedata

    want = unicodedata.normalize("NFC", cap_path.name)
    if want.isascii():
        return None
    try:
        return next((p for p in cap_path.parent.iterdir()
                     if p.name != cap_path.name and unicodedata.normalize("NFC", p.name) == want), None)
    except OSError:
        return None


def caption_case_variant(cap_path: Path) -> Path | None:
    """An existing ``x.TXT`` (or ``x.Txt``) beside the missing ``x.txt``: on a case-sensitive file system it is
    another file, which neither training nor kohya's tools read, and ``lorakit caption`` must not cover with a new
    one."""
    ext = cap_path.suffix
    for other in {ext.upper(), ext.lower(), ext[:2].upper() + ext[2:].lower()} - {ext}:
        candidate = cap_path.with_suffix(other)
        if candidate.is_file() and candidate.name in {p.name for p in candidate.parent.iterdir()}:
            return candidate  # (the name check: a case-insensitive file system finds cap_path itself under it)
    return None


# ---------------------------------------------------------------------------------------------- scan

@dataclass
class _Ctx:
    data: DataCfg
    groups: list[GroupSpec]
    bucket_lists: list[list[tuple[int, int]]]
    count_tokens: Callable[[str], int] | None
    max_tokens: int | None
    problems: list[Problem]
    seen: dict[str, Path]
    roots: list[Path] = field(default_factory=list)  # the dataset folders: symlinks must stay inside them


def _warn(ctx: _Ctx, path: Path, reason: str, action: str = "warning") -> None:
    ctx.problems.append(Problem(printable(path), reason, action))  # type: ignore[arg-type]


def _scan_image(ctx: _Ctx, path: Path, si: int, spec: SubsetSpec, missing: list[Path]) -> ImageItem | None:
    if path.is_symlink() and not path.exists():
        _warn(ctx, path, f"unreadable: broken symlink to {printable(Path(os.readlink(path)))} (the file it points to "
              f"is missing); fix or remove the link", "skipped")
        return None
    try:
        img, info = decode(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except ImageProblem as e:
        _warn(ctx, path, e.reason, "skipped")
        return None
    except OSError as e:
        _warn(ctx, path, f"unreadable ({e.strerror or e})", "skipped")
        return None
    del img
    if digest in ctx.seen:
        cap = path.with_name(path.stem + spec.caption_extension)
        _warn(ctx, path, f"exact duplicate of {printable(ctx.seen[digest])}" + (
            f" (its caption file {cap.name} is not used either)" if cap.is_file() else ""), "skipped")
        return None
    settings: BucketSettings = ctx.groups[spec.group].buckets
    w, h = info.size
    if min(w, h) < settings.step:
        _warn(ctx, path, f"too small to train: {w}x{h} has a side under {settings.step} px", "skipped")
        return None
    ctx.seen[digest] = path
    if info.frames > 1:
        _warn(ctx, path, f"animated ({info.frames} frames): only the first frame is used")
    if info.transparent:
        _warn(ctx, path, f"transparent pixels are flattened onto {FLATTEN_COLOUR} (trained as seen on {FLATTEN_COLOUR}"
              f"); fill the background yourself for another colour")
    if extension_mismatch(path, info.format):
        _warn(ctx, path, f"content is {info.format} but the extension is {path.suffix}; used as {info.format}")
    pl = place(info.size, settings, ctx.bucket_lists[spec.group])
    if min(pl.bucket) < settings.step:  # only with bucket_no_upscale: a side shrinks below one step
        _warn(ctx, path, f"too small to train: {w}x{h} scaled to the training area has a side under "
              f"{settings.step} px", "skipped")
        return None
    if not settings.no_upscale and w * h < TOO_SMALL_AREA_FRACTION * settings.area:
        pct = 100 * w * h / settings.area
        _warn(ctx, path, f"too small: {w}x{h} is {pct:.3g}% of the training area "
              f"{settings.resolution[0]}x{settings.resolution[1]}; it will be upscaled (blurry)")
    kept = pl.bucket[0] * pl.bucket[1] / (pl.resized[0] * pl.resized[1])
    if kept < EXTREME_CROP_KEPT_FRACTION:
        _warn(ctx, path, f"extreme aspect ratio {w}x{h}: cropping to bucket {pl.bucket[0]}x{pl.bucket[1]} "
              f"keeps only {100 * kept:.0f}% of the picture")
    caption, source = _caption_for(ctx, path, spec, missing)
    _check_caption(ctx, path, spec, caption)
    return ImageItem(path=path, caption=caption, caption_source=source, subset=si, repeats=spec.repeats,
                     is_reg=spec.is_reg, loss_weight=ctx.data.prior_loss_weight if spec.is_reg else 1.0,
                     original_size=info.size, bucket=pl.bucket, crop=pl.crop, resized_size=pl.resized,
                     sha256=digest, group=spec.group)


def _fallback_text(spec: SubsetSpec) -> str:
    return f"class tokens '{spec.class_tokens}' used" if spec.class_tokens else "trained with an empty caption"


def _caption_for(ctx: _Ctx, path: Path, spec: SubsetSpec, missing: list[Path]) -> tuple[str, str]:
    roots = None if ctx.data.follow_symlinks else ctx.roots + [spec.dir]
    text, problem = read_caption(path, spec.caption_extension, roots)
    if text is not None:
        if problem:
            _warn(ctx, path, problem)
        return text, "file"
    fallback = _fallback_text(spec)
    if problem == "missing caption":
        missing.append(path)
    else:
        _warn(ctx, path, f"{problem}: {fallback}")
    return (spec.class_tokens, "class_tokens") if spec.class_tokens else ("", "empty")


def _check_caption(ctx: _Ctx, path: Path, spec: SubsetSpec, caption: str) -> None:
    full = add_prefix_suffix(caption, spec.caption)
    if ctx.count_tokens is not None and ctx.max_tokens is not None and full:
        n = ctx.count_tokens(full)
        if n > ctx.max_tokens:
            _warn(ctx, path, f"caption is {n} tokens; the text encoder only sees the first {ctx.max_tokens}")
    if spec.is_reg:
        return
    trigger = ctx.data.trigger or (spec.class_tokens.split()[0] if spec.class_tokens.split() else "")
    if trigger and not re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", full, re.IGNORECASE):
        _warn(ctx, path, f"trigger word '{trigger}' not in the caption")


def _scan_subset(ctx: _Ctx, si: int, spec: SubsetSpec) -> list[ImageItem]:
    items: list[ImageItem] = []
    missing: list[Path] = []
    # Real files before symlinks: of an image and a link to it, the file (and its caption) is kept, the link skipped.
    files = sorted(spec.dir.iterdir(), key=lambda p: (p.is_symlink(), p))
    image_names = [p.name for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    names_of: dict[str, list[str]] = {}  # stem -> the image names of that stem (a.png + a.jpg share a.txt)
    for n in image_names:
        names_of.setdefault(Path(n).stem, []).append(n)
    image_stems = set(names_of)
    roots = ctx.roots + [spec.dir]
    for path in files:
        ext = path.suffix.lower()
        if path.name.startswith("."):
            continue
        if ext in IMAGE_EXTENSIONS or ext in UNSUPPORTED_IMAGE_EXTENSIONS or not utf8_name(path.name):
            why = entry_problem(path, roots, ctx.data.follow_symlinks)
            if why is not None:
                _warn(ctx, path, why, "skipped")
                continue
        if path.is_dir() and ext not in IMAGE_EXTENSIONS:       # a folder named like an image stays "unreadable"
            if _has_images(path) or any(p.is_dir() for p in path.iterdir()):
                _warn(ctx, path, "nested folder: not used (only the images directly in a subset folder are); move "
                      f"its images up or make it a subset of its own like '10_{path.name}' in the data folder")
            continue
        if ext == spec.caption_extension.lower() and path.stem not in image_stems:
            if path.stem in image_names:  # a.png.txt, as some captioners name it
                want = Path(path.stem).stem + spec.caption_extension
                _warn(ctx, path, f"caption file not used: captions are read as {want} (the image's name without its "
                      f"extension); rename it to {want}" + (f" ({want} exists: merge the two)"
                                                          if (path.parent / want).exists() else ""))
            else:
                _warn(ctx, path, f"caption file without an image ({path.stem} + an image extension): not used")
            continue
        if ext in UNSUPPORTED_IMAGE_EXTENSIONS:
            _warn(ctx, path, f"{ext} images are not supported: convert it to PNG or JPEG", "skipped")
            continue
        if ext not in IMAGE_EXTENSIONS:
            continue
        item = _scan_image(ctx, path, si, spec, missing)
        if item is not None:
            items.append(item)
            others = [n for n in names_of.get(path.stem, ()) if n != path.name]
            if others and item.caption_source == "file":  # a.png + a.jpg: one a.txt captions both
                _warn(ctx, path, f"shares its caption file {path.stem}{spec.caption_extension} with {', '.join(others)}: "
                      "both are trained with one caption; rename one and give it its own caption")
    fallback = _fallback_text(spec)
    if missing and len(missing) == len(items) and len(items) > 1:
        _warn(ctx, spec.dir, f"no caption files ({spec.caption_extension}) for any of the {len(items)} images: "
              f"{fallback}{_other_extension_hint(missing, spec.caption_extension)}")
    else:
        for p in missing:
            _warn(ctx, p, f"missing caption ({p.stem}{spec.caption_extension}): {fallback}")
    return items


def _other_extension_hint(images: list[Path], extension: str) -> str:
    """Suggest the caption extension actually present (kohya's default is .caption, lorakit's .txt)."""
    for other in (".txt", ".caption", ".cap"):
        if other != extension and any((p.parent / (p.stem + other)).is_file() for p in images):
            return f"; {other} files exist: set data.caption_extension = \"{other}\""
    return ""


def balance_reg(items: list[ImageItem], problems: list[Problem], subsets: list[SubsetSpec]) -> list[ImageItem]:
    """Give regularisation images repeats so that they total the training samples per epoch."""
    target = sum(it.repeats for it in items if not it.is_reg)
    reg = [it for it in items if it.is_reg]
    if not reg:
        return items
    for it in reg:
        it.repeats = 0
    total = 0
    for it in reg:  # first pass: folder repeats, until the target is met
        if total >= target:
            break
        it.repeats = subsets[it.subset].repeats
        total += it.repeats
    while total < target:
        for it in reg:
            if total >= target:
                break
            it.repeats += 1
            total += 1
    unused = [it for it in reg if it.repeats == 0]
    for sub_idx in sorted({it.subset for it in unused}):
        n = sum(1 for it in unused if it.subset == sub_idx)
        problems.append(Problem(str(subsets[sub_idx].dir), f"{n} regularisation image(s) not needed: the others "
                                f"already match the {target} training samples per epoch", "skipped"))
    return [it for it in items if not (it.is_reg and it.repeats == 0)]


def _resolve_specs(data: DataCfg) -> tuple[list[GroupSpec], list[SubsetSpec], list[Problem], str]:
    problems: list[Problem] = []
    if data.config and (data.dir or data.reg_dir):
        key = "data.dir" if data.dir else "data.reg_dir"
        raise ConfigError(f"{key}: not used when data.config is set (the dataset TOML lists every folder); "
                          f"remove it, or add the folder to the TOML as a subset (is_reg = true for reg images)")
    if data.config:
        groups, specs = load_dataset_toml(data.config, data)
        where = str(data.config)
    elif data.dir:
        groups = [GroupSpec(bucket_settings(lambda k: getattr(data, k)), None, key="data")]
        specs, problems = folder_subsets(Path(data.dir), is_reg=False, data=data, key="data.dir")
        where = str(data.dir)
    else:
        raise ConfigError("data.dir: set data.dir (a folder of 'N_trigger class' subfolders) or data.config "
                          "(a kohya dataset TOML)")
    if data.reg_dir and data.dir and Path(data.reg_dir).resolve() == Path(data.dir).resolve():
        raise ConfigError(f"data.reg_dir: {data.reg_dir} is data.dir itself; regularisation images go in a folder of "
                          f"their own (e.g. reg/1_woman), or remove data.reg_dir")
    if data.reg_dir:
        reg, reg_problems = folder_subsets(Path(data.reg_dir), is_reg=True, data=data, key="data.reg_dir")
        specs += reg
        problems += reg_problems
    return groups, specs, problems, where


def scan_dataset(data: DataCfg, *, divisibility: int = 64, count_tokens: Callable[[str], int] | None = None,
                 max_tokens: int | None = None) -> Dataset:
    """Scan, check and bucket the dataset described by `data`; raise DataError if nothing is usable.

    `divisibility` is the model's required multiple for bucket sides; `count_tokens`/`max_tokens` enable
    the caption-length check (a family passes its tokenizer's counter and limit).
    """
    groups, specs, problems, where = _resolve_specs(data)
    for s in specs:  # `.png` would read the images as captions (the config check knows no image extensions)
        if (problem := caption_extension_problem(s.caption_extension)) is not None:
            key = f"{Path(str(data.config)).name}: {s.key}" if data.config else "data"
            raise ConfigError(f"{key}.caption_extension: {problem}, got {s.caption_extension!r}")
    for g in groups:
        validate(g.buckets, divisibility, "data" if g.key == "data" else f"{Path(str(data.config)).name}: {g.key}")
    ctx = _Ctx(data, groups, [bucket_list(g.buckets) for g in groups], count_tokens, max_tokens, problems, {},
               [Path(d) for d in (data.dir, data.reg_dir) if d])
    items: list[ImageItem] = []
    first_of: dict[Path, SubsetSpec] = {}
    for si, spec in enumerate(specs):
        earlier = first_of.setdefault(spec.dir.resolve(), spec)
        if earlier is not spec:  # every image would be an "exact duplicate of" itself: one line for the folder
            n = earlier.repeats + spec.repeats
            fix = ((f"list the folder once, with num_repeats = {n} to train it as both would" if data.config else
                    f"keep one folder, named '{n}_{earlier.class_tokens}', to train it as both would")
                   if earlier.is_reg == spec.is_reg else
                   "a folder is either training or regularisation images; copy the images for the other use")
            problems.append(Problem(printable(spec.dir), f"{spec.key or spec.dir}: the same folder as {earlier.key}: "
                                    f"not used (its images are trained once, by the first); {fix}", "skipped"))
            continue
        items += _scan_subset(ctx, si, spec)
    items = balance_reg(items, problems, specs)
    subsets = [Subset(dir=s.dir, repeats=s.repeats, class_tokens=s.class_tokens, is_reg=s.is_reg,
                      caption=s.caption, caption_extension=s.caption_extension, flip_aug=s.flip_aug,
                      loss_weight=data.prior_loss_weight if s.is_reg else 1.0, group=s.group) for s in specs]
    for it in items:
        subsets[it.subset].items.append(it)
    dataset = Dataset(subsets=subsets, items=items, groups=groups, problems=problems)
    dataset.report = check(dataset)
    if not any(not it.is_reg for it in items):
        raise _no_usable(where, specs, problems, dataset.report)
    if data.alpha_mask or data.mask_dir:  # walk7o: a missing, mis-sized or empty mask before any model loads
        from lorakit.data.masks import check_masks

        check_masks(items, data.alpha_mask, data.mask_dir)
    return dataset


def _no_usable(where: str, specs: list[SubsetSpec], problems: list[Problem], report: DataReport) -> DataError:
    skipped = Counter(p.reason.split(":")[0].split(" (")[0] for p in problems if p.action == "skipped")
    if not any(not s.is_reg for s in specs):
        why = "no training subfolder named like '10_ohwx woman'"
        if skipped:
            why += "; " + ", ".join(f"{n}× {r}" for r, n in skipped.most_common(3))
    elif skipped:
        why = f"{sum(skipped.values())} file(s) skipped (" + ", ".join(
            f"{n}× {r}" for r, n in skipped.most_common(4)) + ")"
    else:
        why = "the training folders hold no images (" + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")"
    err = DataError(f"no usable image in {where}: {why}; `lorakit data check` reports each file")
    err.report = report  # type: ignore[attr-defined]
    return err
