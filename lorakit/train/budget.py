"""``memory.vram_gb``: choose checkpointing, fp8 storage and block-swap depth so that a run fits a GPU.

The estimate is made from the model actually loaded (LoRA injected, nothing on the GPU yet), so it counts
exactly what each setting keeps on the device:

* frozen weights outside the repeated blocks, and those of every resident block — in their dtype, or in
  float8 plus one fp32 scale per row for the Linears that ``memory.fp8_base`` converts (same choice of
  layers as :mod:`lorakit.train.fp8`);
* with block swap, the ``1 + lookahead`` largest swapped blocks that can be on the device at once;
* LoRA: fp32 weights and gradients plus the optimizer's state per parameter;
* activations: the family's measured GiB per 1024² image (``ModelSpec.activation_gib``, with and without
  checkpointing; ``activation_gib_compiled`` with ``memory.compile``) times the batch's pixels; blocks left out
  of checkpointing are counted at the rate without it;
* with fp8 storage / compute (the base Linears then keep no input for backward), the inputs the LoRA-targeted Linears
  keep for the LoRA, less those of the family's default targets the rates were measured with
  (``ModelSpec.lora_input_gib``), for the blocks left out of checkpointing and the one recomputed;
* :data:`RESERVE_GIB` for the CUDA context, library workspaces and allocator fragmentation.

A setting fits when that peak plus :data:`MARGIN` of its activations (and CUDA graph pool) is within the budget: the
estimate is within 10 % of every measured peak, and a plan that used the whole budget ran out of memory (FLUX.2 Klein 4B
at ``vram_gb = 9.5``, 0.21 GiB under it: issue 28).

Settings are tried from fastest to leanest — no checkpointing, checkpointing of the fewest blocks that fit
(``memory.checkpoint_fraction``: blocks left out keep their activations and skip the recomputation), of all
blocks, the same again with fp8 storage, then + 1, 2, … swapped blocks — and the first that fits is used; where the
family has measured s/step rows, a first fit with less than every block checkpointed is compared with the same storage
and swap depth fully checkpointed, and the faster by the s/step model is used (under compile, SD3.5's partial
checkpointing and SDXL's none under CUDA graphs measured slower than full checkpointing: RESULTS.md rounds 14-15).
With ``memory.fp8_compute`` only the fp8 settings are tried (it multiplies float8-stored weights), starting
with no checkpointing.

Where the fp8 settings would store weights in fp8 without multiplying in fp8, and the family names Linears it can
keep on the host (``ModelSpec.host_linears``: FLUX.1's modulation Linears, 6.0 GiB), bf16 with
``memory.modulation_on_cpu`` is offered too: under compile, its measured ``memory.activation_budget`` settings
(``ModelSpec.host_activation_budget_gib``, measured with ``memory.save_attention``'s default) right after bf16
without checkpointing (on FLUX.1-dev faster than any bf16 block checkpointing, in less memory), and its checkpointing
settings before any fp8 setting. With CUDA graphs too (the modulation op stays out of the graphs), the graph pool
counted on top.

Under compile with fp8 compute (and no CUDA graphs), the family's measured ``memory.activation_budget`` settings
(``ModelSpec.activation_budget_gib``: selective recomputation inside each compiled block, no block checkpointing)
come right after no checkpointing: on FLUX.1-dev they were faster than any partial checkpointing that fits the same
memory. Left unset under ``memory.compile``, fp8 compute is decided before planning: where the GPU has float8
matmuls, the fp8 settings are planned as fp8 compute (partial checkpointing allowed), and it is switched on when the
plan stores the weights in fp8 without swapping blocks (faster than upcasting there; with swapped blocks fp8
storage measured faster).

When even the leanest does not fit the batch, :func:`apply_budget` splits it: the largest divisor of
``training.batch_size`` that fits, with ``training.gradient_accumulation`` raised so that the effective batch stays
the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from lorakit.config.resolution import resolution_wh
from lorakit.errors import ConfigError

GIB = 2**30
RESERVE_GIB = 0.75
# headroom on top of the estimated peak, per GiB of estimated activations (and CUDA graph pool): the estimate's error on
# the measured rows is within 10 % (tests/unit/test_measured_peaks.py), and nearly all of it is the activations'. FLUX.2
# Klein 4B at vram_gb = 9.5 (default targets, 76 % checkpointed, fp8 compute) was estimated at 9.29 GiB with 4.52 of
# activations and ran out of memory at its 9.0 GiB cap (allocated 8.50 GiB + 0.24 asked + 0.27 fragmented)
MARGIN = 0.10
# optimizer state bytes per trainable parameter (fp32 LoRA weights)
STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "adafactor": 4}
EMA_BYTES = 4  # training.ema: an fp32 copy of every LoRA parameter on its device (lorakit/train/ema.py)
# CUDA graph trees' extra reserve, per GiB of *fully checkpointed* activations (SDXL at 1024²: 0.99 GiB, H200 run 5).
# It does not grow with partial checkpointing: SDXL with half the blocks checkpointed kept the same ~0.9 GiB gap
# between reserved and allocated memory (run 8: 9.58 / 10.45 GiB).
GRAPH_POOL = 1.2


@dataclass(frozen=True)
class Plan:
    """What :func:`plan_memory` chose, and (from :func:`apply_budget`) the batch split, the fp8 compute decision and the
    run's effective config (``applied``: a copy; the loaded config is never written)."""

    budget_gib: float
    gradient_checkpointing: bool
    fp8_base: bool
    blocks_to_swap: int
    estimate_gib: float
    parts: dict[str, float]
    checkpoint_fraction: float = 1.0
    activation_budget: Optional[float] = None
    modulation_on_cpu: bool = False
    batch_size: Optional[int] = None
    gradient_accumulation: Optional[int] = None
    fp8_compute: Optional[bool] = None
    notes: tuple[str, ...] = ()
    applied: Any = None
    # the automatic plan (lorakit/train/autoplan.py): the s/step estimate, the card planned for, its one log line
    step: Any = None
    card: Any = None
    line: str = ""
    phases: Any = None  # autoplan.Phases: the peak of caching, training and previews
    margin_gib: float = 0.0  # MARGIN's headroom kept free on top of estimate_gib

    @property
    def needs_gib(self) -> float:
        """The estimated peak with the headroom the plan keeps: what had to fit the budget."""
        return self.estimate_gib + self.margin_gib

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.parts.items())
        share = f" (checkpoint_fraction = {self.checkpoint_fraction:.3g})" if self.checkpoint_fraction < 1 else ""
        if self.activation_budget is not None:
            share = f", activation_budget = {self.activation_budget:g}"
        return (f"vram_gb = {self.budget_gib:g}: gradient_checkpointing = {str(self.gradient_checkpointing).lower()}"
                f"{share}, fp8_base = {str(self.fp8_base).lower()}, blocks_to_swap = {self.blocks_to_swap}"
                f"{', modulation_on_cpu = true' if self.modulation_on_cpu else ''} "
                f"(estimated peak {self.estimate_gib:.2f} GiB: {parts}, reserve {RESERVE_GIB}; "
                f"{self.margin_gib:.2f} GiB more kept free for estimation error)")


