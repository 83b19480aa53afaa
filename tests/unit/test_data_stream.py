"""BatchStream: epochs = items × repeats, one bucket per batch, seeded order, exact resume."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

from lorakit.config.schema import DataCfg
from lorakit.data.scan import scan_dataset
from lorakit.data.stream import BatchStream
from tests.unit.data_corpus import simple_dataset

SMALL = dict(resolution=128, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=32)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = simple_dataset(tmp_path_factory.mktemp("s"), {"3_ohwx": [(64, 64)] * 4 + [(96, 64)] * 3,
                                                         "2_sks": [(64, 96)] * 2})
    return scan_dataset(DataCfg(dir=str(root), shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.2,
                                flip_aug=True, **SMALL), divisibility=32)


def _sig(batch):
    return [(it.path.name, it.subset, flipped, cap) for it, flipped, cap in batch]


def test_epoch_is_items_times_repeats_and_batches_never_mix_buckets(ds):
    s = BatchStream(ds, batch_size=3, seed=1)
    n = s.steps_per_epoch
    # buckets: 128x128 has 4×3 = 12 samples, 160x96 has 3×3 = 9, 96x160 has 2×2 = 4
    assert n == math.ceil(12 / 3) + math.ceil(9 / 3) + math.ceil(4 / 3) == ds.report.steps_per_epoch(3)
    epoch = list(itertools.islice(s, n))
    counts = Counter(it.path for b in epoch for it, _, _ in b)
    assert counts == {it.path: it.repeats for it in ds.items}
    for b in epoch:
        assert len({it.bucket for it, _, _ in b}) == 1 and 1 <= len(b) <= 3
    assert s.state_dict()["epoch"] == 0 and s.state_dict()["position"] == n
    next(s)
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["position"] == 1


def test_same_seed_same_stream_other_seed_differs(ds):
    a = [_sig(b) for b in itertools.islice(BatchStream(ds, 2, seed=5), 20)]
    b = [_sig(b) for b in itertools.islice(BatchStream(ds, 2, seed=5), 20)]
    c = [_sig(b) for b in itertools.islice(BatchStream(ds, 2, seed=6), 20)]
    assert a == b and a != c


def test_epochs_differ(ds):
    s = BatchStream(ds, 2, seed=5)
    assert s.epoch_batches(0) != s.epoch_batches(1)


def test_resume_continues_exactly(ds):
    full = [_sig(b) for b in itertools.islice(BatchStream(ds, 2, seed=3), 10)]
    s = BatchStream(ds, 2, seed=3)
    first = [_sig(next(s)) for _ in range(4)]
    state = s.state_dict()
    resumed = BatchStream(ds, 2, seed=3)
    resumed.load_state_dict(dict(state))
    assert first + [_sig(next(resumed)) for _ in range(6)] == full


def test_resume_across_epoch_boundary(ds):
    s = BatchStream(ds, 4, seed=0)
    n = s.steps_per_epoch
    full = [_sig(b) for b in itertools.islice(BatchStream(ds, 4, seed=0), n + 5)]
    for _ in range(n):
        next(s)
    r = BatchStream(ds, 4, seed=0)
    r.load_state_dict(s.state_dict())
    assert [_sig(next(r)) for _ in range(5)] == full[n:]


def test_captions_and_flips_are_augmented(ds):
    samples = [x for b in itertools.islice(BatchStream(ds, 2, seed=9), 60) for x in b]
    flips = Counter(f for _, f, _ in samples)
    assert 0.3 < flips[True] / len(samples) < 0.7
    for it, _, cap in samples:
        tags = cap.split(", ")
        assert tags[0] == it.caption.split(", ")[0]                    # keep_tokens = 1
        assert set(tags) <= {t.strip() for t in it.caption.split(",")}
    assert any(cap != it.caption for it, _, cap in samples)


def test_seed_mismatch_on_resume_is_refused(ds):
    s = BatchStream(ds, 2, seed=1)
    with pytest.raises(ValueError, match="training.seed = 1"):
        BatchStream(ds, 2, seed=2).load_state_dict(s.state_dict())


def test_batch_size_mismatch_on_resume_is_refused(ds):
    with pytest.raises(ValueError, match="training.batch_size = 2"):
        BatchStream(ds, 3, seed=1).load_state_dict(BatchStream(ds, 2, seed=1).state_dict())
