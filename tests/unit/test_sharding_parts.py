"""distributed.shard = "base" (lorakit/train/sharding.py) and distributed.overlap (train/distributed.py: Buckets).

The two-process test runs tests/unit/sharding_worker.py as two gloo processes: one step of a small block model with
the base sharded by ``sharding.shard_base`` (FSDP2), gradients summed by ``distributed.exchange`` after backward and
by the overlapped buckets, against the unsharded model on the whole batch in one process. Tolerance: the overlapped
and the plain exchange are compared bit for bit (each element is the same sum a + b of the two processes' numbers,
only grouped in other buffers); against one process rel 1e-5 (one batch-4 kernel vs two batch-2 kernels summed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorakit.config.load import load_config
from lorakit.errors import ConfigError
from lorakit.models.base import Batch, NoisedInput
from lorakit.train import budget, distributed, sharding

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo processes")
def test_a_sharded_step_equals_one_process_and_the_overlapped_exchange_equals_the_plain_one():
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_PORT=str(port))
    procs = [subprocess.Popen([sys.executable, "-m", "tests.unit.sharding_worker"], cwd=REPO, text=True,
                              env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    for r in results:
        assert r["least"] == 1000  # the all-reduce MIN of 1007 (rank 0) and 1000 (rank 1), the same on both
        assert r["local_rows"] == [8, 16]  # each process holds half of each frozen block weight (16 × 16)
        assert r["buckets"] == 4  # 3 blocks' pairs + the unused parameter: several launched during backward
        assert r["overlap_equals_exchange"] is True
        assert r["equals_one_process"] is True
        assert r["unused_grad_none"] is True and r["lora_grads"] == 6  # no process computed one: none, as alone
        assert r["loss"] == pytest.approx(r["loss_ref"], rel=1e-6) and r["loss"] == r["loss_no_overlap"]


def _flux(tmp, **over):
    data = {"model": {"family": "flux1", "checkpoint": "x.safetensors"}, "training": {"device": "cpu"},
            "data": {"dir": str(tmp)}, "distributed": {"shard": "base"}}
    for key, value in over.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return load_config(None, data=data)


def test_what_a_sharded_base_refuses(tmp_path):
    with pytest.raises(ConfigError, match="distributed.shard.*applies only to flux1, flux2, qwenimage, not sdxl"):
        load_config(None, data={"model": {"family": "sdxl", "checkpoint": "x.safetensors"},
                                "data": {"dir": str(tmp_path)}, "distributed": {"shard": "base"}})
    sharding.check_config(_flux(tmp_path), 2)
    distributed.check_config(_flux(tmp_path), 2)
    with pytest.raises(ConfigError, match="shards the base over several processes: start the run with --gpus N"):
        sharding.check_config(_flux(tmp_path), 1)
    for key, value, why in (("blocks_to_swap", 4, "block swap streams whole blocks"),
                            ("fp8_base", True, "float8 storage"), ("fp8_compute", True, "float8 matmuls"),
                            ("compile", True, "compiled blocks"),
                            ("modulation_on_cpu", True, "it keeps Linears on the host")):
        with pytest.raises(ConfigError, match=f"memory.{key} with distributed.shard = \"base\": {why}"):
            distributed.check_config(_flux(tmp_path, **{f"memory__{key}": value}), 2)
    sharding.check_config(_flux(tmp_path, memory__blocks_to_swap=4, distributed__shard="none"), 2)  # off: no check


def _batch(k: int) -> tuple[Batch, NoisedInput]:
    batch = Batch(latents=torch.arange(k * 2.0).reshape(k, 2), text={"ctx": torch.arange(k * 3.0).reshape(k, 3)},
                  original_sizes=[(i, i) for i in range(k)], crop_top_lefts=[(0, 0)] * k,
                  target_sizes=[(64, 64)] * k, loss_weight=torch.ones(k), captions=[f"c{i}" for i in range(k)])
    return batch, NoisedInput(model_input=batch.latents + 1, timesteps=torch.arange(k), target=batch.latents,
                              weight=torch.tensor(1.0))


def test_a_sharded_rank_with_an_empty_slice_runs_one_sample_at_weight_zero(monkeypatch):
    # unsharded the empty rank skips its forward; sharded it must run one (it gathers shards with the others)
    monkeypatch.setattr(distributed, "_G", distributed.Group(rank=0, world=2))
    b, _, share = distributed.local_part(*_batch(1))
    assert share == 0 and b.latents.shape[0] == 0
    monkeypatch.setattr(distributed, "_G", distributed.Group(rank=0, world=2, sharded=True))
    b, n, share = distributed.local_part(*_batch(1))
    assert share == 0 and b.captions == ["c0"] and n.model_input.shape[0] == 1
    b, _, share = distributed.local_part(*_batch(4))  # a full batch: the ordinary slice
    assert share == 0.5 and b.captions == ["c0", "c1"]


def test_per_card_memory_with_and_without_sharding(tmp_path):
    gib = budget.GIB
    sizes = budget.Sizes(outside=(2 * gib, gib), blocks=[(3 * gib, 0), (5 * gib, 0), (4 * gib, 0)], lora_params=2**20)
    spec = type("S", (), {"activation_gib": (1.5, 6.0)})()
    cfg = _flux(tmp_path, data__resolution=1024, training__batch_size=2, optimizer__name="adamw")
    whole = sharding.per_card(sizes, spec, cfg, 4, sharded=False)
    split = sharding.per_card(sizes, spec, cfg, 4, sharded=True)
    assert whole["weights"] == 14.0 and "gathered blocks" not in whole
    assert split["weights"] == 14.0 / 4
    assert split["gathered blocks"] == 2 * 5.0 * 3 / 4  # the largest block gathered twice (running + prefetched)
    assert split["activations"] == whole["activations"] == 1.5 * 2  # per process: checkpointing, batch 2 of 1024²
    half = sharding.per_card(sizes, spec, _flux(tmp_path, data__resolution=1024, memory__checkpoint_fraction=0.5), 4,
                             sharded=True)
    assert half["activations"] == 0.5 * 1.5 + 0.5 * 6.0  # the blocks left out of checkpointing keep theirs
    assert split["LoRA+optimizer"] == 2**20 * 16 / gib  # fp32 weights + grads + AdamW's two moments, on every card


def test_lorakit_plan_for_two_cards_shows_the_memory_of_each_with_and_without_sharding(capsys, monkeypatch, tmp_path):
    from torch import nn

    from lorakit.models.registry import get_family
    from lorakit.train import autoplan, planview
    from tests.unit.test_autoplan import sizes_of

    sizes = sizes_of("flux1")  # the full-size FLUX.1-dev's byte counts (tests/unit/data/planner_sizes.json)
    monkeypatch.setattr(planview, "meta_model", lambda cfg: (get_family(cfg.model.family).SPEC, nn.Module(), [], []))
    monkeypatch.setattr(planview, "sizes_of", lambda cfg: sizes)
    real_choose = autoplan.choose
    monkeypatch.setattr(autoplan, "choose", lambda *a, **k: real_choose(*a, **{**k, "sizes": sizes}))
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "flux1/character"\n[model]\ncheckpoint = "/nonexistent/flux1-dev.safetensors"\n'
                    '[data]\ndir = "/tmp"\n[optimizer]\nname = "adamw"\n')
    assert planview.main(str(toml), [], "rtx4090", 1) == 0
    assert "cards (memory.vram_gb" not in capsys.readouterr().out  # one card: as before
    assert planview.main(str(toml), [], "rtx4090", 4) == 0
    text = capsys.readouterr().out
    assert ("  4 cards (memory.vram_gb and every peak here are per card: 22.5 GiB each; training.batch_size 1 is per "
            "card, the global batch 4):") in text
    rows = {line.split('"')[1]: line for line in text.splitlines() if "(whole base" in line or "(base sharded" in line}
    base = (sizes.outside[0] + sum(b[0] for b in sizes.blocks)) / budget.GIB  # ~22 GiB of bf16 weights
    gathered = 2 * max(b[0] for b in sizes.blocks) * 3 / 4 / budget.GIB
    assert f"weights {base:.2f}," in rows["none"] and rows["none"].endswith("does not fit")  # 22.5 GiB cards
    assert f"weights {base / 4:.2f}, gathered blocks {gathered:.2f}," in rows["base"] and rows["base"].endswith(" fits")
    assert 'one card cannot hold this base as loaded: distributed.shard = "base" with --gpus 4 fits' in text
    assert planview.main(str(toml), ["distributed.shard=base"], "rtx4090", 4) == 0
    assert "this config shards (distributed.shard = \"base\"): the run uses the sharded row" in capsys.readouterr().out
    # a family that cannot shard: the whole-base row only, and why
    sdxl = tmp_path / "sdxl.toml"
    sdxl.write_text('preset = "sdxl/character"\n[model]\ncheckpoint = "/nonexistent/sdxl.safetensors"\n'
                    '[data]\ndir = "/tmp"\n')
    monkeypatch.setattr(planview, "sizes_of", lambda cfg: sizes_of("sdxl"))
    monkeypatch.setattr(autoplan, "choose", lambda *a, **k: real_choose(*a, **{**k, "sizes": sizes_of("sdxl")}))
    assert planview.main(str(sdxl), [], "rtx4090", 2) == 0
    text = capsys.readouterr().out
    assert '(base sharded' not in text and 'distributed.shard = "base" is not offered for sdxl (only flux1, flux2, ' \
        'qwenimage)' in text
