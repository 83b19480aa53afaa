"""GPU speed and memory benchmark of lorakit's training step (issue 6).

Builds the full-size SDXL U-Net and FLUX.1-dev transformer with random weights directly on the GPU (bf16;
diffusers' default init keeps bf16 activations finite: the loss is checked), feeds cached-latent and text
tensors of the real 1024² shapes, injects LoRA as ``lorakit train`` does (the adapter's ``lora_targets`` and
``inject_lora``), applies the memory/speed settings through ``lorakit.train.speed.prepare_denoiser`` and
runs ``lorakit.train.steps.update_step`` (``train_step`` + the optimizer update) — the training code itself, not
a copy — and waits for each step's numbers as the loop does: with a fused AdamW a step late (the update of a
non-finite step is skipped on the GPU), otherwise at once. Step time = host clock between those waits.

Each row runs in a fresh process (clean memory peaks, and compile never follows an eager run unless the
row asks for it). Usage (on a CUDA machine, repository root on PYTHONPATH)::

    python benchmarks/bench.py                      # every row
    python benchmarks/bench.py sdxl/gc sdxl/nogc    # chosen rows
    python benchmarks/bench.py --list

Writes one table to stdout, appends it to benchmarks/RESULTS.md (and to $OUT/RESULTS.md and
$OUT/bench.jsonl when OUT is set).

Diagnostics, after each row's timed steps (their results land in bench.jsonl; the timings are not affected):
``BENCH_PROFILE=1`` GPU time per kernel kind and the longest idle gaps (``=host``: with the host calls that covered
them), ``BENCH_TIMELINE=1`` how far ahead of the GPU the host is at each stage of a step (``step_timeline``),
``BENCH_SYNC_DEBUG=1`` every host synchronisation torch's sync debug mode reports inside a step, ``BENCH_CPROFILE=1``
where the host's main thread spends a steady step (``host_profile``).
"""

from __future__ import annotations

import time

T_IMPORT = time.time()

import argparse  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = os.environ.get("BENCH_TINY") == "1"  # CPU smoke test of the harness with tiny models (no timings)

# Model FLOPs per training step with checkpointing, as counted in issue 6 (forward + recomputed forward +
# input-gradient backward; the frozen base needs no weight gradients). Without checkpointing the recompute
# is not done, but MFU is always taken against the same useful work: these numbers / 4 * 3 would be the
# FLOPs actually executed without checkpointing. We report MFU = FLOP_STEP / time / PEAK.
FLOP_STEP = {"sdxl": 21.6e12, "flux1": 240e12}  # FLUX.2: measured by the rows with eager_first
PEAK = 790e12  # bf16 dense matmul on random data, measured on this workplace's H200 (KINDS.md)

# row name -> settings. keys: family; gc (checkpointing); compile: False | "regions" (lorakit's default path,
# prepare_denoiser) | "outer" (diffusers' checkpoint around compiled blocks) | "repeated" (diffusers'
# _repeated_blocks only); mode (torch.compile mode); eager_first (an eager no-grad forward before training,
# which is also where forward FLOPs are counted); cudnn (leave SDPA's cuDNN backend on); "whole" (the whole
# denoiser as one graph, diffusers' checkpoints traced into it); cudagraphs (speed's CUDA graphs:
# mode="reduce-overhead" + mark_step per step); phases (optimizer ``fused`` settings measured one after
# the other on the same compiled model: None = lorakit's default (foreach), True = fused AdamW; each phase
# after the first is its own table row named "<row>+fused").
def modcpu(amb: float, **extra: Any) -> dict[str, Any]:
    """A FLUX.1-dev row with memory.modulation_on_cpu, compile and ``activation_budget = amb`` (fused AdamW);
    attention recomputed (memory.save_attention = false, as these rows ran before it existed) unless ``extra`` says
    ``save_attn=True``."""
    return {"family": "flux1", "gc": False, "amb": amb, "compile": "regions", "phases": (True,), "modcpu": True,
            "save_attn": False, **extra}


# FLUX.2 module types diffusers' train_dreambooth_lora_flux2_klein.py trains by default (0 = no LoRA; rank 16 as the rows)
SCRIPT_TARGETS = {"img_attn": 16, "txt_attn": 0, "img_mlp": 0, "txt_mlp": 0, "single": 16}

