"""FLUX.2's planning numbers per size: what ``memory.vram_gb`` and the automatic plan count for Klein 4B, Klein 9B
and dev, and the measured steps the s/step model starts from.

Measured (benchmarks/RESULTS.md rounds 12, 13 and 15: NVIDIA H100 80GB HBM3, ``benchmarks/bench.py`` rows
``flux2-4b/*`` / ``flux2-9b/*`` / ``flux2-dev/*``; 1024², batch 1, 512 text tokens, rank 16 on every FLUX.2 target,
AdamW, bf16 autocast; peak = ``max_memory_allocated``, and from round 15 ``max_memory_reserved`` too):

============  ===================================================  ========  ============
size          setting                                              s/step    peak GiB
============  ===================================================  ========  ============
Klein 4B      eager, every block checkpointed                      0.409     9.17
Klein 4B      compile, checkpointed                                0.236     9.54
Klein 4B      compile + CUDA graphs, checkpointed (round 15)       0.225     9.64
Klein 4B      fp8 compute + compile, checkpointed                  0.213     6.01
Klein 4B      fp8 compute + compile, 92 % checkpointed (round 15)  0.207     6.90
Klein 4B      compile, no checkpointing                            0.171     20.11
Klein 9B      compile, checkpointed                                0.447     20.34
Klein 9B      compile + CUDA graphs, checkpointed (round 15)       0.443     20.48
Klein 9B      fp8 compute + compile, checkpointed                  0.405     12.03
Klein 9B      fp8 compute + compile, 84 % checkpointed (round 15)  0.388     15.07
Klein 9B      fp8 storage + compile, 8 blocks swapped (round 15)   0.494     10.78
Klein 9B      compile, no checkpointing                            0.337     38.71
dev           fp8 compute + compile, checkpointed (round 13)       1.284     37.14
dev           fp8 storage + compile, checkpointed (round 13)       1.629     36.13
dev           fp8 storage + compile, 36 blocks swapped (round 15)  1.629     20.12
dev           fp8 storage + compile, 21 blocks swapped (round 15)  1.624     27.89
============  ===================================================  ========  ============

The activation rates below are those peaks less what the planner counts besides activations, taken from the full-size
model built on the meta device (:func:`lorakit.train.budget.Sizes`): the frozen weights (bf16: 7.22 GiB at 4B, 16.91 at
9B, 60.0 at dev; fp8 storage with row scales: 3.66 / 8.56 / 30.26) and the LoRA's fp32 weights, gradients and AdamW
state (16 bytes per parameter: 24.1 M / 43.5 M / 100.7 M parameters = 0.36 / 0.65 / 1.50 GiB). With checkpointing fp8
compute kept about as much as bf16 (4B 1.99 against 1.96 GiB), so one rate, the larger, serves both. dev with
checkpointing: 5.38 GiB with fp8 compute (each block checkpointed inside its compiled region), 4.37 with fp8 storage
(inside lorakit's own checkpoint; the same 4.37 from both swap rows): the larger serves both, within 6 % of every dev
peak. Without checkpointing, the blocks left out of it under fp8 compute kept more than bf16's compiled rate
(12.53 / 21.15 GiB): 4B at 92 % checkpointed (flux2-4b/vram8, two single blocks left out) 13.13, at 76 % (diffusers'
script's targets, one double and five single blocks left out; H100, 2026-12-07, commit e4cb90c) 13.46 once the
0.11 GiB of inputs that the default targets' LoRAs keep in that double block is added (:func:`lora_input_gib`); 9B at
84 % (flux2-9b/vram16) 22.23. The larger, 13.46 / 22.23, serves both (the bf16 rows without checkpointing then predict
+4.6 / +2.8 %); the default targets at 76 % are then counted at 8.76 GiB allocated, where they ran out of memory with
8.50 allocated and 0.24 asked under a 9 GiB cap (0.27 GiB fragmented). CUDA graphs added 0.10 / 0.14 GiB to the 4B /
9B peaks (0.05 GiB per GiB of checkpointed activations:
:data:`GRAPH_POOL`), not the 1.2 SDXL measured.

Not measured, and planned from estimates that the plan and the s/step model say are estimates:

* the eager rate without checkpointing: the compiled one times 1.27 (FLUX.1-dev's eager / compiled ratio, 38.0 / 29.9
  GiB); Klein 9B's and dev's eager rate with checkpointing: their compiled one (4B's eager rate measured 0.81 of its
  compiled one, so this errs towards fitting);
* dev without checkpointing: Klein 9B's rates scaled by width x block count (6144 x 56 against 4096 x 32: 2.625x); dev's
  bf16 settings' s/step: Klein 9B's rows scaled by parameter count (32.2 B against 9.08 B) (:data:`DEV_ESTIMATED`);
* any other width (the toy and test models): Klein 4B's rates scaled the same way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.models import estimates

from . import configs

# GiB of activations per 1024² image: (with checkpointing, without); eager and compiled
RATES = {
    "klein-4b": {"eager": (1.59, 17.09), "compiled": (1.99, 13.46)},
    "klein-9b": {"eager": (2.83, 28.23), "compiled": (2.83, 22.23)},
    # with checkpointing measured (rounds 13 / 15); without: Klein 9B's x 2.625 (width x blocks), estimates
    "dev": {"eager": (5.38, 74.1), "compiled": (5.38, 58.35)},
}
# CUDA graph pool per GiB of checkpointed activations (ModelSpec.graph_pool; rounds 12 / 15 with and without graphs)
GRAPH_POOL = 0.05
SOURCE = "RESULTS.md round {round} (H100)"
# rows of the s/step model (lorakit/train/cards.toml's [[measured]] form; "round": the RESULTS.md round), per size
ROWS = {
    "klein-4b": (
        {"s_step": 0.409, "peak_gib": 9.17, "checkpoint_fraction": 1.0, "source": "flux2-4b/gc (eager)", "round": 12},
        {"s_step": 0.236, "peak_gib": 9.54, "compile": True, "checkpoint_fraction": 1.0,
         "source": "flux2-4b/gc+compile", "round": 12},
        {"s_step": 0.213, "peak_gib": 6.01, "compile": True, "fp8_base": True, "fp8_compute": True,
         "checkpoint_fraction": 1.0, "source": "flux2-4b/fp8c+compile", "round": 12},
        {"s_step": 0.171, "peak_gib": 20.11, "compile": True, "checkpoint_fraction": 0.0,
         "source": "flux2-4b/nogc+compile", "round": 12},
        {"s_step": 0.207, "peak_gib": 6.90, "reserved_gib": 7.23, "compile": True, "fp8_base": True,
         "fp8_compute": True, "checkpoint_fraction": 0.92, "source": "flux2-4b/vram8", "round": 15},
        {"s_step": 0.225, "peak_gib": 9.64, "reserved_gib": 10.22, "compile": True, "cuda_graphs": True,
         "checkpoint_fraction": 1.0, "source": "flux2-4b/gc+compile-graphs", "round": 15},
    ),
    "klein-9b": (
        {"s_step": 0.447, "peak_gib": 20.34, "compile": True, "checkpoint_fraction": 1.0,
         "source": "flux2-9b/gc+compile", "round": 12},
        {"s_step": 0.405, "peak_gib": 12.03, "compile": True, "fp8_base": True, "fp8_compute": True,
         "checkpoint_fraction": 1.0, "source": "flux2-9b/fp8c+compile", "round": 12},
        {"s_step": 0.337, "peak_gib": 38.71, "compile": True, "checkpoint_fraction": 0.0,
         "source": "flux2-9b/nogc+compile", "round": 12},
        {"s_step": 0.494, "peak_gib": 10.78, "reserved_gib": 11.50, "compile": True, "fp8_base": True,
         "checkpoint_fraction": 1.0, "blocks_to_swap": 8, "source": "flux2-9b/vram12", "round": 15},
        {"s_step": 0.388, "peak_gib": 15.07, "reserved_gib": 15.50, "compile": True, "fp8_base": True,
         "fp8_compute": True, "checkpoint_fraction": 0.84375, "source": "flux2-9b/vram16", "round": 15},
        {"s_step": 0.443, "peak_gib": 20.48, "reserved_gib": 21.23, "compile": True, "cuda_graphs": True,
         "checkpoint_fraction": 1.0, "source": "flux2-9b/gc+compile-graphs", "round": 15},
    ),
    "dev": (
        {"s_step": 1.284, "peak_gib": 37.14, "reserved_gib": 38.57, "compile": True, "fp8_base": True,
         "fp8_compute": True, "checkpoint_fraction": 1.0, "source": "flux2-dev/fp8c+compile", "round": 13},
        {"s_step": 1.629, "peak_gib": 36.13, "reserved_gib": 37.72, "compile": True, "fp8_base": True,
         "checkpoint_fraction": 1.0, "source": "flux2-dev/fp8+compile", "round": 13},
        {"s_step": 1.629, "peak_gib": 20.12, "reserved_gib": 21.17, "compile": True, "fp8_base": True,
         "checkpoint_fraction": 1.0, "blocks_to_swap": 36, "source": "flux2-dev/vram24", "round": 15},
        {"s_step": 1.624, "peak_gib": 27.89, "reserved_gib": 28.89, "compile": True, "fp8_base": True,
         "checkpoint_fraction": 1.0, "blocks_to_swap": 21, "source": "flux2-dev/vram32", "round": 15},
    ),
}
# the measured size an unmeasured one is scaled from
SCALED_FROM = {"dev": "klein-9b", "custom": "klein-4b"}
ESTIMATED = ("FLUX.2 {size}'s memory and speed are not measured: activation sizes scaled from {base}'s by width x "
             "block count, s/step by parameter count (estimates; benchmarks/RESULTS.md has no {size} row yet)")
# dev: what its measured rows do not cover (the plan says it where its setting is not of a measured kind)
DEV_ESTIMATED = ("FLUX.2 dev: this setting's memory and speed are not measured (measured: fp8 with checkpointing, "
                 "RESULTS.md rounds 13 / 15): activation sizes without checkpointing scaled from klein-9b's by width "
                 "x block count, s/step by parameter count (estimates)")


def _rows(size: str) -> tuple[dict[str, Any], ...]:
    return tuple({"family": "flux2", "card": "h100", **{k: v for k, v in r.items() if k != "round"},
                  "source": f"{SOURCE.format(round=r['round'])}: {r['source']}"} for r in ROWS[size])


ALL_ROWS = _rows("klein-4b") + _rows("klein-9b") + _rows("dev")


def size_of(model: Any) -> tuple[str, int, int, int]:
    """(size, hidden width, double blocks, single blocks) of a Flux2Transformer2DModel (loaded or on the meta
    device, LoRA injected or not)."""
    c = model.config
    hidden = int(c.num_attention_heads) * int(c.attention_head_dim)
    nd, ns = int(c.num_layers), int(c.num_single_layers)
    size = configs.HIDDEN_TO_SIZE.get(hidden, "custom")
    if size != "custom" and configs.SIZE_FACTS[size][:2] != (nd, ns):
        size = "custom"
    return size, hidden, nd, ns


def _extent(size: str) -> tuple[int, int]:
    """(hidden width, blocks) of a shipped size."""
    hidden = {v: k for k, v in configs.HIDDEN_TO_SIZE.items()}[size]
    nd, ns = configs.SIZE_FACTS[size][:2]
    return hidden, nd + ns


def spec_for(spec: Any, model: Any) -> Any:
    """``spec`` with the planning numbers of ``model``'s size (``ModelSpec.variant_spec``)."""
    size, hidden, nd, ns = size_of(model)
    base = SCALED_FROM.get(size, "klein-4b")
    if size in RATES and size in ROWS and size not in SCALED_FROM:
        rates, rows, note = RATES[size], _rows(size), ""
    else:
        bh, bn = _extent(base)
        k = hidden * (nd + ns) / (bh * bn)
        rates = RATES.get(size) or {mode: (gc * k, nogc * k) for mode, (gc, nogc) in RATES[base].items()}
        params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        ratio = params / _parameters(base)
        rows = tuple({**r, "s_step": round(r["s_step"] * ratio, 4), "peak_gib": None,
                      "estimated": f"scaled from {base} by parameter count ({ratio:.2f}x)",
                      "source": r["source"] + f", scaled to {size}"} for r in _rows(base))
        name = "dev" if size == "dev" else f"width {hidden}, {nd}+{ns} blocks"
        note = ESTIMATED.format(size=name, base=base)
        if size in ROWS:  # dev: its measured rows, and the scaled ones of the kinds it has no row of
            rows, note = estimates.merged(_rows(size), rows), DEV_ESTIMATED
    return replace(spec, activation_gib=rates["eager"], activation_gib_compiled=rates["compiled"],
                   measured_steps=rows, planning_estimate=note, variant_spec=None, graph_pool=GRAPH_POOL,
                   component_gib=components(size if size in ENCODER_PARAMS else "klein-4b"))


