"""The Train page for every registered family: the family list, the fields each family shows, its presets, and
"Use the toy models" with the family's own toy recipe, down to a TOML the CLI loads and a plan."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest

from lorakit.config.load import load_config
from lorakit.config.toml_io import PRESET_DIR
from lorakit.models.registry import families, get_family
from lorakit.toy.demo import DEMO_PROMPTS
from lorakit.toy.paths import toy_paths, toy_recipe
from lorakit.ui import form as fm

FAMILIES = families()
# the model keys every family reads (no family_only mark in the schema)
COMMON_MODEL_KEYS = {"model.family", "model.checkpoint", "model.config_dir", "model.tokenizer_dir",
                     "model.allow_pickle"}


def _role_key(role: str) -> str:
    return "model.config_dir" if role == "config" else f"model.{role}"


def test_every_registered_family_is_offered_with_its_name():
    choices = fm.family_choices()
    assert [value for _, value in choices] == FAMILIES
    assert {"sdxl", "flux1", "flux2", "sd3", "qwenimage", "zimage", "sd15"} <= set(FAMILIES)
    labels = dict((v, label) for label, v in choices)
    assert labels["flux2"] == "FLUX.2 (flux2)" and labels["sd15"] == "SD 1.5 (sd15)"
    for name in FAMILIES:
        assert get_family(name).SPEC.display_name and labels[name].endswith(f"({name})")
    assert fm.DEFAULT_FAMILY == "sdxl" and fm.DEFAULT_FAMILY in FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_fields_shown_are_the_familys(family):
    shown = set(fm.shown_keys(family))
    honoured = set(get_family(family).SPEC.config_keys)  # the family-only keys the family's spec lists
    family_only = {f.key for f in fm.fields() if f.spec.meta.get("family_only")}
    assert family_only & shown == honoured & family_only
    assert {f.key for f in fm.fields() if not f.spec.meta.get("family_only")} <= shown
    # the model-file fields: the shared ones and the family's own, among them every file its toy is loaded from
    model = {k for k in shown if k.startswith("model.")}
    assert model == COMMON_MODEL_KEYS | {k for k in honoured if k.startswith("model.")}
    assert {_role_key(role) for role in toy_recipe(family).files} <= model


@pytest.mark.parametrize("family", FAMILIES)
def test_presets_are_the_familys(family):
    expected = sorted(f"{family}/{p.stem}" for p in (PRESET_DIR / family).glob("*.toml"))
    assert expected and fm.presets_for(family) == expected
    for name in expected:
        data = tomllib.loads((PRESET_DIR / f"{name}.toml").read_text())
        assert data["model"]["family"] == family


def _form(family: str, dataset: Path, out: Path) -> dict:
    """A form as the page holds it after a family's toy button: schema defaults, the user's folders, the toy."""
    widgets = {f.key: fm.to_widget(f, f.spec.default) for f in fm.fields()}
    widgets.update({"data.dir": str(dataset), "save.dir": str(out), "save.name": f"toy-{family}"})
    widgets.update(fm.toy_widgets(family))
    return widgets


@pytest.mark.parametrize("family", FAMILIES)
def test_toy_models_fill_the_familys_recipe_and_the_toml_loads(family, tmp_path):
    from lorakit.ui.plan import CPU, estimate

    widgets = _form(family, tmp_path / "set", tmp_path / "runs")
    assert widgets["data.dir"] == str(tmp_path / "set")  # the user's dataset stays
    text = fm.form_to_toml(widgets)
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    cfg = load_config(str(path))  # the CLI's loader, on the file
    data = tomllib.loads(text)
    assert cfg.model.family == family and data["model"]["family"] == family
    # exactly the toy's files, by the keys the family's loader reads (lorakit toy path FAMILY)
    files = {_role_key(role): str(p) for role, p in toy_paths(family).items()}
    assert {f"model.{k}": v for k, v in data["model"].items() if k != "family"} == files
    # the family's toy recipe (what `lorakit demo --family` trains with), made quick
    recipe = toy_recipe(family)
    for key, value in recipe.training.items():
        assert getattr(cfg.training, key) == value, key
    assert cfg.sample.cfg_scale == recipe.demo.cfg_scale and cfg.optimizer.lr == recipe.demo.lr
    assert cfg.network.rank == recipe.demo.rank and cfg.sample.prompts == DEMO_PROMPTS
    assert cfg.training.max_steps == fm.TOY_QUICK["training.max_steps"] and cfg.training.device == "cpu"
    assert cfg.data.resolution in (64, [64, 64], (64, 64))
    assert estimate(cfg, CPU).startswith(f"**{fm.TOY_QUICK['training.max_steps']} steps**")


def test_toy_of_one_family_leaves_nothing_of_another():
    """FLUX.1's toy sets clip_l / t5xxl / t5_max_length; SD3.5 reads those keys too, but its toy has none of them."""
    widgets = {f.key: fm.to_widget(f, f.spec.default) for f in fm.fields()}
    widgets.update({"data.dir": "/data/set", "save.dir": "/data/runs"})
    widgets.update(fm.toy_widgets("flux1"))
    assert widgets["model.clip_l"] and widgets["training.t5_max_length"] == "64"
    widgets.update(fm.toy_widgets("sd3"))
    data = tomllib.loads(fm.form_to_toml(widgets))
    assert set(data["model"]) == {"family", "checkpoint", "config_dir"} and data["model"]["family"] == "sd3"
    assert data["training"]["t5_max_length"] == 32  # SD3.5's toy value, not FLUX.1's
    assert fm.validate_toml(fm.form_to_toml(widgets)).model.clip_l is None


