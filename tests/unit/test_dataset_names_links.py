"""Non-UTF-8 file and folder names, and symlinks that leave the dataset folder: `data check` (scan_dataset)
reports them with the reason and training skips them the same way; caption text from outside the dataset never
reaches the items (so never the LoRA's metadata) unless data.follow_symlinks = true; caching never crashes."""

from __future__ import annotations

import os
import sys

import pytest

from lorakit.config.load import load_config
from lorakit.config.schema import DataCfg
from lorakit.data.cache import LatentCache
from lorakit.data.scan import scan_dataset
from lorakit.errors import ConfigError
from tests.unit.data_corpus import rgb, save, simple_dataset
from tests.unit.test_data_cache import SMALL, FakeVAE

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bytes names and symlinks as on Linux")


def _scan(root, **kw):
    return scan_dataset(DataCfg(dir=str(root), **SMALL, **kw), divisibility=32)


def _by_reason(ds):
    return {p.file: (p.action, p.reason) for p in ds.problems}


def test_non_utf8_names_are_reported_and_skipped_never_crashing(tmp_path):
    root = simple_dataset(tmp_path / "d", {"2_ohwx": [(64, 64)] * 2})
    broot = os.fsencode(root)
    save(rgb(64, 64, seed=5), tmp_path / "tmp.png")
    os.rename(os.fsencode(tmp_path / "tmp.png"), broot + b"/2_ohwx/caf\xe9.png")
    os.mkdir(broot + b"/3_ohwx \xff")
    save(rgb(64, 64, seed=6), tmp_path / "tmp2.png")
    os.rename(os.fsencode(tmp_path / "tmp2.png"), broot + b"/3_ohwx \xff/a.png")
    ds = _scan(root)
    assert len(ds.items) == 2 and all(it.path.name.isascii() for it in ds.items)
    problems = _by_reason(ds)
    assert problems[f"{root}/2_ohwx/caf\\xe9.png"][0] == "skipped"
    assert problems[f"{root}/3_ohwx \\xff"][1].startswith("name is not valid UTF-8")
    table = ds.report.to_table(1)
    table.encode("utf-8")  # printable as is: the undecodable byte is shown as \xe9
    assert "caf\\xe9.png" in table
    # the same scan feeds training: caching the usable items works, and an item with such a name does too
    cache = LatentCache(tmp_path / "c", "vae")
    bad = ds.items[0]
    bad.path = type(bad.path)(os.fsdecode(broot + b"/2_ohwx/caf\xe9.png"))
    cache.ensure(ds.items, FakeVAE(), flip=False, progress=False, log=None)
    assert cache.get(bad).ndim == 3


def test_non_utf8_path_in_an_override_is_refused_with_the_key(tmp_path):
    bad = os.fsdecode(os.fsencode(tmp_path) + b"/\xff")
    with pytest.raises(ConfigError, match=r"^data.dir: must be valid UTF-8 .*\\\\xff"):
        load_config(overrides=["model.family=sdxl", "model.checkpoint=/m.safetensors", f"data.dir={bad}"])


@pytest.fixture
def linked(tmp_path):
    """A dataset with: an image linked from outside, a folder linked from outside, a caption linked from outside,
    and an image linked from inside the dataset folder (allowed)."""
    root = simple_dataset(tmp_path / "d", {"2_ohwx": [(64, 64)] * 2})
    outside = tmp_path / "outside"
    save(rgb(64, 64, seed=11), outside / "secret.png")
    (outside / "secret.txt").write_text("ohwx, SECRET CAPTION FROM OUTSIDE")
    save(rgb(64, 64, seed=12), outside / "3_ohwx" / "x.png")
    save(rgb(64, 64, seed=13), root / "2_ohwx" / "captioned.png")
    os.symlink(outside / "secret.png", root / "2_ohwx" / "linked.png")
    os.symlink(outside / "secret.txt", root / "2_ohwx" / "captioned.txt")
    os.symlink(outside / "3_ohwx", root / "3_ohwx")
    save(rgb(64, 64, seed=14), root / "inside" / "in.png")
    os.symlink(root / "inside" / "in.png", root / "2_ohwx" / "inside_link.png")
    return root


def test_symlinks_leaving_the_dataset_are_reported_and_not_followed(linked):
    ds = _scan(linked)
    names = sorted(it.path.name for it in ds.items)
    assert names == ["captioned.png", "img000.png", "img001.png", "inside_link.png"]
    problems = _by_reason(ds)
    assert problems[f"{linked}/2_ohwx/linked.png"] == ("skipped", problems[f"{linked}/2_ohwx/linked.png"][1])
    assert "outside the dataset folder: not followed; set data.follow_symlinks = true" in \
        problems[f"{linked}/2_ohwx/linked.png"][1]
    assert problems[f"{linked}/3_ohwx"][0] == "skipped"
    assert "captioned.txt is a symlink outside the dataset folder: not read" in \
        problems[f"{linked}/2_ohwx/captioned.png"][1]
    assert all("SECRET" not in it.caption for it in ds.items)  # never reaches the captions, so never the metadata


def test_follow_symlinks_true_uses_them(linked):
    ds = _scan(linked, follow_symlinks=True)
    names = sorted(it.path.name for it in ds.items)
    assert names == ["captioned.png", "img000.png", "img001.png", "inside_link.png", "linked.png", "x.png"]
    assert any("SECRET" in it.caption for it in ds.items)


def test_follow_symlinks_is_a_documented_config_key(tmp_path):
    cfg = load_config(data={"model": {"family": "sdxl", "checkpoint": "/m.safetensors"},
                            "data": {"dir": "/d", "follow_symlinks": True}})
    assert cfg.data.follow_symlinks is True
    with pytest.raises(ConfigError, match="^data.follow_symlinks: must be true or false"):
        load_config(data={"model": {"family": "sdxl", "checkpoint": "/m.safetensors"},
                          "data": {"dir": "/d", "follow_symlinks": "yes"}})
