"""Qwen-Image's planning numbers: what ``memory.vram_gb`` and the automatic plan count for the 20 B transformer (its
shape read from the checkpoint's header by ``lorakit plan``).

Not measured yet: every number below is an estimate, and a plan made from them says so (``ModelSpec.
planning_estimate``). The activation rates come from ``benchmarks/estimate_activations.py``: the full-size
transformer run on the meta device at 1024², batch 1, 128 caption tokens (the adapter drops the padding of the 512
cached; ``benchmarks/bench.py``'s rows feed 128), its Linear traffic per block priced at FLUX.1-dev's measured bytes
per unit (38.0 GiB eager / 29.9 compiled without checkpointing); with checkpointing, the blocks' inputs plus one block
recomputed, at the largest measured / counted ratio of FLUX.1-dev and FLUX.2 Klein 4B / 9B (the same accounting
predicts Klein 4B / 9B within 5 % of their measured rates without checkpointing). A caption of the full 512 tokens
adds about 9 % (4608 tokens instead of 4224). s/step: FLUX.1-dev's measured rows times the forward FLOPs per 1024²
image (``STEP_SCALE``). musubi-tuner reports 24 GB with fp8 weights and 16 swapped blocks, 12 GB with 45.

GPU rows to replace them: ``benchmarks/bench.py qwenimage/*`` (benchmarks/PENDING.md); put the measured rows in
``MEASURED`` and the rates they give in ``RATES``, and set ``ESTIMATED = False``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.models import estimates

# GiB of activations per 1024² image: (with checkpointing, without); eager and compiled
RATES = {"eager": (2.91, 38.07), "compiled": (2.91, 29.96)}
# forward FLOPs per 1024² image against FLUX.1-dev's (the reference rows' s/step is multiplied by it)
STEP_SCALE = 0.949
REFERENCE = "FLUX.1-dev"
# measured rows (cards.toml's [[measured]] form without family; card defaults to "h100")
MEASURED: tuple[dict[str, Any], ...] = ()
ESTIMATED = True
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
        rows, note = estimates.measured_rows("qwenimage", MEASURED), ""
    else:
        rows = estimates.scaled_rows("qwenimage", REFERENCE, STEP_SCALE * k, swap_blocks=depth)
        note = estimates.note("Qwen-Image" if not custom else f"Qwen-Image width {width}, {depth} blocks", REFERENCE)
    return replace(spec, activation_gib=rates["eager"], activation_gib_compiled=rates["compiled"],
                   measured_steps=rows, planning_estimate=note if ESTIMATED or custom else "", variant_spec=None,
                   component_gib=components())


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

    shape = detect(estimates.header(cfg, "Qwen-Image's transformer shape"), "model.checkpoint")
    tr = QwenImageTransformer2DModel(**init_kwargs(transformer_config(shape)))
    return tr, transformer_targets(cfg.network, shape.num_layers)