ROWS: dict[str, dict[str, Any]] = {
    "sdxl/gc": {"family": "sdxl", "gc": True, "eager_first": True, "phases": (None, True)},
    "sdxl/nogc": {"family": "sdxl", "gc": False, "eager_first": True},
    "sdxl/gc+compile": {"family": "sdxl", "gc": True, "compile": "regions", "phases": (None, True)},
    "sdxl/gc+compile-whole": {"family": "sdxl", "gc": True, "compile": "whole", "phases": (None, True)},
    "sdxl/gc+compile-graphs": {"family": "sdxl", "gc": True, "compile": "regions", "cudagraphs": True,
                               "phases": (None, True)},
    "sdxl/gc+compile-whole-graphs": {"family": "sdxl", "gc": True, "compile": "whole", "cudagraphs": True,
                                     "phases": (None, True)},
    "sdxl/gc+compile-outer": {"family": "sdxl", "gc": True, "compile": "outer"},
    "sdxl/nogc+compile": {"family": "sdxl", "gc": False, "compile": "regions"},
    "sdxl/gc+compile-cudagraphs": {"family": "sdxl", "gc": True, "compile": "regions", "mode": "reduce-overhead"},
    "sdxl/gc+compile-after-eager": {"family": "sdxl", "gc": True, "compile": "regions", "eager_first": True},
    "flux1/gc": {"family": "flux1", "gc": True, "eager_first": True},
    "flux1/gc-cudnn": {"family": "flux1", "gc": True, "cudnn": True},
    "flux1/gc-cudnn-after-eager": {"family": "flux1", "gc": True, "cudnn": True, "eager_first": True},
    "flux1/nogc": {"family": "flux1", "gc": False, "eager_first": True},
    "flux1/gc+compile": {"family": "flux1", "gc": True, "compile": "regions", "phases": (None, True)},
    "flux1/gc+compile-cudnn": {"family": "flux1", "gc": True, "compile": "regions", "cudnn": True,
                               "phases": (None, True)},
    "flux1/gc+compile-whole": {"family": "flux1", "gc": True, "compile": "whole", "phases": (None, True)},
    "flux1/gc+compile-graphs": {"family": "flux1", "gc": True, "compile": "regions", "cudagraphs": True,
                                "phases": (None, True)},
    "flux1/gc+compile-outer": {"family": "flux1", "gc": True, "compile": "outer"},
    "flux1/nogc+compile": {"family": "flux1", "gc": False, "compile": "regions"},
    "flux1/gc+compile-after-eager": {"family": "flux1", "gc": True, "compile": "regions", "eager_first": True},
    # round 3: fp8 storage, block swap and VRAM tiers, all through the loop's own path (LoRA injected on the CPU,
    # then swap.place_denoiser moves the model block by block); "vram" rows run under
    # torch.cuda.set_per_process_memory_fraction((vram - CONTEXT_GIB) / total) from before placement on
    "flux1/fp8": {"family": "flux1", "gc": True, "fp8": True},
    "flux1/fp8+compile": {"family": "flux1", "gc": True, "fp8": True, "compile": "regions"},
    "flux1/swap18": {"family": "flux1", "gc": True, "swap": 18},
    "flux1/swap18+compile": {"family": "flux1", "gc": True, "swap": 18, "compile": "regions"},
    "flux1/swap30": {"family": "flux1", "gc": True, "swap": 30},
    "flux1/swap30+compile": {"family": "flux1", "gc": True, "swap": 30, "compile": "regions"},
    "flux1/fp8+swap18+compile": {"family": "flux1", "gc": True, "fp8": True, "swap": 18, "compile": "regions"},
    "flux1/vram24+compile": {"family": "flux1", "gc": True, "vram": 24, "compile": "regions"},
    "flux1/vram16+compile": {"family": "flux1", "gc": True, "vram": 16, "compile": "regions"},
    "flux1/vram12+compile": {"family": "flux1", "gc": True, "vram": 12, "compile": "regions"},
    "flux1/vram8+compile": {"family": "flux1", "gc": True, "vram": 8, "compile": "regions"},
    "flux1/vram12": {"family": "flux1", "gc": True, "vram": 12},
    "sdxl/vram8+graphs": {"family": "sdxl", "gc": True, "vram": 8, "compile": "regions", "cudagraphs": True},
    "sdxl/vram12+graphs": {"family": "sdxl", "gc": True, "vram": 12, "compile": "regions", "cudagraphs": True},
    "sdxl/vram24+graphs": {"family": "sdxl", "gc": True, "vram": 24, "compile": "regions", "cudagraphs": True},
    "sdxl/fp8+graphs": {"family": "sdxl", "gc": True, "fp8": True, "compile": "regions", "cudagraphs": True},
    # selective checkpointing (memory.checkpoint_fraction): not measured yet
    "flux1/gc50+compile": {"family": "flux1", "gc": True, "ckpt_fraction": 0.5, "compile": "regions"},
    "flux1/fp8+gc50+compile": {"family": "flux1", "gc": True, "fp8": True, "ckpt_fraction": 0.5, "compile": "regions"},
    "sdxl/gc50+compile-graphs": {"family": "sdxl", "gc": True, "ckpt_fraction": 0.5, "compile": "regions",
                                 "cudagraphs": True},
    # rounds 4-5: fp8 compute (memory.fp8_compute: float8 matmuls on the tensor cores), alone and with the memory it
    # frees spent on fewer checkpointed blocks. Round 4 ran them with opaque custom ops, round 5 also with the traced
    # autograd.Function + joint-graph recompute pass, now the only implementation (lorakit/train/fp8.py)
    "flux1/fp8c": {"family": "flux1", "gc": True, "fp8": True, "fp8c": True},
    "flux1/fp8c+compile": {"family": "flux1", "gc": True, "fp8": True, "fp8c": True, "compile": "regions"},
    "flux1/fp8c+gc70+compile": {"family": "flux1", "gc": True, "fp8": True, "fp8c": True, "ckpt_fraction": 0.7,
                                "compile": "regions"},
    "flux1/fp8c+gc40+compile": {"family": "flux1", "gc": True, "fp8": True, "fp8c": True, "ckpt_fraction": 0.4,
                                "compile": "regions"},
    "flux1/fp8c+gc60+compile": {"family": "flux1", "gc": True, "fp8": True, "fp8c": True, "ckpt_fraction": 0.6,
                                "compile": "regions"},
    # selective recomputation (memory.activation_budget = "amb"): no block checkpoint; the compiler keeps that share of
    # each compiled block's activations and recomputes the cheapest rest
    "flux1/fp8c+amb40+compile": {"family": "flux1", "gc": False, "fp8": True, "fp8c": True, "amb": 0.4,
                                 "compile": "regions"},
    "flux1/fp8c+amb35+compile": {"family": "flux1", "gc": False, "fp8": True, "fp8c": True, "amb": 0.35,
                                 "compile": "regions"},
    # not measured yet: bf16 with a small activation budget (all of bf16's 25.7 GiB target left for activations is
    # ~2 GiB), and the vram_gb = 24 tier with more allocator headroom (run 16: reserved memory hit the cap, 0.59 s)
    "flux1/amb06+compile": {"family": "flux1", "gc": False, "amb": 0.06, "compile": "regions"},
    "flux1/amb10+compile": {"family": "flux1", "gc": False, "amb": 0.10, "compile": "regions"},
    "flux1/vram24r150+compile": {"family": "flux1", "gc": True, "vram": 24, "reserve": 1.5, "compile": "regions"},
    "flux1/fp8c+amb25+compile": {"family": "flux1", "gc": False, "fp8": True, "fp8c": True, "amb": 0.25,
                                 "compile": "regions"},
    "flux1/vram26-bf16+compile": {"family": "flux1", "gc": True, "vram": 26, "fp8c": False, "compile": "regions",
                                  "phases": (True,)},
    "flux1/vram27-bf16+compile": {"family": "flux1", "gc": True, "vram": 27, "fp8c": False, "compile": "regions",
                                  "phases": (True,)},
    "flux1/vram30-bf16+compile-graphs": {"family": "flux1", "gc": True, "vram": 30, "fp8c": False,
                                         "compile": "regions", "cudagraphs": True, "phases": (True,)},
    "flux1/vram26+fp8c+compile": {"family": "flux1", "gc": True, "vram": 26, "fp8c": True, "compile": "regions"},
    "flux1/vram24+fp8c+compile": {"family": "flux1", "gc": True, "vram": 24, "fp8c": True, "compile": "regions"},
    "flux1/vram16+fp8c+compile": {"family": "flux1", "gc": True, "vram": 16, "fp8c": True, "compile": "regions"},
    "flux1/vram12+fp8c+compile": {"family": "flux1", "gc": True, "vram": 12, "fp8c": True, "compile": "regions"},
    "sdxl/fp8c+graphs": {"family": "sdxl", "gc": True, "fp8": True, "fp8c": True, "compile": "regions",
                         "cudagraphs": True},
    "flux1/gc+compile+8bit": {"family": "flux1", "gc": True, "compile": "regions", "optim": "adamw8bit"},
    "sdxl/fp8c+graphs+8bit": {"family": "sdxl", "gc": True, "fp8": True, "fp8c": True, "compile": "regions",
                              "cudagraphs": True, "optim": "adamw8bit"},
    "sdxl/fp8c+compile": {"family": "sdxl", "gc": True, "fp8": True, "fp8c": True, "compile": "regions"},
    # round 6 A/B rows: the fused AdamW (lorakit's CUDA default) with its step-late reading of the numbers, against
    # the same optimizer with the host deciding each step ("host_sync"); peft's input casts kept ("peft_casts")
    "sdxl/fp8c+graphs+fusedopt": {"family": "sdxl", "gc": True, "fp8": True, "fp8c": True, "compile": "regions",
                                  "cudagraphs": True, "phases": (True,)},
    "sdxl/fp8c+graphs+fusedopt-hostsync": {"family": "sdxl", "gc": True, "fp8": True, "fp8c": True,
                                           "compile": "regions", "cudagraphs": True, "phases": (True,),
                                           "host_sync": True},
    "flux1/gc+compile+fusedopt-hostsync": {"family": "flux1", "gc": True, "compile": "regions", "phases": (True,),
                                           "host_sync": True},
    "flux1/fp8c+amb35+compile+fusedopt": {"family": "flux1", "gc": False, "fp8": True, "fp8c": True, "amb": 0.35,
                                          "compile": "regions", "phases": (True,)},
    "flux1/gc-peftcasts": {"family": "flux1", "gc": True, "peft_casts": True},
    "flux1/gc-nocasts": {"family": "flux1", "gc": True},
    "sdxl/gc-peftcasts": {"family": "sdxl", "gc": True, "peft_casts": True},
    "flux1/gc-peft": {"family": "flux1", "gc": True, "peft_casts": True, "peft_forward": True},
    "sdxl/gc-peft": {"family": "sdxl", "gc": True, "peft_casts": True, "peft_forward": True},
    "sdxl/gc-nocasts": {"family": "sdxl", "gc": True},
    # round 7: every host-to-device copy of the step from pinned memory (models.base.to_gpu), against pageable copies
    "flux1/gc+compile-pageable": {"family": "flux1", "gc": True, "compile": "regions", "phases": (None, True),
                                  "pageable": True},
    # round 8 experiment (not measured yet): bf16 weights, selective recomputation, and the activations each compiled
    # block keeps offloaded to pinned CPU memory by torch's partitioner (see offload_saved_activations)
    "flux1/amb05+offload+compile": {"family": "flux1", "gc": False, "amb": 0.05, "compile": "regions", "offload": 4},
    "flux1/amb10+offload+compile": {"family": "flux1", "gc": False, "amb": 0.10, "compile": "regions", "offload": 4},
    # the fused LoRA Linear (lorakit/train/lora_kernel.py, Triton) in place of every LoRA Linear's forward: slower than
    # peft's ops per Linear in run 24; these rows measure the whole step (not measured yet)
    "flux1/gc+compile+fusedlora": {"family": "flux1", "gc": True, "compile": "regions", "phases": (True,),
                                   "fused_lora": True},
    "flux1/gc-fusedlora": {"family": "flux1", "gc": True, "fused_lora": True},
    # memory.modulation_on_cpu: FLUX.1's 6 GiB of modulation weights stay on the host (not measured yet); with bf16
    # weights, the memory it frees is spent on selective recomputation instead of checkpointing every block
    "flux1/modcpu+gc+compile": {"family": "flux1", "gc": True, "compile": "regions", "phases": (True,), "modcpu": True},
    "flux1/modcpu+amb10+compile": modcpu(0.10),
    "flux1/modcpu+amb15+compile": modcpu(0.15),
    "flux1/modcpu+gc": {"family": "flux1", "gc": True, "phases": (True,), "modcpu": True},
    # round 8 (not measured yet): is the GPU's idle time at the step boundary the optimizer step and the clipping?
    # The same step without clipping, and with each parameter stepped inside backward (fused_backward)
    "flux1/gc+compile-noclip": {"family": "flux1", "gc": True, "compile": "regions", "phases": (True,), "noclip": True},
    "flux1/gc+compile+fusedbwd": {"family": "flux1", "gc": True, "compile": "regions", "phases": (True,),
                                  "fbwd": True},
    "flux1/modcpu+amb25+compile+fusedbwd": modcpu(0.25, fbwd=True),
    "flux1/modcpu+amb20+compile": modcpu(0.20),
    "flux1/modcpu+amb25+compile": modcpu(0.25),
    # round 9: which modulation Linears the GPU applies from copied weights (modulation.STREAMED: all, the default)
    "flux1/modcpu-hostonly+amb25+compile": modcpu(0.25, modstream=()),
    "flux1/modcpu-split+amb25+compile": modcpu(0.25, modstream=("norm1.linear",)),
    "flux1/modcpu-allstream+amb25+compile": modcpu(0.25, modstream=("norm1.linear", "norm1_context.linear",
                                                                    "norm.linear")),
    "flux1/modcpu-noprefetch+amb25+compile": modcpu(0.25, noprefetch=True),
    "flux1/modcpu+amb23+compile": modcpu(0.23),
    # next to measure: what the partitioner keeps at a budget between 0.22 and 0.25, attention outputs kept instead of
    # recomputed, the partitioner's runtime estimates from profiling instead of FLOP counts
    "flux1/modcpu+amb24+compile": modcpu(0.24),
    "flux1/modcpu+amb22+compile-saveattn": modcpu(0.22, save_attn=True),
    "flux1/modcpu+amb18+compile-saveattn": modcpu(0.18, save_attn=True),
    "flux1/modcpu+amb15+compile-saveattn": modcpu(0.15, save_attn=True),
    "flux1/modcpu+amb12+compile-saveattn": modcpu(0.12, save_attn=True),
    "flux1/modcpu+amb17+compile-saveattn": modcpu(0.17, save_attn=True),
    "flux1/modcpu+amb20+compile-saveattn": modcpu(0.20, save_attn=True),
    # the compiled blocks replayed as CUDA graphs around the modulation op (inductor's graph partitions): the host
    # queues a few graph launches per block instead of hundreds of kernels (round 10: the host bounds the step)
    "flux1/modcpu+amb15+compile-saveattn-graphs": modcpu(0.15, save_attn=True, cudagraphs=True),
    "flux1/modcpu+amb12+compile-saveattn-graphs": modcpu(0.12, save_attn=True, cudagraphs=True),
    "flux1/modcpu+amb08+compile-saveattn-graphs": modcpu(0.08, save_attn=True, cudagraphs=True),
    "flux1/modcpu+amb22+compile-profileest": modcpu(0.22, amb_est="profile"),
    "flux1/modcpu+amb22+compile": modcpu(0.22),
    "sdxl/fp8c+graphs+fusedopt-pageable": {"family": "sdxl", "gc": True, "fp8": True, "fp8c": True,
                                           "compile": "regions", "cudagraphs": True, "phases": (True,),
                                           "pageable": True},
    # FLUX.2 (issue 19): Klein 4B / 9B (base and distilled share the architecture) and dev, random full-size weights
    "flux2-4b/gc": {"family": "flux2", "size": "klein-4b", "gc": True, "eager_first": True},
    "flux2-4b/nogc": {"family": "flux2", "size": "klein-4b", "gc": False},
    "flux2-4b/gc+compile": {"family": "flux2", "size": "klein-4b", "gc": True, "compile": "regions", "phases": (True,)},
    "flux2-4b/nogc+compile": {"family": "flux2", "size": "klein-4b", "gc": False, "compile": "regions",
                              "phases": (True,)},
    "flux2-4b/nogc+compile-graphs": {"family": "flux2", "size": "klein-4b", "gc": False, "compile": "regions",
                                     "cudagraphs": True, "phases": (True,)},
    "flux2-4b/gc+compile-graphs": {"family": "flux2", "size": "klein-4b", "gc": True, "compile": "regions",
                                   "cudagraphs": True, "phases": (True,)},
    "flux2-4b/fp8c+compile": {"family": "flux2", "size": "klein-4b", "gc": True, "fp8": True, "fp8c": True,
                              "compile": "regions", "phases": (True,)},
    "flux2-9b/gc": {"family": "flux2", "size": "klein-9b", "gc": True, "eager_first": True},
    "flux2-9b/gc+compile": {"family": "flux2", "size": "klein-9b", "gc": True, "compile": "regions", "phases": (True,)},
    "flux2-9b/nogc+compile": {"family": "flux2", "size": "klein-9b", "gc": False, "compile": "regions",
                              "phases": (True,)},
    "flux2-9b/gc+compile-graphs": {"family": "flux2", "size": "klein-9b", "gc": True, "compile": "regions",
                                   "cudagraphs": True, "phases": (True,)},
    "flux2-9b/fp8c+compile": {"family": "flux2", "size": "klein-9b", "gc": True, "fp8": True, "fp8c": True,
                              "compile": "regions", "phases": (True,)},
    "flux2-dev/fp8+compile": {"family": "flux2", "size": "dev", "gc": True, "fp8": True, "compile": "regions",
                              "phases": (True,)},
    "flux2-dev/fp8c+compile": {"family": "flux2", "size": "dev", "gc": True, "fp8": True, "fp8c": True,
                               "compile": "regions", "phases": (True,)},
    # dev under 32 / 24 GiB (issue 19): fp8 storage (30.6 GiB of blocks) with blocks swapped to the host
    "flux2-dev/fp8+swap12+compile": {"family": "flux2", "size": "dev", "gc": True, "fp8": True, "swap": 12,
                                     "compile": "regions"},
    "flux2-dev/fp8+swap24+compile": {"family": "flux2", "size": "dev", "gc": True, "fp8": True, "swap": 24,
                                     "compile": "regions"},
    # round 15: dev swapped 21 or 36 blocks ran 1.63 s, as fp8 storage without fp8 compute does resident: the matmuls
    # bound it, not the copies. The same swap with float8 matmuls:
    "flux2-dev/fp8c+swap21+compile": {"family": "flux2", "size": "dev", "gc": True, "fp8": True, "fp8c": True,
                                      "swap": 21, "compile": "regions"},
    # Klein 4B planned at the memory diffusers' script used in round 15 (9.02 GiB allocated): vram 9.5 = a 9.0 GiB cap
    "flux2-4b/vram9.5": {"family": "flux2", "size": "klein-4b", "gc": True, "vram": 9.5, "compile": "regions",
                         "phases": (True,)},
    # like for like with diffusers' Klein script: its default targets (double blocks' image attention q/k/v/out, single
    # blocks' fused input and output; 16.7 M parameters at rank 16) instead of lorakit's every block Linear
    "flux2-4b/scripttargets+fp8c+compile": {"family": "flux2", "size": "klein-4b", "gc": True, "fp8": True, "fp8c": True,
                                            "compile": "regions", "phases": (True,), "module_ranks": SCRIPT_TARGETS},
    "flux2-4b/scripttargets+vram9.5": {"family": "flux2", "size": "klein-4b", "gc": True, "vram": 9.5,
                                       "compile": "regions", "phases": (True,), "module_ranks": SCRIPT_TARGETS},
    "flux2-4b/scripttargets+vram9.5+graphs": {"family": "flux2", "size": "klein-4b", "gc": True, "vram": 9.5,
                                              "compile": "regions", "cudagraphs": True, "phases": (True,),
                                              "module_ranks": SCRIPT_TARGETS},
    "flux2-9b/scripttargets+fp8c+compile": {"family": "flux2", "size": "klein-9b", "gc": True, "fp8": True, "fp8c": True,
                                            "compile": "regions", "phases": (True,), "module_ranks": SCRIPT_TARGETS},
    # the script's targets with selective recomputation inside each compiled block (memory.activation_budget) instead of
    # block checkpointing, at about the script's memory (round 17: 20 of 25 blocks checkpointed = 0.194 s, 8.09 GiB; on
    # FLUX.1-dev such budgets ran faster than any partial checkpointing of the same memory: RESULTS.md round 11)
    "flux2-4b/scripttargets+fp8c+amb30+compile": {"family": "flux2", "size": "klein-4b", "gc": False, "fp8": True,
                                                  "fp8c": True, "amb": 0.30, "compile": "regions", "phases": (True,),
                                                  "module_ranks": SCRIPT_TARGETS},
    "flux2-4b/scripttargets+fp8c+amb20+compile": {"family": "flux2", "size": "klein-4b", "gc": False, "fp8": True,
                                                  "fp8c": True, "amb": 0.20, "compile": "regions", "phases": (True,),
                                                  "module_ranks": SCRIPT_TARGETS},
    "flux2-9b/scripttargets+fp8c+amb40+compile": {"family": "flux2", "size": "klein-9b", "gc": False, "fp8": True,
                                                  "fp8c": True, "amb": 0.40, "compile": "regions", "phases": (True,),
                                                  "module_ranks": SCRIPT_TARGETS},
    # round 18: budgets 0.3 / 0.2 used 6.5 / 6.3 GiB of the script's 9.02: larger budgets (and none: every activation
    # kept, fp8 weights) toward the script's memory
    **{f"flux2-4b/scripttargets+fp8c+amb{int(a * 100)}+compile": {
        "family": "flux2", "size": "klein-4b", "gc": False, "fp8": True, "fp8c": True, "amb": a, "compile": "regions",
        "phases": (True,), "module_ranks": SCRIPT_TARGETS} for a in (0.5, 0.6, 0.7, 0.8, 0.9)},
    # budget 0.5 on most blocks, every activation kept on k of the 25 (each kept block: ~+0.36 GiB, ~-1.4 ms by round
    # 20's rows; k = 6 should land near the script's 9.02 GiB)
    **{f"flux2-4b/scripttargets+fp8c+amb50+keep{k}+compile": {
        "family": "flux2", "size": "klein-4b", "gc": False, "fp8": True, "fp8c": True, "amb": 0.5,
        "budget_share": (25 - k) / 25, "compile": "regions", "phases": (True,), "module_ranks": SCRIPT_TARGETS}
       for k in (4, 5, 6, 7)},
    "flux2-4b/scripttargets+fp8c+nogc+compile": {"family": "flux2", "size": "klein-4b", "gc": False, "fp8": True,
                                                 "fp8c": True, "compile": "regions", "phases": (True,),
                                                 "module_ranks": SCRIPT_TARGETS},
    # Klein 9B planned at the memory diffusers' script used in round 17 (19.55 GiB allocated): vram 20 = a 19.5 GiB cap
    "flux2-9b/scripttargets+vram20": {"family": "flux2", "size": "klein-9b", "gc": True, "vram": 20,
                                      "compile": "regions", "phases": (True,), "module_ranks": SCRIPT_TARGETS},
    # Qwen-Image (issue 29): 20 B, random full-size weights; the 24 GiB tier (musubi-tuner: fp8 + 16 swapped blocks) and
    # the 16 GiB tier (45 swapped); "peak" must stay under 24 / 16 GiB on the card
    "qwenimage/gc": {"family": "qwenimage", "gc": True, "eager_first": True},
    "qwenimage/fp8": {"family": "qwenimage", "gc": True, "fp8": True},
    "qwenimage/fp8+swap16": {"family": "qwenimage", "gc": True, "fp8": True, "swap": 16},
    "qwenimage/fp8+swap16+compile": {"family": "qwenimage", "gc": True, "fp8": True, "swap": 16, "compile": "regions"},
    "qwenimage/fp8+swap45": {"family": "qwenimage", "gc": True, "fp8": True, "swap": 45},
    "qwenimage/fp8+swap45+compile": {"family": "qwenimage", "gc": True, "fp8": True, "swap": 45, "compile": "regions"},
}
# SD3.5 (issue 29): Medium and Large (Large Turbo shares Large's tensors), random full-size weights, 1024²
ROWS.update({
    "sd35m/gc": {"family": "sd3", "size": "medium", "gc": True, "eager_first": True},
    "sd35m/gc+compile": {"family": "sd3", "size": "medium", "gc": True, "compile": "regions", "phases": (True,)},
    "sd35m/nogc+compile": {"family": "sd3", "size": "medium", "gc": False, "compile": "regions", "phases": (True,)},
    # CUDA graphs: sd-scripts' SD3.5 M step is host-bound on a busy host (round 16: 0.518 s, lorakit compiled 0.306); graphs
    # take lorakit's launches off the host
    "sd35m/gc+compile-graphs": {"family": "sd3", "size": "medium", "gc": True, "compile": "regions", "cudagraphs": True,
                                "phases": (True,)},
    "sd35l/gc": {"family": "sd3", "size": "large", "gc": True, "eager_first": True},
    "sd35l/gc+compile": {"family": "sd3", "size": "large", "gc": True, "compile": "regions", "phases": (True,)},
    "sd35l/fp8+compile": {"family": "sd3", "size": "large", "gc": True, "fp8": True, "compile": "regions",
                          "phases": (True,)},
    "sd35l/fp8+swap12": {"family": "sd3", "size": "large", "gc": True, "fp8": True, "swap": 12},
})
# Z-Image (6 B, 1024², tier 12 GiB) and SD 1.5 (512², tier 6 GiB), issue 29: random full-size weights
ROWS.update({
    "zimage/gc": {"family": "zimage", "gc": True, "eager_first": True},
    "zimage/gc+compile": {"family": "zimage", "gc": True, "compile": "regions", "phases": (True,)},
    "zimage/fp8+compile": {"family": "zimage", "gc": True, "fp8": True, "compile": "regions", "phases": (True,)},
    "sd15/gc": {"family": "sd15", "gc": True, "eager_first": True, "phases": (None, True)},
    "sd15/nogc+compile": {"family": "sd15", "gc": False, "compile": "regions", "phases": (True,)},
    "sd15/graphs": {"family": "sd15", "gc": False, "compile": "regions", "cudagraphs": True, "phases": (True,)},
    # the rows benchmarks/peers.py sets against diffusers' Z-Image script and sd-scripts' train_network.py
    "zimage/fp8c+compile": {"family": "zimage", "gc": True, "fp8": True, "fp8c": True, "compile": "regions",
                            "phases": (True,)},
    # like for like with diffusers' Z-Image script: its default targets (attention q/k/v/out; 16.7 M parameters at rank 16),
    # and planned at the script's own memory (13.85 GiB allocated in round 16: vram 14.3 = a 13.8 GiB cap)
    "zimage/scripttargets+fp8c+compile": {"family": "zimage", "gc": True, "fp8": True, "fp8c": True, "compile": "regions",
                                          "phases": (True,), "module_ranks": {"attn": 16, "ffn": 0}},
    "zimage/scripttargets+fp8c+gc55+compile": {"family": "zimage", "gc": True, "fp8": True, "fp8c": True,
                                               "ckpt_fraction": 0.55, "compile": "regions", "phases": (True,),
                                               "module_ranks": {"attn": 16, "ffn": 0}},
    "zimage/scripttargets+vram14.3": {"family": "zimage", "gc": True, "vram": 14.3, "compile": "regions",
                                      "phases": (True,), "module_ranks": {"attn": 16, "ffn": 0}},
    "sd15/gc+compile": {"family": "sd15", "gc": True, "compile": "regions", "phases": (True,)},
    # like for like with sd-scripts' train_network.py in benchmarks/peers.py (network_dim 16)
    "sd15/r16+gc+compile-graphs": {"family": "sd15", "gc": True, "compile": "regions", "cudagraphs": True,
                                   "phases": (True,), "rank": 16},
    "sd15/r16+vram6": {"family": "sd15", "gc": True, "vram": 6, "compile": "regions", "cudagraphs": True,
                       "phases": (True,), "rank": 16},
    "sd15/r16+gc+compile": {"family": "sd15", "gc": True, "compile": "regions", "phases": (True,), "rank": 16},
    "sd15/r16+gc": {"family": "sd15", "gc": True, "phases": (True,), "rank": 16},
    # under sd-scripts' own memory (round 18: 2.21 GiB allocated against lorakit's 2.49 with CUDA graphs): fp8 storage
    # halves the 1.60 GiB of UNet weights (with and without float8 matmuls)
    "sd15/r16+fp8+gc+compile-graphs": {"family": "sd15", "gc": True, "fp8": True, "compile": "regions",
                                       "cudagraphs": True, "phases": (True,), "rank": 16},
    "sd15/r16+fp8c+gc+compile-graphs": {"family": "sd15", "gc": True, "fp8": True, "fp8c": True, "compile": "regions",
                                        "cudagraphs": True, "phases": (True,), "rank": 16},
    # round 19: fp8 storage with CUDA graphs 2.24 GiB against sd-scripts' 2.21: the same without the graph pool
    "sd15/r16+fp8+gc+compile": {"family": "sd15", "gc": True, "fp8": True, "compile": "regions", "phases": (True,),
                                "rank": 16},
    "sd15/gc+compile-graphs": {"family": "sd15", "gc": True, "compile": "regions", "cudagraphs": True,
                               "phases": (True,)},
})
# the new families' card tiers through the planner (memory.vram_gb; what it chose is in the row's "plan"), under the
# allocator cap of every "vram" row; compile as the automatic plan picks on a CUDA card, CUDA graphs where nothing is
# swapped (SD 1.5). Their planning numbers are estimates (lorakit/models/<family>/planning.py) until these run
ROWS.update({
    "sd35m/vram12": {"family": "sd3", "size": "medium", "gc": True, "vram": 12, "compile": "regions", "phases": (True,)},
    "sd35l/vram24": {"family": "sd3", "size": "large", "gc": True, "vram": 24, "compile": "regions", "phases": (True,)},
    "qwenimage/vram24": {"family": "qwenimage", "gc": True, "vram": 24, "compile": "regions", "phases": (True,)},
    "qwenimage/vram16": {"family": "qwenimage", "gc": True, "vram": 16, "compile": "regions", "phases": (True,)},
    "zimage/vram12": {"family": "zimage", "gc": True, "vram": 12, "compile": "regions", "phases": (True,)},
    "sd15/vram6": {"family": "sd15", "gc": True, "vram": 6, "compile": "regions", "cudagraphs": True,
                   "phases": (True,)},
    # FLUX.2 tiers of issue 19: Klein 4B in 8 GiB, Klein 9B in 12 and 16 GiB, dev under 24 and 32 GiB
    "flux2-4b/vram8": {"family": "flux2", "size": "klein-4b", "gc": True, "vram": 8, "compile": "regions",
                       "phases": (True,)},
    "flux2-9b/vram12": {"family": "flux2", "size": "klein-9b", "gc": True, "vram": 12, "compile": "regions",
                        "phases": (True,)},
    "flux2-9b/vram16": {"family": "flux2", "size": "klein-9b", "gc": True, "vram": 16, "compile": "regions",
                        "phases": (True,)},
    "flux2-dev/vram24": {"family": "flux2", "size": "dev", "gc": True, "vram": 24, "compile": "regions",
                         "phases": (True,)},
    "flux2-dev/vram32": {"family": "flux2", "size": "dev", "gc": True, "vram": 32, "compile": "regions",
                         "phases": (True,)},
})
# pixels per side of each family's rows (SD 1.5 trains at 512²)
RESOLUTION = {"sd15": 512}
CONTEXT_GIB = 0.5  # what a "vram" row leaves of its budget to the CUDA context (not counted by the allocator)


