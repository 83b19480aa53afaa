"""The Train form ⇄ TOML: every schema key survives form → TOML → load → form, and bad values get the CLI's message."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from lorakit.config.load import cfg_notes, field_specs, list_presets, load_config
from lorakit.config.schema import SECTIONS
from lorakit.errors import ConfigError
from lorakit.ui import form as fm

# settings some keys only act together with (the loader refuses them alone)
COMPANIONS = {
    "network.text_encoder_lr": {"network.train_text_encoder": True},
    "network.conv_alpha": {"network.conv_rank": 4},
    "optimizer.min_lr_ratio": {"optimizer.scheduler": "cosine_with_min_lr"},
    "optimizer.num_cycles": {"optimizer.scheduler": "cosine_with_restarts"},
    "training.huber_c": {"training.loss": "huber"},
    "training.discrete_flow_shift": {"training.timestep_sampling": "shift"},
    "training.logit_mean": {"training.timestep_sampling": "logit_normal"},
    "training.logit_std": {"training.timestep_sampling": "logit_normal"},
    "data.prior_loss_weight": {"data.reg_dir": "/data/reg"},
    "memory.save_attention": {"memory.activation_budget": 0.3, "memory.compile": True,
                              "memory.gradient_checkpointing": False},
    "memory.cuda_graphs": {"memory.compile": True},
    "memory.fp8_compute": {"memory.fp8_base": True},
    "save.keep_best": {"data.validation_split": 0.2},
    "validation.every_n_steps": {"data.validation_split": 0.2},
    "validation.timesteps": {"data.validation_split": 0.2},
    "training.ema_decay": {"training.ema": True}, "network.type": {"network.conv_rank": 4},
    "network.factor": {"network.type": "lokr"},  # issue 23 (LoKr's factor)
    "training.multires_noise_discount": {"training.multires_noise_iterations": 6}, "sample.use_ema": {"training.ema": True},  # issue 23
    "data.keep_tokens": {"data.caption_tag_dropout_rate": 0.1},  # walk7o
}
SPECIAL = {  # keys whose generic "another valid value" needs care
    "model.family": "flux1",
    "network.factor": 4,  # -1 + 1 = 0 is refused (issue 23)
    "data.resolution": [768, 512],
    "data.config": "/data/dataset.toml",
    "data.caption_extension": ".caption",
    "data.caption_separator": ";",
    "network.double_block_indices": "0,2-5",
    "network.single_block_indices": "1-3",
    "network.module_ranks": {"img_attn": 8, "single": 0},
    "optimizer.betas": [0.8, 0.99],
    "training.device": "cpu",
    "data.bucket_reso_steps": 96,
    "training.min_timestep": 5,
    "training.max_timestep": 900,
    "sample.prompts": ["a zkx shape --s 10", "a red circle"],
    "save.name": "my run",
    "save.dir": "/data/out",
    "model.checkpoint": "/models/other.safetensors",
    "data.max_token_length": 150,
    "sample.width": 832,    # a multiple of the family's ModelSpec.sample_multiple (65 is refused)
    "sample.height": 1216,
}


def _other_value(spec):
    """A valid value different from the field's default."""
    if spec.key in SPECIAL:
        return SPECIAL[spec.key]
    m = spec.meta
    if spec.base is bool:
        return True if spec.default is None else not spec.default
    if "choices" in m:
        return next(c for c in m["choices"] if c != spec.default)
    if m.get("kind") == "path":
        return f"/data/{spec.name}"
    if spec.base is int:
        hi = m.get("le", 10**6)
        base = spec.default if spec.default is not None else m.get("ge", 1)
        return base + 1 if base + 1 <= hi else base - 1
    if spec.base is float:
        lo = m.get("ge", m.get("gt", 0.0))
        hi = m.get("le", m.get("lt", 10.0))
        value = ((spec.default if spec.default is not None else lo) + hi) / 2
        return value if value != spec.default else (lo + value) / 2
    if spec.base is str:
        return f"text for {spec.name}"
    raise AssertionError(f"no test value for {spec.key}")


def _base(family: str) -> dict:
    return {"model.family": family, "model.checkpoint": "/models/base.safetensors", "data.dir": "/data/set",
            "save.dir": "/data/runs"}


def _widgets(values: dict) -> dict:
    by_key = {f.key: f for f in fm.fields()}
    out = {f.key: fm.to_widget(f, f.spec.default) for f in fm.fields()}
    for key, value in values.items():
        out[key] = fm.to_widget(by_key[key], value)
    return out


ALL_KEYS = [spec.key for section in SECTIONS for spec in field_specs()[section].values()]


def test_every_key_has_a_widget():
    assert [f.key for f in fm.fields()] == ALL_KEYS
    assert len(ALL_KEYS) > 100


