"""Z-Image's planning numbers: what ``memory.vram_gb`` and the automatic plan count for the 6 B transformer (Turbo and
base share its tensors).

Measured: one setting (benchmarks/RESULTS.md round 15, NVIDIA H100 80GB HBM3, ``benchmarks/bench.py zimage/vram12``:
1024², batch 1, rank 16, AdamW, compile, fp8 compute, 30 of 34 blocks checkpointed: 0.339 s/step, 10.66 GiB allocated /
11.16 reserved), in :data:`MEASURED`; the plan of that kind of setting says "measured". The rates below re-predict its
peak within 4 % (11.07 GiB).

Every other number is an estimate, and a plan of another kind of setting says so (``ModelSpec.planning_estimate``). The
activation rates come from ``benchmarks/estimate_activations.py``: the full-size transformer run on the meta device at
1024², batch 1, 128 caption tokens (the adapter drops the padding; ``benchmarks/bench.py``'s rows feed 128), its Linear
traffic per block (30 main blocks, 2 noise and 2 context refiner blocks) priced at FLUX.1-dev's measured bytes per unit
(38.0 GiB eager / 29.9 compiled without checkpointing); with checkpointing, the blocks' inputs plus one block
recomputed, at the largest measured / counted ratio of FLUX.1-dev and FLUX.2 Klein 4B / 9B (the same accounting
predicts Klein 4B / 9B within 5 % of their measured rates without checkpointing). s/step: FLUX.1-dev's measured rows
times the forward FLOPs per 1024² image (``STEP_SCALE``).

GPU rows to replace them: ``benchmarks/bench.py zimage/*`` (benchmarks/PENDING.md); put the measured rows in
``MEASURED`` and the rates they give in ``RATES``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.models import estimates

# GiB of activations per 1024² image: (with checkpointing, without); eager and compiled
RATES = {"eager": (2.55, 26.83), "compiled": (2.55, 21.11)}
# forward FLOPs per 1024² image against FLUX.1-dev's (the reference rows' s/step is multiplied by it)
STEP_SCALE = 0.761
REFERENCE = "FLUX.1-dev"
# measured rows (cards.toml's [[measured]] form without family; card defaults to "h100")
MEASURED: tuple[dict[str, Any], ...] = (
    {"s_step": 0.339, "peak_gib": 10.66, "reserved_gib": 11.16, "compile": True, "fp8_base": True, "fp8_compute": True,
     "checkpoint_fraction": 30 / 34, "source": "RESULTS.md round 15: bench.py zimage/vram12"},
)
ESTIMATED = True  # every setting but MEASURED's kind: the plan of another kind says so
WIDTH, BLOCKS = 3840, 34  # 30 layers + 2 noise refiner + 2 context refiner blocks
# published parameter counts, loaded in bf16: Qwen3-4B and the 16-channel autoencoder (FLUX.1's)
ENCODER_PARAMS = 4.02e9
AE_PARAMS = 83.8e6


def spec_for(spec: Any, model: Any) -> Any:
    """``spec`` with the planning numbers of ``model`` (``ModelSpec.variant_spec``): the full-size numbers, or for
    another width / depth (tiny test models) those scaled by width x blocks."""
    c = model.config
    width, depth = int(c.dim), int(c.n_layers) + 2 * int(c.n_refiner_layers)
    k = width * depth / (WIDTH * BLOCKS)
    custom = (width, depth) != (WIDTH, BLOCKS)
    rates = {mode: (gc * k, nogc * k) for mode, (gc, nogc) in RATES.items()}
    rows = estimates.scaled_rows("zimage", REFERENCE, STEP_SCALE * k, swap_blocks=depth)
    note = estimates.note("Z-Image" if not custom else f"Z-Image width {width}, {depth} blocks", REFERENCE,
                          "" if custom else "fp8 compute + compile with checkpointing, RESULTS.md round 15")
    if MEASURED and not custom:  # the measured kind replaces its estimates; the plan of another kind says it estimates
        rows = estimates.merged(estimates.measured_rows("zimage", MEASURED), rows)
    return replace(spec, activation_gib=rates["eager"], activation_gib_compiled=rates["compiled"],
                   measured_steps=rows, planning_estimate=note if ESTIMATED or custom else "", variant_spec=None,
                   component_gib=components())


def components() -> tuple[tuple[str, float], ...]:
    """``ModelSpec.component_gib``: the autoencoder and the text encoder in bf16."""
    return (("vae", round(AE_PARAMS * 2 / 2**30, 2)), ("text encoders", round(ENCODER_PARAMS * 2 / 2**30, 2)))


def planning_model(cfg: Any) -> tuple[Any, dict[str, int]]:
    """The full-size transformer (one size: Turbo and base) on the current default device and its LoRA targets, for
    ``lorakit plan``."""
    from diffusers import ZImageTransformer2DModel

    from lorakit.models.base import init_kwargs

    from . import configs
    from .lora_format import transformer_targets

    conf = configs.transformer_config()
    tr = ZImageTransformer2DModel(**init_kwargs(conf))
    return tr, transformer_targets(cfg.network, conf["n_layers"], conf["n_refiner_layers"])