def placed(s: dict) -> bool:
    """Rows that take the loop's placement path (fp8 storage, block swap, VRAM budget)."""
    return bool(s.get("fp8") or s.get("swap") or s.get("vram"))


# ====================================================================== one row (child process)


def build_config(family: str, gc: bool, compile_: bool, s: dict | None = None) -> Any:
    from lorakit.config.load import load_config

    s = s or {}

    rank = int(s.get("rank") or (32 if family in ("sdxl", "sd15") else 16))
    data = {
        "model": {"family": family, "checkpoint": "random-weights.safetensors"},
        "data": {"dir": str(ROOT), "resolution": RESOLUTION.get(family, 1024)},
        "network": {"rank": rank, "alpha": float(rank), "dropout": 0.0,
                    **({"module_ranks": s["module_ranks"]} if s.get("module_ranks") else {})},
        # fused_backward steps each parameter inside backward: no clipping by the global norm there (nor in "noclip")
        "optimizer": {"name": s.get("optim", "adamw"), "lr": 1e-4,
                      "max_grad_norm": 0.0 if s.get("noclip") or s.get("fbwd") else 1.0},
        # fused_backward with nan_policy "skip" checks each gradient on the host (a wait per parameter): "stop"
        "training": {"batch_size": 1, "mixed_precision": "bf16", "seed": 0, "max_steps": 1000,
                     **({"nan_policy": "stop"} if s.get("fbwd") else {})},
        "memory": {"gradient_checkpointing": gc, "compile": compile_, "fp8_base": bool(s.get("fp8")),
                   # None: lorakit's default (vram_gb may choose)
                   "fp8_compute": s["fp8c"] if isinstance(s.get("fp8c"), bool) else None,
                   "blocks_to_swap": int(s.get("swap", 0)), "vram_gb": s.get("vram"),
                   "cuda_graphs": bool(s.get("cudagraphs")), "checkpoint_fraction": s.get("ckpt_fraction", 1.0),
                   "activation_budget": s.get("amb"), "modulation_on_cpu": True if s.get("modcpu") else None,
                   "fused_backward": bool(s.get("fbwd")), "save_attention": s.get("save_attn"),
                   # each row runs its settings exactly; the automatic plan is benchmarks/preset_as_shipped.py's
                   "auto": bool(s.get("auto", False))},
    }
    if s.get("vram"):  # what the planner chooses is left unset (a key set here would be a constraint it keeps)
        data["memory"] = {k: v for k, v in data["memory"].items()
                          if k not in ("gradient_checkpointing", "fp8_base", "blocks_to_swap", "checkpoint_fraction",
                                       "activation_budget", "modulation_on_cpu")
                          or (k == "checkpoint_fraction" and "ckpt_fraction" in s)
                          or (k == "activation_budget" and s.get("amb") is not None)
                          or (k == "modulation_on_cpu" and s.get("modcpu"))}
    return load_config(None, data=data)


