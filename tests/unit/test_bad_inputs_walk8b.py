"""Bug bash of the dataset pipeline with messy real-world folders (walk 8b): each test is one defect found."""

from __future__ import annotations

from pathlib import Path

from lorakit.config.schema import DataCfg
from lorakit.data.scan import scan_dataset
from tests.unit.data_corpus import rgb, save

SMALL = dict(resolution=128, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=32)


def _scan(root: Path):
    return scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32)


def _reasons(ds, path: Path) -> list[str]:
    return [f"{p.action}: {p.reason}" for p in ds.report.problems if p.file == str(path)]


def test_a_utf16_caption_with_bom_is_read_not_ignored(tmp_path):
    sub = tmp_path / "d" / "2_zkx"
    save(rgb(128, 128), sub / "a.png")
    save(rgb(128, 128, seed=1), sub / "b.png")
    (sub / "a.txt").write_bytes("zkx, ünïcode\r\nsecond".encode("utf-16"))       # Notepad's "Unicode": LE + BOM
    (sub / "b.txt").write_bytes("zkx, café".encode("latin-1"))                     # still refused, named
    ds = _scan(tmp_path / "d")
    caps = {it.path.name: (it.caption, it.caption_source) for it in ds.items}
    assert caps["a.png"] == ("zkx, ünïcode", "file")
    assert caps["b.png"] == ("zkx", "class_tokens")
    assert any("b.txt is not UTF-8" in r for r in _reasons(ds, sub / "b.png"))
