"""Load, validate and write lorakit configs (TOML files, presets, dotted overrides).

One function, :func:`load_config`, turns the user's input into the typed :class:`~lorakit.config.schema.Config`.
Layers are merged per section, later winning: shipped preset < TOML file (or ``data=``) < overrides.
Everything the schema's field metadata says is enforced here, so the CLI, the web UI and the Python API
share one set of rules and one set of messages. Every problem is raised as :class:`ConfigError` whose
message starts with the key path (``network.rank: ...``), the file name, ``preset:`` or ``override "..."``;
no other exception escapes for any input, which the fuzz tests check.

Rules worth knowing (DESIGN.md principle 7: reject, never silently fix):

* Unknown sections and keys are errors with a did-you-mean suggestion.
* A family-only field (``family_only`` metadata; the families' specs list the keys they honour) set to a non-default value for another
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
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from lorakit.config.fields import INDICES_RE, LIST_RULES, TABLE_KEYS, FieldSpec, field_specs, section_doc
from lorakit.config.messages import show
from lorakit.config.schema import Config
from lorakit.config.toml_io import (PRESET_DIR, config_to_dict, dump_toml, list_presets, preset_path, read_toml,
                                    toml_value)
from lorakit.config.validate import (apply_overrides, build_config, check_cross, check_families, check_layer,
                                     check_preset_family, check_required, merge_layer, parse_indices, parse_override,
                                     parse_override_value, resolve_default_paths, resolve_paths)
from lorakit.errors import ConfigError

# This module orchestrates; the pieces live in fields (schema facts), messages, toml_io (reading, presets,
# writing) and validate. The names below stay importable from here, the underscore ones under the spellings
# they had when this module was the whole loader.
__all__ = ["FieldSpec", "PRESET_DIR", "cfg_notes", "config_to_dict", "dump_toml", "explicit_keys", "field_specs",
           "list_presets", "load_config", "parse_indices", "parse_override", "preset_path", "section_doc",
           "toml_value"]
_INDICES_RE, _LIST_RULES, _TABLE_KEYS = INDICES_RE, LIST_RULES, TABLE_KEYS
_read_toml, _parse_override_value = read_toml, parse_override_value

_NOTES_ATTR = "_lorakit_notes"
_EXPLICIT_ATTR = "_lorakit_explicit"


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
        raise ConfigError(f"config: path must be a file name, got {show(path)}")
    if data is not None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{label}: data must be a table of sections, got {show(data)}")
        raw: Any = copy.deepcopy(dict(data))
    elif path is not None:
        raw = read_toml(Path(path), label)
    else:
        raw = {}
    base = Path(os.path.abspath(os.path.dirname(os.fspath(path)))) if path is not None else Path.cwd()
    user = check_layer(raw, label)
    resolve_paths(user, base)
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
        preset_layer = check_layer(read_toml(ppath, f"preset {preset_name}"), f"preset {preset_name}")
        preset_layer.pop("preset", None)
        resolve_paths(preset_layer, ppath.parent)
        merge_layer(merged, preset_layer)
    merge_layer(merged, user)
    merged.pop("preset", None)
    apply_overrides(merged, overrides, explicit)
    resolve_default_paths(merged, base)
    _family_resolution(merged)

    cfg = build_config(merged, preset_name)
    notes: list[str] = []
    check_required(cfg)
    check_preset_family(cfg, preset_layer, preset_name)
    check_families(cfg)
    check_cross(cfg, explicit, notes)
    setattr(cfg, _NOTES_ATTR, notes)
    setattr(cfg, _EXPLICIT_ATTR, frozenset(explicit))
    return cfg


def _family_resolution(merged: dict[str, Any]) -> None:
    """``data.resolution`` unset by the config and its preset: the family's own training size, not the schema's
    1024 (an SD 1.5 run trains at 512)."""
    from lorakit.config import families

    family = (merged.get("model") or {}).get("family")
    data = merged.setdefault("data", {})
    if isinstance(family, str) and isinstance(data, dict) and "resolution" not in data:
        size = families.default_resolution(family)
        if size is not None:
            data["resolution"] = size


def cfg_notes(cfg: Config) -> list[str]:
    """Human notes about defaults the loader adapted (the CLI prints them before training)."""
    return list(getattr(cfg, _NOTES_ATTR, []))


def explicit_keys(cfg: Config) -> frozenset[str]:
    """``section.key`` names the user set in the file, ``data=`` or overrides (not the preset)."""
    return getattr(cfg, _EXPLICIT_ATTR, frozenset())
