"""Config fuzzer through the faces: every drawn config goes through load + validate, `lorakit config show` and
`lorakit train` up to the point where the base model would load. Each must end in a loaded config or in one
lorakit error line (never a traceback), and a refused train start leaves no run folder behind.

Values are drawn from a seeded ``random.Random`` (the same configs every run): for each schema key its
boundary values (each bound, one step past it, the sanity caps of ``fields.BOUNDS``), wrong types (strings,
booleans, lists, nested tables, dates), huge numbers (2**63, 2**64, 1e308), NaN and ±inf, unicode, NUL and very
long strings; plus unknown keys and sections, sections that are not tables, and tables nested in keys.
The fast variant draws 300 configs (``make test``), the slow one 1,200.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import random
import traceback
from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.config.fields import field_specs
from lorakit.config.load import load_config
from lorakit.config.toml_io import toml_value
from lorakit.errors import ConfigError
from lorakit.models.registry import get_family
from tests.unit.data_corpus import simple_dataset

KEYS = [(s, k) for s, specs in field_specs().items() for k in specs]
# keys whose fuzzed values would leave the temp folder or need real model files; they get safe path values
PATHS = {spec.key for s in field_specs().values() for spec in s.values() if spec.meta.get("kind") == "path"}
WEIRD = [0, -1, 1, 2, 7, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, 10**30, -(2**64), 1e308, -1e308,
         float("nan"), float("inf"), float("-inf"), 0.5, 1.5, -0.0, 5e-324, True, False, "", " ", "abc", "1",
         "ünïcødé ☃ 𝔘𝔫𝔦", "\x00", "a" * 3000, "[1, 2]", [], [1, 2], [1, 2, 3], ["a", "b"], [[1]], {},
         {"a": 1}, {"a": {"b": {"c": 1}}}, {"img_attn": 2 ** 64}, datetime.date(2024, 1, 1),
         datetime.datetime(2024, 1, 1, 1, 1), datetime.time(1, 2)]
SAFE_PATHS = ["rel/p", "ünï/ø", "", "  ", "a\x00b", "missing.safetensors", ".", "x" * 300]


def boundary_values(spec) -> list:
    out: list = []
    for key in ("ge", "gt", "le", "lt"):
        if key in spec.meta:
            b = spec.meta[key]
            step = 1 if spec.base is int else max(abs(b) * 1e-9, 1e-12)
            out += [b, b - step, b + step, b * 10 if b else 10]
    for choice in spec.meta.get("choices", ()):
        out += [choice, choice.upper(), choice + " "]
    if spec.meta.get("kind") == "resolution":
        out += [64, 63, 16384, 16385, [64, 128], [64], [64, 128, 256], [2**64, 64], [64.5, 64], ["64", 64]]
    if spec.meta.get("kind") == "indices":
        out += ["0", "0,2-5", "5-2", "99999999999999999999", "-1", "0,,1"]
    return out


def edge_values(spec) -> list:
    """Values that lie exactly on the field's bounds or choices (most of them valid)."""
    out = [spec.meta[k] for k in ("ge", "le") if k in spec.meta] + list(spec.meta.get("choices", ()))
    return out or ([spec.default] if spec.default not in (None, [], {}) else [])


def draw_value(rng: random.Random, spec, near_valid: bool = False):
    if spec.key in PATHS:
        return rng.choice(SAFE_PATHS)
    if near_valid and edge_values(spec):
        return rng.choice(edge_values(spec))
    pool = boundary_values(spec)
    return rng.choice(pool) if pool and rng.random() < 0.6 else rng.choice(WEIRD)