# published parameter counts of the text encoders (Qwen3-4B, Qwen3-8B, Mistral Small 3.1's language model) and of the
# FLUX.2 autoencoder (84 M), loaded in bf16
ENCODER_PARAMS = {"klein-4b": 4.02e9, "klein-9b": 8.19e9, "dev": 23.6e9}
AE_PARAMS = 84e6


# tokens per 1024² image: the 64 x 64 latent patches and the 512 caption tokens the rows were measured with
IMAGE_TOKENS, TEXT_TOKENS = 4096, 512
# a double block's Linears that read the text stream; to_k / to_v read to_q's input, add_k / add_v add_q's
TEXT_LINEARS = ("attn.add_", "attn.to_add_out", "ff_context.")
SAME_INPUT = {"attn.to_k": "attn.to_q", "attn.to_v": "attn.to_q", "attn.add_k_proj": "attn.add_q_proj",
              "attn.add_v_proj": "attn.add_q_proj"}


def lora_input_gib(model: Any, paths: frozenset) -> dict[str, float]:
    """``ModelSpec.lora_input_gib``: per repeated block, GiB per 1024² image that the inputs the LoRA-targeted Linears
    ``paths`` keep (bf16, one copy per distinct input: q / k / v share one) add over those of every block Linear, the
    default targets :data:`RATES` were measured with (0 for the defaults, negative for fewer targets).

    Counted where the base Linears keep no input (fp8 storage / compute): on Klein 4B at 76 % checkpointing, the
    default targets (100 Linears) ran out of memory at a 9 GiB cap where diffusers' script's (60: no text attention,
    no double-block MLPs) peaked at 8.54 GiB allocated; the one double block left out of checkpointing keeps 0.11 GiB
    of inputs for those 40 LoRAs (H100, 2026-12-07, bench.py at commit e4cb90c)."""
    from .lora_format import module_table

    c = model.config
    out: dict[str, float] = {}
    for _bfl, parts, kind in module_table(int(c.num_layers), int(c.num_single_layers)):
        for path in parts:
            stack, index, local = path.split(".", 2)  # "transformer_blocks", "2", "attn.to_q"
            block = f"{stack}.{index}"
            if local in SAME_INPUT:
                continue  # counted once, with its group's first Linear (not targeted alone: q / k / v go together)
            tokens = IMAGE_TOKENS + TEXT_TOKENS if kind == "single" else \
                TEXT_TOKENS if local.startswith(TEXT_LINEARS) else IMAGE_TOKENS
            sub = model.get_submodule(path)
            width = int(getattr(sub, "in_features", 0) or sub.base_layer.in_features)
            if path not in paths:
                out[block] = out.get(block, 0.0) - tokens * width * 2 / 2**30
            else:
                out.setdefault(block, 0.0)
    return out


