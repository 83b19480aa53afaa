"""The schema as the loader sees it: one :class:`FieldSpec` per field, read once from the dataclasses of
:mod:`lorakit.config.schema`, plus the element rules the schema's types cannot say (used by validation and by
the JSON schema)."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from lorakit.config import schema
from lorakit.config.schema import SECTIONS, Config

# Element rules of list-valued fields (the schema only says "list").
LIST_RULES: dict[str, tuple[str, int | None]] = {
    "optimizer.betas": ("beta", 2),
    "sample.prompts": ("str", None),
}
# Allowed keys of table-valued fields, from their docs (None: any key).
TABLE_KEYS: dict[str, tuple[str, ...] | None] = {
    "network.module_ranks": ("img_attn", "txt_attn", "img_mlp", "txt_mlp", "img_mod", "txt_mod", "single",
                             "single_mod"),
}
INDICES_RE = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")


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


def as_int(value: Any) -> int | None:
    """An int from a TOML int or an integral float (``1500.0``); None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None
