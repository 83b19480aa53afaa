"""SD 1.5's planning numbers: what ``memory.vram_gb`` and the automatic plan count for its 860 M U-Net at 512².

Measured: one setting (benchmarks/RESULTS.md round 15, NVIDIA H100 80GB HBM3, ``benchmarks/bench.py sd15/vram6``:
512², batch 1, rank 32, AdamW, compile + CUDA graphs, no checkpointing: 0.077 s/step, 3.05 GiB allocated / 3.17
reserved), in :data:`MEASURED`; the plan of that setting says "measured". Its s/step is kept, as every row the s/step
model reads, per 1024² image-equivalent (x4: 0.308; the model scales by pixels). Its peak less the weights (1.60 GiB)
and the LoRA's AdamW state (0.20) leaves 1.25 GiB of activations at 512², 5.0 per 1024² image: the compiled rate
without checkpointing (the estimate below had 3.43; the eager one is raised by the same factor, 6.05, still an
estimate). Its reserved memory was only 0.12 GiB above the allocated: the CUDA graph pool is counted at 0.4 GiB per GiB
of checkpointed activations (:data:`GRAPH_POOL`), not SDXL's 1.2. Re-predicted: 3.05 GiB allocated, 3.92 on the card
against 3.17 reserved + 0.5 of CUDA context.

Every other number is an estimate, and a plan of another kind of setting says so (``ModelSpec.planning_estimate``). The
activation rates come from ``benchmarks/estimate_activations.py``: the full-size U-Net run on the meta device at 512²,
batch 1, 77 CLIP tokens, its Linear and Conv2d traffic per block (the resnets and transformer blocks lorakit
checkpoints) priced at SDXL's measured bytes per unit (7.5 GiB eager / 6.2 compiled per 1024² image without
checkpointing, 0.9 with it: RESULTS.md runs 1-2, 4), given, as every rate the planner reads, per 1024² image (the
planner scales by pixels: a 512² image is a quarter). s/step: SDXL's measured rows times the forward FLOPs per 1024²
image-equivalent (``STEP_SCALE``), and the planner's pixel scaling again.

GPU rows to replace them: ``benchmarks/bench.py sd15/*`` (benchmarks/PENDING.md); put the measured rows in
``MEASURED`` and the rates they give in ``RATES``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.models import estimates

# GiB of activations per 1024² image (counted at 512², x4): (with checkpointing, without); eager and compiled
# (with checkpointing: estimates; compiled without: measured, round 15; eager without: that x 4.15 / 3.43, estimated)
RATES = {"eager": (1.2, 6.05), "compiled": (1.2, 5.0)}
# CUDA graph pool per GiB of checkpointed activations (ModelSpec.graph_pool): the measured row's reserved - allocated
GRAPH_POOL = 0.4
# forward FLOPs per 1024² image-equivalent against SDXL's at 1024² (the reference rows' s/step is multiplied by it)
STEP_SCALE = 0.475
REFERENCE = "SDXL"
# measured rows (cards.toml's [[measured]] form without family; card defaults to "h100")
MEASURED: tuple[dict[str, Any], ...] = (
    {"s_step": round(0.077 * 4, 3), "peak_gib": 3.05, "reserved_gib": 3.17, "pixels": 512 * 512, "compile": True,
     "cuda_graphs": True, "checkpoint_fraction": 0.0,
     "source": "RESULTS.md round 15: bench.py sd15/vram6 (0.077 s at 512², x4 per 1024² image)"},
)
ESTIMATED = True  # every setting but MEASURED's kind: the plan of another kind says so
# published parameter counts as loaded: CLIP-L's text tower (bf16) and the autoencoder (fp32, as the adapter keeps it)
ENCODER_PARAMS = 123.1e6
AE_PARAMS = 83.65e6


def spec_for(spec: Any, model: Any) -> Any:
    """``spec`` with the planning numbers (``ModelSpec.variant_spec``); one size, so the same for every U-Net except
    that another width (tiny test models) scales the rates by its channels' share."""
    widths = list(model.config.block_out_channels)
    k = sum(widths) / (320 + 640 + 1280 + 1280)
    custom = widths != [320, 640, 1280, 1280]
    rates = {mode: (gc * k, nogc * k) for mode, (gc, nogc) in RATES.items()}
    rows = estimates.scaled_rows("sd15", REFERENCE, STEP_SCALE * k)
    note = estimates.note("SD 1.5" if not custom else f"an SD 1.5 U-Net of widths {widths}", REFERENCE,
                          "" if custom else "compile + CUDA graphs without checkpointing, RESULTS.md round 15")
    if MEASURED and not custom:  # the measured kind replaces its estimates; the plan of another kind says it estimates
        rows = estimates.merged(estimates.measured_rows("sd15", MEASURED), rows)
    return replace(spec, activation_gib=rates["eager"], activation_gib_compiled=rates["compiled"],
                   measured_steps=rows, planning_estimate=note if ESTIMATED or custom else "", variant_spec=None,
                   graph_pool=GRAPH_POOL)


def components() -> tuple[tuple[str, float], ...]:
    """``ModelSpec.component_gib``: the autoencoder in fp32 and CLIP-L in bf16."""
    return (("vae", round(AE_PARAMS * 4 / 2**30, 2)), ("text encoders", round(ENCODER_PARAMS * 2 / 2**30, 2)))


def planning_model(cfg: Any) -> tuple[Any, dict[str, int]]:
    """The full-size U-Net (SD 1.x has one size) on the current default device and its LoRA targets (kohya's SD 1.x
    targets, LoCon convs with network.conv_rank), for ``lorakit plan``."""
    from diffusers import UNet2DConditionModel

    from lorakit.models.base import init_kwargs
    from lorakit.models.unet_parts import unet_lora_targets

    from . import configs

    unet = UNet2DConditionModel(**init_kwargs(configs.UNET))
    return unet, unet_lora_targets(unet, int(cfg.network.rank), int(getattr(cfg.network, "conv_rank", 0) or 0))
