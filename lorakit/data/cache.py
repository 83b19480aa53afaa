"""Disk caches of VAE latents and text-encoder outputs (safetensors, one file per entry).

Why keyed files instead of kohya's `<stem>_<W>x<H>_sdxl.npz` next to the image: a key made of everything
that changes the encoded tensor (image content hash, bucket, resize and crop, model identity — the caller
folds VAE/encoder weights and dtype into it — or the caption text) means an edited image or caption is
re-encoded and a stale entry can never be read, while unchanged entries are reused across runs. The file
name is the SHA-1 of the key; the key fields are repeated in the safetensors header for debugging.

A file that fails to load, lacks a key, or has a shape that disagrees with its bucket or its neighbours is
treated as missing and rebuilt. Writes are atomic (:func:`lorakit.fsutil.write_bytes`), so a
killed run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
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
from lorakit.fsutil import remove_stale_temps, write_bytes

atomic_write_bytes = write_bytes  # the name this module exported before lorakit.fsutil (other branches use it)

CACHE_VERSION = "1"


def cache_folder(data: DataCfg, save_dir: str | Path) -> Path:
    """Where caches go: data.cache_dir, else `<save.dir>/cache`; with data.cache_next_to_images a hidden
    `.lorakit-cache` folder inside the dataset folder (new files only: no user file is touched, and the
    scan ignores hidden folders)."""
    if data.cache_next_to_images:
        base = data.dir or (Path(data.config).parent if data.config else None)
        if base is None:
            raise ValueError("data.cache_next_to_images: needs data.dir or data.config")
        return Path(base) / ".lorakit-cache"
    return Path(data.cache_dir) if data.cache_dir else Path(save_dir) / "cache"


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    write_bytes(path, st_save(clean, metadata=meta))


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """Tensors and header of a cache file, or None when it is missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception:
        return None
    return tensors, meta


def _digest(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


class LatentCache:
    """VAE latents per (image content, bucket, resize/crop, model identity)."""

    def __init__(self, folder: Path, identity: str):
        self.folder = Path(folder) / "latents"
        self.identity = identity
        remove_stale_temps(self.folder)  # leftovers of a killed run's writes
        self._shape_ref: tuple[int, int] | None = None  # (channels, downscale factor) seen so far

    def key(self, item: ImageItem) -> dict:
        return {"v": CACHE_VERSION, "identity": self.identity, "sha256": item.sha256,
                "bucket": list(item.bucket), "resized": list(item.resized_size), "crop": list(item.crop)}

    def path(self, item: ImageItem) -> Path:
        return self.folder / f"{_digest(self.key(item))}.safetensors"

    def _valid(self, item: ImageItem, loaded: tuple[dict, dict] | None, flip: bool) -> bool:
        if loaded is None:
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

    def missing(self, items: Iterable[ImageItem], flip: bool) -> list[ImageItem]:
        """Items (one per distinct key) whose cache entry is absent, corrupt or incomplete."""
        out: dict[str, ImageItem] = {}
        for it in items:
            p = self.path(it)
            if p.name not in out and not self._valid(it, _load(p), flip):
                out[p.name] = it
        return list(out.values())

    def ensure(self, items: Sequence[ImageItem], encode: Callable[[torch.Tensor], torch.Tensor], *,
               batch_size: int = 4, flip: bool, progress: bool = True) -> None:
        """Encode every item not cached yet, in same-bucket batches of `batch_size` (and flipped, if asked)."""
        todo = self.missing(items, flip)
        by_bucket: dict[tuple[int, int], list[ImageItem]] = defaultdict(list)
        for it in todo:
            by_bucket[it.bucket].append(it)
        with tqdm(total=len(todo), desc="caching latents", unit="img", disable=not progress) as bar:
            for bucket in sorted(by_bucket):
                group = by_bucket[bucket]
                for i in range(0, len(group), batch_size):
                    chunk = group[i:i + batch_size]
                    self._encode_chunk(chunk, encode, flip)
                    bar.update(len(chunk))

    def _encode_chunk(self, chunk: list[ImageItem], encode: Callable[[torch.Tensor], torch.Tensor],
                      flip: bool) -> None:
        with torch.no_grad():
            lat = encode(torch.stack([load_for_bucket(it, False) for it in chunk]))
            lat_f = encode(torch.stack([load_for_bucket(it, True) for it in chunk])) if flip else None
        for j, it in enumerate(chunk):
            tensors = {"latents": lat[j].float()}
            if lat_f is not None:
                tensors["latents_flipped"] = lat_f[j].float()
            meta = {"key": json.dumps(self.key(it), sort_keys=True), "path": str(it.path),
                    "original_size": f"{it.original_size[0]}x{it.original_size[1]}"}
            _save(self.path(it), tensors, meta)

    def get(self, item: ImageItem, flipped: bool = False) -> torch.Tensor:
        """The cached latent [C, h, w] of `item` (KeyError with a clear message if not cached)."""
        loaded = _load(self.path(item))
        name = "latents_flipped" if flipped else "latents"
        if loaded is None or name not in loaded[0]:
            raise KeyError(f"{item.path}: no cached {name} in {self.folder}; run ensure() first")
        return loaded[0][name]


class TextCache:
    """Text-encoder outputs per (caption text, model identity); tensors are stored without the batch dim."""

    def __init__(self, folder: Path, identity: str):
        self.folder = Path(folder) / "text"
        self.identity = identity
        remove_stale_temps(self.folder)  # leftovers of a killed run's writes
        self._ref: dict[str, tuple] | None = None  # name → (dtype, ndim, last dim) seen so far

    def key(self, caption: str) -> dict:
        return {"v": CACHE_VERSION, "identity": self.identity, "caption": caption}

    def path(self, caption: str) -> Path:
        return self.folder / f"{_digest(self.key(caption))}.safetensors"

    def _valid(self, caption: str, loaded: tuple[dict, dict] | None) -> bool:
        if loaded is None:
            return False
        tensors, meta = loaded
        if meta.get("key") != json.dumps(self.key(caption), sort_keys=True):
            return False
        try:
            names = json.loads(meta.get("names", "[]"))
        except ValueError:
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
               batch_size: int = 8, progress: bool = True) -> None:
        """Encode every distinct caption not cached yet, `batch_size` at a time."""
        todo = [c for c in dict.fromkeys(captions) if not self._valid(c, _load(self.path(c)))]
        with tqdm(total=len(todo), desc="caching text", unit="caption", disable=not progress) as bar:
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                with torch.no_grad():
                    out = encode(chunk)
                for j, cap in enumerate(chunk):
                    tensors = {k: v[j] for k, v in out.items()}
                    meta = {"key": json.dumps(self.key(cap), sort_keys=True), "names": json.dumps(sorted(out))}
                    _save(self.path(cap), tensors, meta)
                bar.update(len(chunk))

    def get(self, caption: str) -> dict[str, torch.Tensor]:
        loaded = _load(self.path(caption))
        if loaded is None:
            raise KeyError(f"caption {caption[:60]!r}: not in the text cache {self.folder}; run ensure() first")
        return loaded[0]
