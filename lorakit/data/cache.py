"""Disk caches of VAE latents and text-encoder outputs (safetensors, one file per entry).

Why keyed files instead of kohya's `<stem>_<W>x<H>_sdxl.npz` next to the image: a key made of everything
that changes the encoded tensor (image content hash, bucket, resize and crop, model identity — the caller
folds VAE/encoder weights and dtype into it — or the caption text) means an edited image or caption is
re-encoded and a stale entry can never be read, while unchanged entries are reused across runs. The file
name is the SHA-1 of the key; the key fields are repeated in the safetensors header for debugging.

A file that fails to load, lacks a key, or has a shape that disagrees with its bucket or its neighbours is
treated as missing and rebuilt. Writes are atomic (:func:`lorakit.fsutil.write_bytes`), so a
killed run leaves either the old file or the new one, never half of one.

Every entry carries a BLAKE2b checksum of its tensors (names, dtypes, shapes and bytes) in its header, checked when
read (in the training loop again only if the file changed since this process verified or wrote it): a damaged
entry (a flipped bit, a torn copy) or one holding NaN/Inf is dropped, re-encoded and reported in one line, never
used. A freshly encoded NaN/Inf stops the run naming the image (or caption) and
the encoder, whose weights are then the suspect, not the learning rate. A full disk (or a file-size limit)
while caching stops with one line; the entries already written are kept. The ``latents``/``text`` folders
must lie inside the cache folder and an entry that is a symlink is never read or written through.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from tqdm import tqdm

from lorakit.config.schema import DataCfg
from lorakit.data.images import load_for_bucket
from lorakit.data.scan import ImageItem
from lorakit.errors import TrainingError
from lorakit.safetensors_header import metadata_json
from lorakit.fsutil import disk_problem, inside_folder, printable as _printable, remove_stale_temps, write_bytes

atomic_write_bytes = write_bytes  # the name this module exported before lorakit.fsutil (other branches use it)

CACHE_VERSION = "2"  # 2: entries carry a checksum (entries of 1 are re-encoded once)


def cache_folder(data: DataCfg, save_dir: str | Path) -> Path:
    """Where caches go: data.cache_dir, else `<save.dir>/cache`; with data.cache_next_to_images a hidden
    `.lorakit-cache` folder inside the dataset folder (new files only: no user file is touched, and the
    scan ignores hidden folders)."""
    if data.cache_next_to_images:
        base = data.dir or (Path(data.config).parent if data.config else None)
        if base is None:
            raise ValueError("data.cache_next_to_images: needs data.dir or data.config")
        return _cache_subfolder(Path(base), ".lorakit-cache")  # a planted link out of the dataset is refused
    return Path(data.cache_dir) if data.cache_dir else Path(save_dir) / "cache"


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """BLAKE2b (128 bit) over each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or Inf, or None."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    try:
        write_bytes(path, st_save(clean, metadata={**meta, "blake2b": checksum(clean)}))
    except Exception as exc:
        why = disk_problem(exc)
        if why is None:
            raise
        raise TrainingError(f"{why} while writing the cache entry {path}: the entries written so far are kept and "
                            "reused; free some space (or set data.cache_dir on a disk with room) and run again"
                            ) from None


class Loaded:
    """A cache file read back: its tensors and header, or why it cannot be used (``problem``)."""

    def __init__(self, tensors: dict, meta: dict, problem: str | None = None):
        self.tensors, self.meta, self.problem = tensors, meta, problem

    def __iter__(self):  # (tensors, meta), as the tuple this used to be
        return iter((self.tensors, self.meta))

    def __getitem__(self, i: int):
        return (self.tensors, self.meta)[i]


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class _Verified:
    """Entries verified (or written) by this process, by (size, mtime): reading one of them again in the training
    loop skips the checksum and NaN scan (T5 outputs are MBs per caption), unless the file changed since."""

    def __init__(self) -> None:
        self.seen: dict[Path, tuple[int, int] | None] = {}

    def note(self, path: Path) -> None:
        self.seen[path] = _signature(path)

    def load(self, path: Path) -> Loaded | None:
        sig = self.seen.get(path)
        return _load(path, verify=sig is None or sig != _signature(path))


def _load(path: Path, verify: bool = True) -> Loaded | None:
    """A cache file read and verified, or None when it is absent. A file that cannot be read, fails its
    checksum, holds NaN/Inf or is a symlink comes back with ``problem`` set (it is then rebuilt)."""
    if path.is_symlink():
        return Loaded({}, {}, "a symlink (never followed)")
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception:
        return Loaded({}, {}, "unreadable (truncated or not a safetensors file)")
    if not verify:
        return Loaded(tensors, meta)
    if meta.get("blake2b") != checksum(tensors):
        return Loaded(tensors, meta, "damaged (checksum mismatch)" if "blake2b" in meta else "without a checksum")
    bad = nonfinite(tensors)
    if bad:
        return Loaded(tensors, meta, f"tensor {bad!r} holds NaN/Inf")
    return Loaded(tensors, meta)


