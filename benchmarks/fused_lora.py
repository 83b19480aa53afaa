"""The fused LoRA Linear (``lorakit.train.lora_kernel``) against the base Linear and peft's formulation, per FLUX.1-dev
Linear shape: correctness and GPU time, eager and under torch.compile. CUDA only for the numbers (a CPU run only
smoke-tests the script on tiny shapes, with wall-clock times).

Per shape (M tokens, K in-features, N out-features), rank 16, bf16 autocast, frozen bf16 W and bias, fp32 LoRA
weights with a non-zero B, x bf16 requiring grad:

- ``base``  : ``F.linear(x, W, b)`` (no LoRA: the floor);
- ``peft``  : ``F.linear(x, W, b) + s * F.linear(F.linear(x, A), B)`` (what peft's Linear computes);
- ``fused`` : ``lorakit.train.lora_kernel.fused_lora_linear`` (Triton: up-projection folded into the base matmul).

Each is timed eager and compiled (``torch.compile(fullgraph=True)``, one compile serves both timings): forward
(grad mode on, as in training) and forward+backward (``torch.autograd.grad`` for x, A, B, so no ``.grad``
accumulation is timed): CUDA events around ``--iters`` back-to-back calls after ``--warmup`` calls, per call.
``+% vs base`` is the LoRA's cost over the base Linear (same mode). Errors: max |got − ref| / max |ref| of y, dx,
dA, dB against an fp32 computation (TF32 off) from the same bf16 inputs; for ``fused`` the row also gives the
largest difference from peft's bf16 result. ``cfg`` is the Triton autotuner's choice (forward kernel / dx kernel;
eager rows; inductor autotunes its own copy under compile). A row that fails prints its traceback to stderr and
``ERROR`` in the table; the rest go on. Rows not started by ``--budget`` seconds are skipped (compiled rows run
last).

    PYTHONPATH=. python3 benchmarks/fused_lora.py            # on an H200: about 1 minute (57 s measured)
    PYTHONPATH=. python3 benchmarks/fused_lora.py --iters 100 --shapes 4096x3072x3072
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lorakit.train import lora_kernel as lk  # noqa: E402

RANK = 16
ALPHA = 16.0
# (M tokens, K in, N out): FLUX.1-dev at 1024² — attention q/k/v/out, double-block MLP in/out, single-block fused
# in-projection / out-projection, and a short-sequence case
SHAPES = [(4096, 3072, 3072), (4096, 3072, 12288), (4096, 12288, 3072), (4608, 3072, 21504), (4608, 15360, 3072),
          (512, 3072, 3072)]
TINY = [(64, 48, 80), (77, 96, 200)]
VARIANTS = ("base", "peft", "fused")


def make(m: int, k: int, n: int, device: torch.device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0, dtype=torch.float32):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    x = rnd(m, k, dtype=torch.bfloat16).requires_grad_(True)
    w = rnd(n, k, scale=k ** -0.5, dtype=torch.bfloat16)
    b = rnd(n, scale=0.1, dtype=torch.bfloat16)
    a = rnd(RANK, k, scale=k ** -0.5).requires_grad_(True)
    bb = rnd(n, RANK, scale=0.3).requires_grad_(True)  # trained-looking B: the LoRA term is not negligible
    gy = rnd(m, n, dtype=torch.bfloat16)
    return x, w, b, a, bb, gy


def forward_fn(variant: str, w, b, a, bb, s: float):
    def fn(x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            if variant == "base":
                return F.linear(x, w, b)
            if variant == "peft":
                return F.linear(x, w, b) + s * F.linear(F.linear(x, a), bb)
            return lk.fused_lora_linear(x, w, b, a, bb, s)
    return fn


def reference(x, w, b, a, bb, s, gy):
    """fp32 y, dx, dA, dB from the same bf16 x/W/b/g and fp32 A/B (TF32 off)."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        x32 = x.detach().float().requires_grad_(True)
        a32, b32 = a.detach().clone().requires_grad_(True), bb.detach().clone().requires_grad_(True)
        y = x32 @ w.float().t() + b.float() + s * (x32 @ a32.t()) @ b32.t()
        return [y.detach(), *torch.autograd.grad(y, [x32, a32, b32], gy.float())]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def rel(got, want) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30))


def timed(call, cuda: bool, iters: int, warmup: int) -> float:
    """GPU ms per call: CUDA events around ``iters`` back-to-back calls (the CPU queues ahead, so launch latency
    is hidden wherever the GPU work outlasts the Python overhead), divided by ``iters``; wall clock on the CPU."""
    for _ in range(warmup):
        call()
    if not cuda:
        t0 = time.perf_counter()
        for _ in range(iters):
            call()
        return (time.perf_counter() - t0) * 1e3 / iters
    from fp8_matmul import timed as cuda_seconds  # same folder: CUDA events around back-to-back calls

    return cuda_seconds(call, iters) * 1e3


