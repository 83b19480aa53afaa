"""Bug bash of the dataset pipeline with messy real-world folders (walk 8b): each test is one defect found."""

from __future__ import annotations

import json
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


def test_an_image_and_a_symlink_to_it_keep_the_file_and_its_caption(tmp_path):
    sub = tmp_path / "d" / "2_zkx"
    save(rgb(128, 128), sub / "ok.png")
    (sub / "ok.txt").write_text("zkx, the real caption")
    (sub / "a_link.png").symlink_to("ok.png")          # sorts first by name: was kept, and ok.png's caption lost
    (sub / "gone.png").symlink_to("deleted.png")
    save(rgb(128, 128, seed=1), sub / "b.png")
    (sub / "c.png").write_bytes((sub / "b.png").read_bytes())
    (sub / "c.txt").write_text("zkx, c")
    ds = _scan(tmp_path / "d")
    assert {it.path.name: it.caption for it in ds.items} == {"ok.png": "zkx, the real caption", "b.png": "zkx"}
    assert _reasons(ds, sub / "a_link.png") == [f"skipped: exact duplicate of {sub / 'ok.png'}"]
    assert _reasons(ds, sub / "c.png") == [f"skipped: exact duplicate of {sub / 'b.png'} "
                                           "(its caption file c.txt is not used either)"]
    assert _reasons(ds, sub / "gone.png") == ["skipped: unreadable: broken symlink to deleted.png (the file it points "
                                              "to is missing); fix or remove the link"]


class _Stub:
    name, kind = "stub", "sentence"

    def caption(self, images):
        return [f"a picture {i}" for i in range(len(images))]


def _caption(folder: Path, overwrite: bool = False):
    from lorakit.caption.run import caption_dataset, list_targets
    from lorakit.caption.text import TextOptions

    targets, progress, _ = list_targets(folder)
    s = caption_dataset(targets, _Stub(), TextOptions(), progress_file=progress, overwrite=overwrite, log=lambda m: None)
    return {o.image: (o.status, o.reason) for o in s.outcomes}


def test_caption_of_two_images_sharing_a_stem_writes_one_caption_and_names_the_other(tmp_path):
    folder = tmp_path / "imgs"
    save(rgb(64, 64), folder / "a.png")
    save(rgb(64, 64, seed=1), folder / "a.jpg")
    out = _caption(folder)
    assert out["a.jpg"][0] == "captioned"
    assert out["a.png"] == ("failed", "shares the caption file a.txt with a.jpg (training reads it for both): not "
                                      "captioned; rename one so that each image has its own caption")
    assert (folder / "a.txt").read_text() == "a picture 0\n"
    out = _caption(folder, overwrite=True)            # before: a.png's caption replaced a.jpg's new one, backed up
    assert out["a.png"][0] == "failed" and out["a.jpg"][0] == "captioned"
    assert [p.name for p in folder.glob("*.bak*")] == ["a.txt.bak"]      # the first run's, once


def test_caption_says_why_a_kept_caption_file_is_useless_to_training(tmp_path):
    folder = tmp_path / "imgs"
    for i, name in enumerate(["e", "w", "l", "ok"]):
        save(rgb(64, 64, seed=i), folder / f"{name}.png")
    (folder / "e.txt").write_text("")
    (folder / "w.txt").write_text("  \n\t\n")
    (folder / "l.txt").write_bytes("café".encode("latin-1"))
    (folder / "ok.txt").write_bytes("ok".encode("utf-16"))
    out = _caption(folder)
    assert out["e.png"] == ("kept", "e.txt is empty, so training uses the folder's class tokens; --overwrite captions it")
    assert out["w.png"][1].startswith("w.txt is empty")
    assert out["l.png"] == ("kept", "l.txt is not UTF-8, so training ignores it; re-save it as UTF-8, or --overwrite "
                                    "captions it")
    assert out["ok.png"] == ("kept", "")


