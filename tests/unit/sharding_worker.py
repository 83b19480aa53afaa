"""One of two gloo processes started by tests/unit/test_sharding_parts.py (RANK, WORLD_SIZE=2, MASTER_PORT set).

A small model of repeated blocks (frozen Linears, LoRA-like trainable pairs inside each block) trains one step on a
global batch of 4 three ways: unsharded on the whole batch in this process (the reference); sharded over the two
processes (``sharding.shard_base``, FSDP2) with each process on its half and the gradients summed by
``distributed.exchange`` after backward; and the same with the exchange overlapped with backward
(``distributed.Buckets``, buckets of ~1 pair so that several are launched during backward). Then the least free memory
of both (``distributed.least``, distributed.shard = "auto"'s all-reduce MIN). Prints one JSON line.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from lorakit.train import distributed, sharding

D, R = 16, 4


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(D, D)
        self.down = nn.Parameter(torch.randn(R, D) * 0.3)
        self.up = nn.Parameter(torch.randn(D, R) * 0.3)

    def forward(self, x):
        return torch.tanh(self.base(x) + x @ self.down.T @ self.up.T)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(D, D)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(D, D)
        self.unused = nn.Parameter(torch.zeros(3))  # trainable, never used: keeps no gradient (as alone)
        for m in (self.embed, self.head, *(b.base for b in self.blocks)):
            m.requires_grad_(False)

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def trainable(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def step(net, x, y, share: float) -> torch.Tensor:
    loss = ((net(x) - y) ** 2).mean() * share
    loss.backward()
    return loss.detach()


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore("127.0.0.1", int(os.environ["MASTER_PORT"]), world, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    distributed._G = distributed.Group(rank, world, 60.0, 0, store, None)
    torch.manual_seed(0)
    net = Net()
    x, y = torch.randn(4, D), torch.randn(4, D)
    mine = slice(rank * 2, rank * 2 + 2)
    cfg = SimpleNamespace(distributed=SimpleNamespace(shard="base", overlap=False))

    ref = copy.deepcopy(net)
    ref_loss = step(ref, x, y, 1.0)

    grads, losses, local_rows = {}, {}, None
    for overlap in (False, True):
        model = copy.deepcopy(net)
        blocks = list(model.blocks)
        assert sharding.shard_base(cfg, model, blocks, torch.device("cpu"), world, lambda _: None) == 3
        local_rows = tuple(model.blocks[0].base.weight.to_local().shape)  # this process's shard
        params = trainable(model)
        distributed._G.overlap = distributed.Buckets(params, bucket_bytes=2 * R * D * 4) if overlap else None
        distributed._G.step = 0
        if overlap:
            distributed._G.overlap.arm()
        total = step(model, x[mine], y[mine], 0.5)
        distributed.exchange(params, total)
        grads[overlap] = [None if p.grad is None else p.grad.clone() for p in params]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        losses[overlap] = float(total)
    want = [p.grad for p in trainable(ref)]
    exact = all((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
                for a, b in zip(grads[False], grads[True]))
    close = all((g is None and w is None) or (g is not None and w is not None and torch.allclose(g, w, rtol=1e-5,
                                                                                                 atol=1e-7))
                for g, w in zip(grads[True], want))
    least = distributed.least(1000 + 7 * (1 - rank))  # rank 0 offers 1007, rank 1 1000: both take 1000
    print(json.dumps({"rank": rank, "least": least, "local_rows": local_rows, "overlap_equals_exchange": exact,
                      "equals_one_process": close, "unused_grad_none": grads[True][names.index("unused")] is None,
                      "lora_grads": sum(g is not None for g in grads[True]),
                      "buckets": len(distributed._G.overlap.buckets), "loss": losses[True],
                      "loss_ref": float(ref_loss), "loss_no_overlap": losses[False]}))
    sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
