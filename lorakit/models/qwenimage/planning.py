"""Qwen-Image's planning numbers: what ``memory.vram_gb`` and the automatic plan count for the 20 B transformer (its
shape read from the checkpoint's header by ``lorakit plan``).

Measured (benchmarks/RESULTS.md round 14: NVIDIA H100 80GB HBM3, ``benchmarks/bench.py`` rows ``qwenimage/*``;
full-size random weights, 1024², batch 1, 128 caption tokens (the adapter drops the padding of the 512 cached), rank
16, AdamW, bf16 autocast; peak = ``max_memory_allocated``):

=====================================================  ========  ============
setting                                                s/step    peak GiB
=====================================================  ========  ============
eager, fp8 storage, 16 of 60 blocks swapped, ckpt      1.267     18.68
eager, fp8 storage, 45 of 60 blocks swapped, ckpt      1.307     9.49
=====================================================  ========  ============

The activation rate with checkpointing is those peaks less what the planner counts besides activations, taken from
the full-size model built on the meta device (:func:`lorakit.train.budget.Sizes`): the resident blocks and the rest
of the transformer in fp8 storage with row scales (14.01 GiB with 16 blocks swapped, 4.82 with 45), the swap window
(``1 + swap.LOOKAHEAD`` blocks: 0.95) and the LoRA's fp32 weights, gradients and AdamW state (16 bytes per parameter:
106.2 M parameters = 1.58 GiB). Both rows give 2.14 GiB (2.138 / 2.138): the planner re-predicts both peaks within
0.1 %. musubi-tuner reports 24 GB with fp8 weights and 16 swapped blocks, 12 GB with 45.

Estimates, not measured (the s/step model says "extrapolated" for a setting no row covers, with the nearest measured
row and why):

* the compiled rate with checkpointing: the eager one (SD3.5 Medium's measured compiled rate is 0.95 of its eager
  one, and SD3.5 Large's fp8 storage under compile, the path Qwen-Image's fp8 tiers take, kept 0.69 of its bf16
  weights' rate; FLUX.2 Klein 4B's was 1.25 of its eager one), and the rate with bf16 weights: the fp8 rows' one;
* the rates without checkpointing: ``benchmarks/estimate_activations.py``'s (the full-size transformer run on the meta
  device at 1024², batch 1, 128 caption tokens (``benchmarks/bench.py``'s rows feed 128), its Linear traffic per block
  priced at FLUX.1-dev's measured bytes per unit, 38.0 GiB eager / 29.9 compiled; the same accounting predicts FLUX.2
  Klein 4B / 9B within 5 % of their measured rates without checkpointing). They are not scaled by the measured /
  estimated ratio of the checkpointed rate (2.14 against 2.91: 0.73): the checkpointed estimate erred by the largest
  measured / counted ratio of FLUX.1-dev and FLUX.2 it was priced at, which the rates without checkpointing do not
  use. A caption of the full 512 tokens adds about 9 % (4608 tokens instead of 4224);
* s/step of settings no row measured (compile, other swap depths than between 16 and 45, no swap, bf16 weights, fp8
  compute): the nearest measured row, as :func:`lorakit.train.cards.step_seconds` extrapolates (and says);
* another width or depth (tiny test models): the rates scaled by width x blocks, s/step FLUX.1-dev's rows scaled by
  forward FLOPs (``STEP_SCALE``), and the plan says so.

Rows not run yet: ``benchmarks/bench.py qwenimage/gc qwenimage/fp8 qwenimage/fp8+swap16+compile
qwenimage/fp8+swap45+compile`` (benchmarks/PENDING.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.models import estimates

# GiB of activations per 1024² image: (with checkpointing, without); eager and compiled
# (with checkpointing: measured eager, the compiled one taken equal; without: estimates; see the module doc)
RATES = {"eager": (2.14, 38.07), "compiled": (2.14, 29.96)}
# forward FLOPs per 1024² image against FLUX.1-dev's (the reference rows' s/step is multiplied by it)
STEP_SCALE = 0.949
REFERENCE = "FLUX.1-dev"
SOURCE = "RESULTS.md round 14: bench.py"
# measured rows (cards.toml's [[measured]] form without family; card defaults to "h100")
MEASURED: tuple[dict[str, Any], ...] = (
    {"s_step": 1.267, "peak_gib": 18.68, "fp8_base": True, "fp8_compute": False, "checkpoint_fraction": 1.0,
     "blocks_to_swap": 16, "source": f"{SOURCE} qwenimage/fp8+swap16"},
    {"s_step": 1.307, "peak_gib": 9.49, "fp8_base": True, "fp8_compute": False, "checkpoint_fraction": 1.0,
     "blocks_to_swap": 45, "source": f"{SOURCE} qwenimage/fp8+swap45"},
)
# planned from estimates alone (the plan says so): no longer, since the rows above
ESTIMATED = False
WIDTH, BLOCKS = 3072, 60
# published parameter counts, loaded in bf16: Qwen2.5-VL-7B's language model (no vision tower, no LM head) and the
# Qwen-Image VAE (Wan 2.1's layout)
ENCODER_PARAMS = 7.07e9
AE_PARAMS = 126.9e6


def spec_for(spec: Any, model: Any) -> Any:
    """``spec`` with the planning numbers of ``model`` (``ModelSpec.variant_spec``): the full-size numbers, or for
    another width / depth (tiny test models) those scaled by width x blocks."""
    c = model.config
    width, depth = int(c.num_attention_heads) * int(c.attention_head_dim), int(c.num_layers)
    k = width * depth / (WIDTH * BLOCKS)
    custom = (width, depth) != (WIDTH, BLOCKS)
    rates = {mode: (gc * k, nogc * k) for mode, (gc, nogc) in RATES.items()}
    if MEASURED and not custom:
        rows, note = steps(), ""
    else:
        rows = estimates.scaled_rows("qwenimage", REFERENCE, STEP_SCALE * k, swap_blocks=depth)
        note = estimates.note("Qwen-Image" if not custom else f"Qwen-Image width {width}, {depth} blocks", REFERENCE)
    return replace(spec, activation_gib=rates["eager"], activation_gib_compiled=rates["compiled"],
                   measured_steps=rows, planning_estimate=note if ESTIMATED or custom else "", variant_spec=None,
                   component_gib=components())


def steps() -> tuple[dict[str, Any], ...]:
    """The s/step model's rows: the measured (eager) rows, and the same settings under compile marked estimated
    (``estimates.compiled``)."""
    measured = estimates.measured_rows("qwenimage", MEASURED)
    return measured + estimates.compiled(measured)


def components() -> tuple[tuple[str, float], ...]:
    """``ModelSpec.component_gib``: the VAE and the text encoder in bf16."""
    return (("vae", round(AE_PARAMS * 2 / 2**30, 2)), ("text encoders", round(ENCODER_PARAMS * 2 / 2**30, 2)))


def planning_model(cfg: Any) -> tuple[Any, dict[str, int]]:
    """The transformer of ``model.checkpoint``'s shape (read from its header: no tensor is read) on the current default
    device, and its LoRA targets, for ``lorakit plan``."""
    from diffusers import QwenImageTransformer2DModel

    from lorakit.models.base import init_kwargs

    from .convert import detect, transformer_config
    from .lora_format import transformer_targets

    from pathlib import Path

    from .configs import read_config

    shape = detect(estimates.header(cfg, "Qwen-Image's transformer shape"), "model.checkpoint")
    # the config folder as the loader reads it: model.config_dir, else a diffusers folder's own (a toy or pruned model's
    # rotary axes are not in the weights' shapes)
    cdir = getattr(cfg.model, "config_dir", None)
    src = Path(cfg.model.checkpoint).expanduser()
    cdir = cdir or (str(src) if src.is_dir() else None)
    tr = QwenImageTransformer2DModel(**init_kwargs(transformer_config(shape, read_config(cdir, "transformer"))))
    return tr, transformer_targets(cfg.network, shape.num_layers)