def test_a_dataset_toml_listing_one_folder_twice_says_so_once(tmp_path):
    for i in range(3):
        save(rgb(128, 128, seed=i), tmp_path / "imgA" / f"a{i}.png")
    toml = tmp_path / "ds.toml"
    toml.write_text('[[datasets]]\nresolution = 128\nmin_bucket_reso = 64\nmax_bucket_reso = 256\n'
                    'bucket_reso_steps = 32\n'
                    '[[datasets.subsets]]\nimage_dir = "imgA"\nnum_repeats = 2\n'
                    '[[datasets.subsets]]\nimage_dir = "imgA"\nnum_repeats = 3\ncaption_extension = ".caption"\n'
                    '[[datasets.subsets]]\nimage_dir = "./imgA/"\nis_reg = true\n')
    ds = scan_dataset(DataCfg(config=str(toml)), divisibility=32)
    assert [(it.path.name, it.subset, it.repeats) for it in ds.items] == [("a0.png", 0, 2), ("a1.png", 0, 2),
                                                                           ("a2.png", 0, 2)]
    lines = [(p.action, p.reason) for p in ds.report.problems if p.action == "skipped"]
    assert lines == [  # before: each image "exact duplicate of" itself, one line per image and subset
        ("skipped", "datasets[0].subsets[1]: the same folder as datasets[0].subsets[0]: not used (its images are "
                    "trained once, by the first); list the folder once, with num_repeats = 5 to train it as both would"),
        ("skipped", "datasets[0].subsets[2]: the same folder as datasets[0].subsets[0]: not used (its images are "
                    "trained once, by the first); a folder is either training or regularisation images; copy the "
                    "images for the other use")]


