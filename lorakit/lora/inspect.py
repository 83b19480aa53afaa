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
from typing import Any, Optional, Sequence

from lorakit.errors import LorakitError
from lorakit.lora.formats.layouts import module_problems
from lorakit.lora.io import load_lora_file
from lorakit.lora.variant_keys import LYCORIS_SUFFIXES, algo_of_keys

SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_A.weight", ".lora_B.weight",
            ".lora_A.default.weight", ".lora_B.default.weight") + LYCORIS_SUFFIXES  # issue 23: LoHa/LoKr/DoRA


def split_key(key: str) -> tuple[str, str]:
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


RUN_FILE = "run.json"
LORA_FOLDER_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")


def resolve(path: Path) -> tuple[Path, Optional[str]]:
    """The LoRA file to inspect for a path (a run folder: its final LoRA; a diffusers / PEFT LoRA folder: its
    weights), or (path, what it is) when it is not a LoRA at all. One-line errors for what cannot be told."""
    path = Path(path)
    if not path.exists():
        raise LorakitError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise LorakitError(f"{path}: not a .safetensors file; inspect reads LoRAs in safetensors files")
        from lorakit.models.registry import identify

        kind = identify(path)
        return path, (None if kind.role == "lora" else kind.what)
    if (path / RUN_FILE).is_file():
        lora = json.loads((path / RUN_FILE).read_text()).get("lora")
        if lora and Path(lora).is_file():
            return resolve(Path(lora))
        done = sorted(p for p in path.glob("*.safetensors"))
        if done:
            return resolve(done[-1])
        raise LorakitError(f"{path}: a run folder without a LoRA yet (run.json names none); inspect a checkpoint "
                           f"from {path / 'state'} after the run saves one")
    for name in LORA_FOLDER_FILES:
        if (path / name).is_file():
            return resolve(path / name)
    if (path / "model_index.json").is_file():
        return path, "a diffusers model folder (a base model)"
    files = sorted(path.glob("*.safetensors"))
    if len(files) == 1:
        return resolve(files[0])
    raise LorakitError(f"{path}: a folder with {len(files)} .safetensors files"
                       + (f" ({', '.join(p.name for p in files[:5])}{', ...' if len(files) > 5 else ''})" if files
                          else "") + "; name the LoRA file")


def run_base(lora: Path) -> Optional[Path]:
    """The base checkpoint of the run a LoRA was written by, when it sits in a run folder (its config.toml names
    model.checkpoint and that file exists): the file ``inspect`` checks the keys against when no --base is given."""
    for folder in (lora.parent, lora.parent.parent):
        cfg = folder / "config.toml"
        if (folder / RUN_FILE).is_file() and cfg.is_file():
            import tomllib

            try:
                model = tomllib.loads(cfg.read_text(encoding="utf-8")).get("model")
            except (ValueError, OSError):  # damaged (not TOML, not UTF-8): inspect goes on without the base
                return None
            ckpt = model.get("checkpoint") if isinstance(model, dict) else None
            return Path(ckpt) if isinstance(ckpt, str) and ckpt and Path(ckpt).is_file() else None
    return None


