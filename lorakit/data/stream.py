"""The deterministic, resumable order in which training sees samples.

An epoch is every usable item × its repeats, grouped by (dataset group, bucket) so a batch never mixes
sizes; each bucket's samples are shuffled and cut into `batch_size` chunks (the last one may be short),
then the order of all chunks is shuffled — all with rngs derived from (seed, epoch), as kohya reshuffles
with seed + epoch. Captions and flips of the sample at (epoch, position, slot) come from rngs derived from
those numbers alone, so `load_state_dict` restarts the stream on exactly the batch, caption and flip it
would have produced: resuming a run replays nothing and skips nothing.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterator

from lorakit.data.captions import CaptionPipeline
from lorakit.data.scan import Dataset, ImageItem

Sample = tuple[ImageItem, bool, str]  # (item, flipped, caption text)


def _rng(*parts: object) -> random.Random:
    """A Random seeded from a string of the parts (str seeds are hashed with SHA-512: stable across runs)."""
    return random.Random("lorakit:" + ":".join(str(p) for p in parts))


class BatchStream:
    """Infinite iterator of batches (lists of (item, flipped, caption)), epoch after epoch."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, processes: int = 1):
        """``processes``: data-parallel processes (train/distributed.py). Batch sizes (``batch_size`` and a dataset
        group's own) are per process; the stream yields global batches of ``processes`` × those, which every process
        draws alike and slices."""
        if batch_size < 1:
            raise ValueError(f"training.batch_size: must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.processes = processes
        self.batch_size = batch_size * processes
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._pipelines = [CaptionPipeline(s.caption) for s in dataset.subsets]
        self._plan: tuple[int, list[list[ImageItem]]] | None = None

    def _batch_size_of(self, group: int) -> int:
        groups = self.dataset.groups
        override = groups[group].batch_size if group < len(groups) else None
        return override * self.processes if override else self.batch_size

    def epoch_batches(self, epoch: int) -> list[list[ImageItem]]:
        """The batches of `epoch`, in order (items only; captions and flips are drawn when yielded)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        by_bucket: dict[tuple[int, int, int], list[ImageItem]] = defaultdict(list)
        for item in self.dataset.items:
            by_bucket[(item.group, *item.bucket)].extend([item] * item.repeats)
        content_rng = _rng(self.seed, epoch, "content")
        batches: list[list[ImageItem]] = []
        for key in sorted(by_bucket):
            samples = by_bucket[key]
            content_rng.shuffle(samples)
            bs = self._batch_size_of(key[0])
            batches += [samples[i:i + bs] for i in range(0, len(samples), bs)]
        _rng(self.seed + epoch, "order").shuffle(batches)
        self._plan = (epoch, batches)
        return batches

    @property
    def steps_per_epoch(self) -> int:
        return len(self.epoch_batches(0))

    def _make(self, epoch: int, position: int, items: list[ImageItem]) -> list[Sample]:
        cap_rng = _rng(self.seed, epoch, position, "caption")
        flip_rng = _rng(self.seed, epoch, position, "flip")
        out: list[Sample] = []
        for item in items:
            flip_on = self.dataset.subsets[item.subset].flip_aug
            flipped = flip_on and flip_rng.random() < 0.5
            out.append((item, flipped, self._pipelines[item.subset].make(item.caption, cap_rng)))
        return out

    def __iter__(self) -> Iterator[list[Sample]]:
        return self

    def __next__(self) -> list[Sample]:
        batches = self.epoch_batches(self.epoch)
        if not batches:
            raise StopIteration
        if self.position >= len(batches):
            self.epoch, self.position = self.epoch + 1, 0
            batches = self.epoch_batches(self.epoch)
        batch = self._make(self.epoch, self.position, batches[self.position])
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        """Where the stream stands: the next batch is batch `position` of `epoch`."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if "seed" in state and state["seed"] != self.seed:
            raise ValueError(f"resume: the data stream was saved with seed {state['seed']}, this run uses "
                             f"{self.seed}; set training.seed = {state['seed']} to resume exactly")
        if "batch_size" in state and state["batch_size"] != self.batch_size:
            raise ValueError(f"resume: the data stream was saved with batch size {state['batch_size']}, this run "
                             f"uses {self.batch_size}; set training.batch_size = {state['batch_size']} to resume")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
