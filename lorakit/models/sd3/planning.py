"""SD3.5's planning numbers per size: what ``memory.vram_gb`` and the automatic plan count for Medium and Large (Large
Turbo and SD3 Medium share these tensors' sizes), read from the checkpoint's header by ``lorakit plan``.

Measured (benchmarks/RESULTS.md round 14: NVIDIA H100 80GB HBM3, ``benchmarks/bench.py`` rows ``sd35m/*`` /
``sd35l/*``; full-size random weights, 1024², batch 1, 77 CLIP + 256 T5 tokens, rank 16, AdamW, bf16 autocast; peak =
``max_memory_allocated``):

============  ==========================================  ========  ============
size          setting                                     s/step    peak GiB
============  ==========================================  ========  ============
Medium        eager, every block checkpointed             0.397     5.95
Medium        compile, checkpointed (fused AdamW)         0.172     5.91
Medium        compile, 25 % checkpointed (round 15)       0.215     11.00
Medium        compile + CUDA graphs, ckpt (round 18)      0.131     5.88
Large         compile, checkpointed (fused AdamW)         0.297     18.02
Large         compile, 63 % checkpointed (round 15)       0.350     23.11
Large         fp8 storage (bf16 matmuls) + compile, ckpt  0.522     10.02
============  ==========================================  ========  ============

Round 15 (same card and settings; ``sd35m/vram12`` / ``sd35l/vram24``, the tiers' plans before they compared partial
with full checkpointing) measured partial checkpointing *slower* than every block checkpointed, at twice the memory:
the s/step model now interpolates between these measurements rather than towards the estimated row without
checkpointing (lorakit/train/cards.py: measured_over_estimates), and the tiers plan full checkpointing. Both peaks are
re-predicted within 1 % by the rates below (11.05 against 11.00, 23.00 against 23.11 GiB).

The activation rates with checkpointing are those peaks less what the planner counts besides activations, taken from
the full-size model built on the meta device (:func:`lorakit.train.budget.Sizes`): the frozen weights (bf16: 4.60 GiB
Medium, 15.17 Large; Large in fp8 storage with row scales: 7.72) and the LoRA's fp32 weights, gradients and AdamW state
(16 bytes per parameter: 32.5 M / 73.2 M parameters = 0.49 / 1.09 GiB). Medium: 0.865 GiB eager, 0.825 compiled (kept
as 0.87 / 0.83). Large under compile: 1.76 with bf16 weights, 1.21 with fp8 storage (each block then runs inside
lorakit's own checkpoint); one rate serves both, their mean 1.48, which re-predicts both peaks within 3 % (17.74
against 18.02, −1.5 %, and with the reserve 18.49 GiB, above the 18.47 reserved; 10.29 against 10.02, +2.7 %).

Estimates, not measured (the s/step model says "extrapolated" for a setting no row covers, with the nearest measured
row and why):

* Large's eager rate with checkpointing: its bf16 compiled one times Medium's measured eager / compiled ratio (1.76 x
  0.865 / 0.825 = 1.84);
* the rates without checkpointing: ``benchmarks/estimate_activations.py``'s (the full-size transformer run on the meta
  device at 1024², its Linear traffic per block priced at FLUX.1-dev's measured bytes per unit, 38.0 GiB eager / 29.9
  compiled; the same accounting predicts FLUX.2 Klein 4B / 9B within 5 % of their measured rates without
  checkpointing). They are not scaled by the measured / estimated ratio of the checkpointed rates: that ratio was
  0.79 / 0.75 for Medium and 0.81 for Large (1.48 against 1.82), and the checkpointed estimate erred by the largest
  measured / counted ratio of FLUX.1-dev and FLUX.2 it was priced at, which the rates without checkpointing do not use;
* s/step of settings no row measured (no checkpointing, CUDA graphs, fp8 compute, block swap, eager Large): the
  nearest measured row, as :func:`lorakit.train.cards.step_seconds` extrapolates (and says);
* any other width (tiny test models): the rates of the nearest size scaled by width x blocks, s/step FLUX.1-dev's rows
  scaled by forward FLOPs (``STEP_SCALE``), and the plan says so.

Rows not run yet: ``benchmarks/bench.py sd35m/nogc+compile sd35l/gc sd35l/fp8+swap12`` (benchmarks/PENDING.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.models import estimates

# GiB of activations per 1024² image: (with checkpointing, without); eager and compiled
# (with checkpointing: measured, Large's eager rate derived; without: estimates; see the module doc)
RATES = {
    "medium": {"eager": (0.87, 9.77), "compiled": (0.83, 7.69)},
    "large": {"eager": (1.84, 20.01), "compiled": (1.48, 15.75)},
}
# forward FLOPs per 1024² image against FLUX.1-dev's (the reference rows' s/step is multiplied by it)
STEP_SCALE = {"medium": 0.151, "large": 0.418}
REFERENCE = "FLUX.1-dev"
SOURCE = "RESULTS.md round 14: bench.py"
SOURCE15 = "RESULTS.md round 15: bench.py"
SOURCE18 = "RESULTS.md round 18: peers.py"
# CUDA graph pool per GiB of checkpointed activations (ModelSpec.graph_pool): Medium's compile + CUDA graphs row kept
# 0.41 GiB reserved above its 5.88 allocated, for 0.83 GiB of checkpointed activations (round 18)
GRAPH_POOL = 0.5
# measured rows per size (cards.toml's [[measured]] form without family; card defaults to "h100")
MEASURED: dict[str, tuple[dict[str, Any], ...]] = {
    "medium": (
        {"s_step": 0.397, "peak_gib": 5.95, "checkpoint_fraction": 1.0, "source": f"{SOURCE} sd35m/gc"},
        {"s_step": 0.172, "peak_gib": 5.91, "compile": True, "checkpoint_fraction": 1.0,
         "source": f"{SOURCE} sd35m/gc+compile"},
        {"s_step": 0.215, "peak_gib": 11.00, "reserved_gib": 11.14, "compile": True, "checkpoint_fraction": 0.25,
         "source": f"{SOURCE15} sd35m/vram12"},
        # beside sd-scripts (0.401 s, 6.10 GiB) on one H100, where the same setting without graphs ran 0.186 s
        {"s_step": 0.131, "peak_gib": 5.88, "reserved_gib": 6.29, "compile": True, "cuda_graphs": True,
         "checkpoint_fraction": 1.0, "source": f"{SOURCE18} sd35m/gc+compile-graphs"},
    ),
    "large": (
        {"s_step": 0.297, "peak_gib": 18.02, "compile": True, "checkpoint_fraction": 1.0,
         "source": f"{SOURCE} sd35l/gc+compile"},
        {"s_step": 0.350, "peak_gib": 23.11, "reserved_gib": 23.41, "compile": True, "checkpoint_fraction": 24 / 38,
         "source": f"{SOURCE15} sd35l/vram24"},
        {"s_step": 0.522, "peak_gib": 10.02, "compile": True, "fp8_base": True, "fp8_compute": False,
         "checkpoint_fraction": 1.0, "source": f"{SOURCE} sd35l/fp8+compile"},
    ),
}
# the sizes still planned from estimates alone (their plans say so)
ESTIMATED: tuple[str, ...] = ()
NAMES = {"medium": "SD3.5 Medium", "large": "SD3.5 Large"}
# the planning size of each variant the loader names (convert.Shape.variant)
SIZE_OF = {"large": "large", "large-turbo": "large", "medium": "medium", "sd3-medium": "medium"}
# published parameter counts, loaded in bf16: CLIP-L (with projection) + OpenCLIP bigG + T5-XXL's encoder; the
# 16-channel autoencoder (FLUX.1's layout)
ENCODER_PARAMS = 123.7e6 + 694.7e6 + 4.76e9
AE_PARAMS = 83.8e6


def size_of(model: Any) -> tuple[str, int, int]:
    """(planning size, width, blocks) of an SD3Transformer2DModel (loaded or on the meta device); "custom" for other
    sizes (tiny test models), planned from the nearest size scaled by width x blocks."""
    c = model.config
    width, depth = int(c.num_attention_heads) * int(c.attention_head_dim), int(c.num_layers)
    size = {(1536, 24): "medium", (2432, 38): "large"}.get((width, depth), "custom")
    return size, width, depth


def _extent(size: str) -> int:
    return {"medium": 1536 * 24, "large": 2432 * 38}[size]


def spec_for(spec: Any, model: Any) -> Any:
    """``spec`` with the planning numbers of ``model``'s size (``ModelSpec.variant_spec``)."""
    size, width, depth = size_of(model)
    base = size if size != "custom" else ("medium" if width * depth <= _extent("medium") else "large")
    k = 1.0 if size != "custom" else width * depth / _extent(base)
    rates = {mode: (gc * k, nogc * k) for mode, (gc, nogc) in RATES[base].items()}
    if base in MEASURED and size != "custom":
        rows, note = steps(base), ""
    else:
        rows = estimates.scaled_rows("sd3", REFERENCE, STEP_SCALE[base] * k, swap_blocks=depth)
        name = NAMES[base] if size != "custom" else f"SD3 width {width}, {depth} blocks"
        note = estimates.note(name, REFERENCE)
    return replace(spec, activation_gib=rates["eager"], activation_gib_compiled=rates["compiled"],
                   measured_steps=rows, planning_estimate=note if base in ESTIMATED or size == "custom" else "",
                   variant_spec=None, component_gib=components(), graph_pool=GRAPH_POOL)


