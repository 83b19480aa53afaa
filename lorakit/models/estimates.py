"""Planning numbers of a family, or of settings, that have no GPU rows yet (issue 29: Z-Image, SD 1.5; SD3.5 and
Qwen-Image beyond their measured settings): what the family planning modules (``lorakit/models/<family>/planning.py``)
share.

Their activation rates come from ``benchmarks/estimate_activations.py`` (the full-size denoiser run on the meta
device, its Linear / Conv2d traffic counted per block and priced at the bytes per unit that FLUX.1-dev or SDXL
measured); their s/step rows are the measured rows of that reference family below, scaled by the forward FLOPs per
1024² image (the same script's ``step_scale``). Every such row carries ``"estimated"`` and no peak, and a plan made
from them says so (``ModelSpec.planning_estimate``). A measured row of the family (a ``measured`` entry of its table)
replaces the estimate of that size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from lorakit.errors import ConfigError

# measured rows of the reference families (lorakit/train/cards.toml, benchmarks/RESULTS.md), in cards.toml's
# [[measured]] form (a copy, since this layer does not read the trainer's table; tests/unit/test_family_planning.py
# keeps each row equal to one of cards.toml's): the settings the new families are planned with (no host modulations, no activation budgets)
REFERENCE: dict[str, tuple[dict[str, Any], ...]] = {
    "FLUX.1-dev": (
        {"card": "h200", "s_step": 0.94, "checkpoint_fraction": 1.0,
         "source": "FLUX.1-dev eager (flux1/gc+compile x 1.7, cards.toml)"},
        {"card": "h200", "s_step": 0.553, "compile": True, "checkpoint_fraction": 1.0,
         "source": "FLUX.1-dev RESULTS.md run 13: flux1/gc+compile"},
        {"card": "h200", "s_step": 0.49, "compile": True, "checkpoint_fraction": 0.5,
         "source": "FLUX.1-dev RESULTS.md round 4: compile, checkpoint_fraction 0.5"},
        {"card": "h100", "s_step": 0.536, "compile": True, "cuda_graphs": True, "checkpoint_fraction": 0.982,
         "source": "FLUX.1-dev issue 28: compile + cuda_graphs, checkpoint_fraction 0.982"},
        {"card": "h200", "s_step": 0.607, "compile": True, "fp8_base": True, "checkpoint_fraction": 1.0,
         "source": "FLUX.1-dev RESULTS.md run 8: flux1/fp8+compile"},
        {"card": "h200", "s_step": 0.519, "compile": True, "fp8_base": True, "fp8_compute": True,
         "checkpoint_fraction": 1.0, "source": "FLUX.1-dev RESULTS.md round 4: fp8 compute + compile"},
        {"card": "h200", "s_step": 0.47, "compile": True, "fp8_base": True, "fp8_compute": True,
         "checkpoint_fraction": 0.6, "source": "FLUX.1-dev RESULTS.md round 5: fp8 compute + compile, fraction 0.6"},
        {"card": "h200", "s_step": 0.65, "compile": True, "fp8_base": True, "checkpoint_fraction": 1.0,
         "blocks_to_swap": 24, "source": "FLUX.1-dev RESULTS.md round 4: fp8 + 24 swapped blocks, compile"},
        {"card": "h200", "s_step": 0.71, "compile": True, "fp8_base": True, "checkpoint_fraction": 1.0,
         "blocks_to_swap": 45, "source": "FLUX.1-dev RESULTS.md round 4: fp8 + 45 swapped blocks, compile"},
    ),
    "SDXL": (
        {"card": "h200", "s_step": 0.555, "checkpoint_fraction": 0.0, "source": "SDXL RESULTS.md run 1: sdxl/nogc"},
        {"card": "h200", "s_step": 0.509, "compile": True, "checkpoint_fraction": 1.0,
         "source": "SDXL RESULTS.md run 4: sdxl/gc+compile"},
        {"card": "h200", "s_step": 0.444, "compile": True, "checkpoint_fraction": 0.0,
         "source": "SDXL RESULTS.md run 2: sdxl/nogc+compile"},
        {"card": "h100", "s_step": 0.114, "compile": True, "cuda_graphs": True, "checkpoint_fraction": 1.0,
         "source": "SDXL RESULTS.md round 14: compile + cuda_graphs"},
        {"card": "h100", "s_step": 0.127, "compile": True, "cuda_graphs": True, "checkpoint_fraction": 0.0,
         "source": "SDXL RESULTS.md round 14: compile + cuda_graphs, no checkpointing"},
        {"card": "h100", "s_step": 0.165, "compile": True, "cuda_graphs": True, "fp8_base": True, "fp8_compute": True,
         "checkpoint_fraction": 1.0, "source": "SDXL issue 28: fp8 compute + compile + cuda_graphs"},
    ),
}


def scaled_rows(family: str, reference: str, factor: float, swap_blocks: int | None = None
                ) -> tuple[dict[str, Any], ...]:
    """The reference family's rows with s/step x ``factor`` (forward FLOPs per 1024² image against the reference's),
    for ``family``; marked estimated, without a peak. ``swap_blocks``: the family's block count, so that a swap row
    keeps its share of swapped blocks (FLUX.1-dev has 57)."""
    out = []
    for r in REFERENCE[reference]:
        row = {"family": family, **r, "s_step": round(r["s_step"] * factor, 4), "peak_gib": None,
               "estimated": f"s/step scaled from {reference}'s by forward FLOPs ({factor:.2f}x), not measured",
               "source": f"{r['source']} x {factor:.2f}"}
        if r.get("blocks_to_swap") and swap_blocks:
            row["blocks_to_swap"] = max(1, round(r["blocks_to_swap"] * swap_blocks / 57))
        out.append(row)
    return tuple(out)


def measured_rows(family: str, rows: tuple[Mapping[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """A size's measured rows (a family table's ``measured`` entry) in cards.toml's form."""
    return tuple({"family": family, "card": "h100", **r} for r in rows)


