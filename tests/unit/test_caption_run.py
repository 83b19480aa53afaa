"""`lorakit caption` runs: files written, trigger placement, nothing overwritten, .bak, resume after a kill."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from lorakit.caption.run import PROGRESS_NAME
from lorakit.cli import main
from tests.unit.caption_models import build_tagger

COLOURS = [(230, 10, 10), (10, 10, 230)]


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return str(build_tagger(tmp_path_factory.mktemp("wd14")))


def make_folder(root: Path, n: int, name: str = "10_ohwx woman") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (32, 32), COLOURS[i % 2]).save(folder / f"{i:03d}.png")
    return folder


def run(*args) -> int:
    return main(["caption", *map(str, args)])


def test_captions_written_with_the_folder_lead_and_existing_ones_kept(tmp_path, tagger, capsys):
    folder = make_folder(tmp_path, 4)
    (folder / "001.txt").write_bytes(b"my own words\n")
    (folder / "notes.txt").write_text("not a caption")
    assert run(tmp_path, "--captioner", "wd14", "--model", tagger) == 0
    assert (folder / "001.txt").read_bytes() == b"my own words\n"
    assert not list(folder.glob("*.bak*"))
    red = (folder / "000.txt").read_text()
    assert red == "ohwx woman, hatsune miku, red theme, 1girl, ^_^, simple background\n"
    assert (folder / "003.txt").read_text().startswith("ohwx woman, hatsune miku, blue theme, 1girl")
    assert (folder / "002.txt").read_text() == red
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["3", "1", "0"]       # captioned, kept, failed


def test_trigger_and_class_and_overwrite_keeps_a_backup(tmp_path, tagger, capsys):
    folder = make_folder(tmp_path, 2, "plain")
    (folder / "000.txt").write_text("old caption\n")
    assert run(folder, "--captioner", "wd14", "--model", tagger, "--trigger", "sks", "--class", "girl",
               "--blacklist", "hatsune_miku,^_^", "--overwrite") == 0
    assert (folder / "000.txt.bak").read_text() == "old caption\n"
    assert (folder / "000.txt").read_text() == "sks girl, red theme, 1girl, simple background\n"
    # a second overwriting run keeps the first backup and adds another
    assert run(folder, "--captioner", "wd14", "--model", tagger, "--trigger", "ohwx", "--overwrite") == 0
    assert (folder / "000.txt.bak").read_text() == "old caption\n"
    assert (folder / "000.txt.bak2").read_text().startswith("sks girl, ")
    assert (folder / "000.txt").read_text().startswith("ohwx, hatsune miku, ")
    assert "old caption kept as 000.txt.bak2" in capsys.readouterr().out


def test_an_option_of_another_captioner_is_refused(tmp_path, tagger, capsys):
    make_folder(tmp_path, 1, "plain")
    assert run(tmp_path / "plain", "--captioner", "wd14", "--model", tagger, "--task", "<CAPTION>") == 2
    assert "--task: not an option of the wd14 captioner" in capsys.readouterr().err
    assert run(tmp_path / "plain", "--captioner", "wd14", "--model", tagger, "--max-tokens", "500") == 2
    assert "--max-tokens: 500 is outside 1..77" in capsys.readouterr().err
    assert not list((tmp_path / "plain").glob("*.txt"))


def test_unreadable_image_fails_with_a_reason_and_the_rest_is_captioned(tmp_path, tagger, capsys):
    folder = make_folder(tmp_path, 2, "plain")
    make_folder(folder, 1, "sub")
    (folder / "bad.png").write_bytes(b"not a png")
    assert run(folder, "--captioner", "wd14", "--model", tagger) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["2", "0", "1"]
    assert "failed    bad.png" in out and "unreadable image" in out
    assert f"skipped   {folder / 'sub'}: images in this subfolder are not captioned" in out
    assert not list((folder / "sub").glob("*.txt"))
    assert not (folder / "bad.txt").exists()


def test_dataset_toml_images_use_its_caption_extension(tmp_path, tagger):
    a = make_folder(tmp_path, 2, "imgs_a")
    toml = tmp_path / "dataset.toml"
    toml.write_text(textwrap.dedent("""
        [general]
        caption_extension = ".caption"
        [[datasets]]
        resolution = 512
          [[datasets.subsets]]
          image_dir = "imgs_a"
          class_tokens = "zkx toy"
          num_repeats = 2
    """))
    assert run(toml, "--captioner", "wd14", "--model", tagger, "--mode", "sentence") == 0
    assert (a / "000.caption").read_text().startswith("zkx toy, hatsune miku, red theme, 1girl")
    assert not list(a.glob("*.txt"))
    assert json.loads((tmp_path / "dataset.toml.caption.json").read_text())["finished"] is True


KILLER = """
import os, signal, sys
import lorakit.caption.run as run
real, n = run.atomic_write_bytes, [0]
def write(path, payload):
    real(path, payload)
    if path.suffix == ".txt":
        n[0] += 1
        if n[0] == 5:
            os.kill(os.getpid(), signal.SIGKILL)   # killed after writing the 5th caption, before its progress
run.atomic_write_bytes = write
from lorakit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_a_kill_never_recaptions_or_rebacks_up(tmp_path, tagger, capsys):
    folder = make_folder(tmp_path, 12, "plain")
    for p in folder.glob("*.png"):
        p.with_suffix(".txt").write_text("old\n")
    args = ["caption", str(folder), "--captioner", "wd14", "--model", tagger, "--trigger", "ohwx", "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", KILLER, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    progress = json.loads((folder / PROGRESS_NAME).read_text())
    assert progress["finished"] is False and len(progress["done"]) == 4
    assert len(progress["backups"]) == 5                      # the 5th was backed up and written, not yet done
    written = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.txt") if p.read_text() != "old\n"}
    assert len(written) == 5
    assert main(args) == 0
    out = capsys.readouterr()
    assert "resuming: 4 image(s)" in out.err
    assert out.out.splitlines()[1].split() == ["8", "0", "0"]
    for png in folder.glob("*.png"):
        cap = png.with_suffix(".txt")
        assert cap.read_text().startswith("ohwx, hatsune miku, ")
        assert (folder / (cap.name + ".bak")).read_text() == "old\n"
    assert not list(folder.glob("*.bak2"))
    for name in sorted(written)[:4]:                           # finished before the kill: not touched again
        assert (folder / name).stat().st_mtime_ns == written[name]
    assert json.loads((folder / PROGRESS_NAME).read_text())["finished"] is True


def test_an_unfinished_run_with_other_settings_is_not_mixed_in(tmp_path, tagger, capsys):
    folder = make_folder(tmp_path, 2, "plain")
    (folder / PROGRESS_NAME).write_text(json.dumps({"settings": "other", "finished": False, "done": {"000.png": 1}}))
    assert run(folder, "--captioner", "wd14", "--model", tagger) == 2
    assert "pass --restart to start over" in capsys.readouterr().err
    assert run(folder, "--captioner", "wd14", "--model", tagger, "--restart") == 0
    assert (folder / "000.txt").exists() and (folder / "001.txt").exists()
