"""Validation: the shape and names of each config layer, every value against its field's metadata, paths,
overrides, merging, and the rules that involve more than one field (see :mod:`lorakit.config.load` for the
rules worth knowing). Every problem is a :class:`ConfigError` whose message starts with the key path.
"""

from __future__ import annotations

import copy
import math
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Sequence

from lorakit.config import schema
from lorakit.config.fields import INDICES_RE, LIST_RULES, TABLE_KEYS, TABLE_MAX, FieldSpec, as_int, field_specs
from lorakit.config.kohya_import import KOHYA_KEYS
from lorakit.config.messages import BARE_KEY_RE, err, num, quote, seg, show, suggest
from lorakit.config.resolution import resolution_wh, square_bucket_side
from lorakit.config.schema import SECTIONS, Config
from lorakit.config.toml_io import list_presets
from lorakit.errors import ConfigError

_HUB_ID_FIELDS = frozenset({"model.checkpoint"})
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def parse_override_value(text: str, spec: FieldSpec | None) -> Any:
    """A TOML literal when the text is one, else the bare string.

    For string fields an unquoted value is always the bare string, so ``save.name=1234`` or
    ``model.checkpoint=2024-01-01.safetensors`` mean what the user typed.
    """
    stripped = text.strip()
    if spec is not None and spec.base is str and not stripped.startswith(('"', "'")):
        return stripped
    try:
        parsed = tomllib.loads(f"v = {stripped}\n")
    except (tomllib.TOMLDecodeError, RecursionError):
        return stripped
    if set(parsed) != {"v"}:
        return stripped
    return parsed["v"]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"network.rank=16"`` → (["network", "rank"], 16). Three parts set one entry of a table field."""
    if not isinstance(item, str) or "=" not in item:
        shown = quote(item) if isinstance(item, str) else show(item)
        raise ConfigError(f"override {shown}: expected section.key=value")
    key_text, value_text = item.split("=", 1)
    parts = [p.strip() for p in key_text.strip().split(".")]
    if key_text.strip() == "preset":
        return ["preset"], value_text.strip().strip("\"'")
    if len(parts) not in (2, 3) or not all(BARE_KEY_RE.match(p) for p in parts):
        homes = [s for s, keys in field_specs().items() if len(parts) == 1 and parts[0] in keys]
        hint = "; did you mean " + " or ".join(f"{s}.{parts[0]}={value_text.strip()}" for s in homes) + "?" \
            if homes else ""
        raise ConfigError(f"override {quote(item)}: expected section.key=value{hint}")
    spec = field_specs().get(parts[0], {}).get(parts[1]) if len(parts) == 2 else None
    return parts, parse_override_value(value_text, spec)


def check_layer(layer: Any, origin: str) -> dict[str, dict[str, Any]]:
    """Check a layer's shape and names (unknown sections/keys are errors); drop ``None`` values."""
    if not isinstance(layer, dict):
        raise ConfigError(f"{origin}: the config must be a table of sections, got {show(layer)}")
    specs = field_specs()
    out: dict[str, Any] = {}
    for section, body in layer.items():
        if section == "preset":
            if body is not None:
                out["preset"] = body
            continue
        if not isinstance(section, str) or section not in specs:
            raise _unknown_top_level(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise err(section, f"must be a table ([{section}]), got {show(body)}")
        clean: dict[str, Any] = {}
        for key, value in body.items():
            if not isinstance(key, str) or key not in specs[section]:
                raise _unknown_key(section, key)
            if value is not None:
                clean[key] = value
        out[section] = clean
    return out


def _unknown_top_level(name: Any) -> ConfigError:
    specs = field_specs()
    text = str(name)
    owners = [s for s in SECTIONS if text in specs[s]]
    kohya = _kohya_name(text)
    if kohya:
        return err(seg(text), f"not a section; kohya's {text} is {kohya} in lorakit (under [{kohya.split('.')[0]}])")
    if owners:
        return err(seg(text), f"not a section; did you mean {owners[0]}.{text} (under [{owners[0]}])?")
    hint = suggest(text, list(SECTIONS) + ["preset"])
    extra = f"; did you mean {hint}?" if hint else f"; sections are {', '.join(SECTIONS)}"
    return err(seg(text), f"unknown section{extra}")


def _unknown_key(section: str, key: Any) -> ConfigError:
    specs = field_specs()
    text = str(key)
    kohya = _kohya_name(text)
    if kohya:
        return err(f"{section}.{seg(text)}", f"unknown key; kohya's {text} is {kohya} in lorakit")
    hint = suggest(text, list(specs[section]))
    if hint:
        return err(f"{section}.{seg(text)}", f"unknown key; did you mean {section}.{hint}?")
    owners = [s for s in SECTIONS if text in specs[s]]
    if owners:
        return err(f"{section}.{seg(text)}", f"unknown key; did you mean {owners[0]}.{text}?")
    return err(f"{section}.{seg(text)}", f"unknown key in [{section}]; keys are {', '.join(specs[section])}")


def _kohya_name(name: str) -> str | None:
    """The lorakit key of a kohya option name that differs from lorakit's (for friendlier errors)."""
    target = KOHYA_KEYS.get(name)
    return target[0] if target and target[0].split(".")[1] != name else None


def resolve_paths(layer: dict[str, Any], base: Path) -> None:
    """Make relative path values absolute against ``base`` (in place)."""
    for section, body in layer.items():
        if section == "preset":
            continue
        for key, value in body.items():
            spec = field_specs()[section][key]
            if spec.meta.get("kind") != "path" or not isinstance(value, str) or not value.strip():
                continue
            body[key] = _resolve_one(spec.key, value, base)


def _resolve_one(key: str, value: str, base: Path) -> str:
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    candidate = os.path.normpath(os.path.join(str(base), expanded))
    weights_file = value.lower().endswith((".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf"))
    if key in _HUB_ID_FIELDS and _HUB_ID_RE.match(value) and not weights_file and not os.path.exists(candidate):
        return value  # a hub id such as "stabilityai/stable-diffusion-xl-base-1.0"
    return candidate


def _describe(spec: FieldSpec, kind_word: str, x: float | None = None) -> str:
    """``"an integer ≥ 1"`` / ``"a number > 0 and < 1"`` from the field's bounds (a sanity cap of
    :data:`lorakit.config.fields.BOUNDS` is named only when ``x`` is beyond it)."""
    parts = []
    for meta_key, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if meta_key in spec.meta:
            bound = spec.meta[meta_key]
            within = x is None or (x <= bound if meta_key == "le" else x >= bound)
            if meta_key in spec.meta.get("caps", ()) and within:
                continue
            parts.append(f"{sym} {num(bound)}")
    return kind_word + (" " + " and ".join(parts) if parts else "")


def _in_bounds(spec: FieldSpec, x: float) -> bool:
    m = spec.meta
    return not (("ge" in m and x < m["ge"]) or ("gt" in m and x <= m["gt"]) or ("le" in m and x > m["le"])
                or ("lt" in m and x >= m["lt"]))


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _check_value(spec: FieldSpec, value: Any) -> Any:
    """Validate and coerce one value; ConfigError naming the key otherwise."""
    key = spec.key
    kind = spec.meta.get("kind")
    if kind == "resolution":
        return _check_resolution(spec, value)
    if kind == "indices":
        return _check_indices(spec, value)
    if kind == "table" or spec.base is dict:
        return _check_table(spec, value)
    if spec.base is list:
        return _check_list(spec, value)
    if spec.base is bool:
        if not isinstance(value, bool):
            raise err(key, f"must be true or false, got {show(value)}")
        return value
    if spec.base is int:
        n = as_int(value)
        if n is None or not _in_bounds(spec, n):
            raise err(key, f"must be {_describe(spec, 'an integer', n)}, got {show(value)}")
        return n
    if spec.base is float:
        x = _as_float(value)
        if x is None or not _in_bounds(spec, x):
            raise err(key, f"must be {_describe(spec, 'a number', x)}, got {show(value)}")
        return x
    if spec.base is str:
        return _check_str(spec, value)
    if isinstance(value, (dict, list, tuple)) or not isinstance(value, (str, int, float, bool)):
        raise err(key, f"must be a string, number or boolean, got {show(value)}")
    return value


# other tools' names for a choice: what to write instead (difflib's nearest name can be another schedule:
# "cosine_with_restarts" is not "cosine_with_min_lr")
_CHOICE_HINTS: dict[str, dict[str, str]] = {"optimizer.scheduler": {
    "constant_with_warmup": "use \"constant\" (every schedule warms up over optimizer.warmup_steps)",
    "cosine_with_warmup": "use \"cosine\" (every schedule warms up over optimizer.warmup_steps)",
    "polynomial": "use \"linear\" (polynomial with lr_scheduler_power = 1); other powers are not offered",
}}


def _check_str(spec: FieldSpec, value: Any) -> str:
    key = spec.key
    choices = spec.meta.get("choices")
    if not isinstance(value, str) or (choices and value not in choices):
        if choices:
            hint = suggest(value, choices) if isinstance(value, str) else None
            extra = f"; did you mean {hint}?" if hint else ""
            extra = f"; {_CHOICE_HINTS[key][value]}" if isinstance(value, str) and value in _CHOICE_HINTS.get(key, {}) \
                else extra
            raise err(key, f"must be one of {', '.join(choices)}, got {show(value)}{extra}")
        what = "a path (string)" if spec.meta.get("kind") == "path" else "a string"
        raise err(key, f"must be {what}, got {show(value)}")
    if spec.meta.get("kind") == "path" and not value.strip():
        raise err(key, "must be a path, got an empty string; remove the key to use the default")
    if "\x00" in value:
        raise err(key, f"must not contain NUL characters, got {show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of a Linux name given on the command line
        raise err(key, f"must be valid UTF-8 (rename the file or folder with UTF-8 characters), got "
                  f"{show(value.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace'))}") from None
    if spec.meta.get("kind") == "path" and (len(value) > 4096 or any(len(part.encode("utf-8", "surrogateescape")) > 255
                                                                     for part in re.split(r"[\\/]", value))):
        raise err(key, f"must be a path with names of at most 255 bytes (4096 in all), got {show(value)}")
    return value


def _check_resolution(spec: FieldSpec, value: Any) -> int | list[int]:
    """An int stays an int and a pair stays a pair (what the user wrote is what a dumped config says)."""
    w, h = resolution_wh(value, spec.key, minimum=64, maximum=16384)
    return [w, h] if isinstance(value, (list, tuple)) else w


def _check_indices(spec: FieldSpec, value: Any) -> str:
    example = 'a block-index list such as "0,2-5"'
    if not isinstance(value, str) or not INDICES_RE.match(value):
        raise err(spec.key, f"must be {example}, got {show(value)}")
    for part in value.split(","):
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-"))
            if lo > hi:
                raise err(spec.key, f"range {part.strip()} runs backwards; write it low-high, got {show(value)}")
    return value


def parse_indices(text: str) -> list[int]:
    """``"0,2-5"`` → ``[0, 2, 3, 4, 5]`` (sorted, unique); for the models that read these fields."""
    out: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-"))
            out.update(range(lo, hi + 1))
        else:
            out.add(int(part))
    return sorted(out)


def _check_table(spec: FieldSpec, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise err(spec.key, f"must be a table of name = integer ≥ 0, got {show(value)}")
    from lorakit.config import families

    # the family's own names are checked once the family is known (check_families); here any family's
    allowed = TABLE_KEYS.get(spec.key) or families.table_names(spec.key)
    out: dict[str, int] = {}
    for name, entry in value.items():
        sub = f"{spec.key}.{seg(name)}"
        if not isinstance(name, str) or (allowed is not None and name not in allowed):
            hint = suggest(str(name), allowed or ())
            extra = f"did you mean {spec.key}.{hint}?" if hint else f"names are {', '.join(allowed or ())}"
            raise err(sub, f"unknown name; {extra}")
        n = as_int(entry)
        if n is None or not 0 <= n <= TABLE_MAX:
            cap = f" and ≤ {TABLE_MAX}" if n is not None and n > TABLE_MAX else ""
            raise err(sub, f"must be an integer ≥ 0{cap}, got {show(entry)}")
        out[name] = n
    return out


def _check_list(spec: FieldSpec, value: Any) -> list[Any]:
    rule, length = LIST_RULES.get(spec.key, ("scalar", None))
    if rule == "beta":
        what = "a list of two numbers ≥ 0 and < 1, e.g. [0.9, 0.999]"
        if isinstance(value, (list, tuple)) and len(value) == 2:
            nums = [_as_float(v) for v in value]
            if all(x is not None and 0.0 <= x < 1.0 for x in nums):
                return [float(x) for x in nums]  # type: ignore[arg-type]
        raise err(spec.key, f"must be {what}, got {show(value)}")
    if rule == "str":
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise err(spec.key, f"must be a list of strings, got {show(value)}")
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        if length is None or len(value) == length:
            return list(value)
    raise err(spec.key, f"must be a list of strings or numbers, got {show(value)}")


def merge_layer(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """Per-section merge: a later layer replaces whole values key by key."""
    for section, body in src.items():
        if section == "preset":
            dst["preset"] = body
        else:
            dst.setdefault(section, {}).update(copy.deepcopy(body))


def apply_overrides(merged: dict[str, Any], overrides: Sequence[str], explicit: set[str]) -> None:
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise ConfigError(f"override {show(overrides)}: expected a list of section.key=value strings")
    cwd = Path.cwd()
    for item in overrides:
        parts, value = parse_override(item)
        if parts == ["preset"]:
            continue  # handled before the layers are merged
        section, key = parts[0], parts[1]
        if section not in field_specs():
            raise _unknown_top_level(section)
        if key not in field_specs()[section]:
            raise _unknown_key(section, key)
        spec = field_specs()[section][key]
        body = merged.setdefault(section, {})
        if len(parts) == 3:
            if spec.meta.get("kind") != "table":
                raise ConfigError(f"override {quote(item)}: {spec.key} is not a table; use {spec.key}=value")
            table = body.get(key)
            table = dict(table) if isinstance(table, dict) else {}
            table[parts[2]] = value
            value = table
        elif spec.meta.get("kind") == "path" and isinstance(value, str) and value.strip():
            value = _resolve_one(spec.key, value, cwd)
        body[key] = value
        explicit.add(spec.key)


def resolve_default_paths(merged: dict[str, Any], base: Path) -> None:
    """Relative path defaults (``save.dir = "output"``) count as written in the file: every path is absolute."""
    for section, specs in field_specs().items():
        for name, spec in specs.items():
            if spec.meta.get("kind") == "path" and isinstance(spec.default, str) and name not in merged.get(section, {}):
                merged.setdefault(section, {})[name] = _resolve_one(spec.key, spec.default, base)


def build_config(merged: dict[str, Any], preset_name: str | None) -> Config:
    """Coerce every given value and construct the nested dataclasses (model.family first)."""
    specs = field_specs()
    hints = typing.get_type_hints(Config, vars(schema))
    sections: dict[str, Any] = {}
    for section in SECTIONS:
        body = merged.get(section, {})
        kwargs = {name: _check_value(specs[section][name], body[name]) for name in specs[section] if name in body}
        sections[section] = hints[section](**kwargs)
    return Config(preset=preset_name, **sections)


def check_required(cfg: Config) -> None:
    for section, specs in field_specs().items():
        for name, spec in specs.items():
            if spec.meta.get("required") and getattr(getattr(cfg, section), name) is None:
                raise err(spec.key, f"required ({spec.doc.rstrip('.')})")


def check_preset_family(cfg: Config, preset_layer: dict[str, Any], preset_name: str | None) -> None:
    from lorakit.config import families

    pfam = preset_layer.get("model", {}).get("family")
    if cfg.model.family not in families.installed():  # check_families refuses it, the value shown escaped
        return
    if pfam is not None and pfam != cfg.model.family:
        raise err("model.family", f"preset {preset_name} is for {pfam}, got {cfg.model.family}; use a "
                   f"{cfg.model.family}/... preset ({', '.join(p for p in list_presets() if p.startswith(cfg.model.family + '/'))})")


def check_families(cfg: Config) -> None:
    """model.family names an installed family; a family-only key is set only for a family whose spec lists it."""
    from lorakit.config import families

    family = cfg.model.family
    known = families.installed()
    if family not in known:
        import difflib

        close = difflib.get_close_matches(str(family), known, n=1)
        raise err("model.family", f"must be one of {', '.join(known)}, got {show(family)}"
                  + (f"; did you mean {close[0]}?" if close else ""))
    for section, specs in field_specs().items():
        for name, spec in specs.items():
            if not spec.meta.get("family_only"):
                continue
            fams = families.applies_to(spec.key)
            if family in fams:
                _check_family_table(spec, getattr(getattr(cfg, section), name), family)
                continue
            value = getattr(getattr(cfg, section), name)
            if value is False and spec.default is None:  # an explicit "never" of an unset-means-auto switch
                continue
            if "off" in spec.meta and value == spec.meta["off"]:  # a choice's "never" (distributed.shard = "none")
                continue
            if value != spec.default:
                raise err(spec.key, f"applies only to {', '.join(fams) or 'no installed family'}, not {family}; "
                          "remove it")


# (field, "only acts with" description, predicate on cfg) for settings that would otherwise do nothing.
_ONLY_WITH: tuple[tuple[str, str, typing.Callable[[Config], bool]], ...] = (
    ("network.text_encoder_lr", "network.train_text_encoder = true", lambda c: c.network.train_text_encoder),
    ("network.conv_alpha", "network.conv_rank > 0", lambda c: c.network.conv_rank > 0),
    ("network.factor", 'network.type = "lokr"', lambda c: c.network.type == "lokr"),  # issue 23
    ("optimizer.min_lr_ratio", 'optimizer.scheduler = "cosine_with_min_lr"',
     lambda c: c.optimizer.scheduler == "cosine_with_min_lr"),
    ("optimizer.num_cycles", 'optimizer.scheduler = "cosine_with_restarts"',
     lambda c: c.optimizer.scheduler == "cosine_with_restarts"),
    ("training.huber_c", 'training.loss = "huber"', lambda c: c.training.loss == "huber"),
    ("training.ema_decay", "training.ema = true", lambda c: c.training.ema),  # issue 23
    ("training.multires_noise_discount", "training.multires_noise_iterations > 0",
     lambda c: c.training.multires_noise_iterations > 0),
    ("sample.use_ema", "training.ema = true", lambda c: c.training.ema),
    ("training.discrete_flow_shift", 'training.timestep_sampling = "shift"',
     lambda c: c.training.timestep_sampling == "shift"),
    ("training.sigmoid_scale", 'training.timestep_sampling = "sigmoid", "shift" or "flux_shift"',
     lambda c: c.training.timestep_sampling in ("sigmoid", "shift", "flux_shift")),
    ("training.logit_mean", 'training.timestep_sampling = "logit_normal"',
     lambda c: c.training.timestep_sampling == "logit_normal"),
    ("training.logit_std", 'training.timestep_sampling = "logit_normal"',
     lambda c: c.training.timestep_sampling == "logit_normal"),
    ("data.prior_loss_weight", "data.reg_dir", lambda c: c.data.reg_dir is not None),
    # walk7o: Adafactor takes no Adam betas or eps; Lion and CAME no eps (CAME's eps pair is the package's own)
    ("optimizer.betas", "an optimizer.name other than adafactor", lambda c: c.optimizer.name != "adafactor"),
    ("optimizer.eps", "optimizer.name = adamw, adamw8bit, prodigy or adamw_schedulefree",
     lambda c: c.optimizer.name in ("adamw", "adamw8bit", "prodigy", "adamw_schedulefree")),
    # walk7o: keep_tokens only fixes tags that shuffling or tag dropout would move (a dataset TOML's subsets fall back
    # to it, so data.config keeps it too)
    ("data.keep_tokens", "data.shuffle_caption = true or data.caption_tag_dropout_rate > 0",
     lambda c: c.data.shuffle_caption or c.data.caption_tag_dropout_rate > 0 or c.data.config is not None),
    # validation (issue 23)
    *((key, "a validation set (data.validation_split > 0 or data.validation_dir)",
       lambda c: c.data.validation_split > 0 or c.data.validation_dir is not None)
      for key in ("save.keep_best", "validation.every_n_steps", "validation.timesteps")),
)


def _check_family_table(spec: FieldSpec, value: Any, family: str) -> None:
    """A table key whose names belong to the family (network.module_ranks): each name is one of this family's."""
    from lorakit.config import families

    names = families.table_names(spec.key, family)
    if names is None or not isinstance(value, dict):
        return
    for name in value:
        if name not in names:
            from lorakit.models.registry import get_family

            label = getattr(get_family(family).SPEC, "display_name", "") or family
            hint = suggest(str(name), names)
            extra = f"did you mean {spec.key}.{hint}?" if hint else f"names are {', '.join(names)}"
            raise err(f"{spec.key}.{seg(name)}", f"not a {label} module type; {extra}")


def _value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def check_cross(cfg: Config, explicit: set[str], notes: list[str]) -> None:
    """Rules that involve more than one field (after the family rules, so messages stay specific)."""
    d, t, m = cfg.data, cfg.training, cfg.memory
    if not m.cache_latents:
        raise err("memory.cache_latents", "false is not offered: latents are always cached on disk, keyed by each "
                  "image's content (an edited image is re-encoded, nothing stale is used) and the VAE then leaves "
                  "the GPU; remove the key")
    if d.dir is not None and d.config is not None:
        raise err("data.config", "set either data.dir or data.config, not both")
    if d.validation_split > 0 and d.validation_dir is not None:
        raise err("data.validation_dir", "set either data.validation_dir or data.validation_split, not both")
    if d.dir is None and d.config is None:
        raise err("data.dir", "required (or data.config): the parent folder of 'N_trigger class' image folders")
    if t.min_timestep >= t.max_timestep:
        raise err("training.min_timestep", f"must be < training.max_timestep ({t.max_timestep}), got {t.min_timestep}")
    if d.min_bucket_reso > d.max_bucket_reso:
        raise err("data.min_bucket_reso",
                   f"must be ≤ data.max_bucket_reso ({d.max_bucket_reso}), got {d.min_bucket_reso}")
    from lorakit.config import families

    step = families.bucket_step(cfg.model.family)
    if d.bucket_reso_steps % step:
        raise err("data.bucket_reso_steps",
                   f"must be a multiple of {step} for {cfg.model.family} (bucket sides must divide evenly through the "
                   f"VAE's and the model's down-sampling), got {d.bucket_reso_steps}")
    _check_bucket_range(d)
    multiple = families.sample_multiple(cfg.model.family)
    for key in ("width", "height"):
        side = getattr(cfg.sample, key)
        if side is not None and side % multiple:
            raise err(f"sample.{key}", f"must be a multiple of {multiple} for {cfg.model.family} (the sampler's latent "
                      f"grid), got {side}; use {max(multiple, round(side / multiple) * multiple)}")
    if not cfg.save.name.strip() or any(c in cfg.save.name for c in '/\\:\x00') or cfg.save.name in (".", ".."):
        raise err("save.name", f"must be a plain file name (no / \\ or :), got {show(cfg.save.name)}")
    if not _DEVICE_RE.match(t.device):
        raise err("training.device", f"must be auto, cpu, cuda or cuda:N, got {show(t.device)}")
    if not d.caption_extension.startswith(".") or len(d.caption_extension) < 2:
        raise err("data.caption_extension", f'must start with a dot, like ".txt", got {show(d.caption_extension)}')
    if m.fused_backward and t.gradient_accumulation > 1:
        raise err("memory.fused_backward", "cannot be used with training.gradient_accumulation > 1 (each "
                   f"gradient is applied as soon as it is computed), got {t.gradient_accumulation}")
    defaults = field_specs()
    if cfg.network.factor != defaults["network"]["factor"].default and cfg.model.family not in _VARIANT_FAMILIES:
        # familywalk: "only has an effect with network.type = lokr" sent the user to a type the family refuses
        raise err("network.factor", f"is LoKr's factor, and network.type = \"lokr\" is built for "
                  f"{' and '.join(_VARIANT_FAMILIES)}, not {cfg.model.family}; remove it")
    if cfg.network.text_encoder_lr is not None and not families.text_encoder_lora(cfg.model.family):
        raise err("network.text_encoder_lr", f"text-encoder LoRA is not offered for {cfg.model.family} (it trains its "
                  "denoiser only); remove it")
    for key, needs, active in _ONLY_WITH:
        section, name = key.split(".")
        if _value(cfg, key) != defaults[section][name].default and not active(cfg):
            raise err(key, f"only has an effect with {needs}; remove it or set that too")
    if cfg.network.train_text_encoder and not families.text_encoder_lora(cfg.model.family):
        # familywalk: said at load (the web UI form, plan, sweeps), not only when a run starts
        raise err("network.train_text_encoder", f"text-encoder LoRA is not offered for {cfg.model.family} (it trains "
                  "its denoiser only); set it to false")
    _check_text_encoder_cache(cfg, explicit, notes)
    _check_training_options(cfg, explicit)


def _check_bucket_range(d: Any) -> None:
    """With buckets (and upscaling) the resolution's square bucket must lie between min_bucket_reso and
    max_bucket_reso; said here, not after the dataset scan (a dataset TOML's own values are checked at its scan)."""
    if d.config is not None or not d.enable_bucket or d.bucket_no_upscale:
        return
    side = square_bucket_side(resolution_wh(d.resolution), d.bucket_reso_steps)
    res = show(d.resolution)
    if side < d.min_bucket_reso:
        raise err("data.resolution", f"{res} (square bucket {side}) is smaller than data.min_bucket_reso "
                  f"({d.min_bucket_reso}); set data.min_bucket_reso to at most {side}, or raise data.resolution")
    if side > d.max_bucket_reso:
        raise err("data.resolution", f"{res} (square bucket {side}) is larger than data.max_bucket_reso "
                  f"({d.max_bucket_reso}); set data.max_bucket_reso to at least {side}, or lower data.resolution")


def _check_training_options(cfg: Config, explicit: set[str]) -> None:
    """Issue 23: epochs or steps, never both set by the user (a preset's max_steps / every_n_steps give way);
    schedule-free AdamW replaces the lr schedule, so only warmup goes with it."""
    _check_variant(cfg, explicit)
    if cfg.network.type == "locon" and not cfg.network.conv_rank:
        from lorakit.config import families

        conv = families.applies_to("network.conv_rank")
        if cfg.model.family not in conv:  # a transformer family: no 3x3 convolutions to train (familywalk)
            raise err("network.type", f"\"locon\" trains 3x3 convolutions, which {cfg.model.family} has none of "
                      f"(LoCon is offered for {', '.join(conv)}); use \"lora\"")
        raise err("network.type", "\"locon\" trains the 3x3 convolutions too: set network.conv_rank, or use \"lora\"")
    if cfg.data.max_token_length not in (75, 150, 225):
        raise err("data.max_token_length", f"must be 75, 150 or 225 (kohya's chunk sizes), got {cfg.data.max_token_length}")
    if cfg.data.alpha_mask and cfg.data.mask_dir:
        raise err("data.mask_dir", "set either data.alpha_mask or data.mask_dir, not both (one mask per image)")
    if cfg.optimizer.name == "adamw_schedulefree" and cfg.optimizer.scheduler != "constant":
        raise err("optimizer.scheduler", f"{show(cfg.optimizer.scheduler)} with adamw_schedulefree: schedule-free "
                  "AdamW needs no decay (that is its point); use \"constant\" (optimizer.warmup_steps still applies)")
    if cfg.training.max_epochs is not None and "training.max_steps" in explicit:
        raise err("training.max_epochs", "set either training.max_epochs or training.max_steps, not both "
                  "(remove one)")
    if cfg.save.every_n_epochs and "save.every_n_steps" in explicit:
        raise err("save.every_n_epochs", "set either save.every_n_epochs or save.every_n_steps, not both "
                  "(remove one)")


_VARIANT_FAMILIES = ("sdxl", "sd15")  # where LoHa / LoKr / DoRA are built (their kohya/LyCORIS names)


def _check_variant(cfg: Config, explicit: set[str]) -> None:
    """Issue 23: LoHa/LoKr/DoRA (lorakit.lora.variants) where they are built, and what they cannot go with."""
    n, m = cfg.network, cfg.memory
    if n.factor == 0:
        raise err("network.factor", "must be -1 (near the square root) or a positive factor, got 0")
    if n.type not in ("loha", "lokr", "dora"):
        return
    kind = show(n.type)
    if cfg.model.family not in _VARIANT_FAMILIES:
        raise err("network.type", f"{kind} is built for sdxl and sd15 (kohya/LyCORIS names); {cfg.model.family} "
                  "trains \"lora\" only for now")
    if cfg.save.format != "kohya":
        raise err("save.format", f"{show(cfg.save.format)} with network.type = {kind}: diffusers loads no "
                  "LoHa/LoKr for SDXL/SD 1.5 and drops DoRA's dora_scale; use \"kohya\" (the LyCORIS layout "
                  "ComfyUI, Forge and A1111 read)")
    if n.weights:
        raise err("network.weights", f"continuing from a LoRA file is built for \"lora\" runs; with network.type "
                  f"= {kind} remove it (resume a {n.type} run with --resume)")
    if n.dropout and n.type != "dora":
        raise err("network.dropout", f"peft's {n.type} has no input dropout; set it to 0 with network.type = {kind}")
    for key, on in (("memory.fp8_base", m.fp8_base), ("memory.fp8_compute", m.fp8_compute),
                    ("memory.compile", m.compile), ("memory.cuda_graphs", m.cuda_graphs)):
        if on:
            raise err(key, f"is not built for network.type = {kind} (its layers were never run that way here); "
                      "set it to false")


def _check_text_encoder_cache(cfg: Config, explicit: set[str], notes: list[str]) -> None:
    d, n = cfg.data, cfg.network
    reasons = [name for name, on in (("data.shuffle_caption", d.shuffle_caption),
                                     ("data.caption_dropout_rate", d.caption_dropout_rate > 0),
                                     ("data.caption_tag_dropout_rate", d.caption_tag_dropout_rate > 0),
                                     ("network.train_text_encoder", n.train_text_encoder)) if on]
    if not reasons or not cfg.memory.cache_text_encoder_outputs:
        return
    why = f"{', '.join(reasons)} make{'s' if len(reasons) == 1 else ''} the text-encoder outputs change every step"
    if "memory.cache_text_encoder_outputs" in explicit:
        raise err("memory.cache_text_encoder_outputs", f"cannot be true: {why}; set it to false")
    cfg.memory.cache_text_encoder_outputs = False
    notes.append(f"memory.cache_text_encoder_outputs: turned off because {why} "
                 "(text encoders stay loaded during training)")
