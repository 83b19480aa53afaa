"""Cache entries carry a checksum: a flipped bit or NaN/Inf is dropped, re-encoded and reported in one line; a
freshly encoded NaN names the image and the encoder; a full disk (or EFBIG) while caching is one line and keeps
what was written; cache writes never follow a planted symlink out of the cache folder."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from lorakit.data import cache as cache_mod
from lorakit.data.cache import LatentCache, TextCache, checksum
from lorakit.errors import TrainingError
from tests.unit.data_corpus import simple_dataset
from tests.unit.test_data_cache import FakeVAE, _scan, fake_te


@pytest.fixture
def ds(tmp_path):
    return _scan(simple_dataset(tmp_path / "d", {"2_ohwx": [(64, 64)] * 3}))


def _flip_one_bit_in_data(path):
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # inside the last tensor's bytes: the header (and the file's validity) is unchanged
    path.write_bytes(bytes(raw))


def test_checksum_is_stored_and_independent(ds, tmp_path):
    c = LatentCache(tmp_path / "c", "vae")
    c.ensure(ds.items, FakeVAE(), flip=False, progress=False, log=None)
    p = c.path(ds.items[0])
    with safe_open(str(p), framework="pt") as fh:
        stored = fh.metadata()["blake2b"]
        lat = fh.get_tensor("latents")
    import hashlib
    h = hashlib.blake2b(digest_size=16)
    h.update(f"latents|{lat.dtype}|{tuple(lat.shape)}|".encode() + lat.numpy().tobytes())
    assert stored == h.hexdigest() == checksum({"latents": lat})


def test_bit_flip_dropped_reencoded_and_reported(ds, tmp_path):
    c = LatentCache(tmp_path / "c", "vae")
    c.ensure(ds.items, FakeVAE(), flip=False, progress=False, log=None)
    victim = ds.items[1]
    good = c.get(victim).clone()
    _flip_one_bit_in_data(c.path(victim))
    with safe_open(str(c.path(victim)), framework="pt") as fh:  # still a loadable file, with a different value
        assert not torch.equal(fh.get_tensor("latents"), good)
    with pytest.raises(TrainingError, match=r"checksum mismatch.*--resume` re-encodes it"):
        c.get(victim)  # damaged during a run: named, dropped, never used
    assert not c.path(victim).exists()
    _flip_one_bit_in_data(c.path(ds.items[2]))
    lines, vae = [], FakeVAE()
    LatentCache(tmp_path / "c", "vae").ensure(ds.items, vae, flip=False, progress=False, log=lines.append)
    assert vae.images == 2  # the dropped one and the flipped one
    assert lines == [f"warning: cache entry {c.path(ds.items[2])}: damaged (checksum mismatch); dropped and "
                     "re-encoded"]
    assert torch.equal(c.get(victim), good)


def test_nan_entry_dropped_and_named(ds, tmp_path):
    c = LatentCache(tmp_path / "c", "vae")
    c.ensure(ds.items, FakeVAE(), flip=False, progress=False, log=None)
    p = c.path(ds.items[0])
    with safe_open(str(p), framework="pt") as fh:
        meta, lat = fh.metadata(), fh.get_tensor("latents")
    lat[0, 0, 0] = float("nan")
    p.write_bytes(st_save({"latents": lat}, metadata={**meta, "blake2b": checksum({"latents": lat})}))
    lines, vae = [], FakeVAE()
    LatentCache(tmp_path / "c", "vae").ensure(ds.items, vae, flip=False, progress=False, log=lines.append)
    assert vae.images == 1 and lines == [f"warning: cache entry {p}: tensor 'latents' holds NaN/Inf; dropped and "
                                         "re-encoded"]
    assert torch.isfinite(c.get(ds.items[0])).all()


def test_encoder_nan_names_the_image_and_the_vae(ds, tmp_path):
    def nan_vae(x):
        out = FakeVAE()(x)
        out[0, 0, 0, 0] = float("inf")
        return out
    with pytest.raises(TrainingError) as e:
        LatentCache(tmp_path / "c", "vae").ensure(ds.items, nan_vae, flip=False, progress=False, log=None)
    msg = str(e.value)
    assert msg.startswith(str(ds.items[0].path)) and "tensor 'latents'" in msg and "VAE's weights" in msg
    assert "learning rate" in msg and "\n" not in msg

    def nan_te(captions):
        out = fake_te([])(captions)
        out["pooled"][:] = float("nan")
        return out
    with pytest.raises(TrainingError, match=r"^caption 'a': the text encoder's output 'pooled' holds NaN/Inf"):
        TextCache(tmp_path / "c", "te").ensure(["a"], nan_te, progress=False, log=None)


def test_text_cache_bit_flip(tmp_path):
    tc = TextCache(tmp_path / "c", "te")
    tc.ensure(["a", "bb"], fake_te([]), progress=False, log=None)
    _flip_one_bit_in_data(tc.path("bb"))
    calls, lines = [], []
    TextCache(tmp_path / "c", "te").ensure(["a", "bb"], fake_te(calls), progress=False, log=lines.append)
    assert calls == [["bb"]] and len(lines) == 1 and "checksum mismatch" in lines[0]


@pytest.mark.parametrize("code,word", [(errno.ENOSPC, "disk full"), (errno.EFBIG, "file too large")])
def test_full_disk_while_caching_keeps_written_entries(ds, tmp_path, monkeypatch, code, word):
    real = cache_mod.write_bytes
    written = []

    def write(path, payload, **kw):
        if written:  # the first entry lands, the second meets a full disk
            raise OSError(code, os.strerror(code))
        written.append(path)
        return real(path, payload, **kw)

    monkeypatch.setattr(cache_mod, "write_bytes", write)
    c = LatentCache(tmp_path / "c", "vae")
    with pytest.raises(TrainingError) as e:
        c.ensure(ds.items, FakeVAE(), batch_size=1, flip=False, progress=False, log=None)
    assert str(e.value).startswith(f"{word}") and "entries written so far are kept" in str(e.value)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(cache_mod, "write_bytes", real)
    assert sorted(os.listdir(c.folder)) == [written[0].name]  # no temp file, the good entry kept
    vae = FakeVAE()
    LatentCache(tmp_path / "c", "vae").ensure(ds.items, vae, flip=False, progress=False, log=None)
    assert vae.images == 2  # only the two that were not written


def test_cache_never_writes_through_a_planted_symlink(ds, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "c").mkdir()
    os.symlink(outside, tmp_path / "c" / "latents")
    with pytest.raises(TrainingError, match=r"latents: is a symlink to .*outside .*/c; cache files are never written"):
        LatentCache(tmp_path / "c", "vae")
    os.unlink(tmp_path / "c" / "latents")
    c = LatentCache(tmp_path / "c", "vae")
    c.folder.mkdir(parents=True)
    target = outside / "victim.txt"
    target.write_text("user file")
    os.symlink(target, c.path(ds.items[0]))  # an entry name planted as a link to a user file
    c.ensure(ds.items, FakeVAE(), flip=False, progress=False, log=None)
    assert target.read_text() == "user file" and os.listdir(outside) == ["victim.txt"]
    assert not c.path(ds.items[0]).is_symlink() and c.get(ds.items[0]).ndim == 3


def test_reads_in_the_loop_skip_the_checksum_of_unchanged_verified_files(ds, tmp_path, monkeypatch):
    c = LatentCache(tmp_path / "c", "vae")
    c.ensure(ds.items, FakeVAE(), flip=False, progress=False, log=None)
    calls = []
    real = cache_mod.checksum
    monkeypatch.setattr(cache_mod, "checksum", lambda t: calls.append(1) or real(t))
    for _ in range(3):
        for it in ds.items:
            c.get(it)
    assert calls == []  # verified (written) by this process and unchanged: no second hash per step
    os.utime(c.path(ds.items[0]), ns=(1, 1))  # touched: verified again on the next read
    c.get(ds.items[0])
    assert calls == [1]


def test_cache_next_to_images_refuses_a_planted_link(tmp_path):
    from lorakit.config.schema import DataCfg
    from lorakit.data.cache import cache_folder

    (tmp_path / "d").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "d" / ".lorakit-cache")
    with pytest.raises(TrainingError, match=r"\.lorakit-cache: is a symlink to .*elsewhere, outside .*/d; cache files"):
        cache_folder(DataCfg(dir=str(tmp_path / "d"), cache_next_to_images=True), tmp_path / "out")
