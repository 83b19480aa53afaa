"""Dataset scan: folder convention, captions, the bad-input corpus, reg balancing, errors, no input modified."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
import torch

from lorakit.config.schema import DataCfg
from lorakit.data.captions import tag_frequency
from lorakit.data.images import load_for_bucket
from lorakit.data.scan import scan_dataset
from lorakit.errors import ConfigError, DataError
from tests.unit.data_corpus import bad_corpus, caption, rgb, save, simple_dataset, snapshot

SMALL = dict(resolution=128, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=32)


def _problems(ds, path: Path) -> list[tuple[str, str]]:
    return [(p.action, p.reason) for p in ds.report.problems if p.file == str(path)]


@pytest.fixture
def corpus(tmp_path):
    files = bad_corpus(tmp_path / "data")
    before = snapshot(tmp_path / "data")
    ds = scan_dataset(DataCfg(dir=str(tmp_path / "data"), **SMALL), divisibility=32)
    return ds, files, before, tmp_path / "data"


SKIPPED = {
    "dup": "exact duplicate of",
    "zero": "zero-byte file",
    "truncated": "truncated file",
    "text_png": "not an image despite its extension",
    "tiny": "too small to train",
    "dir_png": "unreadable",
    "broken_link": "unreadable",
    "no_repeats_dir": "folder name has no repeats prefix",
}
USED = ["good", "png_as_jpg", "cmyk", "deep16", "anim", "pano", "bom", "latin1", "exif", "rgba"]


@pytest.mark.parametrize("name,reason", sorted(SKIPPED.items()))
def test_corpus_skipped_files_are_listed_with_reason(corpus, name, reason):
    ds, files, _, _ = corpus
    probs = _problems(ds, files[name])
    assert any(a == "skipped" and r.startswith(reason) for a, r in probs), probs
    assert files[name] not in {it.path for it in ds.items}


def test_corpus_used_files_and_their_warnings(corpus):
    ds, files, _, _ = corpus
    by_path = {it.path: it for it in ds.items}
    assert set(by_path) == {files[n] for n in USED}
    assert ds.report.usable == len(USED)
    warn = lambda n: [r for a, r in _problems(ds, files[n]) if a == "warning"]  # noqa: E731
    assert any(r.startswith("content is PNG but the extension is .jpg") for r in warn("png_as_jpg"))
    assert any(r.startswith("animated (3 frames)") for r in warn("anim"))
    assert any(r.startswith("extreme aspect ratio") for r in warn("pano"))
    assert any("not UTF-8" in r for r in warn("latin1"))
    assert any("only the first is used" in r for r in warn("bom"))
    assert any(r.startswith("too small: 32x64") for r in warn("exif"))
    assert any(r.startswith("missing caption") for r in warn("cmyk"))
    assert not warn("good")


def test_corpus_captions(corpus):
    ds, files, _, _ = corpus
    by_path = {it.path: it for it in ds.items}
    assert (by_path[files["good"]].caption, by_path[files["good"]].caption_source) == ("ohwx woman, smiling", "file")
    assert by_path[files["bom"]].caption == "ohwx woman, with bom"
    assert (by_path[files["latin1"]].caption, by_path[files["latin1"]].caption_source) == \
        ("ohwx woman", "class_tokens")
    assert (by_path[files["cmyk"]].caption, by_path[files["cmyk"]].caption_source) == ("ohwx woman", "class_tokens")


def test_corpus_geometry(corpus):
    ds, files, _, _ = corpus
    by_path = {it.path: it for it in ds.items}
    assert by_path[files["exif"]].original_size == (32, 64)       # EXIF rotation applied
    pano = by_path[files["pano"]]
    assert pano.original_size == (20000, 50) and pano.bucket == (256, 64)
    assert pano.resized_size == (25600, 64) and pano.crop == ((25600 - 256) // 2, 0)
    assert (pano.original_hw, pano.crop_top_left, pano.target_hw) == ((50, 20000), (0, 12672), (64, 256))
    for it in ds.items:
        assert it.bucket[0] % 32 == 0 and it.bucket[1] % 32 == 0
        assert it.subset == 0 and it.repeats == 10 and not it.is_reg and it.loss_weight == 1.0
    assert ds.buckets == ds.report.buckets and sum(ds.buckets.values()) == len(USED)


def test_corpus_never_modified(corpus):
    ds, _, before, root = corpus
    for it in ds.items:
        t = load_for_bucket(it, flip=True)
        assert t.shape == (3, it.bucket[1], it.bucket[0]) and t.dtype == torch.float32
    assert snapshot(root) == before


def test_folder_convention_repeats_class_tokens_and_reg_balance(tmp_path):
    root = simple_dataset(tmp_path / "train", {"3_ohwx dog": [(64, 64)] * 4, "2_sks cat": [(96, 64)] * 2})
    reg = simple_dataset(tmp_path / "reg", {"1_dog": [(64, 64)] * 5})
    ds = scan_dataset(DataCfg(dir=str(root), reg_dir=str(reg), prior_loss_weight=0.5, **SMALL), divisibility=32)
    assert [(s.dir.name, s.repeats, s.class_tokens, s.is_reg) for s in ds.subsets] == \
        [("2_sks cat", 2, "sks cat", False), ("3_ohwx dog", 3, "ohwx dog", False), ("1_dog", 1, "dog", True)]
    train = sum(it.repeats for it in ds.items if not it.is_reg)
    assert train == 4 * 3 + 2 * 2 == 16
    reg_items = [it for it in ds.items if it.is_reg]
    # 5 reg images × 1 repeat = 5 < 16, so passes add one each in turn: 16 = 5 + 5 + 5 + 1
    assert [it.repeats for it in reg_items] == [4, 3, 3, 3, 3]
    assert all(it.loss_weight == 0.5 for it in reg_items)
    assert ds.report.samples_per_epoch() == 32


def test_reg_surplus_is_reported(tmp_path):
    root = simple_dataset(tmp_path / "train", {"1_ohwx dog": [(64, 64)] * 2})
    reg = simple_dataset(tmp_path / "reg", {"1_dog": [(64, 64)] * 5})
    ds = scan_dataset(DataCfg(dir=str(root), reg_dir=str(reg), **SMALL), divisibility=32)
    assert sum(it.repeats for it in ds.items if it.is_reg) == 2
    assert any(p.reason.startswith("3 regularisation image(s) not needed") for p in ds.report.problems)


def test_trigger_and_token_limit_warnings(tmp_path):
    root = tmp_path / "d"
    p1 = save(rgb(64, 64, 1), root / "5_ohwx man" / "a.png")
    caption(p1, "a man, OHWX, beach")                     # case-insensitive: found
    p2 = save(rgb(64, 64, 2), root / "5_ohwx man" / "b.png")
    caption(p2, "a man on a beach ohwxx " + "word " * 20)   # no whole-word trigger, long
    ds = scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32,
                      count_tokens=lambda s: len(s.split()), max_tokens=10)
    assert not any("trigger" in r for _, r in _problems(ds, p1))
    reasons = [r for _, r in _problems(ds, p2)]
    assert "trigger word 'ohwx' not in the caption" in reasons
    assert any(r.startswith("caption is 26 tokens") for r in reasons)
    ds2 = scan_dataset(DataCfg(dir=str(root), trigger="beach", **SMALL), divisibility=32)
    assert not any("trigger" in p.reason for p in ds2.report.problems)


def test_all_missing_captions_is_one_line(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        save(rgb(64, 64, i), root / "2_ohwx" / f"{i}.png")
    ds = scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32)
    lines = [p for p in ds.report.problems if "caption" in p.reason]
    assert len(lines) == 1 and lines[0].file == str(root / "2_ohwx")
    assert {it.caption for it in ds.items} == {"ohwx"}


def test_nothing_usable_raises_data_error(tmp_path):
    root = tmp_path / "d"
    (root / "10_x").mkdir(parents=True)
    (root / "10_x" / "a.png").write_bytes(b"")
    (root / "10_x" / "b.png").write_text("hello")
    with pytest.raises(DataError, match=r"^no usable image in .*d: 2 file\(s\) skipped") as ei:
        scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32)
    assert len(ei.value.report.skipped) == 2


def test_loose_images_and_missing_dir(tmp_path):
    root = tmp_path / "d"
    save(rgb(64, 64), root / "a.png")
    with pytest.raises(DataError, match="no training subfolder"):
        scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32)
    with pytest.raises(ConfigError, match="^data.dir: folder .* not found"):
        scan_dataset(DataCfg(dir=str(tmp_path / "nope"), **SMALL))
    with pytest.raises(ConfigError, match="^data.dir"):
        scan_dataset(DataCfg())


def test_divisibility_enforced(tmp_path):
    root = simple_dataset(tmp_path / "d", {"1_a": [(64, 64)]})
    with pytest.raises(ConfigError, match=r"^data.bucket_reso_steps: 32 is not a multiple of 64"):
        scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=64)


def test_tag_frequency(tmp_path):
    root = simple_dataset(tmp_path / "d", {"1_ohwx": [(64, 64)] * 4})
    ds = scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32)
    freq = tag_frequency(ds)
    assert freq == {"1_ohwx": {"ohwx": 4, "picture 0": 1, "picture 1": 1, "picture 2": 1, "picture 3": 1,
                               "tag0": 2, "tag1": 1, "tag2": 1}}


def test_empty_caption_zero_repeats_hidden_and_unsupported(tmp_path):
    root = tmp_path / "d"
    p = save(rgb(64, 64, 1), root / "4_ohwx" / "a.png")
    caption(p, "   \n")
    q = save(rgb(64, 64, 2), root / "4_ohwx" / "b.png")
    caption(q, "ohwx, fine")
    save(rgb(64, 64, 3), root / "4_ohwx" / "c.tiff")
    save(rgb(64, 64, 4), root / "0_zero" / "z.png")
    save(rgb(64, 64, 5), root / ".hidden" / "h.png")
    save(rgb(64, 64, 6), root / "4_ohwx" / ".thumb.png")
    ds = scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32)
    by = {it.path.name: it for it in ds.items}
    assert set(by) == {"a.png", "b.png"}
    assert (by["a.png"].caption, by["a.png"].caption_source) == ("ohwx", "class_tokens")
    assert ("warning", "empty caption: class tokens 'ohwx' used") in _problems(ds, p)
    assert _problems(ds, root / "4_ohwx" / "c.tiff")[0][0] == "skipped"
    assert _problems(ds, root / "0_zero")[0][1].startswith("0 repeats")
    assert not [x for x in ds.report.problems if "hidden" in x.file or "thumb" in x.file]


def test_other_caption_extension_hint(tmp_path):
    root = tmp_path / "d"
    for i in range(2):
        caption(save(rgb(64, 64, i), root / "1_ohwx" / f"{i}.png"), "ohwx, tag", ext=".caption")
    ds = scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32)
    assert any('set data.caption_extension = ".caption"' in x.reason for x in ds.report.problems)
    ds = scan_dataset(DataCfg(dir=str(root), caption_extension=".caption", **SMALL), divisibility=32)
    assert {it.caption_source for it in ds.items} == {"file"} and not ds.report.problems


def test_no_upscale_buckets_follow_image_size(tmp_path):
    root = tmp_path / "d"
    save(rgb(200, 100, 1), root / "1_ohwx" / "big.png")       # area 20000 > 128²: scaled down
    save(rgb(70, 100, 2), root / "1_ohwx" / "small.png")      # smaller: never upscaled, floored to 32s
    save(Image.new("RGB", (4000, 40)), root / "1_ohwx" / "strip.png")  # scaled down, height < one step
    ds = scan_dataset(DataCfg(dir=str(root), bucket_no_upscale=True, **SMALL), divisibility=32)
    by = {it.path.name: it for it in ds.items}
    # big: scale √(16384/20000) = 0.905 → 181x91 → bucket 160x64
    assert (by["big.png"].resized_size, by["big.png"].bucket, by["big.png"].crop) == ((181, 91), (160, 64), (10, 13))
    assert (by["small.png"].resized_size, by["small.png"].bucket) == ((70, 100), (64, 96))
    assert _problems(ds, root / "1_ohwx" / "strip.png")[0][0] == "skipped"
    assert not any(x.reason.startswith("too small:") for x in ds.report.problems)
