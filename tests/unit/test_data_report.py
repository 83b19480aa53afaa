"""DataReport: counts, steps per epoch, table and JSON forms."""

from __future__ import annotations

import json
import math

from lorakit.config.schema import DataCfg
from lorakit.data.report import check
from lorakit.data.scan import scan_dataset
from tests.unit.data_corpus import simple_dataset

SMALL = dict(resolution=128, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=32)


def _ds(tmp_path):
    root = simple_dataset(tmp_path / "d", {"3_ohwx": [(64, 64)] * 5 + [(96, 64)] * 2, "2_sks": [(64, 96)] * 3})
    (root / "3_ohwx" / "broken.png").write_bytes(b"")
    return scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32)


def test_counts_and_steps(tmp_path):
    r = _ds(tmp_path).report
    assert r.usable == 10 and len(r.skipped) == 1 and r.skipped[0].reason == "zero-byte file"
    assert {(s.images, s.repeats, s.samples) for s in r.subsets} == {(7, 3, 21), (3, 2, 6)}
    assert r.buckets == {(128, 128): 5, (160, 96): 2, (96, 160): 3}
    for bs in (1, 2, 3, 4):
        # each bucket is cut separately: 15, 6 and 6 samples
        assert r.steps_per_epoch(bs) == math.ceil(15 / bs) + math.ceil(6 / bs) + math.ceil(6 / bs)
    assert r.samples_per_epoch() == 27


def test_check_rebuilds_same_report(tmp_path):
    ds = _ds(tmp_path)
    again = check(ds)
    assert again.to_json(2) == ds.report.to_json(2)


def test_table_and_json(tmp_path):
    r = _ds(tmp_path).report
    j = r.to_json(batch_size=2)
    json.dumps(j)
    assert j["usable"] == 10 and j["skipped"] == 1 and j["steps_per_epoch"] == 8 + 3 + 3
    assert j["buckets"] == {"128x128": 5, "160x96": 2, "96x160": 3}
    assert j["problems"][0]["action"] == "skipped" and j["problems"][0]["file"].endswith("broken.png")
    table = r.to_table(batch_size=2)
    lines = table.splitlines()
    assert lines[0].split() == ["subset", "kind", "images", "repeats", "samples"]
    assert any(ln.split()[-3:] == ["7", "3", "21"] for ln in lines)
    assert "steps/epoch (batch 2): 14" in table
    assert any(ln.startswith("skipped  3_ohwx/broken.png") and ln.endswith("zero-byte file") for ln in lines)


def test_metadata_helpers(tmp_path):
    from lorakit.data.report import bucket_info, dataset_dirs
    ds = _ds(tmp_path)
    assert dataset_dirs(ds) == {"3_ohwx": {"n_repeats": 3, "img_count": 7}, "2_sks": {"n_repeats": 2, "img_count": 3}}
    assert dataset_dirs(ds, is_reg=True) == {}
    info = bucket_info(ds)
    assert info["buckets"] == {0: {"resolution": [96, 160], "count": 6}, 1: {"resolution": [128, 128], "count": 15},
                               2: {"resolution": [160, 96], "count": 6}}
    # 64x96 in 96x160: |0.6667-0.6|; 64x64 in 128: 0; 96x64 in 160x96: |1.5-1.6667|
    want = (3 * abs(64 / 96 - 96 / 160) + 2 * abs(96 / 64 - 160 / 96)) / 10
    assert abs(info["mean_img_ar_error"] - want) < 1e-12
    json.dumps(info)
