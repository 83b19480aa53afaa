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
# Allowed keys of table-valued fields whose names the config layer knows (None or absent: any key). The names of
# network.module_ranks belong to the families (ModelSpec.module_types; lorakit/config/families.py: table_names).
TABLE_KEYS: dict[str, tuple[str, ...] | None] = {}
INDICES_RE = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")

SEED_MAX = 2**32 - 1
"""Largest seed (kohya's range): every RNG lorakit feeds takes it, and seed + epoch stays far from overflow."""
STEPS_MAX = 10**8
"""Largest step count of any kind (years of training at 1 step/s)."""
# Upper bounds of the numeric keys whose schema gives none (and the lower bound of logit_mean): a huge value
# (a seed ≥ 2**64, 1e308 for a width or a rank) is refused with the key-naming line instead of failing deep in
# torch. Every int/float key is bounded on both sides (a test walks the schema); bounds are far above any
# sensible setting, so nothing that trains today is refused.
BOUNDS: dict[str, dict[str, float]] = {
    "data.prior_loss_weight": {"le": 1000.0}, "data.min_bucket_reso": {"le": 16384},
    "data.max_bucket_reso": {"le": 16384}, "data.bucket_reso_steps": {"le": 4096}, "data.keep_tokens": {"le": 1000},
    "network.rank": {"le": 4096}, "network.alpha": {"le": 65536.0}, "network.conv_rank": {"le": 4096},
    "network.conv_alpha": {"le": 65536.0}, "network.text_encoder_lr": {"le": 100.0},
    "optimizer.lr": {"le": 100.0}, "optimizer.weight_decay": {"le": 100.0}, "optimizer.eps": {"le": 1.0},
    "optimizer.warmup_steps": {"le": STEPS_MAX}, "optimizer.num_cycles": {"le": STEPS_MAX}, "optimizer.max_grad_norm": {"le": 1e6},
    "training.max_steps": {"le": STEPS_MAX}, "training.batch_size": {"le": 4096},
    "training.gradient_accumulation": {"le": 4096}, "training.seed": {"le": SEED_MAX},
    "training.noise_offset": {"le": 10.0}, "training.min_snr_gamma": {"le": 1000.0}, "training.huber_c": {"le": 1000.0},
    "training.sigmoid_scale": {"le": 100.0}, "training.logit_mean": {"ge": -100.0, "le": 100.0},
    "training.logit_std": {"le": 100.0}, "training.discrete_flow_shift": {"le": 1000.0},
    "training.guidance_scale": {"le": 100.0}, "training.stall_timeout": {"le": 1e7},
    "training.max_epochs": {"le": 100000}, "training.ip_noise_gamma": {"le": 10.0}, "save.every_n_epochs": {"le": 100000},
    "validation.every_n_steps": {"le": STEPS_MAX},
    "memory.vram_gb": {"le": 65536.0}, "sample.every_n_steps": {"le": STEPS_MAX}, "sample.steps": {"le": 1000},
    "sample.cfg_scale": {"le": 100.0}, "sample.guidance": {"le": 100.0}, "sample.width": {"le": 16384},
    "sample.height": {"le": 16384}, "sample.seed": {"le": SEED_MAX}, "save.every_n_steps": {"le": STEPS_MAX},
    "save.keep_last": {"le": 10000}, "log.every_n_steps": {"le": STEPS_MAX},
    "distributed.timeout_s": {"le": 86400.0}, "distributed.num_machines": {"le": 1024},
    "distributed.main_process_port": {"le": 65535}, "network.factor": {"le": 65536},
}
TABLE_MAX = 4096
"""Largest entry of a name → integer table (network.module_ranks: a rank)."""


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
            caps = {k: v for k, v in BOUNDS.get(f"{section}.{fld.name}", {}).items() if k not in fld.metadata}
            meta = {**fld.metadata, **caps, "caps": tuple(caps)}  # caps: named in messages only when exceeded
            specs[fld.name] = FieldSpec(section, fld.name, base, optional or default is None, default, meta)
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
