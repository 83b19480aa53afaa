"""LoRA file layouts <-> one canonical form: kohya module name -> :class:`Pair` (pure state_dict functions).

Layouts read and written:

* ``kohya``: ``lora_unet_<native>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (also read:
  kohya-style names built from diffusers paths, ``lora_unet_down_blocks_…``, which older trainers wrote).
* ``comfyui``: ComfyUI's own names, ``diffusion_model.<native>.lora_up/.lora_down.weight`` + ``.alpha`` and
  ``text_encoders.<clip_l|clip_g|t5xxl>.transformer.<native>`` (its "generic" key form; lora_A/B also read).
* ``diffusers``: ``unet.|transformer.|text_encoder.|text_encoder_2.<diffusers path>.lora_A/.lora_B.weight``,
  written with alpha/rank folded into lora_B (a diffusers file without alpha loads at scale 1); fused
  modules split into their diffusers parts.
* ``peft``: PEFT's adapter layout ``base_model.model.<diffusers path>.lora_A/.lora_B.weight`` with
  ``adapter_config.json`` (r, lora_alpha, rank_pattern, alpha_pattern); one adapter per component.

Every conversion keeps ΔW of every module (exact up to the storage dtype); anything that cannot be mapped
is reported, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import torch

from lorakit.errors import LorakitError
from lorakit.lora.formats.fused import Pair, fuse, split
from lorakit.lora.formats.keymap import BaseModule, FamilyKeys

LAYOUTS = ("kohya", "comfyui", "diffusers", "peft")
PAIR_SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_A.weight": "down",
                 ".lora_B.weight": "up", ".alpha": "alpha"}
PEFT_PREFIX = "base_model.model."


@dataclass
class LoraState:
    """A LoRA in canonical form: kohya names (fused where the single file is fused) -> Pair."""

    modules: dict[str, Pair]
    metadata: dict[str, str]
    layout: str
    family: str
    unmatched: list[str] = field(default_factory=list)   # file keys that map onto no module of the family
    foreign: set[str] = field(default_factory=set)      # kohya modules kept by name though the family lacks them
    keys: Optional[FamilyKeys] = None                   # the key map the file was read with (its size, if several)

    def unplaced(self) -> list[str]:
        """Unmatched keys that are not part of a module kept by name."""
        out = []
        for key in self.unmatched:
            stem = next((key[: -len(s)] for s in PAIR_SUFFIXES if key.endswith(s)), key)
            if stem not in self.foreign:
                out.append(key)
        return out


def group_keys(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """file keys -> {module stem: {"down"/"up"/"alpha": tensor}} and the keys of no known LoRA suffix."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    loose: list[str] = []
    for key, value in tensors.items():
        for suffix, role in PAIR_SUFFIXES.items():
            if key.endswith(suffix):
                groups.setdefault(key[: -len(suffix)], {})[role] = value
                break
        else:
            loose.append(key)
    return groups, loose


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "a scalar"