def components(size: str) -> tuple[tuple[str, float], ...]:
    """``ModelSpec.component_gib`` of a size: the autoencoder and the text encoder in bf16."""
    return (("vae", round(AE_PARAMS * 2 / 2**30, 2)), ("text encoders", round(ENCODER_PARAMS[size] * 2 / 2**30, 2)))


def _parameters(size: str) -> int:
    """Frozen parameters of a shipped size's transformer (counted on the meta device once)."""
    if size not in _PARAMS:
        import torch
        from diffusers import Flux2Transformer2DModel

        from lorakit.models.base import init_kwargs

        with torch.device("meta"):
            tr = Flux2Transformer2DModel(**init_kwargs(configs.transformer_config(size)))
        _PARAMS[size] = sum(p.numel() for p in tr.parameters())
    return _PARAMS[size]


_PARAMS: dict[str, int] = {}


def planning_model(cfg: Any) -> tuple[Any, dict[str, int]]:
    """The full-size transformer of ``model.checkpoint``'s size (read from its header: no tensor is read) on the
    current default device, and its LoRA targets, for ``lorakit plan``."""
    from diffusers import Flux2Transformer2DModel

    from lorakit.models.base import init_kwargs

    from .convert import detect, transformer_config
    from .lora_format import transformer_targets

    shape = detect(_header(cfg), "model.checkpoint")
    tr = Flux2Transformer2DModel(**init_kwargs(transformer_config(shape)))
    return tr, transformer_targets(cfg.network, shape.num_double, shape.num_single)


def _header(cfg: Any) -> dict[str, Any]:
    """name -> shape entries of ``model.checkpoint`` (a single file, or a diffusers folder's transformer/ files)."""
    from lorakit.models.estimates import header

    return header(cfg, "FLUX.2's size (Klein 4B / 9B / dev)")
