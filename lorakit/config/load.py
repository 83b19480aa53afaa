"""Load, validate and write lorakit configs (TOML files, presets, dotted overrides).

One function, :func:`load_config`, turns the user's input into the typed :class:`~lorakit.config.schema.Config`.
Layers are merged per section, later winning: shipped preset < TOML file (or ``data=``) < overrides.
Everything the schema's field metadata says is enforced here, so the CLI, the web UI and the Python API
share one set of rules and one set of messages. Every problem is raised as :class:`ConfigError` whose
message starts with the key path (``network.rank: ...``), the file name, ``preset:`` or ``override "..."``;
no other exception escapes for any input, which the fuzz tests check.

Rules worth knowing (DESIGN.md principle 7: reject, never silently fix):

* Unknown sections and keys are errors with a did-you-mean suggestion.
* A field restricted to some families (``families=`` metadata) set to a non-default value for another
  family is an error, and so is a setting that only acts together with another one (for example
  ``network.text_encoder_lr`` without ``network.train_text_encoder``).
* ``memory.cache_text_encoder_outputs`` cannot work with caption shuffle/dropout or text-encoder training
  (the text-encoder outputs change every step). If the user set it to true in the file or an override
  together with one of those, that is an error. If it is only the default, the loader turns it off and
  records a note; :func:`cfg_notes` returns those notes for the CLI to print. This is the one case where a
  default adapts: the user asked for nothing contradictory.
* Relative paths (fields with ``kind="path"``) are resolved against the folder of the TOML file that set
  them (overrides and ``data=`` without a path: the current directory); ``~`` is expanded. A
  ``model.checkpoint`` of the form ``owner/name`` that is not an existing path is kept as a hub id.
  Relative path defaults (``save.dir = "output"``) are resolved the same way as if written in the file,
  so every path in the returned Config is absolute and a dumped config means the same thing anywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from lorakit.config import schema
from lorakit.config.schema import SECTIONS, Config
from lorakit.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
"""Shipped recipes: ``<family>/<purpose>.toml``."""

_NOTES_ATTR = "_lorakit_notes"
_EXPLICIT_ATTR = "_lorakit_explicit"

_HUB_ID_FIELDS = frozenset({"model.checkpoint"})
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Element rules of list-valued fields (the schema only says "list").
_LIST_RULES: dict[str, tuple[str, int | None]] = {
    "optimizer.betas": ("beta", 2),
    "sample.prompts": ("str", None),
}
# Allowed keys of table-valued fields, from their docs (None: any key).
_TABLE_KEYS: dict[str, tuple[str, ...] | None] = {
    "network.module_ranks": ("img_attn", "txt_attn", "img_mlp", "txt_mlp", "img_mod", "txt_mod", "single",
                             "single_mod"),
}
_INDICES_RE = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_PRESET_NAME_RE = re.compile(r"^[a-z0-9_]+/[a-z0-9_]+$")


# --------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class FieldSpec:
    """What the loader needs to know about one schema field (read once from the dataclasses)."""

    section: str
    name: str
    base: type  # bool, int, float, str, list, dict or object (Any)
    optional: bool
    default: Any
    meta: Mapping[str, Any]

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def doc(self) -> str:
        return str(self.meta.get("doc", ""))


def _base_type(tp: Any) -> tuple[type, bool]:
    """Map an annotation (``int``, ``Optional[str]``, ``Any``...) to (base type, optional)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return _base_type(rest[0])[0] if len(rest) == 1 else object, True
    if tp in (bool, int, float, str, list, dict):
        return tp, False
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        return origin, False
    return object, False


