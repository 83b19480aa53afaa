"""Bucket list and assignment, checked against a brute-force re-derivation of kohya's rules (§2.4)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorakit.data.buckets import BucketSettings, bucket_list, check_divisibility, parse_resolution, place
from lorakit.errors import ConfigError


def reference_buckets(area: int, lo: int, hi: int, s: int) -> set[tuple[int, int]]:
    """Brute force: for each width, the tallest multiple of s (≤ hi) whose rectangle fits in the area."""
    lo, hi = lo - lo % s, hi - hi % s
    out = set()
    side = s * int(math.sqrt(area) / s)
    out.add((side, side))
    for w in range(lo, hi + 1, s):
        fitting = [h for h in range(s, hi + 1, s) if w * h <= area]
        if fitting and max(fitting) >= lo:
            out |= {(w, max(fitting)), (max(fitting), w)}
    return out


def test_default_1024_max_1024_gives_25_buckets_all_with_a_1024_side():
    b = bucket_list(BucketSettings((1024, 1024), min_reso=256, max_reso=1024, step=64))
    assert len(b) == 25 and all(1024 in x for x in b)
    assert (832, 1216) not in b
    assert set(b) == reference_buckets(1024 * 1024, 256, 1024, 64)


def test_lorakit_default_max_2048_gives_41_buckets():
    b = bucket_list(BucketSettings((1024, 1024), min_reso=256, max_reso=2048, step=64))
    assert len(b) == 41
    assert {(832, 1216), (1216, 832), (1024, 1024), (2048, 512), (512, 2048)} <= set(b)
    assert set(b) == reference_buckets(1024 * 1024, 256, 2048, 64)
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 1024 * 1024 for w, h in b)


@pytest.mark.parametrize("res,lo,hi,s", [((512, 512), 256, 1024, 64), ((1024, 768), 256, 2048, 64),
                                         ((768, 768), 320, 1536, 32), ((1000, 1000), 200, 1100, 64)])
def test_bucket_list_matches_reference(res, lo, hi, s):
    got = bucket_list(BucketSettings(res, min_reso=lo, max_reso=hi, step=s))
    assert set(got) == reference_buckets(res[0] * res[1], lo, hi, s)
    assert len(got) == len(set(got))


def test_resolution_pair_is_an_area():
    assert parse_resolution([1024, 768]) == (1024, 768)
    b = bucket_list(BucketSettings((1024, 768), max_reso=2048))
    assert (832, 832) in b and all(w * h <= 1024 * 768 for w, h in b)
    for bad in (0, True, [1024], [1024, 0], "1024"):
        with pytest.raises(ConfigError, match="^data.resolution"):
            parse_resolution(bad)


def ref_place(size, buckets):
    """Nearest aspect ratio (first on ties), cover-resize with rounding, centred crop."""
    w, h = size
    if size in buckets:
        return size, size, (0, 0)
    errs = [abs(bw / bh - w / h) for bw, bh in buckets]
    bw, bh = buckets[errs.index(min(errs))]
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
    return (bw, bh), (rw, rh), ((rw - bw) // 2, (rh - bh) // 2)


@settings(max_examples=300, deadline=None)
@given(st.integers(16, 5000), st.integers(16, 5000))
def test_placement_matches_reference_and_covers(w, h):
    s = BucketSettings((1024, 1024), max_reso=2048)
    b = bucket_list(s)
    pl = place((w, h), s, b)
    ref_bucket, ref_resized, ref_crop = ref_place((w, h), b)
    assert pl.bucket == ref_bucket
    # rounding of the long side may differ by one pixel between "half up" and banker's rounding
    assert abs(pl.resized[0] - ref_resized[0]) <= 1 and abs(pl.resized[1] - ref_resized[1]) <= 1
    assert abs(pl.crop[0] - ref_crop[0]) <= 1 and abs(pl.crop[1] - ref_crop[1]) <= 1
    assert pl.resized[0] >= pl.bucket[0] and pl.resized[1] >= pl.bucket[1]
    assert pl.resized[0] == pl.bucket[0] or pl.resized[1] == pl.bucket[1]      # short side matches exactly
    assert 0 <= pl.crop[0] <= pl.resized[0] - pl.bucket[0] and 0 <= pl.crop[1] <= pl.resized[1] - pl.bucket[1]


def test_exact_bucket_size_is_not_resized():
    pl = place((832, 1216), BucketSettings((1024, 1024), max_reso=2048))
    assert (pl.bucket, pl.resized, pl.crop) == ((832, 1216), (832, 1216), (0, 0))


def test_examples_by_hand():
    s = BucketSettings((1024, 1024), max_reso=2048)
    # 3000x2000 (ar 1.5): candidates 1216x832 (1.4615) and 1280x768 (1.667) → 1216x832;
    # cover: width 1216 → height 2000*1216/3000 = 810.7 < 832, so height 832, width 3000*832/2000 = 1248
    pl = place((3000, 2000), s)
    assert (pl.bucket, pl.resized, pl.crop) == ((1216, 832), (1248, 832), (16, 0))


def test_no_upscale():
    s = BucketSettings((1024, 1024), no_upscale=True)
    pl = place((2000, 1000), s)   # area 2e6 > 1024²: scale √(1048576/2e6) → 1448x724 → floor to 64s
    assert (pl.bucket, pl.resized, pl.crop) == ((1408, 704), (1448, 724), (20, 10))
    pl = place((300, 200), s)     # small: never upscaled, bucket floors each side
    assert (pl.bucket, pl.resized, pl.crop) == ((256, 192), (300, 200), (22, 4))
    assert bucket_list(s) == []


def test_buckets_off_is_one_square():
    s = BucketSettings((512, 512), enable_bucket=False)
    assert bucket_list(s) == [(512, 512)]
    pl = place((1000, 500), s)
    assert (pl.bucket, pl.resized, pl.crop) == ((512, 512), (1024, 512), (256, 0))


def test_divisibility():
    check_divisibility(BucketSettings((1024, 1024), step=64), 32)
    with pytest.raises(ConfigError, match="^data.bucket_reso_steps: 32 is not a multiple of 64"):
        check_divisibility(BucketSettings((1024, 1024), step=32), 64)
    with pytest.raises(ConfigError, match="^data.resolution"):
        check_divisibility(BucketSettings((1000, 1000), enable_bucket=False, step=64), 64)


def test_validate_min_max():
    from lorakit.data.buckets import validate
    validate(BucketSettings((1024, 1024), max_reso=2048), 64)
    with pytest.raises(ConfigError, match="^data.max_bucket_reso: the square bucket of the resolution .1024."):
        validate(BucketSettings((1024, 1024), max_reso=512), 64)
    with pytest.raises(ConfigError, match="^data.min_bucket_reso: 1024 is larger"):
        validate(BucketSettings((768, 768), min_reso=1024, max_reso=512), 64)
