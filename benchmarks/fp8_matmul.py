"""Per-layer speed of ``memory.fp8_compute`` against bf16 on FLUX.1-dev's Linear shapes (CUDA only).

For each (tokens M, in K, out N) it times, with CUDA events over ``--iters`` calls after a warm-up:
  bf16      ``F.linear`` forward and its input gradient (``grad @ W``),
  fp8 mm    ``torch._scaled_mm`` alone on pre-quantised operands (the ceiling),
  fp8 layer lorakit's ``fp8_linear`` (per-token quantisation included) and its input gradient (weight-scale
            folding and the bf16 upcast of the fp8 weight included), called eagerly and from a compiled function.
Prints one markdown table (TFLOP/s = 2·M·K·N / time).

    python3 benchmarks/fp8_matmul.py [--iters 50]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from lorakit.train import fp8

# FLUX.1-dev at 1024²: 4096 image + 512 text tokens; double blocks run the streams apart, single blocks together
SHAPES = [(4608, 3072, 3072), (4608, 3072, 12288), (4608, 15360, 3072), (4096, 3072, 3072),
          (4096, 3072, 12288), (4096, 12288, 3072), (512, 3072, 3072), (512, 3072, 12288), (1, 3072, 18432)]


def timed(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3


def input_grad(g: torch.Tensor, w8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What ``fp8_linear``'s backward computes for the input: ``(g · scale) @ upcast(w8)`` in bf16."""
    return fp8._fold(g, scale) @ w8.to(torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name(dev)} · torch {torch.__version__}\n")
    print("| M×K×N | bf16 fwd | fp8 mm only | fp8 layer fwd | fp8 layer fwd compiled | bf16 grad | "
          "fp8 layer grad | fp8 grad compiled |")
    print("|---|---|---|---|---|---|---|---|")
    fwd_c = torch.compile(lambda x, w8, s: fp8.fp8_linear(x, w8, s))
    grad_c = torch.compile(input_grad)
    totals = {"bf16": 0.0, "fp8": 0.0, "fp8c": 0.0}
    for m, k, n in SHAPES:
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        w = (torch.randn(n, k, device=dev) * 0.02).to(torch.bfloat16)
        g = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
        w8, scale = fp8.quantize(w)
        x8, sx = fp8.quantize_rows(x)
        flops = 2 * m * k * n
        t = {
            "bf16 fwd": timed(lambda: F.linear(x, w), args.iters),
            "fp8 mm": timed(lambda: torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=scale.reshape(1, -1),
                                                     out_dtype=torch.bfloat16), args.iters),
            "fp8 fwd": timed(lambda: fp8.fp8_linear(x, w8, scale), args.iters),
            "fp8 fwd c": timed(lambda: fwd_c(x, w8, scale), args.iters),
            "bf16 grad": timed(lambda: g @ w, args.iters),
            "fp8 grad": timed(lambda: input_grad(g, w8, scale), args.iters),
            "fp8 grad c": timed(lambda: grad_c(g, w8, scale), args.iters),
        }
        totals["bf16"] += t["bf16 fwd"] + t["bf16 grad"]
        totals["fp8"] += t["fp8 fwd"] + t["fp8 grad"]
        totals["fp8c"] += t["fp8 fwd c"] + t["fp8 grad c"]
        cells = " | ".join(f"{v * 1e6:.0f} µs ({flops / v / 1e12:.0f})" for v in t.values())
        print(f"| {m}×{k}×{n} | {cells} |")
    print(f"\nsum over shapes, fwd + grad: bf16 {totals['bf16'] * 1e3:.2f} ms, fp8 layer eager "
          f"{totals['fp8'] * 1e3:.2f} ms, compiled {totals['fp8c'] * 1e3:.2f} ms (µs per call, TFLOP/s in brackets)")


if __name__ == "__main__":
    main()
