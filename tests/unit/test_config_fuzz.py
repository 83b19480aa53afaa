"""Fuzz load_config: any input gives a Config or a one-line ConfigError that names a key, file or override."""

from __future__ import annotations

import datetime
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.config.load import dump_toml, field_specs, load_config, toml_value
from lorakit.errors import ConfigError

_TMP = Path(tempfile.mkdtemp(prefix="lorakit-cfg-fuzz-"))
FILE = _TMP / "fuzz.toml"
SEG = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")'
KEY_PATH = re.compile(rf"^{SEG}(?:\.{SEG})*: ")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SECTIONS = list(field_specs())
KEYS = [(s, k) for s in SECTIONS for k in field_specs()[s]]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["sdxl", "flux1", "0,2-5", "adamw", "/x/y", "a/b", "", "cuda:0"]),
    st.dates(), st.datetimes(), st.times(),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
section_names = st.one_of(st.sampled_from(SECTIONS), st.text(max_size=8))


def plausible(spec):
    """Values of the field's own type near its bounds, so that many drawn configs load."""
    m = spec.meta
    kind = m.get("kind")
    if "choices" in m:
        return st.sampled_from(list(m["choices"]))
    if kind == "resolution":
        return st.one_of(st.integers(32, 2048), st.lists(st.integers(32, 2048), min_size=2, max_size=2))
    if kind == "indices":
        return st.sampled_from(["0", "0,2-5", "1-1", " 3 , 4 ", "5-2", ""])
    if kind == "table":
        return st.dictionaries(st.sampled_from(["img_attn", "single", "bogus"]), st.integers(-1, 64), max_size=2)
    if kind == "path":
        return st.sampled_from(["/abs/p", "rel/p", "a/b", "~/x", ""])
    if spec.base is bool:
        return st.booleans()
    if spec.base is int:
        lo = m.get("ge", m.get("gt", 0)) - 1
        return st.integers(int(lo), int(m.get("le", lo + 3000)) + 1)
    if spec.base is float:
        return st.floats(-0.5, max(1.0, 2.0 * (1 + m.get("ge", 0))), allow_nan=False)
    if spec.base is list:
        return st.one_of(st.lists(st.floats(0, 1), min_size=2, max_size=2), st.lists(st.text(max_size=5), max_size=2))
    return st.text(max_size=8)


@st.composite
def config_dicts(draw):
    """A third free-form garbage, two thirds a valid skeleton with known keys and mostly plausible values."""
    mode = draw(st.integers(0, 2))
    data = {}
    if mode:
        data = {"model": {"family": draw(st.sampled_from(["sdxl", "flux1"])), "checkpoint": "/m.safetensors"},
                "data": {"dir": "/d"}}
    for _ in range(draw(st.integers(0, 6))):
        if mode:
            section, key = draw(st.sampled_from(KEYS))
            spec = field_specs()[section][key]
            value = draw(plausible(spec)) if mode == 1 or draw(st.integers(0, 3)) else draw(values)
        else:
            section, key, value = draw(section_names), draw(st.text(max_size=8)), draw(values)
        body = data.setdefault(section, {})
        if isinstance(body, dict):
            body[key] = value
    if draw(st.integers(0, 9)) == 0:
        data[draw(section_names)] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        data["preset"] = draw(st.sampled_from(["sdxl/character", "flux1/style", "sdxl/nope", "x"]))
    return data


def check_outcome(fn, label: str) -> None:
    try:
        cfg = fn()
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg and "\r" not in msg, msg
        assert (msg.startswith(f"{label}: ") or KEY_PATH.match(msg) or msg.startswith("override ")), msg
    else:
        FILE.write_text(dump_toml(cfg), encoding="utf-8")
        assert load_config(FILE) == cfg


@SETTINGS
@given(st.text(max_size=300))
def test_random_toml_text(text):
    FILE.write_text(text, encoding="utf-8")
    check_outcome(lambda: load_config(FILE), str(FILE))


@SETTINGS
@given(config_dicts())
def test_random_dicts(data):
    check_outcome(lambda: load_config(data=data), "config")


def _toml_or_none(data):
    """Write a dict as TOML when every value is TOML-able (None dropped), else None."""
    lines = []
    for section, body in data.items():
        if not isinstance(body, dict):
            return None
        lines.append(f"[{toml_value(section)}]")
        for key, value in body.items():
            if value is None:
                continue
            try:
                lines.append(f"{toml_value(key)} = {toml_value(value)}")
            except TypeError:
                return None
    return "\n".join(lines) + "\n"


@SETTINGS
@given(config_dicts())
def test_random_dicts_as_toml_files(data):
    text = _toml_or_none({k: v for k, v in data.items() if k != "preset"})
    if text is None:
        return
    FILE.write_text(text, encoding="utf-8")
    check_outcome(lambda: load_config(FILE), str(FILE))


override_strings = st.one_of(
    st.text(max_size=40),
    st.sampled_from(KEYS).flatmap(
        lambda k: plausible(field_specs()[k[0]][k[1]]).map(lambda v: f"{k[0]}.{k[1]}={toml_value(v)}")),
    st.sampled_from(KEYS).flatmap(
        lambda k: plausible(field_specs()[k[0]][k[1]]).map(lambda v: f"{k[0]}.{k[1]}={toml_value(v)}")),
    st.builds(lambda k, v: f"{k[0]}.{k[1]}={v}", st.sampled_from(KEYS),
              st.one_of(st.text(max_size=20), st.sampled_from(["1", "0", "-3", "1.5", "true", "[1,2]", "{a=1}",
                                                                 '"x"', "nan", "2024-01-01", "[", "inf"]))),
    st.builds(lambda s, v: f"preset={s}={v}", st.text(max_size=10), st.text(max_size=5)),
    st.builds(lambda v: f"network.module_ranks.{v}", st.text(max_size=12)),
)


@SETTINGS
@given(st.lists(override_strings, max_size=4), st.sampled_from(["sdxl", "flux1"]))
def test_random_overrides(overrides, family):
    base = [f"model.family={family}", "model.checkpoint=/m.safetensors", "data.dir=/d"]
    check_outcome(lambda: load_config(overrides=base + overrides), "config")


def test_dates_and_times_are_rejected_with_the_key():
    for value in (datetime.date(2024, 1, 1), datetime.time(1, 2)):
        try:
            load_config(data={"network": {"rank": value}})
        except ConfigError as exc:
            assert str(exc).startswith("network.rank: must be an integer ≥ 1, got a ")
        else:
            raise AssertionError("accepted a date")