@lru_cache(maxsize=1)
def field_specs() -> dict[str, dict[str, FieldSpec]]:
    """Section name → field name → :class:`FieldSpec`, in schema order (used by jsonschema.py too)."""
    out: dict[str, dict[str, FieldSpec]] = {}
    cfg_hints = typing.get_type_hints(Config, vars(schema))
    for section in SECTIONS:
        cls = cfg_hints[section]
        hints = typing.get_type_hints(cls, vars(schema))
        specs: dict[str, FieldSpec] = {}
        for fld in dataclasses.fields(cls):
            base, optional = _base_type(hints[fld.name])
            if fld.default is not dataclasses.MISSING:
                default = fld.default
            elif fld.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = fld.default_factory()  # type: ignore[misc]
            else:
                default = None
            specs[fld.name] = FieldSpec(section, fld.name, base, optional or default is None, default,
                                        dict(fld.metadata))
        out[section] = specs
    return out


def section_doc(section: str) -> str:
    """The docstring of a section's dataclass (for forms and ``--help``)."""
    cls = typing.get_type_hints(Config, vars(schema))[section]
    return (cls.__doc__ or "").strip()


# ------------------------------------------------------------------------------------------ messages


def _seg(key: Any) -> str:
    """One key-path segment: bare when TOML allows it, else quoted (so messages stay on one line)."""
    s = str(key)
    return s if _BARE_KEY_RE.match(s) else _quote(s)


def _quote(s: str, limit: int = 80) -> str:
    """A double-quoted, escaped, one-line rendering of a string."""
    if len(s) > limit:
        s = s[:limit] + "…"
    out = []
    for ch in s:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _show(value: Any) -> str:
    """How a given value appears in an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:40] + "…"
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v) for v in value[:6]) + (", …" if len(value) > 6 else "") + "]"
        return text if len(text) <= 100 else text[:100] + "…]"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _num(x: float) -> str:
    return f"{x:g}"


def _suggest(word: str, options: Sequence[str]) -> str | None:
    hits = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not hits:
        lowered = {o.lower(): o for o in options}
        hits = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        hits = [lowered[h] for h in hits]
    return hits[0] if hits else None


def _err(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")


# ------------------------------------------------------------------------------------------ presets


def list_presets() -> list[str]:
    """Names of the shipped recipes, e.g. ``["flux1/character", ..., "sdxl/style"]``."""
    if not PRESET_DIR.is_dir():
        return []
    return sorted(f"{p.parent.name}/{p.stem}" for p in PRESET_DIR.glob("*/*.toml"))


def preset_path(name: str) -> Path:
    """The file of a shipped preset; ConfigError naming the available ones if there is none."""
    if not isinstance(name, str):
        raise _err("preset", f'must be a string like "sdxl/character", got {_show(name)}')
    available = list_presets()
    if not _PRESET_NAME_RE.match(name) or name not in available:
        hint = _suggest(name, available)
        extra = f"; did you mean {hint}?" if hint else ""
        raise _err("preset", f"unknown preset {_quote(name)}; available: {', '.join(available)}{extra}")
    family, purpose = name.split("/")
    return PRESET_DIR / family / f"{purpose}.toml"


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc).replace("\n", " ")
        raise ConfigError(f"{label}: invalid TOML: {msg}") from None
    except RecursionError:
        raise ConfigError(f"{label}: invalid TOML: nested too deeply") from None


# ---------------------------------------------------------------------------------------- overrides


def _parse_override_value(text: str, spec: FieldSpec | None) -> Any:
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
        shown = _quote(item) if isinstance(item, str) else _show(item)
        raise ConfigError(f"override {shown}: expected section.key=value")
    key_text, value_text = item.split("=", 1)
    parts = [p.strip() for p in key_text.strip().split(".")]
    if key_text.strip() == "preset":
        return ["preset"], value_text.strip().strip("\"'")
    if len(parts) not in (2, 3) or not all(_BARE_KEY_RE.match(p) for p in parts):
        raise ConfigError(f"override {_quote(item)}: expected section.key=value")
    spec = field_specs().get(parts[0], {}).get(parts[1]) if len(parts) == 2 else None
    return parts, _parse_override_value(value_text, spec)


# ------------------------------------------------------------------------------------ layer checks


def _check_layer(layer: Any, origin: str) -> dict[str, dict[str, Any]]:
    """Check a layer's shape and names (unknown sections/keys are errors); drop ``None`` values."""
    if not isinstance(layer, dict):
        raise ConfigError(f"{origin}: the config must be a table of sections, got {_show(layer)}")
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
            raise _err(section, f"must be a table ([{section}]), got {_show(body)}")
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
        return _err(_seg(text), f"not a section; kohya's {text} is {kohya} in lorakit (under [{kohya.split('.')[0]}])")
    if owners:
        return _err(_seg(text), f"not a section; did you mean {owners[0]}.{text} (under [{owners[0]}])?")
    hint = _suggest(text, list(SECTIONS) + ["preset"])
    extra = f"; did you mean {hint}?" if hint else f"; sections are {', '.join(SECTIONS)}"
    return _err(_seg(text), f"unknown section{extra}")


