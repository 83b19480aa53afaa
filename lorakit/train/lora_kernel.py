"""Fused LoRA Linear: ``y = x Wᵀ (+ b) + s · (x Aᵀ) Bᵀ`` with the up-projection folded into the base matmul.

Why: doing the LoRA side as separate ops (peft's ``base(x) + lora_B(lora_A(x)) * s``, or an ``addmm_`` onto the
base output) writes an M×N LoRA product and reads it back (and, in backward, the same for the input gradient).
On FLUX.1-dev's shapes that costs 25-60 % on top of each cuBLAS base matmul. Here the rank-R product is one more
``tl.dot`` inside the base matmul's tile loop, so the M×N output is written once.

The maths (W [N,K] frozen, A [R,K] and B [N,R] trainable, s = alpha / R, x flattened to [M,K]):

* forward:  ``h = x Aᵀ`` ([M,R], a skinny cuBLAS matmul), then ``y = x Wᵀ + h (s·B)ᵀ (+ b)`` in ONE kernel
  (:func:`lora_matmul`: ``C = P Q + H Z (+ bias)`` with fp32 accumulation, every operand by strides so ``Wᵀ`` is
  a view, not a copy). Saved for backward: ``x`` and ``h`` (plus the parameters themselves); no M×N tensor.
* backward (g = dL/dy, [M,N]): ``u = g (s·B)`` ([M,R]); ``dx = g W + u A`` in the same kernel;
  ``dB = s · gᵀ h`` and ``dA = uᵀ x`` by fp32-accumulating matmuls, returned in the LoRA weights' dtype.
  W and the bias are frozen: a W or bias that requires grad is refused (``ValueError``).

Precision: the compute dtype is the autocast dtype when autocast is on (x is cast like ``F.linear`` would cast it),
else x's dtype; A and (s·B) are cast to it for the two rank-R products (what autocast does to peft's Linears), all
accumulation is fp32 and the output is rounded once.

Paths: the Triton kernel runs for CUDA tensors in bf16/fp16 when Triton (and ``torch.library.triton_op``,
torch >= 2.6) is importable and R <= :data:`MAX_RANK`; everything else (CPU, fp32/fp64 compute, larger ranks, no
Triton) runs the same decomposition with torch matmuls (``addmm``), so the autograd maths is the same on the CPU.
:func:`available` says whether a device gets the Triton path. The kernel launches are registered as
``torch.library.triton_op``\\ s (``lorakit::lora_matmul``), so ``torch.compile(fullgraph=True)`` traces through
them and inductor sees the Triton kernel instead of a graph break. The autograd function is a pure function of its
inputs, so it recomputes correctly under ``torch.utils.checkpoint``.

Measured (H200, torch 2.11 + Triton 3.6, rank 16, ``benchmarks/fused_lora.py``): correct (errors vs fp32 at or
below peft's bf16 path), but NOT faster than peft's separate ops yet. This plain (non-persistent, pointer-load)
Triton GEMM reaches ~500-530 TFLOP/s on the forward layout and ~600 on the dx layout, against cuBLAS's 665-800,
which costs more than the M×N LoRA traffic it saves: compiled fwd+bwd over the base Linear is +31-59 % fused
against +19-51 % peft on the five 4096/4608-token FLUX.1 shapes. Do not switch the training path to it on these
numbers alone.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

MAX_RANK = 128  # ranks above this take the torch path (the [BM, RP] / [RP, BN] tiles would not fit well)
_KERNEL_DTYPES = (torch.bfloat16, torch.float16)
_INT32_LIMIT = 2**31 - 1  # the kernel's offsets are int32

try:  # the CPU CI has no triton: everything below degrades to the torch path
    import triton
    import triton.language as tl

    from torch.library import triton_op, wrap_triton  # torch >= 2.6

    _HAS_TRITON = True
except Exception:  # ImportError, or a broken triton install
    triton = None
    tl = None
    _HAS_TRITON = False


# ------------------------------------------------------------------------------------------------- the kernel

if _HAS_TRITON:

    def _configs() -> list:
        c = triton.Config
        return [
            c({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
            c({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
            c({"BM": 256, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
            c({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
            c({"BM": 64, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
            c({"BM": 128, "BN": 64, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        ]

    @triton.autotune(configs=_configs(), key=["M", "N", "K", "stride_qk", "stride_qn"])
    @triton.jit
    def _lora_mm_kernel(
        P, Q, H, Z, BIAS, C,
        M, N, K, R,
        stride_pm, stride_pk, stride_qk, stride_qn,
        stride_hm, stride_hr, stride_zr, stride_zn,
        stride_cm, stride_cn,
        HAS_BIAS: tl.constexpr, RP: tl.constexpr, HINT_M: tl.constexpr, HINT_N: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        """C[M,N] = P[M,K] @ Q[K,N] + H[M,R] @ Z[R,N] (+ BIAS[N]); one fp32 accumulator; R padded to RP."""
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BM)
        num_pid_n = tl.cdiv(N, BN)
        # grouped order: GROUP_M row-blocks sweep the column-blocks together, so Q tiles are re-read from L2
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m

        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_k = tl.arange(0, BK)
        # rows/columns past M/N wrap around (modulo) instead of being masked in the loop: their products only
        # reach accumulator rows/columns that the masked store drops. The contiguity hints keep the loads
        # vectorised (measured on an H200: up to +15 % over masking M and N in the loop); they are only true in
        # aligned groups of 16 when M (N) is a multiple of 16, so otherwise they are left out (a 16-byte vector
        # load across the wrap point would be misaligned).
        rows = offs_m % M
        cols = offs_n % N
        if HINT_M:
            rows = tl.max_contiguous(tl.multiple_of(rows, BM), BM)
        if HINT_N:
            cols = tl.max_contiguous(tl.multiple_of(cols, BN), BN)

        p_ptrs = P + rows[:, None] * stride_pm + offs_k[None, :] * stride_pk
        q_ptrs = Q + offs_k[:, None] * stride_qk + cols[None, :] * stride_qn
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BK)):
            k_left = K - kb * BK
            a = tl.load(p_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(q_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            acc = tl.dot(a, b, acc)
            p_ptrs += BK * stride_pk
            q_ptrs += BK * stride_qk

        # the rank-R term: one more dot into the same accumulator (R padded to RP >= 16 with zeros)
        offs_r = tl.arange(0, RP)
        mask_r = offs_r < R
        h = tl.load(H + rows[:, None] * stride_hm + offs_r[None, :] * stride_hr, mask=mask_r[None, :], other=0.0)
        z = tl.load(Z + offs_r[:, None] * stride_zr + cols[None, :] * stride_zn, mask=mask_r[:, None], other=0.0)
        acc = tl.dot(h, z, acc)

        if HAS_BIAS:
            bias = tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
            acc += bias[None, :]

        c_ptrs = C + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    def _kernel_args(p: Tensor, q: Tensor, h: Tensor, z: Tensor, bias: Optional[Tensor], out: Tensor):
        """(grid, positional args, constexpr kwargs) of one launch of ``_lora_mm_kernel`` writing ``out``."""
        m, k = p.shape
        n = q.shape[1]
        r = h.shape[1]

        def grid(meta):
            return (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)

        args = (p, q, h, z, bias if bias is not None else p, out,
                m, n, k, r,
                p.stride(0), p.stride(1), q.stride(0), q.stride(1),
                h.stride(0), h.stride(1), z.stride(0), z.stride(1),
                out.stride(0), out.stride(1))
        return grid, args, {"HAS_BIAS": bias is not None, "RP": max(16, triton.next_power_of_2(r)),
                            "HINT_M": m % 16 == 0, "HINT_N": n % 16 == 0}

    @triton_op("lorakit::lora_matmul", mutates_args=())
    def _lora_matmul_op(p: Tensor, q: Tensor, h: Tensor, z: Tensor, bias: Optional[Tensor]) -> Tensor:
        out = torch.empty((p.shape[0], q.shape[1]), device=p.device, dtype=p.dtype)
        if p.shape[0] > 0 and q.shape[1] > 0:
            grid, args, consts = _kernel_args(p, q, h, z, bias, out)
            wrap_triton(_lora_mm_kernel)[grid](*args, **consts)
        return out


def available(device) -> bool:
    """Whether tensors on ``device`` (a ``torch.device``, a string, or a tensor) get the Triton kernel."""
    if isinstance(device, Tensor):
        device = device.device
    return _HAS_TRITON and torch.device(device).type == "cuda"


def _kernel_ok(p: Tensor, q: Tensor, h: Tensor) -> bool:
    return (available(p.device) and p.dtype in _KERNEL_DTYPES and h.shape[1] <= MAX_RANK
            and max(p.numel(), q.numel(), p.shape[0] * q.shape[1]) <= _INT32_LIMIT)


# ------------------------------------------------------------------------------------------------- the op


def lora_matmul(p: Tensor, q: Tensor, h: Tensor, z: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``p @ q + h @ z (+ bias)`` for 2-D ``p`` [M,K], ``q`` [K,N], ``h`` [M,R], ``z`` [R,N] (any strides) in
    ``p``'s dtype: the fused Triton kernel where :func:`available`, else two torch ``addmm``\\ s. ``q``, ``h``,
    ``z`` must already be in ``p``'s dtype (the bias may be in any float dtype). Not differentiable by itself:
    :func:`fused_lora_linear` is the autograd entry point."""
    if _kernel_ok(p, q, h):
        return torch.ops.lorakit.lora_matmul(p, q, h, z, bias)
    base = p @ q if bias is None else torch.addmm(bias.to(p.dtype), p, q)
    return torch.addmm(base, h, z)


