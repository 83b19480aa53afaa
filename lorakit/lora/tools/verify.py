"""`lorakit verify`: what ComfyUI, Forge, diffusers and sd-scripts would do with every key of a LoRA file.

For each loader (rules in :mod:`lorakit.lora.formats.loaders`), every key is *applied* (its module name is one
the loader maps and its shapes fit the base weight), *ignored* (no rule names it: the loader drops it) or a
*shape mismatch* (named, but the weight it lands on has another shape: the loader skips the patch). Per
module: stored rank, alpha, scale alpha/rank and the numerical rank of ΔW.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit.lora.formats.keymap import BaseModule, FamilyKeys
from lorakit.lora.formats.layouts import detect_layout, group_keys
from lorakit.lora.formats.loaders import EXCLUDED_NATIVE, PAIRS, RULES, SOURCES, UNKNOWN, expand
from lorakit.lora.tools.svd import numerical_rank, product_svd


def _index(loader: str, keys: FamilyKeys) -> dict[str, tuple[BaseModule, int, str]]:
    out: dict[str, tuple[BaseModule, int, str]] = {}
    excluded = EXCLUDED_NATIVE.get((loader, keys.family), ())
    for rule in RULES[loader].get(keys.family, ()):
        for m in keys.modules:
            if m.component != rule.component or m.native.startswith(excluded):
                continue
            if rule.skip and m.native.endswith(rule.skip):
                continue
            for name, part in expand(rule.template, m.native, m.diffusers):
                out.setdefault(name, (m, part, rule.style))
    return out


def _style(parts: dict[str, str]) -> str:
    return "kohya" if ".lora_up.weight" in parts.values() or ".lora_down.weight" in parts.values() else "peft"


def _shape_problem(m: BaseModule, part: int, down: torch.Tensor, up: torch.Tensor) -> str:
    rows = m.part_sizes()[part] if part >= 0 else m.out_features
    want_in = m.in_features * m.kernel[0] * m.kernel[1]
    got_in = int(down.reshape(down.shape[0], -1).shape[1])
    if int(up.shape[0]) != rows or got_in != want_in:
        return (f"LoRA {int(up.shape[0])}x{got_in} on weight {rows}x{want_in}"
                + (f" (part {part} of {m.native})" if part >= 0 else ""))
    if int(up.reshape(up.shape[0], -1).shape[1]) != int(down.shape[0]):
        return f"up has {up.reshape(up.shape[0], -1).shape[1]} columns, down {down.shape[0]} rows"
    return ""


def verify(tensors: dict[str, torch.Tensor], keys: FamilyKeys, loaders: tuple[str, ...] = tuple(RULES)
           ) -> dict[str, Any]:
    groups, loose = group_keys(tensors)
    stem_keys: dict[str, dict[str, str]] = {}
    for key in tensors:
        for suffix in (".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".alpha"):
            if key.endswith(suffix):
                stem_keys.setdefault(key[: -len(suffix)], {})[key] = suffix
                break
    report: dict[str, Any] = {"family": keys.family, "layout": detect_layout(tensors) or "unknown",
                              "keys": len(tensors), "loaders": {}, "modules": []}
    for loader in loaders:
        if not RULES[loader].get(keys.family):  # no loader for the family at all (sd-scripts and FLUX.2 / Z-Image)
            report["loaders"][loader] = {"source": SOURCES[loader], "on_unknown": UNKNOWN[loader], "applied": 0,
                                         "ignored": [], "mismatched": [], "unsupported": True}
            continue
        index = _index(loader, keys)
        applied: list[str] = []
        ignored: list[str] = list(loose)
        mismatched: list[tuple[str, str]] = []
        for stem, parts in groups.items():
            names = sorted(stem_keys[stem])
            hit = index.get(stem)
            style = _style(stem_keys[stem])
            if hit is None or (hit[2] != "any" and hit[2] != style) or "down" not in parts or "up" not in parts:
                ignored += names
                continue
            problem = _shape_problem(hit[0], hit[1], parts["down"], parts["up"])
            if problem:
                mismatched += [(n, problem) for n in names]
            else:
                applied += names
        report["loaders"][loader] = {"source": SOURCES[loader], "on_unknown": UNKNOWN[loader],
                                     "applied": len(applied), "ignored": sorted(ignored),
                                     "mismatched": sorted(mismatched)}
    for stem, parts in sorted(groups.items()):
        if "down" not in parts or "up" not in parts:
            continue
        down, up = parts["down"].float(), parts["up"].float()
        r = int(down.shape[0])
        alpha = float(parts["alpha"].float().item()) if "alpha" in parts else None
        try:
            _, s, _ = product_svd(up.reshape(up.shape[0], -1), down.reshape(r, -1))
            eff = numerical_rank(s)
        except RuntimeError:
            eff = -1
        report["modules"].append({"module": stem, "rank": r, "alpha": alpha,
                                  "scale": (alpha / r) if alpha is not None else 1.0, "effective_rank": eff})
    report["ok"] = all(not v["ignored"] and not v["mismatched"] for v in report["loaders"].values()
                       if not v.get("unsupported"))
    return report


def render(report: dict[str, Any], limit: int = 8) -> str:
    lines = [f"{report['keys']} keys, {len(report['modules'])} modules, layout {report['layout']}, "
             f"family {report['family']}"]
    lines.append(f"{'loader':<10} {'applied':>8} {'ignored':>8} {'shape mismatch':>15}")
    for name, r in report["loaders"].items():
        if r.get("unsupported"):
            lines.append(f"{name:<10} loads no {report['family']} LoRA at all (not counted)")
            continue
        lines.append(f"{name:<10} {r['applied']:>8} {len(r['ignored']):>8} {len(r['mismatched']):>15}")
    for name, r in report["loaders"].items():
        for key in r["ignored"][:limit]:
            lines.append(f"  {name}: ignored {key}")
        if len(r["ignored"]) > limit:
            lines.append(f"  {name}: … {len(r['ignored']) - limit} more ignored ({r['on_unknown']})")
        for key, why in r["mismatched"][:limit]:
            lines.append(f"  {name}: shape mismatch {key}: {why}")
    ranks: dict[tuple, int] = {}
    for m in report["modules"]:
        k = (m["rank"], m["alpha"], m["effective_rank"])
        ranks[k] = ranks.get(k, 0) + 1
    lines.append("rank / alpha / scale / effective rank:")
    for (r, a, e), n in sorted(ranks.items(), key=lambda kv: -kv[1]):
        scale = (a / r) if a is not None else 1.0
        lines.append(f"  {n:>5} modules: rank {r}, alpha {a if a is not None else '-'}, scale {scale:g}, "
                     f"effective rank {e}")
    lines.append("every loader applies every key" if report["ok"] else
                 "some loader would drop keys (see above); exit code 1")
    return "\n".join(lines)
