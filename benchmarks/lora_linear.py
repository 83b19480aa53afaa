"""What the LoRA side of one frozen Linear costs, per way of writing it (CUDA; a CPU run only smoke-tests the script).

The per-block profile (``probe_blocks.py bf16 bf16nl --profile``) showed rank-16 LoRA adding 25-31 % to a compiled
FLUX.1-dev block's GPU time. This times one Linear of each FLUX.1-dev shape (4608 tokens, bf16 autocast, frozen bf16
weight, fp32 LoRA weights as ``lorakit train`` keeps them), compiled by inductor, forward and forward+backward,
for these formulations of ``y = x Wᵀ + b + s · (x Aᵀ) Bᵀ``:

- ``base``: no LoRA (the floor);
- ``peft``: what peft's Linear computes (``base + lora_B(lora_A(x)) * s``);
- ``addmm``: the up-projection accumulated onto the base output by ``torch.addmm``;
- ``sk``: peft's forward as one autograd Function whose backward forms the two weight gradients (reductions over
  all tokens into ``r × K`` and ``N × r``) as batched matmuls over token chunks summed afterwards (split-K), since
  one such reduction leaves most of the GPU idle;
- ``wa``: the down-weight stored as ``r`` extra rows of the frozen weight (``[W; A]``), so the base matmul also
  yields ``x Aᵀ`` without reading ``x`` again, the up-projection accumulated by ``addmm``; split-K weight gradients.

Round 5 also timed ``bcast`` (a broadcast multiply-sum for inductor to fuse) and ``cat`` (one matmul over
``[x, s·xAᵀ]`` and ``[W, B]``): neither paid (benchmarks/RESULTS.md, run 14).

    python3 benchmarks/lora_linear.py            # per shape and formulation: median wall ms of 20 and GPU kernel ms
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

RANK = 16
# FLUX.1-dev's Linear shapes at 1024² (tokens, in, out): attention q/k/v/out, MLP in/out of the double blocks,
# the single blocks' fused in-projection and out-projection
SHAPES = [(4096, 3072, 3072), (4096, 3072, 12288), (4608, 3072, 21504), (4608, 15360, 3072)]
TINY = [(64, 32, 48), (64, 48, 32)]
VARIANTS = ("base", "peft", "addmm", "sk", "wa")
CHUNKS = 16  # token chunks of the split-K weight gradients


def _wgrad(a: torch.Tensor, b: torch.Tensor, chunks: int) -> torch.Tensor:
    """``aᵀ b`` for ``a`` (T × p), ``b`` (T × q), reduced over T as ``chunks`` batched products summed in fp32."""
    t = a.shape[0]
    if chunks <= 1 or t % chunks:
        return (a.t() @ b).float()
    return torch.bmm(a.reshape(chunks, t // chunks, -1).transpose(1, 2),
                     b.reshape(chunks, t // chunks, -1)).sum(0, dtype=torch.float32)


class _SplitKLoRA(torch.autograd.Function):
    """The LoRA side ``s · (x Aᵀ) Bᵀ`` of a 2-D ``x`` with split-K weight gradients."""

    @staticmethod
    def forward(ctx, x, a, b, scale: float):
        ab, bb = a.to(x.dtype), b.to(x.dtype)
        h = (x @ ab.t()) * scale
        ctx.save_for_backward(x, h, ab, bb)
        ctx.scale = scale
        return h @ bb.t()

    @staticmethod
    def backward(ctx, g):
        x, h, ab, bb = ctx.saved_tensors
        gh = (g @ bb) * ctx.scale
        return gh @ ab, _wgrad(gh, x, CHUNKS), _wgrad(g, h, CHUNKS), None


class _StackedLoRA(torch.autograd.Function):
    """``x Wᵀ + bias + s · (x Aᵀ) Bᵀ`` with ``wa = [W; A]`` one bf16 tensor (``a`` is A's trainable fp32 leaf)."""

    @staticmethod
    def forward(ctx, x, wa, a, b, bias, scale: float):
        n = wa.shape[0] - a.shape[0]
        out = x @ wa.t()
        h = out[:, n:].contiguous()
        bb = b.to(x.dtype)
        y = torch.addmm(out[:, :n], h, bb.t(), alpha=scale) + bias
        ctx.save_for_backward(x, h, wa, bb)
        ctx.scale, ctx.n = scale, n
        return y

    @staticmethod
    def backward(ctx, g):
        x, h, wa, bb = ctx.saved_tensors
        s, n = ctx.scale, ctx.n
        gh = (g @ bb) * s
        gx = torch.addmm(g @ wa[:n], gh, wa[n:])
        return gx, None, _wgrad(gh, x, CHUNKS), _wgrad(g, h * s, CHUNKS), None, None


def build(variant: str, n: int, k: int, m: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    w = (torch.randn(m, k, device=device, generator=g) * k ** -0.5).to(torch.bfloat16)
    b = torch.zeros(m, device=device, dtype=torch.bfloat16)
    a = (torch.randn(RANK, k, device=device, generator=g) * k ** -0.5).requires_grad_(True)
    bb = (torch.randn(m, RANK, device=device, generator=g) * 0.1).requires_grad_(True)
    s = 1.0
    x = torch.randn(1, n, k, device=device, dtype=torch.bfloat16, generator=g).requires_grad_(True)
    gy = torch.randn(1, n, m, device=device, dtype=torch.bfloat16, generator=g)
    wa = torch.cat([w, a.detach().to(torch.bfloat16)]).contiguous() if variant == "wa" else None

    def fn(x):
        base = F.linear(x, w, b)
        if variant == "base":
            return base
        if variant == "sk":
            return base + _SplitKLoRA.apply(x.reshape(-1, k), a, bb, s).reshape(base.shape)
        if variant == "wa":
            return _StackedLoRA.apply(x.reshape(-1, k), wa, a, bb, b, s).reshape(base.shape)
        h = F.linear(x, a)
        if variant == "peft":
            return base + F.linear(h, bb) * s
        return torch.addmm(base.reshape(-1, m), h.reshape(-1, RANK), bb.t().to(h.dtype), alpha=s).reshape(base.shape)

    return fn, x, gy, (a, bb)


def agree(n: int, k: int, m: int, device: torch.device) -> float:
    """Largest relative difference of any formulation's output, input gradient and LoRA weight gradients from
    peft's (eager)."""
    ref = None
    worst = 0.0
    for v in VARIANTS[1:]:
        fn, x, gy, (a, bb) = build(v, n, k, m, device)
        with torch.autocast(device.type, torch.bfloat16):
            y = fn(x)
        y.backward(gy)
        got = [t.float().flatten() for t in (y, x.grad, a.grad, bb.grad)]
        ref = got if ref is None else ref
        worst = max(worst, *(float((u - r).abs().max().detach() / r.abs().max().detach()) for u, r in zip(got, ref)))
    return worst


def timed(run, device: torch.device, iters: int) -> tuple[float, float]:
    """(wall ms per call with a sync after each, GPU ms per call summed over its kernels); zeros on the CPU. The
    wall time includes launch latency, which dominates single layers of this size; the kernel sum does not."""
    if device.type != "cuda":
        run()
        return 0.0, 0.0
    from probe_blocks import profile_kernels  # same folder

    for _ in range(3):
        run()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    kernels = profile_kernels(run, steps=5)["kinds_ms"]
    return statistics.median(times), sum(kernels.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    backend = "inductor" if cuda else "aot_eager"
    print("| N×K×M | " + " | ".join(f"{v} fwd / fwd+bwd ms: wall [GPU kernels]" for v in args.variants) + " |")
    print("|---|" + "---|" * len(args.variants))
    for n, k, m in (SHAPES if cuda else TINY):
        worst = agree(n, k, m, device)
        assert worst < 0.02, f"formulations disagree by {worst:.3g} at {n}x{k}x{m}"
        cells = []
        for v in args.variants:
            torch._dynamo.reset()
            try:
                fn, x, gy, _ = build(v, n, k, m, device)
                compiled = torch.compile(fn, backend=backend, dynamic=False)

                def fwd():
                    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16):
                        compiled(x)

                def both():
                    with torch.autocast(device.type, torch.bfloat16):
                        y = compiled(x)
                    y.backward(gy)
                    x.grad = None

                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                (fw, fk), (bw, bk) = timed(fwd, device, args.iters), timed(both, device, args.iters)
                cells.append(f"{fw:.3f} [{fk:.3f}] / {bw:.3f} [{bk:.3f}]"
                             + (f" ({torch.cuda.max_memory_allocated() / 2**20:.0f} MiB)" if cuda else ""))
            except Exception as exc:  # one formulation failing to compile must not hide the others
                cells.append(f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}")
        print(f"| {n}×{k}×{m} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
