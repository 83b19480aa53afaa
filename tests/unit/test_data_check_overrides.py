"""`lorakit data check DIR key=value` honours the overrides, and the bucket-range error names the key to change
(issue 26)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.errors import ConfigError
from lorakit.data.buckets import BucketSettings, validate
from lorakit.toy.world import write_demo_dataset


def test_data_check_on_a_folder_honours_overrides(tmp_path, capsys):
    write_demo_dataset(tmp_path / "d", n=2, repeats=1)
    # the default buckets (256..2048) refuse a 64-px resolution, naming the key that lets it in
    assert main(["data", "check", str(tmp_path / "d"), "data.resolution=64", "--family", "sdxl"]) == 2
    err = capsys.readouterr().err
    # said when the overrides are read (config validation), before the folder is scanned
    assert "data.resolution: 64 (square bucket 64) is smaller than data.min_bucket_reso (256)" in err
    assert "set data.min_bucket_reso to at most 64" in err
    assert main(["data", "check", str(tmp_path / "d"), "data.resolution=64", "data.min_bucket_reso=64",
                 "--family", "sdxl"]) == 0
    assert "buckets: 64x64:2" in capsys.readouterr().out
    # an unknown key is refused, not ignored
    assert main(["data", "check", str(tmp_path / "d"), "data.nope=1"]) == 2
    assert "data.nope" in capsys.readouterr().err


@pytest.mark.parametrize("resolution,key,to", [(64, "min_bucket_reso", "at most 64"),
                                               (4096, "max_bucket_reso", "at least 4096")])
def test_the_bucket_range_error_names_the_key_to_change(resolution, key, to):
    settings = BucketSettings((resolution, resolution), min_reso=256, max_reso=2048, step=64)
    with pytest.raises(ConfigError, match=rf"^data.{key}: .*set data.{key} to {to}"):
        validate(settings, 64)


def test_the_report_lists_nested_folders_orphan_captions_and_flattened_transparency(tmp_path, capsys):
    from PIL import Image

    from lorakit.config.schema import DataCfg
    from lorakit.data.scan import scan_dataset

    sub = tmp_path / "d" / "5_zkx"
    (sub / "more").mkdir(parents=True)
    Image.new("RGB", (256, 256), "red").save(sub / "a.png")
    (sub / "a.txt").write_text("zkx red")
    clear = Image.new("RGBA", (256, 256), (0, 0, 255, 255))
    clear.putpixel((3, 3), (0, 0, 255, 0))                       # one transparent pixel
    clear.save(sub / "b.png")
    Image.new("RGBA", (256, 256), (0, 255, 0, 255)).save(sub / "opaque.png")   # alpha channel, all opaque
    Image.new("RGB", (256, 256), "blue").save(sub / "more" / "c.png")
    (sub / "gone.txt").write_text("an image that was deleted")
    report = scan_dataset(DataCfg(dir=str(tmp_path / "d")), divisibility=64).report
    found: dict[str, str] = {}
    for p in report.problems:
        found[Path(p.file).name] = found.get(Path(p.file).name, "") + p.reason + "|"
    assert report.usable == 3
    assert found["more"].startswith("nested folder: not used")
    assert found["gone.txt"].startswith("caption file without an image")
    assert "transparent pixels are flattened onto white" in found["b.png"]
    assert "flattened" not in found.get("opaque.png", "") and "a.txt" not in found
    assert main(["data", "check", str(tmp_path / "d"), "data.resolution=256"]) == 0
    out = capsys.readouterr().out
    assert "nested folder" in out and "caption file without an image" in out and "flattened onto white" in out