def _frozen_bytes(module: nn.Module, exclude: set[int]) -> int:
    seen: set[int] = set()
    total = 0
    for sub in module.modules():
        if id(sub) in exclude:
            continue
        for t in list(sub._parameters.values()) + list(sub._buffers.values()):
            if t is None or id(t) in seen or (isinstance(t, nn.Parameter) and t.requires_grad):
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _fp8_saving(model: nn.Module, within: Optional[nn.Module], exclude: set[int], convs: bool = False) -> int:
    """Bytes that fp8 storage saves on the layers it converts (weight → 1 byte/value + fp32 row scales; the
    convolutions too with ``convs``, the family's ``ModelSpec.fp8_convs``)."""
    from lorakit.train import fp8

    saved = 0
    for _, sub in fp8.candidates(model, convs, within=within):
        if id(sub) in exclude:
            continue
        w = sub.weight
        saved += w.numel() * (w.element_size() - 1) - w.shape[0] * 4
    return saved


@dataclass
class Sizes:
    """Byte counts of a loaded model, for every setting."""

    outside: tuple[int, int]          # frozen bytes outside the blocks: (as loaded, with fp8 storage)
    blocks: list[tuple[int, int]]     # per block, the same pair
    lora_params: int                  # trainable parameter count
    host_linears: int = 0             # bytes (as loaded) of the blocks' Linears modulation_on_cpu keeps on the host
    # per block, GiB per 1024² image the LoRA targets' kept inputs add with fp8 weights (lora_inputs(); () = none)
    lora_inputs: tuple[float, ...] = ()

    @classmethod
    def of(cls, model: nn.Module, blocks: Sequence[nn.Module], trainable: Sequence[torch.Tensor],
           host_linears: Sequence[str] = (), spec: Any = None, paths: Optional[frozenset[str]] = None) -> "Sizes":
        """``spec`` (the family's): its ``lora_input_gib`` counted for the LoRA targets ``paths`` (default: the LoRA
        layers in ``model``; :func:`lora_inputs`) and its ``fp8_convs`` (fp8 storage of the convolutions too)."""
        convs = bool(getattr(spec, "fp8_convs", False))
        inside = {id(m) for b in blocks for m in b.modules()}
        whole = _frozen_bytes(model, inside)
        outside = (whole, whole - _fp8_saving(model, None, inside, convs))
        per_block = []
        for b in blocks:
            n = _frozen_bytes(b, set())
            per_block.append((n, n - _fp8_saving(model, b, set(), convs)))
        # a Linear wrapped by peft's LoRA layer sits at <name>.base_layer
        names = set(host_linears)
        host = sum(_frozen_bytes(m, set()) for b in blocks for name, m in b.named_modules()
                   if isinstance(m, nn.Linear) and name.removesuffix(".base_layer") in names)
        inputs = lora_inputs(spec, model, blocks, lora_paths(model) if paths is None else paths)
        return cls(outside, per_block, sum(int(p.numel()) for p in trainable), host, inputs)


