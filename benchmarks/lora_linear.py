"""What the LoRA side of one frozen Linear costs, per way of writing it (CUDA; a CPU run only smoke-tests the script).

The per-block profile (``probe_blocks.py bf16 bf16nl --profile``) showed rank-16 LoRA adding 25-31 % to a compiled
FLUX.1-dev block's GPU time. This times one Linear of each FLUX.1-dev shape (4608 tokens, bf16 autocast, frozen bf16
weight, fp32 LoRA weights as ``lorakit train`` keeps them), compiled by inductor, forward and forward+backward,
for these formulations of ``y = x Wᵀ + b + s · (x Aᵀ) Bᵀ``:

- ``base``: no LoRA (the floor);
- ``peft``: what peft's Linear computes (``base + lora_B(lora_A(x)) * s``);
- ``addmm``: the up-projection accumulated onto the base output by ``torch.addmm``;
- ``bcast``: the up-projection written as a broadcast multiply-and-sum over the rank, so that inductor can fuse it
  into the element-wise kernel that adds it (no ``N × M`` LoRA output in memory);
- ``cat``: one matmul over ``[x, s · x Aᵀ]`` and ``[W, B]`` (the LoRA up-weight stored next to the frozen weight).

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
VARIANTS = ("base", "peft", "addmm", "bcast", "cat")


class _CatLoRA(torch.autograd.Function):
    """``[x, s·h] @ W_extᵀ`` with ``W_ext = [W, B]`` one stored tensor (``b_param`` is B as the trainable leaf the
    gradient goes to; for timing only, ``W_ext`` holds a copy of it)."""

    @staticmethod
    def forward(ctx, x, h, w_ext, b_param, k: int, scale: float):
        ctx.save_for_backward(h, w_ext)
        ctx.k, ctx.scale = k, scale
        return torch.cat([x, h * scale], dim=-1) @ w_ext.t()

    @staticmethod
    def backward(ctx, g):
        h, w_ext = ctx.saved_tensors
        gxc = g @ w_ext
        gx, gh = gxc[..., :ctx.k], gxc[..., ctx.k:] * ctx.scale
        gb = g.reshape(-1, g.shape[-1]).t() @ (h.reshape(-1, h.shape[-1]) * ctx.scale)
        return gx, gh, None, gb.float(), None, None


def build(variant: str, n: int, k: int, m: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    w = (torch.randn(m, k, device=device, generator=g) * k ** -0.5).to(torch.bfloat16)
    b = torch.zeros(m, device=device, dtype=torch.bfloat16)
    a = (torch.randn(RANK, k, device=device, generator=g) * k ** -0.5).requires_grad_(True)
    bb = (torch.randn(m, RANK, device=device, generator=g) * 0.1).requires_grad_(True)
    s = 1.0
    x = torch.randn(1, n, k, device=device, dtype=torch.bfloat16, generator=g).requires_grad_(True)
    gy = torch.randn(1, n, m, device=device, dtype=torch.bfloat16, generator=g)
    w_ext = torch.cat([w, bb.detach().to(torch.bfloat16)], dim=1).contiguous() if variant == "cat" else None

    def fn(x):
        base = F.linear(x, w, b)
        if variant == "base":
            return base
        h = F.linear(x, a)
        if variant == "peft":
            return base + F.linear(h, bb) * s
        if variant == "addmm":
            return torch.addmm(base.reshape(-1, m), h.reshape(-1, RANK), bb.t().to(h.dtype), alpha=s).reshape(base.shape)
        if variant == "bcast":
            return base + s * (h.unsqueeze(-2) * bb.to(h.dtype)).sum(-1)
        return _CatLoRA.apply(x, h, w_ext, bb, k, s) + b  # cat

    return fn, x, gy


def agree(n: int, k: int, m: int, device: torch.device) -> float:
    """Largest relative difference of any formulation's output and input gradient from peft's (eager)."""
    ref = None
    worst = 0.0
    for v in VARIANTS[1:]:
        fn, x, gy = build(v, n, k, m, device)
        with torch.autocast(device.type, torch.bfloat16):
            y = fn(x)
        y.backward(gy)
        got = torch.cat([y.float().flatten(), x.grad.float().flatten()])
        ref = got if ref is None else ref
        worst = max(worst, float((got - ref).abs().max().detach() / ref.abs().max().detach()))
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
                fn, x, gy = build(v, n, k, m, device)
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
