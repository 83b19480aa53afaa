"""Issue 28, "scale of data": the dataset pipeline holds a bounded number of images and latents whatever the size of
the dataset. On 200 small generated images of many sizes (many buckets): the scan keeps at most one decoded image
alive, latent caching at most one VAE batch of decoded images, and the cache hands latents out from disk without
keeping them (the training loader reads each batch's latents on demand). benchmarks/data_scale.py measures the same on
1,000 and 10,000 images (time per image and peak RSS, benchmarks/RESULTS.md)."""

from __future__ import annotations

import gc
import random
import weakref

import pytest
import torch
from PIL import Image

from lorakit.config.load import load_config
from lorakit.data import cache as cache_mod
from lorakit.data import scan as scan_mod
from lorakit.data.cache import LatentCache
from lorakit.data.scan import scan_dataset

N = 200


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    sub = root / "1_scale"
    sub.mkdir()
    rng = random.Random(0)
    for i in range(N):
        w, h = rng.randrange(64, 257, 16), rng.randrange(64, 257, 16)
        Image.new("RGB", (w, h), (i % 251, (7 * i) % 251, rng.randrange(256))).save(sub / f"{i:03d}.png")
        (sub / f"{i:03d}.txt").write_text(f"picture {i}", encoding="utf-8")
    cfg = load_config(None, [f"data.dir={root}", "model.family=flux2", "model.checkpoint=(unused)",
                             "data.resolution=128", "data.min_bucket_reso=64", "data.max_bucket_reso=256",
                             "data.bucket_reso_steps=16"])
    return cfg


class Alive:
    """Counts objects still referenced (weakref finalizers), and the most alive at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    def track(self, obj):
        self.now += 1
        self.most = max(self.most, self.now)
        weakref.finalize(obj, self._gone)
        return obj

    def _gone(self) -> None:
        self.now -= 1


def test_the_scan_decodes_one_image_at_a_time(dataset, monkeypatch):
    alive = Alive()
    real = scan_mod.decode

    def decode(path):
        img, info = real(path)
        return alive.track(img), info

    monkeypatch.setattr(scan_mod, "decode", decode)
    scanned = scan_dataset(dataset.data, divisibility=16)
    assert len(scanned.items) == N and len(scanned.buckets) >= 10  # many buckets
    assert alive.most == 1 and alive.now == 0


def fake_vae(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE: 8x average pooling (3 channels); what it computes does not matter here."""
    return torch.nn.functional.avg_pool2d(pixels, 8)


def test_caching_holds_one_vae_batch_and_the_cache_keeps_no_latents(dataset, monkeypatch, tmp_path):
    scanned = scan_dataset(dataset.data, divisibility=16)
    alive = Alive()
    real = cache_mod.load_for_bucket
    monkeypatch.setattr(cache_mod, "load_for_bucket", lambda item, flip=False: alive.track(real(item, flip)))
    seen_batches: list[int] = []

    def encode(pixels):
        seen_batches.append(pixels.shape[0])
        assert alive.now <= 3  # the images of this call only (the stacked batch is not tracked)
        return fake_vae(pixels)

    cache = LatentCache(tmp_path, "test")
    cache.ensure(scanned.items, encode, batch_size=3, flip=False, progress=False, log=None)
    gc.collect()
    assert sum(seen_batches) == N and max(seen_batches) == 3 and alive.most <= 3 and alive.now == 0
    assert len(list(cache.folder.glob("*.safetensors"))) == N  # every latent went to disk
    # reading them back, as the training loader does batch by batch: nothing stays referenced by the cache
    refs = []
    for item in scanned.items:
        lat = cache.get(item)
        assert lat.shape[-2:] == (item.bucket[1] // 8, item.bucket[0] // 8)
        refs.append(weakref.ref(lat))
        del lat
    gc.collect()
    assert not any(r() is not None for r in refs)
    # what the cache object keeps per entry is its file signature (two ints), not tensors
    assert all(isinstance(v, tuple) and all(isinstance(x, int) for x in v) for v in cache._verified.seen.values())