def lora_paths(model: nn.Module) -> frozenset[str]:
    """Paths of ``model``'s LoRA-wrapped Linears (peft's layers: they hold ``lora_A``)."""
    return frozenset(name for name, sub in model.named_modules() if hasattr(sub, "lora_A") and name)


def lora_inputs(spec, model: nn.Module, blocks: Sequence[nn.Module], paths: frozenset[str]) -> tuple[float, ...]:
    """Per block of ``blocks``, the GiB per 1024² image that the LoRA targets ``paths`` add to the family's activation
    rates with fp8 weights (``ModelSpec.lora_input_gib``; () where the family has none, or no target is known: a model
    on the meta device carries no LoRA layers, its targets are passed)."""
    hook = getattr(spec, "lora_input_gib", None)
    if hook is None or not paths:
        return ()
    per_path = hook(model, frozenset(paths))
    index = {id(b): i for i, b in enumerate(blocks)}
    out = [0.0] * len(blocks)
    for name, sub in model.named_modules():
        if name in per_path and id(sub) in index:
            out[index[id(sub)]] += float(per_path[name])
    return tuple(out)


def _lora_input_part(sizes: Sizes, share: float) -> float:
    """GiB per 1024² image of the LoRA inputs at checkpointed ``share`` (fp8 weights): those of the blocks left out of
    checkpointing (lorakit/train/speed.py: checkpoint_indices) and, with any checkpointed, of the largest recomputed."""
    from lorakit.train.speed import checkpoint_indices

    per = sizes.lora_inputs
    if not per:
        return 0.0
    kept = checkpoint_indices(len(per), share) if share > 0 else set()
    left = sum(v for i, v in enumerate(per) if i not in kept)
    return left + (max(per[i] for i in kept) if kept else 0.0)


def estimate(sizes: Sizes, *, activation_gib: float, optimizer: str, checkpointing: bool, fp8_base: bool,
             swapped: Sequence[int], lookahead: int, cuda_graphs: bool = False,
             checkpointed_gib: Optional[float] = None, modulation_on_cpu: bool = False,
             graph_pool: float = GRAPH_POOL, ema: bool = False) -> dict[str, float]:
    """GiB per part for one setting (see the module doc); ``sum(values)`` + :data:`RESERVE_GIB` is the peak.
    ``modulation_on_cpu`` (bf16 weights, nothing swapped): ``sizes.host_linears`` stay off the device."""
    k = 1 if fp8_base else 0
    swapped_set = set(swapped)
    resident = sum(b[k] for i, b in enumerate(sizes.blocks) if i not in swapped_set)
    if modulation_on_cpu:
        assert not fp8_base and not swapped_set, "modulation_on_cpu is planned with bf16 weights and no swap"
        resident -= sizes.host_linears
    window = [max(sizes.blocks[i][k] for i in swapped_set)] * (1 + lookahead) if swapped_set else []  # fixed slots
    lora = sizes.lora_params * (4 + 4 + STATE_BYTES.get(optimizer, 8) + (EMA_BYTES if ema else 0))
    parts = {"weights": (sizes.outside[k] + resident) / GIB, "swap window": sum(window) / GIB,
             "LoRA+optimizer": lora / GIB, "activations": activation_gib}
    if cuda_graphs:  # graph trees keep their own memory pool (SDXL: 1.0 GiB); checkpointed_gib: see GRAPH_POOL
        parts["CUDA graph pool"] = graph_pool * (activation_gib if checkpointed_gib is None else checkpointed_gib)
    return parts


