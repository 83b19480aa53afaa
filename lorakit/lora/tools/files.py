"""File-level LoRA tools: read any layout, write a layout, merge into a checkpoint and extract from two, streamed.

The family key maps (:class:`~lorakit.lora.formats.keymap.FamilyKeys`) are passed in by the caller (the CLI
gets them from the model registry); nothing here imports a family.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from lorakit.errors import LorakitError
from lorakit.lora.formats.fused import Pair
from lorakit.lora.formats.keymap import BaseModule, FamilyKeys
from lorakit.lora.formats.layouts import LoraState, read_lora, write_lora
from lorakit.lora.io import (TORCH_TO_ST, load_lora_file, model_hashes, read_safetensors_header,
                             save_safetensors_atomic, save_safetensors_streaming)

ST_TO_TORCH = {v: k for k, v in TORCH_TO_ST.items()}
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


def _keymap(families: Sequence[FamilyKeys], name: str) -> FamilyKeys:
    for f in families:
        if f.family == name:
            return f
    raise LorakitError(f"no key map for family {name!r}")


def load_state(path: Path, families: Sequence[FamilyKeys], family: Optional[str] = None) -> LoraState:
    """Read a LoRA file (or a PEFT adapter folder) of any supported layout into the canonical form."""
    path = Path(path)
    if path.is_dir():
        return _load_peft_folder(path, families, family)
    tensors, meta = load_lora_file(path)
    _refuse_nonfinite(tensors, path)
    cfg = None
    side = path.parent / PEFT_CONFIG
    if side.is_file() and any(k.startswith("base_model.model.") for k in tensors):
        cfg = json.loads(side.read_text())
    return read_lora(tensors, meta, families, where=str(path), peft_config=cfg, family=family)


def _refuse_nonfinite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """walk8: a LoRA holding NaN/Inf is refused by the tools that write from it (resize failed with a LinAlgError
    traceback; merge --into baked the NaN into a checkpoint; merge and convert passed it on)."""
    from lorakit.lora.inspect import nonfinite_tensors

    bad = nonfinite_tensors(tensors)
    if bad:
        raise LorakitError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values (e.g. {bad[0]}): the LoRA is damaged "
                           "or its training diverged, and would break every image; nothing written (`lorakit inspect` "
                           "lists them)")


def _need_peft_config(folder: Path) -> None:
    """walk8: a PEFT adapter folder without its adapter_config.json was read at scale 1 (alpha = rank): a LoRA
    trained with alpha = rank / 2 came out twice as strong, silently. Its config holds lora_alpha: refused without."""
    if not (folder / PEFT_CONFIG).is_file():
        raise LorakitError(f"{folder}: no {PEFT_CONFIG} beside {PEFT_WEIGHTS}; it holds the adapter's lora_alpha "
                           f"(its strength), so the folder cannot be read faithfully without it: restore it, or give "
                           f"{folder / PEFT_WEIGHTS} itself to read it at scale 1 (alpha = rank)")


def _load_peft_folder(path: Path, families: Sequence[FamilyKeys], family: Optional[str]) -> LoraState:
    weights = path / PEFT_WEIGHTS
    if not weights.is_file():
        raise LorakitError(f"{path}: a folder, but no {PEFT_WEIGHTS} in it; give a .safetensors file or a PEFT "
                           "adapter folder")
    _need_peft_config(path)
    tensors, meta = load_lora_file(weights)
    _refuse_nonfinite(tensors, weights)
    cfg = json.loads((path / PEFT_CONFIG).read_text())
    state = read_lora(tensors, meta, families, where=str(weights), peft_config=cfg, family=family)
    keys = state.keys or _keymap(families, state.family)
    for comp, prefix in keys.diffusers_prefix.items():
        sub = path / prefix.rstrip(".")
        if comp == "denoiser" or not (sub / PEFT_WEIGHTS).is_file():
            continue
        _need_peft_config(sub)
        t, _ = load_lora_file(sub / PEFT_WEIGHTS)
        _refuse_nonfinite(t, sub / PEFT_WEIGHTS)
        c = json.loads((sub / PEFT_CONFIG).read_text())
        renamed = {prefix + k[len("base_model.model."):]: v for k, v in t.items()}
        part = read_lora(renamed, {}, [keys], where=str(sub / PEFT_WEIGHTS), family=keys.family)
        if c is not None:  # alphas of the text encoder adapter
            for name, p in part.modules.items():
                m = keys.by_kohya[name]
                p.alpha = _alpha_from(c, m.diffusers[0], p.rank)
        state.modules.update(part.modules)
        state.unmatched += part.unmatched
    return state


def _alpha_from(cfg: dict[str, Any], path: str, rank: int) -> float:
    for pattern, alpha in (cfg.get("alpha_pattern") or {}).items():
        if path == pattern or path.endswith("." + pattern):
            return float(alpha)
    return float(cfg.get("lora_alpha", rank))


def common_dtype(state: LoraState) -> torch.dtype:
    """The storage dtype most of the input's factors used (fp16 if none was recorded)."""
    dtypes = Counter(p.up.dtype for p in state.modules.values() if p.up.is_floating_point())
    dtype = dtypes.most_common(1)[0][0] if dtypes else torch.float16
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float16


