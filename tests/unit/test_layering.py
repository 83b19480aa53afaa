"""Issue 29: a family is one package under lorakit/models/ and imports no other family's package.

What several families use lives in shared modules beside them (models/weights.py, ldm_vae.py, clip_t5.py,
kohya_pack.py, unet_parts.py, ...). This test parses every module of every family package with ``ast`` and fails
naming the file and line of each import of another family (absolute, ``from lorakit.models import <other>``,
relative ``from ..<other>``, or ``importlib.import_module("lorakit.models.<other>...")``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import lorakit

MODELS = Path(lorakit.__file__).parent / "models"


def family_packages() -> list[str]:
    """The family packages: the subfolders of lorakit/models/ that are packages."""
    return sorted(p.name for p in MODELS.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def _imported(node: ast.AST, package: str) -> list[str]:
    """Absolute module names an import node (or ``import_module("...")`` call) brings in; ``package`` is the dotted
    package of the module being read (for relative imports)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        return [mod] + [f"{mod}.{a.name}" for a in node.names]       # from lorakit.models import flux1
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
        if name == "import_module":
            return [node.args[0].value]
    return []


def cross_family_imports(source: str, family: str, rel: str, families: list[str], package: str = "") -> list[str]:
    """``rel:line: imports lorakit.models.<other>...`` for each import in ``source`` (a module of ``family``) of
    another family's package."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        for mod in _imported(node, package or f"lorakit.models.{family}"):
            parts = mod.split(".")
            if len(parts) >= 3 and parts[:2] == ["lorakit", "models"] and parts[2] in families \
                    and parts[2] != family:
                who = f"the {family} family" if family else "a shared module"
                bad.append(f"{rel}:{node.lineno}: {who} imports {mod} (family {parts[2]}); move what both use into a "
                           "shared module under lorakit/models/")
                break
    return bad


def test_no_family_imports_another_family():
    families = family_packages()
    assert {"sdxl", "flux1", "flux2"} <= set(families)
    bad = []
    for fam in families:
        for path in sorted((MODELS / fam).rglob("*.py")):
            pkg = ".".join(("lorakit", "models") + path.relative_to(MODELS).parent.parts)
            rel = path.relative_to(MODELS.parent.parent).as_posix()
            bad += cross_family_imports(path.read_text(encoding="utf-8"), fam, rel, families, pkg)
    assert not bad, "\n".join(bad)


def test_shared_model_modules_import_no_family():
    """models/*.py (common, weights, ldm_vae, clip_t5, kohya_pack, unet_parts, registry, ...) sit below every family:
    a change inside one family package cannot break them (the registry finds families by name at run time)."""
    families = family_packages()
    bad = []
    for path in sorted(MODELS.glob("*.py")):
        rel = path.relative_to(MODELS.parent.parent).as_posix()
        bad += cross_family_imports(path.read_text(encoding="utf-8"), "", rel, families, "lorakit.models")
    assert not bad, "\n".join(bad)


def test_checker_names_file_and_line_of_every_form():
    """The checker itself catches each import form (so the test above can fail), and passes shared modules."""
    fams = ["flux1", "sd3", "sdxl"]
    src = ("import torch\n"
           "from lorakit.models.weights import upcast\n"          # shared: fine
           "from lorakit.models.sd3.configs import x\n"           # own package: fine
           "from . import configs\n"                              # own package, relative: fine
           "from lorakit.models.flux1.load import build_ae\n"     # 5
           "import lorakit.models.sdxl.convert\n"                 # 6
           "from lorakit.models import flux1\n"                   # 7
           "def f():\n"
           "    from ..sdxl import keys\n"                        # 9
           "    importlib.import_module('lorakit.models.flux1.convert')\n")  # 10
    bad = cross_family_imports(src, "sd3", "lorakit/models/sd3/x.py", fams)
    assert [b.split(": ")[0] for b in bad] == [f"lorakit/models/sd3/x.py:{n}" for n in (5, 6, 7, 9, 10)]
    assert "imports lorakit.models.flux1.load " in bad[0] and "imports lorakit.models.sdxl " in bad[3]
    shared = cross_family_imports("from lorakit.models.sdxl.convert import x\n", "", "lorakit/models/x.py", fams)
    assert shared == ["lorakit/models/x.py:1: a shared module imports lorakit.models.sdxl.convert (family sdxl); move "
                      "what both use into a shared module under lorakit/models/"]