def cfg_str(cfg) -> str:
    if cfg is None:
        return "?"
    kw = cfg.kwargs
    return f"{kw.get('BM')}x{kw.get('BN')}x{kw.get('BK')} w{cfg.num_warps} s{cfg.num_stages}"


def run_row(shape, variant: str, compiled: bool, device: torch.device, args, peft_out: dict) -> dict:
    m, k, n = shape
    cuda = device.type == "cuda"
    x, w, b, a, bb, gy = make(m, k, n, device)
    s = ALPHA / RANK
    fn = forward_fn(variant, w, b, a, bb, s)
    if compiled:
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=True, dynamic=False, backend="inductor" if cuda else "aot_eager")
    wrt = [x] if variant == "base" else [x, a, bb]
    row: dict = {}

    # first call (compiles / autotunes); read the autotuner's choices around it
    y = fn(x)
    if variant == "fused" and not compiled and lk.available(device):
        row["cfg_fwd"] = cfg_str(lk._lora_mm_kernel.best_config)
    got = [y.detach(), *torch.autograd.grad(y, wrt, gy)]
    if variant == "fused" and not compiled and lk.available(device):
        row["cfg"] = f"{row.pop('cfg_fwd')} / {cfg_str(lk._lora_mm_kernel.best_config)}"
    if variant != "base":
        ref = reference(x, w, b, a, bb, s, gy)
        row["err"] = [rel(g_, r_) for g_, r_ in zip(got, ref)]
        if variant == "peft" and not compiled:
            peft_out[shape] = got
        if variant == "fused" and shape in peft_out:
            row["vs_peft"] = max(rel(g_, p_) for g_, p_ in zip(got, peft_out[shape]))
    del y, got

    def fwd():
        fn(x)

    def both():
        torch.autograd.grad(fn(x), wrt, gy)

    row["fwd"] = timed(fwd, cuda, args.iters, args.warmup)
    row["both"] = timed(both, cuda, args.iters, args.warmup)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--budget", type=float, default=200.0, help="seconds after which no new row is started")
    ap.add_argument("--shapes", nargs="*", help="MxKxN, e.g. 4096x3072x3072 (default: the FLUX.1-dev set)")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else (SHAPES if cuda else TINY)
    if not cuda:
        args.iters, args.warmup = min(args.iters, 3), 1
    torch._dynamo.config.cache_size_limit = 64
    t_start = time.perf_counter()
    try:
        import triton
        tv = triton.__version__
    except Exception:
        tv = "none"
    print(f"# fused LoRA Linear: {torch.cuda.get_device_name() if cuda else 'CPU (smoke test)'}, torch "
          f"{torch.__version__}, triton {tv}, Triton path: {lk.available(device)}, rank {RANK}, bf16 autocast, "
          f"mean GPU ms of {args.iters} back-to-back calls after {args.warmup} warm-up\n", flush=True)

    modes = [False] + ([] if args.no_compile else [True])
    results: dict = {}
    peft_out: dict = {}
    for compiled in modes:  # every eager row first, then the compiled ones
        for shape in shapes:
            for variant in VARIANTS:
                key = (shape, variant, compiled)
                if time.perf_counter() - t_start > args.budget:
                    results[key] = {"skip": True}
                    continue
                try:
                    results[key] = run_row(shape, variant, compiled, device, args, peft_out)
                except Exception:
                    print(f"--- {shape} {variant} {'compiled' if compiled else 'eager'} failed:", file=sys.stderr)
                    traceback.print_exc()
                    results[key] = {"error": True}
                if cuda:
                    torch.cuda.empty_cache()
                r = results[key]
                print(f"  done {shape} {variant:5s} {'compiled' if compiled else 'eager   '} "
                      f"{r.get('fwd', float('nan')):.3f} / {r.get('both', float('nan')):.3f} ms "
                      f"({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)

    print("| M×K×N | variant | mode | fwd ms | +% vs base | fwd+bwd ms | +% vs base | rel err y / dx / dA / dB "
          "(vs fp32) | max diff vs peft | cfg (fwd / dx) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for compiled in modes:
        for shape in shapes:
            base = results.get((shape, "base", compiled), {})
            for variant in VARIANTS:
                r = results.get((shape, variant, compiled), {"skip": True})
                head = f"| {'×'.join(map(str, shape))} | {variant} | {'compile' if compiled else 'eager'} |"
                if r.get("error") or r.get("skip"):
                    print(head + (" ERROR (traceback above) |" if r.get("error") else " skipped (budget) |")
                          + " |" * 6)
                    continue

                def over(kind):
                    if variant == "base" or kind not in base:
                        return ""
                    return f"{100 * (r[kind] / base[kind] - 1):+.0f} %"

                err = " / ".join(f"{e:.1e}" for e in r["err"]) if "err" in r else ""
                vp = f"{r['vs_peft']:.1e}" if "vs_peft" in r else ""
                print(f"{head} {r['fwd']:.3f} | {over('fwd')} | {r['both']:.3f} | {over('both')} | {err} | {vp} | "
                      f"{r.get('cfg', '')} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
