"""What one compiled FLUX.1-dev block saves for backward, and how fast it steps, per weight mode (CUDA only).

A diagnostic for ``memory.fp8_base`` / ``memory.fp8_compute`` under ``memory.compile``: one full-size double block
(4096 image + 512 text tokens) and one single block (4608 tokens), rank-16 LoRA on every Linear, compiled the way
``lorakit.train.speed`` compiles blocks with checkpointing (``checkpoint_forward`` + ``nn.Module.compile``),
under bf16 autocast. Per mode it prints: bytes the forward saves for backward (from ``saved_tensors_hooks``), of
which how many alias a parameter (no new memory), the memory still allocated after forward, the peak over
forward + backward above the weights, and the forward+backward time (median of 10, each mode timed alone).

Modes: ``bf16``; ``bf16nl`` (bf16 without LoRA: what the LoRA side costs); ``fp8`` (storage, opaque op as under
CUDA graphs); ``fp8c`` (fp8 compute, with the joint-graph recompute pass ``lorakit.train`` installs for it). A mode
with ``+at`` appended compiles with inductor's GEMM autotuning (``max_autotune_gemm``: Triton matmul templates
against cuBLAS, per shape).

    python3 benchmarks/probe_blocks.py            # all modes, each in its own process, compiled in parallel
    python3 benchmarks/probe_blocks.py bf16 --profile   # + GPU time per kernel kind (matmul, attention, ...)
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("bf16", "fp8", "fp8c")
EXTRA_MODES = ("bf16nl",)
# kernel kinds for --profile, first match wins (attention kernels' names can contain "gemm"/"sm90" too)
KINDS = (("attention", ("fmha", "flash", "attention", "sdpa", "attn")), ("matmul", ("gemm", "xmma", "nvjet", "cutlass",
         "scaled_mm", "matmul", "sm90_", "sm100_")), ("fused (triton)", ("triton",)), ("other", ("",)))


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next(kind for kind, keys in KINDS if any(k in low for k in keys))


def profile_kernels(run, steps: int = 3, top_n: int = 10, gaps: bool = False, host: bool = False) -> dict:
    """GPU time per kernel kind (ms per step) and the ``top_n`` costliest kernels, over ``steps`` calls of ``run``.

    With ``gaps`` the result also says how long the GPU sat idle between kernels (ms per step, over the span from
    the first kernel to the last) and, for the ``top_n`` longest idle gaps, the kernels on either side. With
    ``host`` the host calls are recorded too and each gap names the innermost ones that covered most of it (what
    the GPU waited for); recording them slows the host, so the idle time is then overstated and the per-kind
    sums count kernels twice (under their host calls as well)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if host else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            run()
    kinds: dict = {}
    names: dict = {}
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None)
        if us is None:
            us = ev.cuda_time_total
        if not us or ev.key.startswith(("ProfilerStep", "aten::", "cudaLaunch")) or ev.count == 0:
            continue
        kind = kernel_kind(ev.key)
        kinds[kind] = kinds.get(kind, 0.0) + us / 1e3 / steps
        names[ev.key] = (us / 1e3 / steps, ev.count // steps, kind)
    top = sorted(names.items(), key=lambda kv: -kv[1][0])[:top_n]
    out = {"kinds_ms": kinds, "top": [(k[:90], round(v[0], 3), v[1], v[2]) for k, v in top]}
    if gaps:
        out.update(idle_gaps(prof.events(), steps, top_n))
    return out


def idle_gaps(events, steps: int, top_n: int) -> dict:
    """GPU idle time between kernels and the host calls that covered the longest gaps (see profile_kernels)."""
    from torch.autograd import DeviceType

    gpu, host = [], []
    for ev in events:
        start, end = ev.time_range.start, ev.time_range.end
        if ev.device_type == DeviceType.CUDA:
            gpu.append((start, end, ev.name))
        elif not ev.name.startswith("ProfilerStep"):
            host.append((start, end, ev.name))
    gpu.sort()
    if not gpu:
        return {"idle_ms": 0.0, "span_ms": 0.0, "gaps": []}
    found, busy_end, before = [], gpu[0][1], gpu[0][2]
    for start, end, name in gpu[1:]:
        if start > busy_end:
            found.append((start - busy_end, busy_end, start, before, name))
        if end >= busy_end:
            busy_end, before = end, name
    span = (busy_end - gpu[0][0]) / 1e3 / steps
    idle = sum(g[0] for g in found) / 1e3 / steps
    longest = []
    for length, g0, g1, before, after in sorted(found, reverse=True)[:top_n]:
        covering = sorted((e - s, name) for s, e, name in host if min(e, g1) - max(s, g0) > 0.5 * (g1 - g0))
        longest.append({"ms": round(length / 1e3, 3), "after_kernel": before[:60], "before_kernel": after[:60],
                        "host": [name[:60] for _, name in covering[:4]]})
    return {"idle_ms": idle, "span_ms": span, "gaps": longest}


def one(mode: str, sync_dir: Path, profiled: bool = False) -> dict:
    import torch
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    from torch import nn

    from lorakit.lora.inject import inject_lora
    from lorakit.train import fp8, speed

    tiny = not torch.cuda.is_available()  # CPU smoke test of the script: tiny blocks, no timings worth reading
    dev = torch.device("cpu" if tiny else "cuda")
    torch.manual_seed(0)
    if not tiny:
        speed.configure_attention(compiled=True)
    dim, heads, hd, n_img, n_txt = (64, 2, 32, 64, 16) if tiny else (3072, 24, 128, 4096, 512)
    blocks = {"double": FluxTransformerBlock(dim=dim, num_attention_heads=heads, attention_head_dim=hd),
              "single": FluxSingleTransformerBlock(dim=dim, num_attention_heads=heads, attention_head_dim=hd)}
    out: dict = {"mode": mode}
    mode, autotune = mode.removesuffix("+at"), mode.endswith("+at")
    if autotune:
        import torch._inductor.config as inductor_config

        inductor_config.max_autotune_gemm = True
    inputs = {}
    for name, block in blocks.items():
        block.to(dev, torch.bfloat16).requires_grad_(False)
        targets = {n: 16 for n, m in block.named_modules() if type(m) is nn.Linear}
        if mode != "bf16nl":
            inject_lora(block, targets, 16.0, 0.0, seed=1, under_autocast=True)
        if mode not in ("bf16", "bf16nl"):
            fp8.apply_fp8_base(nn.Sequential(block), compute=mode == "fp8c")
        if mode == "fp8c":
            fp8.install_recompute_pass()
        fp8.OPAQUE_UNDER_COMPILE = mode == "fp8"
        speed.checkpoint_forward(block)
        block.compile(dynamic=False, backend="aot_eager" if tiny else "inductor")
        g = torch.Generator(device=dev).manual_seed(1)
        img = torch.randn(1, n_img, dim, device=dev, dtype=torch.bfloat16, generator=g)
        txt = torch.randn(1, n_txt, dim, device=dev, dtype=torch.bfloat16, generator=g)
        temb = torch.randn(1, dim, device=dev, dtype=torch.bfloat16, generator=g)
        rope = (torch.ones(n_img + n_txt, hd, device=dev), torch.zeros(n_img + n_txt, hd, device=dev))
        inputs[name] = (img.requires_grad_(True), txt.requires_grad_(True), temb, rope)

    def step(name: str, record: list | None = None):
        img, txt, temb, rope = inputs[name]
        with torch.autocast(dev.type, torch.bfloat16):
            if record is None:
                res = blocks[name](img, txt, temb, image_rotary_emb=rope)
            else:
                with torch.autograd.graph.saved_tensors_hooks(lambda t: record.append(t) or t, lambda t: t):
                    res = blocks[name](img, txt, temb, image_rotary_emb=rope)
        outs = [r for r in (res if isinstance(res, tuple) else (res,)) if r is not None]
        return sum((o.float() * 1e-3).sum() for o in outs)

    for name in blocks:  # compile + warm up
        for _ in range(3):
            step(name).backward()
    sync = torch.cuda.synchronize if not tiny else (lambda: None)
    mem = torch.cuda.memory_allocated if not tiny else (lambda: 0)
    peak_mem = torch.cuda.max_memory_allocated if not tiny else (lambda: 0)
    sync()
    (sync_dir / f"compiled-{mode}").touch()
    deadline = time.time() + 300
    while time.time() < deadline and len(list(sync_dir.glob("compiled-*"))) < int(os.environ.get("PROBE_N", "1")):
        time.sleep(1)
    with open(sync_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, block in blocks.items():
            params = {p.untyped_storage().data_ptr() for p in block.parameters()} | \
                {b.untyped_storage().data_ptr() for b in block.buffers()}
            sync()
            if not tiny:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            base = mem()
            saved: list = []
            loss = step(name, saved)
            after_fwd = mem() - base
            loss.backward()
            sync()
            peak = peak_mem() - base
            seen, total, aliased, shapes = set(), 0, 0, []
            for t in saved:
                key = (t.untyped_storage().data_ptr(), tuple(t.shape))
                if key in seen:
                    continue
                seen.add(key)
                nbytes = t.numel() * t.element_size()
                total += nbytes
                if t.untyped_storage().data_ptr() in params:
                    aliased += nbytes
                elif nbytes > 4 * 2**20:
                    shapes.append(f"{tuple(t.shape)}:{str(t.dtype).replace('torch.', '')}")
            times = []
            for _ in range(10):
                sync()
                t0 = time.perf_counter()
                step(name).backward()
                sync()
                times.append(time.perf_counter() - t0)
            weights = sum(p.numel() * p.element_size() for p in block.parameters())
            if profiled:
                out[name + "_profile"] = profile_kernels(lambda: step(name).backward()) if not tiny else \
                    {"kinds_ms": {}, "top": []}
            out[name] = {"weights_MiB": weights / 2**20, "saved_MiB": total / 2**20, "saved_params_MiB": aliased / 2**20,
                         "after_fwd_MiB": after_fwd / 2**20, "peak_MiB": peak / 2**20,
                         "ms": statistics.median(times) * 1e3, "big_saved": shapes[:12]}
        fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("modes", nargs="*", default=list(MODES))
    ap.add_argument("--one")
    ap.add_argument("--sync")
    ap.add_argument("--profile", action="store_true", help="also GPU time per kernel kind (torch.profiler)")
    args = ap.parse_args()
    unknown = [m for m in args.modes if m.removesuffix("+at") not in MODES + EXTRA_MODES]
    if unknown:
        ap.error(f"unknown mode(s) {unknown}; choose from {MODES + EXTRA_MODES}")
    if args.one:
        print("PROBE " + json.dumps(one(args.one, Path(args.sync), args.profile)), flush=True)
        return
    sync = Path(tempfile.mkdtemp())
    env = dict(os.environ, PROBE_N=str(len(args.modes)))
    extra = ["--profile"] if args.profile else []
    procs = {m: subprocess.Popen([sys.executable, __file__, "--one", m, "--sync", str(sync), *extra], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for m in args.modes}
    print("| mode | block | weights MiB | saved MiB (of it params) | after fwd MiB | peak MiB | fwd+bwd ms | large saved |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for m, p in procs.items():
        text, _ = p.communicate(timeout=560)
        rows = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("PROBE ")]
        if not rows:
            print(f"| {m} | FAILED | {' / '.join(text.strip().splitlines()[-3:])[:300]} |")
            continue
        results[m] = rows[0]
        for name in ("double", "single"):
            r = rows[0][name]
            print(f"| {m} | {name} | {r['weights_MiB']:.0f} | {r['saved_MiB']:.0f} ({r['saved_params_MiB']:.0f}) | "
                  f"{r['after_fwd_MiB']:.0f} | {r['peak_MiB']:.0f} | {r['ms']:.2f} | {', '.join(r['big_saved'])} |")
    if args.profile:
        kinds = [k for k, _ in KINDS]
        print("\nGPU time per fwd+bwd (ms), by kernel kind (torch.profiler, 3 calls)\n")
        print("| mode | block | " + " | ".join(kinds) + " | sum |")
        print("|---|---|" + "---|" * (len(kinds) + 1))
        for m, r in results.items():
            for name in ("double", "single"):
                k = r[name + "_profile"]["kinds_ms"]
                print(f"| {m} | {name} | " + " | ".join(f"{k.get(x, 0.0):.2f}" for x in kinds) +
                      f" | {sum(k.values()):.2f} |")
        for m, r in results.items():
            for name in ("double", "single"):
                print(f"\n{m} {name}, costliest kernels (ms per call of the block, launches, kind):")
                for row in r[name + "_profile"]["top"]:
                    print("  ", row)


if __name__ == "__main__":
    main()
