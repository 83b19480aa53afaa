"""``memory.blocks_to_swap``: keep some of the denoiser's blocks in CPU memory and stream them in.

What moves: only a block's *frozen* tensors (base weights, biases, norms, fp8 scales). LoRA parameters are
trained every step and stay on the GPU with their gradients and optimizer state. Frozen tensors never change,
so a block is evicted by pointing its parameters back at their CPU copy: nothing is ever copied back.

How a block moves: each swapped block's frozen tensors are packed into one flat page-locked (pinned) CPU
buffer; loading it is one ``non_blocking`` copy, on a side CUDA stream, into one of ``1 + lookahead`` fixed
GPU slots allocated once (so streaming never touches the allocator: under a tight memory cap, allocator
retries synchronise the device and would serialise copies with compute). The copy waits for an event
recorded when the slot's previous block was evicted (its kernels have run) and records a "loaded" event
that the compute stream waits on only when the block is about to run.

When it moves: a training step uses the blocks in a fixed cycle — forward 0 … n−1, then (with gradient
checkpointing) backward n−1 … 0, which recomputes each block's forward just before its backward — and then
the next step's forward. Every block runs through :meth:`BlockSwapper.enter` first, in forward and in the
recomputation alike (it tells them apart by whether the autograd engine is running). ``enter`` keeps
resident exactly the swapped blocks among the next ``1 + lookahead`` swapped uses of that cycle: it evicts
the others and starts loading the missing ones, so each block's copy overlaps the compute of the blocks
before it. The swapped blocks are spread evenly over the stack (not the last N), so every swapped block has
resident blocks before it whose compute hides its transfer.

Why checkpointing is required: without it, autograd keeps each block's weights alive from forward to
backward (they are saved for the input gradient), so evicting would free nothing — or, with ``.data``
replaced, corrupt the saved weights. With checkpointing, a block's weights are used only inside its own
forward and its own recompute-plus-backward.

On the CPU (tests) the same schedule runs with a plain copy instead of a stream, so the schedule, the
packing and the results are tested without a GPU; ``benchmarks/bench.py`` measures it on the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from lorakit.errors import ConfigError

LOOKAHEAD = 2  # swapped blocks loading or loaded ahead of the one running
ALIGN = 64     # byte alignment of each tensor inside a block's flat buffer


# ---------------------------------------------------------------------------------------------- packing


@dataclass
class _Slot:
    module: nn.Module
    name: str
    is_param: bool
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: torch.Size


@dataclass
class _Pack:
    """One block's frozen tensors, laid out in one flat byte buffer."""

    slots: list[_Slot]
    host: torch.Tensor                    # uint8 [nbytes], pinned when the run is on CUDA
    nbytes: int
    host_views: list[torch.Tensor] = field(default_factory=list)


def frozen_tensors(block: nn.Module) -> list[tuple[nn.Module, str, bool, torch.Tensor]]:
    """(owner module, attribute name, is parameter, tensor) of every frozen parameter and every buffer of
    ``block``; trainable parameters (LoRA) are left out. Shared tensors are listed once."""
    out, seen = [], set()
    for mod in block.modules():
        for name, p in mod._parameters.items():
            if p is None or p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            out.append((mod, name, True, p))
        for name, b in mod._buffers.items():
            if b is None or id(b) in seen:
                continue
            seen.add(id(b))
            out.append((mod, name, False, b))
    return out


def _view(flat: torch.Tensor, slot: _Slot) -> torch.Tensor:
    return flat[slot.offset:slot.offset + slot.nbytes].view(slot.dtype).view(slot.shape)


def _assign(slot: _Slot, tensor: torch.Tensor) -> None:
    if slot.is_param:
        slot.module._parameters[slot.name].data = tensor
    else:
        slot.module._buffers[slot.name] = tensor


def pack_block(block: nn.Module, pin: bool) -> _Pack:
    """Copy ``block``'s frozen tensors into one flat CPU buffer and point the block at views of it."""
    items = frozen_tensors(block)
    slots, offset = [], 0
    for mod, name, is_param, t in items:
        nbytes = t.numel() * t.element_size()
        slots.append(_Slot(mod, name, is_param, offset, nbytes, t.dtype, t.shape))
        offset += math.ceil(nbytes / ALIGN) * ALIGN
    host = torch.empty(max(offset, 1), dtype=torch.uint8, pin_memory=pin)
    pack = _Pack(slots, host, offset)
    for slot, (_, _, _, t) in zip(slots, items):
        view = _view(host, slot)
        view.copy_(t.detach().contiguous())
        pack.host_views.append(view)
        _assign(slot, view)
    return pack


# ---------------------------------------------------------------------------------------------- schedule


def _graph_task_id() -> int:
    get = getattr(torch._C, "_current_graph_task_id", None)
    return get() if get is not None else -1


