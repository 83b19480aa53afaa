"""Which family honours which family-only key, asked of the installed family packages.

The schema marks a key ``family_only`` and names no family; each family's ``ModelSpec.config_keys`` lists the
family-only keys it honours. So a new family package adds its keys without touching the config layer. The model
registry (a shared module that discovers the family packages, not a family) is imported only when asked.
"""

from __future__ import annotations

from functools import lru_cache


def installed() -> tuple[str, ...]:
    """Names of the installed families (the registry's discovery)."""
    from lorakit.models.registry import families

    return tuple(families())


@lru_cache(maxsize=None)
def _keys(names: tuple[str, ...]) -> dict[str, frozenset[str]]:
    from lorakit.models.registry import get_family

    return {name: frozenset(getattr(get_family(name).SPEC, "config_keys", ())) for name in names}


def applies_to(key: str) -> tuple[str, ...]:
    """The families whose spec lists the family-only ``key`` ("section.field"), among those installed now (a family
    that ``LORAKIT_FAMILIES`` adds later is asked too)."""
    return tuple(name for name, keys in _keys(installed()).items() if key in keys)


def table_names(key: str, family: str | None = None) -> tuple[str, ...] | None:
    """The names the table key ``key`` takes: for ``network.module_ranks`` the family's ``ModelSpec.module_types``
    (``family`` installed), else every installed family's (sorted, once each); None for a key families do not name."""
    if key != "network.module_ranks":
        return None
    from lorakit.models.registry import get_family

    names = installed()
    if family is not None and family in names:
        return tuple(getattr(get_family(family).SPEC, "module_types", ()))
    out: dict[str, None] = {}
    for name in names:
        out.update(dict.fromkeys(getattr(get_family(name).SPEC, "module_types", ())))
    return tuple(sorted(out))


def bucket_step(family: str) -> int:
    """The multiple ``data.bucket_reso_steps`` must be for ``family`` (its ``ModelSpec.bucket_step``)."""
    from lorakit.models.registry import get_family

    return int(getattr(get_family(family).SPEC, "bucket_step", 32))


def default_resolution(family: str) -> int | None:
    """The training resolution of ``family`` when neither the config nor its preset sets one (``ModelSpec.
    default_resolution``: 512 for SD 1.5, 1024 for the others); None for a family that is not installed (the loader
    refuses that family itself)."""
    from lorakit.models.registry import get_family

    if family not in installed():
        return None
    return int(get_family(family).SPEC.default_resolution)


def clear() -> None:
    """Forget what was read, here and in the registry's discovery (after a family is registered at run time or
    ``LORAKIT_FAMILIES`` changed), so that the keys asked next come from the families installed now."""
    from lorakit.models.registry import forget

    forget()
    _keys.cache_clear()


def text_encoder_lora(family: str) -> bool:
    """Whether ``family`` offers ``network.train_text_encoder`` (its ``ModelSpec.text_encoder_lora``); False for a
    family that is not installed."""
    from lorakit.models.registry import get_family

    return family in installed() and bool(getattr(get_family(family).SPEC, "text_encoder_lora", False))


def sample_multiple(family: str) -> int:
    """What ``family``'s preview sizes must be multiples of (its ``ModelSpec.sample_multiple``); 8 for a family that
    is not installed (the loader refuses that family itself)."""
    from lorakit.models.registry import get_family

    return int(getattr(get_family(family).SPEC, "sample_multiple", 8)) if family in installed() else 8
