"""`lorakit data check DIR key=value` honours the overrides, and the bucket-range error names the key to change
(issue 26)."""

from __future__ import annotations

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
    assert "data.min_bucket_reso: the square bucket of the resolution (64)" in err
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