def _unknown_key(section: str, key: Any) -> ConfigError:
    specs = field_specs()
    text = str(key)
    kohya = _kohya_name(text)
    if kohya:
        return _err(f"{section}.{_seg(text)}", f"unknown key; kohya's {text} is {kohya} in lorakit")
    hint = _suggest(text, list(specs[section]))
    if hint:
        return _err(f"{section}.{_seg(text)}", f"unknown key; did you mean {section}.{hint}?")
    owners = [s for s in SECTIONS if text in specs[s]]
    if owners:
        return _err(f"{section}.{_seg(text)}", f"unknown key; did you mean {owners[0]}.{text}?")
    return _err(f"{section}.{_seg(text)}", f"unknown key in [{section}]; keys are {', '.join(specs[section])}")


def _kohya_name(name: str) -> str | None:
    """The lorakit key of a kohya option name that differs from lorakit's (for friendlier errors)."""
    from lorakit.config.kohya_import import KOHYA_KEYS  # late: kohya_import imports this module

    target = KOHYA_KEYS.get(name)
    return target[0] if target and target[0].split(".")[1] != name else None


def _resolve_paths(layer: dict[str, Any], base: Path) -> None:
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


# ------------------------------------------------------------------------------------------- values


def _describe(spec: FieldSpec, kind_word: str) -> str:
    """``"an integer ≥ 1"`` / ``"a number > 0 and < 1"`` from the field's bounds."""
    parts = []
    for meta_key, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if meta_key in spec.meta:
            parts.append(f"{sym} {_num(spec.meta[meta_key])}")
    return kind_word + (" " + " and ".join(parts) if parts else "")


def _in_bounds(spec: FieldSpec, x: float) -> bool:
    m = spec.meta
    return not (("ge" in m and x < m["ge"]) or ("gt" in m and x <= m["gt"]) or ("le" in m and x > m["le"])
                or ("lt" in m and x >= m["lt"]))