def _drop(path: Path, problem: str, log: Callable[[str], None] | None) -> None:
    """Remove a bad entry (a symlink itself, never its target) and say so in one line."""
    with contextlib.suppress(OSError):
        path.unlink()
    if log is not None and problem != "without a checksum":
        log(f"warning: cache entry {path}: {problem}; dropped and re-encoded")


def _cache_subfolder(folder: Path, name: str) -> Path:
    """``folder/name``, refused when it is a symlink leading out of the cache folder (writes would land there)."""
    sub = Path(folder) / name
    if sub.is_symlink() and not inside_folder(sub, folder):
        raise TrainingError(f"{sub}: is a symlink to {os.path.realpath(sub)}, outside {folder}; cache files are "
                            "never written through it. Remove the link (or set data.cache_dir)")
    return sub


def _digest(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _decoded(chunk: list[ImageItem], flip: bool) -> list[torch.Tensor]:
    """The chunk's images decoded and resized for their bucket, in order; several at once on a machine with the cores
    (PIL decodes outside the GIL), never more than the chunk: what caching holds stays one VAE batch."""
    global _POOL
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(chunk) < 2:
        return [load_for_bucket(it, flip) for it in chunk]
    if _POOL is None:  # one pool for the process: the same threads (and their allocator arenas) chunk after chunk
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="lorakit-decode")
    return list(_POOL.map(lambda it: load_for_bucket(it, flip), chunk))


_POOL = None


