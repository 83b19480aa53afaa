"""A spy on ``open`` inside one module: records how many bytes each ``read`` asked for (tests of readers that
must never read, or allocate, what a file merely claims)."""

from __future__ import annotations

import builtins
from typing import Any


class _Spy:
    def __init__(self, fh: Any, reads: list[int]):
        self.fh, self.reads = fh, reads

    def __enter__(self) -> "_Spy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.reads.append(n if n >= 0 else len(data))
        return data

    def seek(self, *a: Any) -> int:
        return self.fh.seek(*a)


def spy_reads(monkeypatch: Any, module: Any) -> list[int]:
    """Patch ``open`` in ``module``; returns the list that each read's requested size is appended to."""
    reads: list[int] = []
    real_open = builtins.open
    monkeypatch.setattr(module, "open", lambda p, mode="r", *a, **k: _Spy(real_open(p, mode, *a, **k), reads),
                        raising=False)
    return reads