def test_a_damaged_mask_file_is_one_line_not_a_traceback(tmp_path):
    import pytest
    from lorakit.errors import DataError

    save(rgb(128, 128), tmp_path / "d" / "2_zkx" / "i0.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "i0.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as e:
        scan_dataset(DataCfg(dir=str(tmp_path / "d"), mask_dir=str(tmp_path / "masks"), **SMALL), divisibility=32)
    assert str(e.value) == (f"data.mask_dir: the mask {tmp_path / 'masks' / 'i0.png'} of {tmp_path / 'd/2_zkx/i0.png'} "
                            "cannot be read (not an image despite its extension); replace it with a valid image "
                            "(white = trained, black = ignored) or remove data.mask_dir")


def test_two_training_images_of_one_stem_cannot_share_a_mask_silently(tmp_path):
    import pytest
    from PIL import Image
    from lorakit.errors import DataError

    save(rgb(128, 128), tmp_path / "d" / "2_zkx" / "x.png")
    save(rgb(128, 192, seed=1), tmp_path / "d" / "3_other" / "x.jpg")
    save(Image.new("L", (128, 128), 255), tmp_path / "masks" / "x.png")
    with pytest.raises(DataError) as e:  # before: x.jpg took x.png's mask (here: "masks must match their images")
        scan_dataset(DataCfg(dir=str(tmp_path / "d"), mask_dir=str(tmp_path / "masks"), **SMALL), divisibility=32)
    assert str(e.value) == (f"data.mask_dir: {tmp_path / 'd/2_zkx/x.png'} and {tmp_path / 'd/3_other/x.jpg'} share "
                            "the file stem 'x', so both would use the one mask x.png (masks are found by stem); rename "
                            "one image so that each has its own mask")


def test_two_images_of_one_stem_sharing_a_caption_file_are_named(tmp_path):
    sub = tmp_path / "d" / "2_zkx"
    save(rgb(128, 128), sub / "a.png")
    save(rgb(128, 128, seed=1), sub / "a.jpg")
    (sub / "a.txt").write_text("zkx, a red cup")
    ds = _scan(tmp_path / "d")
    assert [it.caption for it in ds.items] == ["zkx, a red cup", "zkx, a red cup"]
    assert _reasons(ds, sub / "a.png") == ["warning: shares its caption file a.txt with a.jpg: both are trained with "
                                           "one caption; rename one and give it its own caption"]
    assert _reasons(ds, sub / "a.jpg")[0].startswith("warning: shares its caption file a.txt with a.png")
    from lorakit.data.report import duplicate_captions
    assert duplicate_captions(ds) == []           # not also "same caption as 1 other image(s); say what differs"


def test_caption_names_a_nested_folder_it_does_not_caption(tmp_path):
    from lorakit.caption.run import list_targets

    save(rgb(64, 64), tmp_path / "d" / "3_nest" / "top.png")
    save(rgb(64, 64, seed=1), tmp_path / "d" / "3_nest" / "sub" / "n.png")
    targets, _, problems = list_targets(tmp_path / "d")
    assert [t.image.name for t in targets] == ["top.png"]
    assert problems == [f"{tmp_path / 'd/3_nest/sub'}: nested folder: not captioned (training does not use it either); "
                        "move its images up or make it a subset of its own like '10_sub'"]


def test_a_utf16_caption_without_bom_is_read_not_trained_with_nul_bytes(tmp_path):
    sub = tmp_path / "d" / "2_zkx"
    for i, (name, raw) in enumerate([("le", "zkx, a cup".encode("utf-16-le")), ("be", "zkx, a mug".encode("utf-16-be")),
                                     ("nul", b"zkx\x00\xff junk")]):
        save(rgb(128, 128, seed=i), sub / f"{name}.png")
        (sub / f"{name}.txt").write_bytes(raw)
    ds = _scan(tmp_path / "d")
    caps = {it.path.stem: it.caption for it in ds.items}
    assert caps == {"le": "zkx, a cup", "be": "zkx, a mug", "nul": "zkx"}   # before: "z\x00k\x00x\x00…", no word
    assert "caption file nul.txt is not UTF-8" in _reasons(ds, sub / "nul.png")[0]


def test_the_ui_lists_a_utf16_caption_as_training_reads_it(tmp_path):
    from lorakit.ui.dataset import list_images

    sub = tmp_path / "d" / "2_zkx"
    save(rgb(64, 64), sub / "a.png")
    (sub / "a.txt").write_bytes("zkx, ünï".encode("utf-16"))    # before: "" (the UI read it as UTF-8 and gave up)
    assert list_images(tmp_path / "d") == [(sub / "a.png", "zkx, ünï")]


def test_a_caption_named_after_the_whole_image_name_says_how_to_rename_it(tmp_path):
    sub = tmp_path / "d" / "2_zkx"
    save(rgb(128, 128), sub / "a.png")
    (sub / "a.png.txt").write_text("zkx, a cup")                  # before: "caption file without an image"
    save(rgb(128, 128, seed=1), sub / "b.jpg")
    (sub / "b.jpg.txt").write_text("zkx, b")
    (sub / "b.txt").write_text("zkx, bee")
    ds = _scan(tmp_path / "d")
    assert _reasons(ds, sub / "a.png.txt") == ["warning: caption file not used: captions are read as a.txt (the "
                                               "image's name without its extension); rename it to a.txt"]
    assert _reasons(ds, sub / "b.jpg.txt")[0].endswith("rename it to b.txt (b.txt exists: merge the two)")


def test_data_check_counts_optimizer_steps_with_gradient_accumulation(tmp_path, capsys, monkeypatch):
    import lorakit.caption.text
    from lorakit.cli import main

    monkeypatch.setattr(lorakit.caption.text, "family_limit", lambda family: (77, None))   # no tokenizer load

    for i in range(5):
        save(rgb(128, 128, seed=i), tmp_path / "d" / "3_zkx" / f"i{i}.png")       # 15 samples: 4 batches of 4
    args = ["data", "check", str(tmp_path / "d"), "--family", "sdxl", "data.resolution=128",  # batch_size: was ignored
            "data.min_bucket_reso=64", "data.max_bucket_reso=256", "training.batch_size=4"]
    assert main(args) == 0
    assert "steps/epoch (batch 4): 4\n" in capsys.readouterr().out
    assert main(args + ["training.gradient_accumulation=3", "--json", str(tmp_path / "r.json")]) == 0  # before: 4
    assert "steps/epoch (batch 4, gradient accumulation 3): 2 (4 batches)\n" in capsys.readouterr().out
    got = json.loads((tmp_path / "r.json").read_text())                         # before: batch 1, 15 steps
    assert (got["batch_size"], got["steps_per_epoch"], got["optimizer_steps_per_epoch"]) == (4, 4, 2)


def test_caption_of_a_toml_listing_one_folder_twice_captions_each_image_once(tmp_path):
    from lorakit.caption.run import list_targets

    for i in range(2):
        save(rgb(64, 64, seed=i), tmp_path / "imgA" / f"a{i}.png")
    toml = tmp_path / "ds.toml"
    toml.write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "imgA"\n'
                    '[[datasets.subsets]]\nimage_dir = "imgA"\nnum_repeats = 3\n')
    targets, _, _ = list_targets(toml)
    assert [t.image.name for t in targets] == ["a0.png", "a1.png"]   # before: each twice ("a caption appeared")


