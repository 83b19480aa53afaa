"""The UI's upload and path guards, caption editing, folder names, and the --listen/auth rules."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from lorakit.errors import DataError, LorakitError
from lorakit.ui import dataset as ds


def _png(path: Path, colour=(200, 30, 30), size=(64, 48)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _png_bytes(colour=(10, 200, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# -------------------------------------------------------------------------------------------- roots


def test_roots_refuse_paths_outside_when_listening(tmp_path):
    inside = tmp_path / "allowed" / "set"
    inside.mkdir(parents=True)
    roots = ds.Roots((tmp_path / "allowed",))
    assert roots.check(str(inside)) == inside.resolve()
    with pytest.raises(DataError, match=r"outside the folders this UI may use .*--allow-root"):
        roots.check(str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="outside"):
        roots.check(str(inside / ".." / ".." / "elsewhere"))  # '..' resolved before the check
    link = tmp_path / "allowed" / "link"
    link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(DataError, match="outside"):
        roots.check(str(link / "elsewhere"))  # a symlink out of the root is followed, then refused
    assert ds.Roots(None).check(str(tmp_path / "anywhere")) == (tmp_path / "anywhere").resolve()


# -------------------------------------------------------------------------------------------- uploads


def test_images_and_captions_are_imported(tmp_path):
    a = _png(tmp_path / "a.png")
    cap = tmp_path / "a.txt"
    cap.write_text("zkx shape")
    dest = tmp_path / "set" / "10_zkx shape"
    written = ds.import_uploads([a, cap], dest)
    assert sorted(p.name for p in written) == ["a.png", "a.txt"]
    assert (dest / "a.png").read_bytes() == a.read_bytes() and (dest / "a.txt").read_text() == "zkx shape"


def test_non_image_refused_and_nothing_written(tmp_path):
    good = _png(tmp_path / "good.png")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"%PDF-1.4 not an image")
    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ")
    dest = tmp_path / "set" / "10_x"
    with pytest.raises(DataError, match=r"^fake\.png: not a usable image"):
        ds.import_uploads([good, fake], dest)
    with pytest.raises(DataError, match=r"^tool\.exe: not an image lorakit trains on"):
        ds.import_uploads([exe], dest)
    assert not dest.exists()
    assert _tree(tmp_path / "set") == set()  # staging left nothing behind


@pytest.mark.parametrize("member", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "C:/evil.txt"])
def test_zip_slip_refused(tmp_path, member):
    z = tmp_path / "up.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok.png", _png_bytes())
        zf.writestr(member, "x")
    dest = tmp_path / "set" / "10_x"
    with pytest.raises(DataError, match="points outside the dataset folder"):
        ds.import_uploads([z], dest)
    assert not dest.exists() and not (tmp_path / "evil.txt").exists() and not (tmp_path / "set" / "evil.txt").exists()


def test_zip_symlink_refused(tmp_path):
    z = tmp_path / "up.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        ds.import_uploads([z], tmp_path / "set")


def test_zip_contents_imported_flat(tmp_path):
    z = tmp_path / "up.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("pics/", "")
        zf.writestr("pics/one.png", _png_bytes())
        zf.writestr("pics/one.txt", "zkx one")
        zf.writestr("__MACOSX/pics/._one.png", "resource fork")
    dest = tmp_path / "set" / "10_x"
    ds.import_uploads([z], dest)
    assert sorted(os.listdir(dest)) == ["one.png", "one.txt"]


def test_size_limits(tmp_path):
    big = _png(tmp_path / "big.png", size=(512, 512))
    dest = tmp_path / "set"
    limit = big.stat().st_size / 2**20 / 2  # half the file's size, in MB
    with pytest.raises(DataError, match=r"^big\.png: .* MB, past the .* MB upload limit"):
        ds.import_uploads([big], dest, max_file_mb=limit)
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", b"\0" * (3 * 2**20))  # compresses to a few KB
    assert z.stat().st_size < 2**20
    with pytest.raises(DataError, match="past the 1 MB limit per file"):
        ds.import_uploads([z], dest, max_file_mb=1, max_total_mb=10)
    with pytest.raises(DataError, match="expands to more than 2 MB"):
        ds.import_uploads([z], dest, max_file_mb=5, max_total_mb=2)
    assert not dest.exists()


def test_existing_file_not_overwritten(tmp_path):
    dest = tmp_path / "set" / "10_x"
    dest.mkdir(parents=True)
    mine = _png(dest / "a.png", colour=(1, 2, 3))
    before = mine.read_bytes()
    upload = _png(tmp_path / "a.png", colour=(250, 250, 250))
    with pytest.raises(DataError, match="already exists; nothing was overwritten"):
        ds.import_uploads([upload], dest)
    assert mine.read_bytes() == before


def test_caption_not_utf8_refused(tmp_path):
    cap = tmp_path / "a.txt"
    cap.write_bytes(b"\xff\xfe\xfa bad")
    with pytest.raises(DataError, match="not UTF-8"):
        ds.import_uploads([cap], tmp_path / "set")


# -------------------------------------------------------------------------------------------- captions, names


def test_caption_edit_keeps_first_original_as_bak(tmp_path):
    img = _png(tmp_path / "001.png")
    (tmp_path / "001.txt").write_text("original caption\n")
    ds.save_caption(img, "first edit")
    ds.save_caption(img, "  second edit  ")
    assert (tmp_path / "001.txt").read_text() == "second edit\n"
    assert (tmp_path / "001.txt.bak").read_text() == "original caption\n"
    fresh = _png(tmp_path / "002.png")
    ds.save_caption(fresh, "new")
    assert (tmp_path / "002.txt").read_text() == "new\n" and not (tmp_path / "002.txt.bak").exists()
    assert [p.name for p, _ in ds.list_images(tmp_path)] == ["001.png", "002.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_kohya_folder_name():
    assert ds.kohya_folder_name("10", " ohwx ", "person ") == "10_ohwx person"
    assert ds.kohya_folder_name(3, "zkx", "") == "3_zkx"
    with pytest.raises(DataError, match="repeats: must be a whole number"):
        ds.kohya_folder_name("0", "ohwx", "person")
    with pytest.raises(DataError, match="trigger: give the trigger word"):
        ds.kohya_folder_name(10, " ", "person")
    with pytest.raises(DataError, match="cannot be a folder name"):
        ds.kohya_folder_name(10, "a/b", "person")


# -------------------------------------------------------------------------------------------- listen / auth


def test_listen_without_auth_refused(tmp_path):
    from lorakit.cli import build_parser

    args = build_parser().parse_args(["ui", "--listen", "--home", str(tmp_path)])  # `lorakit ui --listen`
    with pytest.raises(LorakitError, match=r"^ui --listen: refusing to serve other hosts without a password; "
                                           r"add --auth user:password or --auth-file"):
        args.func(args)
    assert not any(tmp_path.iterdir())  # refused before anything started or was written


def test_parse_auth(tmp_path):
    from lorakit.ui.app import parse_auth

    f = tmp_path / "users"
    f.write_text("# comment\nann:secret\n\nbob:pa:ss\n")
    assert parse_auth("me:pw", str(f)) == [("me", "pw"), ("ann", "secret"), ("bob", "pa:ss")]
    assert parse_auth(None, None) is None
    with pytest.raises(LorakitError, match="--auth: expected user:password"):
        parse_auth("nopassword", None)
    f.write_text("broken\n")
    with pytest.raises(LorakitError, match=rf"{f}:1: expected user:password"):
        parse_auth(None, str(f))


def test_upload_onto_a_full_disk_adds_nothing(tmp_path, monkeypatch):
    """The disk filling up while the uploads are moved in was an OSError traceback, with the files moved so far
    left in the image folder; now one line, and the folder is as it was."""
    import errno

    dest = tmp_path / "set" / "10_x"
    dest.mkdir(parents=True)
    mine = _png(dest / "mine.png")
    uploads = [_png(tmp_path / "a.png"), _png(tmp_path / "b.png", colour=(1, 1, 1))]
    real, moved = ds.shutil.move, []

    def move(src, dst):
        if moved:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        moved.append(dst)
        return real(src, dst)

    monkeypatch.setattr(ds.shutil, "move", move)
    with pytest.raises(DataError, match=r"/10_x/b.png: cannot write \(No space left on device\); nothing of this "
                                        r"upload was added"):
        ds.import_uploads(uploads, dest)
    assert moved == [dest / "a.png"] and sorted(p.name for p in dest.iterdir()) == ["mine.png"]
    assert mine.is_file() and not list(dest.parent.glob(".upload-*"))


def test_zip_of_a_whole_kohya_dataset_is_refused_not_mixed(tmp_path):
    """A zip of a kohya dataset (`5_ohwx person/`, `1_person/` regularisation images) was flattened into the one
    image folder of the form: repeats lost, regularisation images trained as the subject. One folder still goes in."""
    z = tmp_path / "dataset.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ds/5_ohwx person/a.png", _png_bytes())
        zf.writestr("ds/1_person/b.png", _png_bytes((1, 2, 3)))
    dest = tmp_path / "set" / "10_ohwx person"
    with pytest.raises(DataError, match=r"^dataset.zip: its images are in 2 kohya folders \(1_person, 5_ohwx person\)"
                                        r", and an upload goes into one image folder; nothing was extracted"):
        ds.import_uploads([z], dest)
    assert not dest.exists()
    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w") as zf:
        zf.writestr("5_ohwx person/a.png", _png_bytes())
    assert [p.name for p in ds.import_uploads([one], dest)] == ["a.png"]
