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
from typing import TYPE_CHECKING, Optional

import lorakit.models as _models
from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.models.base import FileKind

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


# ------------------------------------------------------------------ what a file is (one detector: load + inspect)

_LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".lora_A.default.weight",
                  ".hada_w1_a", ".lokr_w1", ".lora.down.weight", ".lora_linear_layer.down.weight",
                  "_lora.down.weight")  # (diffusers' attention-processor files: …processor.to_q_lora.down.weight)
# generic layouts no family owns: (a key that marks it, what it is); checked after every family declined the file
_COMPONENTS = (
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5 text encoder"),
    ("text_model.embeddings.token_embedding.weight", "a CLIP text encoder"),
    ("embeddings.token_embedding.weight", "a CLIP text encoder"),
    ("encoder.conv_in.weight", "an autoencoder (VAE)"),
    ("model.embed_tokens.weight", "a language-model text encoder (Qwen / Llama / Mistral type)"),
    ("embed_tokens.weight", "a language-model text encoder (Qwen / Llama / Mistral type)"),
)


def identify_header(header: dict, where: str = "") -> "FileKind":
    """What a safetensors header (tensor name -> {"shape", ...}) holds: a LoRA, a family's checkpoint (asked of each
    family's optional ``identify``), a known component, or an unknown layout."""
    from lorakit.models.base import FileKind

    keys = [k for k in header if k != "__metadata__"]
    lora = [k for k in keys if k.endswith(_LORA_SUFFIXES)]
    from lorakit.lora.variant_keys import LYCORIS_SUFFIXES, algo_of_keys

    lyco = [k for k in keys if k.endswith(LYCORIS_SUFFIXES)]
    rest = [k for k in keys if not k.endswith(".alpha") and k not in lyco]
    if lyco and (not rest or len(lora) * 2 >= len(rest)):  # issue 23: LoHa/LoKr/DoRA keys are all LoRA keys
        kinds = sorted({algo_of_keys([k.rsplit(".", 1)[1]]) for k in lyco})
        stems = {k.rsplit(".", 1)[0] for k in lyco}
        return FileKind(f"a LoRA (LyCORIS {'/'.join(kinds)} layout, {len(stems)} modules)", role="lora")
    if lora and len(lora) * 2 >= len([k for k in keys if not k.endswith(".alpha")]):
        layout = "kohya" if any(k.startswith("lora_") for k in lora) else "diffusers/PEFT"
        return FileKind(f"a LoRA ({layout} layout, {len(lora) // 2} modules)", role="lora")
    claims = []
    for name in families():
        fn = getattr(get_family(name), "identify", None)
        kind = fn(header) if fn is not None else None
        if kind is not None:
            claims.append(kind)
    if claims:
        return next((c for c in claims if c.family is not None), claims[0])
    bare = {k.split(".", 1)[1] if k.startswith(("vae.", "first_stage_model.")) else k for k in keys}
    for mark, what in _COMPONENTS:
        if mark in bare:
            if "language-model" in what:
                what = "a Qwen3 text encoder" if any("q_norm" in k for k in keys) else "a Mistral / Llama-type text encoder"
            return FileKind(what, role="component")
    return FileKind("not a known model layout" + (f" (e.g. {sorted(keys)[0]!r})" if keys else " (no tensors)"),
                    role="unknown")


def identify(path) -> "FileKind":
    """:func:`identify_header` of a .safetensors file (header only; ModelLoadError naming a corrupt file)."""
    from lorakit.safetensors_header import read_safetensors_header

    header, _ = read_safetensors_header(path)
    return identify_header(header, str(path))


def require_base(path, family: str, key: str = "model.checkpoint") -> "FileKind":
    """The FileKind of ``path`` when ``family`` trains on it as a base model; else one ModelLoadError line naming
    ``key``, the file and what it is (a LoRA, another family's or size's checkpoint, an inpainting variant, ...).
    Files no family recognises pass (the family's own loader then says what is missing)."""
    from lorakit.errors import ModelLoadError

    kind = identify(path)
    if kind.family == family or kind.role == "unknown":
        return kind
    hint = ""
    if kind.role == "lora":
        hint = "; give the base model here (the LoRA is what training writes)"
    elif kind.family is not None:
        hint = f"; set model.family = \"{kind.family}\" to train on it"
    elif kind.role == "component":  # an encoder or a VAE: it has its own [model] key
        hint = (f"; {key} takes the diffusion model itself (a file or a diffusers folder), text encoders and VAEs go "
                "in their own [model] keys")
    raise ModelLoadError(f"{key}: {path} is {kind.what}, not a base model the {family} family trains on{hint}")


def folder_family(folder) -> tuple[Optional[str], Optional[str]]:
    """(the pipeline class a diffusers folder's model_index.json names, the family that declares it in its
    ``SPEC.pipeline_classes``); (None, None) without a readable model_index.json, (class, None) for a class no
    installed family declares."""
    import json
    from pathlib import Path

    try:
        cls = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None, None
    if not isinstance(cls, str):
        return None, None
    for name in families():
        if cls in getattr(getattr(get_family(name), "SPEC", None), "pipeline_classes", ()):
            return cls, name
    return cls, None


def require_base_folder(folder, family: str, key: str = "model.checkpoint") -> None:
    """One ModelLoadError line when the diffusers folder ``folder`` is another family's pipeline (its model_index.json
    ``_class_name``): the key, the folder, what it is and the family to set. Folders no family claims pass."""
    from lorakit.errors import ModelLoadError

    cls, owner = folder_family(folder)
    if owner is None or owner == family:
        return
    shown = getattr(getattr(get_family(owner), "SPEC", None), "display_name", "") or owner
    raise ModelLoadError(f"{key}: {folder} is a diffusers {shown} folder ({cls}), not a base model the {family} "
                         f"family trains on; set model.family = \"{owner}\" to train on it")

