"""models.base.to_gpu: the training step's host-to-device copies go through a few reused page-locked buffers per
shape. The CPU suite checks the buffer bookkeeping with stand-in events; the real copies (queued behind a busy GPU,
values intact) are checked on the GPU by tests/integration/test_cuda_paths.py."""

from __future__ import annotations

import torch

from lorakit.models import base


class Event:
    """A CUDA event stand-in: ``busy`` until the copy it marks is done; ``synchronize`` waits for that."""

    def __init__(self) -> None:
        self.busy, self.waits = False, 0

    def query(self) -> bool:
        return not self.busy

    def synchronize(self) -> None:
        self.waits += int(self.busy)
        self.busy = False


def test_a_cpu_target_is_a_plain_copy():
    t = torch.randn(3, 4)
    out = base.to_gpu(t, "cpu", torch.float64)
    assert out.dtype == torch.float64 and torch.equal(out, t.double())
    assert base.to_gpu(t, torch.device("cpu")) is t  # nothing to move: no copy, no staging
    assert not base._STAGING


def test_staging_reuses_a_finished_buffer_and_waits_only_when_all_are_in_flight():
    slots: list = []
    made: list = []

    def make():
        made.append((torch.empty(2), Event()))
        return made[-1]

    def take():
        slot = base.staging_slot(slots, make)
        slot[1].busy = True  # the copy from it is now queued (to_gpu records the event)
        return slot

    a = take()
    b = take()  # a still in flight: a second buffer
    assert (a is made[0], b is made[1], len(made)) == (True, True, 2)
    a[1].busy = False  # a's copy finished: reused, no new buffer, nobody waits
    assert take() is a and len(made) == 2 and a[1].waits == 0
    assert slots == [b, a]  # least recently used first
    while len(made) < base._SLOTS:
        take()
    # every buffer in flight and no room for another: the least recently used one (b), after waiting for its copy
    assert take() is b and b[1].waits == 1 and len(made) == base._SLOTS
    assert all(s[1].waits == 0 for s in slots if s is not b)
