"""Scaling of data-parallel LoRA training steps over 1, 2 and 4 GPUs (issue 24): samples per second and the ratio to
one GPU, for the full-size SDXL U-Net and FLUX.1-dev transformer with random weights (built as benchmarks/bench.py
builds them: bf16, gradient checkpointing, LoRA rank 32 / 16 on the adapters' targets, AdamW).

Each configuration runs in fresh processes, one per GPU, joined exactly as ``lorakit train --gpus N`` joins them
(``lorakit.train.distributed.joined``: nccl, one card per LOCAL_RANK), and steps with the training code itself
(``lorakit.train.steps.update_step``: every rank draws the same global batch of N × batch, keeps its slice, and the
LoRA gradients are summed over the ranks with one all-reduce per dtype). Timing: 3 warm-up steps, then ``--steps``
steps between two barriers (each step reads its loss, one host wait per step, as a non-fused optimizer does).
samples/s = N × batch / (s/step); scaling = samples/s on N GPUs / samples/s on 1 GPU (ideal: N).

``--shard base`` rows (issue 24, ``distributed.shard = "base"``): the base sharded over the processes with FSDP2
(``lorakit.train.distributed.shard``: each block ``fully_shard``-ed, the LoRA whole on every rank). The model is built
on the meta device and each block materialised on its card only while it is sharded (random weights: uniform
±1/sqrt(fan-in), norms 1, biases 0), so FLUX.2 dev (``--families flux2-dev``, 32 B parameters, 60 GiB in bf16) never
needs to fit one card. ``--overlap off`` runs the gradient exchange after backward instead of in buckets during it.

Usage (a CUDA machine with 2 or more GPUs, repository root as working directory)::

    python benchmarks/multi_gpu.py                                  # sdxl and flux1 on 1, 2 and 4 GPUs (as many as exist)
    python benchmarks/multi_gpu.py --families sdxl --gpus 1,2 --steps 20 --batch 2
    python benchmarks/multi_gpu.py --families flux1,flux2-dev --gpus 2,4 --shard base   # sharded rows

Prints one table; with OUT set, also writes $OUT/multi_gpu.jsonl (one JSON row per configuration).
BENCH_TINY=1: a CPU smoke test of the harness with tiny models and gloo processes (no meaningful timings).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TINY = os.environ.get("BENCH_TINY") == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(family: str, gpus: int, steps: int, batch: int, shard: str = "none", overlap: str = "on") -> dict:
    """Start ``gpus`` worker processes (ranks) of one configuration; rank 0's result row."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "row.json"
        procs = []
        for rank in range(gpus):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(gpus), LOCAL_RANK=str(rank),
                       LOCAL_WORLD_SIZE=str(gpus), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]))
            procs.append(subprocess.Popen([sys.executable, __file__, "--worker", family, "--steps", str(steps),
                                           "--batch", str(batch), "--result", str(result), "--shard", shard,
                                           "--overlap", overlap], env=env))
        codes = [p.wait() for p in procs]
        if any(codes) or not result.exists():
            return {"family": family, "gpus": gpus, "shard": shard, "error": f"exit codes {codes}"}
        return json.loads(result.read_text())


def _init_random(model, params) -> None:
    """Weights of a model materialised uninitialised (the sharded rows): uniform ±1/sqrt(fan-in) for matrices, 1 for
    norms, 0 for biases, each process its own shard (DTensor's local part); the LoRA as peft starts it (up = 0)."""
    import torch

    gens: dict[str, torch.Generator] = {}

    def gen(device) -> torch.Generator:  # filled where the tensor lives (on the card: seconds for 32 B parameters)
        return gens.setdefault(str(device), torch.Generator(device=device).manual_seed(0))

    lora = {id(p) for p in params}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in lora:
                continue
            local = p.to_local() if hasattr(p, "to_local") else p
            if p.dim() >= 2:
                bound = p.shape[1] ** -0.5
                local.uniform_(-bound, bound, generator=gen(local.device))
            else:
                local.fill_(1.0 if "norm" in name else 0.0)
        for p in params:
            if p.dim() >= 2 and p.shape[0] <= p.shape[1]:  # down (rank × in)
                p.normal_(0, p.shape[0] ** -1, generator=gen(p.device))
            else:
                p.zero_()


