"""The Dataset page's file work: where the UI may read and write, uploads (files or zip), captions, folder names.

Guards (every refusal is one line naming the file and what to do; nothing is written outside the dataset folder
and nothing already there is overwritten):

* :class:`Roots`: when the UI listens on other hosts, a folder typed into the page must lie under an allowed root
  (``--allow-root``, default: the UI's home and the current folder); on loopback any folder of the machine may be
  used, as with the CLI.
* Uploads: only images the scan can train on (checked by decoding, not by extension) and caption ``.txt`` files;
  zip members with absolute paths, ``..`` or links are refused (zip slip), and so are files and archives past the
  size limits (a zip's declared sizes are checked before anything is extracted, and the bytes actually extracted
  are counted too).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from lorakit.errors import DataError

CAPTION_EXTENSIONS = (".txt", ".caption")
MAX_UPLOAD_MB = 200            # one file (an image, or a whole zip)
MAX_EXTRACTED_MB = 1000        # everything a zip expands to
MAX_ZIP_MEMBERS = 5000
_FOLDER_WORD_RE = re.compile(r"^[^/\\:\x00]+$")


# ------------------------------------------------------------------------------------------------ roots


@dataclass(frozen=True)
class Roots:
    """Folders the page may read and write. ``None`` = anywhere (the UI serves only this machine)."""

    allowed: Optional[tuple[Path, ...]]

    def check(self, path: str | os.PathLike, what: str = "folder") -> Path:
        """The resolved path, or DataError when it lies outside every allowed root."""
        text = "" if path is None else str(path).strip()  # an empty Gradio field may arrive as None
        if not text:
            raise DataError(f"{what}: give a folder path")
        resolved = Path(os.path.expanduser(text)).resolve()
        if self.allowed is None:
            return resolved
        for root in self.allowed:
            if resolved == root or root in resolved.parents:
                return resolved
        roots = ", ".join(str(r) for r in self.allowed)
        raise DataError(f"{resolved}: outside the folders this UI may use while listening on other hosts "
                        f"({roots}); start it with --allow-root to add one")


def check_config_paths(roots: "Roots", values: dict[str, object]) -> None:
    """``section.key`` → value of a config's path settings, each checked against ``roots`` (while the UI listens on
    other hosts): the folders a job reads its dataset from and writes its run, caches and samples into (and the page
    then serves). Base model files (``model.*``) are only read by the run and may lie anywhere. DataError naming the
    key when one lies outside."""
    if roots.allowed is None:
        return
    from lorakit.config.load import field_specs

    for key, value in values.items():
        section, _, name = key.partition(".")
        spec = field_specs().get(section, {}).get(name)
        if section == "model" or spec is None or spec.meta.get("kind") != "path":
            continue
        if isinstance(value, str) and value.strip():
            try:
                roots.check(value, key)
            except DataError as exc:
                raise DataError(f"{key}: {exc}") from None


# ------------------------------------------------------------------------------------------------ folders


def kohya_folder_name(repeats: int, trigger: str, class_word: str) -> str:
    """``10_ohwx person``: the image folder name kohya's tools and lorakit's scan read repeats and tokens from."""
    trigger, class_word = trigger.strip(), class_word.strip()
    try:
        n = int(repeats) if not isinstance(repeats, float) or repeats.is_integer() else int("not whole")
    except (TypeError, ValueError):
        raise DataError(f"repeats: must be a whole number ≥ 1, got {repeats!r}") from None
    if n < 1:
        raise DataError(f"repeats: must be a whole number ≥ 1, got {n}")
    if not trigger:
        raise DataError("trigger: give the trigger word (e.g. ohwx), the word your prompts will use")
    words = f"{trigger} {class_word}".strip()
    if not _FOLDER_WORD_RE.match(words) or words in (".", ".."):
        raise DataError(f"trigger/class: {words!r} cannot be a folder name (no / \\ or :)")
    return f"{n}_{words}"


def image_folders(root: Path) -> list[Path]:
    """The ``N_words`` image folders under a dataset root (or the root itself when it holds images)."""
    from lorakit.data.images import IMAGE_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    subs = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
            and re.match(r"^\d+_", p.name)]
    if not subs and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir()):
        return [root]
    return subs


def list_images(root: Path, caption_extension: str = ".txt") -> list[tuple[Path, str]]:
    """(image, caption text or "") of every image in the dataset's image folders, sorted."""
    from lorakit.data.images import IMAGE_EXTENSIONS

    out = []
    for folder in image_folders(root):
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                cap = p.with_name(p.stem + caption_extension)
                try:
                    text = caption_text(cap.read_bytes()) if cap.is_file() else ""
                except (OSError, UnicodeDecodeError):
                    text = ""
                out.append((p, text.strip()))
    return out


