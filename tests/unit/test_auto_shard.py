"""distributed.shard = "auto" (issue 24): the automatic plan shards the base when one card cannot hold the plan.

``sharding.decide`` is a pure function of a config, the model's byte counts and a CardFacts: here the full-size FLUX.2
dev and Klein 4B transformers built on the meta device from header-only checkpoints (as ``lorakit plan`` builds them,
tests/unit/test_flux2_planning.py) and the SDXL U-Net's counts (tests/unit/data/planner_sizes.json), on fake 24 GiB
cards (an RTX 4090 of the card table with 23 GiB free). The expected outcomes are computed here from the byte counts:
the sharded per-card peak is 1/N of the bf16 weights + two gathered largest blocks × (N-1)/N + the LoRA with AdamW
(16 bytes a parameter) + the checkpointed activations + the planner's reserve."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lorakit.config.load import load_config
from lorakit.models.registry import get_family
from lorakit.train import budget, cards, planview, sharding

from .test_autoplan import sizes_of as counted_sizes
from .test_flux2_planning import bfl_header
from .test_identify import write_header_file

GIB = 2**30


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux2_auto_shard")
    return {s: write_header_file(root / f"flux2-{s}.safetensors", bfl_header(s)) for s in ("dev", "klein-4b")}


def card24(free_gib: float = 23.0) -> cards.CardFacts:
    return dataclasses.replace(cards.card("rtx4090"), free_bytes=int(free_gib * GIB), total_bytes=24 * GIB)


def flux2(checkpoint: Path, resolution: int = 1024, **sections):
    data = {"model": {"family": "flux2", "checkpoint": str(checkpoint)},
            "data": {"dir": "/tmp", "resolution": resolution}, "network": {"rank": 16}, "optimizer": {"name": "adamw"}, "training": {"mixed_precision": "bf16"}}
    for key, value in sections.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return load_config(None, data=data)


def decide(cfg, n: int, card=None, **kw) -> sharding.Decision:
    spec, model, blocks, trainable = planview.meta_model(cfg)
    return sharding.decide(cfg, budget.for_model(spec, model), planview.sizes_of(cfg), card or card24(), n,
                           cuda=kw.pop("cuda", True), model=model, blocks=blocks, trainable=trainable, **kw)


def sharded_peak(cfg, n: int) -> float:
    """The per-card peak of the sharded base, from the byte counts (every block checkpointed, batch 1)."""
    spec, model = planview.meta_model(cfg)[:2]
    spec = budget.for_model(spec, model)
    sizes = planview.sizes_of(cfg)
    weights = sizes.outside[0] + sum(b[0] for b in sizes.blocks)
    largest = max(b[0] for b in sizes.blocks)
    pixels = cfg.data.resolution ** 2 / 1024**2
    return ((weights / n + 2 * largest * (n - 1) / n + sizes.lora_params * 16) / GIB + spec.activation_gib[0] * pixels
            + budget.RESERVE_GIB)


def test_flux2_dev_on_24_gib_cards_shards_where_the_sharded_base_fits(checkpoints):
    cfg = flux2(checkpoints["dev"])
    for n in (2, 4, 8):
        d = decide(cfg, n)
        # one card: only fp8 storage with block swap fits 23 GiB (60 GiB of bf16 weights)
        m = d.single.applied.memory
        assert m.blocks_to_swap > 0 and m.fp8_base, n
        peak = sharded_peak(cfg, n)
        assert d.record["sharded_gib"] == pytest.approx(peak, abs=1e-3)
        assert d.shard == (peak <= 23.0), (n, peak)
    # the byte counts: 2 cards hold 30 GiB of weights each (never), 4 need ~27 GiB at 1024², 8 ~20 GiB
    assert [decide(cfg, n).shard for n in (2, 4, 8)] == [False, False, True]
    d = decide(cfg, 8)
    run = d.cfg.memory
    assert d.cfg.distributed.shard == "base" and sharding.on(d.cfg)
    assert (run.blocks_to_swap, run.fp8_base, run.compile, run.gradient_checkpointing, run.checkpoint_fraction) == \
        (0, False, False, True, 1.0)
    assert d.line.startswith('distributed.shard = "auto": the base is sharded over 8 processes (23 GiB per card')
    assert f"blocks_to_swap = {d.single.applied.memory.blocks_to_swap}" in d.line
    assert f"sharded ~{sharded_peak(cfg, 8):.1f} GiB per card" in d.line
    assert "not chosen with sharding (they do not compose with it): memory.blocks_to_swap, memory.fp8_base" in d.line
    assert d.record["sharded"] is True and d.record["single_card_gib"] == pytest.approx(d.single.estimate_gib, abs=1e-3)
    # at 512² the activations shrink: 4 cards fit, but the gathers (2 × 7/8 of 60 GiB over the 25 GB/s link a step)
    # take longer than the swapped single-card step: not sharded
    small = flux2(checkpoints["dev"], resolution=512)
    d4 = decide(small, 4)
    assert sharded_peak(small, 4) <= 23.0 and not d4.shard
    sizes = planview.sizes_of(small)
    weights = sizes.outside[0] + sum(b[0] for b in sizes.blocks)
    gather = 2 * weights * 3 / 4 / 25e9
    assert d4.record["sharded_s_step"] == pytest.approx(gather, rel=1e-3)
    assert gather > d4.single.step.seconds
    # a faster link (NVLink-class, 400 GB/s): the gathers hide behind the compute, sharding is not slower
    assert decide(small, 4, card=dataclasses.replace(card24(), host_link_gbs=400.0)).shard


def test_klein_4b_and_sdxl_never_shard(checkpoints):
    cfg = flux2(checkpoints["klein-4b"])
    for n in (2, 4, 8):
        d = decide(cfg, n)
        assert not d.shard and d.line == "" and d.single.applied.memory.blocks_to_swap == 0  # one card holds it
    sdxl = load_config(None, data={"model": {"family": "sdxl", "checkpoint": "/nonexistent/sdxl.safetensors"},
                                   "data": {"dir": "/tmp"}, "network": {"rank": 32}})
    assert sdxl.distributed.shard == "auto"
    never = load_config(None, data={"model": {"family": "sdxl", "checkpoint": "/nonexistent/sdxl.safetensors"},
                                    "data": {"dir": "/tmp"}, "distributed": {"shard": "none"}})
    assert never.distributed.shard == "none"  # "never" is accepted for every family ("base" is refused for sdxl)
    from lorakit.config.toml_io import dump_toml

    assert load_config(None, data=__import__("tomllib").loads(dump_toml(never))).distributed.shard == "none"
    from torch import nn

    for free in (23.0, 3.0):  # even where nothing fits one card: SDXL cannot shard, and says nothing of it
        d = sharding.decide(sdxl, get_family("sdxl").SPEC, counted_sizes("sdxl"), card24(free), 8, cuda=True,
                            model=nn.Module())
        assert not d.shard and d.line == "" and d.record is None


def test_auto_is_none_where_sharding_cannot_apply_and_a_hand_set_value_is_kept(checkpoints, monkeypatch):
    dev = checkpoints["dev"]
    assert flux2(dev).distributed.shard == "auto"  # the default
    for d in (decide(flux2(dev), 1), decide(flux2(dev), 8, cuda=False)):  # one process; CPU processes
        assert not d.shard and d.line == "" and d.record is None
    d = decide(flux2(dev, distributed__shard="none"), 8)
    assert not d.shard and d.cfg.distributed.shard == "none" and not d.planned and d.line == ""
    d = decide(flux2(dev, distributed__shard="base", memory__compile=False), 2)  # kept even where it does not fit
    assert d.shard and not d.planned
    d = decide(flux2(dev, memory__auto=False), 8)  # sharding could apply: said in one line
    assert not d.shard and d.line.startswith('distributed.shard = "auto": not sharded, memory.auto = false')
    # a family without measured rows: the planner cannot tell, so "auto" does not shard and says so
    bare = dataclasses.replace(budget.for_model(*planview.meta_model(flux2(dev))[:2]), measured_steps=())
    monkeypatch.setattr(cards, "measured_rows", lambda family: [])
    d = sharding.decide(flux2(dev), bare, planview.sizes_of(flux2(dev)), card24(), 8, cuda=True)
    assert not d.shard and "flux2 has no measured memory and speed rows to plan from" in d.line
    monkeypatch.undo()
    # a key the user set that does not compose with sharding: kept, not sharded, and the line says why
    d = decide(flux2(dev, memory__compile=True), 8)
    assert not d.shard and "memory.compile (as set) does not compose with sharding" in d.line
    # "auto" is not refused as "base" is: a single process with block swap set runs as before
    sharding.check_config(flux2(dev, memory__blocks_to_swap=4), 1)


def test_lorakit_plan_says_the_run_would_shard(checkpoints, tmp_path, capsys):
    toml = tmp_path / "dev.toml"
    toml.write_text(f'[model]\nfamily = "flux2"\ncheckpoint = "{checkpoints["dev"]}"\n[data]\ndir = "/tmp"\n'
                    '[network]\nrank = 16\n[optimizer]\nname = "adamw"\n')
    assert planview.main(str(toml), [], "rtx4090", 8) == 0  # 22.5 GiB free in the card table
    text = capsys.readouterr().out
    assert 'distributed.shard = "auto": the base is sharded over 8 processes (22.5 GiB per card' in text
    assert "the run would shard: `lorakit train --gpus 8` runs the base sharded" in text
    assert planview.main(str(toml), [], "rtx4090", 2) == 0
    text = capsys.readouterr().out
    assert "would shard" not in text and "base sharded, weights as loaded, checkpointing" in text
    assert planview.main(str(toml), ["distributed.shard=none"], "rtx4090", 8) == 0
    text = capsys.readouterr().out
    assert "the run would shard" not in text and "the run would not shard (distributed.shard = \"none\")" in text
    # a memory.vram_gb that neither one card nor the sharded base fits: the rows, then why the run would stop
    assert planview.main(str(toml), ["memory.vram_gb=12"], "rtx4090", 4) == 0
    text = capsys.readouterr().out
    assert "(base sharded, weights as loaded" in text and "    the run would stop: memory.vram_gb = 12" in text


def test_the_run_decides_from_the_least_free_memory_of_all_ranks(checkpoints, monkeypatch):
    """train/placement.py's call: the loaded denoiser's sizes, this card's facts with the free memory replaced by the
    least of all ranks (distributed.least: an all-reduce MIN, tested on two gloo processes in test_sharding_parts),
    the decision logged in one line. CUDA is faked (the card's facts and the float8 check)."""
    import torch

    from lorakit.train import autoplan, distributed, fp8, placement

    cfg = flux2(checkpoints["dev"])
    spec, model, blocks, trainable = planview.meta_model(cfg)
    monkeypatch.setattr(autoplan, "wanted", lambda cfg, device: bool(cfg.memory.auto))
    monkeypatch.setattr(fp8, "check_compute", lambda device: None)
    monkeypatch.setattr(distributed, "world", lambda: 8)
    asked = []

    def least(value):  # this rank has 40 GiB free, another only 23
        asked.append(value)
        return min(value, 23 * GIB)

    monkeypatch.setattr(distributed, "least", least)
    monkeypatch.setattr(cards, "local_card", lambda device: card24(40.0))
    lines: list[str] = []
    d = placement._decide(cfg, get_family("flux2").SPEC, model, blocks, trainable, torch.device("cuda"), None,
                          lines.append)
    assert asked == [40 * GIB] and d.shard and d.record["room_gib"] == 23.0
    assert lines == [d.line] and "(23 GiB per card, the least free of all ranks" in lines[0]
    # alone on the 40 GiB card: the single-card plan fits without block swap, nothing sharded, nothing said
    monkeypatch.setattr(distributed, "least", lambda value: value)
    lines.clear()
    d = placement._decide(cfg, get_family("flux2").SPEC, model, blocks, trainable, torch.device("cuda"), None,
                          lines.append)
    assert not d.shard and d.planned and d.single.applied.memory.blocks_to_swap == 0 and lines == []