@pytest.mark.parametrize("key", ALL_KEYS)
def test_round_trip_every_key(key):
    section, name = key.split(".")
    spec = field_specs()[section][name]
    families = fm.Field(spec, "text").families if spec.meta.get("family_only") else ()
    families = families or ("sdxl",)
    family = "flux1" if key == "model.family" else families[0]
    value = _other_value(spec)
    values = _base(family) | COMPANIONS.get(key, {}) | {key: value}
    if key == "data.config":
        values.pop("data.dir")
    widgets = _widgets(values)
    if key == "data.config":
        widgets["data.dir"] = ""
    text = fm.form_to_toml(widgets)
    if key == "memory.cache_latents":  # its only other value is refused, with the CLI's one line
        with pytest.raises(ConfigError, match=r"^memory.cache_latents: false is not offered"):
            fm.validate_toml(text)
        return
    cfg = fm.validate_toml(text)  # what `lorakit train` builds from this TOML
    assert getattr(getattr(cfg, section), name) == value
    assert name in tomllib.loads(text).get(section, {}), f"{key} missing from the TOML:\n{text}"
    # load TOML → form → TOML: the same text, the same config
    again = fm.form_to_toml(fm.config_to_widgets(cfg))
    if not cfg_notes(cfg):  # a default the loader adapted (and noted) is written out once loaded
        assert again == text
    else:
        assert tomllib.loads(again)["memory"] == {"cache_text_encoder_outputs": False}
    assert dataclasses.asdict(fm.validate_toml(again)) == dataclasses.asdict(cfg)


def test_defaults_are_left_out_and_hidden_family_fields_never_applied():
    widgets = _widgets(_base("sdxl"))
    widgets["training.guidance_scale"] = "7.0"  # a FLUX.1-only field: hidden for sdxl
    data = fm.form_to_data(widgets)
    assert data == {"model": {"family": "sdxl", "checkpoint": "/models/base.safetensors"},
                    "data": {"dir": "/data/set"}, "save": {"dir": "/data/runs"}}
    visible = {f.key for f in fm.fields() if f.visible("sdxl")}
    assert "training.guidance_scale" not in visible and "training.noise_offset" in visible
    assert "training.noise_offset" not in {f.key for f in fm.fields() if f.visible("flux1")}


def test_preset_baseline_keeps_the_toml_minimal():
    preset = next(p for p in list_presets() if p.startswith("sdxl/"))
    base = fm.baseline(preset)
    values = _base("sdxl")
    widgets = _widgets(values)
    for f in fm.fields():  # the form after picking the preset shows the preset's values
        if base[f.key] != f.spec.default:
            widgets[f.key] = fm.to_widget(f, base[f.key])
    widgets["network.rank"] = "12"
    text = fm.form_to_toml(widgets, preset)
    data = tomllib.loads(text)
    assert data["preset"] == preset and data["network"] == {"rank": 12}
    direct = load_config(None, [f"preset={preset}", "network.rank=12", "model.family=sdxl",
                                "model.checkpoint=/models/base.safetensors", "data.dir=/data/set",
                                "save.dir=/data/runs"])
    assert dataclasses.asdict(fm.validate_toml(text)) == dataclasses.asdict(direct)


@pytest.mark.parametrize("key, shown, message", [
    ("network.rank", "abc", 'network.rank: must be an integer ≥ 1, got "abc"'),
    ("network.rank", "0", "network.rank: must be an integer ≥ 1, got 0"),
    ("optimizer.lr", "", 'optimizer.lr: must be a number > 0, got ""'),
    ("data.caption_dropout_rate", "1.5", "data.caption_dropout_rate: must be a number ≥ 0 and ≤ 1, got 1.5"),
    ("optimizer.betas", "[0.9]", "optimizer.betas: must be a list of two numbers"),
    ("save.name", "a/b", 'save.name: must be a plain file name'),
])
def test_bad_values_get_the_cli_message_and_its_field(key, shown, message):
    widgets = _widgets(_base("sdxl"))
    widgets[key] = shown
    with pytest.raises(ConfigError) as err:
        fm.validate_toml(fm.form_to_toml(widgets))
    assert str(err.value).startswith(message)
    assert fm.error_key(str(err.value)) == key
    # the CLI says the same for the same value
    section, name = key.split(".")
    if shown:
        with pytest.raises(ConfigError) as cli:
            load_config(None, [f"{key}={shown}", "model.family=sdxl", "model.checkpoint=/m.safetensors",
                               "data.dir=/d"])
        assert str(cli.value) == str(err.value)


def test_duplicate_overrides_applied_to_toml(tmp_path):
    text = fm.form_to_toml(_widgets(_base("sdxl")))
    out = fm.apply_overrides_to_toml(text, ["training.max_steps=7", "network.module_ranks.img_attn=4",
                                            "data.reg_dir=rel/reg"])
    data = tomllib.loads(out)
    assert data["training"]["max_steps"] == 7 and data["network"]["module_ranks"] == {"img_attn": 4}
    assert data["data"]["reg_dir"].startswith("/") and data["data"]["reg_dir"].endswith("rel/reg")


def test_hub_id_checkpoint_stays_a_hub_id(tmp_path, monkeypatch):
    """The schema allows a hub id for model.checkpoint; the form made it '<cwd>/owner/name' (a missing file)."""
    monkeypatch.chdir(tmp_path)
    hub = "stabilityai/stable-diffusion-xl-base-1.0"
    data = fm.form_to_data({"model.family": "sdxl", "model.checkpoint": hub, "model.vae": "vae/fix.safetensors",
                          "data.dir": "d"})
    assert data["model"]["checkpoint"] == hub
    assert data["model"]["vae"] == str(tmp_path / "vae" / "fix.safetensors")  # a file path is made absolute
    assert fm.validate_toml(fm.data_to_toml(data)).model.checkpoint == hub
    text = fm.apply_overrides_to_toml('[model]\nfamily = "sdxl"\ncheckpoint = "/m/a.safetensors"\n',
                                      [f"model.checkpoint={hub}"])
    assert tomllib.loads(text)["model"]["checkpoint"] == hub