def steps(size: str) -> tuple[dict[str, Any], ...]:
    """The s/step model's rows of a measured size: its measured rows, and the same bf16 settings without checkpointing
    (without CUDA graphs) marked estimated (``estimates.without_checkpointing``)."""
    measured = estimates.measured_rows("sd3", MEASURED[size])
    # not from the CUDA graphs row: partial checkpointing measured slower than full (round 15) is known only without
    # graphs, so a graphs plan without checkpointing would rest on an estimate alone; graphs plans stay fully checkpointed
    return measured + estimates.without_checkpointing(tuple(r for r in measured if not r.get("cuda_graphs")))


def components() -> tuple[tuple[str, float], ...]:
    """``ModelSpec.component_gib``: the autoencoder and the three text encoders in bf16; "trained text encoders": the
    two CLIPs ``network.train_text_encoder`` keeps on the GPU while training (T5 is not trained)."""
    return (("vae", round(AE_PARAMS * 2 / 2**30, 2)), ("text encoders", round(ENCODER_PARAMS * 2 / 2**30, 2)),
            ("trained text encoders", round((123.7e6 + 694.7e6) * 2 / 2**30, 2)))


def planning_model(cfg: Any) -> tuple[Any, dict[str, int]]:
    """The full-size transformer of ``model.checkpoint``'s size (read from its header: no tensor is read) on the
    current default device, and its LoRA targets, for ``lorakit plan``."""
    from diffusers import SD3Transformer2DModel

    from lorakit.models.base import init_kwargs

    from .convert import detect, transformer_config
    from .lora_format import transformer_targets

    shape = detect(estimates.header(cfg, "SD3.5's size (Medium / Large)"), "model.checkpoint")
    tr = SD3Transformer2DModel(**init_kwargs(transformer_config(shape)))
    return tr, transformer_targets(cfg.network, shape.depth, shape.dual_layers)