def build_sdxl(cfg: Any, device: Any) -> tuple[Any, Any, dict]:
    """Adapter with a random full-size U-Net on ``device`` (bf16); tiny stand-ins for the unused encoders."""
    import torch
    from diffusers import UNet2DConditionModel

    from lorakit.models.sdxl import configs
    from lorakit.models.sdxl.adapter import Adapter

    conf = {k: v for k, v in configs.UNET.items() if not k.startswith("_")}
    if TINY:
        conf.update(block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4], transformer_layers_per_block=[1, 1, 1])
    with torch.device(device):
        unet = UNet2DConditionModel(**conf)
    adapter = Adapter(cfg)
    stub = torch.nn.Linear(1, 1)
    adapter.attach(unet, stub, torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), None, None, device=device,
                   dtype=torch.bfloat16)
    text = {"context": torch.randn(1, 77, 2048), "pooled": torch.randn(1, 1280)}
    return adapter, adapter.unet, text


def build_flux(cfg: Any, device: Any) -> tuple[Any, Any, dict]:
    """Adapter with a random full-size FLUX.1-dev transformer on ``device`` (bf16).

    The FLUX adapter has no attach(); its ``comps`` is set the way load() leaves it (transformer + variant),
    which is all that lora_targets/noise/predict read.
    """
    import types

    import torch
    from diffusers import FluxTransformer2DModel

    from lorakit.models.flux1 import configs
    from lorakit.models.flux1.adapter import Adapter

    conf = {k: v for k, v in configs.transformer_config("dev").items() if not k.startswith("_")}
    if TINY:
        conf.update(num_layers=2, num_single_layers=4, attention_head_dim=16, num_attention_heads=2,
                    axes_dims_rope=[4, 6, 6])
    with torch.device(device):
        tr = FluxTransformer2DModel(**conf)
    tr.to(torch.bfloat16).requires_grad_(False).eval()
    adapter = Adapter(cfg)
    adapter.comps = types.SimpleNamespace(transformer=tr, variant="dev", files={})
    adapter.device, adapter.dtype = torch.device(device), torch.bfloat16
    text = {"t5": torch.randn(1, 512, 4096), "pooled": torch.randn(1, 768),
            "t5_mask": torch.ones(1, 512, dtype=torch.int64)}
    return adapter, tr, text


def build_flux2(cfg: Any, device: Any, size: str) -> tuple[Any, Any, dict]:
    """Adapter with a random full-size FLUX.2 transformer (Klein 4B / 9B or dev) on ``device`` (bf16); the
    components set the way load() leaves them (transformer, shape, variant), which is all training reads."""
    import torch
    from diffusers import Flux2Transformer2DModel

    from lorakit.models.flux2 import configs
    from lorakit.models.flux2.adapter import Adapter
    from lorakit.models.flux2.convert import Shape
    from lorakit.models.flux2.load import Flux2Components

    conf = {k: v for k, v in configs.transformer_config(size).items() if not k.startswith("_")}
    if TINY:
        conf.update(num_layers=2, num_single_layers=4, attention_head_dim=16, num_attention_heads=2,
                    axes_dims_rope=[4, 4, 4, 4], joint_attention_dim=48)
    with torch.device(device):
        tr = Flux2Transformer2DModel(**conf)
    tr.to(torch.bfloat16).requires_grad_(False).eval()
    hidden = conf["num_attention_heads"] * conf["attention_head_dim"]
    shape = Shape(size=size, hidden=hidden, num_double=conf["num_layers"], num_single=conf["num_single_layers"],
                  text_dim=conf["joint_attention_dim"], in_channels=conf["in_channels"],
                  guidance=bool(conf["guidance_embeds"]), head_dim=conf["attention_head_dim"])
    adapter = Adapter(cfg)
    adapter.comps = Flux2Components(transformer=tr, shape=shape, variant=size, distilled=False, how="bench")
    adapter.device, adapter.dtype = torch.device(device), torch.bfloat16
    text = {"prompt_embeds": torch.randn(1, 512, conf["joint_attention_dim"])}
    return adapter, tr, text