class LatentCache:
    """VAE latents per (image content, bucket, resize/crop, model identity)."""

    def __init__(self, folder: Path, identity: str):
        self.folder = _cache_subfolder(Path(folder), "latents")
        self.identity = identity
        remove_stale_temps(self.folder)  # leftovers of a killed run's writes
        self._shape_ref: tuple[int, int] | None = None  # (channels, downscale factor) seen so far
        self._verified = _Verified()

    def key(self, item: ImageItem) -> dict:
        return {"v": CACHE_VERSION, "identity": self.identity, "sha256": item.sha256,
                "bucket": list(item.bucket), "resized": list(item.resized_size), "crop": list(item.crop)}

    def path(self, item: ImageItem) -> Path:
        return self.folder / f"{_digest(self.key(item))}.safetensors"

    def _valid(self, item: ImageItem, loaded: Loaded | None, flip: bool) -> bool:
        if loaded is None or loaded.problem:
            return False
        tensors, meta = loaded
        if meta.get("key") != json.dumps(self.key(item), sort_keys=True):
            return False
        need = ["latents"] + (["latents_flipped"] if flip else [])
        if any(k not in tensors for k in need):
            return False
        lat = tensors["latents"]
        if lat.ndim != 3 or any(tensors[k].shape != lat.shape for k in need):
            return False
        c, h, w = lat.shape
        bw, bh = item.bucket
        if w == 0 or h == 0 or bw % w or bh % h or bw // w != bh // h:
            return False
        if self._shape_ref is not None and self._shape_ref != (c, bw // w):
            return False
        self._shape_ref = (c, bw // w)
        return True

    def missing(self, items: Iterable[ImageItem], flip: bool,
                log: Callable[[str], None] | None = None) -> list[ImageItem]:
        """Items (one per distinct key) whose cache entry is absent, corrupt or incomplete; a damaged entry is
        dropped and reported through ``log``."""
        out: dict[str, ImageItem] = {}
        for it in items:
            p = self.path(it)
            if p.name in out:
                continue
            loaded = _load(p)
            if not self._valid(it, loaded, flip):
                if loaded is not None and loaded.problem:
                    _drop(p, loaded.problem, log)
                out[p.name] = it
            else:
                self._verified.note(p)
        return list(out.values())

    def ensure(self, items: Sequence[ImageItem], encode: Callable[[torch.Tensor], torch.Tensor], *,
               batch_size: int = 4, flip: bool, progress: bool = True,
               log: Callable[[str], None] | None = print) -> None:
        """Encode every item not cached yet, in same-bucket batches of `batch_size` (and flipped, if asked)."""
        todo = self.missing(items, flip, log)
        if items and not todo and progress and log is not None:  # one line, not an empty bar: the caches were reused
            log(f"caching latents: all {len(items)} image(s) already cached")
        by_bucket: dict[tuple[int, int], list[ImageItem]] = defaultdict(list)
        for it in todo:
            by_bucket[it.bucket].append(it)
        with tqdm(total=len(todo), desc="caching latents", unit="img", disable=not progress or not todo) as bar:
            for bucket in sorted(by_bucket):
                group = by_bucket[bucket]
                for i in range(0, len(group), batch_size):
                    chunk = group[i:i + batch_size]
                    self._encode_chunk(chunk, encode, flip)
                    bar.update(len(chunk))

    def _encode_chunk(self, chunk: list[ImageItem], encode: Callable[[torch.Tensor], torch.Tensor],
                      flip: bool) -> None:
        with torch.no_grad():
            lat = encode(torch.stack(_decoded(chunk, False)))
            lat_f = encode(torch.stack(_decoded(chunk, True))) if flip else None
        for j, it in enumerate(chunk):
            tensors = {"latents": lat[j].float()}
            if lat_f is not None:
                tensors["latents_flipped"] = lat_f[j].float()
            bad = nonfinite(tensors)
            if bad:
                raise TrainingError(f"{it.path}: the VAE encoded this image to NaN/Inf (tensor {bad!r}); the image "
                                    "decodes fine, so the VAE's weights are the suspect (model.checkpoint or "
                                    "model.vae; `lorakit inspect` names NaN/Inf tensors), not the learning rate")
            meta = {"key": json.dumps(self.key(it), sort_keys=True), "path": _printable(it.path),
                    "original_size": f"{it.original_size[0]}x{it.original_size[1]}"}
            _save(self.path(it), tensors, meta)
            self._verified.note(self.path(it))

    def get(self, item: ImageItem, flipped: bool = False) -> torch.Tensor:
        """The cached latent [C, h, w] of `item` (KeyError with a clear message if not cached; a TrainingError
        naming the file if it was damaged since :meth:`ensure` checked it)."""
        path = self.path(item)
        loaded = self._verified.load(path)
        name = "latents_flipped" if flipped else "latents"
        if loaded is not None and loaded.problem:
            _drop(path, loaded.problem, None)
            raise TrainingError(f"cache entry {path} of {_printable(item.path)}: {loaded.problem} (it changed during "
                                "the run); it was dropped: `lorakit train --resume` re-encodes it")
        if loaded is None or name not in loaded.tensors:
            raise KeyError(f"{item.path}: no cached {name} in {self.folder}; run ensure() first")
        return loaded.tensors[name]


class TextCache:
    """Text-encoder outputs per (caption text, model identity); tensors are stored without the batch dim."""

    def __init__(self, folder: Path, identity: str):
        self.folder = _cache_subfolder(Path(folder), "text")
        self.identity = identity
        remove_stale_temps(self.folder)  # leftovers of a killed run's writes
        self._ref: dict[str, tuple] | None = None  # name → (dtype, ndim, last dim) seen so far
        self._verified = _Verified()

    def key(self, caption: str) -> dict:
        return {"v": CACHE_VERSION, "identity": self.identity, "caption": caption}

    def path(self, caption: str) -> Path:
        return self.folder / f"{_digest(self.key(caption))}.safetensors"

    def _valid(self, caption: str, loaded: Loaded | None) -> bool:
        if loaded is None or loaded.problem:
            return False
        tensors, meta = loaded
        if meta.get("key") != json.dumps(self.key(caption), sort_keys=True):
            return False
        try:
            names = metadata_json(meta.get("names", "[]"))
        except ValueError:
            return False
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return False
        if sorted(names) != sorted(tensors) or not names:
            return False
        # dtype, rank and last dim must agree across captions; the sequence length may vary by encoder
        sig = {k: (str(v.dtype), v.ndim, tuple(v.shape[-1:])) for k, v in tensors.items()}
        if self._ref is not None and sig != self._ref:
            return False
        self._ref = sig
        return True

    def ensure(self, captions: list[str], encode: Callable[[list[str]], dict[str, torch.Tensor]],
               batch_size: int = 8, progress: bool = True, log: Callable[[str], None] | None = print) -> None:
        """Encode every distinct caption not cached yet, `batch_size` at a time."""
        todo = []
        for cap in dict.fromkeys(captions):
            path = self.path(cap)
            loaded = _load(path)
            if not self._valid(cap, loaded):
                if loaded is not None and loaded.problem:
                    _drop(path, loaded.problem, log)
                todo.append(cap)
            else:
                self._verified.note(path)
        if captions and not todo and progress and log is not None:
            log(f"caching text: all {len(dict.fromkeys(captions))} caption(s) already cached")
        with tqdm(total=len(todo), desc="caching text", unit="caption", disable=not progress or not todo) as bar:
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                with torch.no_grad():
                    out = encode(chunk)
                for j, cap in enumerate(chunk):
                    tensors = {k: v[j] for k, v in out.items()}
                    bad = nonfinite(tensors)
                    if bad:
                        raise TrainingError(f"caption {cap[:60]!r}: the text encoder's output {bad!r} holds NaN/Inf; "
                                            "the text encoder's weights are the suspect (model.checkpoint or its "
                                            "text-encoder files; `lorakit inspect` names NaN/Inf tensors), not the "
                                            "learning rate")
                    meta = {"key": json.dumps(self.key(cap), sort_keys=True), "names": json.dumps(sorted(out))}
                    _save(self.path(cap), tensors, meta)
                    self._verified.note(self.path(cap))
                bar.update(len(chunk))

    def get(self, caption: str) -> dict[str, torch.Tensor]:
        path = self.path(caption)
        loaded = self._verified.load(path)
        if loaded is not None and loaded.problem:
            _drop(path, loaded.problem, None)
            raise TrainingError(f"text cache entry {path} of caption {caption[:60]!r}: {loaded.problem} (it changed "
                                "during the run); it was dropped: `lorakit train --resume` re-encodes it")
        if loaded is None:
            raise KeyError(f"caption {caption[:60]!r}: not in the text cache {self.folder}; run ensure() first")
        return loaded.tensors
