"""Host time per matmul call on a GPU (the launch cost inductor's extern matmuls pay on the host, which bounds a
FLUX.1-dev LoRA step when the host cannot stay ahead of the GPU): microseconds per ``torch.mm`` / ``torch.addmm``
call for the shapes of a FLUX.1-dev block at 1024² (4608 tokens, width 3072, LoRA rank 16), with torch's cuBLAS and
cuBLASLt backends. Run on a GPU machine: ``python benchmarks/probe_mm_host.py``."""

from __future__ import annotations

import time

import torch

SHAPES = {"base 4608x3072 @ 3072x3072": ((4608, 3072), (3072, 3072)),
          "LoRA down 4608x3072 @ 3072x16": ((4608, 3072), (3072, 16)),
          "LoRA up 4608x16 @ 16x3072": ((4608, 16), (16, 3072)),
          "LoRA grad 16x4608 @ 4608x3072": ((16, 4608), (4608, 3072))}


def host_us(fn, calls: int = 300) -> float:
    """Median over 5 rounds of the host time to issue ``calls`` calls (the GPU catches up between rounds)."""
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


def main() -> None:
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    for backend in ("cublas", "cublaslt"):
        torch.backends.cuda.preferred_blas_library(backend)
        for name, (sa, sb) in SHAPES.items():
            a = torch.randn(sa, device=dev, dtype=torch.bfloat16)
            b = torch.randn(sb, device=dev, dtype=torch.bfloat16)
            out = torch.empty(sa[0], sb[1], device=dev, dtype=torch.bfloat16)
            bias = torch.randn(sb[1], device=dev, dtype=torch.bfloat16)
            row = {"mm": host_us(lambda: torch.mm(a, b)), "mm out=": host_us(lambda: torch.mm(a, b, out=out)),
                   "addmm bias": host_us(lambda: torch.addmm(bias, a, b))}
            print(f"{backend:9s} {name:32s} " + "  ".join(f"{k} {v:6.1f} us" for k, v in row.items()), flush=True)
    x = torch.randn(4608, 3072, device=dev, dtype=torch.bfloat16)
    print(f"elementwise add (reference launch cost): {host_us(lambda: x.add(1.0)):.1f} us")


if __name__ == "__main__":
    main()
