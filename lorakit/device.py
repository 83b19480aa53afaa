"""Device helpers shared by every layer: host→GPU copies that do not make the host wait, and where a frozen
encoder fits. The engine and the families both use them; neither owns them."""

from __future__ import annotations

from typing import Any, Optional

import torch


# page-locked staging buffers of to_gpu: (shape, dtype) -> [(buffer, event of its last copy)]
_STAGING: dict[tuple, list[tuple[torch.Tensor, Any]]] = {}
_SLOTS = 4  # per shape: a step queued ahead of the GPU holds at most a few copies of each in flight


def to_gpu(t: torch.Tensor, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``t.to(device, dtype)`` for the training step, without making the host wait for the GPU.

    A copy from ordinary (pageable) host memory to a CUDA device may first wait for everything queued on the stream
    (the driver stages pageable memory), and pinning each tensor anew (``pin_memory()``) allocates page-locked memory,
    which is slower still (8 ms per copy on an H200 host, RESULTS.md round 7). So the data goes through a few
    page-locked buffers per shape, kept for the run: the host copies into one whose last transfer has finished and
    queues the transfer like a kernel, with an event that says when the buffer is free again. A dtype change
    happens on the device after the copy."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu" or t.requires_grad:  # (a staging copy would cut the graph)
        return t.to(device, dtype)
    buffer, done = staging_slot(_STAGING.setdefault((tuple(t.shape), t.dtype), []),
                                lambda: (torch.empty(t.shape, dtype=t.dtype, pin_memory=True), torch.cuda.Event()))
    buffer.copy_(t)
    out = torch.empty(t.shape, dtype=t.dtype, device=device)
    out.copy_(buffer, non_blocking=True)
    done.record(torch.cuda.current_stream(device))
    return out.to(dtype)


def staging_slot(slots: list, make) -> tuple[torch.Tensor, Any]:
    """A (buffer, event) of ``slots`` whose last copy has finished: the first free one, else a new one from
    ``make()`` while there are fewer than :data:`_SLOTS`, else the oldest after waiting for its copy (the slot used
    last moves to the end, so the front is always the least recently used)."""
    free = next((i for i, slot in enumerate(slots) if slot[1].query()), None)
    if free is None and len(slots) < _SLOTS:
        slots.append(make())
    else:
        slots.append(slots.pop(free or 0))
        slots[-1][1].synchronize()  # returns at once for a free slot
    return slots[-1]


ENCODER_MARGIN_GIB = 1.0  # activations and workspaces of one encoder call


def device_for(module: torch.nn.Module, device: torch.device, vram_gb: float | None = None,
               log=None) -> torch.device:
    """Where a frozen encoder should run: ``device`` when its weights fit in what is free there (what the
    driver reports plus what PyTorch holds unused, and within ``memory.vram_gb`` when set), else the CPU.

    FLUX.1's T5-XXL alone is 8.9 GiB in bf16: on a 12 GiB card next to the resident transformer, or on an 8 GiB
    card at all, moving it to the GPU to encode captions or preview prompts would run out of memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.device.type == "cuda" for t in tensors):
        return device
    need = sum(t.numel() * t.element_size() for t in tensors) + ENCODER_MARGIN_GIB * 2**30
    free_driver, _ = torch.cuda.mem_get_info(device)
    free = free_driver + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if vram_gb:
        free = min(free, vram_gb * 2**30 - torch.cuda.memory_allocated(device))
    if need <= free:
        return device
    if log is not None:
        log(f"note: {type(module).__name__} ({need / 2**30 - ENCODER_MARGIN_GIB:.1f} GiB) does not fit next to the "
            f"training state on the GPU ({free / 2**30:.1f} GiB free); it runs on the CPU (slower, same result)")
    return torch.device("cpu")


def torch_device(name: str) -> torch.device:
    """training.device ("auto", "cpu", "cuda", "cuda:1") as a torch device; CUDA asked for without one is refused."""
    from lorakit.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name!r} asked for, but no CUDA device is available; use \"auto\" or \"cpu\"")
    return dev