def _kind(row: Mapping[str, Any]) -> tuple:
    """The settings a row measures apart from its checkpointed share, swap depth and activation budget."""
    return tuple(bool(row.get(k)) for k in ("compile", "cuda_graphs", "fp8_base", "fp8_compute", "modulation_on_cpu",
                                            "blocks_to_swap")) + (row.get("activation_budget") is not None,)


def merged(measured: tuple[Mapping[str, Any], ...], estimated: tuple[Mapping[str, Any], ...]
           ) -> tuple[dict[str, Any], ...]:
    """A size's measured rows, and the estimated ones of the kinds of setting no measured row has (a measured row
    replaces the estimates of its kind: the s/step model then interpolates between measurements only)."""
    kinds = {_kind(r) for r in measured}
    return tuple(dict(r) for r in measured) + tuple(dict(r) for r in estimated if _kind(r) not in kinds)


def calibrated(measured: tuple[Mapping[str, Any], ...], estimated: tuple[Mapping[str, Any], ...]
               ) -> tuple[dict[str, Any], ...]:
    """``estimated`` with s/step times how far the measured rows sit from the estimates of their own settings (the
    geometric mean of measured / estimated over the measured rows whose kind has an estimate, the nearest checkpointed
    share), so that the kinds no row measured keep their order against the measured ones. SD 1.5 at 512² ran 4.2x
    the FLOP-scaled SDXL estimate (launch-bound: RESULTS.md round 18); uncalibrated, an estimated kind (fp8 compute,
    0.02 s) beat the measured one (0.058 s) by a factor no measurement supports. Unchanged where nothing compares."""
    ratios = []
    for m in measured:
        same = [e for e in estimated if _kind(e) == _kind(m)]
        if same:
            share = float(m.get("checkpoint_fraction", 1.0))
            e = min(same, key=lambda r: abs(float(r.get("checkpoint_fraction", 1.0)) - share))
            ratios.append(float(m["s_step"]) / float(e["s_step"]))
    if not ratios:
        return tuple(dict(r) for r in estimated)
    k = math.prod(ratios) ** (1 / len(ratios))
    return tuple({**r, "s_step": round(float(r["s_step"]) * k, 4), "source": f"{r['source']}, calibrated x {k:.2f}",
                  "estimated": f"{r['estimated']}; calibrated by the measured rows (x {k:.2f})"} for r in estimated)


