"""Latent and text caches: reuse, selective re-encoding, corruption recovery, atomic files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from lorakit.config.schema import DataCfg
from lorakit.data.cache import LatentCache, TextCache
from lorakit.data.images import load_for_bucket
from lorakit.data.scan import scan_dataset
from tests.unit.data_corpus import rgb, save, simple_dataset, snapshot

SMALL = dict(resolution=128, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=32)


class FakeVAE:
    """Deterministic 'encoder': 8× average pool to 4 channels; records every batch it sees."""

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == 3
        self.calls.append(tuple(x.shape))
        pooled = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)

    @property
    def images(self) -> int:
        return sum(c[0] for c in self.calls)


@pytest.fixture
def ds_root(tmp_path):
    root = simple_dataset(tmp_path / "d", {"2_ohwx": [(64, 64)] * 5 + [(96, 64)] * 2})
    return root


def _scan(root):
    return scan_dataset(DataCfg(dir=str(root), **SMALL), divisibility=32)


def test_latents_cached_batched_by_bucket_and_reused(ds_root, tmp_path):
    ds = _scan(ds_root)
    before = snapshot(ds_root)
    vae = FakeVAE()
    cache = LatentCache(tmp_path / "cache", "vae-a")
    cache.ensure(ds.items, vae, batch_size=4, flip=True, progress=False)
    # 5 items in 128x128 → batches 4+1, 2 items in 160x96 → 2; each twice (plain and flipped)
    assert sorted(vae.calls) == sorted([(4, 3, 128, 128), (1, 3, 128, 128), (2, 3, 96, 160)] * 2)
    for it in ds.items:
        want = vae(load_for_bucket(it)[None])[0]
        assert torch.allclose(cache.get(it), want, atol=1e-6)
        want_f = vae(load_for_bucket(it, flip=True)[None])[0]
        assert torch.allclose(cache.get(it, flipped=True), want_f, atol=1e-6)
    vae2 = FakeVAE()
    LatentCache(tmp_path / "cache", "vae-a").ensure(ds.items, vae2, flip=True, progress=False)
    assert vae2.calls == []
    assert snapshot(ds_root) == before
    files = list((tmp_path / "cache" / "latents").iterdir())
    assert len(files) == 7 and all(f.suffix == ".safetensors" for f in files)  # no temp files left
    with safe_open(str(cache.path(ds.items[0])), framework="pt") as fh:
        key = json.loads(fh.metadata()["key"])
    assert key["sha256"] == ds.items[0].sha256 and key["identity"] == "vae-a"


def test_only_changed_items_reencoded(ds_root, tmp_path):
    ds = _scan(ds_root)
    LatentCache(tmp_path / "c", "vae-a").ensure(ds.items, FakeVAE(), flip=False, progress=False)
    # edit one image (same size): only that one is encoded again
    edited = ds.items[0].path
    save(rgb(64, 64, seed=999), edited)
    ds2 = _scan(ds_root)
    vae = FakeVAE()
    LatentCache(tmp_path / "c", "vae-a").ensure(ds2.items, vae, flip=False, progress=False)
    assert vae.images == 1
    # asking for flips adds only the missing flipped latents (re-encodes all, since the key lacks them)
    vae = FakeVAE()
    LatentCache(tmp_path / "c", "vae-a").ensure(ds2.items, vae, flip=True, progress=False)
    assert vae.images == 2 * 7
    # another model identity → everything again; a different resolution → new buckets → everything again
    vae = FakeVAE()
    LatentCache(tmp_path / "c", "vae-b").ensure(ds2.items, vae, flip=False, progress=False)
    assert vae.images == 7
    ds3 = scan_dataset(DataCfg(dir=str(ds_root), **{**SMALL, "resolution": 96}), divisibility=32)
    vae = FakeVAE()
    LatentCache(tmp_path / "c", "vae-a").ensure(ds3.items, vae, flip=False, progress=False)
    assert vae.images == 7


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "missing_key"])
def test_corrupt_latent_file_rebuilt(ds_root, tmp_path, damage):
    ds = _scan(ds_root)
    cache = LatentCache(tmp_path / "c", "vae-a")
    cache.ensure(ds.items, FakeVAE(), flip=True, progress=False)
    victim = ds.items[3]
    p = cache.path(victim)
    good = cache.get(victim).clone()
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:-40])
    elif damage == "garbage":
        p.write_bytes(b"\x00" * 100)
    else:
        from safetensors.torch import save_file
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata()
        t = {"latents": torch.zeros(4, 5, 5)} if damage == "wrong_shape" else {"latents": good}
        if damage == "wrong_shape":
            t["latents_flipped"] = torch.zeros(4, 5, 5)
        save_file(t, str(p), metadata=meta)
    vae = FakeVAE()
    LatentCache(tmp_path / "c", "vae-a").ensure(ds.items, vae, flip=True, progress=False)
    assert vae.images == 2                         # the victim, plain and flipped
    assert torch.allclose(LatentCache(tmp_path / "c", "vae-a").get(victim), good)


def test_get_missing_is_clear(ds_root, tmp_path):
    ds = _scan(ds_root)
    with pytest.raises(KeyError, match="run ensure"):
        LatentCache(tmp_path / "c", "x").get(ds.items[0])


def fake_te(calls):
    def encode(captions):
        calls.append(list(captions))
        n = len(captions)
        lens = torch.tensor([float(len(c)) for c in captions])
        return {"hidden": lens[:, None, None].expand(n, 7, 16).clone(), "pooled": lens[:, None].expand(n, 8).clone(),
                "mask": torch.ones(n, 7, dtype=torch.bool)}
    return encode


def test_text_cache(tmp_path):
    calls: list = []
    caps = ["a", "bb", "a", "ccc", "dddd"]
    tc = TextCache(tmp_path / "c", "te-1")
    tc.ensure(caps, fake_te(calls), batch_size=2, progress=False)
    assert calls == [["a", "bb"], ["ccc", "dddd"]]
    out = tc.get("ccc")
    assert set(out) == {"hidden", "pooled", "mask"} and out["hidden"].shape == (7, 16)
    assert float(out["pooled"][0]) == 3.0 and out["mask"].dtype == torch.bool
    calls.clear()
    TextCache(tmp_path / "c", "te-1").ensure(caps + ["new"], fake_te(calls), progress=False)
    assert calls == [["new"]]
    p = tc.path("bb")
    p.write_bytes(p.read_bytes()[:30])
    calls.clear()
    TextCache(tmp_path / "c", "te-1").ensure(caps, fake_te(calls), progress=False)
    assert calls == [["bb"]]
    calls.clear()
    TextCache(tmp_path / "c", "te-2").ensure(["a"], fake_te(calls), progress=False)
    assert calls == [["a"]]
    assert not [f for f in os.listdir(tmp_path / "c" / "text") if not f.endswith(".safetensors")]


def test_cache_folder(tmp_path):
    from lorakit.data.cache import cache_folder
    assert cache_folder(DataCfg(dir="d"), tmp_path / "out") == tmp_path / "out" / "cache"
    assert cache_folder(DataCfg(dir="d", cache_dir=str(tmp_path / "c")), "out") == tmp_path / "c"
    assert cache_folder(DataCfg(dir=str(tmp_path / "d"), cache_next_to_images=True), "out") == \
        tmp_path / "d" / ".lorakit-cache"
