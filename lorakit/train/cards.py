"""GPU cards as data, and the s/step model the planner compares settings with.

:class:`CardFacts` is all the planner knows about a card: memory (total, free), compute capability, float8 matmuls,
host RAM and the host-to-device link. :func:`local_card` reads them from the running machine; :func:`card` takes
them from ``cards.toml`` (``lorakit plan --card NAME``), so planning is a pure function of a config, a model's
sizes and a ``CardFacts``.

:func:`step_seconds` estimates a step from the measured rows in ``cards.toml`` (benchmarks/RESULTS.md): the row of
the same family whose settings are closest (same compile / CUDA graphs / fp8 mode / host streaming first, then the
nearest checkpointed share, activation budget and swap depth; linear between two rows of the same kind; where a kind
has measured rows at two or more points of that axis, its estimated rows are set aside: :func:`measured_over_estimates`),
scaled to the card by its tensor throughput (80 %) and memory bandwidth (20 %), and never below the time the host link
needs for what the setting copies each step (block swap: the swapped blocks twice, spread over the whole step; the
modulation weights: once, within the forward, about a third of the step). Anything but a measured row on its own
card is an extrapolation, and the estimate says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from lorakit.errors import ConfigError

GIB = 2**30
TABLE = Path(__file__).with_name("cards.toml")
DEFAULT_LINK_GBS = 25.0  # a PCIe 4.0 x16 slot, for a card the table does not know
COMPUTE_SHARE = 0.8      # share of a step that scales with tensor throughput; the rest with memory bandwidth
FORWARD_SHARE = 0.35     # share of a step the modulation copies overlap (they run during the forward only)
# a step's cost of recomputing every block's activations against none, under compile (SDXL 0.509 against 0.444 s,
# FLUX.1-dev 0.553 at all blocks against 0.49 at half of them: RESULTS.md runs 2-4 and round 4)
RECOMPUTE = 0.2
SWAP_SHARE = 0.9         # share of a step the block-swap copies overlap (forward and the backward's recomputation)


@dataclass(frozen=True)
class CardFacts:
    """What the planner reads from a card (or the card table)."""

    name: str
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int]
    fp8: bool                       # float8 matmuls (torch._scaled_mm): compute capability 8.9+
    host_ram_bytes: int
    host_link_gbs: float            # host-to-device copy rate, GB/s
    tflops_bf16: float = 0.0        # 0: unknown (the s/step model then uses the reference card's figures)
    tflops_fp8: float = 0.0
    bandwidth_gbs: float = 0.0
    key: str = ""                   # the table's name for it ("rtx4090"), "" for an unknown card
    notes: tuple[str, ...] = field(default=())

    @property
    def free_gib(self) -> float:
        return self.free_bytes / GIB

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def can_compile(self) -> bool:
        """Triton (torch.compile's GPU backend) needs compute capability 7.0+."""
        return self.capability >= (7, 0)

    def describe(self) -> str:
        cap = f"sm{self.capability[0]}{self.capability[1]}"
        return (f"{self.name}, {self.free_gib:.1f} of {self.total_gib:.1f} GiB free, {cap}, "
                f"{'float8' if self.fp8 else 'no float8'}, {self.host_ram_bytes / GIB:.0f} GiB host RAM, "
                f"{self.host_link_gbs:g} GB/s host link")


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(TABLE.read_text(encoding="utf-8"))


def card_names() -> list[str]:
    return list(_table()["cards"])


def card(key: str) -> CardFacts:
    """The card ``key`` of ``cards.toml`` (``lorakit plan --card``); ConfigError naming the known ones otherwise."""
    cards = _table()["cards"]
    key = _resolve(key)
    if key not in cards:
        from lorakit.config.messages import suggest

        near = suggest(key.strip(), list(cards))  # rtx4909
        gib = _gib(key)
        raise ConfigError(f"--card {key!r}: not in lorakit's card table; choose one of {', '.join(cards)}"
                          + (f" (did you mean {near}?)" if near else "")
                          + (f"; for a card of {gib:g} GiB lorakit does not know, set memory.vram_gb = {gib:g} "
                             "in the config instead" if gib else ""))
    c = cards[key]
    cap = (int(c["capability"][0]), int(c["capability"][1]))
    return CardFacts(name=c["name"], total_bytes=int(c["total_gib"] * GIB), free_bytes=int(c["free_gib"] * GIB),
                     capability=cap, fp8="tflops_fp8" in c, host_ram_bytes=int(c["host_ram_gib"] * GIB),
                     host_link_gbs=float(c["host_link_gbs"]), tflops_bf16=float(c["tflops_bf16"]),
                     tflops_fp8=float(c.get("tflops_fp8", 0.0)), bandwidth_gbs=float(c["bandwidth_gbs"]), key=key)


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _resolve(key: str) -> str:
    """The table key that ``key`` names: itself, or the one it spells with other case, spaces or dashes ("RTX 4090",
    "H100", "rtx3060_12g") or as torch names the card ("NVIDIA GeForce RTX 4090"), where exactly one matches."""
    cards = _table()["cards"]
    if key in cards:
        return key
    want = _squash(key)
    hits = {k for k, c in cards.items() if want and want in (_squash(k), _squash(c["name"]))}
    return hits.pop() if len(hits) == 1 else key


def _gib(key: str) -> float:
    """The size a "--card 24gb" / "16 GiB" names (0.0 for anything else)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:gb|gib|g)?\s*", key.lower())
    return float(m.group(1)) if m else 0.0


def _by_name(name: str) -> Optional[str]:
    """The table key of a card torch names ``name`` ("NVIDIA GeForce RTX 4090"), if the table has it."""
    low = name.lower()
    for key, c in _table()["cards"].items():
        if c["name"].lower() == low:
            return key
    return None


def host_ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def local_card(device) -> CardFacts:
    """The facts of the CUDA ``device`` as it is now (free memory from the driver, float8 from PyTorch); throughput
    and host link from the card table when it knows the card, else unknown / a PCIe 4.0 link."""
    import torch

    device = torch.device(device)
    if device.index is None:  # "cuda" means the current card; some of torch.cuda's queries need its index
        device = torch.device("cuda", torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(device)
    try:  # a per-process cap (torch.cuda.set_per_process_memory_fraction: a shared card, the tier benchmark) counts
        fraction = float(torch.cuda.get_per_process_memory_fraction(device))
    except (AttributeError, RuntimeError, ValueError):
        fraction = 1.0
    if fraction < 1.0:
        free = min(free, max(0, int(fraction * total) - torch.cuda.memory_reserved(device)))
    cap = tuple(torch.cuda.get_device_capability(device))
    name = torch.cuda.get_device_name(device)
    fp8 = cap >= (8, 9) and hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm")
    key = _by_name(name)
    known = card(key) if key else None
    notes = () if known else (f"{name} is not in lorakit's card table: a {DEFAULT_LINK_GBS:g} GB/s host link assumed, "
                              "s/step at the reference card's speed",)
    return CardFacts(name=name, total_bytes=int(total), free_bytes=int(free), capability=(int(cap[0]), int(cap[1])),
                     fp8=fp8, host_ram_bytes=host_ram_bytes(),
                     host_link_gbs=known.host_link_gbs if known else DEFAULT_LINK_GBS,
                     tflops_bf16=known.tflops_bf16 if known else 0.0, tflops_fp8=known.tflops_fp8 if known else 0.0,
                     bandwidth_gbs=known.bandwidth_gbs if known else 0.0, key=key or "", notes=notes)


# ====================================================================== the s/step model


@dataclass(frozen=True)
class StepEstimate:
    seconds: float
    source: str              # the measured row(s) it started from
    extrapolated: tuple[str, ...]  # why it is not a measurement ("" when it is one)
    link_bound: bool = False  # the host link, not the GPU, sets the pace

    def describe(self) -> str:
        how = "measured" if not self.extrapolated else "extrapolated: " + "; ".join(self.extrapolated)
        return f"~{self.seconds:.2f} s/step ({how}; from {self.source})"


_FLAGS = ("compile", "cuda_graphs", "fp8_base", "fp8_compute", "modulation_on_cpu")


def measured_rows(family: str) -> list[dict[str, Any]]:
    return [r for r in _table().get("measured", []) if r["family"] == family]


def rows_for(spec: Any) -> list[dict[str, Any]]:
    """The measured rows of a family's (variant) spec: the table's, then those the family package keeps
    (``ModelSpec.measured_steps``)."""
    return measured_rows(spec.family) + [dict(r) for r in getattr(spec, "measured_steps", ())]


def has_rows(family: Any) -> bool:
    """Whether the s/step model has rows for ``family`` (a name: the table's rows; a ModelSpec: :func:`rows_for`)."""
    return bool(measured_rows(family) if isinstance(family, str) else rows_for(family))


def _kind(s: dict[str, Any]) -> tuple:
    """What a row must share with a setting to be interpolated along checkpointing / swap depth."""
    return tuple(bool(s.get(k)) for k in _FLAGS) + (bool(s.get("blocks_to_swap")),
                                                     s.get("activation_budget") is not None)


def _distance(row: dict[str, Any], s: dict[str, Any]) -> float:
    weights = {"compile": 16, "cuda_graphs": 8, "fp8_compute": 4, "fp8_base": 4, "modulation_on_cpu": 2}
    d = sum(w for k, w in weights.items() if bool(row.get(k)) != bool(s.get(k)))
    d += 3 * (bool(row.get("blocks_to_swap")) != bool(s.get("blocks_to_swap")))
    d += 2 * ((row.get("activation_budget") is None) != (s.get("activation_budget") is None))
    d += abs(float(row.get("checkpoint_fraction", 1.0)) - float(s.get("checkpoint_fraction", 1.0)))
    d += abs(float(row.get("activation_budget") or 0) - float(s.get("activation_budget") or 0))
    d += abs(int(row.get("blocks_to_swap", 0)) - int(s.get("blocks_to_swap", 0))) / 57
    return d


def measured_kind(rows: list[dict[str, Any]], settings: dict[str, Any]) -> bool:
    """Whether a measured (not estimated) row has the kind of ``settings``: the same compile / CUDA graphs / fp8 /
    host-modulation flags, swap or not, activation budget or not, every block checkpointed or not (its share or swap
    depth may differ)."""
    def full(s: dict[str, Any]) -> bool:
        return float(s.get("checkpoint_fraction", 1.0)) == 1.0

    return any(not r.get("estimated") and _kind(r) == _kind(settings) and full(r) == full(settings) for r in rows)


def measured_over_estimates(rows: list[dict[str, Any]], x: Any) -> list[dict[str, Any]]:
    """``rows`` less the estimated rows of each kind that has measured rows at two or more points of the axis ``x``:
    there the measurements, not the priors, say how the step changes along it. The priors (a row derived from a measured
    one by :data:`RECOMPUTE`, or scaled from another size / family) had partial checkpointing of SD3.5 faster than full,
    interpolated towards an estimated row without checkpointing at 80 % of the checkpointed step; measured, it was
    slower (Medium 0.215 s at 0.25 against 0.172 s at 1.0, Large 0.350 s at 0.63 against 0.297 s, RESULTS.md rounds
    14-15), as SDXL's was under CUDA graphs (round 14)."""
    points: dict[tuple, set[float]] = {}
    for r in rows:
        if not r.get("estimated"):
            points.setdefault(_kind(r), set()).add(x(r))
    return [r for r in rows if not (r.get("estimated") and len(points.get(_kind(r), ())) >= 2)]


def measured_slope(rows: list[dict[str, Any]], settings: dict[str, Any], x: Any
                   ) -> Optional[tuple[float, list[dict[str, Any]]]]:
    """Where a setting's kind has one measured checkpointing point, how the step changes along checkpoint_fraction as
    measured for the nearest other kind with two or more: (share of the step per share of blocks recomputed, the two
    rows), else None (then :data:`RECOMPUTE`, the prior). SD3.5 Medium under CUDA graphs had one row (0.131 s, every
    block checkpointed); the prior made a graphs plan without checkpointing 20 % faster, where without graphs the same
    card measured partial checkpointing 25 % *slower* (RESULTS.md rounds 14, 15, 18)."""
    kinds: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if not r.get("estimated") and r.get("s_step"):
            kinds.setdefault(_kind(r), []).append(r)
    pairs = []
    for kind, measured in kinds.items():
        if kind == _kind(settings) or len({x(r) for r in measured}) < 2:
            continue
        full, part = max(measured, key=x), min(measured, key=x)  # the widest pair: two near points amplify noise
        share = (float(full["s_step"]) - float(part["s_step"])) / (float(full["s_step"]) * (x(full) - x(part)))
        pairs.append((_distance(full, settings), share, [part, full]))
    if not pairs:
        return None
    _, share, pair = min(pairs, key=lambda p: p[0])
    return share, pair


def _scale(seconds: float, ref: CardFacts, target: CardFacts, fp8_compute: bool) -> float:
    def tflops(c: CardFacts) -> float:
        return (c.tflops_fp8 if fp8_compute and c.tflops_fp8 else c.tflops_bf16) or 0.0
    tr, tt = tflops(ref), tflops(target)
    compute = tr / tt if tr and tt else 1.0
    bw = ref.bandwidth_gbs / target.bandwidth_gbs if ref.bandwidth_gbs and target.bandwidth_gbs else 1.0
    return seconds * (COMPUTE_SHARE * compute + (1 - COMPUTE_SHARE) * bw)


def step_seconds(family: str, settings: dict[str, Any], target: CardFacts, *, images: float = 1.0,
                 swapped_bytes: int = 0, host_bytes: int = 0,
                 rows: Optional[list[dict[str, Any]]] = None) -> Optional[StepEstimate]:
    """Seconds per step of ``settings`` (the [memory] knobs as planned; checkpoint_fraction 0 = no checkpointing) on
    ``target``, for ``images`` 1024²-image equivalents per step (linear in pixels). ``swapped_bytes``: bytes of the
    swapped blocks; ``host_bytes``: bytes of the weights modulation_on_cpu streams in. None when the family has no
    measured row. ``rows``: the rows to start from (default: the table's rows of ``family``; :func:`rows_for`)."""
    rows = measured_rows(family) if rows is None else rows
    if not rows:
        return None
    axis = "blocks_to_swap" if settings.get("blocks_to_swap") else (
        "activation_budget" if settings.get("activation_budget") is not None else "checkpoint_fraction")

    def x(s: dict[str, Any]) -> float:
        return float(s.get(axis) or (1.0 if axis == "checkpoint_fraction" and axis not in s else 0.0))

    rows = measured_over_estimates(rows, x)
    best = min(rows, key=lambda r: _distance(r, settings))
    why: list[str] = []
    same = [r for r in rows if _kind(r) == _kind(best)]

    def on_target(r: dict[str, Any]) -> float:
        return _scale(float(r["s_step"]), card(r["card"]), target, bool(settings.get("fp8_compute")))

    want = x(settings)
    below = [r for r in same if x(r) <= want]
    above = [r for r in same if x(r) >= want]
    lo = max(below, key=x) if below else None
    hi = min(above, key=x) if above else None
    if lo is not None and hi is not None and x(lo) != x(hi):
        t = (want - x(lo)) / (x(hi) - x(lo))
        seconds = (1 - t) * on_target(lo) + t * on_target(hi)
        used = [lo, hi]
        why.append(f"between two measured {axis.replace('_', ' ')} settings")
    else:
        row = lo if lo is not None and x(lo) == want else (hi if hi is not None and x(hi) == want else best)
        seconds, used = on_target(row), [row]
        if _distance(row, settings) > 1e-9:
            why.append("the nearest measured setting")
            slope = measured_slope(rows, settings, x) if axis == "checkpoint_fraction" and x(row) != want else None
            if axis == "checkpoint_fraction" and x(row) != want and (slope or _kind(row) == _kind(settings)):
                if slope is None:
                    seconds *= 1 + RECOMPUTE * (want - x(row))
                    why.append(f"{RECOMPUTE:.0%} of a step per share of blocks recomputed")
                else:
                    share, pair = slope
                    seconds *= 1 + share * (want - x(row))
                    used += pair
                    why.append(f"{share:+.0%} of a step per share of blocks recomputed, as measured for the nearest "
                               "setting with two checkpointing points")
    why += sorted({str(r["estimated"]) for r in used if r.get("estimated")})
    source = " / ".join(f"{r['source']} ({card(r['card']).name}, {float(r['s_step']):g} s)" for r in used)
    if any(r["card"] != target.key for r in used):
        why.append("scaled to this card by tensor throughput and memory bandwidth")
    if not target.tflops_bf16:
        why.append("unknown card: at the reference card's speed")
    if abs(images - 1.0) > 1e-6:
        seconds *= images
        if any(abs(float(r.get("pixels", 1024**2)) / 1024**2 - images) > 1e-6 for r in used):  # not as they ran
            why.append(f"{images:.2f}x the pixels of one 1024² image, linear")
    link = target.host_link_gbs * 1e9
    copy = 0.0
    if settings.get("blocks_to_swap") and swapped_bytes:
        copy = max(copy, 2 * swapped_bytes / link / SWAP_SHARE)
    if settings.get("modulation_on_cpu") and host_bytes:
        copy = max(copy, host_bytes / link / FORWARD_SHARE)
    bound = copy > seconds
    if bound:
        why.append(f"the {target.host_link_gbs:g} GB/s host link sets the pace")
        seconds = copy
    return StepEstimate(seconds, source, tuple(why), bound)