def build_sd3(cfg: Any, device: Any, size: str) -> tuple[Any, Any, dict]:
    """Adapter with a random full-size SD3.5 transformer (medium / large) on ``device`` (bf16), the components set
    the way load() leaves them; text: 77 CLIP + 256 T5 tokens of width 4096 and the 2048-wide pooled vector."""
    import torch
    from diffusers import SD3Transformer2DModel

    from lorakit.models.sd3 import configs
    from lorakit.models.sd3.adapter import Adapter
    from lorakit.models.sd3.convert import Shape
    from lorakit.models.sd3.load import SD3Components

    conf = {k: v for k, v in configs.transformer_config(size).items() if not k.startswith("_")}
    if TINY:
        conf.update(num_layers=3, num_attention_heads=2, attention_head_dim=16, caption_projection_dim=32,
                    joint_attention_dim=64, pooled_projection_dim=40, dual_attention_layers=[0] if
                    conf["dual_attention_layers"] else [])
    with torch.device(device):
        tr = SD3Transformer2DModel(**conf)
    tr.to(torch.bfloat16).requires_grad_(False).eval()
    width = conf["num_attention_heads"] * conf["attention_head_dim"]
    shape = Shape(depth=conf["num_layers"], width=width, head_dim=conf["attention_head_dim"],
                  dual_layers=tuple(conf["dual_attention_layers"]), qk_norm=True,
                  pos_embed_max_size=conf["pos_embed_max_size"], patch_size=2, in_channels=16, out_channels=16,
                  joint_attention_dim=conf["joint_attention_dim"], pooled_projection_dim=conf["pooled_projection_dim"])
    adapter = Adapter(cfg)
    adapter.comps = SD3Components(transformer=tr, shape=shape, variant=size, how="bench")
    adapter.device, adapter.dtype = torch.device(device), torch.bfloat16
    text = {"prompt_embeds": torch.randn(1, 77 + 256, conf["joint_attention_dim"]),
            "pooled": torch.randn(1, conf["pooled_projection_dim"])}
    return adapter, tr, text


def build_qwenimage(cfg: Any, device: Any) -> tuple[Any, Any, dict]:
    """Adapter with a random full-size Qwen-Image transformer on ``device`` (bf16), as load() leaves it; a caption of
    128 real tokens in the cached 512 (the adapter cuts the padding before the transformer)."""
    import torch
    from diffusers import QwenImageTransformer2DModel

    from lorakit.models.qwenimage import configs
    from lorakit.models.qwenimage.adapter import Adapter
    from lorakit.models.qwenimage.convert import Shape
    from lorakit.models.qwenimage.load import QwenImageComponents

    conf = {k: v for k, v in configs.transformer_config().items() if not k.startswith("_")}
    if TINY:
        conf.update(num_layers=6, attention_head_dim=16, num_attention_heads=2, axes_dims_rope=[4, 6, 6],
                    joint_attention_dim=48)
    with torch.device(device):
        tr = QwenImageTransformer2DModel(**conf)
    tr.to(torch.bfloat16).requires_grad_(False).eval()
    dim = conf["num_attention_heads"] * conf["attention_head_dim"]
    shape = Shape(dim=dim, num_layers=conf["num_layers"], head_dim=conf["attention_head_dim"],
                  text_dim=conf["joint_attention_dim"], in_channels=conf["in_channels"],
                  out_channels=conf["out_channels"])
    adapter = Adapter(cfg)
    adapter.comps = QwenImageComponents(transformer=tr, shape=shape)
    adapter.device, adapter.dtype = torch.device(device), torch.bfloat16
    mask = torch.zeros(1, 512, dtype=torch.int64)
    mask[:, :128] = 1
    text = {"prompt_embeds": torch.randn(1, 512, conf["joint_attention_dim"]) * mask[..., None], "prompt_mask": mask}
    return adapter, tr, text


def build_zimage(cfg: Any, device: Any) -> tuple[Any, Any, dict]:
    """Adapter with a random full-size Z-Image transformer on ``device`` (bf16), as load() leaves it; a caption of 128
    real tokens in the cached 512 (the adapter drops the padding before the transformer)."""
    import torch
    from diffusers import ZImageTransformer2DModel

    from lorakit.models.zimage import configs
    from lorakit.models.zimage.adapter import Adapter
    from lorakit.models.zimage.convert import Shape
    from lorakit.models.zimage.load import ZImageComponents

    conf = {k: v for k, v in configs.transformer_config().items() if not k.startswith("_")}
    if TINY:
        conf.update(dim=32, n_layers=3, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=24,
                    axes_dims=[4, 6, 6])
    with torch.device(device):
        tr = ZImageTransformer2DModel(**conf)
    tr.to(torch.bfloat16).requires_grad_(False).eval()
    shape = Shape(dim=conf["dim"], n_layers=conf["n_layers"], n_refiner=conf["n_refiner_layers"],
                  head_dim=conf["dim"] // conf["n_heads"], cap_feat_dim=conf["cap_feat_dim"],
                  in_channels=conf["in_channels"])
    adapter = Adapter(cfg)
    adapter.comps = ZImageComponents(transformer=tr, shape=shape, variant="base", how="bench")
    adapter.device, adapter.dtype = torch.device(device), torch.bfloat16
    mask = torch.zeros(1, 512, dtype=torch.int64)
    mask[:, :128] = 1
    text = {"prompt_embeds": torch.randn(1, 512, conf["cap_feat_dim"]) * mask[..., None], "prompt_mask": mask}
    return adapter, tr, text


def build_sd15(cfg: Any, device: Any) -> tuple[Any, Any, dict]:
    """Adapter with a random full-size SD 1.5 U-Net on ``device`` (bf16); tiny stand-ins for the unused encoders."""
    import torch
    from diffusers import UNet2DConditionModel

    from lorakit.models.sd15 import configs
    from lorakit.models.sd15.adapter import Adapter

    conf = {k: v for k, v in configs.UNET.items() if not k.startswith("_")}
    if TINY:
        conf.update(block_out_channels=[32, 64, 64, 64], attention_head_dim=2, cross_attention_dim=32)
    with torch.device(device):
        unet = UNet2DConditionModel(**conf)
    adapter = Adapter(cfg)
    adapter.attach(unet, torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), None, device=device, dtype=torch.bfloat16)
    text = {"context": torch.randn(1, 77, conf["cross_attention_dim"])}
    return adapter, adapter.unet, text


def build_row(s: dict, cfg: Any, device: Any) -> tuple[Any, Any, dict]:
    """(adapter, denoiser, cached text tensors) of a row's family and size on ``device``."""
    family = s["family"]
    if family in ("flux2", "sd3"):
        return {"flux2": build_flux2, "sd3": build_sd3}[family](cfg, device, s["size"])
    return {"sdxl": build_sdxl, "flux1": build_flux, "qwenimage": build_qwenimage, "zimage": build_zimage,
            "sd15": build_sd15}[family](cfg, device)


def dry_row(name: str) -> str:
    """A row's full-size model built on the meta device (nothing allocated or computed), its LoRA targets found in it,
    and for a "vram" row the plan memory.vram_gb makes for it (an H100's float8 matmuls assumed): one line."""
    import torch

    from lorakit.train import budget, speed, swap
    from lorakit.train.planview import lora_parameters

    s = ROWS[name]
    cfg = build_config(s["family"], s["gc"], bool(s.get("compile")), s)
    torch.set_default_dtype(torch.bfloat16)
    try:
        adapter, model, _ = build_row(s, cfg, torch.device("meta"))
    finally:
        torch.set_default_dtype(torch.float32)
    component = "unet" if s["family"] in ("sdxl", "sd15") else "transformer"
    targets = adapter.lora_targets(cfg.network)[component]
    names = dict(model.named_modules())
    missing = [p for p in targets if p not in names]
    if missing:
        raise SystemExit(f"bench --dry: {name}: LoRA targets not in the model: {missing[:3]}")
    line = (f"{name}: {type(model).__name__} on meta, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B "
            f"parameters, {len(targets)} LoRA targets")
    if s.get("vram"):
        blocks = speed.repeated_blocks(model, adapter.spec.compile_blocks)
        trainable = [torch.empty(lora_parameters(model, targets), device="meta")]
        # no LoRA is injected on meta: the targets' kept inputs are counted from their paths
        sizes = budget.Sizes.of(model, blocks, trainable, adapter.spec.host_linears, spec=adapter.spec,
                                paths=frozenset(targets))
        plan = budget.apply_budget(cfg, adapter.spec, model, blocks, trainable, swap.LOOKAHEAD, log=lambda _: None,
                                   fp8_matmuls=True, sizes=sizes)
        line += f"; plan: {plan.describe()}" + (" fp8_compute" if plan.fp8_compute else "")
        # the s/step model's estimate of it on an H100, and what the plan says is not measured
        from lorakit.train import autoplan, cards

        mine = budget.for_model(adapter.spec, model)
        step = cards.step_seconds(mine.family, autoplan.settings_of(plan.applied.memory), cards.card("h100"),
                                  images=cfg.training.batch_size * RESOLUTION.get(s["family"], 1024) ** 2 / 1024**2,
                                  swapped_bytes=autoplan._swapped(plan, budget.Sizes.of(model, blocks, trainable)),
                                  rows=cards.rows_for(mine))
        line += f"; {step.describe()}" if step else "; no s/step estimate"
        line += "".join(f"; {n}" for n in plan.notes if "not measured" in n)
    return line