def module_problems(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """module stem -> what is wrong with its pair, for the pairs no loader can apply: a factor that is no matrix or
    holds no value (rank 0, a zero-size tensor), an up whose columns are not the down's rows (the rank), an alpha
    that is not one number. The tools refuse such a file in one line; inspect and verify report the modules."""
    groups, _ = group_keys(tensors)
    out: dict[str, str] = {}
    for stem, parts in sorted(groups.items()):
        down, up, alpha = parts.get("down"), parts.get("up"), parts.get("alpha")
        if down is not None and up is not None:
            if down.dim() < 2 or up.dim() < 2:
                out[stem] = (f"lora_down is {_shape(down)}, lora_up {_shape(up)}: each must be a matrix (rank x in, "
                             "out x rank)")
            elif down.numel() == 0 or up.numel() == 0:
                out[stem] = f"lora_down is {_shape(down)}, lora_up {_shape(up)}: a zero-size factor (rank 0)"
            elif up.reshape(up.shape[0], -1).shape[1] != down.shape[0]:
                out[stem] = (f"lora_up has {up.reshape(up.shape[0], -1).shape[1]} columns, lora_down "
                             f"{down.shape[0]} rows: the two factors disagree on the rank")
        if alpha is not None and alpha.numel() != 1 and stem not in out:
            out[stem] = f"alpha holds {alpha.numel()} values (shape {_shape(alpha)}); one number is expected"
    return out


def refuse_damaged(tensors: dict[str, torch.Tensor], where: str) -> None:
    """One LorakitError line when :func:`module_problems` finds any (the tools write nothing from such a file)."""
    bad = module_problems(tensors)
    if bad:
        stem, why = next(iter(bad.items()))
        raise LorakitError(f"{where}: {len(bad)} module(s) are damaged, e.g. {stem}: {why}; nothing written "
                           "(`lorakit inspect` lists them)")


def _lora_key(key: str) -> bool:
    from lorakit.lora.variant_keys import LYCORIS_SUFFIXES
    return key.endswith((".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".alpha")
                        + LYCORIS_SUFFIXES)


def detect_layout(keys: Iterable[str]) -> Optional[str]:
    keys = list(keys)
    if any(k.startswith(PEFT_PREFIX) for k in keys):
        return "peft"
    if any(k.startswith(("diffusion_model.", "text_encoders.")) for k in keys) and any(_lora_key(k) for k in keys):
        return "comfyui"  # the LoRA keys, not an SD3.5 checkpoint's bundled text_encoders.clip_l.transformer.…
    if any(k.startswith("lora_") and (k.endswith(".lora_down.weight") or k.endswith(".lora_up.weight")) for k in keys):
        return "kohya"
    if any(k.startswith(("unet.", "transformer.", "text_encoder.", "text_encoder_2.")) and
           (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")) for k in keys):
        return "diffusers"
    return None


def _pair(stem: str, parts: dict[str, torch.Tensor], where: str) -> Pair:
    if "down" not in parts or "up" not in parts:
        missing = "down (lora_down/lora_A)" if "down" not in parts else "up (lora_up/lora_B)"
        raise LorakitError(f"{where}: module {stem} has no {missing} matrix; the file is incomplete")
    alpha = parts.get("alpha")
    return Pair(parts["down"], parts["up"], None if alpha is None else float(alpha.float().item()))


def _lookup(layout: str, stem: str, keys: FamilyKeys) -> Optional[tuple[BaseModule, int]]:
    """(module, part index) a file stem names in ``layout``, None when the family has no such module."""
    if layout == "kohya":
        m = keys.by_kohya.get(stem)
        return (m, -1) if m is not None else keys.by_kohya_diffusers.get(stem)
    if layout == "comfyui":
        m = keys.by_comfy.get(stem)
        return (m, -1) if m is not None else None
    if layout == "diffusers":  # older attention-processor names: …attn1.processor.to_q / …processor.to_out
        return keys.by_diffusers.get(stem) or keys.by_diffusers.get(_plain_path(stem))
    if layout == "peft":
        return keys.by_diffusers.get(keys.diffusers_prefix["denoiser"] + stem[len(PEFT_PREFIX):])
    raise ValueError(layout)


def _plain_path(stem: str) -> str:
    """A diffusers attention-processor path as the module's own: ``attn1.processor.to_q`` -> ``attn1.to_q``,
    ``processor.to_out`` -> ``to_out.0``."""
    if ".processor.to_" not in stem:
        return stem
    stem = stem.replace(".processor.to_", ".to_")
    return stem + ".0" if stem.endswith(".to_out") else stem


def stem_widths(groups: dict[str, dict[str, torch.Tensor]]) -> dict[str, tuple[int, int]]:
    """module stem -> (rows of up, columns of down flattened): what a file says about each module's shape."""
    out = {}
    for stem, parts in groups.items():
        if "down" in parts and "up" in parts and parts["down"].dim() >= 2 and parts["down"].numel() > 0:
            out[stem] = (int(parts["up"].shape[0]), int(parts["down"].reshape(parts["down"].shape[0], -1).shape[1]))
    return out


def choose_family(layout: str, stems: Sequence[str], families: Sequence[FamilyKeys],
                  widths: Optional[dict[str, tuple[int, int]]] = None) -> tuple[FamilyKeys, int]:
    """The key map naming most of ``stems``; on equal names (FLUX.1 and FLUX.2 share BFL block names; FLUX.2's sizes
    share their lower block indices) the one whose shapes fit most of ``widths`` (:func:`stem_widths`); then, in the
    kohya layout, the one whose own trainer writes these names (SDXL's ``lora_unet_input_blocks_…`` are sd-scripts'
    SDXL names and only an alternative reading for SD 1.5)."""
    best, best_score = None, (-1, -1, -1)
    for keys in families:
        n = sum(1 for s in stems if _lookup(layout, s, keys) is not None)
        fit = keys.shape_fit(widths, lambda stem, k: _lookup(layout, stem, k)) if widths and n else 0
        own = sum(1 for s in stems if s in keys.by_kohya) if layout == "kohya" and n else 0
        if (n, fit, own) > best_score:
            best, best_score = keys, (n, fit, own)
    if best is None or best_score[0] == 0:
        return (best or families[0]), 0
    return best, best_score[0]


def read_lora(tensors: dict[str, torch.Tensor], metadata: dict[str, str], families: Sequence[FamilyKeys], *,
              where: str, peft_config: Optional[dict[str, Any]] = None,
              family: Optional[str] = None) -> LoraState:
    """Any supported layout -> :class:`LoraState`. ``families``: the keymaps to match names against
    (``family`` forces one). Raises a one-line error for an unknown layout or a file no family fits."""
    from lorakit.lora.variant_keys import LYCORIS_SUFFIXES, algo_of_keys

    lyco = sorted({algo_of_keys([k.rsplit(".", 1)[1]]) for k in tensors if k.endswith(LYCORIS_SUFFIXES)})
    if lyco:  # issue 23: a LoHa/LoKr/DoRA file is no pair of matrices per module; nothing here may drop its tensors
        raise LorakitError(f"{where}: a LyCORIS {'/'.join(lyco)} file; this works on LoRA/LoCon files only "
                           "(lorakit verify and inspect read it, ComfyUI/Forge load it)")
    if any(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in tensors):
        # PEFT's in-memory names (a model.state_dict() saved as is): the adapter "default"'s factors, read as such
        tensors = {k.replace(".lora_A.default.weight", ".lora_A.weight").replace(".lora_B.default.weight",
                                                                                  ".lora_B.weight"): v
                   for k, v in tensors.items()}
        if not any(k.startswith(("unet.", "transformer.", "text_encoder.", "text_encoder_2.", PEFT_PREFIX))
                   for k in tensors):  # a bare model's names: the denoiser's PEFT paths
            tensors = {PEFT_PREFIX + k: v for k, v in tensors.items()}
    layout = detect_layout(tensors)
    if layout is None:
        raise LorakitError(f"{where}: unknown LoRA layout (no lora_down/lora_up or lora_A/lora_B keys); "
                           f"supported: {', '.join(LAYOUTS)}")
    refuse_damaged(tensors, where)  # rank 0, a rank that down and up disagree on, an alpha of several values
    groups, loose = group_keys(tensors)
    stems = sorted(groups)
    pool = [f for f in families if family is None or f.family == family]
    if not pool:
        raise LorakitError(f"{where}: no key map for family {family!r}")
    keys, n = choose_family(layout, stems, pool, stem_widths(groups))
    if n == 0:
        version = str((metadata or {}).get("ss_base_model_version", ""))  # what the file says it was trained for
        raise LorakitError(f"{where}: {layout} layout, but no module name fits "
                           f"{' or '.join(dict.fromkeys(f.family for f in pool))} (e.g. {stems[0] if stems else '-'})"
                           + (f"; the file says it is a LoRA of {version} (ss_base_model_version)" if version else ""))
    modules: dict[str, Pair] = {}
    foreign: set[str] = set()
    fused_parts: dict[str, tuple[BaseModule, dict[int, Pair]]] = {}
    unmatched = list(loose)
    for stem in stems:
        hit = _lookup(layout, stem, keys)
        if hit is None:
            unmatched += [stem + s for s in PAIR_SUFFIXES if stem + s in tensors]
            if layout == "kohya" and stem.startswith("lora_") and {"down", "up"} <= set(groups[stem]):
                modules[stem] = _pair(stem, groups[stem], where)  # kept by name (a model of another topology)
                foreign.add(stem)
            continue
        pair = _pair(stem, groups[stem], where)
        if layout == "peft" and peft_config is not None and pair.alpha is None:
            pair.alpha = _peft_alpha(peft_config, stem[len(PEFT_PREFIX):], pair.rank)
        module, part = hit
        if part < 0 or len(module.diffusers) == 1:
            name = keys.kohya_name(module)
            if name in modules:
                raise LorakitError(f"{where}: two entries for module {name}")
            modules[name] = pair
        else:
            fused_parts.setdefault(keys.kohya_name(module), (module, {}))[1][part] = pair
    for name, (module, parts) in fused_parts.items():
        if name in modules:
            raise LorakitError(f"{where}: module {name} is stored both fused and split")
        some = next(iter(parts.values()))
        in_features = int(some.down.reshape(some.rank, -1).shape[1])
        sizes = _part_sizes(module, parts, in_features)
        modules[name] = fuse([parts.get(i) for i in range(len(module.diffusers))], sizes)
    return LoraState(modules, dict(metadata), layout, keys.family, sorted(unmatched), foreign, keys)


def _part_sizes(module: BaseModule, parts: dict[int, Pair], in_features: int) -> list[int]:
    """Output rows of each part: the present parts' own, the absent ones from the module's rule."""
    probe = BaseModule(module.component, module.native, module.diffusers, 0, in_features, parts_rule=module.parts_rule)
    if module.parts_rule == "equal":
        n = next(iter(parts.values())).up.shape[0]
        return [n] * len(module.diffusers)
    if module.parts_rule == "in3_rest":
        if 3 in parts:
            return [in_features] * 3 + [int(parts[3].up.shape[0])]
        full = probe.part_sizes(module.out_features) if module.in_features == in_features else None
        if full is None:
            raise LorakitError(f"{module.native}: the MLP part is missing and its width is unknown at this size")
        return list(full)
    return [int(p.up.shape[0]) for p in parts.values()]


def _peft_alpha(cfg: dict[str, Any], path: str, rank: int) -> float:
    for pattern, alpha in (cfg.get("alpha_pattern") or {}).items():
        if path == pattern or path.endswith("." + pattern):
            return float(alpha)
    return float(cfg.get("lora_alpha", rank))


# ------------------------------------------------------------------------------------------------ write

def _module(keys: FamilyKeys, name: str) -> BaseModule:
    m = keys.by_kohya.get(name)
    if m is None:
        raise LorakitError(f"module {name} is not a {keys.family} module")
    return m


def write_lora(state: LoraState, keys: FamilyKeys, layout: str) -> dict[str, Any]:
    """Canonical -> {"tensors": {...}} for kohya/comfyui/diffusers, or for peft
    {"adapters": {component folder: (tensors, adapter_config)}}. Tensors in float32 (the caller casts)."""
    if layout not in LAYOUTS:
        raise LorakitError(f"--to {layout}: unknown layout; use {', '.join(LAYOUTS)}")
    out: dict[str, torch.Tensor] = {}
    if layout in ("kohya", "comfyui"):
        for name, p in state.modules.items():
            stem = name if layout == "kohya" else keys.comfy_prefix[_module(keys, name).component] + \
                _module(keys, name).native
            p = _conv_factors(keys.by_kohya.get(name), p)   # as sd-scripts' Conv2d LoRA modules store them
            out[stem + ".lora_down.weight"] = p.down.float()
            out[stem + ".lora_up.weight"] = p.up.float()
            out[stem + ".alpha"] = torch.tensor(float(p.alpha if p.alpha is not None else p.rank))
        return {"tensors": out}
    adapters: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
    for name, p in state.modules.items():
        m = _module(keys, name)
        if not m.diffusers:
            raise LorakitError(f"module {name} has no diffusers name in this key map (a module of a model of another "
                               f"size or topology, e.g. a toy's); cannot write {layout}: --to kohya or --to comfyui "
                               "keep it under its own name")
        parts = [p] if len(m.diffusers) == 1 else split(p, m.part_sizes(int(p.up.shape[0])))
        for path, part in zip(m.diffusers, parts):
            if part is None:
                continue
            part = _conv_factors(m, part)
            if layout == "diffusers":
                stem = keys.diffusers_prefix[m.component] + path
                out[stem + ".lora_A.weight"] = part.down.float()
                out[stem + ".lora_B.weight"] = part.up.float() * part.scale
            else:
                folder = "" if m.component == "denoiser" else keys.diffusers_prefix[m.component].rstrip(".")
                tensors, cfg = adapters.setdefault(folder, ({}, {"rank_pattern": {}, "alpha_pattern": {}}))
                tensors[PEFT_PREFIX + path + ".lora_A.weight"] = part.down.float()
                tensors[PEFT_PREFIX + path + ".lora_B.weight"] = part.up.float()
                cfg["rank_pattern"][path] = part.rank
                cfg["alpha_pattern"][path] = float(part.alpha if part.alpha is not None else part.rank)
    if layout == "diffusers":
        return {"tensors": out}
    return {"adapters": {folder: (t, _peft_config(c)) for folder, (t, c) in adapters.items()}}


def _conv_factors(m: Optional[BaseModule], p: Pair) -> Pair:
    """A Conv2d module's factors 4-D (down [r, in, kh, kw], up [out, r, 1, 1]), as PEFT and sd-scripts hold them;
    other modules' unchanged."""
    if m is None or not m.conv or p.down.dim() == 4:
        return p
    return Pair(p.down.reshape(p.rank, m.in_features, *m.kernel), p.up.reshape(p.up.shape[0], p.rank, 1, 1), p.alpha)


def _peft_config(c: dict[str, Any]) -> dict[str, Any]:
    """adapter_config.json: the most common rank/alpha as r/lora_alpha, the rest as exact per-module patterns."""
    from collections import Counter

    r = Counter(c["rank_pattern"].values()).most_common(1)[0][0]
    a = Counter(c["alpha_pattern"].values()).most_common(1)[0][0]
    return {"peft_type": "LORA", "r": r, "lora_alpha": a, "target_modules": sorted(c["rank_pattern"]),
            "rank_pattern": {k: v for k, v in c["rank_pattern"].items() if v != r},
            "alpha_pattern": {k: v for k, v in c["alpha_pattern"].items() if v != a},
            "bias": "none", "lora_dropout": 0.0, "init_lora_weights": True, "use_dora": False}


def deltas(state: LoraState) -> dict[str, torch.Tensor]:
    """ΔW of every module (float32), by canonical name."""
    return {name: p.delta() for name, p in state.modules.items()}
