"""Z-Image's planning numbers: what ``memory.vram_gb`` and the automatic plan count for the 6 B transformer (Turbo and
base share its tensors).

Measured activations (GiB per 1024² image, 128 caption tokens: the peak less the frozen weights and the LoRA's fp32
weights, gradients and AdamW state; NVIDIA H100 80GB HBM3, benchmarks/RESULTS.md rounds 15-17): every block
checkpointed under compile 2.16, in bf16 (``zimage/gc+compile``: 14.21 GiB) and with fp8 compute
(``zimage/fp8c+compile``: 8.50) alike, but the allocator reserved 1.46 GiB more than that peak in the fp8 row (9.96),
so the rate with checkpointing is 2.40, which keeps both the allocated and the reserved peaks within 10 %; 30 of 34
checkpointed with fp8 compute 4.32 (``zimage/vram12``: 10.66), which at that rate puts the blocks left out of
checkpointing at 18.72 (:data:`RATES`' compiled pair). With fp8 weights a base Linear keeps no input for backward, so
the LoRA targets decide what a block left out keeps (:func:`lora_input_gib`): with diffusers' script's targets
(attention only; round 17) 27 of 34 checkpointed peaked at 10.35 GiB and 19 of 34 at 13.86, where these rates count
10.99 / 13.94 once the feed-forward inputs the script's targets do not keep are taken off (before, the plan at a 13.8
GiB cap checkpointed 27 blocks and left 3.5 GiB unused; it now checkpoints 22, not yet run on a GPU).

Measured: one setting (benchmarks/RESULTS.md round 15, NVIDIA H100 80GB HBM3, ``benchmarks/bench.py zimage/vram12``:
1024², batch 1, rank 16, AdamW, compile, fp8 compute, 30 of 34 blocks checkpointed: 0.339 s/step, 10.66 GiB allocated /
11.16 reserved), in :data:`MEASURED`; the plan of that kind of setting says "measured". The rates above re-predict its
peak exactly (10.66 GiB allocated, 11.41 with the reserve).

Every other number is an estimate, and a plan of another kind of setting says so (``ModelSpec.planning_estimate``). The
eager activation rates (and, until round 17, the compiled ones) come from ``benchmarks/estimate_activations.py``: the full-size transformer run on the meta device at
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
RATES = {"eager": (2.55, 23.77), "compiled": (2.40, 18.72)}  # eager: estimates (compiled x 1.27 without checkpointing)
# forward FLOPs per 1024² image against FLUX.1-dev's (the reference rows' s/step is multiplied by it)
STEP_SCALE = 0.761
REFERENCE = "FLUX.1-dev"
# measured rows (cards.toml's [[measured]] form without family; card defaults to "h100")
MEASURED: tuple[dict[str, Any], ...] = (
    {"s_step": 0.339, "peak_gib": 10.66, "reserved_gib": 11.16, "compile": True, "fp8_base": True, "fp8_compute": True,
     "checkpoint_fraction": 30 / 34, "source": "RESULTS.md round 15: bench.py zimage/vram12"},
)
ESTIMATED = True  # every setting but MEASURED's kind: the plan of another kind says so
MEASURED_NOTE = ("Z-Image: activation sizes measured under compile (RESULTS.md rounds 15-17; eager ones estimated from "
                 "its architecture), s/step scaled from FLUX.1-dev's rows by forward FLOPs (estimates; measured only: "
                 "fp8 compute + compile with checkpointing, RESULTS.md round 15)")
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
    note = estimates.note(f"Z-Image width {width}, {depth} blocks", REFERENCE) if custom else MEASURED_NOTE
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


# tokens per 1024² image: the 64 x 64 latent patches and the caption tokens the rows were measured with (128); the
# main blocks read both, the noise refiners the image only, the context refiners the caption only
IMAGE_TOKENS, TEXT_TOKENS = 4096, 128
# Linears that read another's input (one kept copy): k / v read q's, w3 reads w1's
SAME_INPUT = {"attention.to_k": "attention.to_q", "attention.to_v": "attention.to_q",
              "feed_forward.w3": "feed_forward.w1"}


def lora_input_gib(model: Any, paths: frozenset) -> dict[str, float]:
    """``ModelSpec.lora_input_gib``: per block, GiB per 1024² image that the inputs the LoRA-targeted Linears ``paths``
    keep (bf16, one copy per distinct input) add over those of the default targets (every attention and feed-forward
    Linear, which :data:`RATES` were measured with): 0 for the defaults, negative for fewer targets. A group sharing an
    input (q / k / v, w1 / w3) keeps it when any of its Linears is targeted."""
    from .lora_format import module_table

    c = model.config
    kept: dict[str, set[str]] = {}
    inputs: dict[str, dict[str, float]] = {}
    for _orig, parts, _kind in module_table(int(c.n_layers), int(c.n_refiner_layers)):
        for path in parts:
            stack, index, local = path.split(".", 2)  # "layers", "3", "attention.to_q"
            block = f"{stack}.{index}"
            tokens = IMAGE_TOKENS if stack == "noise_refiner" else TEXT_TOKENS if stack == "context_refiner" else \
                IMAGE_TOKENS + TEXT_TOKENS
            group = SAME_INPUT.get(local, local)
            sub = model.get_submodule(path)
            width = int(getattr(sub, "in_features", 0) or sub.base_layer.in_features)
            inputs.setdefault(block, {})[group] = tokens * width * 2 / 2**30
            if path in paths:
                kept.setdefault(block, set()).add(group)
    return {block: -sum(gib for group, gib in groups.items() if group not in kept.get(block, set()))
            for block, groups in inputs.items()}
