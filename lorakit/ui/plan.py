"""The Train page's plan before starting: steps and epochs, a memory estimate for the chosen card, a time estimate.

Memory is estimated without loading the model: the base model's tensors counted from the safetensors headers (in
the dtype training stores them: bf16 on a GPU, 1 byte with ``memory.fp8_base``; fp32 on the CPU), plus the family's
measured activation rate (``ModelSpec.activation_gib``, GiB per 1024² image, with or without gradient
checkpointing) times the batch's pixels, plus the reserve the planner keeps. LoRA and optimizer state are small
and left out. It is an estimate, and says so: the exact plan is made when the run loads the model (set
``memory.vram_gb`` and the run chooses settings that fit; the run's log prints them).

Time: s/step measured by the benchmarks (``benchmarks/RESULTS.md``, H200) for the setting closest to the form's,
or, for the CPU, the median s/step of the finished UI jobs of the same family on this machine. Cards without a
measurement say so rather than guess.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional

CARDS: dict[str, Optional[float]] = {
    "CPU (this machine)": None,
    "8 GB GPU": 8.0,
    "12 GB GPU": 12.0,
    "16 GB GPU": 16.0,
    "24 GB GPU (RTX 3090 / 4090)": 24.0,
    "H100 80 GB": 80.0,
    "H200 141 GB": 141.0,
}
RESERVE_GIB = 1.5
# (family, compile, fp8_base) → (s/step, where measured); README's table, from benchmarks/RESULTS.md
MEASURED_H200: dict[tuple[str, bool, bool], tuple[float, str]] = {
    ("sdxl", True, False): (0.22, "SDXL rank 32, compile + cuda_graphs, H200"),
    ("sdxl", True, True): (0.12, "SDXL fp8_base + fp8_compute, compile + cuda_graphs, H200"),
    ("flux1", True, False): (0.53, "FLUX.1-dev rank 16, compile, H200"),
    ("flux1", True, True): (0.52, "FLUX.1-dev fp8_base + fp8_compute, compile, H200"),
    ("sdxl", False, False): (0.85, "SDXL eager with checkpointing, H200"),
    ("flux1", False, False): (0.91, "FLUX.1-dev eager with checkpointing, H200"),
}
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1}


def base_elements(paths: Iterable[str]) -> int:
    """Number of tensor elements in the given safetensors files (headers only); other files count 0."""
    from lorakit.lora.io import read_safetensors_header

    total = 0
    for p in paths:
        if p and str(p).endswith(".safetensors") and Path(p).is_file():
            header, _ = read_safetensors_header(p)
            total += sum(math.prod(info["shape"]) for info in header.values())
    return total


def measured_cpu_seconds(jobs_rows: Iterable[list[dict[str, Any]]]) -> Optional[float]:
    times = [float(r["seconds"]) for rows in jobs_rows for r in rows[1:]
             if isinstance(r.get("seconds"), (int, float)) and r.get("loss") is not None]
    return statistics.median(times) if times else None


def estimate(cfg, card: str, *, images: Optional[int] = None, steps_per_epoch: Optional[int] = None,
             cpu_seconds: Optional[float] = None) -> str:
    """A Markdown block: steps, memory estimate against the card, time estimate."""
    from lorakit.data.buckets import parse_resolution
    from lorakit.models.registry import get_family

    spec = get_family(cfg.model.family).SPEC
    gpu_gib = CARDS.get(card)
    w, h = parse_resolution(cfg.data.resolution)
    batch = cfg.training.batch_size
    steps = cfg.training.max_steps
    lines = [f"**{steps} steps** × batch {batch} × accumulation {cfg.training.gradient_accumulation}"]
    if steps_per_epoch:
        lines[0] += f" ≈ {steps * cfg.training.gradient_accumulation / steps_per_epoch:.1f} epochs " \
                    f"({steps_per_epoch} steps/epoch over {images} images)"
    files = [cfg.model.checkpoint, cfg.model.vae, cfg.model.clip_l, cfg.model.t5xxl, cfg.model.ae]
    elements = base_elements(f for f in files if f)
    on_gpu = gpu_gib is not None
    per = 1 if (cfg.memory.fp8_base and on_gpu) else (2 if on_gpu else 4)
    weights = elements * per / 2**30
    pixels = batch * w * h / 1024**2
    act = spec.activation_gib[0 if cfg.memory.gradient_checkpointing else 1] * pixels
    total = weights + act + (RESERVE_GIB if on_gpu else 0.0)
    if elements == 0:
        lines.append("memory: the base model is not a local .safetensors file; no estimate before loading")
    else:
        where = f"{card}" if on_gpu else "CPU memory"
        lines.append(f"memory (estimate): weights {weights:.2f} GiB + activations {act:.2f} GiB"
                     f"{f' + reserve {RESERVE_GIB}' if on_gpu else ''} ≈ **{total:.1f} GiB** on {where}")
        if on_gpu and total > gpu_gib:
            lines.append(f"⚠ over the card's {gpu_gib:g} GB: set memory.vram_gb = {gpu_gib:g} to let the run "
                         "choose checkpointing / fp8 storage / block swap that fit")
        elif on_gpu:
            lines.append(f"fits the card's {gpu_gib:g} GB by this estimate (memory.vram_gb plans exactly at load time)")
    if on_gpu:
        key = (cfg.model.family, bool(cfg.memory.compile), bool(cfg.memory.fp8_base))
        hit = MEASURED_H200.get(key)
        if hit and card.startswith("H200"):
            sps, what = hit
            lines.append(f"time: ≈ {_fmt(sps * steps * cfg.training.gradient_accumulation)} "
                         f"({sps} s/step measured: {what}, at 1024², batch 1)")
        elif hit:
            lines.append(f"time: not measured on this card; on an H200: {hit[0]} s/step ({hit[1]})")
        else:
            lines.append("time: no benchmark for this setting")
    elif cpu_seconds:
        lines.append(f"time: ≈ {_fmt(cpu_seconds * steps * cfg.training.gradient_accumulation)} "
                     f"({cpu_seconds:.2f} s/step: median of earlier {cfg.model.family} jobs on this machine)")
    else:
        lines.append("time: no earlier job of this family on this machine to measure from")
    return "\n\n".join(lines)


def _fmt(seconds: float) -> str:
    from lorakit.ui.runs import fmt_seconds

    return fmt_seconds(seconds)