def worker(family: str, steps: int, batch: int, result: Path, shard: str = "none", overlap: str = "on") -> None:
    import bench  # benchmarks/bench.py: the full-size builders (BENCH_TINY is read there too)
    import torch
    import torch.distributed as dist

    from lorakit.lora.inject import inject_lora
    from lorakit.models.base import Batch
    from lorakit.train import distributed, optim, speed
    from lorakit.train.steps import update_step

    cfg = bench.build_config(family.split("-")[0], gc=True, compile_=False)
    cfg.training.batch_size = batch
    cfg.training.device = "cpu" if TINY else "auto"
    cfg.distributed.backend = "gloo" if TINY else "nccl"
    cfg.distributed.shard, cfg.distributed.overlap = shard, overlap == "on"
    with distributed.joined(cfg):  # as `lorakit train --gpus N`: the group, this rank's card
        device = torch.device("cpu" if TINY else "cuda", 0 if TINY else int(os.environ["LOCAL_RANK"]))
        build_on = torch.device("meta") if shard == "base" else device  # sharded: materialised block by block
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)
        try:
            if family == "sdxl":
                adapter, model, text = bench.build_sdxl(cfg, build_on)
            elif family.startswith("flux2-"):  # flux2-dev, flux2-klein-9b, ...
                adapter, model, text = bench.build_flux2(cfg, build_on, family.split("-", 1)[1])
            else:
                adapter, model, text = bench.build_flux(cfg, build_on)
        finally:
            torch.set_default_dtype(torch.float32)
        adapter.device = device
        component = "unet" if family == "sdxl" else "transformer"
        params = inject_lora(model, adapter.lora_targets(cfg.network)[component], cfg.network.alpha,
                             cfg.network.dropout, seed=cfg.training.seed, under_autocast=True)
        if shard == "base":
            blocks = speed.repeated_blocks(model, extra=adapter.spec.compile_blocks)
            distributed.shard(cfg, model, blocks, device, log=lambda line: None)
            params = [p for p in model.parameters() if p.requires_grad]
            _init_random(model, params)
        speed.prepare_denoiser(model, cfg.memory, torch.device("cuda") if TINY else device, log=lambda line: None,
                               backend="aot_eager" if TINY else "inductor", cuda_graphs=False,
                               extra_regions=adapter.spec.compile_blocks)
        optimizer = optim.build_optimizer([{"params": params, "lr": cfg.optimizer.lr, "name": component}],
                                          cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay,
                                          cfg.optimizer.betas, cfg.optimizer.eps)
        side = 16 if TINY else 128
        shape = (4, side, side) if family == "sdxl" else (adapter.spec.latent_channels, side, side)
        n = batch * distributed.world()  # the global batch: every rank draws it, keeps its slice
        data = torch.Generator().manual_seed(123)

        def next_batch() -> Batch:
            return Batch(latents=torch.randn((n, *shape), generator=data),
                         text={k: v.expand(n, *v.shape[1:]).clone() for k, v in text.items()},
                         original_sizes=[(1024, 1024)] * n, crop_top_lefts=[(0, 0)] * n,
                         target_sizes=[(1024, 1024)] * n, loss_weight=torch.ones(n), captions=["a photo"] * n)

        generator = torch.Generator().manual_seed(0)

        def step() -> float:
            return update_step(adapter, next_batch, cfg, generator, optimizer, params, None, device,
                               torch.bfloat16).read()[0]

        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        alone = distributed.world() == 1  # one GPU: no process group (as `lorakit train` alone)
        if not alone:
            dist.barrier()
        t0 = time.perf_counter()
        losses = [step() for _ in range(steps)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if not alone:
            dist.barrier()
        seconds = (time.perf_counter() - t0) / steps
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        peaks = [peak] * distributed.world()
        if not alone:
            dist.all_gather_object(peaks, peak)
        if distributed.is_main():
            row = {"family": family, "gpus": distributed.world(), "shard": shard, "overlap": overlap,
                   "batch_per_gpu": batch, "global_batch": n,
                   "s_per_step": seconds, "samples_per_s": n / seconds, "peak_gib_per_card": peaks,
                   "losses_finite": all(x == x and abs(x) != float("inf") for x in losses),
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "torch": torch.__version__}
            result.write_text(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default="sdxl,flux1")
    p.add_argument("--gpus", default="1,2,4", help="process counts to measure (those above the GPUs present skip)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=1, help="batch per GPU")
    p.add_argument("--shard", default="none", help="none, base or none,base: rows with the base sharded (FSDP2)")
    p.add_argument("--overlap", default="on", choices=("on", "off"), help="gradient exchange during backward")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.batch, Path(args.result), args.shard, args.overlap)
        return
    import torch

    present = 2 if TINY else torch.cuda.device_count()
    rows, bases = [], {}  # family -> samples/s of its unsharded 1-GPU row (sharded rows scale against it too)
    for family, shard in [(f, s) for f in args.families.split(",") for s in args.shard.split(",")]:
        for gpus in [int(g) for g in args.gpus.split(",")]:
            if gpus > present:
                print(f"{family}: {gpus} GPUs skipped ({present} present)", flush=True)
                continue
            if shard == "base" and gpus == 1:
                print(f"{family}: a sharded base needs 2 or more processes: 1 GPU skipped", flush=True)
                continue
            row = run_config(family, gpus, args.steps, args.batch, shard, args.overlap)
            if "error" not in row:
                if gpus == 1:
                    bases.setdefault(family, row["samples_per_s"])
                base = bases.get(family)
                row["scaling_vs_1"] = row["samples_per_s"] / base if base else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| family | GPUs | shard | batch/GPU | s/step | samples/s | scaling vs 1 GPU | peak GiB per card |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['family']} | {r['gpus']} | {r.get('shard', '')} | | | | failed: {r['error']} | |")
            continue
        scaling = f"{r['scaling_vs_1']:.2f}× (ideal {r['gpus']}×)" if r.get("scaling_vs_1") else "n/a"
        peaks = ", ".join(f"{x:.1f}" for x in r["peak_gib_per_card"] if x == x) or "n/a"
        print(f"| {r['family']} | {r['gpus']} | {r['shard']} | {r['batch_per_gpu']} | {r['s_per_step']:.3f} | "
              f"{r['samples_per_s']:.2f} | {scaling} | {peaks} |")
    if os.environ.get("OUT"):
        with open(Path(os.environ["OUT"]) / "multi_gpu.jsonl", "a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