def inspect_file(path: Path, keymaps: Sequence[Any] = (), base: Optional[Path] = None) -> dict[str, Any]:
    """What a LoRA file holds and which base its keys fit. ``keymaps``: the families' FamilyKeys (passed in by the
    caller): with them the file is read as the trainers and loaders read it (any layout; fused modules split into
    their parts, so the rank shown is the LoRA's rank); ``base``: check against this base file's own modules."""
    given = Path(path)
    path, not_lora = resolve(given)
    if not_lora is not None:
        return {"file": str(path), "not_lora": not_lora}
    # a PEFT adapter folder keeps each text encoder's adapter in a subfolder of its own: shown here, not counted below
    others = sorted(str(p.relative_to(given)) for p in given.glob("*/adapter_model.safetensors")) if given.is_dir() \
        else []
    tensors, meta = load_lora_file(path)
    modules: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, suffix = split_key(key)
        modules.setdefault(name, {})[suffix] = value
    ranks: Counter = Counter()
    alphas: Counter = Counter()
    prefixes: Counter = Counter()
    dtypes: Counter = Counter(str(v.dtype).replace("torch.", "") for v in tensors.values())
    algos: Counter = Counter()
    for name, parts in modules.items():
        algos[algo_of_keys(s[1:] for s in parts)] += 1
        down = parts.get(".lora_down.weight", parts.get(".lora_A.weight"))
        for low_rank in (".hada_w1_b", ".lokr_w2_b", ".lokr_w1_b"):  # LoHa/LoKr: the rank of a factor
            down = parts.get(low_rank) if down is None else down
        if down is not None:
            ranks[int(down.shape[0])] += 1
        if ".alpha" in parts and parts[".alpha"].numel() == 1:  # (one of several values: listed as damaged)
            alphas[float(parts[".alpha"].float().item())] += 1
        prefixes[name.split("_")[0] + "_" + name.split("_")[1] if name.startswith("lora_") else name.split(".")[0]] += 1
    outs = {n: int(p[s].shape[0]) for n, p in modules.items() for s in (".lora_up.weight", ".lora_B.weight") if s in p}
    info = {
        "file": str(path), "size_bytes": path.stat().st_size, "tensors": len(tensors), "modules": len(modules),
        "module_groups": dict(prefixes), "ranks": dict(ranks), "alphas": dict(alphas), "dtypes": dict(dtypes),
        "fits": family_fit(set(modules), outs), "metadata": {k: _maybe_json(v) for k, v in sorted(meta.items())},
        "nonfinite": nonfinite_tensors(tensors), "algos": dict(algos),
        "damaged": [f"{stem}: {why}" for stem, why in module_problems(tensors).items()],
    }
    if algos.keys() - {"lora"}:  # loadleft: a damaged LoHa/LoKr/DoRA module was listed by verify only
        from lorakit.lora.tools.verify import lycoris_problems

        listed = {d.split(": ", 1)[0] for d in info["damaged"]}  # (an alpha of several values: listed above)
        info["damaged"] += [f"{stem}: {why}" for stem, why in lycoris_problems(tensors).items() if stem not in listed]
    if others:
        info["other_adapters"] = others
    keymaps = [k for k in keymaps if k.family in _candidates(info, base, tensors, keymaps)]
    if keymaps and not info["damaged"]:  # (a damaged pair cannot be read as the loaders read it: reported instead)  # the family the file is for (a family without a key map keeps the name count above)
        info.update(_canonical(path, tensors, meta, keymaps, base))
    if base is not None and "fit" not in info:  # the --base's family has none of these modules: not this LoRA's base
        from lorakit.models.registry import identify

        best = max(info["fits"].items(), key=lambda f: f[1]["matched"], default=(None, {"matched": 0}))
        raise LorakitError(f"--base {base}: this is {identify(base).what}; no module of this LoRA fits it"
                           + (f" (its modules are {best[0]}'s: {best[1]['matched']}/{len(modules)} fit full-size "
                              f"{best[0]})" if best[1]["matched"] else ""))
    return info


def _candidates(info: dict[str, Any], base: Optional[Path], tensors: Optional[dict] = None,
                keymaps: Sequence[Any] = ()) -> set[str]:
    """The families a LoRA is for: the base file's (--base), else the one its ss_base_model_version names, else the
    one whose key map reads most of its modules in its layout (names and shapes: a diffusers-layout FLUX.1 file was
    called SD3's, whose diffusers names FLUX.1's share, and an SDXL one no family's), else those whose full-size
    names it fits best."""
    if base is not None:
        from lorakit.models.registry import identify

        family = identify(base).family
        if family is not None:
            return {family}
    version = str(info["metadata"].get("ss_base_model_version", ""))
    claimed = {fam for fam in info["fits"] if _claims(fam, version)}
    if claimed:
        return claimed
    top = max((f["matched"] for f in info["fits"].values()), default=0)
    if keymaps and tensors is not None and not info.get("damaged"):
        from lorakit.lora.formats.layouts import choose_family, detect_layout, group_keys, stem_widths

        layout = detect_layout(tensors)
        if layout is not None and not any(k.endswith(LYCORIS_SUFFIXES) for k in tensors):
            groups = group_keys(tensors)[0]
            keys, n = choose_family(layout, sorted(groups), list(keymaps), stem_widths(groups))
            if n and n >= top:
                return {keys.family}
    return {fam for fam, f in info["fits"].items() if top and f["matched"] == top}


