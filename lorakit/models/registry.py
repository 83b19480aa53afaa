"""Model family name → its package, found by looking, not by a list.

A family is a package whose ``__init__`` exposes ``SPEC`` (a ModelSpec; ``SPEC.family`` is its name) and ``Adapter``
(docs/families.md says what else it may expose, e.g. ``lora_key_universe`` for `lorakit inspect`). Three places are
looked in, so a family can live outside lorakit and still need no edit here or anywhere else:

1. the subpackages of :mod:`lorakit.models` (the shipped families; the package name is the family name);
2. ``LORAKIT_FAMILIES``: a comma-separated list of importable module names (``mypkg.families.qwen``);
3. the entry-point group ``lorakit.families`` of the installed distributions (``name = "mypkg.qwen"``).

A module named by 2. or 3. that cannot be imported, is not a family, or claims a name another source already has
is an error: one line naming the module. After :func:`register` (or a changed ``LORAKIT_FAMILIES``) the config
layer's cache of which family honours which key (:func:`lorakit.config.families.clear`) is cleared with ours.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import lru_cache
from types import ModuleType

import lorakit.models as _models
from lorakit.errors import ConfigError

ENV = "LORAKIT_FAMILIES"
ENTRY_POINT_GROUP = "lorakit.families"
_NOT_FAMILIES = {"base", "registry", "tokenizers"}
_registered: list[str] = []          # module names given to register() in this process


def _candidates() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(_models.__path__) if m.ispkg and m.name not in _NOT_FAMILIES)


@lru_cache(maxsize=None)
def _load(name: str) -> ModuleType | None:
    """The shipped family package, or None when the package exists but is not (yet) a family."""
    module = importlib.import_module(f"lorakit.models.{name}")
    if hasattr(module, "SPEC") and hasattr(module, "Adapter"):
        return module
    return None


def _is_family(module: ModuleType) -> bool:
    return hasattr(module, "SPEC") and hasattr(module, "Adapter") and isinstance(getattr(module.SPEC, "family", None),
                                                                                  str)


@lru_cache(maxsize=None)
def _entry_points() -> tuple[tuple[str, str], ...]:
    """(entry-point name, module name) of the installed ``lorakit.families`` entry points, read once."""
    from importlib.metadata import entry_points

    return tuple((ep.name, ep.value.split(":")[0].strip()) for ep in entry_points(group=ENTRY_POINT_GROUP))


def _external_sources() -> list[tuple[str, str]]:
    """(where it was named, module name) of every family named outside lorakit.models, in a fixed order."""
    out = [(f"{ENV}={os.environ.get(ENV, '')}", name.strip())
           for name in os.environ.get(ENV, "").split(",") if name.strip()]
    out += [(f"entry point {ENTRY_POINT_GROUP}: {ep} = {mod}", mod) for ep, mod in _entry_points()]
    out += [("lorakit.models.registry.register()", name) for name in _registered]
    return out


@lru_cache(maxsize=None)
def _external(key: tuple[tuple[str, str], ...]) -> dict[str, ModuleType]:
    """Import the external family modules (``key`` = :func:`_external_sources`): family name → module."""
    out: dict[str, ModuleType] = {}
    shipped = set(_candidates())
    for where, name in key:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001  (whatever the package raises becomes one line naming it)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(f"family module {name!r} (from {where}) does not import: {type(exc).__name__}: "
                              f"{first}") from exc
        if not _is_family(module):
            raise ConfigError(f"family module {name!r} (from {where}) is not a family package: its __init__ must "
                              "expose SPEC (a lorakit.models.base.ModelSpec) and Adapter")
        family = module.SPEC.family
        if family in out and out[family] is not module:
            raise ConfigError(f"family module {name!r} (from {where}) declares family {family!r}, which "
                              f"{out[family].__name__!r} already provides; rename one SPEC.family")
        if family in shipped:
            raise ConfigError(f"family module {name!r} (from {where}) declares family {family!r}, which lorakit "
                              f"ships (lorakit.models.{family}); choose another SPEC.family")
        out[family] = module
    return out


def _externals() -> dict[str, ModuleType]:
    return _external(tuple(_external_sources()))


def families() -> list[str]:
    """Names of the families available: shipped ones, then those named by LORAKIT_FAMILIES, entry points and
    :func:`register`. A broken external family raises ConfigError naming its module."""
    out = []
    for name in _candidates():
        try:
            if _load(name) is not None:
                out.append(name)
        except ImportError:
            continue
    return out + sorted(_externals())


def get_family(name: str) -> ModuleType:
    """The package of family ``name`` (exposes SPEC and Adapter); ConfigError naming the choices otherwise."""
    if name in _candidates():
        module = _load(name)
        if module is not None:
            if module.SPEC.family != name:
                raise ConfigError(f"model.family: package {name!r} declares family {module.SPEC.family!r}")
            return module
    external = _externals()
    if name in external:
        return external[name]
    raise ConfigError(f"model.family: unknown family {name!r}; available: {', '.join(families()) or 'none'}; "
                      f"a family package outside lorakit is named in {ENV} or the {ENTRY_POINT_GROUP} entry points")


def register(module_name: str) -> str:
    """Add the family package ``module_name`` (importable) for this process, as ``LORAKIT_FAMILIES`` would; returns
    its family name. ConfigError (naming the module) when it is not a usable family."""
    if module_name not in _registered:
        _registered.append(module_name)
    clear()
    try:
        found = _external(tuple(s for s in _external_sources() if s[1] == module_name))
    except ConfigError:
        _registered.remove(module_name)
        clear()
        raise
    return next(iter(found))


def forget() -> None:
    """Forget what discovery found outside lorakit.models (entry points, imported external modules)."""
    _entry_points.cache_clear()
    _external.cache_clear()


def clear() -> None:
    """:func:`forget`, and the config layer's cache of which family honours which key: the next question looks
    again (:func:`lorakit.config.families.clear` does the same from the config side)."""
    from lorakit.config import families as config_families

    config_families.clear()