def save_state(state: LoraState, keys: FamilyKeys, layout: str, out: Path, *, dtype: Optional[torch.dtype] = None,
               metadata: Optional[dict[str, str]] = None, overwrite: bool = False) -> list[Path]:
    """Write ``state`` in ``layout`` to ``out`` (a file; a folder for peft). Metadata: the input's plus
    ``metadata``; ss_network_dim/alpha follow the modules; sshs_* hashes recomputed. Returns the files written."""
    out = Path(out)
    dtype = dtype or common_dtype(state)
    meta = dict(state.metadata)
    meta.update(metadata or {})
    ranks = Counter(p.rank for p in state.modules.values())
    alphas = Counter(float(p.alpha if p.alpha is not None else p.rank) for p in state.modules.values())
    if ranks and "ss_network_dim" in meta:
        meta["ss_network_dim"] = str(ranks.most_common(1)[0][0])
    if alphas and "ss_network_alpha" in meta:
        meta["ss_network_alpha"] = f"{alphas.most_common(1)[0][0]:g}"
    written = write_lora(state, keys, layout)
    cast = (lambda t: t.to(dtype) if t.dim() > 0 else t.float())
    if layout != "peft":
        tensors = {k: cast(v) for k, v in written["tensors"].items()}
        _check_target(out, overwrite)
        if "sshs_model_hash" in meta or layout in ("kohya", "comfyui"):
            meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(tensors, meta)
        save_safetensors_atomic(out, tensors, meta)
        return [out]
    _check_target(out, overwrite)
    files = []
    for folder, (tensors, cfg) in written["adapters"].items():
        target = out / folder if folder else out
        target.mkdir(parents=True, exist_ok=True)
        save_safetensors_atomic(target / PEFT_WEIGHTS, {k: cast(v) for k, v in tensors.items()},
                                meta if not folder else {})
        (target / PEFT_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        files += [target / PEFT_WEIGHTS, target / PEFT_CONFIG]
    return files


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise LorakitError(f"{out}: already exists; choose another -o or move the file away")


def check_out(out: Path, *, folder: bool = False) -> None:
    """An output named by -o, checked before any file is read: not there yet, and (a file) named ``.safetensors``,
    the extension loaders read a file's format from (walk8: ``-o lora.pt`` wrote safetensors bytes that A1111 and
    ComfyUI then open as a pickle, ``-o lora`` a file no loader lists)."""
    out = Path(out)
    _check_target(out, False)
    if folder and out.suffix.lower() == ".safetensors":  # a PEFT adapter is a folder: one named x.safetensors misleads
        raise LorakitError(f"-o {out}: the output is a PEFT adapter, a folder (adapter_model.safetensors + "
                           f"adapter_config.json); give a folder name, e.g. {out.with_suffix('')} (lorakit convert "
                           "--to kohya makes one .safetensors file of it)")
    if not folder and out.suffix.lower() != ".safetensors":
        raise LorakitError(f"-o {out}: lorakit writes .safetensors files, and loaders go by the extension; name it "
                           f"{out.with_name((out.stem if out.suffix else out.name) + '.safetensors')}")


# --------------------------------------------------------------------------------------- checkpoints

def _checkpoint_modules(keys: FamilyKeys, header: dict[str, Any]) -> tuple[dict[str, list[BaseModule]], str]:
    """checkpoint key -> modules stored in it, and the key prefix the file actually uses (FLUX files from
    ComfyUI carry ``model.diffusion_model.``)."""
    prefix = ""
    if not any(m.checkpoint_key in header for m in keys.modules):
        for p in ("model.diffusion_model.",):
            if any(p + m.checkpoint_key in header for m in keys.modules):
                prefix = p
    out: dict[str, list[BaseModule]] = {}
    for m in keys.modules:
        if m.checkpoint_key and prefix + m.checkpoint_key in header:
            out.setdefault(prefix + m.checkpoint_key, []).append(m)
    return out, prefix


def _pattern(native: str) -> str:
    import re

    return re.sub(r"\d+", "#", native)


def base_keymap(keys: FamilyKeys, base: Path, flag: str = "--base") -> FamilyKeys:
    """``keys`` with the shapes of the actual base file; components the file does not hold keep theirs.

    A base whose topology differs from the full-size one (a pruned or toy model) has LoRA targets the
    full-size table lacks: every 2-D/4-D weight of the file whose path has the shape of a known target
    (digits aside, e.g. ``input_blocks.#.#.transformer_blocks.#.attn#.to_q``) is added under its native
    name (diffusers names are unknown for those, so only native-name rules can match them). ``flag``: the option
    that named ``base`` (``merge --into``'s), for the error.
    """
    header, _ = read_safetensors_header(base)
    if keys.for_base is not None:  # names that follow the base's own depth (an SD 1.x U-Net's layers per block)
        keys = keys.for_base(header) or keys
    by_key, prefix = _checkpoint_modules(keys, header)
    if not by_key:
        from lorakit.models.registry import identify  # what it is instead (the one detector, as inspect --base)
        raise LorakitError(f"{flag} {base}: this is {identify(base).what}, with no {keys.family} weight of any LoRA "
                           f"target; give the {keys.family} single-file checkpoint the LoRA was trained on")
    shapes = {k[len(prefix):]: tuple(header[k]["shape"]) for k in by_key}
    present = {m.component for ms in by_key.values() for m in ms}
    fitted = keys.with_shapes(shapes)
    kept = [m for m in keys.modules if m.component not in present]
    known = {m.checkpoint_key for m in keys.modules}
    patterns = {(m.component, _pattern(m.native)) for m in keys.modules if not m.checkpoint_split}
    extra = []
    for comp in present:
        cprefix = prefix + keys.checkpoint_prefix.get(comp, "")
        for key, info in header.items():
            if not key.startswith(cprefix) or not key.endswith(".weight") or key[len(prefix):] in known:
                continue
            native = key[len(cprefix):-len(".weight")]
            shape = info["shape"]
            if (comp, _pattern(native)) in patterns and len(shape) in (2, 4):
                kernel = (int(shape[2]), int(shape[3])) if len(shape) == 4 else (1, 1)
                extra.append(BaseModule(comp, native, (), int(shape[0]), int(shape[1]), kernel,
                                        checkpoint_key=key[len(prefix):]))
    return keys.with_modules(fitted.modules + tuple(extra) + tuple(kept))


def _sizes(state: LoraState, base: Path) -> str:
    """For a ΔW that does not fit: the model size the LoRA fits and what the checkpoint is (loadleft: a FLUX.2 Klein
    4B LoRA into a Klein 9B checkpoint was a shape message only)."""
    size = getattr(state.keys, "variant", None)
    if not size:
        return ""
    from lorakit.models.registry import identify

    return (f": the LoRA fits {state.family} {size}, and {base.name} is {identify(base).what}; bake it into a "
            f"{state.family} {size} checkpoint; nothing written")


STALE_HASHES = ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256")  # hashes of the base's weights


def merge_into(base: Path, loras: Sequence[tuple[LoraState, float]], keys: FamilyKeys, out: Path, *,
               overwrite: bool = False, files: Sequence[str] = ()) -> dict[str, Any]:
    """Stream ``base`` tensor by tensor into ``out`` (same keys, dtypes, order), adding Σ w·ΔW where a LoRA
    module lands. RAM: one tensor of the base plus the LoRAs. Every LoRA module must find its weight."""
    from safetensors import safe_open

    header, meta = read_safetensors_header(base)
    by_key, _ = _checkpoint_modules(keys, header)
    wanted: dict[str, list[tuple[BaseModule, Pair, float]]] = {}
    missing = []
    for state, w in loras:
        for name, pair in state.modules.items():
            m = keys.by_kohya.get(name)
            key = next((k for k, ms in by_key.items() if m in ms), None) if m is not None else None
            if key is None:
                missing.append(name)
                continue
            wanted.setdefault(key, []).append((m, pair, w, state))
    te_names = tuple(f"lora_{p}" for p in ("te", "te1", "te2", "te3"))
    if missing and all(n.startswith(te_names) for n in missing) and not any(
            m.component != "denoiser" for ms in by_key.values() for m in ms):
        # loadleft: a FLUX.1 LoRA with CLIP-L modules and a transformer-only file (its usual release) was asked "is
        # it the base the LoRA was trained for?"
        raise LorakitError(f"merge --into {base}: the checkpoint holds no text encoder (a denoiser-only file, as "
                           f"ComfyUI's models/diffusion_models/ holds), and {len(missing)} of the LoRA's modules are "
                           f"text-encoder modules (e.g. {missing[0]}); bake into a single-file checkpoint that bundles "
                           "the text encoder, or load the LoRA at generation time; nothing written")
    if missing:
        raise LorakitError(f"merge --into {base}: {len(missing)} LoRA modules have no weight in this checkpoint "
                           f"(e.g. {missing[0]}); is it the base the LoRA was trained for?")
    _check_target(out, overwrite)
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    entries = [(k, header[k]["dtype"], header[k]["shape"]) for k in order]
    touched: list[str] = []
    with safe_open(str(base), framework="pt") as fh:
        def produce(key: str) -> torch.Tensor:
            t = fh.get_tensor(key)
            if key not in wanted:
                return t
            w32 = t.float()
            for m, pair, w, state in wanted[key]:
                d = pair.delta() * w
                rows = m.rows_in(int(w32.shape[0]))
                target = w32[rows[0]:rows[1]] if rows else w32
                if tuple(d.shape) != tuple(target.shape) and d.numel() == target.numel() and \
                        d.shape[0] == target.shape[0]:
                    d = d.reshape(target.shape)  # a 1×1 conv stored 4-D, its LoRA 2-D (or the reverse)
                if tuple(d.shape) != tuple(target.shape):
                    raise LorakitError(f"merge --into: {keys.kohya_name(m)} ΔW {tuple(d.shape)} does not fit "
                                       f"{key} {tuple(target.shape)}" + _sizes(state, base))
                target += d
            touched.append(key)
            return w32.to(t.dtype)

        md = {k: v for k, v in meta.items() if k not in STALE_HASHES}  # loadleft: the base's hashes were kept
        md["lorakit_merged_loras"] = json.dumps([{**({"file": files[i]} if i < len(files) else {}),
                                                  "modules": len(s.modules), "weight": w,
                                                  "output_name": s.metadata.get("ss_output_name", "")}
                                                 for i, (s, w) in enumerate(loras)])  # (file: loadleft)
        save_safetensors_streaming(out, entries, produce, md)
    return {"weights_changed": len(touched), "tensors": len(entries)}


def extract_from(tuned: Path, base: Path, keys: FamilyKeys, rank: int, *, min_diff: float = 0.0,
                 progress: Optional[Callable[[str], None]] = None) -> tuple[LoraState, list[dict[str, Any]]]:
    """A LoRA of rank ``rank`` from ``tuned − base`` for every LoRA-target weight the two files share.
    Modules whose difference is ≤ ``min_diff`` (max |Δ|) are left out and listed with rank 0."""
    from safetensors import safe_open

    from lorakit.lora.tools.ops import extract_module

    ht, _ = read_safetensors_header(tuned)
    hb, _ = read_safetensors_header(base)
    bt, pt = _checkpoint_modules(keys, ht)
    bb, pb = _checkpoint_modules(keys, hb)
    shared = [k for k in bt if k[len(pt):] in {x[len(pb):] for x in bb}]
    if not shared:
        raise LorakitError(f"extract: {tuned} and {base} share no {keys.family} LoRA-target weight; are they "
                           "the same model family and layout?")
    modules: dict[str, Pair] = {}
    rows: list[dict[str, Any]] = []
    with safe_open(str(tuned), framework="pt") as ft, safe_open(str(base), framework="pt") as fb:
        for key in shared:
            a, b = ft.get_tensor(key), fb.get_tensor(pb + key[len(pt):])
            if a.shape != b.shape:
                raise LorakitError(f"extract: {key} is {tuple(a.shape)} in {tuned} but {tuple(b.shape)} in {base}; "
                                   "not the same architecture")
            diff = a.float() - b.float()
            if not bool(torch.isfinite(diff).all()):  # loadleft: was linalg.svd's LinAlgError traceback
                where, k = (tuned, key) if not bool(torch.isfinite(a.float()).all()) else (base, pb + key[len(pt):])
                raise LorakitError(f"extract: {where}: tensor {k!r} holds NaN or Inf values (a damaged file, or a "
                                   "diverged training run); extract needs finite weights; nothing written")
            for m in bt[key]:
                span = m.rows_in(int(diff.shape[0]))
                d = diff[span[0]:span[1]] if span else diff
                name = keys.kohya_name(m)
                if float(d.abs().max()) <= min_diff:
                    rows.append({"module": name, "rank": 0, "rel_error": 0.0 if float(d.abs().max()) == 0 else 1.0,
                                 "energy": 0.0, "diff_norm": float(torch.linalg.norm(d))})
                    continue
                pair, row = extract_module(d, rank, name)
                modules[name] = pair
                rows.append(row)
                if progress:
                    progress(name)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
            "lorakit_extracted_from": json.dumps({"tuned": tuned.name, "base": base.name})}
    return LoraState(modules, meta, "kohya", keys.family), rows


def checkpoint_dtype(path: Path) -> torch.dtype:
    header, _ = read_safetensors_header(path)
    c = Counter(v["dtype"] for v in header.values())
    name = c.most_common(1)[0][0] if c else "F16"
    return ST_TO_TORCH.get(name, torch.float16) if name in ("F16", "BF16", "F32") else torch.float16


