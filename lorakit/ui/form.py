"""The Train page's form, generated from the config schema, and its exact TOML.

Every schema field (:func:`lorakit.config.load.field_specs`) becomes one widget: a checkbox (true/false), a
three-way choice ``default / true / false`` (switches whose unset value means "decide for me"), a drop-down
(``choices``), a multi-line box (``sample.prompts``: one prompt per line) or a text box holding a TOML literal
(numbers, ``[0.9, 0.999]``, ``{ img_attn = 8 }``, ``[1024, 768]``) or plain text (strings, paths). Help text and
bounds come from the field's metadata; fields restricted to some families are shown only for those.

The TOML the form shows is the one a job runs: the preset (if any) plus every field whose value differs from what
the preset and the schema would give anyway, paths made absolute. It is validated by the same loader as the CLI
(:func:`lorakit.config.load.load_config`), and its one-line message is shown next to the field it names.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from lorakit.config.load import (FieldSpec, _parse_override_value, config_to_dict, dump_toml, field_specs, load_config,
                                 parse_override, preset_path, toml_value)
from lorakit.config.schema import SECTIONS, Config
from lorakit.errors import ConfigError

TRISTATE = ("default", "true", "false")


@dataclass(frozen=True)
class Field:
    """One form widget: the schema field, its widget kind, label and help text."""

    spec: FieldSpec
    widget: str  # checkbox | tristate | choice | lines | text

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def families(self) -> tuple[str, ...]:
        """The families a family-only key applies to (their specs list it); () for a key of every family."""
        if not self.spec.meta.get("family_only"):
            return ()
        from lorakit.config import families

        return families.applies_to(self.spec.key)

    @property
    def choices(self) -> list[str]:
        if self.widget == "tristate":
            return list(TRISTATE)
        if self.spec.meta.get("kind") == "family":  # the installed family packages
            from lorakit.config import families

            return list(families.installed())
        return [str(c) for c in self.spec.meta.get("choices", ())]

    def help(self) -> str:
        """The field's doc, its bounds and default, as shown under the widget."""
        m = self.spec.meta
        bits = []
        for name, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if name in m:
                bits.append(f"{sym} {m[name]:g}")
        extra = f" [{' and '.join(bits)}]" if bits else ""
        default = self.spec.default
        shown = "unset" if default is None or default == {} or default == [] else toml_value(default)
        return f"{self.spec.doc}{extra} (default: {shown})"

    def visible(self, family: Optional[str]) -> bool:
        return not self.families or family in self.families


def fields() -> list[Field]:
    """Every schema field in schema order (section by section)."""
    out = []
    for section in SECTIONS:
        for spec in field_specs()[section].values():
            out.append(Field(spec, _widget(spec)))
    return out


def _widget(spec: FieldSpec) -> str:
    if spec.base is bool:
        return "tristate" if spec.default is None else "checkbox"
    if "choices" in spec.meta:
        return "choice"
    if spec.key == "sample.prompts":
        return "lines"
    return "text"


# ------------------------------------------------------------------------------------------- values


def to_widget(field: Field, value: Any) -> Any:
    """A config value as its widget shows it."""
    if field.widget == "checkbox":
        return bool(value)
    if field.widget == "tristate":
        return "default" if value is None else ("true" if value else "false")
    if field.widget == "choice":
        return "" if value is None else str(value)
    if field.widget == "lines":
        return "\n".join(value or [])
    if value is None or value == {} and field.spec.base is dict:
        return ""
    if field.spec.base is str:
        return str(value)
    return toml_value(value)


def from_widget(field: Field, shown: Any) -> tuple[bool, Any]:
    """(set, value) from a widget: ``set`` False means "leave it to the preset / schema default". Text that is no
    valid value is passed on as typed, so the loader names the key and what it must be (the CLI's message)."""
    spec = field.spec
    if field.widget == "checkbox":
        return True, bool(shown)
    if field.widget == "tristate":
        if shown in (None, "", "default"):
            return False, None
        return True, shown == "true"
    if field.widget == "choice":
        return (False, None) if shown in (None, "") else (True, shown)
    if field.widget == "lines":
        lines = [ln.strip() for ln in str(shown or "").splitlines() if ln.strip()]
        return True, lines
    text = "" if shown is None else str(shown)
    if spec.base is str:
        if spec.meta.get("kind") == "path":
            text = text.strip()
            if not text:
                return False, None
            return True, _absolute(spec.key, text)
        if text == "" and spec.default is None:
            return False, None
        return True, text
    if not text.strip():
        if spec.optional or spec.base is dict:
            return False, None
        return True, ""  # the loader says what the key must be
    return True, _parse_override_value(text, spec)