def read_caption(image: Path, caption_extension: str = ".txt") -> tuple[str, str]:
    """(caption text, problem) of ``image`` for the caption editor: a caption that cannot be read as text (not
    UTF-8 / UTF-16, unreadable) is said in the status line, never a traceback; saving then replaces it (its first
    version kept as ``.bak``)."""
    cap = Path(image).with_name(Path(image).stem + caption_extension)
    if not cap.is_file():
        return "", ""
    try:
        return caption_text(cap.read_bytes()).strip(), ""
    except (OSError, UnicodeDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (exc.strerror or str(exc))
        return "", (f"{cap}: cannot be read ({why}); training ignores it. Type a caption and save: the old file is "
                    f"kept as {cap.name}.bak")


def save_caption(image: Path, text: str, caption_extension: str = ".txt") -> Path:
    """Write the caption of ``image`` atomically; the caption it replaces is kept once as ``<caption>.bak``
    (the first edit's original: later edits never overwrite that backup)."""
    from lorakit.data.cache import atomic_write_bytes

    from lorakit.data.images import IMAGE_EXTENSIONS

    image = Path(image)
    if not image.is_file():
        raise DataError(f"{image}: image not found; reload the dataset")
    if image.suffix.lower() not in IMAGE_EXTENSIONS:  # a report row of a stray file: its .txt may be the user's
        raise DataError(f"{image}: not an image, so it has no caption; pick an image")
    cap = image.with_name(image.stem + caption_extension)
    bak = cap.with_name(cap.name + ".bak")
    if cap.is_file() and not bak.exists():
        shutil.copy2(cap, bak)
    atomic_write_bytes(cap, (text.strip() + "\n").encode("utf-8"))
    return cap


# ------------------------------------------------------------------------------------------------ uploads


def _check_image(path: Path, shown: str) -> None:
    from lorakit.data.images import IMAGE_EXTENSIONS, ImageProblem, decode

    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"{shown}: not an image lorakit trains on (allowed: "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}, and {' / '.join(CAPTION_EXTENSIONS)} captions)")
    try:
        decode(path)
    except ImageProblem as exc:
        raise DataError(f"{shown}: not a usable image ({exc.reason})") from None


def caption_text(raw: bytes) -> str:
    """A caption file's text as training reads it (UTF-8, or UTF-16 as Notepad saves it)."""
    from lorakit.data.scan import decode_caption_bytes

    return decode_caption_bytes(raw)


def _check_caption(path: Path, shown: str) -> None:
    try:
        caption_text(path.read_bytes())
    except UnicodeDecodeError:
        raise DataError(f"{shown}: caption is not UTF-8 text; re-save it as UTF-8") from None


def _safe_member(name: str) -> Optional[str]:
    """The member's relative path inside the archive, or None for a folder entry; DataError for zip slip."""
    norm = name.replace("\\", "/")
    if norm.endswith("/"):
        return None
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts or not parts:
        raise DataError(f"zip member {name!r}: points outside the dataset folder (absolute path or '..'); "
                        "nothing was extracted")
    return "/".join(parts)