def _as_int(value: Any) -> int | None:
    """An int from a TOML int or an integral float (``1500.0``); None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


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
            raise _err(key, f"must be true or false, got {_show(value)}")
        return value
    if spec.base is int:
        n = _as_int(value)
        if n is None or not _in_bounds(spec, n):
            raise _err(key, f"must be {_describe(spec, 'an integer')}, got {_show(value)}")
        return n
    if spec.base is float:
        x = _as_float(value)
        if x is None or not _in_bounds(spec, x):
            raise _err(key, f"must be {_describe(spec, 'a number')}, got {_show(value)}")
        return x
    if spec.base is str:
        return _check_str(spec, value)
    if isinstance(value, (dict, list, tuple)) or not isinstance(value, (str, int, float, bool)):
        raise _err(key, f"must be a string, number or boolean, got {_show(value)}")
    return value


def _check_str(spec: FieldSpec, value: Any) -> str:
    key = spec.key
    choices = spec.meta.get("choices")
    if not isinstance(value, str) or (choices and value not in choices):
        if choices:
            hint = _suggest(value, choices) if isinstance(value, str) else None
            extra = f"; did you mean {hint}?" if hint else ""
            raise _err(key, f"must be one of {', '.join(choices)}, got {_show(value)}{extra}")
        what = "a path (string)" if spec.meta.get("kind") == "path" else "a string"
        raise _err(key, f"must be {what}, got {_show(value)}")
    if spec.meta.get("kind") == "path" and not value.strip():
        raise _err(key, "must be a path, got an empty string; remove the key to use the default")
    if "\x00" in value:
        raise _err(key, f"must not contain NUL characters, got {_show(value)}")
    return value


def _check_resolution(spec: FieldSpec, value: Any) -> int | list[int]:
    what = "an integer ≥ 64 (square side) or [width, height] with integers ≥ 64"
    if isinstance(value, (list, tuple)):
        sides = [_as_int(v) for v in value]
        if len(sides) == 2 and all(s is not None and 64 <= s <= 16384 for s in sides):
            return [int(s) for s in sides]  # type: ignore[arg-type]
        raise _err(spec.key, f"must be {what}, got {_show(value)}")
    n = _as_int(value)
    if n is None or not 64 <= n <= 16384:
        raise _err(spec.key, f"must be {what}, got {_show(value)}")
    return n


def _check_indices(spec: FieldSpec, value: Any) -> str:
    example = 'a block-index list such as "0,2-5"'
    if not isinstance(value, str) or not _INDICES_RE.match(value):
        raise _err(spec.key, f"must be {example}, got {_show(value)}")
    for part in value.split(","):
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-"))
            if lo > hi:
                raise _err(spec.key, f"range {part.strip()} runs backwards; write it low-high, got {_show(value)}")
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
        raise _err(spec.key, f"must be a table of name = integer ≥ 0, got {_show(value)}")
    allowed = _TABLE_KEYS.get(spec.key)
    out: dict[str, int] = {}
    for name, entry in value.items():
        sub = f"{spec.key}.{_seg(name)}"
        if not isinstance(name, str) or (allowed is not None and name not in allowed):
            hint = _suggest(str(name), allowed or ())
            extra = f"did you mean {spec.key}.{hint}?" if hint else f"names are {', '.join(allowed or ())}"
            raise _err(sub, f"unknown name; {extra}")
        n = _as_int(entry)
        if n is None or n < 0:
            raise _err(sub, f"must be an integer ≥ 0, got {_show(entry)}")
        out[name] = n
    return out


def _check_list(spec: FieldSpec, value: Any) -> list[Any]:
    rule, length = _LIST_RULES.get(spec.key, ("scalar", None))
    if rule == "beta":
        what = "a list of two numbers ≥ 0 and < 1, e.g. [0.9, 0.999]"
        if isinstance(value, (list, tuple)) and len(value) == 2:
            nums = [_as_float(v) for v in value]
            if all(x is not None and 0.0 <= x < 1.0 for x in nums):
                return [float(x) for x in nums]  # type: ignore[arg-type]
        raise _err(spec.key, f"must be {what}, got {_show(value)}")
    if rule == "str":
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise _err(spec.key, f"must be a list of strings, got {_show(value)}")
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        if length is None or len(value) == length:
            return list(value)
    raise _err(spec.key, f"must be a list of strings or numbers, got {_show(value)}")


# ------------------------------------------------------------------------------------------ merging


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """Per-section merge: a later layer replaces whole values key by key."""
    for section, body in src.items():
        if section == "preset":
            dst["preset"] = body
        else:
            dst.setdefault(section, {}).update(copy.deepcopy(body))


def _apply_overrides(merged: dict[str, Any], overrides: Sequence[str], explicit: set[str]) -> None:
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise ConfigError(f"override {_show(overrides)}: expected a list of section.key=value strings")
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
                raise ConfigError(f"override {_quote(item)}: {spec.key} is not a table; use {spec.key}=value")
            table = body.get(key)
            table = dict(table) if isinstance(table, dict) else {}
            table[parts[2]] = value
            value = table
        elif spec.meta.get("kind") == "path" and isinstance(value, str) and value.strip():
            value = _resolve_one(spec.key, value, cwd)
        body[key] = value
        explicit.add(spec.key)


# ---------------------------------------------------------------------------------------- the loader


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (), *,
                data: Mapping[str, Any] | None = None) -> Config:
    """Read, merge and validate a config; return the typed :class:`Config`.

    ``path`` is a TOML file; ``data`` (a dict shaped like the TOML, e.g. from the web UI) replaces the
    file's contents, with ``path`` (if given) still used to resolve relative paths and name the source.
    ``overrides`` are ``section.key=value`` strings (``preset=sdxl/style`` picks the preset). Raises
    :class:`ConfigError` for any problem.
    """
    try:
        return _load(path, overrides, data)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"{path or 'config'}: nested too deeply") from None


def _load(path: Any, overrides: Sequence[str], data: Mapping[str, Any] | None) -> Config:
    label = str(path) if path is not None else "config"
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"config: path must be a file name, got {_show(path)}")
    if data is not None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{label}: data must be a table of sections, got {_show(data)}")
        raw: Any = copy.deepcopy(dict(data))
    elif path is not None:
        raw = _read_toml(Path(path), label)
    else:
        raw = {}
    base = Path(os.path.abspath(os.path.dirname(os.fspath(path)))) if path is not None else Path.cwd()
    user = _check_layer(raw, label)
    _resolve_paths(user, base)
    explicit = {f"{s}.{k}" for s, body in user.items() if s != "preset" for k in body}

    preset_name = user.get("preset")
    for item in overrides if isinstance(overrides, Sequence) and not isinstance(overrides, str) else ():
        parts, value = parse_override(item)
        if parts == ["preset"]:
            preset_name = value
    merged: dict[str, Any] = {}
    preset_layer: dict[str, Any] = {}
    if preset_name is not None:
        ppath = preset_path(preset_name)
        preset_layer = _check_layer(_read_toml(ppath, f"preset {preset_name}"), f"preset {preset_name}")
        preset_layer.pop("preset", None)
        _resolve_paths(preset_layer, ppath.parent)
        _merge(merged, preset_layer)
    _merge(merged, user)
    merged.pop("preset", None)
    _apply_overrides(merged, overrides, explicit)
    _resolve_default_paths(merged, base)

    cfg = _build(merged, preset_name)
    notes: list[str] = []
    _check_required(cfg)
    _check_preset_family(cfg, preset_layer, preset_name)
    _check_families(cfg)
    _check_cross(cfg, explicit, notes)
    setattr(cfg, _NOTES_ATTR, notes)
    setattr(cfg, _EXPLICIT_ATTR, frozenset(explicit))
    return cfg


def _resolve_default_paths(merged: dict[str, Any], base: Path) -> None:
    """Relative path defaults (``save.dir = "output"``) count as written in the file: every path is absolute."""
    for section, specs in field_specs().items():
        for name, spec in specs.items():
            if spec.meta.get("kind") == "path" and isinstance(spec.default, str) and name not in merged.get(section, {}):
                merged.setdefault(section, {})[name] = _resolve_one(spec.key, spec.default, base)


def _build(merged: dict[str, Any], preset_name: str | None) -> Config:
    """Coerce every given value and construct the nested dataclasses (model.family first)."""
    specs = field_specs()
    hints = typing.get_type_hints(Config, vars(schema))
    sections: dict[str, Any] = {}
    for section in SECTIONS:
        body = merged.get(section, {})
        kwargs = {name: _check_value(specs[section][name], body[name]) for name in specs[section] if name in body}
        sections[section] = hints[section](**kwargs)
    return Config(preset=preset_name, **sections)


def _check_required(cfg: Config) -> None:
    for section, specs in field_specs().items():
        for name, spec in specs.items():
            if spec.meta.get("required") and getattr(getattr(cfg, section), name) is None:
                raise _err(spec.key, f"required ({spec.doc.rstrip('.')})")


def _check_preset_family(cfg: Config, preset_layer: dict[str, Any], preset_name: str | None) -> None:
    pfam = preset_layer.get("model", {}).get("family")
    if pfam is not None and pfam != cfg.model.family:
        raise _err("model.family", f"preset {preset_name} is for {pfam}, got {cfg.model.family}; use a "
                   f"{cfg.model.family}/... preset ({', '.join(p for p in list_presets() if p.startswith(cfg.model.family + '/'))})")


def _check_families(cfg: Config) -> None:
    family = cfg.model.family
    for section, specs in field_specs().items():
        for name, spec in specs.items():
            fams = spec.meta.get("families")
            if not fams or family in fams:
                continue
            value = getattr(getattr(cfg, section), name)
            if value is False and spec.default is None:  # an explicit "never" of an unset-means-auto switch
                continue
            if value != spec.default:
                raise _err(spec.key, f"applies only to {', '.join(fams)}, not {family}; remove it")


# (field, "only acts with" description, predicate on cfg) for settings that would otherwise do nothing.
_ONLY_WITH: tuple[tuple[str, str, typing.Callable[[Config], bool]], ...] = (
    ("network.text_encoder_lr", "network.train_text_encoder = true", lambda c: c.network.train_text_encoder),
    ("network.conv_alpha", "network.conv_rank > 0", lambda c: c.network.conv_rank > 0),
    ("optimizer.min_lr_ratio", 'optimizer.scheduler = "cosine_with_min_lr"',
     lambda c: c.optimizer.scheduler == "cosine_with_min_lr"),
    ("training.huber_c", 'training.loss = "huber"', lambda c: c.training.loss == "huber"),
    ("training.discrete_flow_shift", 'training.timestep_sampling = "shift"',
     lambda c: c.training.timestep_sampling == "shift"),
    ("training.sigmoid_scale", 'training.timestep_sampling = "sigmoid", "shift" or "flux_shift"',
     lambda c: c.training.timestep_sampling in ("sigmoid", "shift", "flux_shift")),
    ("training.logit_mean", 'training.timestep_sampling = "logit_normal"',
     lambda c: c.training.timestep_sampling == "logit_normal"),
    ("training.logit_std", 'training.timestep_sampling = "logit_normal"',
     lambda c: c.training.timestep_sampling == "logit_normal"),
    ("data.prior_loss_weight", "data.reg_dir", lambda c: c.data.reg_dir is not None),
)


def _value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _check_cross(cfg: Config, explicit: set[str], notes: list[str]) -> None:
    """Rules that involve more than one field (after the family rules, so messages stay specific)."""
    d, t, m = cfg.data, cfg.training, cfg.memory
    if d.dir is not None and d.config is not None:
        raise _err("data.config", "set either data.dir or data.config, not both")
    if d.dir is None and d.config is None:
        raise _err("data.dir", "required (or data.config): the parent folder of 'N_trigger class' image folders")
    if t.min_timestep >= t.max_timestep:
        raise _err("training.min_timestep", f"must be < training.max_timestep ({t.max_timestep}), got {t.min_timestep}")
    if d.min_bucket_reso > d.max_bucket_reso:
        raise _err("data.min_bucket_reso",
                   f"must be ≤ data.max_bucket_reso ({d.max_bucket_reso}), got {d.min_bucket_reso}")
    if cfg.model.family in ("sdxl", "flux1") and d.bucket_reso_steps % 32:
        raise _err("data.bucket_reso_steps",
                   f"must be a multiple of 32 for {cfg.model.family} (bucket sides must divide evenly through the "
                   f"VAE's 8x and the model's further 4x down-sampling), got {d.bucket_reso_steps}")
    if cfg.model.family == "flux2" and d.bucket_reso_steps % 16:
        raise _err("data.bucket_reso_steps", f"must be a multiple of 16 for flux2 (the AE's 8x and the 2x2 latent "
                   f"patches), got {d.bucket_reso_steps}")
    if not cfg.save.name.strip() or any(c in cfg.save.name for c in '/\\:\x00') or cfg.save.name in (".", ".."):
        raise _err("save.name", f"must be a plain file name (no / \\ or :), got {_show(cfg.save.name)}")
    if not _DEVICE_RE.match(t.device):
        raise _err("training.device", f"must be auto, cpu, cuda or cuda:N, got {_show(t.device)}")
    if not d.caption_extension.startswith(".") or len(d.caption_extension) < 2:
        raise _err("data.caption_extension", f'must start with a dot, like ".txt", got {_show(d.caption_extension)}')
    if m.fused_backward and t.gradient_accumulation > 1:
        raise _err("memory.fused_backward", "cannot be used with training.gradient_accumulation > 1 (each "
                   f"gradient is applied as soon as it is computed), got {t.gradient_accumulation}")
    defaults = field_specs()
    for key, needs, active in _ONLY_WITH:
        section, name = key.split(".")
        if _value(cfg, key) != defaults[section][name].default and not active(cfg):
            raise _err(key, f"only has an effect with {needs}; remove it or set that too")
    _check_text_encoder_cache(cfg, explicit, notes)


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
        raise _err("memory.cache_text_encoder_outputs", f"cannot be true: {why}; set it to false")
    cfg.memory.cache_text_encoder_outputs = False
    notes.append(f"memory.cache_text_encoder_outputs: turned off because {why} "
                 "(text encoders stay loaded during training)")


def cfg_notes(cfg: Config) -> list[str]:
    """Human notes about defaults the loader adapted (the CLI prints them before training)."""
    return list(getattr(cfg, _NOTES_ATTR, []))


def explicit_keys(cfg: Config) -> frozenset[str]:
    """``section.key`` names the user set in the file, ``data=`` or overrides (not the preset)."""
    return getattr(cfg, _EXPLICIT_ATTR, frozenset())


# ------------------------------------------------------------------------------------------- writing


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A plain, TOML-able dict of the config (None values dropped; ``preset`` kept for the record)."""
    out: dict[str, Any] = {}
    if cfg.preset is not None:
        out["preset"] = cfg.preset
    for section in SECTIONS:
        body = dataclasses.asdict(getattr(cfg, section))
        out[section] = {k: copy.deepcopy(v) for k, v in body.items() if v is not None}
    return out


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.match(key) else _toml_str(key)


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """One TOML value: strings, ints, floats, bools, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _drop_other_family_defaults(data: dict[str, Any], family: str) -> dict[str, Any]:
    """Leave out fields that only apply to other families while they hold their defaults (they cannot hold
    anything else: the loader rejects that), so a dumped SDXL config shows no FLUX knobs and vice versa."""
    specs = field_specs()
    out: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, dict) or section not in specs:
            out[section] = body
            continue
        out[section] = {k: v for k, v in body.items()
                        if not (k in specs[section] and specs[section][k].meta.get("families")
                                and family not in specs[section][k].meta["families"]
                                and v == specs[section][k].default)}
    return out


def dump_toml(cfg: Config | Mapping[str, Any]) -> str:
    """The config as TOML text that :func:`load_config` reads back to an equal Config."""
    data = config_to_dict(cfg) if isinstance(cfg, Config) else dict(cfg)
    if isinstance(cfg, Config) and cfg.model.family:
        data = _drop_other_family_defaults(data, cfg.model.family)
    lines: list[str] = []
    for key, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{_toml_key(key)} = {toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            if lines:
                lines.append("")
            lines.append(f"[{_toml_key(key)}]")
            lines.extend(f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items() if v is not None)
    return "\n".join(lines) + "\n"