def _absolute(key: str, text: str) -> str:
    """A path typed into the form, absolute against the UI's current folder as the CLI makes it (a
    ``model.checkpoint`` hub id such as ``stabilityai/stable-diffusion-xl-base-1.0`` stays a hub id)."""
    from pathlib import Path

    from lorakit.config.validate import _resolve_one

    return _resolve_one(key, text, Path.cwd())


def baseline(preset: Optional[str]) -> dict[str, Any]:
    """key → the value a field has when the form leaves it out: the preset's value, else the schema default."""
    out = {f.key: f.spec.default for f in fields()}
    if preset:
        with open(preset_path(preset), "rb") as fh:
            layer = tomllib.load(fh)
        for section, body in layer.items():
            if isinstance(body, dict):
                for key, value in body.items():
                    out[f"{section}.{key}"] = value
    return out


def form_to_data(values: Mapping[str, Any], preset: Optional[str] = None) -> dict[str, Any]:
    """The TOML-shaped dict a form holds: ``preset`` plus every shown field that differs from :func:`baseline`.
    ``values``: key → widget value. Fields of other families are left out (hidden, never half-applied)."""
    family = values.get("model.family") or None
    base = baseline(preset) if preset else baseline(None)
    data: dict[str, Any] = {}
    if preset:
        data["preset"] = preset
    for field in fields():
        if field.key not in values or not field.visible(family):
            continue
        present, value = from_widget(field, values[field.key])
        if not present:
            continue
        default = base.get(field.key)
        if _same(value, default) and field.key not in ("model.family",):
            continue
        data.setdefault(field.spec.section, {})[field.spec.name] = value
    return data


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def data_to_toml(data: Mapping[str, Any]) -> str:
    return dump_toml(dict(data))


def form_to_toml(values: Mapping[str, Any], preset: Optional[str] = None) -> str:
    return data_to_toml(form_to_data(values, preset))


def validate_toml(text: str) -> Config:
    """The Config the CLI would build from this TOML (paths in it are absolute); ConfigError otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML: {str(exc).splitlines()[0]}") from None
    return load_config(None, data=data)


def model_file_problem(cfg: Config) -> Optional[str]:
    """Why the job would fail to load its base model, found before it is queued (None when nothing is seen): a model
    file or folder that does not exist, a checkpoint that is another family's, a LoRA or an encoder
    (:func:`lorakit.models.registry.require_base`), or another family's diffusers folder. One line naming the key; hub
    ids and files no family recognises pass (the job's loader has the last word)."""
    from pathlib import Path

    from lorakit.errors import LorakitError

    family = cfg.model.family
    for field in fields():
        if field.spec.section != "model" or field.spec.meta.get("kind") != "path" or not field.visible(family):
            continue
        value = getattr(cfg.model, field.spec.name, None)
        if not isinstance(value, str) or not value or not os.path.isabs(value):
            continue  # unset, or a hub id (model.checkpoint only)
        path = Path(value)
        if not path.exists():
            return f"{field.key}: {path} not found; give a file or folder on this machine (a job would stop there)"
        if field.key != "model.checkpoint":
            continue
        from lorakit.models.registry import require_base, require_base_folder

        if path.is_dir() and not (path / "model_index.json").is_file() and not any(path.glob("*.safetensors")) \
                and not any(path.glob("*/*.safetensors")):
            return (f"model.checkpoint: folder {path} holds no model (no model_index.json of a diffusers folder, no "
                    ".safetensors file); give the model file itself, or its diffusers folder")
        from lorakit.models.common import shards

        try:
            if path.is_dir():
                require_base_folder(path, family)
            elif path.suffix.lower() == ".safetensors" and shards(path, field.key) == [path]:
                require_base(path, family)  # (a split file's first part alone says little: the loader reads them all)
        except LorakitError as exc:
            return str(exc)
    return None


def config_to_widgets(cfg: Config) -> dict[str, Any]:
    """key → widget value of every field, from a loaded Config (the "load TOML" button)."""
    flat = config_to_dict(cfg)
    from lorakit.config.load import explicit_keys

    if "data.resolution" not in explicit_keys(cfg) and "data" in flat:  # the family's own size (the loader's
        flat["data"]["resolution"] = field_specs()["data"]["resolution"].default  # choice): shown as the default
    out = {}
    for field in fields():
        value = flat.get(field.spec.section, {}).get(field.spec.name)
        out[field.key] = to_widget(field, value)
    return out


def error_key(message: str) -> Optional[str]:
    """The ``section.key`` a loader message starts with, when it names one the form has."""
    head = message.split(":", 1)[0].strip()
    parts = head.split(".")
    if len(parts) >= 2:
        key = f"{parts[0]}.{parts[1]}"
        if parts[0] in field_specs() and parts[1] in field_specs()[parts[0]]:
            return key
    return None


def apply_overrides_to_toml(text: str, overrides: Sequence[str]) -> str:
    """``section.key=value`` changes applied to a TOML text (duplicate with changes); relative paths in the
    changes are made absolute against the current folder, as the CLI's overrides are."""
    data = tomllib.loads(text)
    for item in overrides:
        parts, value = parse_override(item)
        if parts == ["preset"]:
            data["preset"] = value
            continue
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]}: must be a table")
        spec = field_specs().get(parts[0], {}).get(parts[1])
        if spec is not None and spec.meta.get("kind") == "path" and isinstance(value, str) and value.strip():
            value = _absolute(spec.key, value.strip())
        if len(parts) == 3:
            table = section.get(parts[1])
            table = dict(table) if isinstance(table, dict) else {}
            table[parts[2]] = value
            value = table
        section[parts[1]] = value
    return dump_toml(data)


