"""TOML in and out: reading a config file (one line for any I/O, encoding or syntax problem), the shipped
presets, and writing a Config back as TOML that :func:`lorakit.config.load.load_config` reads to an equal Config.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from lorakit.config.fields import field_specs
from lorakit.config.messages import BARE_KEY_RE, err, quote, show, suggest
from lorakit.config.schema import SECTIONS, Config
from lorakit.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
"""Shipped recipes: ``<family>/<purpose>.toml``."""
_PRESET_NAME_RE = re.compile(r"^[a-z0-9_]+/[a-z0-9_]+$")


def list_presets() -> list[str]:
    """Names of the shipped recipes, e.g. ``["flux1/character", ..., "sdxl/style"]``."""
    if not PRESET_DIR.is_dir():
        return []
    return sorted(f"{p.parent.name}/{p.stem}" for p in PRESET_DIR.glob("*/*.toml"))


def preset_path(name: str) -> Path:
    """The file of a shipped preset; ConfigError naming the available ones if there is none."""
    if not isinstance(name, str):
        raise err("preset", f'must be a string like "sdxl/character", got {show(name)}')
    available = list_presets()
    if not _PRESET_NAME_RE.match(name) or name not in available:
        hint = suggest(name, available)
        extra = f"; did you mean {hint}?" if hint else ""
        raise err("preset", f"unknown preset {quote(name)}; available: {', '.join(available)}{extra}")
    family, purpose = name.split("/")
    return PRESET_DIR / family / f"{purpose}.toml"


def read_toml(path: Path, label: str) -> dict[str, Any]:
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
    return key if BARE_KEY_RE.match(key) else _toml_str(key)


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
    from lorakit.config import families

    specs = field_specs()
    out: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, dict) or section not in specs:
            out[section] = body
            continue
        out[section] = {k: v for k, v in body.items()
                        if not (k in specs[section] and specs[section][k].meta.get("family_only")
                                and family not in families.applies_to(specs[section][k].key)
                                and v == specs[section][k].default)}
    return out


def dump_toml(cfg: Config | Mapping[str, Any]) -> str:
    """The config as TOML text that :func:`load_config` reads back to an equal Config."""
    data = config_to_dict(cfg) if isinstance(cfg, Config) else dict(cfg)
    if isinstance(cfg, Config) and cfg.model.family:
        data = _drop_other_family_defaults(data, cfg.model.family)
    if isinstance(cfg, Config):  # an epoch count replaces the step count it becomes at the scan: write only the one
        if cfg.training.max_epochs is not None:
            data.get("training", {}).pop("max_steps", None)
        if cfg.save.every_n_epochs:
            data.get("save", {}).pop("every_n_steps", None)
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