def count_forward_flops(adapter: Any, next_batch: Any, cfg: Any, device: Any) -> float:
    """FLOPs of one forward (torch's FlopCounterMode: matmuls, convs, attention) under no_grad."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lorakit.train.steps import autocast, to_device

    batch = to_device(next_batch(), device)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(batch.latents.shape, generator=g).to(device)
    noised = adapter.noise(batch.latents, noise, batch, cfg.training, g)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), autocast(device, torch.bfloat16), counter:
        adapter.predict(noised, batch)
    return float(counter.get_total_flops())


def run_row(name: str, steps: int, t_spawn: float) -> dict[str, Any]:
    import torch

    from lorakit.lora.inject import inject_lora
    from lorakit.models.base import Batch
    from lorakit.train import optim, speed
    from lorakit.train.steps import update_step

    s = ROWS[name]
    family = s["family"]
    device = torch.device("cpu" if TINY else "cuda")
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    cfg = build_config(family, s["gc"], bool(s.get("compile")), s)
    if TINY:  # the tiny models have 6 (FLUX) blocks
        cfg.memory.blocks_to_swap = min(cfg.memory.blocks_to_swap, 3)
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)  # build the base directly in bf16 (no fp32 copy of 12B weights)
    try:
        adapter, model, text = build_row(s, cfg, device)
    finally:
        torch.set_default_dtype(torch.float32)
    sync(device)
    t_build = time.time() - t0

    speed.DISABLE_CUDNN_SDPA = {True: False, False: True}.get(s.get("cudnn"), "eager")  # default: lorakit's
    if placed(s):  # as `lorakit train` does: the base waits on the CPU, LoRA is injected there
        model.to("cpu")
        sync(device)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    cap = None
    if cuda:
        from lorakit.train import memory as memory_features

        memory_features.configure_allocator(cfg, device)  # what `lorakit train` does under vram_gb / swap
    if s.get("vram") and cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        cap = (s["vram"] - CONTEXT_GIB) * 2**30
        torch.cuda.set_per_process_memory_fraction(cap / total)
    targets = adapter.lora_targets(cfg.network)
    component = "unet" if family in ("sdxl", "sd15") else "transformer"
    # as `lorakit train` in bf16 (every step runs in autocast); "peft_casts": as before round 6
    params = inject_lora(model, targets[component], cfg.network.alpha, cfg.network.dropout,
                         under_autocast=not s.get("peft_casts"))
    adapter.before_placement(cfg.memory, print)  # as the loop does (memory.modulation_on_cpu)
    if "modstream" in s and getattr(adapter, "host_modulation", None) is not None:  # which Linears the GPU applies
        adapter.host_modulation.streamed_paths = tuple(s["modstream"])
    if s.get("noprefetch"):  # every streamed weight copied at the call, none during the previous backward
        from lorakit.models.flux1 import modulation

        modulation.PREFETCH_BLOCKS = 0
    if s.get("peft_forward"):  # peft's own LoRA forward in eager mode, instead of lorakit's in-place addmm one
        for sub in model.modules():
            if "forward" in vars(sub) and hasattr(sub, "lora_A"):
                del sub.forward
    if s.get("fused_lora"):
        use_fused_lora(model)
    if s.get("host_sync"):  # the loop's other path: the host reads each step's numbers before the update
        from lorakit.train import health

        health.skip_on_device = lambda optimizer, stats: False
    if s.get("pageable"):  # host-to-device copies from pageable memory, as before round 7 (models.base.to_gpu pins)
        import importlib

        for mod in ("lorakit.train.steps", "lorakit.diffusion.objectives", f"lorakit.models.{family}.adapter"):
            importlib.import_module(mod).to_gpu = lambda t, device, dtype=None: t.to(device, non_blocking=True).to(dtype)
    swapper, plan, t_place, h2d_gbps = None, None, 0.0, None
    if placed(s):
        from lorakit.train import budget, swap

        t1 = time.time()
        blocks = speed.repeated_blocks(model, adapter.spec.compile_blocks)
        if s.get("reserve") is not None:  # experiment: the budget's headroom for the allocator (budget.RESERVE_GIB)
            budget.RESERVE_GIB = float(s["reserve"])
        if cfg.memory.vram_gb:
            plan = budget.apply_budget(cfg, adapter.spec, model, blocks, params, swap.LOOKAHEAD, log=print,
                                       device=device)
            cfg = plan.applied  # the run's config with the plan's choices (the loaded one is never written)
            adapter.before_placement(cfg.memory, print)  # as the loop does: what the plan chose (modulation_on_cpu)
        swapper = swap.place_denoiser(model, blocks, device, fp8_base=cfg.memory.fp8_base,
                                      fp8_compute=cfg.memory.fp8_compute,
                                      blocks_to_swap=cfg.memory.blocks_to_swap, log=print,
                                      fp8_convs=adapter.spec.fp8_convs)
        sync(device)
        t_place = time.time() - t1
        if swapper is not None and cuda:  # host-to-device bandwidth of this machine, pinned, one 1 GiB copy
            host = torch.empty(2**30, dtype=torch.uint8, pin_memory=True)
            dev = torch.empty(2**30, dtype=torch.uint8, device=device)
            dev.copy_(host, non_blocking=True)
            sync(device)
            t2 = time.time()
            dev.copy_(host, non_blocking=True)
            sync(device)
            h2d_gbps = 2**30 / (time.time() - t2) / 1e9
            del host, dev
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    px = RESOLUTION.get(family, 1024)
    side = 16 if TINY else px // 8
    latent_shape = {"sdxl": (1, 4, side, side), "sd15": (1, 4, side, side),
                    "flux2": (1, 128, side // 2, side // 2)}.get(family, (1, 16, side, side))
    gen_data = torch.Generator().manual_seed(123)

    def next_batch() -> Batch:
        """A cached batch as the loop builds it: float32 CPU tensors of the real shapes."""
        return Batch(latents=torch.randn(latent_shape, generator=gen_data), text={k: v.clone() for k, v in text.items()},
                     original_sizes=[(px, px)], crop_top_lefts=[(0, 0)], target_sizes=[(px, px)],
                     loss_weight=torch.ones(1), captions=["a photo"])

    if s.get("offload"):
        offload_saved_activations(float(s["offload"]))
    if s.get("amb_est"):  # how the partitioner estimates each op's recomputation time (torch's default: "flops")
        import torch._functorch.config as functorch_config

        functorch_config.activation_memory_budget_runtime_estimator = s["amb_est"]
    speed.CHECKPOINT_INSIDE_COMPILE = s.get("compile") != "outer"
    # the share of the blocks under the activation budget; the others keep every activation (round 20's next step)
    speed.BUDGET_SHARE = s.get("budget_share")
    if cuda:
        speed.configure_attention(compiled=bool(s.get("compile")))
    fwd_flops = None
    if s.get("eager_first"):
        fwd_flops = count_forward_flops(adapter, next_batch, cfg, device)  # also "an eager run first"
    log_lines: list[str] = []
    if s.get("compile") == "repeated":
        speed.set_gradient_checkpointing(model, cfg.memory.gradient_checkpointing, log_lines.append)
        compiled = speed.compile_regions(model, names=getattr(model, "_repeated_blocks"), log=log_lines.append)
        prep = {"compiled_blocks": compiled}
    elif s.get("mode"):
        inside = cfg.memory.gradient_checkpointing
        speed.set_gradient_checkpointing(model, False, log_lines.append)
        prep = {"compiled_blocks": speed.compile_regions(model, speed.region_names(model, adapter.spec.compile_blocks),
                                                         mode=s["mode"], checkpoint=inside, log=log_lines.append)}
    else:
        # TINY (CPU smoke test): compile with aot_eager and skip the CUDA-only check and CUDA graphs
        prep = speed.prepare_denoiser(model, cfg.memory, torch.device("cuda") if TINY else device,
                                      log=log_lines.append, scope="whole" if s.get("compile") == "whole" else
                                      "regions", cuda_graphs=bool(s.get("cudagraphs")) and not TINY,
                                      backend="aot_eager" if TINY else "inductor", swapper=swapper,
                                      extra_regions=adapter.spec.compile_blocks)
    generator = torch.Generator().manual_seed(cfg.training.seed)
    results: list[dict[str, Any]] = []
    gate = Gate.from_env(name)
    contended = 0
    import gc  # as the loop does before its first step (lorakit/train/loop.py)

    gc.collect()
    gc.freeze()
    for k, fused in enumerate(s.get("phases", (None,))):
        build = optim.build_optimizer
        if cfg.memory.fused_backward:  # as the loop builds it: each parameter stepped inside backward
            from lorakit.train import fused as fused_bwd

            build = functools.partial(fused_bwd.build_fused_optimizer, nan_policy=cfg.training.nan_policy)
        optimizer = build([{"params": params, "lr": cfg.optimizer.lr, "name": component}],
                          cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay,
                          cfg.optimizer.betas, cfg.optimizer.eps, fused=fused)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        warm = 5 if k == 0 else 3
        n = steps if k == 0 else max(steps - 2, warm + 1)
        times, stats = [], []
        t_prev = time.time()
        t_first = None
        for i in range(n):
            if i == warm and k == 0:
                sync(device)
                contended = gate.enter()  # compiles done (or waited long enough): time alone on the GPU
                t_prev = time.time()
            # as the loop of `lorakit train` steps: the update, then the previous step's numbers (a fused AdamW
            # skips a non-finite step on the GPU, so the host reads them a step late and never idles the GPU)
            stats.append(update_step(adapter, next_batch, cfg, generator, optimizer, params, None, device,
                                     torch.bfloat16))
            if i == 0 or not stats[-1].deferred:
                stats[-1].read()
            else:
                stats[-2].read()
            now = time.time()
            if t_first is None:
                t_first = now
            times.append(now - t_prev)
            t_prev = now
            if i == 0 and k == 0:
                loss, gnorm = stats[0].read()
                print(f"  first step done: loss {loss:.4f}, grad norm {gnorm:.4g}", flush=True)
                gc.collect()  # and what the first step built (compiled blocks), as the loop does
                gc.freeze()
        sync(device)
        losses = [st.read()[0] for st in stats]
        steady = times[warm:] or times
        fused_on = bool(getattr(optimizer, "defaults", {}).get("fused"))
        results.append({
            "row": name if k == 0 else f"{name}+fused", "family": family,
            "settings": settings_text(s, cfg) + (" fused-AdamW" if fused_on else ""), "steps": n,
            "median_s": statistics.median(steady), "min_s": min(steady), "max_s": max(steady),
            "step_s": [round(t, 4) for t in times],
            "first_step_s": times[0], "start_to_first_step_s": (t_first - t_spawn) if k == 0 else float("nan"),
            "build_s": t_build,
            "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else float("nan"),
            "fwd_tflop_counted": fwd_flops / 1e12 if fwd_flops else None,
            "losses": losses,
            "finite": all(x == x and abs(x) != float("inf") for x in losses),
            "lora_modules": len(targets[component]), "lora_params": sum(p.numel() for p in params),
            "lora_dtype": str(params[0].dtype), "compiled_blocks": prep.get("compiled_blocks", 0),
            "fused": fused_on, "others_compiling": contended, "log": log_lines,
            "phase": k, "cap_gib": cap / 2**30 if cap else None, "place_s": t_place,
            "plan": plan.describe() if plan else None,
            "swap": {"blocks": len(swapper.packs), "host_gib": swapper.host_bytes / 2**30, "loads": swapper.loads,
                     "max_resident": swapper.max_resident, "h2d_gbps": h2d_gbps} if swapper else None,
            "cudnn_sdpa": bool(cuda and torch.backends.cuda.cudnn_sdp_enabled()),
        })
        if k == len(s.get("phases", (None,))) - 1 and cuda and os.environ.get("BENCH_PROFILE"):
            # GPU time of a whole step by kernel kind, in the last phase (the fused AdamW: lorakit's CUDA default)
            from probe_blocks import profile_kernels  # same folder

            def one_step() -> None:
                update_step(adapter, next_batch, cfg, generator, optimizer, params, None, device, torch.bfloat16)

            results[-1]["profile"] = profile_kernels(one_step, steps=2, top_n=25, gaps=True,
                                                     host=os.environ["BENCH_PROFILE"] == "host")
        if k == len(s.get("phases", (None,))) - 1 and cuda and os.environ.get("BENCH_TIMELINE"):
            try:
                results[-1]["timeline"] = step_timeline(
                    lambda: update_step(adapter, next_batch, cfg, generator, optimizer, params, None, device,
                                        torch.bfloat16), adapter, optimizer)
            except Exception as err:  # a diagnostic: the row's timings stand
                print(f"  step timeline failed: {err!r}", flush=True)
        if k == len(s.get("phases", (None,))) - 1 and cuda and os.environ.get("BENCH_CPROFILE"):
            results[-1]["host_profile"] = host_profile(
                lambda: update_step(adapter, next_batch, cfg, generator, optimizer, params, None, device,
                                    torch.bfloat16))
        if k == len(s.get("phases", (None,))) - 1 and cuda and os.environ.get("BENCH_SYNC_DEBUG"):
            try:
                results[-1]["host_syncs"] = host_syncs(
                    lambda: update_step(adapter, next_batch, cfg, generator, optimizer, params, None, device,
                                        torch.bfloat16))
            except Exception as err:  # a diagnostic: the row's timings stand
                print(f"  host sync check failed: {err!r}", flush=True)
        del optimizer
    gate.leave()
    return results


class Gate:
    """Parallel mode: rows compile at the same time, but time their steps one at a time with nothing else
    compiling. ``enter`` marks this row ready, waits until every row is ready or finished (or BENCH_GATE_WAIT
    seconds after the gate was made), then takes an exclusive lock; returns how many rows were still not
    ready (0 = clean timing)."""

    def __init__(self, folder: str | None, name: str, rows: list[str], deadline: float) -> None:
        self.folder, self.name, self.rows, self.deadline, self.fh = folder, name, rows, deadline, None

    @classmethod
    def from_env(cls, name: str) -> "Gate":
        folder = os.environ.get("BENCH_GATE")
        rows = os.environ.get("BENCH_GATE_ROWS", "").split(",") if folder else []
        return cls(folder, name, rows, float(os.environ.get("BENCH_GATE_DEADLINE", "0")))

    def pending(self) -> int:
        return sum(1 for r in self.rows if not any((Path(self.folder) / f"{tag}-{slug(r)}").exists()
                                                   for tag in ("ready", "done")))

    def enter(self) -> int:
        if not self.folder:
            return 0
        import fcntl

        (Path(self.folder) / f"ready-{slug(self.name)}").touch()
        while self.pending() and time.time() < self.deadline:
            time.sleep(0.5)
        self.fh = open(Path(self.folder) / "gpu.lock", "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self.pending()

    def leave(self) -> None:
        if self.fh:
            self.fh.close()  # releases the lock
            self.fh = None


def use_fused_lora(model: Any) -> int:
    """Every LoRA Linear of ``model`` computes ``base(x) + s · B(A(x))`` with lorakit.train.lora_kernel's fused
    Linear (the "fused_lora" rows; dropout 0, one adapter); returns how many were switched."""
    from torch import nn

    from lorakit.train.lora_kernel import fused_lora_linear

    def forward_of(layer: Any) -> Any:
        base, a, b = layer.base_layer, layer.lora_A["default"], layer.lora_B["default"]
        scale = layer.scaling["default"]
        return lambda x, *args, **kwargs: fused_lora_linear(x, base.weight, base.bias, a.weight, b.weight, scale)

    n = 0
    for sub in model.modules():
        if hasattr(sub, "lora_A") and isinstance(getattr(sub, "base_layer", None), nn.Linear):
            sub.forward = forward_of(sub)
            n += 1
    if not n:
        raise RuntimeError("fused_lora: no LoRA Linear found")
    return n


def add_joint_pass(name: str, mark: Callable[[Any], None]) -> None:
    """An inductor joint-graph pre-pass for the experiment rows: ``mark(graph)``, then the pass installed before it;
    ``name`` keys inductor's cache."""
    from torch._inductor import config as inductor_config

    from lorakit.train.graph_pass import ChainedPass

    class JointPass(ChainedPass):
        key = f"bench-{name}"

        def edit(self, graph: Any) -> None:
            mark(graph)

    inductor_config.joint_custom_pre_pass = JointPass(inductor_config.joint_custom_pre_pass)


