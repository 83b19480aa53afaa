"""Caption pipeline: prefix/suffix, dropout, keep_tokens, shuffle, tag dropout, determinism."""

from __future__ import annotations

import itertools
import random
from collections import Counter

from lorakit.data.captions import CaptionPipeline, CaptionSettings

CAP = "ohwx, woman, red hat, beach, smiling, sunset"


def test_plain_caption_unchanged_and_prefix_suffix():
    assert CaptionPipeline(CaptionSettings()).make(CAP, random.Random(0)) == CAP
    s = CaptionSettings(prefix="photo of", suffix="high quality")
    assert CaptionPipeline(s).make("ohwx", random.Random(0)) == "photo of ohwx high quality"
    assert CaptionPipeline(s).make("", random.Random(0)) == "photo of high quality"


def test_shuffle_keeps_first_tokens_and_permutes_rest():
    p = CaptionPipeline(CaptionSettings(shuffle=True, keep_tokens=2))
    seen = set()
    for seed in range(30):
        out = p.make(CAP, random.Random(seed)).split(", ")
        assert out[:2] == ["ohwx", "woman"]
        assert sorted(out) == sorted(t.strip() for t in CAP.split(","))
        seen.add(tuple(out))
    assert len(seen) > 10                                       # 4! = 24 orders, most of them seen


def test_deterministic_for_a_seed():
    s = CaptionSettings(shuffle=True, tag_dropout_rate=0.3, dropout_rate=0.1, keep_tokens=1)
    a = [CaptionPipeline(s).make(CAP, random.Random(7)) for _ in range(3)]
    assert len(set(a)) == 1
    # identical rng stream → identical output, compared with an rng advanced the same way
    r1, r2 = random.Random(3), random.Random(3)
    assert [CaptionPipeline(s).make(CAP, r1) for _ in range(20)] == [CaptionPipeline(s).make(CAP, r2)
                                                                      for _ in range(20)]


def test_caption_dropout_rate():
    p = CaptionPipeline(CaptionSettings(dropout_rate=0.25))
    rng = random.Random(1)
    n = sum(p.make(CAP, rng) == "" for _ in range(4000))
    assert 850 < n < 1150                                       # binomial(4000, .25): mean 1000, sd 27
    assert CaptionPipeline(CaptionSettings(dropout_rate=1.0)).make(CAP, rng) == ""


def test_tag_dropout_never_drops_kept_tokens():
    p = CaptionPipeline(CaptionSettings(tag_dropout_rate=1.0, keep_tokens=1))
    assert p.make(CAP, random.Random(0)) == "ohwx"
    p = CaptionPipeline(CaptionSettings(tag_dropout_rate=0.5))
    rng = random.Random(2)
    counts = Counter(len(p.make(CAP, rng).split(", ")) for _ in range(2000))
    mean = sum(k * v for k, v in counts.items()) / 2000
    assert abs(mean - 3.0) < 0.15                               # 6 tags × 0.5 kept


def test_custom_separator_rejoined_with_comma_space():
    p = CaptionPipeline(CaptionSettings(shuffle=True, separator="|", keep_tokens=1))
    out = p.make("a | b | c", random.Random(0))
    assert out.startswith("a, ") and sorted(out.split(", ")) == ["a", "b", "c"]


def test_fixed_captions_and_refusal(tmp_path):
    import pytest

    from lorakit.config.schema import DataCfg
    from lorakit.data.captions import fixed_captions
    from lorakit.data.scan import scan_dataset
    from lorakit.data.stream import BatchStream
    from lorakit.errors import ConfigError
    from tests.unit.data_corpus import simple_dataset
    root = simple_dataset(tmp_path / "d", {"2_ohwx": [(64, 64)] * 3})
    small = dict(resolution=64, min_bucket_reso=64, bucket_reso_steps=32)
    ds = scan_dataset(DataCfg(dir=str(root), caption_prefix="photo of", **small), divisibility=32)
    caps = fixed_captions(ds)
    assert caps == [f"photo of ohwx, picture {i}, tag{i}" for i in range(3)]
    streamed = {c for b in itertools.islice(BatchStream(ds, 2, seed=0), 6) for _, _, c in b}
    assert streamed == set(caps)
    ds = scan_dataset(DataCfg(dir=str(root), caption_tag_dropout_rate=0.1, **small), divisibility=32)
    with pytest.raises(ConfigError, match=r"data.caption_tag_dropout_rate is set for 2_ohwx"):
        fixed_captions(ds)