def test_no_toy_is_one_line():
    from lorakit.errors import LorakitError

    with pytest.raises(LorakitError, match=r"^model.family: no toy model for 'nope'; toy families are "):
        fm.toy_widgets("nope")


# ------------------------------------------------------------------------------------ the page's own handlers


def built_page(home):
    """(Gradio Blocks, its event functions, the job store) of the page over ``home``; jobs are queued as the page
    queues them and their process is `true` (no training here: that is the CLI's tests')."""
    pytest.importorskip("gradio", reason="the ui extra is not installed")
    from lorakit.ui import app
    from lorakit.ui import dataset as ds
    from lorakit.ui.jobs import JobStore

    store = JobStore(home, python=shutil.which("true") or "/bin/true")
    demo = app.build(app.UIState(home=home, roots=ds.Roots(None), store=store))
    return demo, list(demo.fns.values()) if isinstance(demo.fns, dict) else list(demo.fns), store


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    demo, fns, _ = built_page(home)
    train = [f for f in fns if f.fn.__qualname__.startswith(("_train_events.", "_train_fill_events."))]
    return demo, {f.name: f for f in train}, home


def _key(comp) -> str:
    elem = comp.elem_id or ""
    return "model.family" if elem == "tr-family" else elem[2:].replace("-", ".", 1)


def test_page_lists_families_and_follows_the_pick(page):
    demo, fns, home = page
    family_changed = fns["family_changed"]
    dropdown = next(c for c in family_changed.inputs if c.elem_id == "tr-family")
    assert [c[1] for c in dropdown.choices] == FAMILIES and dropdown.value == "sdxl"
    outs = family_changed.outputs
    initial = {_key(c): c.visible for c in outs[:-1]}
    assert {k for k, v in initial.items() if v} == set(fm.shown_keys("sdxl")) & set(initial)
    for family in FAMILIES:
        updates = family_changed.fn(family, f"{family}/character")
        shown = {_key(c) for c, u in zip(outs[:-1], updates[:-1]) if u["visible"]}
        assert shown == set(fm.shown_keys(family)) & set(initial)
        assert updates[-1]["choices"] == ["(none)"] + fm.presets_for(family)
        assert updates[-1]["value"] == f"{family}/character"  # the family's preset stays picked
    assert family_changed.fn("flux2", "sdxl/style")[-1]["value"] == "(none)"  # another family's preset does not


def test_page_toy_show_and_start_for_every_family(page):
    demo, fns, home = page
    from lorakit.ui.plan import CPU

    toy, show, start = fns["toy"], fns["show"], fns["start"]
    comps = toy.inputs[1:]
    keys = [_key(c) for c in comps]
    values = {k: c.value for k, c in zip(keys, comps)}
    values["data.dir"] = str(home / "set")
    for family in FAMILIES:
        values["model.family"] = family
        out = toy.fn(family, *[values[k] for k in keys])
        assert f"toy {family} model files and CPU settings filled in" in out[0]
        values.update({k: v for k, v in zip(keys, out[1:]) if not isinstance(v, dict)})  # dict: gr.update()
        values["save.name"] = f"toy-{family}"
        res = show.fn("(none)", CPU, None, *[values[k] for k in keys])
        assert "valid" in res[0], res[0]
        text = (home / "toml" / f"toy-{family}.toml").read_text()
        assert res[1] == text and res[3] == str(home / "toml" / f"toy-{family}.toml")
        data = tomllib.loads(text)
        assert data["model"]["family"] == family
        assert data["model"]["checkpoint"] == str(toy_paths(family)["checkpoint"])
        assert res[2].startswith("**20 steps**")
        started = start.fn("(none)", None, *[values[k] for k in keys])
        m = re.search(r"job (\d+) \(toy-" + family + r"\)", started[0])
        assert m and started[1] == text, started[0]
        assert (home / "jobs" / m.group(1) / "run.toml").read_text() == text  # the job runs exactly the TOML shown