def draw_config(rng: random.Random, dataset: Path) -> dict:
    """A valid skeleton (a family, a dataset, CPU) with 1-4 fuzzed entries (edge values only in 40 % of the
    configs); sometimes structural garbage."""
    fam = rng.choice(["sdxl", "flux1", "flux2"])
    data: dict = {"model": {"family": fam, "checkpoint": "missing.safetensors"},
                  "data": {"dir": str(dataset), "resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128},
                  "training": {"device": "cpu", "mixed_precision": "no", "max_steps": 2},
                  "sample": {"prompts": []}, "log": {"progress": False, "tensorboard": False}}
    near_valid = rng.random() < 0.4  # a config of edge values only: many of these load and start training
    for _ in range(rng.randint(1, 4)):
        section, key = rng.choice(KEYS)
        if section == "data" and key == "dir" or near_valid and field_specs()[section][key].meta.get("family_only"):
            continue
        data.setdefault(section, {})[key] = draw_value(rng, field_specs()[section][key], near_valid)
    roll = 1.0 if near_valid else rng.random()
    if roll < 0.05:
        data[rng.choice(["bogus", "Model", "ünï"])] = {"x": 1}
    elif roll < 0.10:
        data[rng.choice(list(data))] = rng.choice([1, "x", [1], None])
    elif roll < 0.15:
        section = rng.choice(list(data))
        if isinstance(data[section], dict):
            data[section][rng.choice(["nested", "rank", "dir"])] = {"deeper": {"still": [1, {"x": 2}]}}
    elif roll < 0.20:
        data["preset"] = rng.choice(["sdxl/character", "flux1/style", "nope/none", "../../etc", 5])
    return data


def as_toml(data: dict) -> str | None:
    lines = []
    for section, body in data.items():
        if section == "preset":
            try:
                lines.insert(0, f"preset = {toml_value(body)}")
            except TypeError:
                return None
            continue
        if not isinstance(body, dict):
            return None
        lines.append(f"[{section}]" if section.isidentifier() else f"[{toml_value(section)}]")
        for key, value in body.items():
            try:
                lines.append(f"{toml_value(key) if not key.isidentifier() else key} = {toml_value(value)}")
            except (TypeError, AttributeError):
                return None
    return "\n".join(lines) + "\n"


class ReachedModelLoad(Exception):
    """Raised where the base model would load: the start of train went through."""


def _one_line_error(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.startswith("lorakit: error: ")]
    return len(lines) == 1 and "Traceback" not in text


def run_fuzz(n: int, tmp_path: Path, monkeypatch) -> dict[str, int]:
    dataset = simple_dataset(tmp_path / "data", {"2_zkx toy": [(64, 64), (96, 64)]})
    for fam in ("sdxl", "flux1", "flux2"):
        def refuse(self, *a, **k):
            raise ReachedModelLoad()
        monkeypatch.setattr(get_family(fam).Adapter, "load", refuse)
    # a multi-process run (distributed.num_machines > 1) starts its ranks here, after every check (issue 24)
    monkeypatch.setattr("lorakit.train.distributed._run_ranks", refuse)
    monkeypatch.chdir(tmp_path)
    rng = random.Random(20261207)
    counts = {"configs": 0, "loaded": 0, "refused": 0, "show_ok": 0, "train_reached_model": 0, "train_refused": 0}
    for i in range(n):
        data = draw_config(rng, dataset)
        counts["configs"] += 1
        work = tmp_path / f"c{i}"
        work.mkdir()
        text = as_toml(data)
        cfg_file = work / "run.toml"
        loaded = False
        try:
            if text is not None:
                cfg_file.write_text(text, encoding="utf-8", errors="surrogatepass")
                load_config(cfg_file, [f"save.dir={work / 'out'}"])
            else:
                load_config(work / "run.toml", [f"save.dir={work / 'out'}"], data=data)
        except ConfigError as exc:
            assert "\n" not in str(exc), (data, str(exc))
            counts["refused"] += 1
        except Exception:  # noqa: BLE001 - anything else is the failure this test looks for
            pytest.fail(f"config {i}: load raised a traceback for {data!r}:\n{traceback.format_exc()}")
        else:
            counts["loaded"] += 1
            loaded = True
        if text is None:
            continue
        faces = [(["config", "show", str(cfg_file), f"save.dir={work / 'out'}"], "show")]
        if loaded or i % 5 == 0:  # train reads the config as show does: a refused one is tried one time in five
            faces.append((["train", str(cfg_file), f"save.dir={work / 'out'}"], "train"))
        for argv, label in faces:
            out, err = io.StringIO(), io.StringIO()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    rc = main(argv)
            except ReachedModelLoad:
                counts["train_reached_model"] += 1
                leftovers = [p for p in (work / "out").rglob("*")] if (work / "out").exists() else []
                assert not leftovers, f"config {i}: a failed start left {leftovers}"
                continue
            except Exception:  # noqa: BLE001
                pytest.fail(f"config {i}: `lorakit {label}` raised for {text!r}:\n{traceback.format_exc()}")
            if rc == 0:
                assert label == "show", (label, text)
                counts["show_ok"] += 1
            else:
                assert rc == 2 and _one_line_error(err.getvalue()), (label, rc, text, err.getvalue())
                if label == "train":
                    counts["train_refused"] += 1
                    left = [p for p in (work / "out").rglob("*")] if (work / "out").exists() else []
                    assert not left, f"config {i}: a refused start left {left}"
    return counts


def test_config_fuzz_through_show_and_train_start(tmp_path, monkeypatch):
    counts = run_fuzz(300, tmp_path, monkeypatch)
    print(counts)
    assert counts["configs"] == 300
    # the draw is useful only if it reaches both ends: many refused, and many train starts up to the model
    assert counts["refused"] > 100 and counts["train_reached_model"] > 40, counts


@pytest.mark.slow
def test_config_fuzz_1200(tmp_path, monkeypatch):
    counts = run_fuzz(1200, tmp_path, monkeypatch)
    print(counts)
    assert counts["configs"] == 1200 and counts["train_reached_model"] > 160, counts
