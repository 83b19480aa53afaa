"""`lorakit inspect FILE`: what is in a LoRA file, and which base model its keys fit.

Reads the header without trusting it (the safe loader validates sizes and offsets), groups tensors into
modules (kohya ``<name>.lora_down/.lora_up/.alpha`` or diffusers/PEFT ``<name>.lora_A/.lora_B``), and
matches module names against every registered family's full-size key universe (built on the meta device,
no weights needed), reporting the keys that fit nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError
from lorakit.lora.io import load_lora_file

SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_A.weight", ".lora_B.weight",
            ".lora_A.default.weight", ".lora_B.default.weight")


def split_key(key: str) -> tuple[str, str]:
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def inspect_file(path: Path) -> dict[str, Any]:
    tensors, meta = load_lora_file(path)
    modules: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, suffix = split_key(key)
        modules.setdefault(name, {})[suffix] = value
    ranks: Counter = Counter()
    alphas: Counter = Counter()
    prefixes: Counter = Counter()
    dtypes: Counter = Counter(str(v.dtype).replace("torch.", "") for v in tensors.values())
    for name, parts in modules.items():
        down = parts.get(".lora_down.weight", parts.get(".lora_A.weight"))
        if down is not None:
            ranks[int(down.shape[0])] += 1
        if ".alpha" in parts:
            alphas[float(parts[".alpha"].float().item())] += 1
        prefixes[name.split("_")[0] + "_" + name.split("_")[1] if name.startswith("lora_") else name.split(".")[0]] += 1
    outs = {n: int(p[s].shape[0]) for n, p in modules.items() for s in (".lora_up.weight", ".lora_B.weight") if s in p}
    fits = family_fit(set(modules), outs)
    return {
        "file": str(path), "size_bytes": path.stat().st_size, "tensors": len(tensors), "modules": len(modules),
        "module_groups": dict(prefixes), "ranks": dict(ranks), "alphas": dict(alphas), "dtypes": dict(dtypes),
        "fits": fits, "metadata": {k: _maybe_json(v) for k, v in sorted(meta.items())},
        "nonfinite": nonfinite_tensors(tensors),
    }


def family_fit(names: set[str], out_widths: dict[str, int] | None = None) -> dict[str, Any]:
    """For each family with a key universe (the family package's optional ``lora_key_universe()``, asked of every
    family the registry finds, shipped or named in ``LORAKIT_FAMILIES`` / entry points): how many of the file's modules
    it knows, and which it doesn't; with ``lora_sizes`` (a family of several sizes) also the sizes the file fits,
    from names and output widths."""
    from lorakit.models.registry import families, get_family

    out = {}
    for fam in families():
        package = get_family(fam)
        universe_fn = getattr(package, "lora_key_universe", None)
        if universe_fn is None:
            continue
        try:
            universe = universe_fn()
        except Exception as exc:  # noqa: BLE001  (a family package's bug: one line naming it, not a traceback)
            raise LorakitError(f"inspect: {package.__name__}.lora_key_universe() failed: {type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        known = names & universe
        out[fam] = {"matched": len(known), "of": len(names), "unmatched": sorted(names - universe)[:20]}
        sizes_fn = getattr(get_family(fam), "lora_sizes", None)
        if sizes_fn is not None and known:
            out[fam]["sizes"] = sizes_fn(names, out_widths or {})
    return out


def render(info: dict[str, Any]) -> str:
    lines = [f"{info['file']}  ({info['size_bytes'] / 2**20:.2f} MiB, {info['tensors']} tensors, "
             f"{info['modules']} modules)"]
    lines.append("modules by group: " + ", ".join(f"{k} {v}" for k, v in sorted(info["module_groups"].items())))
    lines.append("rank: " + ", ".join(f"{k} ({v} modules)" for k, v in sorted(info["ranks"].items())))
    if info["alphas"]:
        lines.append("alpha: " + ", ".join(f"{k:g} ({v} modules)" for k, v in sorted(info["alphas"].items())))
    lines.append("dtypes: " + ", ".join(f"{k} {v}" for k, v in info["dtypes"].items()))
    bad = info.get("nonfinite") or []
    if bad:
        lines.append(f"warning: {len(bad)} tensor(s) hold NaN/Inf (the LoRA is damaged or training diverged; it "
                     f"will break images): {', '.join(bad[:10])}{', …' if len(bad) > 10 else ''}")
    else:
        lines.append("values: all finite (no NaN/Inf)")
    best = None
    version = str(info["metadata"].get("ss_base_model_version", ""))
    for fam, fit in info["fits"].items():
        sizes = f" (sizes: {', '.join(fit['sizes']) or 'none at full size'})" if "sizes" in fit else ""
        lines.append(f"fits {fam}: {fit['matched']}/{fit['of']} modules{sizes}")
        if fit["matched"] and (best is None or fit["matched"] > info["fits"][best]["matched"]
                               or (fit["matched"] == info["fits"][best]["matched"] and _claims(fam, version))):
            best = fam  # on equal names (FLUX.1 and FLUX.2 share BFL block names) the file's own version decides
    if best is not None:
        unmatched = info["fits"][best]["unmatched"]
        lines.append(f"base model: {best}" + (f"; keys that fit nothing: {', '.join(unmatched)}" if unmatched
                                              else "; every key fits"))
    else:
        lines.append("base model: no known family matches these keys")
    lines.append("metadata:")
    for key, value in info["metadata"].items():
        text = json.dumps(value) if not isinstance(value, str) else value
        lines.append(f"  {key}: {text[:200]}{'…' if len(text) > 200 else ''}")
    return "\n".join(lines)


def _claims(family: str, version: str) -> bool:
    """Whether ``ss_base_model_version`` names this family (its spec's version is a prefix of it)."""
    from lorakit.models.registry import get_family
    base = get_family(family).SPEC.metadata_base_version
    return bool(version) and version.startswith(base)


def _maybe_json(value: str) -> Any:
    """A JSON-looking metadata value parsed; as text when it is not JSON or nests too deep (a crafted file)."""
    from lorakit.safetensors_header import metadata_json

    if value[:1] in "{[":
        try:
            return metadata_json(value)
        except ValueError:
            return value
    return value


def nonfinite_tensors(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating tensors holding NaN or Inf (a damaged or diverged LoRA), sorted."""
    import torch

    return sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