def _plan_zip(zf: zipfile.ZipFile, max_file: int, max_total: int) -> list[tuple[zipfile.ZipInfo, str]]:
    members = []
    total = 0
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise DataError(f"zip: {len(infos)} entries, more than the limit of {MAX_ZIP_MEMBERS}; nothing was extracted")
    for info in infos:
        rel = _safe_member(info.filename)
        if rel is None:
            continue
        mode = (info.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            raise DataError(f"zip member {info.filename!r}: a symbolic link; nothing was extracted")
        if "__MACOSX" in rel.split("/") or rel.split("/")[-1].startswith("."):
            continue  # Finder's resource forks and hidden files are not dataset files
        if info.file_size > max_file:
            raise DataError(f"zip member {info.filename!r}: {info.file_size / 2**20:.1f} MB, past the "
                            f"{max_file / 2**20:.0f} MB limit per file; nothing was extracted")
        total += info.file_size
        if total > max_total:
            raise DataError(f"zip: expands to more than {max_total / 2**20:.0f} MB; nothing was extracted")
        members.append((info, rel))
    return members


def import_uploads(files: Sequence[str | os.PathLike], dest: Path, *, max_file_mb: float = MAX_UPLOAD_MB,
                   max_total_mb: float = MAX_EXTRACTED_MB) -> list[Path]:
    """Copy uploaded images/captions (or the contents of zip files) into ``dest`` (flattened: an image folder).

    Everything is checked in a staging folder first; only when every file passes is anything moved into ``dest``,
    and a file that already exists there is refused rather than overwritten. Returns the files written.
    """
    dest = Path(dest)
    written: list[Path] = []
    try:
        return _import_uploads(files, dest, max_file_mb, max_total_mb, written)
    except OSError as exc:  # a full disk, a read-only or unwritable folder: what was moved in goes again
        for p in written:
            p.unlink(missing_ok=True)
        raise DataError(f"{exc.filename or dest}: cannot write ({exc.strerror or exc}); nothing of this upload was "
                        "added (free space or pick a folder you can write)") from None


def _import_uploads(files: Sequence[str | os.PathLike], dest: Path, max_file_mb: float, max_total_mb: float,
                    written: list[Path]) -> list[Path]:
    max_file, max_total = int(max_file_mb * 2**20), int(max_total_mb * 2**20)
    staged: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=".upload-", dir=dest.parent if dest.parent.is_dir() else None) as tmp:
        stage = Path(tmp)
        for f in files:
            src = Path(f)
            shown = src.name
            size = src.stat().st_size
            if size > max_file:
                raise DataError(f"{shown}: {size / 2**20:.1f} MB, past the {max_file_mb:g} MB upload limit")
            if src.suffix.lower() == ".zip":
                _stage_zip(src, stage, staged, max_file, max_total)
            else:
                _stage_one(src, shown, stage, staged)
        for name, path in staged.items():
            if path.suffix.lower() in CAPTION_EXTENSIONS:
                _check_caption(path, name)
            else:
                _check_image(path, name)
        clashes = [n for n in staged if (dest / n).exists()]
        if clashes:
            raise DataError(f"{dest / clashes[0]}: already exists; nothing was overwritten (rename the upload or "
                            "remove the old file)")
        dest.mkdir(parents=True, exist_ok=True)
        for name, path in staged.items():
            target = dest / name
            shutil.move(str(path), target)
            written.append(target)
    return list(written)


def _stage_one(src: Path, name: str, stage: Path, staged: dict[str, Path]) -> None:
    if name in staged:
        raise DataError(f"{name}: uploaded twice (two files with one name); rename one")
    target = stage / f"{len(staged):05d}{src.suffix.lower()}"
    shutil.copyfile(src, target)
    staged[name] = target


def _stage_zip(src: Path, stage: Path, staged: dict[str, Path], max_file: int, max_total: int) -> None:
    try:
        zf = zipfile.ZipFile(src)
    except zipfile.BadZipFile:
        raise DataError(f"{src.name}: not a readable zip file") from None
    with zf:
        written = 0
        planned = _plan_zip(zf, max_file, max_total)
        kohya = sorted({part for _, rel in planned for part in rel.split("/")[:-1] if re.match(r"^\d+_", part)})
        if len(kohya) > 1:  # a whole kohya dataset: flattened, its repeats and regularisation folders would mix
            raise DataError(f"{src.name}: its images are in {len(kohya)} kohya folders ({', '.join(kohya[:4])}), and "
                            "an upload goes into one image folder; nothing was extracted. Upload one folder per zip, "
                            "or unzip the dataset and Open its folder")
        for info, rel in planned:
            name = rel.split("/")[-1]
            if name in staged:
                raise DataError(f"{src.name}: {rel}: a second file named {name} (the images go into one folder); "
                                "rename one")
            target = stage / f"{len(staged):05d}{Path(name).suffix.lower()}"
            with zf.open(info) as fh, open(target, "wb") as out:
                while chunk := fh.read(1 << 20):
                    written += len(chunk)
                    if written > max_total or out.tell() + len(chunk) > max_file:  # sizes the header lied about
                        raise DataError(f"{src.name}: {rel}: expands past the size limit; nothing was extracted")
                    out.write(chunk)
            staged[name] = target


def problem_files(problems: Iterable) -> list[tuple[str, str, str]]:
    """(action, file, reason) rows of a data report for the page's clickable table."""
    return [(p.action, p.file, p.reason) for p in sorted(problems, key=lambda p: (p.file, p.action))]