# ------------------------------------------------------------------------------------------- families

DEFAULT_FAMILY = "sdxl"
# "Use the toy models": a run of seconds on the CPU, over the family's demo recipe (lorakit.toy.demo.demo_data: the
# family's toy files, rank, lr, [training] keys, prompts and CFG). These keys hold for every family.
TOY_QUICK = {"training.max_steps": 20, "training.batch_size": 2, "sample.steps": 4, "sample.every_n_steps": 10,
             "save.every_n_steps": 5, "save.keep_last": 2, "log.tensorboard": False, "log.progress": False}
TOY_KEEP = ("data.dir", "data.reg_dir", "data.cache_dir", "save.dir", "save.name")  # the user's, never the demo's


def family_choices() -> list[tuple[str, str]]:
    """(label, family) of every installed family, e.g. ``("FLUX.2 (flux2)", "flux2")``: the spec's display name."""
    from lorakit.config import families
    from lorakit.models.registry import get_family

    out = []
    for name in families.installed():
        shown = getattr(get_family(name).SPEC, "display_name", "") or name
        out.append((f"{shown} ({name})" if shown != name else name, name))
    return out


def presets_for(family: Optional[str]) -> list[str]:
    """The shipped presets whose ``[model] family`` is ``family`` (all of them for None)."""
    from lorakit.config.load import list_presets

    return [p for p in list_presets() if family is None or baseline(p).get("model.family") == family]


def shown_keys(family: Optional[str]) -> list[str]:
    """The keys whose fields the form shows for ``family`` (family-only keys of other families hidden)."""
    return [f.key for f in fields() if f.visible(family)]


def toy_values(family: str) -> dict[str, Any]:
    """key → config value that "Use the toy models" puts in the form: every ``model.*`` and family-only field back to
    its default (nothing of another family's toy stays), then the family's toy run (``lorakit demo``'s recipe) made
    quick (:data:`TOY_QUICK`). The dataset and output fields stay the user's. ModelLoadError without a toy."""
    from pathlib import Path

    from lorakit.toy.demo import demo_data

    data = demo_data(family, Path("dataset"), Path("out"), "toy")
    out = {f.key: f.spec.default for f in fields() if f.spec.section == "model" or f.families}
    for section, body in data.items():
        for name, value in body.items():
            if f"{section}.{name}" not in TOY_KEEP:
                out[f"{section}.{name}"] = value
    return out | TOY_QUICK


def toy_widgets(family: str) -> dict[str, Any]:
    """:func:`toy_values` as the widgets show them."""
    by_key = {f.key: f for f in fields()}
    return {key: to_widget(by_key[key], value) for key, value in toy_values(family).items()}
