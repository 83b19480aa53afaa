"""``memory.modulation_on_cpu``: FLUX.1's modulation weights stay in CPU memory.

Every FLUX.1 block starts with an adaptive norm whose Linear (``norm1.linear`` and ``norm1_context.linear`` in the
19 double blocks, ``norm.linear`` in the 38 single blocks) maps one vector, ``silu(temb)``, to that block's shifts,
scales and gates. Those Linears hold 3.2 B of FLUX.1-dev's 11.9 B parameters (6.0 GiB in bf16) but do almost no
work: one row in, one row out. ``temb`` depends only on the timestep, the guidance value and the pooled CLIP
text, which the host has before the step starts. So their weights live in host memory, not among the model's
parameters: on the CPU the host computes, per call, ``temb`` with its own copy of ``time_text_embed`` (60 MB) and
every modulation Linear's frozen output; on a GPU the weights pass through the device one Linear at a time (below),
so the 6 GiB are never resident there together.

Inside the model, each of those Linears becomes a :class:`HostModulation` that returns the output the host
prepared for this call. A LoRA on them (FLUX.1 LoRAs target them) is untouched: peft wraps the stand-in like the
Linear before, and its down/up projections still run and train on the device, on the device's own ``temb``.
Nothing that needs a gradient changes: ``temb`` has none (no LoRA before it; training CLIP-L is refused with this
option), so the frozen part of these outputs never needed the weights in backward.

The host work (6 GiB of weights read per step: about 0.1 s on a 16-core server, 0.2-0.3 s on 2 cores) is
pipelined with the forward pass: :meth:`HostModulations.prepare` hands it to a worker thread, which computes the
outputs block by block in the order the blocks run, into a page-locked host buffer. Each stand-in's forward is an
opaque custom op (``lorakit::host_modulation``, so a compiled block calls it at run time) that waits only for its
own block's outputs and queues their copy to the device. The GPU starts the step at once and waits only if the host
falls behind the blocks (measured on an H200: see benchmarks/RESULTS.md, round 8).

The outputs live in one device buffer, written in place each step (stream-ordered, so a backward still queued on
the device reads the step it belongs to); a recomputation in backward finds its block already copied and reads the
buffer again. The buffers are laid out block after block, each Linear's ``[B, out]`` outputs contiguous and a
block's host-computed ones together, so that every copy is one page-locked transfer at any batch size. Two host
buffers alternate, and the worker reuses one only after the device has finished the copies from it, so the host
never overwrites values a queued copy still reads.

On a GPU the host computes none of them (:data:`STREAMED`): each Linear's weight is copied to the device from
page-locked memory on a side stream and applied there (a matrix-vector product, microseconds on the GPU). The host's
own cores are then free to queue the blocks: on an H200 the host worker slowed the main thread's queueing of the
forward from about 130 to 205 ms, and the GPU waited for it (round 9 in benchmarks/RESULTS.md). The copy engine
needs about 4.2 ms for a double block's 226 MB against about 3 ms of compute, so the first :data:`PREFETCH_BLOCKS`
blocks' weights are copied during the previous backward, once it reaches the double blocks and the single blocks'
activations are freed; the rest are copied as the call runs. The side stream starts when the device reaches the call
(its outputs share the device buffer with the previous call's queued backward), and each block waits only for its
own block's event. The host worker stays for runs on the CPU and for any Linear left out of :data:`STREAMED`.

With CUDA graphs the compiled blocks replay as graphs around the custom op, which stays eager (:data:`GRAPH_SAFE`):
the host then queues a handful of graph launches per block instead of hundreds of kernels.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.models.base import to_gpu

# the modulation Linears: attribute paths inside a double / single block
DOUBLE = ("norm1.linear", "norm1_context.linear")
SINGLE = ("norm.linear",)
# on a GPU, the Linears applied on the device from weights copied over each call (see the module doc)
STREAMED = DOUBLE + SINGLE
# the first blocks whose streamed weights are copied during the previous backward, not at the call
PREFETCH_BLOCKS = 8


# every HostModulation by key (the int in its ``key`` tensor), for the custom op to find at run time
_REGISTRY: "weakref.WeakValueDictionary[int, HostModulation]" = weakref.WeakValueDictionary()
_KEYS = iter(range(2**62))


def _in_backward() -> bool:
    """Whether autograd is running a backward pass on this thread (where checkpointed blocks are recomputed)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is None or task() != -1


# Under CUDA graphs (memory.cuda_graphs) inductor splits each compiled block at this op and replays the pieces around
# it as graphs, while the op itself runs eagerly, every call: its waits and copies are then queued each step instead of
# being replayed from the first one. Needs a torch with that tag (and inductor's graph partitioning); without it the
# two options are not combined (lorakit.train.memory).
GRAPH_SAFE = hasattr(torch, "Tag") and hasattr(torch.Tag, "cudagraph_unsafe")