def plan_memory(budget_gib: float, sizes: Sizes, *, activation_gib: tuple[float, float], images: float,
                optimizer: str, batch_size: int, can_swap: bool, lookahead: int, cuda_graphs: bool = False,
                checkpoint_fraction: float = 1.0, fp8_only: bool = False, partial_fp8: bool = True,
                activation_budgets: Sequence[tuple[float, float]] = (), host_linears: bool = False,
                host_budgets: Sequence[tuple[float, float]] = (), keep: Optional[dict[str, Any]] = None,
                seconds: Optional[Callable[[Plan], Optional[float]]] = None, graph_pool: float = GRAPH_POOL,
                host_fixed: bool = False, ema: bool = False, named: Optional[dict[str, Any]] = None) -> Plan:
    """The fastest setting that fits ``budget_gib`` (see the module doc). ``images`` = batch pixels in units of
    1024² images; ``activation_gib`` = (with checkpointing, without) per such image. ``partial_fp8`` False: with fp8
    storage only full checkpointing is counted on (see :func:`apply_budget`). ``activation_budgets``: (budget, GiB
    per image) settings of ``memory.activation_budget`` tried with fp8 storage after no checkpointing and before
    partial checkpointing (fp8 compute under compile, where they were measured faster). ``host_linears``: the bf16
    settings are tried once more with ``memory.modulation_on_cpu`` before any fp8 setting (for fp8 *storage*, which
    measured no faster than bf16 with the modulations on the CPU: see :func:`apply_budget`); ``host_budgets``: (budget,
    GiB per image) settings of ``memory.activation_budget`` with bf16 and the modulations on the host, tried right
    after bf16 without checkpointing (faster than any bf16 block checkpointing, in less memory). ``keep``: the knobs
    the user set by hand, each a constraint every considered setting keeps (see :data:`CONSTRAINTS`). ``seconds``: the
    s/step model (a plan's estimated seconds, None where it has none): the first setting that fits with less than every
    block checkpointed is compared with the same storage and swap depth with every block checkpointed (which then fits
    too), and the faster is taken: under compile, every block checkpointed measured faster than partial checkpointing
    for SD3.5 (RESULTS.md rounds 14-15) and than none for SDXL under CUDA graphs (round 14). ``graph_pool``: GiB of
    CUDA graph pool per GiB of checkpointed activations (the family's, ``ModelSpec.graph_pool``). ``host_fixed``:
    ``memory.modulation_on_cpu = true`` set by hand: bf16 settings only with the host Linears off the device."""
    from lorakit.train.swap import spread

    n = len(sizes.blocks)
    # (share of the blocks checkpointed, fp8 storage, swapped blocks), fastest first. Between no checkpointing
    # and full checkpointing lie the partial settings: the fewest checkpointed blocks that fit (each block left
    # out keeps its activations, skips its recomputation). A fraction the user set is kept as given.
    user_set = checkpoint_fraction < 1.0
    shares = [checkpoint_fraction] if user_set else [j / n for j in range(1, n)] + [1.0]
    fp8_share = checkpoint_fraction if partial_fp8 else 1.0  # see apply_budget for partial_fp8
    # (share, fp8 storage, swapped blocks, activation budget, modulation_on_cpu)
    options: list[tuple[float, bool, int, Optional[float], bool]] = []
    for use_fp8 in ([True] if fp8_only else [False, True]):  # fp8_only: memory.fp8_compute needs float8 weights
        if use_fp8 and host_linears:  # bf16 with the modulation Linears on the host, before any fp8 storage
            options += [(0.0, False, 0, None, True)] + [(share, False, 0, None, True) for share in shares]
        options += [(0.0, use_fp8, 0, None, False)]
        if not use_fp8 and host_linears and not user_set:
            options += [(0.0, False, 0, amb, True) for amb, _ in host_budgets]
        if use_fp8 and not user_set:
            options += [(0.0, True, 0, amb, False) for amb, _ in activation_budgets]
        options += [(share, use_fp8, 0, None, False) for share in (shares if partial_fp8 or not use_fp8 else [1.0])]
    if can_swap and n > 1:
        options += [(fp8_share, True, k, None, False) for k in range(1, n)]
    rates = {(amb, False): gib for amb, gib in activation_budgets} | {(amb, True): gib for amb, gib in host_budgets}
    keep = dict(keep or {})
    if keep.get("activation_budget") is not None:  # a hand-set budget: that budget only, at the nearest measured rate
        amb = float(keep["activation_budget"])
        for on_cpu, measured in ((False, activation_budgets), (True, host_budgets)):
            above = [gib for b, gib in measured if b >= amb]  # a larger budget keeps more: an upper bound
            rates[amb, on_cpu] = min(above) if above else activation_gib[1]
        options += [(0.0, f, 0, amb, c) for f, c in ((False, False), (True, False), (False, True))
                    if (0.0, f, 0, amb, c) not in options]
    options = [o for o in options if _keeps(o, keep) and (o[4] or o[1] or not host_fixed)]
    if not options:
        raise ConfigError(f"memory.vram_gb = {budget_gib:g}: no setting lorakit plans keeps {_listed(keep)} together; "
                          "remove one of them")
    room = budget_gib - RESERVE_GIB

    def plan_of(option: tuple[float, bool, int, Optional[float], bool]) -> Plan:
        share, use_fp8, k, amb, on_cpu = option
        ckpt = share > 0
        # blocks left out of checkpointing keep their activations
        act = (rates[amb, on_cpu] if amb is not None else share * activation_gib[0] + (1 - share) * activation_gib[1]) \
            * images
        if use_fp8 and amb is None:  # the base Linears keep no input: the LoRA targets' inputs count
            act = max(act + _lora_input_part(sizes, share) * images, 0.0)
        parts = estimate(sizes, activation_gib=act, optimizer=optimizer, checkpointing=ckpt, fp8_base=use_fp8,
                         swapped=spread(n, k), lookahead=lookahead, cuda_graphs=cuda_graphs,
                         checkpointed_gib=activation_gib[0] * images, modulation_on_cpu=on_cpu, graph_pool=graph_pool,
                         ema=ema)
        margin = MARGIN * (parts["activations"] + parts.get("CUDA graph pool", 0.0))
        return Plan(budget_gib, ckpt, use_fp8, k, sum(parts.values()) + RESERVE_GIB, parts, share if ckpt else 1.0,
                    amb, on_cpu, margin_gib=margin)

    best: Optional[Plan] = None
    for option in options:
        if cuda_graphs and option[2]:
            break  # CUDA graphs cannot replay swapped weights
        plan = plan_of(option)
        if sum(plan.parts.values()) + plan.margin_gib <= room:
            full = (1.0, option[1], option[2], None, option[4])
            if seconds is not None and option != full and _keeps(full, keep):
                other = plan_of(full)
                mine, theirs = seconds(plan), seconds(other)
                if mine is not None and theirs is not None and theirs < mine and \
                        sum(other.parts.values()) + other.margin_gib <= room:
                    return other
            return plan
        if best is None or plan.needs_gib < best.needs_gib:  # the leanest tried (the options go fastest first)
            best = plan
    # nothing fits: say which batch size would, at the leanest setting
    if best is None:  # every setting kept swaps blocks, which CUDA graphs cannot replay
        raise ConfigError(f"memory.vram_gb = {budget_gib:g}: {_listed(keep)} swaps blocks, which memory.cuda_graphs "
                          "cannot replay; set memory.cuda_graphs = false or memory.blocks_to_swap = 0")
    per_image = (best.parts["activations"] + best.parts.get("CUDA graph pool", 0.0)) * (1 + MARGIN) / max(batch_size, 1)
    fixed = best.needs_gib - per_image * batch_size
    fits = int((budget_gib - fixed) // per_image) if per_image > 0 else 0
    if keep:
        named = keep if named is None else named  # the user's keys among them (the automatic plan fixes some itself)
        hint_fixed = f"; you fixed {_listed(named)}: removing some lets the plan choose them" if named else ""
    else:
        hint_fixed = ""
    hint = (f"training.batch_size = {fits} fits (raise training.gradient_accumulation to keep the effective batch)"
            if 1 <= fits < batch_size else "lower data.resolution or the LoRA rank, or use a larger card")
    if user_set and best.checkpoint_fraction < 1:
        hint += f"; memory.checkpoint_fraction = {checkpoint_fraction:g} keeps activations: raise it toward 1"
    if cuda_graphs:
        hint += "; memory.cuda_graphs = false saves the graph pool and allows block swap"
    # the leanest setting tried, as it was (a key the user fixed may have kept it from checkpointing or fp8 storage)
    ckpt = (f"activation_budget = {best.activation_budget:g}" if best.activation_budget is not None else
            "no checkpointing" if not best.gradient_checkpointing else "checkpointing" if
            best.checkpoint_fraction >= 1 else f"checkpoint_fraction = {best.checkpoint_fraction:g}")
    leanest = (f"{ckpt}, {'fp8 storage' if best.fp8_base else 'bf16 weights'}"
               + (", modulation_on_cpu" if best.modulation_on_cpu else "") + f", {best.blocks_to_swap} swapped blocks")
    raise ConfigError(f"memory.vram_gb = {budget_gib:g}: even the leanest setting ({leanest}) needs about "
                      f"{best.needs_gib:.1f} GiB at training.batch_size = {batch_size}; {hint}{hint_fixed}")


# the [memory] knobs memory.vram_gb plans; each one set by hand (in the file or an override, not a preset) is a
# constraint: every setting considered keeps it, and a budget nothing fits under says which ones were fixed
CONSTRAINTS = ("gradient_checkpointing", "checkpoint_fraction", "activation_budget", "fp8_base", "fp8_compute",
               "blocks_to_swap", "modulation_on_cpu")


def _keeps(option: tuple, fixed: dict[str, Any]) -> bool:
    share, use_fp8, swapped, amb, on_cpu = option
    checks = {"gradient_checkpointing": lambda v: (share > 0) == bool(v),
              "fp8_base": lambda v: use_fp8 == bool(v),
              "blocks_to_swap": lambda v: swapped == int(v),
              "modulation_on_cpu": lambda v: on_cpu == bool(v),
              "activation_budget": lambda v: amb == (None if v is None else float(v)),
              "checkpoint_fraction": lambda v: share == float(v)}
    return all(checks[k](v) for k, v in fixed.items() if k in checks)


def _listed(fixed: dict[str, Any]) -> str:
    return ", ".join(f"memory.{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in fixed.items()) \
        or "nothing"



def for_model(spec, model: nn.Module):
    """``spec`` with the planning numbers of ``model``'s size where the family has several (``ModelSpec.variant_spec``:
    FLUX.2's Klein 4B / 9B / dev), else ``spec`` itself."""
    hook = getattr(spec, "variant_spec", None)
    return hook(spec, model) if hook is not None else spec


def apply_budget(cfg, spec, model: nn.Module, blocks: Sequence[nn.Module], trainable: Sequence[torch.Tensor],
                 lookahead: int, log=print, device: Optional[torch.device] = None, *,
                 fixed_keys: Optional[frozenset[str]] = None, allow_streaming: bool = True,
                 fp8_matmuls: Optional[bool] = None, sizes: Optional["Sizes"] = None, card: Any = None,
                 user_keys: Optional[frozenset[str]] = None) -> Plan:
    """Plan for ``cfg.memory.vram_gb``; call after LoRA injection and before the denoiser is placed on the GPU.

    Returns a frozen :class:`Plan` whose ``applied`` is the config the run uses (a copy with the chosen
    checkpointing, fp8 storage / compute, swap depth, host modulations and batch split); ``cfg`` itself is never
    written. The knobs in :data:`CONSTRAINTS` that the user set by hand are kept by every setting considered
    (``memory.modulation_on_cpu`` and ``memory.fp8_compute`` as before: true is applied / planned as fp8 compute,
    false is never planned).

    For the automatic plan (lorakit/train/autoplan.py): ``fixed_keys`` the keys the user set (default: those of
    ``cfg``), ``allow_streaming`` False plans neither block swap nor host modulations, ``fp8_matmuls`` whether the
    card has float8 matmuls (default: asked of ``device``), ``sizes`` the model's byte counts when already taken,
    ``card`` the :class:`lorakit.train.cards.CardFacts` the s/step model ranks on (default: ``device``'s on CUDA, else
    the H100 most rows were measured on): where the family has measured rows, partial checkpointing is taken only where
    the s/step model has it faster than every block checkpointed (see :func:`plan_memory`'s ``seconds``)."""
    from dataclasses import replace

    from lorakit.config.load import explicit_keys

    spec = for_model(spec, model)
    mem = cfg.memory
    explicit = explicit_keys(cfg) if fixed_keys is None else fixed_keys
    fixed = {k: getattr(mem, k) for k in CONSTRAINTS
             if f"memory.{k}" in explicit and k not in ("modulation_on_cpu", "fp8_compute")}
    can_swap = "memory.blocks_to_swap" in spec.config_keys and not getattr(mem, "modulation_on_cpu", False) and \
        (allow_streaming or "memory.blocks_to_swap" in fixed)
    w, h = resolution_wh(cfg.data.resolution)
    wanted = cfg.training.batch_size
    notes: list[str] = []

    # compiled blocks keep fewer intermediates (FLUX.1-dev without checkpointing: 28.4 GiB against 38 eager)
    activations = (spec.activation_gib_compiled or spec.activation_gib) if mem.compile else spec.activation_gib
    # fp8 *storage* under compile without CUDA graphs runs each block inside lorakit's own checkpoint
    # (lorakit/train/speed.py): a block left out of it would keep bf16 upcasts of its weights, which the
    # activation rates do not count, so that setting is only planned with every block checkpointed
    # fp8_compute left unset is decided here, before planning: where the GPU multiplies in float8, fp8 tiers are
    # planned as fp8 compute (partial checkpointing allowed) and it is switched on if the plan picks fp8
    deciding = mem.fp8_compute is None and mem.compile
    why_not = (_fp8_compute_problem(cfg, device) if fp8_matmuls is None else _fp8_card_problem(cfg, fp8_matmuls)) \
        if deciding else None
    auto_compute = deciding and why_not is None
    partial_fp8 = bool(mem.fp8_compute or auto_compute or mem.cuda_graphs or not mem.compile)
    # selective recomputation was measured with fp8 compute under compile, without CUDA graphs
    budgets = (spec.activation_budget_gib if mem.compile and not mem.cuda_graphs
               and (mem.fp8_compute or auto_compute) else ())
    # memory.modulation_on_cpu left unset: where the fp8 settings would be fp8 *storage* (no float8 matmuls), bf16
    # with the modulation Linears on the host comes first. On an H200 under compile both ran at 0.607 s/step
    # (FLUX.1-dev: fp8 storage 14.5 GiB, RESULTS.md round 4; modulations on the host 19.6 GiB, round 8), and bf16
    # keeps the weights exact. Not where it cannot run (CUDA graphs, CLIP-L training) or was switched off.
    host_linears = bool(spec.host_linears) and mem.modulation_on_cpu is None and \
        (not mem.cuda_graphs or spec.host_linears_graph_safe()) and not cfg.network.train_text_encoder and \
        not (mem.fp8_compute or auto_compute) and allow_streaming
    # set by hand: applied, so its bf16 settings are counted with the Linears off the device (counted on it, FLUX.1-dev's
    # measured peak was 6 GiB under the estimate); its fp8 settings as before (on it: an upper bound)
    host_fixed = bool(spec.host_linears) and mem.modulation_on_cpu is True
    host_linears = host_linears or host_fixed
    if sizes is None:
        sizes = Sizes.of(model, blocks, trainable, spec.host_linears if host_linears else (), spec=spec)
    if not sizes.lora_inputs and getattr(spec, "lora_input_gib", None) is not None:  # the LoRA layers in ``model``
        sizes = replace(sizes, lora_inputs=lora_inputs(spec, model, blocks, lora_paths(model)))
    # selective recomputation with the modulations on the host, measured under compile (with CUDA graphs the estimate
    # adds the graph pool on top: on an H200 it measured 1.9 GiB against the 2.8 GiB counted, RESULTS.md round 10)
    host_budgets = spec.host_activation_budget_gib if host_linears and mem.compile else ()

    step_of = _step_model(cfg, spec, auto_compute, card, device)

    def plan_for(batch: int) -> Plan:
        return plan_memory(float(mem.vram_gb), sizes, activation_gib=activations,
                           images=batch * (w * h) / 1024**2, optimizer=cfg.optimizer.name, batch_size=batch,
                           can_swap=can_swap, lookahead=lookahead, cuda_graphs=bool(mem.cuda_graphs),
                           checkpoint_fraction=float(mem.checkpoint_fraction),
                           fp8_only=bool(mem.fp8_compute), partial_fp8=partial_fp8, activation_budgets=budgets,
                           host_linears=host_linears, host_budgets=host_budgets, keep=fixed, seconds=step_of,
                           host_fixed=host_fixed, ema=bool(getattr(cfg.training, "ema", False)),
                           named=None if user_keys is None else {k: v for k, v in fixed.items()
                                                                 if f"memory.{k}" in user_keys},
                           graph_pool=GRAPH_POOL if getattr(spec, "graph_pool", None) is None else spec.graph_pool)

    batch, accumulation = wanted, cfg.training.gradient_accumulation
    try:
        plan = plan_for(wanted)
    except ConfigError as too_big:
        # a smaller batch with gradient accumulation keeps the effective batch: the largest divisor that fits
        for batch in [b for b in range(wanted - 1, 0, -1) if wanted % b == 0]:
            try:
                plan = plan_for(batch)
                break
            except ConfigError:
                continue
        else:
            raise too_big from None
        accumulation *= wanted // batch
        notes.append(f"vram_gb = {mem.vram_gb:g}: training.batch_size {wanted} does not fit; using batch_size = "
                     f"{batch} with gradient_accumulation = {accumulation} (the same effective batch)")
    notes.append(plan.describe())
    if getattr(spec, "planning_estimate", "") and not _measured_kind(cfg, spec, plan, auto_compute):
        notes.append(f"vram_gb = {mem.vram_gb:g}: {spec.planning_estimate}")
    fp8_compute = mem.fp8_compute
    if deciding and plan.fp8_base:
        if plan.blocks_to_swap:  # swapped blocks run inside lorakit's own checkpoint, where fp8 compute was slower
            auto_compute, why_not = False, ("blocks are swapped: measured slower than fp8 storage there, 0.73 against "
                                            "0.65 s/step at vram_gb = 12")
        fp8_compute = auto_compute
        notes.append(f"vram_gb = {mem.vram_gb:g}: " + (
            "fp8_compute = true (float8 matmuls; under compile faster than upcasting the fp8 weights; "
            "memory.fp8_compute = false keeps the upcast)" if auto_compute else
            f"fp8 storage without fp8 compute ({why_not})"))
    for line in notes:
        log(line)
    memory = replace(mem, gradient_checkpointing=plan.gradient_checkpointing,
                     checkpoint_fraction=plan.checkpoint_fraction, activation_budget=plan.activation_budget,
                     fp8_base=plan.fp8_base, blocks_to_swap=plan.blocks_to_swap, fp8_compute=fp8_compute,
                     # installed by the adapter's before_placement, which the loop calls again with this config
                     modulation_on_cpu=True if plan.modulation_on_cpu else mem.modulation_on_cpu)
    training = replace(cfg.training, batch_size=batch, gradient_accumulation=accumulation)
    applied = replace(cfg, memory=memory, training=training)
    return replace(plan, batch_size=batch, gradient_accumulation=accumulation, fp8_compute=fp8_compute,
                   notes=tuple(notes), applied=applied)


def _step_model(cfg, spec, auto_compute: bool, card: Any, device: Optional[torch.device]
                ) -> Optional[Callable[[Plan], Optional[float]]]:
    """A plan's s/step as :func:`lorakit.train.cards.step_seconds` estimates it from the family's measured rows (None
    where the family has none), for :func:`plan_memory` to rank checkpointing settings with."""
    from lorakit.train import cards

    rows = cards.rows_for(spec)
    if not rows:
        return None
    if card is None and device is not None and device.type == "cuda":
        try:
            card = cards.local_card(device)
        except (RuntimeError, AssertionError):  # no CUDA in this torch (tests): ranked on the reference card
            card = None
    card = card or cards.card("h100")  # the ranking compares settings of one family; most rows ran on an H100

    def seconds(plan: Plan) -> Optional[float]:
        step = cards.step_seconds(spec.family, _settings(cfg.memory, plan, auto_compute), card, rows=rows)
        return step.seconds if step is not None else None

    return seconds


def _settings(mem, plan: Plan, auto_compute: bool) -> dict[str, Any]:
    """The knobs the s/step model reads (autoplan.settings_of's keys) of ``plan`` under ``mem``."""
    return {"compile": bool(mem.compile), "cuda_graphs": bool(mem.cuda_graphs), "fp8_base": plan.fp8_base,
            # as apply_budget decides it: fp8 compute where planned, not with swapped blocks
            "fp8_compute": plan.fp8_base and bool(mem.fp8_compute or (auto_compute and not plan.blocks_to_swap)),
            "checkpoint_fraction": plan.checkpoint_fraction if plan.gradient_checkpointing else 0.0,
            "activation_budget": plan.activation_budget,
            "modulation_on_cpu": bool(plan.modulation_on_cpu or mem.modulation_on_cpu),
            "blocks_to_swap": plan.blocks_to_swap}


def _measured_kind(cfg, spec, plan: Plan, auto_compute: bool) -> bool:
    """Whether a measured row of the family has ``plan``'s kind of setting (lorakit/train/cards.py: measured_kind)."""
    from lorakit.train import cards

    return cards.measured_kind(cards.rows_for(spec), _settings(cfg.memory, plan, auto_compute))


def _fp8_card_problem(cfg, fp8_matmuls: bool) -> Optional[str]:
    """:func:`_fp8_compute_problem` for a card known by its facts (``lorakit plan --card``)."""
    if not fp8_matmuls:
        return "the card has no float8 matmuls (compute capability 8.9+)"
    if cfg.training.mixed_precision != "bf16":
        return f'training.mixed_precision = "{cfg.training.mixed_precision}" (float8 matmuls produce bf16)'
    return None


def _fp8_compute_problem(cfg, device: Optional[torch.device]) -> Optional[str]:
    """None where memory.fp8_compute, left unset, can be switched on, else why not. Under compile (with or without
    CUDA graphs) the float8 matmuls are measurably faster than fp8 storage at about the same memory (H200: FLUX.1-dev
    0.519 against 0.607 s/step at 14.6/14.5 GiB; SDXL with CUDA graphs 0.230 against 0.308 at 4.85 GiB;
    benchmarks/RESULTS.md), so the budget uses them where the GPU and PyTorch have them."""
    from lorakit.train import memory

    if device is None or device.type != "cuda":
        return "not on a CUDA GPU"
    try:
        memory.check_fp8_compute(cfg, device)  # the same checks as a hand-set memory.fp8_compute = true
    except ConfigError as why:
        return str(why)
    return None
