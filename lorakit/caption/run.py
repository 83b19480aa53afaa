"""A captioning run over a dataset: which images, what is written, and how an interrupted run resumes.

* Images: a kohya parent folder (``N_trigger class`` subfolders, listed by lorakit's data scan), a plain folder
  of images, or the subsets of a kohya dataset TOML.
* A caption file that exists is kept unless ``overwrite``; then the old text is first copied to
  ``<name>.bak`` (``.bak2``, … when that exists). Every write is atomic (temp file, fsync, rename).
* Progress: ``.lorakit-caption.json`` in the dataset folder (beside a TOML: ``<toml>.caption.json``) lists the
  images this run has finished, rewritten atomically after every batch; a run started again with the same
  settings skips them (so an overwriting run never overwrites its own captions, nor backs them up); the
  backups it made are recorded before each caption is replaced, so a kill between the two is safe too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lorakit.caption.base import Captioner
from lorakit.caption.text import TextOptions, finish
from lorakit.data.cache import atomic_write_bytes
from lorakit.data.images import IMAGE_EXTENSIONS, ImageProblem, caption_extension_problem, open_image
from lorakit.data.scan import caption_case_variant, decode_caption_bytes
from lorakit.errors import ConfigError, DataError

PROGRESS_NAME = ".lorakit-caption.json"


@dataclass(frozen=True)
class Target:
    image: Path
    caption: Path
    lead: str = ""          # the folder's class tokens ("ohwx woman"): the default trigger + class


@dataclass
class Outcome:
    image: str
    status: str             # captioned | kept | failed
    reason: str = ""
    text: str = ""


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    resumed: int = 0        # images skipped because this run had finished them before an interruption
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)   # folders the listing could not use

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def table(self) -> str:
        lines = [f"{'captioned':>9} {'kept':>6} {'failed':>6}   ({self.seconds:.1f} s"
                 + (f"; {self.resumed} finished before the interruption" if self.resumed else "") + ")",
                 f"{self.count('captioned'):>9} {self.count('kept'):>6} {self.count('failed'):>6}"]
        notes = [o for o in self.outcomes if o.reason]
        if notes or self.problems:
            lines.append(f"{'status':<9} {'image':<40} reason")
            lines += [f"{'skipped':<9} {p}" for p in self.problems]
            for o in notes:
                name = o.image if len(o.image) <= 40 else "…" + o.image[-39:]
                lines.append(f"{o.status:<9} {name:<40} {o.reason}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ targets

def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_targets(target: Path, extension: Optional[str] = None) -> tuple[list[Target], Path, list[str]]:
    """(images with their caption paths, where the progress file goes, problems) of a folder or dataset TOML."""
    from lorakit.config.schema import DataCfg
    from lorakit.data.kohya_toml import load_dataset_toml
    from lorakit.data.scan import folder_subsets

    problems: list[str] = []
    if target.is_file() and target.suffix == ".toml":
        _, specs = load_dataset_toml(target, DataCfg(config=str(target)))
        for s in specs if not extension else []:  # the TOML's own key named (the scan says it the same way)
            if (problem := caption_extension_problem(s.caption_extension)) is not None:
                raise ConfigError(f"{target.name}: {s.key}.caption_extension: {problem}, got {s.caption_extension!r}")
        folders = [(s.dir, s.class_tokens, extension or s.caption_extension) for s in specs]
        progress = target.with_name(target.name + ".caption.json")
    elif target.is_dir():
        ext = extension or DataCfg().caption_extension
        if _images(target):
            folders = [(target, "", ext)]
            problems = [f"{d}: images in this subfolder are not captioned (caption it on its own)"
                        for d in sorted(target.iterdir()) if d.is_dir() and not d.name.startswith(".") and _images(d)]
        else:
            specs, found = folder_subsets(target, is_reg=False, data=DataCfg(dir=str(target)), key=str(target))
            folders = [(s.dir, s.class_tokens, ext) for s in specs]
            problems = [f"{p.file}: {p.reason}" for p in found]
            problems += [f"{d}: nested folder: not captioned (training does not use it either); move its images up or "
                         f"make it a subset of its own like '10_{d.name}'" for s in specs for d in sorted(s.dir.iterdir())
                         if d.is_dir() and not d.name.startswith(".") and _images(d)]
        progress = target / PROGRESS_NAME
    else:
        raise DataError(f"{target}: neither a folder of images (or of 'N_trigger class' subfolders) nor a "
                        f"kohya dataset .toml")
    for _, _, ext in folders:  # before any name is made from it: `--extension .png --overwrite` replaced the images
        if (problem := caption_extension_problem(ext)) is not None:
            raise ConfigError(f"--extension: {problem}, got {ext!r}")
    targets = [Target(img, img.with_name(img.stem + ext), lead) for folder, lead, ext in folders
               for img in _images(folder)]
    problems += [f"{p}: broken symlink to {os.readlink(p)} (the file it points to is missing): not captioned; fix or "
                 "remove the link" for folder in dict.fromkeys(f for f, _, _ in folders) for p in sorted(folder.iterdir())
                 if p.is_symlink() and not p.exists() and p.suffix.lower() in IMAGE_EXTENSIONS]
    seen: set[tuple[Path, Path]] = set()  # a TOML listing one folder twice: each image and caption file once
    targets = [t for t in targets if (key := (t.image.resolve(), t.caption.resolve())) not in seen and not seen.add(key)]
    if not targets:
        raise DataError(f"{target}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return targets, progress, problems


# ----------------------------------------------------------------------------------------------- progress

def _read_progress(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("done"), dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def settings_key(captioner: Captioner, model: str, opts: TextOptions, overwrite: bool) -> str:
    blob = json.dumps({"captioner": captioner.name, "model": model, "text": asdict(opts), "overwrite": overwrite},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def backup_path(caption: Path) -> Path:
    """First free of ``x.txt.bak``, ``x.txt.bak2``, … (an older backup is never replaced)."""
    for i in range(1, 10_000):
        p = caption.with_name(caption.name + (".bak" if i == 1 else f".bak{i}"))
        if not p.exists():
            return p
    raise DataError(f"{caption}: too many backups beside it; remove old .bak files")


# -------------------------------------------------------------------------------------------------- run

def _eta(done: int, total: int, started: float) -> str:
    if not done:
        return "--:--"
    left = (time.perf_counter() - started) / done * (total - done)
    return f"{int(left // 60)}:{int(left % 60):02d}"


def caption_dataset(targets: list[Target], captioner: Captioner, opts: TextOptions, *, progress_file: Path,
                    model: str = "", overwrite: bool = False, restart: bool = False, batch_size: int = 1,
                    count_tokens: Optional[Callable[[str], int]] = None, log: Callable[[str], None] | None = None,
                    root: Optional[Path] = None) -> Summary:
    """Caption every target that needs it; returns what happened to each image."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    root = root or progress_file.parent
    rel = lambda p: str(p.relative_to(root)) if p.is_relative_to(root) else str(p)  # noqa: E731
    key = settings_key(captioner, model, opts, overwrite)
    prev = None if restart else _read_progress(progress_file)
    if prev and not prev.get("finished") and prev.get("settings") != key:
        raise DataError(f"{progress_file}: an unfinished captioning run with other settings is recorded here; "
                        f"rerun it with the same options to resume, or pass --restart to start over")
    resume = bool(prev) and not prev.get("finished") and prev.get("settings") == key
    state = {"settings": key, "captioner": captioner.name, "model": model, "finished": False,
             "done": dict(prev["done"]) if resume else {},
             "backups": dict(prev.get("backups") or {}) if resume else {}}
    summary = Summary(resumed=len(state["done"]) if resume else 0)
    todo: list[Target] = []
    claimed: dict[Path, Path] = {}   # caption file → the image it is written for (a.png and a.jpg share a.txt)
    for t in targets:
        if (first := claimed.setdefault(t.caption, t.image)) != t.image:
            summary.outcomes.append(Outcome(rel(t.image), "failed", f"shares the caption file {t.caption.name} with "
                                            f"{first.name} (training reads it for both): not captioned; rename one "
                                            f"so that each image has its own caption"))
            continue
        if rel(t.image) in state["done"]:
            continue
        if t.caption.exists() and not overwrite:
            summary.outcomes.append(Outcome(rel(t.image), "kept", _unusable_caption(t.caption)))
        elif (other := caption_case_variant(t.caption)) is not None and not overwrite:  # the user's, in another case
            summary.outcomes.append(Outcome(rel(t.image), "kept", f"{other.name} exists (training reads "
                                            f"{t.caption.name}: rename it); --overwrite writes {t.caption.name}"))
        else:
            todo.append(t)
    if resume:
        log(f"resuming: {summary.resumed} image(s) were captioned by this run before it stopped")
    log(f"{len(todo)} image(s) to caption with {captioner.name}, {len(summary.outcomes)} kept "
        f"(existing captions{'' if overwrite else '; --overwrite replaces them'})")
    started = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        summary.outcomes += _caption_batch(batch, captioner, opts, count_tokens, rel, state, overwrite,
                                           lambda: _write_json(progress_file, state))
        _write_json(progress_file, state)
        done = start + len(batch)
        rate = done / max(time.perf_counter() - started, 1e-9)
        log(f"[{done}/{len(todo)}] {100 * done // max(len(todo), 1)}%  {rate:.2f} img/s  "
            f"ETA {_eta(done, len(todo), started)}")
    state["finished"] = True
    _write_json(progress_file, state)
    summary.seconds = time.perf_counter() - started
    return summary


