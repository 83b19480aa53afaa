"""Resumable training state: one folder per saved step, written atomically and checked on load.

Layout of a state folder (the caller picks its name, e.g. ``<run>/state-step00000500``)::

    lora.safetensors      LoRA weights, keys "<component>/<module path>/{down,up,alpha}" (exact dtypes)
    optimizer.pt          optimizer.state_dict()   (torch.save)
    scheduler.pt          scheduler.state_dict()   (torch.save)
    rng.pt                capture_rng()             (torch.save)
    train_state.json      step, data_state, config_fingerprint
    manifest.json         sha256 + size of every file above
    COMPLETE              written last

Why torch.save for three files: optimizer/scheduler state dicts are nested dicts of tensors, ints, floats and
tuples that safetensors cannot hold. They are loaded back with ``torch.load(weights_only=True)``, which only
rebuilds tensors and plain containers and cannot run code; these are files lorakit itself wrote.

Atomicity: everything is written into ``<folder>.tmp-<pid>`` (with :mod:`lorakit.fsutil`), fsynced, and only
then moved into place. An existing state of the same name is moved aside first and deleted after the new one
is in place, so at every moment either the old or the new complete state exists on disk (POSIX cannot swap
two folders in one step; in the short window between the renames the old state sits at ``<folder>.old-<pid>``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from lorakit.errors import TrainingError
from lorakit.fsutil import atomic_path, fsync_dir, fsync_file, write_json, write_text
from lorakit.lora.io import file_sha256
from lorakit.models.base import LoraModule

FORMAT_VERSION = 1
FILES = ("lora.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "train_state.json")


class IncompleteStateError(TrainingError):
    """A state folder is missing, half-written or damaged."""


# -------------------------------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Every RNG stream training draws from: python ``random``, numpy's global, torch CPU, and CUDA if present.

    numpy's state is stored as a tensor plus plain numbers so that ``torch.load(weights_only=True)`` accepts it.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng` saved (CUDA streams only when both sides have CUDA)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[0])


# ------------------------------------------------------------------------------------------------- save


def _flatten_lora(lora: dict[str, dict[str, LoraModule]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for component, modules in lora.items():
        if "/" in component:
            raise ValueError(f"component name {component!r} must not contain '/'")
        for path, lm in modules.items():
            base = f"{component}/{path}"
            out[f"{base}/down"] = lm.down.detach().to("cpu").contiguous()
            out[f"{base}/up"] = lm.up.detach().to("cpu").contiguous()
            out[f"{base}/alpha"] = torch.tensor(float(lm.alpha), dtype=torch.float64)
            if lm.algo != "lora":  # issue 23: a LoHa/LoKr/DoRA module's own tensors, under their LyCORIS names
                for name, t in lm.extra.items():
                    out[f"{base}/x.{name}"] = t.detach().to("cpu").contiguous()
                out[f"{base}/rank"] = torch.tensor(int(lm.rank), dtype=torch.int64)
    return out


def _unflatten_lora(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, LoraModule]]:
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        component, rest = key.split("/", 1)
        path, what = rest.rsplit("/", 1)
        parts.setdefault((component, path), {})[what] = t
    out: dict[str, dict[str, LoraModule]] = {}
    for (component, path), d in parts.items():
        extra = {k[2:]: t for k, t in d.items() if k.startswith("x.")}
        if extra:
            from lorakit.lora.variant_keys import algo_of_keys

            lm = LoraModule(down=d["down"], up=d["up"], alpha=float(d["alpha"].item()), algo=algo_of_keys(extra),
                            extra=extra, rank=int(d["rank"].item()))
        else:
            lm = LoraModule(down=d["down"], up=d["up"], alpha=float(d["alpha"].item()))
        out.setdefault(component, {})[path] = lm
    return out


def save_state(folder: Path, *, lora: dict[str, dict[str, LoraModule]], optimizer_state: dict,
               scheduler_state: dict, rng: dict, data_state: dict, step: int, config_fingerprint: dict) -> None:
    """Write a complete resumable state to ``folder`` atomically (see the module docstring).

    ``data_state`` and ``config_fingerprint`` must be JSON-serialisable (epoch, position, seeds; config
    values and content hashes).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with atomic_path(tmp / "lora.safetensors") as part:  # safetensors alone would make it 0600
            safetensors.torch.save_file(_flatten_lora(lora), str(part), metadata={"lorakit_state": str(FORMAT_VERSION)})
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler_state, tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "train_state.json", {"format": FORMAT_VERSION, "step": int(step), "data_state": data_state,
                                              "config_fingerprint": config_fingerprint}, indent=1, sort_keys=True)
        manifest = {"format": FORMAT_VERSION, "step": int(step), "files": {}}
        for name in FILES:
            fsync_file(tmp / name)
            manifest["files"][name] = {"sha256": file_sha256(tmp / name), "size": (tmp / name).stat().st_size}
        write_json(tmp / "manifest.json", manifest, indent=1, sort_keys=True)
        write_text(tmp / "COMPLETE", f"step {int(step)}\n")
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- load