class BlockSwapper:
    """Streams the frozen tensors of ``blocks[i]`` for i in ``swapped`` onto ``device`` just in time.

    ``blocks`` must be in the order the model runs them. Call :meth:`enter` right before a block runs
    (:func:`install` wraps the blocks' forwards to do it)."""

    def __init__(self, blocks: Sequence[nn.Module], swapped: Iterable[int], device: torch.device,
                 lookahead: int = LOOKAHEAD) -> None:
        self.blocks = list(blocks)
        self.swapped = sorted(set(swapped))
        if any(i < 0 or i >= len(self.blocks) for i in self.swapped):
            raise ValueError(f"swapped block indices must be in 0..{len(self.blocks) - 1}")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.lookahead = max(0, int(lookahead))
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.packs: dict[int, _Pack] = {}
        self.resident: dict[int, tuple[torch.Tensor, Any, int]] = {}  # block -> (buffer, load event, slot)
        self.free_slots = list(range(1 + self.lookahead))
        self.slot_buffers: dict[int, torch.Tensor] = {}
        self.slot_freed: dict[int, Any] = {}
        self.active: set[int] = set()                            # resident and pointed at by the block
        self._plans: dict[tuple[int, int], tuple[int, ...]] = {}
        self.loads = 0          # blocks copied to the device so far (for tests and the benchmark)
        self.max_resident = 0   # most swapped blocks held on the device at once

    # -- setup
    def offload(self, i: int) -> None:
        """Pack block ``i`` into CPU memory (pinned on CUDA) and drop its device copy."""
        self.packs[i] = pack_block(self.blocks[i], pin=self.cuda)

    @property
    def host_bytes(self) -> int:
        return sum(p.nbytes for p in self.packs.values())

    # -- the cycle of block uses
    def _block_at(self, pos: int) -> int:
        n = len(self.blocks)
        return pos if pos < n else 2 * n - 1 - pos

    def plan(self, pos: int, cycle: int) -> tuple[int, ...]:
        """The swapped blocks among the next uses from position ``pos`` (itself included), at most
        ``1 + lookahead`` of them, in the order they will be used."""
        key = (pos, cycle)
        if key not in self._plans:
            wanted: list[int] = []
            swapped = set(self.swapped)
            for k in range(cycle):
                b = self._block_at((pos + k) % cycle)
                if b in swapped and b not in wanted:
                    wanted.append(b)
                    if len(wanted) > self.lookahead:
                        break
            self._plans[key] = tuple(wanted)
        return self._plans[key]

    def enter(self, i: int) -> None:
        """Block ``i`` is about to run: make it resident, evict what is not needed soon, prefetch the rest."""
        n = len(self.blocks)
        # a checkpoint recomputation inside backward (private API; without it every use counts as forward,
        # which only makes prefetching less timely: the block itself is always made resident below)
        backward = _graph_task_id() != -1
        training = backward or torch.is_grad_enabled()
        cycle = 2 * n if training else n
        pos = 2 * n - 1 - i if backward else i
        window = self.plan(pos, cycle)
        for j in [j for j in self.resident if j not in window]:
            self.evict(j)
        for j in window:
            if j not in self.resident:
                self.prefetch(j)
        self.max_resident = max(self.max_resident, len(self.resident))
        if i in self.packs:
            self.activate(i)

    # -- moves
    def _slot_buffer(self, slot: int) -> torch.Tensor:
        """The device buffers are ``1 + lookahead`` fixed slots, each as large as the largest swapped block,
        allocated once: streaming never goes through the allocator (no fragmentation, no allocator syncs)."""
        if slot not in self.slot_buffers:
            size = max(p.nbytes for p in self.packs.values())
            self.slot_buffers[slot] = torch.empty(size, dtype=torch.uint8, device=self.device)
        return self.slot_buffers[slot]

    def prefetch(self, j: int) -> None:
        pack = self.packs[j]
        slot = self.free_slots.pop()
        if self.cuda:
            buf = self._slot_buffer(slot)[:pack.nbytes]
            with torch.cuda.stream(self.stream):
                freed = self.slot_freed.get(slot)
                if freed is not None:  # the kernels that read the slot's previous block have run
                    self.stream.wait_event(freed)
                buf.copy_(pack.host[:pack.nbytes], non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
        else:
            buf, event = pack.host[:pack.nbytes].clone(), None
        self.resident[j] = (buf, event, slot)
        self.loads += 1

    def activate(self, j: int) -> None:
        if j in self.active:
            return
        buf, event, _ = self.resident[j]
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        for slot in self.packs[j].slots:
            _assign(slot, _view(buf, slot))
        self.active.add(j)

    def evict(self, j: int) -> None:
        pack = self.packs[j]
        if j in self.active:
            for slot, view in zip(pack.slots, pack.host_views):
                _assign(slot, view)
            self.active.discard(j)
        _, _, slot = self.resident.pop(j)
        if self.cuda:  # the slot is free once the kernels queued so far (this block's included) have run
            freed = torch.cuda.Event()
            freed.record(torch.cuda.current_stream(self.device))
            self.slot_freed[slot] = freed
        self.free_slots.append(slot)

    def evict_all(self) -> None:
        for j in list(self.resident):
            self.evict(j)


# ---------------------------------------------------------------------------------------------- placing


def spread(n_blocks: int, count: int) -> list[int]:
    """``count`` block indices spread evenly over ``1..n_blocks-1``. Block 0 is never swapped: it starts every
    forward, so nothing before it could hide its transfer; spreading (rather than taking the last ``count``)
    puts resident blocks between swapped ones, whose compute hides the swapped ones' copies."""
    if count <= 0:
        return []
    if count > n_blocks - 1:
        raise ConfigError(f"memory.blocks_to_swap: {count} is more than this model's {n_blocks} blocks allow; "
                          f"use at most {n_blocks - 1}")
    return [1 + int((k + 0.5) * (n_blocks - 1) / count) for k in range(count)]


def _inside(blocks: Sequence[nn.Module]) -> set[int]:
    return {id(m) for b in blocks for m in b.modules()}


def place_denoiser(model: nn.Module, blocks: Sequence[nn.Module], device: torch.device, *, fp8_base: bool = False,
                   fp8_compute: bool = False, blocks_to_swap: int = 0, lookahead: int = LOOKAHEAD,
                   log: Callable[[str], None] = print, fp8_convs: bool = False) -> Optional[BlockSwapper]:
    """Move the (LoRA-injected) denoiser to ``device`` one block at a time, storing frozen weights in fp8 when
    ``fp8_base`` (multiplied in float8 with ``fp8_compute``; the convolutions too with ``fp8_convs``) and packing ``blocks_to_swap`` blocks into CPU
    memory; returns the swapper (None without swap). The whole model never needs to fit on the device at once:
    at most the resident part plus one block in the load dtype. Works for a model that is already on ``device`` too."""
    from lorakit.train import fp8

    device = torch.device(device)
    swapped = set(spread(len(blocks), blocks_to_swap))
    inside = _inside(blocks)
    for mod in model.modules():
        if id(mod) not in inside:
            mod._apply(lambda t: t.to(device), recurse=False)
    swapper = BlockSwapper(blocks, swapped, device, lookahead) if swapped else None
    layers = computed = 0
    for i, block in enumerate(blocks):
        block.to(device)
        if fp8_base:
            done = fp8.apply_fp8_base(model, within=block, compute=fp8_compute, convs=fp8_convs)
            layers, computed = layers + done["layers"], computed + done["computed"]
        if swapper is not None and i in swapped:
            swapper.offload(i)
    if fp8_base:
        done = fp8.apply_fp8_base(model, compute=fp8_compute, convs=fp8_convs)  # what lies outside the blocks
        layers, computed = layers + done["layers"], computed + done["computed"]
        log(f"fp8_base: {layers} frozen layers stored as float8_e4m3fn (row scaling); parameters now "
            f"{fp8.parameter_bytes(model) / 2**30:.2f} GiB")
        if fp8_compute:
            log(f"fp8_compute: {computed} of them multiply in float8 (per-token input scales); the rest upcast")
    if swapper is not None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log(f"blocks_to_swap: {len(swapped)} of {len(blocks)} blocks ({swapper.host_bytes / 2**30:.2f} GiB of frozen "
            f"weights) stay in pinned CPU memory and stream in {1 + lookahead} at a time")
    return swapper


def install(swapper: Optional[BlockSwapper], blocks: Sequence[nn.Module], *, checkpoint: bool,
            compile_fn: Optional[Callable[[Callable], Callable]] = None,
            no_checkpoint: Iterable[int] = ()) -> None:
    """Wrap each block's forward: ``swapper.enter(i)`` (when swapping), then the block's own forward —
    compiled with ``compile_fn`` when given — under non-reentrant checkpointing when ``checkpoint`` and
    gradients are on, except for the block indices in ``no_checkpoint``. Idempotent per block."""
    skip = set(no_checkpoint)
    if swapper is not None and skip & set(swapper.packs):
        raise ValueError("swapped blocks must be checkpointed")
    for i, block in enumerate(blocks):
        if getattr(block, "_lorakit_swap_wrapped", False):
            continue
        inner = block.forward
        if compile_fn is not None:
            inner = compile_fn(inner)

        def run(*args: Any, _i: int = i, _inner: Callable = inner, **kwargs: Any) -> Any:
            if swapper is not None:
                swapper.enter(_i)
            return _inner(*args, **kwargs)

        def forward(*args: Any, _run: Callable = run, _ckpt: bool = checkpoint and i not in skip,
                    **kwargs: Any) -> Any:
            if _ckpt and torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(_run, *args, use_reentrant=False, **kwargs)
            return _run(*args, **kwargs)

        block.forward = forward
        block._lorakit_swap_wrapped = True
