"""The pieces of data-parallel training that need no second process (train/distributed.py; the processes
themselves: tests/integration/test_multi_gpu.py): the global sample order, a rank's slice of a batch and its share
of the loss, the global batch a resume compares, and the refusals."""

from __future__ import annotations

import itertools

import pytest
import torch

from lorakit.config.load import load_config
from lorakit.config.schema import DataCfg
from lorakit.data.scan import scan_dataset
from lorakit.data.stream import BatchStream
from lorakit.errors import ConfigError
from lorakit.models.base import Batch, NoisedInput
from lorakit.train import distributed
from tests.unit.data_corpus import simple_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = simple_dataset(tmp_path_factory.mktemp("s"), {"3_ohwx": [(64, 64)] * 5 + [(96, 64)] * 3})
    return scan_dataset(DataCfg(dir=str(root), shuffle_caption=True, flip_aug=True, resolution=64,
                                min_bucket_reso=64, max_bucket_reso=128), divisibility=32)


def _sig(batch):
    return [(it.path.name, flipped, cap) for it, flipped, cap in batch]


def test_two_processes_of_batch_2_draw_the_batches_of_one_process_of_batch_4(ds):
    one = BatchStream(ds, 4, seed=3)
    two = BatchStream(ds, 2, seed=3, processes=2)
    assert two.batch_size == 4 and two.steps_per_epoch == one.steps_per_epoch
    assert [_sig(b) for b in itertools.islice(two, 12)] == [_sig(b) for b in itertools.islice(one, 12)]
    assert two.state_dict()["batch_size"] == 4  # a resume compares the global batch


@pytest.fixture
def rank(monkeypatch):
    def as_rank(r: int, world: int = 2):
        monkeypatch.setattr(distributed, "_G", distributed.Group(rank=r, world=world))
    return as_rank


def _batch(k: int) -> tuple[Batch, NoisedInput]:
    batch = Batch(latents=torch.arange(k * 2.0).reshape(k, 2), text={"ctx": torch.arange(k * 3.0).reshape(k, 3)},
                  original_sizes=[(i, i) for i in range(k)], crop_top_lefts=[(0, 0)] * k,
                  target_sizes=[(64, 64)] * k, loss_weight=torch.arange(1.0, k + 1), captions=[f"c{i}" for i in range(k)])
    noised = NoisedInput(model_input=batch.latents + 100, timesteps=torch.arange(k), target=batch.latents * 2,
                         weight=torch.tensor(1.0))
    return batch, noised


def test_each_rank_takes_its_slice_and_the_shares_sum_to_one(rank):
    batch, noised = _batch(4)
    parts = []
    for r in (0, 1):
        rank(r)
        parts.append(distributed.local_part(*_batch(4)))
    (b0, n0, s0), (b1, n1, s1) = parts
    assert s0 == s1 == 0.5
    assert torch.equal(torch.cat([b0.latents, b1.latents]), batch.latents)
    assert torch.equal(torch.cat([b0.text["ctx"], b1.text["ctx"]]), batch.text["ctx"])
    assert b0.captions == ["c0", "c1"] and b1.captions == ["c2", "c3"]
    assert b1.original_sizes == [(2, 2), (3, 3)] and torch.equal(b1.loss_weight, torch.tensor([3.0, 4.0]))
    assert torch.equal(n1.timesteps, torch.tensor([2, 3])) and torch.equal(n1.target, batch.latents[2:] * 2)
    assert n1.weight.dim() == 0  # a scalar weight is the whole batch's
    # share-weighted slice means = the whole batch's mean (what the summed gradients rest on)
    whole = batch.latents.sum(1).mean()
    assert float(s0 * b0.latents.sum(1).mean() + s1 * b1.latents.sum(1).mean()) == pytest.approx(float(whole))


def test_a_short_batch_leaves_a_rank_empty_with_share_zero(rank):
    rank(0, world=2)
    b, _, share = distributed.local_part(*_batch(1))
    assert share == 0 and b.latents.shape[0] == 0
    rank(1, world=2)
    b, _, share = distributed.local_part(*_batch(1))
    assert share == 1 and b.captions == ["c0"]


def test_alone_everything_is_kept():
    batch, noised = _batch(3)
    assert distributed.local_part(batch, noised) == (batch, noised, 1.0)


def test_the_global_batch_a_resume_compares(rank):
    settings = {"training.batch_size": 2, "memory.fp8_base": False}
    assert distributed.global_batch(settings, 1) == settings
    assert distributed.global_batch(settings, 3)["training.batch_size"] == 6
    rank(0, world=4)
    assert distributed.global_batch(settings)["training.batch_size"] == 8


def _cfg(tmp, **over):
    data = {"model": {"family": "sdxl", "checkpoint": "x.safetensors"}, "training": {"device": "cpu"},
            "data": {"dir": str(tmp)}, "distributed": {}}
    for key, value in over.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return load_config(None, data=data)


def test_what_several_processes_refuse(tmp_path):
    distributed.check_config(_cfg(tmp_path), 2)  # the CPU switch: gloo processes
    with pytest.raises(ConfigError, match="training.device = 'cuda:1': with several processes"):
        distributed.check_config(_cfg(tmp_path, training__device="cuda:1"), 2)
    with pytest.raises(ConfigError, match="memory.fused_backward = true"):
        distributed.check_config(_cfg(tmp_path, memory__fused_backward=True), 2)
    with pytest.raises(ConfigError, match="nccl.* needs GPUs"):
        distributed.check_config(_cfg(tmp_path, distributed__backend="nccl"), 2)
    with pytest.raises(ConfigError, match="--gpus 0"):
        distributed.launch(_cfg(tmp_path), 0, 0, ["train"], "run")
    with pytest.raises(ConfigError, match="--machine-rank 2: distributed.num_machines = 2 allows 0 to 1"):
        distributed.launch(_cfg(tmp_path, distributed__num_machines=2), 1, 2, ["train"], "run")
    with pytest.raises(ConfigError, match="main_process_port = 0 .* one machine only"):
        distributed.launch(_cfg(tmp_path, distributed__num_machines=2, distributed__main_process_port=0), 1, 0, ["train"], "run")
    with pytest.raises(ConfigError, match="distributed.timeout_s"):
        _cfg(tmp_path, distributed__timeout_s=0.5)
