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
from lorakit.lora.formats.layouts import detect_layout, group_keys, module_problems
from lorakit.lora.formats.loaders import EXCLUDED_NATIVE, PAIRS, RULES, SOURCES, UNKNOWN, VARIANT_NOTES, VARIANTS, expand
from lorakit.lora.tools.svd import numerical_rank, product_svd
from lorakit.lora.variant_keys import algo_of_keys


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


def _lycoris_groups(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """stem → {suffix without the dot: tensor} for every module holding a LoHa/LoKr/DoRA key (alpha and, for DoRA,
    its lora_up/lora_down included): issue 23."""
    from lorakit.lora.variant_keys import LYCORIS_SUFFIXES

    stems = {k.rsplit(".", 1)[0] for k in tensors if k.endswith(LYCORIS_SUFFIXES)}
    out: dict[str, dict[str, torch.Tensor]] = {s: {} for s in stems}
    for key, value in tensors.items():
        for stem in (key.rsplit(".", 1)[0], key.rsplit(".", 2)[0]):
            if stem in out:
                out[stem][key[len(stem) + 1:]] = value
                break
    return out


def _lycoris_problem(m: BaseModule, part: int, t: dict[str, torch.Tensor]) -> str:
    """Why a variant module cannot patch ``m`` ("" when its ΔW has the weight's shape)."""
    from lorakit.lora.variants import lycoris_delta

    if part >= 0:
        return f"a {algo_of_keys(t)} module on part {part} of the fused {m.native} (a loader patches whole weights)"
    want = (m.out_features, m.in_features * m.kernel[0] * m.kernel[1])
    algo = algo_of_keys(t)
    try:
        if algo == "dora":
            got_in = int(t["dora_scale"].numel())
            return "" if got_in == m.in_features else f"dora_scale has {got_in} entries, weight {m.in_features} inputs"
        delta = lycoris_delta(algo, t, 1.0, (-1,))
    except (KeyError, RuntimeError) as exc:
        return f"{algo} tensors do not combine ({exc})"
    return "" if delta.numel() == want[0] * want[1] else f"{algo} ΔW of {delta.numel()} values on weight {want[0]}x{want[1]}"


def verify(tensors: dict[str, torch.Tensor], keys: FamilyKeys, loaders: tuple[str, ...] = tuple(RULES)
           ) -> dict[str, Any]:
    damaged = module_problems(tensors)  # rank 0, a rank the factors disagree on, several alphas: no loader applies
    lyco = _lycoris_groups(tensors)
    lyco_keys = {f"{s}.{k}" for s, parts in lyco.items() for k in parts}
    groups, loose = group_keys({k: v for k, v in tensors.items() if k not in lyco_keys})
    loose = [k for k in loose if k not in lyco_keys]
    stem_keys: dict[str, dict[str, str]] = {}
    for key in tensors:
        for suffix in (".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".alpha"):
            if key.endswith(suffix):
                stem_keys.setdefault(key[: -len(suffix)], {})[key] = suffix
                break
    report: dict[str, Any] = {"family": keys.family,
                              "layout": "lycoris" if lyco else (detect_layout(tensors) or "unknown"),
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
            problem = damaged.get(stem) or _shape_problem(hit[0], hit[1], parts["down"], parts["up"])
            if problem:
                mismatched += [(n, problem) for n in names]
            else:
                applied += names
        for stem, parts in lyco.items():  # issue 23: LoHa/LoKr/DoRA modules
            names = sorted(f"{stem}.{k}" for k in parts)
            hit = index.get(stem)
            algo = algo_of_keys(parts)
            if hit is None or hit[2] == "peft" or algo not in VARIANTS.get(loader, ()):
                if algo == "dora" and hit is not None and hit[2] != "peft":  # the LoRA pair loads, the magnitude not
                    ignored.append(f"{stem}.dora_scale")
                    applied += [n for n in names if not n.endswith(".dora_scale")]
                else:
                    ignored += names
                continue
            problem = _lycoris_problem(hit[0], hit[1], parts)
            if not problem and algo == "dora":
                problem = _shape_problem(hit[0], hit[1], parts["lora_down.weight"], parts["lora_up.weight"])
            if problem:
                mismatched += [(n, problem) for n in names]
            else:
                applied += names
        report["loaders"][loader] = {"source": SOURCES[loader], "on_unknown": UNKNOWN[loader],
                                     "applied": len(applied), "ignored": sorted(ignored),
                                     "mismatched": sorted(mismatched)}
        lacks = sorted({algo_of_keys(p) for p in lyco.values()} - set(VARIANTS.get(loader, ())))
        if lacks:  # issue 23: this loader does not read the variant at all; said once, not held against the file
            report["loaders"][loader]["unsupported"] = lacks
    for stem, parts in sorted(groups.items()):
        if "down" not in parts or "up" not in parts or stem in damaged:
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
    for stem, parts in sorted(lyco.items()):
        problem = _lycoris_damage(parts)
        if problem:  # an alpha of several values, a zero-size or mismatched factor: listed, not a traceback
            damaged[stem] = problem
            continue
        report["modules"].append(_lycoris_row(stem, parts))
    from lorakit.lora.inspect import nonfinite_tensors

    report["nonfinite"] = nonfinite_tensors(tensors)  # walk8: a NaN LoRA was "every loader applies every key"
    report["damaged"] = [f"{stem}: {why}" for stem, why in sorted(damaged.items())]
    report["ok"] = all(not v["ignored"] and not v["mismatched"] for v in report["loaders"].values()
                       if not v.get("unsupported")) and not report["nonfinite"] and not report["damaged"]
    report["variants"] = sorted({m.get("algo", "lora") for m in report["modules"]} - {"lora"})
    return report


def lycoris_problems(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """stem → why, for every LoHa/LoKr/DoRA module whose tensors cannot make a ΔW (verify's list; inspect's too)."""
    return {stem: why for stem, parts in sorted(_lycoris_groups(tensors).items()) if (why := _lycoris_damage(parts))}


def _lycoris_damage(parts: dict[str, torch.Tensor]) -> str:
    """Why a LoHa/LoKr/DoRA module's tensors cannot make a ΔW ("" when they can)."""
    alpha = parts.get("alpha")
    if alpha is not None and alpha.numel() != 1:
        return f"alpha holds {alpha.numel()} values; one number is expected"
    empty = sorted(k for k, v in parts.items() if k != "alpha" and v.numel() == 0)
    if empty:
        return f"{', '.join(empty)}: zero-size (rank 0)"
    try:
        _lycoris_row("", parts)
    except (RuntimeError, KeyError, AttributeError, ValueError) as exc:
        return f"{algo_of_keys(parts)} tensors do not combine ({str(exc).splitlines()[0][:120]})"
    return ""


def _lycoris_row(stem: str, parts: dict[str, torch.Tensor]) -> dict[str, Any]:
    """rank / alpha / scale / effective rank of one LoHa/LoKr/DoRA module (ΔW as ComfyUI builds it, alpha 1)."""
    from lorakit.lora.variants import lycoris_delta

    algo = algo_of_keys(parts)
    alpha = float(parts["alpha"].float().item()) if "alpha" in parts else None
    if algo == "dora":
        down = parts["lora_down.weight"].float()
        r = int(down.shape[0])
        delta = parts["lora_up.weight"].float().reshape(-1, r) @ down.reshape(r, -1)
    else:
        low = next((parts[k] for k in ("hada_w1_b", "lokr_w2_b", "lokr_w1_b") if k in parts), None)
        r = int(low.shape[0]) if low is not None else 0
        w1 = parts.get("hada_w1_a", parts.get("lokr_w1", parts.get("lokr_w1_a")))
        rows = int(w1.shape[0]) * (1 if algo == "loha" else int(parts.get("lokr_w2", parts.get("lokr_w2_a")).shape[0]))
        delta = lycoris_delta(algo, parts, float(r or 1), (rows, -1))
    try:
        eff = numerical_rank(torch.linalg.svdvals(delta.float()))
    except RuntimeError:
        eff = -1
    scale = (alpha / r) if alpha is not None and r else 1.0  # LoKr with both factors full: loaders apply no alpha
    return {"module": stem, "algo": algo, "rank": r or "full", "alpha": alpha if r else None, "scale": scale,
            "effective_rank": eff}


def render(report: dict[str, Any], limit: int = 8) -> str:
    lines = [f"{report['keys']} keys, {len(report['modules'])} modules, layout {report['layout']}, "
             f"family {report['family']}" + (f", {'/'.join(report['variants'])}" if report.get("variants") else "")]
    lines.append(f"{'loader':<10} {'applied':>8} {'ignored':>8} {'shape mismatch':>15}")
    for name, r in report["loaders"].items():
        if r.get("unsupported") is True:  # no loader for the family (a list: variants it skips, counted below)
            lines.append(f"{name:<10} loads no {report['family']} LoRA at all (not counted)")
            continue
        lines.append(f"{name:<10} {r['applied']:>8} {len(r['ignored']):>8} {len(r['mismatched']):>15}")
    for name, r in report["loaders"].items():
        if r.get("unsupported") is True:     # no loader for the family: said in the table above
            continue
        if r.get("unsupported"):
            lines.append(f"  {name}: does not load {'/'.join(r['unsupported'])} modules "
                         f"({VARIANT_NOTES.get(name, r['on_unknown'])}); not counted against the file")
            continue
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
        scale = (a / r) if a is not None and isinstance(r, int) and r else 1.0
        lines.append(f"  {n:>5} modules: rank {r}, alpha {a if a is not None else '-'}, scale {scale:g}, "
                     f"effective rank {e}")
    dropped = any(r["ignored"] or r["mismatched"] for r in report["loaders"].values() if not r.get("unsupported"))
    bad = report.get("nonfinite") or []
    if bad:
        lines.append(f"{len(bad)} tensor(s) hold NaN or Inf (e.g. {bad[0]}): the LoRA is damaged or its training "
                     "diverged, and would break every image" + ("" if dropped else "; exit code 1"))
    for line in (report.get("damaged") or [])[:limit]:
        lines.append(f"damaged module {line}")
    if report.get("damaged"):
        dropped = True
    lines.append(("every loader that reads " + "/".join(report["variants"]) + " applies every key")
                 if not dropped and report.get("variants") else
                 "every loader applies every key" if not dropped else
                 "some loader would drop keys (see above); exit code 1")
    checked = [r for r in report["loaders"].values() if r.get("unsupported") is not True]
    if checked and all(r["mismatched"] and not r["applied"] for r in checked):  # every shape off: another size's LoRA
        lines.append("no key has the full-size model's shapes: a LoRA of a model of another size (a toy, a pruned "
                     "model) is checked with --base <its base checkpoint>")
    return "\n".join(lines)
