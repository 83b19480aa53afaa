"""SD 1.5's planning numbers: what ``memory.vram_gb`` and the automatic plan count for its 860 M U-Net at 512².

Measured: two settings (benchmarks/RESULTS.md round 18, NVIDIA H100 80GB HBM3, ``benchmarks/peers.py sd15`` rows
beside sd-scripts: 512², batch 1, rank 16, AdamW, compile + CUDA graphs): every block checkpointed 0.058 s/step at 2.49
GiB allocated / 2.67 reserved, none 0.062 s at 2.96 / 3.06, in :data:`MEASURED` (s/step per 1024² image-equivalent, x4;
the model scales by pixels); a plan of those kinds says "measured". Their peaks less the weights (1.60 GiB) and the
LoRA's AdamW state (0.10) leave 0.79 / 1.26 GiB of activations at 512², 3.15 / 5.0 per 1024² image: the compiled rates
(round 15's rank-32 row without checkpointing, 0.077 s at 3.05 GiB, gave the same 5.0). The CUDA graph pool is counted
at 0.2 GiB per GiB of checkpointed activations (:data:`GRAPH_POOL`; reserved less allocated was 0.10-0.18 GiB).

Every other number is an estimate, and a plan of another kind of setting says so (``ModelSpec.planning_estimate``). The
activation rates come from ``benchmarks/estimate_activations.py``: the full-size U-Net run on the meta device at 512²,
batch 1, 77 CLIP tokens, its Linear and Conv2d traffic per block (the resnets and transformer blocks lorakit
checkpoints) priced at SDXL's measured bytes per unit (7.5 GiB eager / 6.2 compiled per 1024² image without
checkpointing, 0.9 with it: RESULTS.md runs 1-2, 4), given, as every rate the planner reads, per 1024² image (the
planner scales by pixels: a 512² image is a quarter). s/step: SDXL's measured rows times the forward FLOPs per 1024²
image-equivalent (``STEP_SCALE``), calibrated by the measured rows (``estimates.calibrated``: x 4.2, a launch-bound
step at 512²), and the planner's pixel scaling again.

GPU rows to replace them: ``benchmarks/bench.py sd15/*`` (benchmarks/PENDING.md); put the measured rows in
``MEASURED`` and the rates they give in ``RATES``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.models import estimates

# GiB of activations per 1024² image (counted at 512², x4): (with checkpointing, without); eager and compiled
# (compiled: measured, rounds 15 and 18; eager without: that x 4.15 / 3.43, estimated; eager with: the compiled one, as
# SDXL's two checkpointed rates were equal). Round 18's checkpointed row (rank 16, compile + CUDA graphs): 2.49 GiB less
# 1.60 of weights and 0.10 of LoRA + AdamW = 0.79 at 512², 3.15 per 1024² image, where the estimate had 1.2: at 512²
# checkpointing keeps 63 % of the activations (no checkpointing: 1.26 at 512², the 5.0 below)
RATES = {"eager": (3.15, 6.05), "compiled": (3.15, 5.0)}
# CUDA graph pool per GiB of checkpointed activations (ModelSpec.graph_pool): reserved - allocated of the rows under
# graphs (round 15: 0.12 GiB; round 18: 0.18 checkpointed, 0.10 not) over the 0.79 GiB checkpointed at 512²
GRAPH_POOL = 0.2
# forward FLOPs per 1024² image-equivalent against SDXL's at 1024² (the reference rows' s/step is multiplied by it)
STEP_SCALE = 0.475
REFERENCE = "SDXL"
# measured rows (cards.toml's [[measured]] form without family; card defaults to "h100")
# (round 15's row, rank 32, no checkpointing, 0.077 s at 3.05 GiB, gave way to round 18's two rows: one call, one rank,
# checkpointing on and off side by side, beside sd-scripts at 0.273 s / 2.21 GiB)
MEASURED: tuple[dict[str, Any], ...] = (
    {"s_step": round(0.058 * 4, 3), "peak_gib": 2.49, "reserved_gib": 2.67, "pixels": 512 * 512, "compile": True,
     "cuda_graphs": True, "checkpoint_fraction": 1.0, "network": {"rank": 16},
     "source": "RESULTS.md round 18: peers.py sd15/r16+gc+compile-graphs (0.058 s at 512², x4 per 1024² image)"},
    {"s_step": round(0.062 * 4, 3), "peak_gib": 2.96, "reserved_gib": 3.06, "pixels": 512 * 512, "compile": True,
     "cuda_graphs": True, "checkpoint_fraction": 0.0, "network": {"rank": 16},
     "source": "RESULTS.md round 18: peers.py sd15/r16+vram6 (0.062 s at 512², x4 per 1024² image)"},
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
                          "" if custom else "compile + CUDA graphs, RESULTS.md round 18")
    if MEASURED and not custom:  # the measured kind replaces its estimates; the plan of another kind says it estimates
        measured = estimates.measured_rows("sd15", MEASURED)
        rows = estimates.merged(measured, estimates.calibrated(measured, rows))
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