def _canonical(path: Path, tensors: dict, meta: dict, keymaps: Sequence[Any], base: Optional[Path]) -> dict[str, Any]:
    """The file read as the format readers read it: layout, per-part ranks and alphas, and the fit against the
    best family's full-size modules, or against ``base``'s own (a toy or pruned model)."""
    from lorakit.lora.formats.layouts import choose_family, detect_layout, group_keys, read_lora, stem_widths
    from lorakit.lora.tools.files import base_keymap

    layout = detect_layout(tensors)
    if layout is None or any(k.endswith(LYCORIS_SUFFIXES) for k in tensors):
        return _lycoris_fit(tensors, keymaps, base) if layout != "peft" else {}
    groups = group_keys(tensors)[0]
    keys, n = choose_family(layout, sorted(groups), list(keymaps), stem_widths(groups))
    if n == 0:
        return {"layout": layout}
    checked = "full-size " + keys.family + (f" {keys.variant}" if keys.variant else "")
    if base is not None:
        from lorakit.models.registry import identify

        kind = identify(base)
        if kind.family is not None and kind.family != keys.family:
            raise LorakitError(f"--base {base}: this is {kind.what}, but the LoRA's modules are {keys.family}'s")
        keys = base_keymap(keys, base)
        checked = f"{base} ({kind.what})"
    state = read_lora(tensors, meta, [keys], where=str(path), family=keys.family)
    by_name = keys.by_kohya
    ranks: Counter = Counter()
    alphas: Counter = Counter()
    fused = 0
    for name, pair in state.modules.items():
        m = by_name.get(name)
        parts = len(m.diffusers) if m is not None and len(m.diffusers) > 1 and pair.rank % len(m.diffusers) == 0 else 1
        fused += parts > 1
        ranks[pair.rank // parts] += 1
        if pair.alpha is not None:
            alphas[float(pair.alpha) / parts] += 1
    foreign = sorted(state.foreign)
    fit = {"matched": len(state.modules) - len(foreign), "of": len(state.modules),
           "unmatched": (foreign + state.unplaced())[:20]}
    if base is None:  # names fit full size; do the shapes? (a toy's LoRA has full-size names on smaller weights)
        fit["shape_mismatch"] = _shape_mismatches(state.modules, by_name)
    return {"layout": layout, "family": keys.family, "lora_ranks": dict(ranks), "lora_alphas": dict(alphas),
            "fused_modules": fused, "checked_against": checked, "fit": fit}


def _shape_mismatches(modules: dict, by_name: dict) -> list[str]:
    """``name: LoRA RxC on weight RxC`` for each module whose name fits but whose shapes are not the weight's."""
    out = []
    for name, pair in sorted(modules.items()):
        m = by_name.get(name)
        if m is None:
            continue
        rows, cols = int(pair.up.shape[0]), int(pair.down.reshape(pair.down.shape[0], -1).shape[1])
        want = (m.out_features, m.in_features * m.kernel[0] * m.kernel[1])
        if (rows, cols) != want:
            out.append(f"{name}: LoRA {rows}x{cols} on weight {want[0]}x{want[1]}")
    return out


def _lycoris_fit(tensors: dict, keymaps: Sequence[Any], base: Optional[Path] = None) -> dict[str, Any]:
    """A LoHa/LoKr/DoRA file (kohya names): the family whose modules its names fit and how many fit (against
    ``base``'s own modules when given, as for a LoRA)."""
    from lorakit.lora.formats.layouts import choose_family
    from lorakit.lora.tools.files import base_keymap

    stems = sorted({split_key(k)[0] for k in tensors})
    keys, n = choose_family("kohya", stems, list(keymaps))
    if n == 0:
        return {"layout": "lycoris"}
    checked = "full-size " + keys.family
    if base is not None:
        from lorakit.models.registry import identify

        keys, checked = base_keymap(keys, base), f"{base} ({identify(base).what})"
    unmatched = [s for s in stems if s not in keys.by_kohya]
    return {"layout": "lycoris", "family": keys.family, "checked_against": checked,
            "fit": {"matched": len(stems) - len(unmatched), "of": len(stems), "unmatched": unmatched[:20]}}


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


# what a names-only check says (no key map with shapes for the family, or a LoHa/LoKr file): not that the shapes fit
_NAMES_ONLY = " (module names checked, not shapes: `lorakit verify {0[file]}` checks them)"


def render(info: dict[str, Any]) -> str:
    if "not_lora" in info:
        return f"{info['file']}: not a LoRA: this is {info['not_lora']}"
    lines = [f"{info['file']}  ({info['size_bytes'] / 2**20:.2f} MiB, {info['tensors']} tensors, "
             f"{info['modules']} modules" + (f", {info['layout']} layout" if info.get("layout") else "") + ")"]
    lines.append("modules by group: " + ", ".join(f"{k} {v}" for k, v in sorted(info["module_groups"].items())))
    if info.get("other_adapters"):
        lines.append(f"note: this is the folder's denoiser adapter; its text encoders' adapters "
                     f"({', '.join(info['other_adapters'])}) are not counted here: inspect each of them")
    ranks, alphas = info.get("lora_ranks", info["ranks"]), info.get("lora_alphas", info["alphas"])
    fused = f"; {info['fused_modules']} modules store their parts side by side (fused), shown per part" \
        if info.get("fused_modules") else ""
    lines.append("rank: " + ", ".join(f"{k} ({v} modules)" for k, v in sorted(ranks.items())) + fused)
    if alphas:
        lines.append("alpha: " + ", ".join(f"{k:g} ({v} modules)" for k, v in sorted(alphas.items())))
    lines.append("dtypes: " + ", ".join(f"{k} {v}" for k, v in info["dtypes"].items()))
    if set(info.get("algos") or {}) - {"lora"}:
        lines.append("network: " + ", ".join(f"{k} ({v} modules)" for k, v in sorted(info["algos"].items())))
    bad = info.get("nonfinite") or []
    if bad:
        lines.append(f"warning: {len(bad)} tensor(s) hold NaN/Inf (the LoRA is damaged or training diverged; it "
                     f"will break images): {', '.join(bad[:10])}{', …' if len(bad) > 10 else ''}")
    else:
        lines.append("values: all finite (no NaN/Inf)")
    damaged = info.get("damaged") or []
    if damaged:
        lines.append(f"warning: {len(damaged)} module(s) are damaged (no loader can apply them; lorakit's tools refuse "
                     f"the file): {'; '.join(damaged[:5])}{'; …' if len(damaged) > 5 else ''}")
    if "fit" in info:
        fit = info["fit"]
        lines.append(f"fits {info['family']}: {fit['matched']}/{fit['of']} modules (checked against "
                     f"{info['checked_against']})")
        full = info["checked_against"].startswith("full-size")
        if fit["unmatched"]:
            hint = "; a smaller or pruned base? check with --base FILE" if full else ""
            lines.append(f"base model: {info['family']}; modules that fit nothing: {', '.join(fit['unmatched'])}{hint}")
        elif fit.get("shape_mismatch"):  # names fit, shapes do not: the loaders would skip these modules
            bad = fit["shape_mismatch"]
            lines.append(f"base model: {info['family']}; every name fits, but {len(bad)}/{fit['of']} modules have "
                         f"other shapes than {info['checked_against']}'s (e.g. {bad[0]}): a LoRA of a smaller model "
                         f"(a toy or pruned one); check it with --base FILE or `lorakit verify {info['file']} --base "
                         "FILE`")
        else:
            lines.append(f"base model: {info['family']}; every key fits" + (
                "" if not full else " (names and shapes)" if "shape_mismatch" in fit else _NAMES_ONLY.format(info)))
        return "\n".join(lines + _metadata_lines(info))
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
                                              else "; every key fits" + _NAMES_ONLY.format(info)))
    else:
        lines.append("base model: no known family matches these keys")
    return "\n".join(lines + _metadata_lines(info))


def _metadata_lines(info: dict[str, Any]) -> list[str]:
    lines = ["metadata:"]
    for key, value in info["metadata"].items():
        text = json.dumps(value) if not isinstance(value, str) else value
        lines.append(f"  {key}: {text[:200]}{'…' if len(text) > 200 else ''}")
    return lines


def _claims(family: str, version: str) -> bool:
    """Whether ``ss_base_model_version`` names this family (its spec's version is a prefix of it, or it is one of the
    variants' own values)."""
    from lorakit.models.registry import get_family
    spec = get_family(family).SPEC
    return bool(version) and (version.startswith(spec.metadata_base_version) or version in spec.metadata_versions)


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