def _unusable_caption(path: Path) -> str:
    """Why training cannot use the existing caption file ``path`` ("" when it can): empty, or not UTF-8."""
    try:
        text = decode_caption_bytes(path.read_bytes())
    except UnicodeDecodeError:
        return f"{path.name} is not UTF-8, so training ignores it; re-save it as UTF-8, or --overwrite captions it"
    except OSError:
        return ""
    if not text.strip():
        return f"{path.name} is empty, so training uses the folder's class tokens; --overwrite captions it"
    return ""


def _caption_batch(batch: list[Target], captioner: Captioner, opts: TextOptions, count_tokens, rel,
                   state: dict[str, Any], overwrite: bool, save_state: Callable[[], None]) -> list[Outcome]:
    outcomes: dict[Path, Outcome] = {}
    images, ok = [], []
    for t in batch:
        try:
            images.append(open_image(t.image))
            ok.append(t)
        except ImageProblem as e:
            outcomes[t.image] = Outcome(rel(t.image), "failed", f"unreadable image: {e}")
    raws: list = []
    if ok:
        try:
            raws = captioner.caption(images)
        except Exception as e:  # a model error fails this batch's images, the run goes on
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            for t in ok:
                outcomes[t.image] = Outcome(rel(t.image), "failed", f"captioner error: {msg}")
            ok = []
    if len(raws) != len(ok):  # a back-end that dropped or added an answer: no caption is matched to the wrong image
        for t in ok:
            outcomes[t.image] = Outcome(rel(t.image), "failed", f"captioner error: {len(raws)} caption(s) for "
                                        f"{len(ok)} image(s) in this batch; none written (try --batch-size 1)")
        ok = []
    for t, raw in zip(ok, raws):
        done = finish(raw, opts, captioner.kind, count_tokens, lead=t.lead)
        if not done.text.strip():
            outcomes[t.image] = Outcome(rel(t.image), "failed", "the captioner returned nothing")
            continue
        reason = "; ".join(done.notes)
        if t.caption.exists():
            if not overwrite:  # appeared while we worked: still never overwritten
                outcomes[t.image] = Outcome(rel(t.image), "kept", "a caption appeared during the run")
                continue
            made = state["backups"].get(rel(t.image))
            if made and t.caption.with_name(made).is_file():
                bak = t.caption.with_name(made)   # backed up before an interruption: the file there is ours
            else:
                bak = backup_path(t.caption)
                shutil.copy2(t.caption, bak)
                state["backups"][rel(t.image)] = bak.name
                save_state()                      # recorded before the caption is replaced
            reason = "; ".join(filter(None, [f"old caption kept as {bak.name}", reason]))
        try:
            atomic_write_bytes(t.caption, (done.text + "\n").encode("utf-8"))
        except OSError as e:
            outcomes[t.image] = Outcome(rel(t.image), "failed", f"cannot write {t.caption.name}: {e.strerror or e}")
            continue
        state["done"][rel(t.image)] = "captioned"
        outcomes[t.image] = Outcome(rel(t.image), "captioned", reason, done.text)
    return [outcomes[t.image] for t in batch]