# a step's share spent recomputing every checkpointed block: lorakit/train/cards.py's RECOMPUTE (a test keeps them
# equal; this layer does not import the trainer's)
RECOMPUTE = 0.2


def without_checkpointing(rows: tuple[Mapping[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """For each measured row with bf16 weights, nothing swapped and every block checkpointed: the same setting without
    checkpointing, estimated (s/step less :data:`RECOMPUTE`, as the s/step model extrapolates; no peak), so that a plan
    of less checkpointing says what is not measured."""
    return tuple({**r, "s_step": round(float(r["s_step"]) * (1 - RECOMPUTE), 4), "peak_gib": None,
                  "checkpoint_fraction": 0.0, "source": f"{r['source']}, less {RECOMPUTE:.0%} for the recomputation",
                  "estimated": "no checkpointing is not measured: its activation sizes are estimated from the "
                               "architecture (benchmarks/estimate_activations.py), its s/step is the checkpointed "
                               f"row's less {RECOMPUTE:.0%} for the recomputation"}
                 for r in rows if float(r.get("checkpoint_fraction", 1.0)) == 1.0 and not r.get("fp8_base")
                 and not r.get("blocks_to_swap") and not r.get("estimated"))


def compiled(rows: tuple[Mapping[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """For each measured eager row: the same setting under ``memory.compile``, estimated at the eager row's s/step (no
    peak), so that a compiled plan says what is not measured."""
    return tuple({**r, "compile": True, "peak_gib": None, "source": f"{r['source']} (eager)",
                  "estimated": "compile is not measured: the eager row's s/step and activation size"}
                 for r in rows if not r.get("compile") and not r.get("estimated"))


def note(name: str, reference: str, measured: str = "") -> str:
    """``ModelSpec.planning_estimate`` of a size planned from estimates; ``measured``: the kind of setting that is
    measured (the planner shows the note only for plans of another kind)."""
    return (f"{name}: memory and speed are not measured; activation sizes estimated from its architecture "
            f"(benchmarks/estimate_activations.py), s/step scaled from {reference}'s rows by forward FLOPs "
            + (f"(estimates; measured only: {measured})" if measured else
               "(estimates; benchmarks/RESULTS.md has no row for it yet)"))


def _read(path: Path) -> dict[str, Any]:
    from lorakit.safetensors_header import read_safetensors_header  # the one header reader

    return read_safetensors_header(path)[0]


def header(cfg: Any, what: str) -> dict[str, Any]:
    """name -> {"shape", "dtype"} entries of ``model.checkpoint`` (a single file, or a diffusers folder's
    ``transformer/`` files), from the headers alone, for ``lorakit plan``; ``what`` says what is read ("SD3.5's size
    (medium / large)")."""
    where = getattr(cfg.model, "checkpoint", None)
    if not where:
        raise ConfigError(f"model.checkpoint: lorakit plan reads {what} from its header; set it to the transformer "
                          "file or diffusers folder")
    src = Path(where).expanduser()
    if src.is_dir():
        files = sorted((src / "transformer").glob("*.safetensors"))
        if not files:
            raise ConfigError(f"model.checkpoint: {src} has no transformer/*.safetensors to read {what} from")
        out: dict[str, Any] = {}
        for f in files:
            out.update(_read(f))
        return out
    if not src.is_file():
        raise ConfigError(f"model.checkpoint: {src} not found; lorakit plan reads {what} from its header")
    return _read(src)
