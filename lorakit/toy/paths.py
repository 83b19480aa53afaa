"""Which families have a toy (a ``TOY`` recipe in their package) and where the shipped toy base models live
(``lorakit/toy/assets/<family>/``, file names from the recipe), by role."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lorakit.errors import ModelLoadError

ASSETS = Path(__file__).resolve().parent / "assets"


def toy_families() -> list[str]:
    """The installed families whose package exposes a ``TOY`` recipe (lorakit.models.base.ToyRecipe)."""
    from lorakit.models.registry import families, get_family

    return [name for name in families() if getattr(get_family(name), "TOY", None) is not None]


def toy_recipe(family: str) -> Any:
    """The family's ToyRecipe; ModelLoadError naming the toy families when it has none."""
    from lorakit.models.registry import families, get_family

    recipe = getattr(get_family(family), "TOY", None) if family in families() else None
    if recipe is None:
        import difflib

        close = difflib.get_close_matches(str(family), toy_families(), n=1)
        raise ModelLoadError(f"model.family: no toy model for {family!r}; toy families are "
                             f"{', '.join(toy_families()) or 'none'}"
                             + (f"; did you mean {close[0]}?" if close else ""))
    return recipe


def default_toy_family() -> str:
    """The family ``lorakit demo`` trains when none is named: the first whose recipe says ``default_demo``."""
    names = toy_families()
    if not names:
        raise ModelLoadError("no installed model family ships a toy (a TOY recipe in its package)")
    return next((n for n in names if toy_recipe(n).default_demo), names[0])


def toy_paths(family: str, root: Optional[Path] = None) -> dict[str, Path]:
    """role → path of the toy base model files (the recipe's file table: checkpoint, ..., config).

    Raises ModelLoadError naming the missing file and the command that builds it.
    """
    base = (root or ASSETS) / family
    paths = {role: base / name for role, name in toy_recipe(family).files.items()}
    for role, p in paths.items():
        ok = (p / "model_index.json").is_file() if role == "config" else p.is_dir() if role.endswith("_dir") else \
            p.is_file()
        if not ok:
            raise ModelLoadError(f"{p}: the toy {family} base model is missing ({role}); "
                                 f"run `python -m lorakit.toy build --family {family}`")
    return paths


def model_section(family: str, root: Optional[Path] = None) -> dict[str, str]:
    """The ``[model]`` table of a run on the toy: family, checkpoint (+ the family's other file keys), config_dir."""
    model = {"family": family}
    for role, path in toy_paths(family, root).items():
        model["config_dir" if role == "config" else role] = str(path)
    return model