def is_complete(folder: Path) -> bool:
    """True when ``folder`` has its COMPLETE marker and manifest (cheap; no hashing)."""
    folder = Path(folder)
    return (folder / "COMPLETE").is_file() and (folder / "manifest.json").is_file()


def load_state(folder: Path, *, verify: bool = True) -> dict[str, Any]:
    """Load a state written by :func:`save_state`, refusing incomplete or damaged folders.

    Returns {"lora", "optimizer_state", "scheduler_state", "rng", "data_state", "step", "config_fingerprint"}.
    With ``verify`` every file's SHA-256 is checked against the manifest.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IncompleteStateError(f"{folder}: no such state folder")
    if not is_complete(folder):
        raise IncompleteStateError(f"{folder}: incomplete state (no COMPLETE marker or manifest); it was being "
                                   "written when the run stopped. Resume from an earlier state folder.")
    try:
        return _load_checked(folder, verify)
    except IncompleteStateError:
        raise
    except Exception as e:  # valid JSON of the wrong shape, a file that no longer loads: damaged, as for a bad byte
        raise IncompleteStateError(f"{folder}: damaged state ({type(e).__name__}: {str(e)[:120]})") from e


def _load_checked(folder: Path, verify: bool) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IncompleteStateError(f"{folder}: unreadable manifest.json ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IncompleteStateError(f"{folder}: manifest.json is not a lorakit state manifest (no \"files\" table)")
    if manifest.get("format") != FORMAT_VERSION:
        raise IncompleteStateError(f"{folder}: state format {manifest.get('format')!r} is not supported by this "
                                   f"lorakit (expects {FORMAT_VERSION})")
    for name in FILES:
        entry = manifest["files"].get(name)
        path = folder / name
        if not isinstance(entry, dict) or not path.is_file():
            raise IncompleteStateError(f"{folder}: {name} is missing")
        if path.stat().st_size != entry.get("size") or (verify and file_sha256(path) != entry.get("sha256")):
            raise IncompleteStateError(f"{folder}: {name} is damaged (size or checksum differs from the manifest)")
    train_state = json.loads((folder / "train_state.json").read_text(encoding="utf-8"))
    if not isinstance(train_state, dict) or not {"step", "data_state", "config_fingerprint"} <= set(train_state):
        raise IncompleteStateError(f"{folder}: train_state.json lacks step, data_state or config_fingerprint")
    state = {
        "lora": _unflatten_lora(safetensors.torch.load_file(str(folder / "lora.safetensors"), device="cpu")),
        "optimizer_state": torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True),
        "scheduler_state": torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True),
        "rng": torch.load(folder / "rng.pt", map_location="cpu", weights_only=True),
        "data_state": train_state["data_state"],
        "step": int(train_state["step"]),
        "config_fingerprint": train_state["config_fingerprint"],
    }
    if manifest.get("step", state["step"]) != state["step"]:
        raise IncompleteStateError(f"{folder}: manifest.json says step {manifest.get('step')!r}, train_state.json "
                                   f"{state['step']}")
    for key, kind in (("optimizer_state", dict), ("scheduler_state", dict), ("rng", dict), ("data_state", dict),
                      ("config_fingerprint", dict)):
        if not isinstance(state[key], kind):
            raise IncompleteStateError(f"{folder}: {key} is not a {kind.__name__}")
    return state


# ----------------------------------------------------------------------------------------- fingerprints


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def fingerprint_diff(saved: dict, current: dict) -> list[str]:
    """What differs between the saved run's fingerprint and the current one, one line per dotted key,
    e.g. ``"network.rank: 16 → 32"`` or ``"dataset_hash: changed"`` (hash values are not printed in full)."""
    a, b = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            lines.append(f"{key}: not in the saved state (now {b[key]!r})")
        elif key not in b:
            lines.append(f"{key}: {a[key]!r} in the saved state, absent now")
        elif _norm(a[key]) != _norm(b[key]):
            if "hash" in key.lower():
                lines.append(f"{key}: changed ({str(a[key])[:12]} → {str(b[key])[:12]})")
            else:
                lines.append(f"{key}: {a[key]!r} → {b[key]!r}")
    return lines


def _norm(v: Any) -> Any:
    """Make JSON-loaded and in-memory values comparable (tuples come back from JSON as lists)."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v