def test_a_subset_folder_linked_twice_or_reg_dir_equal_to_dir_is_one_line(tmp_path):
    import pytest
    from lorakit.errors import ConfigError

    save(rgb(128, 128), tmp_path / "d" / "10_zkx" / "a.png")
    (tmp_path / "d" / "5_b").symlink_to("10_zkx")
    ds = _scan(tmp_path / "d")
    assert [(it.path.name, it.repeats) for it in ds.items] == [("a.png", 10)]
    assert _reasons(ds, tmp_path / "d" / "5_b") == [
        f"skipped: {tmp_path / 'd/5_b'}: the same folder as {tmp_path / 'd/10_zkx'}: not used (its images are trained "
        "once, by the first); keep one folder, named '15_zkx', to train it as both would"]
    with pytest.raises(ConfigError, match=r"^data\.reg_dir: .* is data\.dir itself; regularisation images go in a "
                                          r"folder of their own"):
        scan_dataset(DataCfg(dir=str(tmp_path / "d"), reg_dir=str(tmp_path / "d" / "."), **SMALL), divisibility=32)


def test_a_caption_whose_name_is_in_another_unicode_form_is_named(tmp_path):
    import unicodedata

    sub = tmp_path / "d" / "2_zkx"
    save(rgb(128, 128), sub / unicodedata.normalize("NFC", "café.png"))
    nfd = unicodedata.normalize("NFD", "café.txt")
    (sub / nfd).write_text("zkx, coffee")                      # before: "missing caption", the file beside it
    ds = _scan(tmp_path / "d")
    [r] = [r for r in _reasons(ds, sub / unicodedata.normalize("NFC", "café.png")) if "caption" in r]
    assert r.startswith(f"warning: caption file {nfd} is not read: its name spells café.txt with other Unicode code "
                        "points (macOS's decomposed accents, NFD); rename the files to one form")


def test_a_zero_repeats_folder_is_told_the_name_to_use(tmp_path):
    save(rgb(128, 128), tmp_path / "d" / "0_zkx shape" / "a.png")
    save(rgb(128, 128, seed=1), tmp_path / "d" / "1_ok" / "b.png")
    ds = _scan(tmp_path / "d")
    assert _reasons(ds, tmp_path / "d" / "0_zkx shape") == [   # before: "rename it like '10_0_zkx shape'"
        "skipped: 0 repeats: not used; rename it like '10_zkx shape' (10 = repeats)"]


def test_caption_names_a_broken_symlink_it_cannot_caption(tmp_path):
    from lorakit.caption.run import list_targets

    folder = tmp_path / "imgs"
    save(rgb(64, 64), folder / "a.png")
    (folder / "b.png").symlink_to("gone.png")                   # before: left out without a word
    targets, _, problems = list_targets(folder)
    assert [t.image.name for t in targets] == ["a.png"]
    assert problems == [f"{folder / 'b.png'}: broken symlink to gone.png (the file it points to is missing): not "
                        "captioned; fix or remove the link"]
