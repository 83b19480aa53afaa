"""A JSON Schema (draft 2020-12) of lorakit's Config, generated from the schema's field metadata.

The web UI builds its forms from this, so it must say everything a form needs: the type, a description
(the field's ``doc``), the default, allowed values, bounds, and which model families a field applies to
(``x-families``). Rules that span fields (data.dir xor data.config) are expressed where JSON Schema can
(``oneOf``); the rest stay in :mod:`lorakit.config.load`, which is the authority.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lorakit.config import families
from lorakit.config.fields import INDICES_RE, LIST_RULES, TABLE_KEYS, FieldSpec, field_specs, section_doc
from lorakit.config.schema import SECTIONS, Config
from lorakit.config.toml_io import list_presets

_SCALAR = {bool: "boolean", int: "integer", float: "number", str: "string"}
_BOUND_KEYS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
INDICES_PATTERN = INDICES_RE.pattern


def _bounds(spec: FieldSpec) -> dict[str, Any]:
    return {_BOUND_KEYS[k]: spec.meta[k] for k in ("ge", "gt", "le", "lt") if k in spec.meta}


def field_schema(spec: FieldSpec) -> dict[str, Any]:
    """The JSON Schema of one field."""
    kind = spec.meta.get("kind")
    out: dict[str, Any]
    if kind == "resolution":
        side = {"type": "integer", "minimum": 64, "maximum": 16384}
        out = {"oneOf": [side, {"type": "array", "items": side, "minItems": 2, "maxItems": 2}]}
    elif kind == "indices":
        out = {"type": "string", "pattern": INDICES_PATTERN}
    elif kind == "table" or spec.base is dict:
        out = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
        names = TABLE_KEYS.get(spec.key) or families.table_names(spec.key)
        if names:
            out["propertyNames"] = {"enum": list(names)}
    elif spec.base is list:
        rule, length = LIST_RULES.get(spec.key, ("scalar", None))
        if rule == "beta":
            out = {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                   "minItems": 2, "maxItems": 2}
        elif rule == "str":
            out = {"type": "array", "items": {"type": "string"}}
        else:
            out = {"type": "array", "items": {"type": ["string", "number", "boolean"]}}
            if length is not None:
                out.update(minItems=length, maxItems=length)
    elif spec.base in _SCALAR:
        out = {"type": _SCALAR[spec.base]}
        if spec.base in (int, float):
            out.update(_bounds(spec))
        if kind == "path":
            out["minLength"] = 1
            out["format"] = "path"
    else:
        out = {"type": ["string", "number", "boolean"]}
    if "choices" in spec.meta:
        out["enum"] = list(spec.meta["choices"])
    out["description"] = spec.doc
    if spec.default is not None:
        out["default"] = spec.default
    if spec.meta.get("family_only"):
        out["x-families"] = list(families.applies_to(spec.key))
    if spec.meta.get("kind") == "family":
        out["enum"] = list(families.installed())
    if kind:
        out["x-kind"] = kind
    return out


def section_schema(section: str) -> dict[str, Any]:
    """The JSON Schema of one ``[section]`` table."""
    specs = field_specs()[section]
    out: dict[str, Any] = {
        "type": "object",
        "description": section_doc(section),
        "properties": {name: field_schema(spec) for name, spec in specs.items()},
        "additionalProperties": False,
    }
    required = [name for name, spec in specs.items() if spec.meta.get("required")]
    if required:
        out["required"] = required
    if section == "data":
        out["oneOf"] = [{"required": ["dir"], "not": {"required": ["config"]}},
                        {"required": ["config"], "not": {"required": ["dir"]}}]
    return out


def json_schema() -> dict[str, Any]:
    """The whole Config as a JSON Schema document."""
    top_docs = _top_fields()
    props: dict[str, Any] = {
        "preset": {"type": "string", "enum": list_presets(), "description": top_docs["preset"]},
    }
    for section in SECTIONS:
        schema = section_schema(section)
        schema["title"] = top_docs.get(section, section)
        props[section] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://lorakit.dev/schema/config.json",
        "title": "lorakit config",
        "description": (Config.__doc__ or "").strip(),
        "type": "object",
        "properties": props,
        "required": [s for s in SECTIONS if "required" in props[s]] + ["data"],
        "additionalProperties": False,
    }


def _top_fields() -> dict[str, str]:
    return {f.name: str(f.metadata.get("doc", "")) for f in dataclasses.fields(Config)}
