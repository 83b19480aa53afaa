"""Inductor joint-graph pre-passes that chain: each runs its own graph edit, then the pass that was installed before
it, so lorakit's passes (fp8 compute's recompute tags, ``memory.save_attention``) and any other stack in
``torch._inductor.config.joint_custom_pre_pass``."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

try:
    from torch._inductor.custom_graph_pass import CustomGraphPass as _GraphPass
except ImportError:  # older torch: a plain callable (inductor then skips its graph cache for these compiles)
    _GraphPass = object  # type: ignore[misc,assignment]


class ChainedPass(_GraphPass):  # type: ignore[misc,valid-type]
    """``edit(graph)``, then ``previous(graph)``. ``key`` names the edit in inductor's cache key (with the previous
    pass's key after it): change it whenever the edit changes."""

    key = "lorakit-chained"

    def __init__(self, previous: Optional[Callable] = None) -> None:
        self.previous = previous

    def edit(self, graph: torch.fx.Graph) -> Any:
        raise NotImplementedError

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.edit(graph)
        if self.previous is not None:
            self.previous(graph)

    def uuid(self) -> Any:
        before = self.previous.uuid() if hasattr(self.previous, "uuid") else repr(self.previous)
        return f"{self.key}:{before}"
