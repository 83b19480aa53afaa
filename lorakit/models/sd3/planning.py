"""SD3.5's planning numbers per size: what ``memory.vram_gb`` and the automatic plan count for Medium and Large (Large
Turbo and SD3 Medium share these tensors' sizes), read from the checkpoint's header by ``lorakit plan``.

Not measured yet: every number below is an estimate, and a plan made from them says so (``ModelSpec.
planning_estimate``). The activation rates come from ``benchmarks/estimate_activations.py``: the full-size
transformer run on the meta device at 1024², batch 1, 77 CLIP + 256 T5 tokens, its Linear traffic per block priced at
FLUX.1-dev's measured bytes per unit (38.0 GiB eager / 29.9 compiled without checkpointing); with checkpointing, the
blocks' inputs plus one block recomputed, at the largest measured / counted ratio of FLUX.1-dev and FLUX.2 Klein
4B / 9B. The same accounting predicts Klein 4B / 9B within 5 % of their measured rates without checkpointing (12.0 /
20.7 against 12.53 / 21.15 GiB compiled). s/step: FLUX.1-dev's measured rows times the forward FLOPs per 1024² image
(``STEP_SCALE``). GPU rows to replace them: ``benchmarks/bench.py sd35m/* sd35l/*`` (benchmarks/PENDING.md); put the
measured rows in ``MEASURED`` and the rates they give in ``RATES``, and drop the size from ``ESTIMATED``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.models import estimates

# GiB of activations per 1024² image: (with checkpointing, without); eager and compiled
RATES = {
    "medium": {"eager": (1.10, 9.77), "compiled": (1.10, 7.69)},
    "large": {"eager": (1.82, 20.01), "compiled": (1.82, 15.75)},
}
# forward FLOPs per 1024² image against FLUX.1-dev's (the reference rows' s/step is multiplied by it)
STEP_SCALE = {"medium": 0.151, "large": 0.418}
REFERENCE = "FLUX.1-dev"
# measured rows per size (cards.toml's [[measured]] form without family; card defaults to "h100")
MEASURED: dict[str, tuple[dict[str, Any], ...]] = {}
ESTIMATED = ("medium", "large")
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
        rows, note = estimates.measured_rows("sd3", MEASURED[base]), ""
    else:
        rows = estimates.scaled_rows("sd3", REFERENCE, STEP_SCALE[base] * k, swap_blocks=depth)
        name = NAMES[base] if size != "custom" else f"SD3 width {width}, {depth} blocks"
        note = estimates.note(name, REFERENCE)
    return replace(spec, activation_gib=rates["eager"], activation_gib_compiled=rates["compiled"],
                   measured_steps=rows, planning_estimate=note if base in ESTIMATED or size == "custom" else "",
                   variant_spec=None, component_gib=components())


def components() -> tuple[tuple[str, float], ...]:
    """``ModelSpec.component_gib``: the autoencoder and the three text encoders in bf16."""
    return (("vae", round(AE_PARAMS * 2 / 2**30, 2)), ("text encoders", round(ENCODER_PARAMS * 2 / 2**30, 2)))


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
