"""``memory.modulation_on_cpu``: FLUX.1's modulation weights stay in CPU memory.

Every FLUX.1 block starts with an adaptive norm whose Linear (``norm1.linear`` and ``norm1_context.linear`` in the
19 double blocks, ``norm.linear`` in the 38 single blocks) maps one vector, ``silu(temb)``, to that block's shifts,
scales and gates. Those Linears hold 3.2 B of FLUX.1-dev's 11.9 B parameters (6.0 GiB in bf16) but do almost no
work: one row in, one row out. ``temb`` depends only on the timestep, the guidance value and the pooled CLIP
text, which the host has before the step starts. So the host computes, per step, ``temb`` with its own copy of
``time_text_embed`` (60 MB) and every modulation Linear's frozen output, and sends them to the device in one
copy (2 MB per image); the Linears' weights never reach the GPU.

Inside the model, each of those Linears becomes a :class:`HostModulation` that returns the output the host
prepared for this call. A LoRA on them (FLUX.1 LoRAs target them) is untouched: peft wraps the stand-in like the
Linear before, and its down/up projections still run and train on the device, on the device's own ``temb``.
Nothing that needs a gradient changes: ``temb`` has none (no LoRA before it; training CLIP-L is refused with this
option), so the frozen part of these outputs never needed the weights in backward.

The outputs live in one device buffer, written in place each step (stream-ordered, so a backward still queued on
the device reads the step it belongs to): the compiled blocks see the same tensors every step.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.models.base import to_gpu

# the modulation Linears: attribute paths inside a double / single block
DOUBLE = ("norm1.linear", "norm1_context.linear")
SINGLE = ("norm.linear",)


class HostModulation(nn.Module):
    """Stands in for one frozen modulation Linear: its weights are kept on the host (outside the parameters, so
    moving the model leaves them there) and it returns the output :class:`HostModulations` prepared for the
    current call. ``x`` (the device's ``silu(temb)``) only fixes the batch size it checks."""

    def __init__(self, linear: nn.Linear, name: str) -> None:
        super().__init__()
        self.name = name
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias.detach().to("cpu") if linear.bias is not None else None
        self.host = {"weight": linear.weight.detach().to("cpu"), "bias": bias}
        self.value: Optional[torch.Tensor] = None  # [B, out] on the device, a view of HostModulations.out

    @property
    def weight(self) -> torch.Tensor:
        """The frozen weight, on the host (for shape checks such as the export verification)."""
        return self.host["weight"]

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.host["bias"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.value is None or self.value.shape[0] != x.shape[0]:
            raise RuntimeError(f"modulation_on_cpu: {self.name} was called without its host-computed output for a "
                               f"batch of {x.shape[0]} (the FLUX.1 adapter prepares it before each transformer call)")
        return self.value.clone()  # the caller may add its LoRA output in place

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, on the host"


class HostModulations:
    """Every :class:`HostModulation` of one transformer, and the host-side ``time_text_embed`` that feeds them."""

    def __init__(self, modules: list[HostModulation], embed: nn.Module) -> None:
        self.modules = modules
        self.embed = embed
        self.out: Optional[torch.Tensor] = None  # [B, sum of out_features] on the device

    @classmethod
    def install(cls, transformer: nn.Module, log: Callable[[str], Any] = print) -> "HostModulations":
        """Replace the modulation Linears of ``transformer`` (bare, or wrapped by peft's LoRA layer) by
        :class:`HostModulation`\\ s; call after LoRA injection, before the transformer moves to the device."""
        modules: list[HostModulation] = []
        moved = 0
        for blocks, paths in (("transformer_blocks", DOUBLE), ("single_transformer_blocks", SINGLE)):
            for i, block in enumerate(getattr(transformer, blocks)):
                for path in paths:
                    owner_path, attr = path.rsplit(".", 1)
                    owner = block.get_submodule(owner_path)
                    layer = getattr(owner, attr)
                    holder, key = (layer, "base_layer") if hasattr(layer, "base_layer") else (owner, attr)
                    linear = getattr(holder, key)
                    if not isinstance(linear, nn.Linear):
                        raise RuntimeError(f"modulation_on_cpu: {blocks}.{i}.{path} is a {type(linear).__name__}, "
                                           "not a Linear")
                    stand_in = HostModulation(linear, f"{blocks}.{i}.{path}")
                    moved += linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)
                    setattr(holder, key, stand_in)
                    modules.append(stand_in)
        embed = copy.deepcopy(transformer.time_text_embed).to("cpu").requires_grad_(False)
        dtype = modules[0].host["weight"].dtype
        log(f"modulation_on_cpu: {len(modules)} modulation Linears ({moved / 1e9:.2f} B parameters, "
            f"{moved * torch.finfo(dtype).bits / 8 / 2**30:.2f} GiB) stay on the CPU; their outputs are computed "
            "there each step")
        return cls(modules, embed)

    @torch.no_grad()
    def prepare(self, timesteps: torch.Tensor, guidance: Optional[torch.Tensor], pooled: torch.Tensor,
                device: torch.device) -> None:
        """Compute every modulation output for a transformer call with these host tensors (σ in [0, 1] as the
        transformer gets them, guidance or None, pooled CLIP [B, 768]) and write them to the device buffer."""
        dtype = self.modules[0].host["weight"].dtype
        t = timesteps.detach().to("cpu", dtype) * 1000  # as FluxTransformer2DModel.forward scales them
        p = pooled.detach().to("cpu", dtype)
        temb = self.embed(t, p) if guidance is None else self.embed(t, guidance.detach().to("cpu", dtype) * 1000, p)
        x = F.silu(temb)
        host = torch.cat([F.linear(x, m.host["weight"], m.host["bias"]) for m in self.modules], dim=1)
        if self.out is None or self.out.shape != host.shape or self.out.device != torch.device(device):
            self.out = torch.empty(host.shape, dtype=host.dtype, device=device)
            start = 0
            for m in self.modules:
                m.value = self.out[:, start:start + m.out_features]
                start += m.out_features
        self.out.copy_(to_gpu(host, device) if self.out.device.type == "cuda" else host)

    def host_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for m in self.modules for t in m.host.values() if t is not None)
