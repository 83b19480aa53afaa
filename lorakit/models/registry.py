"""Model family name → its package (``lorakit.models.<family>``), found by looking, not by a list.

A family is a subpackage of :mod:`lorakit.models` whose ``__init__`` exposes ``SPEC`` (a ModelSpec) and
``Adapter``. Adding a family = adding a package; shared code never names one.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from types import ModuleType

import lorakit.models as _models
from lorakit.errors import ConfigError

_NOT_FAMILIES = {"base", "registry", "tokenizers"}


def _candidates() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(_models.__path__) if m.ispkg and m.name not in _NOT_FAMILIES)


@lru_cache(maxsize=None)
def _load(name: str) -> ModuleType | None:
    """The family package, or None when the package exists but is not (yet) a family."""
    module = importlib.import_module(f"lorakit.models.{name}")
    if hasattr(module, "SPEC") and hasattr(module, "Adapter"):
        return module
    return None


def families() -> list[str]:
    """Names of the families available in this installation."""
    out = []
    for name in _candidates():
        try:
            if _load(name) is not None:
                out.append(name)
        except ImportError:
            continue
    return out


def get_family(name: str) -> ModuleType:
    """The package of family ``name`` (exposes SPEC and Adapter); ConfigError naming the choices otherwise."""
    if name in _candidates():
        module = _load(name)
        if module is not None:
            if module.SPEC.family != name:
                raise ConfigError(f"model.family: package {name!r} declares family {module.SPEC.family!r}")
            return module
    raise ConfigError(f"model.family: unknown family {name!r}; available: {', '.join(families()) or 'none'}")
