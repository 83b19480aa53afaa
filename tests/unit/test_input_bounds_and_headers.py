"""Every numeric config key is bounded on both sides (huge values are the key-naming line, not a torch crash);
deeply nested JSON in a safetensors header or metadata value is one line in `inspect` and `train`, never a
RecursionError; `inspect` flags NaN/Inf tensors of a LoRA."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from safetensors.torch import save_file

from lorakit.cli import main
from lorakit.config.fields import BOUNDS, SEED_MAX, field_specs
from lorakit.config.load import load_config
from lorakit.errors import ConfigError
from tests.unit.data_corpus import simple_dataset

BASE = ["model.family=sdxl", "model.checkpoint=/m.safetensors", "data.dir=/d"]


def test_every_numeric_key_has_a_lower_and_an_upper_bound():
    for section in field_specs().values():
        for spec in section.values():
            if spec.base in (int, float) and spec.meta.get("kind") is None:
                assert {"ge", "gt"} & set(spec.meta) and {"le", "lt"} & set(spec.meta), spec.key
    assert set(BOUNDS) <= {s.key for sec in field_specs().values() for s in sec.values()}


@pytest.mark.parametrize("override,message", [
    (f"training.seed={2**64}", f"training.seed: must be an integer ≥ 0 and ≤ {SEED_MAX}, got {2**64}"),
    (f"sample.seed={2**64 + 5}", f"sample.seed: must be an integer ≥ 0 and ≤ {SEED_MAX}, got {2**64 + 5}"),
    ("save.keep_last=1e308", "save.keep_last: must be an integer ≥ 1 and ≤ 10000, got 1e+308"),
    ("sample.width=1e308", "sample.width: must be an integer ≥ 64 and ≤ 16384, got 1e+308"),
    ("training.gradient_accumulation=1e308",
     "training.gradient_accumulation: must be an integer ≥ 1 and ≤ 4096, got 1e+308"),
    ("network.conv_rank=1e308", "network.conv_rank: must be an integer ≥ 0 and ≤ 4096, got 1e+308"),
    ("training.max_steps=100000001", "training.max_steps: must be an integer ≥ 1 and ≤ 100000000, got 100000001"),
    ("optimizer.lr=1e300", "optimizer.lr: must be a number > 0 and ≤ 100, got 1e+300"),
    ("training.logit_mean=-1e300", "training.logit_mean: must be a number ≥ -100, got -1e+300"),
    ("network.module_ranks.single=99999", "network.module_ranks.single: must be an integer ≥ 0 and ≤ 4096, got 99999"),
    ("network.rank=0", "network.rank: must be an integer ≥ 1, got 0"),  # a cap is named only when exceeded
])
def test_huge_values_are_the_key_naming_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=BASE + [override])
    assert str(e.value) == message


def test_largest_allowed_values_load():
    cfg = load_config(overrides=BASE + [f"training.seed={SEED_MAX}", f"sample.seed={SEED_MAX}", "save.keep_last=10000",
                                        "sample.width=16384", "network.rank=4096"])
    assert cfg.training.seed == SEED_MAX and torch.Generator().manual_seed(cfg.training.seed).initial_seed() == SEED_MAX
    assert math.isfinite(cfg.network.alpha)


def _deep_header_file(path, depth=100_000):
    raw = ('{"a": ' + "[" * depth + "]" * depth + "}").encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def _lora(path, metadata=None, nan=False):
    up = torch.full((4, 2), float("nan")) if nan else torch.ones(4, 2)
    save_file({"lora_unet_a.lora_down.weight": torch.ones(2, 4), "lora_unet_a.lora_up.weight": up,
               "lora_unet_a.alpha": torch.tensor(1.0)}, str(path), metadata=metadata)
    return path


def test_deep_header_is_one_line_in_inspect_and_train(tmp_path, capsys):
    bad = _deep_header_file(tmp_path / "deep.safetensors")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"lorakit: error: {bad}: corrupt safetensors header (JSON nested more than 8 deep)\n"
    data = simple_dataset(tmp_path / "d", {"1_zkx": [(64, 64)]})
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[model]\nfamily = "sdxl"\ncheckpoint = "{bad}"\n[data]\ndir = "{data}"\nresolution = 64\n'
                   f'min_bucket_reso = 64\n[training]\ndevice = "cpu"\nmixed_precision = "no"\n[sample]\nprompts = []\n'
                   f'[save]\ndir = "{tmp_path / "out"}"\n[log]\ntensorboard = false\nprogress = false\n')
    assert main(["train", str(cfg)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lorakit")]
    assert lines == [f"lorakit: error: model.checkpoint: {bad}: corrupt safetensors header (JSON nested more than 8 "
                     "deep)"], lines  # (the key named since the ninth walk)
    assert not (tmp_path / "out" / "lora").exists()  # a failed start leaves no run folder


@pytest.fixture
def no_family_fit(monkeypatch):
    """inspect's key match against every family (seconds on first use) is not what these tests check."""
    monkeypatch.setattr("lorakit.lora.inspect.family_fit", lambda names, widths=None: {})


def test_deep_metadata_value_never_recurses(tmp_path, capsys, no_family_fit):
    f = _lora(tmp_path / "meta.safetensors", {"ss_tag_frequency": "[" * 100_000 + "]" * 100_000})
    assert main(["inspect", str(f)]) == 0
    out = capsys.readouterr().out
    assert "ss_tag_frequency: [[[[" in out  # shown as text, not parsed


def test_inspect_flags_nan_and_inf(tmp_path, capsys, no_family_fit):
    assert main(["inspect", str(_lora(tmp_path / "nan.safetensors", nan=True))]) == 0
    out = capsys.readouterr().out
    assert "warning: 1 tensor(s) hold NaN/Inf" in out and "lora_unet_a.lora_up.weight" in out
    assert main(["inspect", "--json", str(_lora(tmp_path / "ok.safetensors"))]) == 0
    import json
    assert json.loads(capsys.readouterr().out)["nonfinite"] == []
    assert main(["inspect", str(tmp_path / "ok.safetensors")]) == 0
    assert "values: all finite (no NaN/Inf)" in capsys.readouterr().out
