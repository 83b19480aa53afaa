"""SD 1.5's planning numbers: what ``memory.vram_gb`` and the automatic plan count for its 860 M U-Net at 512².

Not measured yet: every number below is an estimate, and a plan made from them says so (``ModelSpec.
planning_estimate``). The activation rates come from ``benchmarks/estimate_activations.py``: the full-size U-Net run
on the meta device at 512², batch 1, 77 CLIP tokens, its Linear and Conv2d traffic per block (the resnets and
transformer blocks lorakit checkpoints) priced at SDXL's measured bytes per unit (7.5 GiB eager / 6.2 compiled per
1024² image without checkpointing, 0.9 with it: RESULTS.md runs 1-2, 4), given, as every rate the planner reads, per
1024² image (the planner scales by pixels: a 512² image is a quarter). s/step: SDXL's measured rows times the forward
FLOPs per 1024² image-equivalent (``STEP_SCALE``), and the planner's pixel scaling again.

GPU rows to replace them: ``benchmarks/bench.py sd15/*`` (benchmarks/PENDING.md); put the measured rows in
``MEASURED`` and the rates they give in ``RATES``, and set ``ESTIMATED = False``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.models import estimates

# GiB of activations per 1024² image (counted at 512², x4): (with checkpointing, without); eager and compiled
RATES = {"eager": (1.2, 4.15), "compiled": (1.2, 3.43)}
# forward FLOPs per 1024² image-equivalent against SDXL's at 1024² (the reference rows' s/step is multiplied by it)
STEP_SCALE = 0.475
REFERENCE = "SDXL"
# measured rows (cards.toml's [[measured]] form without family; card defaults to "h100")
MEASURED: tuple[dict[str, Any], ...] = ()
ESTIMATED = True
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
    if MEASURED and not custom:
        rows, note = estimates.measured_rows("sd15", MEASURED), ""
    else:
        rows = estimates.scaled_rows("sd15", REFERENCE, STEP_SCALE * k)
        note = estimates.note("SD 1.5" if not custom else f"an SD 1.5 U-Net of widths {widths}", REFERENCE)
    return replace(spec, activation_gib=rates["eager"], activation_gib_compiled=rates["compiled"],
                   measured_steps=rows, planning_estimate=note if ESTIMATED or custom else "", variant_spec=None)


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