def step_timeline(one_step: Callable[[], Any], adapter: Any, optimizer: Any, steps: int = 3) -> list[dict]:
    """How far ahead of the GPU the host is at each stage of a training step (BENCH_TIMELINE=1): ``steps`` steps
    after a synchronisation, with a host timestamp and a CUDA event taken where the host begins and finishes queueing
    the forward (``adapter.predict``), the backward, the gradient clipping and the optimizer step, and where each step
    begins and returns. ``lead_ms`` = when the GPU reached that point minus when the host queued it: near zero, the
    GPU was waiting for the host there (idle); large, the host was that far ahead."""
    import torch

    marks: list[tuple[str, float, Any]] = []

    def mark(label: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        marks.append((label, time.perf_counter(), event))

    def timed(label: str, fn: Callable) -> Callable:
        def inner(*args: Any, **kwargs: Any) -> Any:
            mark(f"{label} begins")
            out = fn(*args, **kwargs)
            mark(f"{label} queued")
            return out
        return inner

    from lorakit.train import loop

    patches = [(loop, "to_device", "batch to device"), (adapter, "noise", "noising"),
               (adapter, "predict", "forward"), (optimizer, "step", "optimizer step"),
               (torch.Tensor, "backward", "backward"), (torch.nn.utils, "clip_grad_norm_", "clipping")]
    # what to put back: the attribute where it was defined on the object itself, else nothing (an instance then
    # finds its class's method again)
    saved = [(obj, name, vars(obj).get(name)) for obj, name, _ in patches]
    try:
        for obj, name, label in patches:
            setattr(obj, name, timed(label, getattr(obj, name)))
        torch.cuda.synchronize()
        mark("synchronised")
        for _ in range(steps):
            mark("step begins")
            one_step()
            mark("step returns")
        torch.cuda.synchronize()
    finally:
        for obj, name, original in saved:
            if original is None:
                delattr(obj, name)
            else:
                setattr(obj, name, original)
    host0, event0 = marks[0][1], marks[0][2]
    rows = []
    for label, host, event in marks:
        gpu_ms, host_ms = event0.elapsed_time(event), (host - host0) * 1e3
        rows.append({"point": label, "host_ms": round(host_ms, 2), "gpu_ms": round(gpu_ms, 2),
                     "lead_ms": round(gpu_ms - host_ms, 2)})
        print(f"  timeline {label:24s} host {host_ms:9.2f} ms  GPU {gpu_ms:9.2f} ms  lead {gpu_ms - host_ms:8.2f} ms",
              flush=True)
    return rows


def host_profile(one_step: Callable[[], Any], steps: int = 3, top_n: int = 40) -> list[str]:
    """Where the host's time goes in ``steps`` steady steps (BENCH_CPROFILE=1): cProfile's functions by own
    time and by cumulative time, printed and kept in the row. cProfile slows Python calls, so the shares, not the
    absolute times, are what to read. From Python 3.12 on it sees every thread, so the autograd thread's compiled
    backward is in it too (run 39 in RESULTS.md)."""
    import cProfile
    import io
    import pstats

    import torch

    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        one_step()
    torch.cuda.synchronize()
    prof.disable()
    lines = []
    for key in ("tottime", "cumtime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(top_n)
        text = buf.getvalue()
        lines += [line for line in text.splitlines() if line.strip()]
    for line in lines:
        print(f"  cprofile {line}", flush=True)
    return lines


def host_syncs(one_step: Callable[[], Any], steps: int = 2) -> list[str]:
    """Where the host waits for the GPU inside a training step: ``steps`` steps under
    ``torch.cuda.set_sync_debug_mode("warn")``, each synchronising call reported with the innermost lorakit /
    benchmark frames that made it (BENCH_SYNC_DEBUG=1)."""
    import traceback
    import warnings

    import torch

    found: list[str] = []
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if str(message).startswith("Synchronization debug mode is a prototype"):
            return  # torch's notice that the mode exists, not a synchronisation
        frames = [f for f in traceback.extract_stack()[:-1] if "lorakit" in f.filename or "bench" in f.filename]
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:]))
        found.append(f"{str(message)[:80]} @ {where}")

    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            for _ in range(steps):
                one_step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = original
    counts: dict[str, int] = {}
    for entry in found:
        counts[entry] = counts.get(entry, 0) + 1
    for entry, n in counts.items():
        print(f"  host sync ×{n}: {entry}", flush=True)
    return [f"×{n} {entry}" for n, entry in counts.items()]


def offload_saved_activations(min_mib: float) -> None:
    """torch's experimental partitioner offloading (torch._functorch.config.enable_activation_offloading), for the
    "offload" rows: saved activations of each compiled block of at least ``min_mib`` MiB go to pinned CPU memory."""
    import torch._functorch.config as functorch_config

    if not hasattr(functorch_config, "enable_activation_offloading"):
        raise RuntimeError(f"torch {torch_version()} has no partitioner activation offloading")
    functorch_config.enable_activation_offloading = True
    for flag in ("activation_offload_separate_stream", "activation_offload_sink_wait", "activation_reload_prefetch"):
        if hasattr(functorch_config, flag):
            setattr(functorch_config, flag, True)
    try:  # reuse pinned buffers across steps where this torch has the pool (else ~3 ms of cudaHostAlloc per tensor)
        from torch._functorch._activation_offloading import offload_ops

        offload_ops.pinned_memory_pool().__enter__()
    except (ImportError, AttributeError):
        pass
    min_bytes = min_mib * 2**20

    def mark(graph: Any) -> None:  # every computed tensor of at least min_mib may be offloaded
        import torch

        for node in graph.nodes:
            val = node.meta.get("val")
            if node.op == "call_function" and isinstance(val, torch.Tensor) and \
                    val.numel() * val.element_size() >= min_bytes:
                node.meta["should_offload"] = True

    add_joint_pass(f"offload-{min_bytes}", mark)


def torch_version() -> str:
    import torch

    return torch.__version__