def _mm_fp32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` accumulated and returned in fp32 (cuBLAS ``out_dtype`` for half inputs on CUDA, no M×N upcast)."""
    if a.dtype in _KERNEL_DTYPES:
        if a.is_cuda:
            return torch.mm(a, b, out_dtype=torch.float32)
        return a.float() @ b.float()
    return (a @ b).float() if a.dtype != torch.float64 else a @ b


class _FusedLoRALinear(torch.autograd.Function):
    """2-D core of :func:`fused_lora_linear`; ``x2`` is already in the compute dtype."""

    @staticmethod
    def forward(ctx, x2: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor,
                scale: float) -> Tensor:
        dtype = x2.dtype
        with torch.autocast(x2.device.type, enabled=False):
            h = x2 @ lora_a.to(dtype).t()                                     # [M,R]
            sb = (lora_b * scale).to(dtype)                                  # [N,R]
            y = lora_matmul(x2, weight.to(dtype).t(), h, sb.t(), bias)       # x Wᵀ + h (sB)ᵀ (+ b)
        ctx.save_for_backward(x2, h, weight, lora_a, lora_b)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        x2, h, weight, lora_a, lora_b = ctx.saved_tensors
        need_x, _, _, need_a, need_b, _ = ctx.needs_input_grad
        s = ctx.scale
        dtype = x2.dtype
        gx = ga = gb = None
        with torch.autocast(x2.device.type, enabled=False):
            g = gy.to(dtype)
            if need_x or need_a:
                u = g @ (lora_b * s).to(dtype)                                # [M,R] = s g B
            if need_x:
                gx = lora_matmul(g, weight.to(dtype), u, lora_a.to(dtype))   # g W + u A
            if need_a:
                ga = _mm_fp32(u.t(), x2).to(lora_a.dtype)                    # uᵀ x
            if need_b:
                gb = (_mm_fp32(g.t(), h) * s).to(lora_b.dtype)               # s gᵀ h
        return gx, None, None, ga, gb, None


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor) -> None:
    def fail(msg: str) -> None:
        raise ValueError(f"fused_lora_linear: {msg}")

    named = [("x", x), ("weight", weight), ("lora_a", lora_a), ("lora_b", lora_b)]
    if bias is not None:
        named.append(("bias", bias))
    for name, t in named:
        if not isinstance(t, Tensor):
            fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point or t.element_size() < 2:
            fail(f"{name} has dtype {t.dtype}; only float16/bfloat16/float32/float64 are supported "
                 "(dequantise float8 weights first)")
        if t.device != x.device:
            fail(f"{name} is on {t.device} but x is on {x.device}; move them to one device")
    if weight.dim() != 2:
        fail(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        fail(f"x's last dim ({x.shape[-1] if x.dim() else 'scalar'}) must equal weight's in-features {k}")
    if lora_a.dim() != 2 or lora_a.shape[1] != k or lora_a.shape[0] < 1:
        fail(f"lora_a must be [rank, {k}], got shape {tuple(lora_a.shape)}")
    r = lora_a.shape[0]
    if tuple(lora_b.shape) != (n, r):
        fail(f"lora_b must be [{n}, {r}] (out-features, rank), got shape {tuple(lora_b.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        fail(f"bias must be [{n}], got shape {tuple(bias.shape)}")
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        fail("the base weight and bias are frozen here and get no gradient; call .requires_grad_(False) on "
             "them (train them with a plain Linear instead)")


def fused_lora_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor,
                      scale: float) -> Tensor:
    """``x Wᵀ (+ bias) + scale · (x Aᵀ) Bᵀ`` for ``x`` [..., K], frozen ``weight`` [N,K] and ``bias`` [N],
    trainable ``lora_a`` [R,K] and ``lora_b`` [N,R]; returns [..., N] in the compute dtype (autocast's when
    autocast is on for x's device, else x's). Gradients flow to x, lora_a and lora_b (in their own dtypes).
    Raises ``ValueError`` naming the problem for mismatched shapes/devices, non-float dtypes, or a base weight
    or bias that requires grad."""
    _check(x, weight, bias, lora_a, lora_b)
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"fused_lora_linear: scale must be finite, got {scale}")
    dev = x.device.type
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(dev):
        x = x.to(torch.get_autocast_dtype(dev))
    lead = x.shape[:-1]
    y = _FusedLoRALinear.apply(x.reshape(-1, x.shape[-1]), weight, bias, lora_a, lora_b, scale)
    return y.reshape(*lead, weight.shape[0])