@torch.library.custom_op("lorakit::host_modulation", mutates_args=(),
                         **({"tags": (torch.Tag.cudagraph_unsafe,)} if GRAPH_SAFE else {}))
def _host_modulation_op(value: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The host-computed output of the stand-in ``key``: waits for its block's outputs, queues their copy (once per
    transformer call), returns a copy of its slice. ``value`` (that slice of the device buffer) only gives the
    compiler the output's shape, device and dtype; the slice is read from the stand-in itself."""
    module = _REGISTRY[int(key)]
    assert module.owner is not None and module.value is not None
    module.owner.ensure(module.group)
    module.owner.serve(module)
    return module.value.clone()


@_host_modulation_op.register_fake
def _host_modulation_fake(value: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(value)


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
        self.value: Optional[torch.Tensor] = None  # [B, out] on the device, a view into HostModulations.out
        self.owner: Optional[HostModulations] = None
        self.group = 0  # the index of its block, in the order the blocks run
        self.index = 0  # its place in HostModulations.modules
        self.columns = (0, 0)  # its slice of HostModulations.out
        self.streamed = False  # applied on the device from weights copied over (STREAMED, on a GPU)
        self.device_bias: Optional[torch.Tensor] = None  # a streamed Linear's bias, on the device (set by prepare)
        index = next(_KEYS)
        _REGISTRY[index] = self
        # a tensor, not an int: the compiler then treats it as an input of the block, so the 57 blocks share one
        # compiled graph per block class instead of one each
        self.key = torch.tensor(index, dtype=torch.int64)

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
        return _host_modulation_op(self.value, self.key)  # a new tensor: the caller may add its LoRA output in place

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, on the host"


class HostModulations:
    """Every :class:`HostModulation` of one transformer, the host-side ``time_text_embed`` that feeds them, and the
    worker thread that computes their outputs block by block (see the module doc)."""

    def __init__(self, modules: list[HostModulation], embed: nn.Module, streamed: tuple[str, ...] = STREAMED,
                 stream_anywhere: bool = False) -> None:
        self.modules = modules
        self.embed = embed
        self.streamed_paths = streamed  # applied on the device on a GPU (any device with stream_anywhere: tests)
        self.stream_anywhere = stream_anywhere
        self.out: Optional[torch.Tensor] = None  # B · width values on the device, block after block (see block())
        self.groups: list[list[HostModulation]] = []  # the stand-ins of each block, in the order the blocks run
        for i, m in enumerate(modules):
            if not self.groups or self.groups[-1][0].name.rsplit(".", 2)[0] != m.name.rsplit(".", 2)[0]:
                self.groups.append([])
            self.groups[-1].append(m)
            m.owner, m.group, m.index = self, len(self.groups) - 1, i
        self.width = sum(m.out_features for m in modules)
        self.host_spans: list[tuple[int, int]] = []  # per block: the columns the host computes (see lay_out)
        self.lay_out(streaming=False)
        self.batch = 0
        self._served: list[bool] = [False] * len(modules)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._job: Optional[Future] = None
        self._ready: list[threading.Event] = []
        self._copied: list[bool] = []
        self._error: Optional[BaseException] = None
        self._host: list[Optional[torch.Tensor]] = [None, None]  # alternating host buffers, laid out as out
        self._done: list[Any] = [None, None]  # per host buffer: a CUDA event after the last copy from it
        self._turn = 0
        self._side: Any = None  # the CUDA stream that copies and applies the streamed Linears
        self._streamed_ready: list[Any] = []  # per block: a CUDA event after its streamed outputs, or None
        self._prefetched: dict[int, torch.Tensor] = {}  # module index → its weight, copied during a backward

    def lay_out(self, streaming: bool) -> None:
        """Columns of every output in the flat buffers: block after block; in a block the host-computed Linears
        first, then the streamed ones (when ``streaming``); each Linear's ``[B, out]`` contiguous. A block's host
        outputs are then one contiguous range (one copy), and each streamed output one contiguous matrix."""
        start = 0
        self.host_spans = []
        self._prefetched = {}
        for members in self.groups:
            for m in members:
                m.streamed = streaming and m.name.split(".", 2)[2] in self.streamed_paths
            first = start
            for m in sorted(members, key=lambda m: m.streamed):  # stable: host ones first, in block order
                m.columns = (start, start + m.out_features)
                start += m.out_features
            self.host_spans.append((first, first + sum(m.out_features for m in members if not m.streamed)))

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
            f"{moved * torch.finfo(dtype).bits / 8 / 2**30:.2f} GiB) stay in CPU memory; on a GPU each step copies "
            f"them in one at a time on a side stream (the first {PREFETCH_BLOCKS} blocks' during the previous "
            "backward) and applies them there; on the CPU a worker thread computes their outputs")
        mods = cls(modules, embed)
        # the prefetch trigger: a trainable parameter of the last double block gets its gradient when the backward
        # has left the single blocks (their activations freed) and reaches the double blocks
        last = [p for p in transformer.transformer_blocks[-1].parameters() if p.requires_grad]
        if last:
            last[0].register_post_accumulate_grad_hook(mods.prefetch)
        return mods

    @torch.no_grad()
    def prepare(self, timesteps: torch.Tensor, guidance: Optional[torch.Tensor], pooled: torch.Tensor,
                device: torch.device) -> None:
        """Start the modulation outputs of a transformer call with these host tensors (σ in [0, 1] as the
        transformer gets them, guidance or None, pooled CLIP [B, 768]): ``temb`` here, the streamed Linears queued
        on the side stream (on a GPU), the others on the worker thread; each block's outputs reach the device buffer
        when the block asks for them (:meth:`ensure`)."""
        self.wait()
        dtype = self.modules[0].host["weight"].dtype
        # a CPU run under bf16 autocast: the Linears give that dtype
        out_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else dtype
        t = timesteps.detach().to("cpu", dtype) * 1000  # as FluxTransformer2DModel.forward scales them
        p = pooled.detach().to("cpu", dtype)
        temb = self.embed(t, p) if guidance is None else self.embed(t, guidance.detach().to("cpu", dtype) * 1000, p)
        x = F.silu(temb)
        device = torch.device(device)
        self.batch = x.shape[0]
        size = self.batch * self.width
        streaming = bool(self.streamed_paths) and (device.type == "cuda" or self.stream_anywhere)
        if self.out is None or self.out.numel() != size or self.out.device != device or self.out.dtype != out_dtype:
            self.lay_out(streaming)
            for m in self.modules:
                if m.streamed and device.type == "cuda" and not m.host["weight"].is_pinned():
                    m.host["weight"] = m.host["weight"].pin_memory()  # once: the copies are then asynchronous
                bias = m.host["bias"]
                m.device_bias = bias.to(device, out_dtype) if m.streamed and bias is not None else None
            self.out = torch.empty(size, dtype=out_dtype, device=device)
            for m in self.modules:
                m.value = self.slice(self.out, m)
            pinned = device.type == "cuda"
            self._host = [torch.empty(size, dtype=out_dtype, pin_memory=pinned) for _ in range(2)]
            self._done = [None, None]
        self._turn ^= 1
        self._ready = [threading.Event() for _ in self.groups]
        self._copied = [False] * len(self.groups)
        self._served = [False] * len(self.modules)
        self._error = None
        self._streamed_ready = [None] * len(self.groups)
        if streaming:
            self._apply_streamed(x, device)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorakit-modulation")
        # the caller's CPU autocast (a CPU training run in bf16) holds on the worker too (autocast is per thread)
        autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        self._job = self._pool.submit(self._compute, x, self._turn, autocast)

    def _apply_streamed(self, x: torch.Tensor, device: torch.device) -> None:
        """Queue, on the side stream, each streamed Linear's weight copy (page-locked → device) and its product
        with ``x``, written into its slice of the device buffer; one event per block that has any. The weights
        pass through one reused device matrix at a time (stream-ordered), never all at once."""
        assert self.out is not None
        cuda = device.type == "cuda"
        if cuda:
            if self._side is None:
                self._side = torch.cuda.Stream(device)
            self.out.record_stream(self._side)  # freed (a new batch size): reused only after the side stream's writes
            # the buffer is still read by the previous call's backward, queued on the caller's stream
            self._side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._side) if cuda else contextlib.nullcontext():
            # through a page-locked buffer: a pageable copy would make the host wait for this stream, which has
            # just been made to wait for the previous call's backward
            xd = to_gpu(x, device, self.out.dtype)
            for g, members in enumerate(self.groups):
                streamed = [m for m in members if m.streamed]
                for m in streamed:
                    w = self._prefetched.pop(m.index, None)
                    if w is None:
                        w = torch.empty(m.host["weight"].shape, dtype=self.out.dtype, device=device)
                        w.copy_(m.host["weight"], non_blocking=True)
                    target = self.slice(self.out.data, m)  # .data: as ensure(), no version-counter bump
                    if m.device_bias is not None:
                        torch.addmm(m.device_bias, xd, w.t(), out=target)
                    else:
                        torch.mm(xd, w.t(), out=target)
                if streamed and cuda:
                    event = torch.cuda.Event()
                    event.record(self._side)
                    self._streamed_ready[g] = event

    @torch.no_grad()
    def prefetch(self, _param: Any = None) -> None:
        """During a backward (the hook ``install`` registers), start copying the streamed weights of the first
        :data:`PREFETCH_BLOCKS` blocks for the next call, so that its first blocks need not wait for their copies
        (the copy engine would otherwise trail the double blocks: 226 MB each against about 3 ms of compute on an
        H200). The copies run on the side stream from the point the caller's stream has reached; the matrices come
        from the caller's stream's memory, so that once the next call has used them, its activations reuse it."""
        out = self.out
        if self._prefetched or out is None or out.device.type != "cuda" or self._side is None:
            return
        first = [m for members in self.groups[:PREFETCH_BLOCKS] for m in members if m.streamed]
        buffers = {m.index: torch.empty(m.host["weight"].shape, dtype=out.dtype, device=out.device) for m in first}
        self._side.wait_stream(torch.cuda.current_stream(out.device))
        with torch.cuda.stream(self._side):
            for m in first:
                buffers[m.index].record_stream(self._side)
                buffers[m.index].copy_(m.host["weight"], non_blocking=True)
        self._prefetched = buffers

    @torch.no_grad()
    def _compute(self, x: torch.Tensor, turn: int, autocast: tuple[bool, torch.dtype]) -> None:
        """Worker thread: every block's outputs into host buffer ``turn``, in block order, flagging each block."""
        try:
            with torch.autocast("cpu", dtype=autocast[1], enabled=autocast[0]):
                self._compute_all(x, turn)
        except BaseException as err:  # surfaced on the main thread by ensure() / wait()
            self._error = err
            for event in self._ready:
                event.set()

    def _compute_all(self, x: torch.Tensor, turn: int) -> None:
        if self._done[turn] is not None:  # the device has read what the copies from this buffer queued
            self._done[turn].synchronize()
        host = self._host[turn]
        assert host is not None
        for g, members in enumerate(self.groups):
            for m in members:
                if not m.streamed:
                    self.slice(host, m)[:] = F.linear(x, m.host["weight"], m.host["bias"])
            self._ready[g].set()

    def block(self, flat: torch.Tensor, group: int) -> torch.Tensor:
        """The outputs the host computes for block ``group``, in a flat buffer laid out as :meth:`lay_out` says: one
        contiguous range, its Linears' ``[B, out]`` matrices one after another."""
        a, b = self.host_spans[group]
        return flat[self.batch * a:self.batch * b]

    def slice(self, flat: torch.Tensor, m: "HostModulation") -> torch.Tensor:
        """Stand-in ``m``'s ``[B, out]`` outputs in such a buffer (contiguous)."""
        a, b = m.columns
        return flat[self.batch * a:self.batch * b].view(self.batch, b - a)

    def ensure(self, group: int) -> None:
        """Main thread, as block ``group`` runs: once per transformer call, wait for that block's host outputs and
        queue their copy into the device buffer (asynchronous from the page-locked buffer)."""
        if self._copied[group]:
            return  # the block's other Linear, or a recomputation in backward: the buffer holds this call's values
        self._ready[group].wait()
        if self._error is not None:
            raise RuntimeError(f"modulation_on_cpu: computing the modulations on the host failed: {self._error}") \
                from self._error
        host = self._host[self._turn]
        assert self.out is not None and host is not None
        if self.host_spans[group][1] > self.host_spans[group][0]:
            # through .data: a write that leaves the views' version counter alone, since a compiled block may have
            # saved an earlier block's view for backward (whose values this copy does not touch)
            self.block(self.out.data, group).copy_(self.block(host, group), non_blocking=True)
            if self.out.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
                self._done[self._turn] = event
        if self._streamed_ready[group] is not None:  # its streamed Linears, applied on the side stream
            torch.cuda.current_stream(self.out.device).wait_event(self._streamed_ready[group])
        self._copied[group] = True

    def serve(self, module: "HostModulation") -> None:
        """Once per transformer call outside backward: a stand-in asked again (a transformer call nobody prepared)
        would silently get the previous call's outputs."""
        if self._served[module.index] and not _in_backward():
            raise RuntimeError(f"modulation_on_cpu: {module.name} ran again outside backward without new "
                               "host-computed outputs (the FLUX.1 adapter prepares them before each transformer call)")
        self._served[module.index] = True

    def wait(self) -> None:
        """Wait for the worker to finish the current call's host work (raising what it raised, if anything)."""
        if self._job is not None:
            self._job.result()
            self._job = None
        if self._error is not None:
            raise RuntimeError(f"modulation_on_cpu: computing the modulations on the host failed: {self._error}") \
                from self._error

    def host_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for m in self.modules for t in m.host.values() if t is not None)