def slug(row: str) -> str:
    return row.replace("/", "_").replace("+", "_")


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def settings_text(s: dict, cfg: Any) -> str:
    ckpt = ("ckpt" if s.get("ckpt_fraction", 1.0) == 1.0 else f"ckpt {s['ckpt_fraction']:.0%} of blocks") \
        if s["gc"] else "no-ckpt"
    optimizer = {"adamw8bit": "AdamW8bit"}.get(cfg.optimizer.name, "AdamW")
    parts = ["bf16", "b1", f"{RESOLUTION.get(cfg.model.family, 1024)}²", f"r{cfg.network.rank}", optimizer, "SDPA", ckpt]
    from lorakit.train import speed

    m = cfg.memory  # after the budget's choices
    wrapped = speed.wrapped_layout(object() if m.blocks_to_swap else None, compile_=bool(s.get("compile")),
                                   fp8_on=m.fp8_base and not m.fp8_compute,
                                   checkpointing=m.gradient_checkpointing,
                                   graphs=bool(s.get("cudagraphs")))
    parts += {"regions": ["compile(regions, lorakit ckpt around)" if s["gc"] and wrapped else
                          "compile(regions, ckpt inside)" if s["gc"] else "compile(regions)"],
              "outer": ["compile(regions, diffusers ckpt outside)"],
              "whole": ["compile(whole denoiser, ckpt traced in)"],
              "repeated": ["compile(_repeated_blocks only)"]}.get(s.get("compile") or "", [])
    if s.get("mode"):
        parts.append(f"mode={s['mode']}")
    if s.get("cudagraphs"):
        parts.append("CUDA graphs (reduce-overhead + mark_step)")
    if s.get("amb") is not None:
        parts.append(f"activation_budget={s['amb']:g}" + (" attention saved" if speed.saves_attention(m) else ""))
    if s.get("vram"):
        m = cfg.memory
        parts.append(f"vram_gb={s['vram']} (cap {s['vram'] - CONTEXT_GIB:g} GiB) → ckpt={m.gradient_checkpointing} "
                     f"fraction={m.checkpoint_fraction:g} fp8={m.fp8_base} swap={m.blocks_to_swap}"
                     + (f" activation_budget={m.activation_budget:g}" if m.activation_budget is not None else "")
                     + (" attention saved" if m.activation_budget is not None and speed.saves_attention(m) else ""))
        parts += [f"reserve {s['reserve']:g} GiB"] if s.get("reserve") is not None else []
        parts += ["fp8 compute"] if m.fp8_compute else []
    else:
        parts += (["fp8 compute" if s.get("fp8c") else "fp8 storage"] if s.get("fp8") else []) + \
            ([f"swap {s['swap']} blocks"] if s.get("swap") else [])
    cudnn = {True: True, False: False}.get(s.get("cudnn"), bool(s.get("compile")))
    parts.append("cuDNN-SDPA on" if cudnn else "cuDNN-SDPA off")
    parts += [label for key, label in FLAG_LABELS.items() if s.get(key)]
    if s.get("offload"):
        parts.append(f"saved activations ≥ {s['offload']:g} MiB offloaded to CPU (torch partitioner)")
    if s.get("amb_est"):
        parts.append(f"partitioner runtime estimates: {s['amb_est']}")
    if s.get("budget_share") is not None:
        parts.append(f"budget on {s['budget_share']:.0%} of the blocks, the rest keep every activation")
    if "modstream" in s:
        parts.append(f"GPU applies {'/'.join(s['modstream']) or 'none'}")
    return " ".join(parts)


# on/off row keys and how the settings column names them
FLAG_LABELS = {"eager_first": "after an eager fwd", "host_sync": "host reads each step's numbers before the update",
               "peft_casts": "peft's fp32 input casts", "pageable": "pageable host copies",
               "modcpu": "modulation on CPU", "fused_lora": "fused LoRA Linear (Triton)",
               "peft_forward": "peft's LoRA forward", "noclip": "no clipping",
               "fbwd": "fused_backward (no clipping, nan_policy stop)",
               "noprefetch": "no modulation prefetch"}


# ====================================================================== driver


def environment() -> dict[str, str]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from first_step import commit_label  # one commit/dirty labelling for every benchmark

    import diffusers

    return {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "commit": commit_label(ROOT),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def table(results: list[dict], env: dict[str, str]) -> str:
    head = (f"### {env['date']} · {env['card']} · torch {env['torch']} · diffusers {env['diffusers']} · "
            f"commit {env['commit']}\n\n"
            "| row | settings | s/step median (min–max) | peak alloc / reserved GiB | MFU | "
            "start→1st step s (1st step s) | fwd TFLOP counted | loss finite, Δ vs row 1 |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    base: dict[str, list[float]] = {}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | {r.get('settings', '')} | FAILED: {r['error'][:160]} | | | | | |")
            continue
        fam = r["row"].split("/")[0]  # "sdxl", "flux1", "flux2-4b", ...: rows of one model compare losses
        if r.get("phase", 0):  # later steps of the same process: no loss comparison with row 1
            base.setdefault(fam, [])
        base.setdefault(fam, r["losses"])
        ref = base[fam]
        n = 0 if r.get("phase", 0) else min(len(ref), len(r["losses"]), 3)
        delta = max(abs(a - b) / max(abs(b), 1e-8) for a, b in zip(r["losses"][:n], ref[:n])) if n else 0.0
        mfu = FLOP_STEP[r["family"]] / r["median_s"] / PEAK if r["family"] in FLOP_STEP else float("nan")
        fwd = f"{r['fwd_tflop_counted']:.1f}" if r.get("fwd_tflop_counted") else "–"
        first = (f"{r['start_to_first_step_s']:.1f} ({r['first_step_s']:.1f})" if r.get("phase", 0) == 0
                 else "(same process)")
        busy = f" [timed while {r['others_compiling']} rows compiled]" if r.get("others_compiling") else ""
        lines.append(f"| {r['row']} | {r['settings']}{busy} | {r['median_s']:.3f} ({r['min_s']:.3f}–{r['max_s']:.3f}) | "
                     f"{r['peak_alloc_gib']:.2f} / {r['peak_reserved_gib']:.2f} | {mfu:.1%} | {first} | {fwd} | "
                     f"{'yes' if r['finite'] else 'NO'}, {delta:.1e} (first {n} steps) |")
    notes = ("\nMFU = issue-6 model FLOPs per step (SDXL 21.6 T, FLUX.1-dev 240 T, with checkpointing) / median "
             f"time / {PEAK / 1e12:.0f} TFLOP/s (bf16 matmul measured on this workplace's H200). "
             "start→1st step: process spawn to the end of the first step, building random weights on the GPU "
             "(no file loading) and any compilation included. Δ: max relative loss difference over the first "
             "steps against the family's first row (same weights, batches and noise).\n")
    return head + "\n".join(lines) + "\n" + notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rows", nargs="*", help="rows to run (default: all); see --list")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--dry", action="store_true", help="build each row's full-size model on the meta device (CPU, "
                    "nothing allocated), check its LoRA targets and print the plan of a vram row; no timing")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=420, help="seconds per row (in --parallel: for all rows)")
    ap.add_argument("--parallel", action="store_true",
                    help="start every row at once (compiles overlap); steps are timed one row at a time after "
                         "all rows finished compiling or --gate-wait seconds passed")
    ap.add_argument("--gate-wait", type=float, default=240, help="--parallel: longest wait for the others' compiles")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.list:
        print("\n".join(ROWS))
        return
    if args.dry:
        sys.path.insert(0, str(ROOT))
        for name in args.rows or list(ROWS):
            if name not in ROWS:
                sys.exit(f"bench: unknown row {name!r}; see --list")
            print(dry_row(name), flush=True)
        return
    if args.one:
        sys.path.insert(0, str(ROOT))
        for r in run_row(args.one, args.steps, args.spawned or T_IMPORT):
            print(json.dumps(r), flush=True)
        return
    rows = args.rows or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"bench: unknown row(s) {unknown}; see --list")
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    env = environment()
    results = run_parallel(rows, args, env, out) if args.parallel else run_serial(rows, args, env, out)
    text = table(results, env)
    print(text)
    if out:
        (out / "RESULTS.md").write_text(text)
    if not args.no_append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write("\n" + text)


def child_command(name: str, args: Any, t_spawn: float) -> list[str]:
    return [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--spawned", repr(t_spawn)]


def collect(name: str, returncode: int | None, stdout: str, stderr: str, out: Path | None,
            env: dict[str, str]) -> list[dict]:
    """Turn one child's output into result rows (an error row when it failed), and log them to $OUT."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if returncode is None:
        got = [{"row": name, "settings": json.dumps(ROWS[name]), "error": "killed at the deadline"}]
    elif returncode != 0 or not lines:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        got = [{"row": name, "settings": json.dumps(ROWS[name]), "error": f"exit {returncode}: {' / '.join(tail)}"}]
    else:
        got = [json.loads(ln) for ln in lines]
    if returncode != 0:
        print(stderr[-3000:], flush=True)
        if out:
            with open(out / "errors.log", "a") as fh:
                fh.write(f"== {name} (exit {returncode})\n{stderr[-6000:]}\n")
    print("  " + " ".join(ln for ln in stdout.splitlines() if not ln.startswith("{")), flush=True)
    for r in got:
        print(f"== {r['row']} -> {r.get('median_s', r.get('error'))}", flush=True)
        if out:
            with open(out / "bench.jsonl", "a") as fh:
                fh.write(json.dumps({**r, **env}) + "\n")
    return got


def run_serial(rows: list[str], args: Any, env: dict[str, str], out: Path | None) -> list[dict]:
    results: list[dict] = []
    for name in rows:
        print(f"== {name}", flush=True)
        t_spawn = time.time()
        try:
            proc = subprocess.run(child_command(name, args, t_spawn), capture_output=True, text=True,
                                  timeout=args.timeout, env={**os.environ, "PYTHONPATH": _pythonpath()})
            results += collect(name, proc.returncode, proc.stdout, proc.stderr, out, env)
        except subprocess.TimeoutExpired:
            results.append({"row": name, "settings": json.dumps(ROWS[name]),
                            "error": f"timed out after {args.timeout:.0f} s"})
    return results


def run_parallel(rows: list[str], args: Any, env: dict[str, str], out: Path | None) -> list[dict]:
    """Start every row at once (see Gate); kill what still runs after ``args.timeout`` seconds."""
    import tempfile

    gate = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    t0 = time.time()
    threads = max(2, (os.cpu_count() or 4) // len(rows))
    child_env = {**os.environ, "PYTHONPATH": _pythonpath(), "BENCH_GATE": str(gate), "BENCH_GATE_ROWS": ",".join(rows),
                 "BENCH_GATE_DEADLINE": repr(t0 + args.gate_wait),
                 "TORCHINDUCTOR_COMPILE_THREADS": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS", str(threads))}
    procs = {}
    for name in rows:
        files = (open(gate / f"{slug(name)}.out", "w+"), open(gate / f"{slug(name)}.err", "w+"))
        procs[name] = (subprocess.Popen(child_command(name, args, time.time()), stdout=files[0], stderr=files[1],
                                        text=True, env=child_env), files)
    by_name: dict[str, list[dict]] = {}
    while len(by_name) < len(rows):
        for name, (proc, files) in procs.items():
            if name in by_name:
                continue
            code = proc.poll()
            if code is None and time.time() - t0 > args.timeout:
                proc.kill()
                proc.wait()
                code = None
            elif code is None:
                continue
            (gate / f"done-{slug(name)}").touch()
            files[0].seek(0)
            files[1].seek(0)
            by_name[name] = collect(name, code, files[0].read(), files[1].read(), out, env)
            if out:  # partial table after each row, in case the whole command is cut off
                (out / "RESULTS.md").write_text(table([r for n in rows for r in by_name.get(n, [])], env))
        time.sleep(0.5)
    return [r for n in rows for r in by_name[n]]


def _pythonpath() -> str:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts + [str(ROOT)])


if __name__ == "__main__":
    main()
