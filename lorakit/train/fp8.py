"""``memory.fp8_base``: frozen base weights *stored* in float8 (e4m3fn), upcast on the fly for compute.

What it saves: the frozen Linear (and Conv2d) weights of the denoiser take 1 byte per value instead of 2
(bf16) or 4 (fp32). The compute stays in the run's dtype (bf16 under autocast, fp32 without): each layer
upcasts its weight just for its own matmul/convolution ("fp8 storage only"). With ``memory.fp8_compute`` the
Linears instead multiply in float8 on the tensor cores (:func:`fp8_linear`, see "fp8 compute" below).

Why a scale: e4m3 keeps 3 mantissa bits over the range 2**-9 … 448; typical weights (|w| ≈ 0.01–0.05) sit
in its subnormal range, where plain casting (what kohya does) loses most of their bits. Each output row
(output channel) gets its own scale so that its largest value lands near the top of the range. The scales
are powers of two: multiplying by them is exact in any dtype, so the scale is applied to the *output*
(``y = (x @ W8ᵀ) · s + b``, cheaper than rescaling the weight) without adding a rounding step.

Why a custom autograd function: ``F.linear(x, w8.to(bf16))`` would make autograd keep the upcast bf16
weight alive until backward (it needs it for the input's gradient) — every layer's full-precision copy
would then be held at once, wiping out the saving. :class:`_Fp8Matmul` saves the fp8 weight and upcasts it
again in backward. Frozen weights get no gradient; the input gets its gradient, so LoRA layers before a
frozen layer still train. The function is plain PyTorch (no hooks), so ``torch.compile`` traces it.

Convolutions (SDXL's resnets) are converted only with ``convs=True``: on the full-size SDXL UNet they hold
0.33 GB of its 2.9 GB left after the Linears, and on the tiny test UNet they tripled the output error.

What is kept in the weight dtype: LoRA's own layers (trainable, fp32), norms and biases (tiny), and the
model's input/output and embedding layers (``conv_in``/``conv_out``, ``x_embedder``, ``time_embedding``,
``proj_out``/``norm_out`` at the top level, see :func:`keep_full_precision`): they are small and are where
quantisation error hurts most.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ConfigError
from lorakit.train.graph_pass import ChainedPass

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0  # largest finite float8_e4m3fn value
SCALINGS = ("row", "tensor", "none")

# Top-level submodules kept in the weight dtype (exact names; "emb" anywhere in the name also keeps it).
KEEP_TOP_LEVEL = frozenset({"conv_in", "conv_out", "proj_out", "norm_out", "conv_norm_out"})


# ---------------------------------------------------------------------------------------------- quantising


def quantize(weight: torch.Tensor, scaling: str = "row") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(w8, scale)`` with ``w8`` float8_e4m3fn and ``scale`` fp32 of shape ``[out]`` such that
    ``weight ≈ w8 · scale`` along dim 0 (``scale`` is a power of two; all ones for ``scaling="none"``)."""
    if FP8 is None:
        raise ConfigError("memory.fp8_base: this PyTorch has no float8_e4m3fn; upgrade torch (>= 2.1)")
    if scaling not in SCALINGS:
        raise ValueError(f"fp8 scaling must be one of {SCALINGS}, got {scaling!r}")
    w = weight.detach().float()
    rows = w.reshape(w.shape[0], -1)
    if scaling == "none":
        scale = torch.ones(w.shape[0], device=w.device)
    else:
        amax = rows.abs().amax(dim=1) if scaling == "row" else rows.abs().amax().expand(w.shape[0])
        # largest power of two with amax / scale <= 448; an all-zero row keeps scale 1
        scale = torch.exp2(torch.ceil(torch.log2(amax.clamp_min(1e-30) / FP8_MAX)))
        scale = torch.where(amax > 0, scale, torch.ones_like(scale))
    shape = (-1,) + (1,) * (w.dim() - 1)
    w8 = (w / scale.reshape(shape)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return w8, scale.float()


def dequantize(w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight ``w8 · scale`` in ``dtype`` (for checks and for merging; training never materialises it)."""
    return w8.to(dtype) * scale.to(dtype).reshape((-1,) + (1,) * (w8.dim() - 1))


# ---------------------------------------------------------------------------------------------- compute


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the layer computes in: autocast's when it is on for ``x``'s device, else ``x``'s own."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def _matmul(x: torch.Tensor, w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
            conv: Optional[tuple]) -> torch.Tensor:
    """``op(x, upcast(w8)) · scale``; ``conv`` None for a Linear, else ``(stride, padding, dilation, groups)``."""
    w, s = w8.to(dtype), scale.to(dtype)
    if conv is None:
        return F.linear(x.to(dtype), w) * s
    return F.conv2d(x.to(dtype), w, None, *conv) * s.reshape(1, -1, 1, 1)


def _input_grad(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
    """The input's gradient from the saved fp8 weight and scale (both backward paths use it)."""
    w8, scale = ctx.saved_tensors
    # Upcast through the transpose, not as forward does: under torch.compile an identical upcast is merged
    # with forward's and invites the partitioner to save it (see OPAQUE_UNDER_COMPILE below).
    w = w8.transpose(0, 1).to(ctx.dtype).transpose(0, 1)
    g = grad.to(ctx.dtype)
    if ctx.conv is None:
        gx = (g * scale.to(ctx.dtype)) @ w
    else:
        g = g * scale.to(ctx.dtype).reshape(1, -1, 1, 1)
        gx = torch.nn.grad.conv2d_input(ctx.in_shape, w, g, *ctx.conv)
    return gx.to(ctx.in_dtype)


def _save(ctx: Any, x: torch.Tensor, w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
          conv: Optional[tuple]) -> None:
    ctx.save_for_backward(w8, scale)
    ctx.dtype, ctx.conv, ctx.in_dtype, ctx.in_shape = dtype, conv, x.dtype, x.shape


class _Fp8Matmul(torch.autograd.Function):
    """``op(x, upcast(w8)) · scale`` with only the fp8 weight saved for backward (see the module doc).

    ``conv`` is None for a Linear, else ``(stride, padding, dilation, groups)`` of a Conv2d."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                conv: Optional[tuple]) -> torch.Tensor:
        _save(ctx, x, w8, scale, dtype, conv)
        return _matmul(x, w8, scale, dtype, conv)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        return _input_grad(ctx, grad), None, None, None, None


# Under torch.compile the compiler traces *into* the Function above, and inductor's partitioner may then
# save an upcast copy of every layer's weight for backward: FLUX.1-dev fp8 + compile peaked at 45 GiB on an
# H200 (29 GiB with the transposed upcast in backward) instead of ~14.6 (benchmarks/RESULTS.md runs 5-6). Two
# ways out, chosen by lorakit.train.speed.prepare_denoiser: (1) lorakit's own checkpoint *around* each compiled
# block (whatever the compiled block saves lives only while that block runs; the block-swap layout, FLUX.1:
# 0.65 s/step under a 12 GiB cap), or (2) with :data:`OPAQUE_UNDER_COMPILE` the matmul becomes an opaque custom
# op the compiler cannot look into, whose backward sees only the fp8 weight and the scale (measured: FLUX.1-dev
# 14.6 GiB; SDXL with CUDA graphs 4.85 GiB, 0.31 s/step). (2) is for CUDA graphs, which (1) cannot replay.
OPAQUE_UNDER_COMPILE = False


def _conv_args(conv: list[int]) -> tuple:
    return (conv[0:2], conv[2:4], conv[4:6], conv[6])


@torch.library.custom_op("lorakit::fp8_matmul", mutates_args=())
def _fp8_matmul_op(x: torch.Tensor, w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                   conv: list[int]) -> torch.Tensor:
    """``conv`` = [] for a Linear, else [stride h, w, padding h, w, dilation h, w, groups]."""
    return _matmul(x, w8, scale, dtype, _conv_args(conv) if conv else None)


@_fp8_matmul_op.register_fake
def _fp8_matmul_fake(x, w8, scale, dtype, conv):
    if not conv:
        return x.new_empty((*x.shape[:-1], w8.shape[0]), dtype=dtype)
    stride, padding, dilation, _ = _conv_args(conv)
    size = [(x.shape[2 + d] + 2 * padding[d] - dilation[d] * (w8.shape[2 + d] - 1) - 1) // stride[d] + 1
            for d in range(2)]
    return x.new_empty((x.shape[0], w8.shape[0], *size), dtype=dtype)


def _fp8_setup(ctx, inputs, output):
    x, w8, scale, dtype, conv = inputs
    _save(ctx, x, w8, scale, dtype, _conv_args(conv) if conv else None)


_fp8_matmul_op.register_autograd(lambda ctx, grad: (_input_grad(ctx, grad), None, None, None, None),
                                 setup_context=_fp8_setup)


def fp8_matmul(x: torch.Tensor, w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
               conv: Optional[tuple]) -> torch.Tensor:
    """``op(x, upcast(w8)) · scale``: the autograd.Function, or the opaque op under compile when asked."""
    if OPAQUE_UNDER_COMPILE and torch.compiler.is_compiling():
        flat: list[int] = []
        if conv is not None:
            stride, padding, dilation, groups = conv
            if isinstance(padding, str):
                return _Fp8Matmul.apply(x, w8, scale, dtype, conv)
            flat = [*stride, *padding, *dilation, groups]
        return _fp8_matmul_op(x, w8, scale, dtype, flat)
    return _Fp8Matmul.apply(x, w8, scale, dtype, conv)


# ---------------------------------------------------------------------------------------------- fp8 compute
#
# ``memory.fp8_compute``: the frozen Linears multiply in float8 (``torch._scaled_mm``, the tensor cores' fp8 path:
# 1.3-1.4k TFLOP/s against bf16's ~0.8k on an H200, benchmarks/RESULTS.md). The weight is already e4m3 with a scale
# ``sw`` per output row. Forward: the input is quantised per row (one scale per token, ``sx = amax / 448``, not a power
# of two: the scales are applied in fp32 after the product), then ``y = (x8 @ w8ᵀ) · sx · sw``. Backward (the input's
# gradient only, the weight is frozen): ``gx = (g · sw) @ upcast(w8)`` in bf16; the power-of-two row scales fold
# exactly into the gradient, so there is no transposed copy of the weight and no quantisation of the gradient. Only
# the fp8 weight and its scale are kept for backward. Layers whose shapes ``_scaled_mm`` cannot take (a dimension not
# a multiple of 16) and runs that do not compute in bf16 use the storage path above.
#
# :class:`_Fp8LinearTraced` is a plain autograd.Function, traced whole by torch.compile (eager calls quantise through
# a small compiled helper on CUDA). Why a joint-graph pass goes with it: where the Function's body, traced inside
# ``torch.utils.checkpoint``, lacks the "recompute" tag the rest of the checkpointed region carries (evidently torch
# 2.11 on the GPU; torch 2.13 tags it), inductor's min-cut partitioner treats ``_scaled_mm`` as compute-intensive,
# never recomputes it, and saves every layer's output for backward (+14 GiB on FLUX.1-dev).
# :class:`RecomputeInCheckpoint` (installed under compile by ``lorakit.train.speed.prepare_denoiser``) gives those
# nodes their region's tag before partitioning.
#
# Measured (H200, torch 2.11, FLUX.1-dev, compile, every block checkpointed): 0.519 s/step at 14.61 GiB, against
# 0.553 at 25.63 for bf16 and 0.607 at 14.50 for fp8 storage; with 60 % of the blocks checkpointed 0.467 at 25.73.
# SDXL with CUDA graphs: 0.230 at 4.85 GiB. Losses within 1.8e-4 (relative) of bf16. Earlier versions ran the layer
# as opaque custom ops; they were host-bound under compile without CUDA graphs and are gone (benchmarks/RESULTS.md
# rounds 4-5).

ALIGN = 16  # _scaled_mm: both dims of the weight must be multiples of 16; rows of the input are padded to it


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t8, scale)`` for a 2-D ``t``: float8_e4m3fn values (row-major) and an fp32 ``[rows, 1]`` scale with
    ``t ≈ t8 · scale`` (each row's largest magnitude maps to 448; an all-zero row gets scale 1)."""
    amax = t.abs().amax(dim=1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).contiguous(), scale


_HELPERS: dict[str, Callable] = {}


def _helper(fn: Callable, device: torch.device) -> Callable:
    """``fn`` compiled once for CUDA (dynamic shapes after the first recompile), plain elsewhere. A helper that
    fails to compile is replaced by ``fn`` itself for the rest of the run (same results, more kernels)."""
    if device.type != "cuda":
        return fn
    if fn.__name__ not in _HELPERS:
        compiled = torch.compile(fn)

        def run(*args: Any) -> Any:
            try:
                return compiled(*args)
            except Exception as exc:  # no Triton, a compiler bug: keep training with the eager helper
                import warnings

                warnings.warn(f"fp8_compute: compiling {fn.__name__} failed ({exc!r}); running it eagerly")
                _HELPERS[fn.__name__] = fn
                return fn(*args)

        _HELPERS[fn.__name__] = run
    return _HELPERS[fn.__name__]


def _scaled(a8: torch.Tensor, a_scale: torch.Tensor, b_cols: torch.Tensor, b_scale: torch.Tensor,
            rows: int) -> torch.Tensor:
    out = torch._scaled_mm(a8, b_cols, scale_a=a_scale, scale_b=b_scale, out_dtype=torch.bfloat16)
    return out[:rows] if out.shape[0] != rows else out


def _pad_rows(t: torch.Tensor) -> torch.Tensor:
    extra = (-t.shape[0]) % ALIGN
    return F.pad(t, (0, 0, 0, extra)) if extra else t


def _fold(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return grad.to(torch.bfloat16) * scale.to(torch.bfloat16)  # power-of-two scales: exact in bf16


class _Fp8LinearTraced(torch.autograd.Function):
    """``x @ (w8 · scale)ᵀ`` in float8 forward, bf16 input gradient; saves only ``w8``/``scale`` (see above)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        quant = quantize_rows if torch.compiler.is_compiling() else _helper(quantize_rows, x.device)
        a8, a_scale = quant(_pad_rows(flat))
        y = _scaled(a8, a_scale, w8.t(), scale.float().reshape(1, -1), flat.shape[0])
        ctx.save_for_backward(w8, scale)
        ctx.in_dtype = x.dtype
        return y.reshape(*x.shape[:-1], w8.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        w8, scale = ctx.saved_tensors
        return (_fold(grad, scale) @ w8.to(torch.bfloat16)).to(ctx.in_dtype), None, None


def fp8_linear(x: torch.Tensor, w8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (w8 · scale)ᵀ`` multiplied in float8 (``memory.fp8_compute``); bf16 out. Only the fp8 weight and its
    scale are kept for backward; the frozen weight gets no gradient."""
    return _Fp8LinearTraced.apply(x, w8, scale)


def tag_checkpointed_scaled_mm(graph: torch.fx.Graph) -> int:
    """Give the untagged forward nodes of a checkpointed region the region's recompute tag, in joint graphs that hold
    a ``_scaled_mm`` (see "fp8 compute" above); returns how many nodes were tagged.

    A node counts as inside a region when a tagged node feeds it (directly or through other untagged nodes) and it
    feeds a tagged node of the same region: the body of a Function traced inside the checkpoint. Nodes on the
    backward side (reachable from a tangent) and nodes between two regions are left alone."""
    from torch.utils.checkpoint import CheckpointPolicy

    nodes = list(graph.nodes)
    if not any(n.op == "call_function" and n.target is torch.ops.aten._scaled_mm.default for n in nodes):
        return 0
    wanted = (CheckpointPolicy.PREFER_RECOMPUTE, CheckpointPolicy.MUST_RECOMPUTE)
    backward: set = set()
    for n in nodes:
        if (n.op == "placeholder" and n.name.startswith("tangents")) or any(a in backward for a in n.all_input_nodes):
            backward.add(n)

    def region(n: Any) -> Any:
        return n.meta.get("ac_graph_id") if n.meta.get("recompute") in wanted else None

    untagged = [n for n in nodes if n.op == "call_function" and n not in backward and region(n) is None]
    below: dict = {}  # node -> region of a tagged producer above it
    for n in untagged:
        ids = {region(a) if region(a) is not None else below.get(a) for a in n.all_input_nodes} - {None}
        if len(ids) == 1:
            below[n] = ids.pop()
    above: dict = {}  # node -> region of a tagged consumer below it
    for n in reversed(untagged):
        ids = {region(u) if region(u) is not None else above.get(u) for u in n.users} - {None}
        if len(ids) == 1:
            above[n] = ids.pop()
    policy = {region(n): n.meta["recompute"] for n in nodes if region(n) is not None}
    tagged = 0
    for n in untagged:
        if n in below and above.get(n) == below[n]:
            n.meta["recompute"] = policy[below[n]]
            n.meta["ac_graph_id"] = below[n]
            tagged += 1
    return tagged


class RecomputeInCheckpoint(ChainedPass):
    """Inductor joint-graph pass running :func:`tag_checkpointed_scaled_mm` (then any pass installed before it)."""

    key = "lorakit-fp8-recompute-1"

    def edit(self, graph: torch.fx.Graph) -> None:
        tag_checkpointed_scaled_mm(graph)


def install_recompute_pass() -> None:
    """Install :class:`RecomputeInCheckpoint` as inductor's joint-graph pre-pass (idempotent; keeps one set before)."""
    import torch._inductor.config as inductor_config

    current = inductor_config.joint_custom_pre_pass
    if not isinstance(current, RecomputeInCheckpoint):
        inductor_config.joint_custom_pre_pass = RecomputeInCheckpoint(current)


def can_compute(w8: torch.Tensor) -> bool:
    """Whether a Linear's fp8 weight has shapes ``torch._scaled_mm`` accepts."""
    return w8.dim() == 2 and w8.shape[0] % ALIGN == 0 and w8.shape[1] % ALIGN == 0


def check_compute(device: torch.device) -> None:
    """``memory.fp8_compute`` needs float8 tensor cores (compute capability 8.9, Ada, or newer on CUDA) and a
    PyTorch whose ``_scaled_mm`` takes per-row scales there: tried once on a 16×16 product before any loading."""
    if FP8 is None or not hasattr(torch, "_scaled_mm"):
        raise ConfigError("memory.fp8_compute: this PyTorch has no float8 matmul (torch._scaled_mm); upgrade torch "
                          "or set it to false")
    where = "the CPU"
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
        if torch.cuda.get_device_capability(device) < (8, 9):
            raise ConfigError(f"memory.fp8_compute: {where} has no float8 tensor cores (needs compute capability "
                              "8.9+, e.g. RTX 40xx, L4, H100); set it to false and keep memory.fp8_base for the "
                              "memory saving")
    problem = row_scaled_mm_problem(device)
    if problem:
        raise ConfigError(f"memory.fp8_compute: PyTorch {torch.__version__} has no row-scaled float8 matmul on "
                          f"{where} ({problem}); upgrade torch or set it to false")


def row_scaled_mm_problem(device: torch.device) -> Optional[str]:
    """None when a 16×16 float8 product with per-row scales runs on ``device`` (Hopper has it since torch 2.5, Ada
    and the CPU only later), else the first line of the error."""
    try:
        a8 = torch.ones(ALIGN, ALIGN, device=device).to(FP8)
        ones = torch.ones(ALIGN, 1, device=device)
        out = torch._scaled_mm(a8, a8.t(), scale_a=ones, scale_b=ones.t(), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError) as exc:
        return (str(exc).splitlines() or [type(exc).__name__])[0][:120]
    return None if float(out[0, 0]) == ALIGN else f"16x16 ones gave {float(out[0, 0])}"


class Fp8Linear(nn.Linear):
    """An ``nn.Linear`` whose frozen weight is float8 (``weight``) times a per-row ``weight_scale``.

    Made by :func:`apply_fp8_base` swapping the class of an existing Linear (it stays an ``nn.Linear`` for
    peft and for ``isinstance`` checks)."""

    weight_scale: torch.Tensor
    fp8_compute = False  # set per layer by apply_fp8_base(compute=True) where the shapes allow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        if self.fp8_compute and dtype == torch.bfloat16:
            y = fp8_linear(x, self.weight, self.weight_scale)
        else:
            y = fp8_matmul(x, self.weight, self.weight_scale, dtype, None)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Fp8Conv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with a float8 weight and per-output-channel scale (zero padding mode only)."""

    weight_scale: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        y = fp8_matmul(x, self.weight, self.weight_scale, dtype,
                       (tuple(self.stride), self.padding, tuple(self.dilation), self.groups))
        return y if self.bias is None else y + self.bias.to(y.dtype).reshape(1, -1, 1, 1)


# ---------------------------------------------------------------------------------------------- applying


def keep_full_precision(path: str) -> bool:
    """Whether the module at ``path`` stays in the weight dtype: input/output layers and embeddings."""
    top = path.split(".", 1)[0]
    return top in KEEP_TOP_LEVEL or "emb" in top


def _lora_parts(model: nn.Module) -> set[int]:
    """ids of every module inside a peft LoRA layer's own adapters (lora_A/lora_B/embedding/magnitude)."""
    from peft.tuners.lora import LoraLayer

    ids: set[int] = set()
    for sub in model.modules():
        if isinstance(sub, LoraLayer):
            for attr in LoraLayer.adapter_layer_names:
                container = getattr(sub, attr, None)
                if isinstance(container, nn.Module):
                    ids.update(id(m) for m in container.modules())
    return ids


def candidates(model: nn.Module, convs: bool = False,
               within: Optional[nn.Module] = None) -> list[tuple[str, nn.Module]]:
    """(path, module) of every frozen Linear (and Conv2d with ``convs``) that :func:`apply_fp8_base` converts;
    only those inside ``within`` when given (paths stay relative to ``model``, so the choice is the same)."""
    lora = _lora_parts(model if within is None else within)
    kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d) if convs else (nn.Linear,)
    allowed = None if within is None else {id(m) for m in within.modules()}
    out = []
    for path, sub in model.named_modules():
        if allowed is not None and id(sub) not in allowed:
            continue
        if type(sub) not in kinds or id(sub) in lora or keep_full_precision(path):
            continue
        if sub.weight.requires_grad or (sub.bias is not None and sub.bias.requires_grad):
            continue  # trained weights stay in full precision
        if isinstance(sub, nn.Conv2d) and sub.padding_mode != "zeros":
            continue
        out.append((path, sub))
    return out


def apply_fp8_base(model: nn.Module, *, scaling: str = "row", convs: bool = False,
                   log: Optional[Callable[[str], None]] = None,
                   within: Optional[nn.Module] = None, compute: bool = False) -> dict[str, Any]:
    """Store the frozen Linear/Conv2d weights of ``model`` in float8 in place (call after LoRA injection,
    before ``speed.prepare_denoiser``); returns counts and parameter bytes before/after for the logs.

    Works on any device (CPU included; float8 is storage there too) and on the meta device (for memory
    estimates). Idempotent: converted layers are no longer candidates. ``within``: convert only that
    submodule (``lorakit.train.swap.place_denoiser`` quantises block by block on the GPU). ``compute``: the
    converted Linears multiply in float8 (``memory.fp8_compute``) where :func:`can_compute` allows."""
    before = parameter_bytes(model if within is None else within)
    converted = computed = 0
    for _, sub in candidates(model, convs, within):
        w8, scale = quantize(sub.weight, scaling)
        sub.weight = nn.Parameter(w8, requires_grad=False)
        sub.register_buffer("weight_scale", scale, persistent=False)
        sub.__class__ = Fp8Linear if isinstance(sub, nn.Linear) else Fp8Conv2d
        if compute and isinstance(sub, Fp8Linear) and can_compute(w8):
            sub.fp8_compute = True
            computed += 1
        converted += 1
    after = parameter_bytes(model if within is None else within)
    report = {"layers": converted, "bytes_before": before, "bytes_after": after, "scaling": scaling,
              "computed": computed}
    if log is not None:
        log(f"fp8_base: {converted} frozen layers stored as float8_e4m3fn ({scaling} scaling); parameters "
            f"{before / 2**30:.3f} → {after / 2**30:.3f} GiB")
    return report


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` (exact for any device, meta included)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def is_fp8(module: nn.Module) -> bool:
    return isinstance(module, (Fp8Linear, Fp8Conv2d))
