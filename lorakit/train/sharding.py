"""``distributed.shard = "base"``: the frozen base sharded over the processes of a run (FSDP2), for a base one card
cannot hold (FLUX.2 dev, FLUX.1, Qwen-Image; the families list the key in ``ModelSpec.config_keys``).

* **What is sharded:** after LoRA injection and placement, each repeated block of the denoiser (the blocks the
  family's spec names: ``speed.repeated_blocks(denoiser, spec.compile_blocks)``) and then the denoiser itself go
  through ``torch.distributed.fsdp.fully_shard``: every process keeps 1/N of each frozen weight and gathers a block's
  weights just before the block runs (forward, and again in backward), freeing them after. The LoRA parameters are
  left out of the sharding (``ignored_params``): each process holds them whole, as do its optimizer state, so the
  gradient exchange of data-parallel training (train/distributed.py) sums them unchanged and the LoRA written is the
  one a single process with the whole global batch trains (tested on gloo processes against one process).
* **Every forward runs on every process** (each gathers shards from all): rank 0's previews, validation loss and the
  final LoRA-effect check are run by the other ranks too, in the same order, their results discarded
  (:class:`Lockstep`); a process whose slice of a short global batch is empty still runs its forward and backward on
  one sample with weight 0 (``distributed.local_part``).
* **What does not compose**, refused in one line each (:func:`check_config`): block swap, fp8 storage and fp8
  matmuls, compile and CUDA graphs, modulations on the CPU, a single process. The automatic memory plan (which
  chooses those) is not applied; :func:`check_room` logs the per-card estimate and holds it against ``memory.vram_gb``.
* **``distributed.shard = "auto"``** (the default): :func:`decide` shards when the automatic plan finds that one card
  cannot hold the run without block swap and the sharded base fits (and is not the slower by the s/step model); what
  does not compose is then not chosen instead of refused (docs/multi-gpu.md).
* **Checkpoints** hold the LoRA state only (as without sharding): rank 0 writes them, a resume on any number of
  processes reads them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch

from lorakit.errors import ConfigError

GIB = 2**30
GATHERED_BLOCKS = 2  # a block's full weights while it runs, plus the next one FSDP2 prefetches


def on(cfg) -> bool:
    return getattr(cfg.distributed, "shard", "none") == "base"


# (key, is set, why it cannot run on a sharded base, how to switch it off)
_REFUSED: tuple[tuple[str, Callable[[Any], bool], str, str], ...] = (
    ("memory.blocks_to_swap", lambda m: m.blocks_to_swap > 0,
     "block swap streams whole blocks from the host, a sharded block is gathered from the other processes", "0"),
    ("memory.fp8_base", lambda m: bool(m.fp8_base),
     "float8 storage replaces the Linears' weights by scaled float8 tensors that the sharding does not gather",
     "false"),
    ("memory.fp8_compute", lambda m: bool(m.fp8_compute), "float8 matmuls need float8-stored weights", "false"),
    ("memory.compile", lambda m: bool(m.compile), "compiled blocks are not built on sharded blocks", "false"),
    ("memory.cuda_graphs", lambda m: bool(m.cuda_graphs),
     "a graph replays fixed weight addresses, a sharded block is gathered into new memory each time", "false"),
    ("memory.activation_budget", lambda m: m.activation_budget is not None, "it needs memory.compile", "unset"),
    ("memory.modulation_on_cpu", lambda m: bool(m.modulation_on_cpu),
     "it keeps Linears on the host, outside the sharding", "false"),
)


def check_config(cfg, processes: int) -> None:
    """What a sharded base cannot do, refused in one line before anything loads."""
    if not on(cfg):
        return
    if processes < 2:
        raise ConfigError("distributed.shard = \"base\" shards the base over several processes: start the run with "
                          "--gpus N (N ≥ 2) or accelerate/torchrun, or set distributed.shard = \"none\"")
    for key, is_set, why, off in _REFUSED:
        if is_set(cfg.memory):
            raise ConfigError(f"{key} with distributed.shard = \"base\": {why}; set {key} = {off} (or "
                              "distributed.shard = \"none\")")


# ====================================================================== the per-card memory


def per_card(sizes, spec, cfg, processes: int, sharded: bool) -> dict[str, float]:
    """GiB per part on each card of ``processes`` (weights as loaded, ``cfg``'s checkpointing with its fraction, and
    the per-process batch):
    the whole base on each card, or (``sharded``) its 1/N share plus the gathered working set
    (:data:`GATHERED_BLOCKS` of the largest block). :data:`budget.RESERVE_GIB` comes on top."""
    from lorakit.config.resolution import resolution_wh
    from lorakit.train import budget

    base = sizes.outside[0] + sum(b[0] for b in sizes.blocks)
    largest = max((b[0] for b in sizes.blocks), default=0)
    w, h = resolution_wh(cfg.data.resolution)
    images = w * h / 1024**2 * cfg.training.batch_size
    share = cfg.memory.checkpoint_fraction if cfg.memory.gradient_checkpointing else 0.0  # blocks left out keep theirs
    rate = share * spec.activation_gib[0] + (1 - share) * spec.activation_gib[1]
    lora = sizes.lora_params * (4 + 4 + budget.STATE_BYTES.get(cfg.optimizer.name, 8)
                                + (budget.EMA_BYTES if getattr(cfg.training, "ema", False) else 0))
    parts = {"weights": (base / processes if sharded else base) / GIB}
    if sharded:
        parts["gathered blocks"] = GATHERED_BLOCKS * largest * (processes - 1) / processes / GIB
    parts.update({"LoRA+optimizer": lora / GIB, "activations": rate * images})
    return parts


def check_room(cfg, spec, denoiser, blocks: Sequence[torch.nn.Module], trainable, processes: int,
               log: Callable[[str], None], auto: bool = False) -> dict:
    """The run's per-card estimate with the base sharded, logged and returned (plan.json's ``"sharded"``); held
    against ``memory.vram_gb`` (per card) when set. The automatic plan is not used with sharding (what it chooses
    besides checkpointing does not compose)."""
    from lorakit.train import budget

    sizes = budget.Sizes.of(denoiser, blocks, trainable, spec=spec)
    parts = per_card(sizes, budget.for_model(spec, denoiser), cfg, processes, sharded=True)
    peak = sum(parts.values()) + budget.RESERVE_GIB
    shown = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
    log(f"sharded base over {processes} processes: about {peak:.2f} GiB per card ({shown}, reserve "
        f"{budget.RESERVE_GIB}); " + ("chosen by distributed.shard = \"auto\" (above)" if auto else
                                      "the automatic memory plan is off with distributed.shard = \"base\" ([memory] "
                                      "runs as written)"))
    room = cfg.memory.vram_gb
    if room and peak > room:
        raise ConfigError(f"memory.vram_gb = {room:g} (per card): the sharded base needs about {peak:.1f} GiB per card "
                          f"on {processes} processes; use more processes, memory.gradient_checkpointing = true, a "
                          "smaller training.batch_size or data.resolution")
    return {"processes": processes, "per_card_gib": round(peak, 3), "parts": {k: round(v, 3) for k, v in parts.items()}}


# ====================================================================== distributed.shard = "auto"


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` chose: ``shard`` the base or not; ``cfg`` the config to run (sharding: the memory settings
    that do not compose with it switched off, ``distributed.shard = "base"``); ``single`` the single-card plan when
    one was made (the run uses it when not sharding); ``line`` what to log ("" = nothing to say); ``record`` the
    numbers behind an "auto" decision (plan.json's ``"sharded"."auto"`` when it shards)."""

    shard: bool
    cfg: Any
    single: Any = None
    single_lines: tuple[str, ...] = ()
    line: str = ""
    record: Optional[dict] = None
    planned: bool = False   # ``single`` / ``single_lines`` hold the single-card plan (autoplan.choose was asked)


def _off(cfg, explicit: frozenset) -> tuple[Any, list[str], list[str]]:
    """``cfg`` with what does not compose with sharding switched off (the automatic plan would have chosen those);
    returns (config, what was switched off, the keys the user set (or the adapter already applied), which block
    sharding)."""
    mem, off, mine = cfg.memory, [], []
    values = {"blocks_to_swap": 0, "fp8_base": False, "fp8_compute": False, "compile": False, "cuda_graphs": False,
              "activation_budget": None, "modulation_on_cpu": False}
    for key, is_set, _why, _how in _REFUSED:  # host modulations are installed before the decision: kept as set
        if is_set(cfg.memory):
            (mine if key in explicit or key == "memory.modulation_on_cpu" else off).append(key)
    mem = replace(mem, **{k.split(".")[1]: values[k.split(".")[1]] for k in off})
    return replace(cfg, memory=mem, distributed=replace(cfg.distributed, shard="base")), off, mine


def _sharded_step(spec, cfg, card, processes: int, weights_bytes: int):
    """Seconds per step of the sharded base, estimated: the eager bf16 step of the s/step model at the config's
    checkpointing, or the gathers, whichever is longer (FSDP2 prefetches the next block while one runs): every
    process receives (N-1)/N of the weights twice a step (forward, backward), counted at the host link's rate (a
    lower bound for a card-to-card link). None where the family has no measured rows."""
    from lorakit.config.resolution import resolution_wh
    from lorakit.train import autoplan, cards

    rows = cards.rows_for(spec)
    if not rows:
        return None
    w, h = resolution_wh(cfg.data.resolution)
    compute = cards.step_seconds(spec.family, autoplan.settings_of(cfg.memory), card,
                                 images=cfg.training.batch_size * w * h / 1024**2, rows=rows)
    if compute is None:
        return None
    gather = 2 * weights_bytes * (processes - 1) / processes / (card.host_link_gbs * 1e9) if card.host_link_gbs else 0
    return max(compute.seconds, gather)


def decide(cfg, spec, sizes, card, processes: int, *, cuda: bool, model=None, blocks: Sequence = (),
           trainable: Sequence = (), room: Optional[float] = None, device=None) -> Decision:
    """Whether the base is sharded: ``distributed.shard`` = "base" yes, "none" no; "auto" (the default) shards when
    several processes run on CUDA under the automatic plan (``memory.auto``) for a family that allows sharding, and
    no single-card setting the planner considers fits ``card``'s free memory (or ``memory.vram_gb``, per card) without
    block swap or host modulations, while the sharded per-card estimate fits; where the s/step model estimates both
    (:func:`_sharded_step`), only when sharding is not the slower (a tie shards: bf16 weights, no fp8 storage).
    ``spec``: sized (``budget.for_model``); ``card``: with the least free memory of all ranks (every rank decides the
    same); ``room``: a resumed run's recorded budget.
    Used by the run (train/placement.py) and ``lorakit plan --gpus N`` (train/planview.py)."""
    from lorakit.config import families
    from lorakit.config.load import explicit_keys
    from lorakit.train import autoplan, budget, cards, swap

    value = getattr(cfg.distributed, "shard", "none")
    if value != "auto":
        return Decision(value == "base", cfg)
    planned = cuda and bool(cfg.memory.auto)
    applies = processes >= 2 and cfg.model.family in families.applies_to("distributed.shard")
    measured = cards.has_rows(spec)  # without rows the planner cannot tell whether one card holds the run

    def single() -> tuple[Any, list[str], str]:
        lines: list[str] = []
        try:
            plan = autoplan.choose(cfg, spec, model, blocks, trainable, swap.LOOKAHEAD, card, device=device,
                                   log=lines.append, sizes=sizes, room=room)
        except ConfigError as exc:  # memory.vram_gb set and nothing fits it
            return None, lines, str(exc)
        return plan, lines, ""

    if not planned or not applies or not measured:  # as "none"; said only where sharding could have applied
        plan, lines, err = single() if planned else (None, [], "")
        if err:
            raise ConfigError(err)
        why = "memory.auto = false (the [memory] settings run as written)" if not planned else \
            f"{spec.family} has no measured memory and speed rows to plan from"
        line = (f"distributed.shard = \"auto\": not sharded, {why}; set distributed.shard = \"base\" to shard"
                if applies and cuda else "")
        return Decision(False, cfg, plan, tuple(lines), line, planned=planned)
    plan, lines, err = single()
    explicit = explicit_keys(cfg)
    run_cfg, off, mine = _off(cfg, explicit)
    if not ({"memory.gradient_checkpointing", "memory.checkpoint_fraction"} & explicit):
        run_cfg = replace(run_cfg, memory=replace(run_cfg.memory, gradient_checkpointing=True, checkpoint_fraction=1.0))
    parts = per_card(sizes, spec, run_cfg, processes, sharded=True)
    peak = sum(parts.values()) + budget.RESERVE_GIB
    budget_gib = float(cfg.memory.vram_gb) if cfg.memory.vram_gb else room or math.floor(card.free_gib * 10) / 10
    streams = plan is not None and (plan.applied.memory.blocks_to_swap > 0
                                    or bool(plan.applied.memory.modulation_on_cpu))
    weights = int(sizes.outside[0] + sum(b[0] for b in sizes.blocks))
    step = _sharded_step(spec, run_cfg, card, processes, weights) if streams else None
    faster = streams and (step is None or plan.step is None or step <= plan.step.seconds)  # a tie: keep bf16 weights
    one = (f"one card's best plan is {autoplan.summary(plan.applied.memory, plan)} ~{plan.estimate_gib:.1f} GiB"
           + (f", ~{plan.step.seconds:.2f} s/step" if plan.step else "") if plan is not None
           else "no single-card setting fits")
    if plan is not None:  # what the single-card plan chose that sharding leaves out
        off += [k for k, is_set, _w, _h in _REFUSED if is_set(plan.applied.memory) and k not in off + mine]
    record = {"single_card_gib": round(plan.estimate_gib, 3) if plan is not None else None,
              "single_card_s_step": round(plan.step.seconds, 3) if plan is not None and plan.step else None,
              "room_gib": budget_gib, "sharded_gib": round(peak, 3), "sharded_s_step": round(step, 3) if step else None,
              "processes": processes, "not_chosen": off}
    wants = peak <= budget_gib and (plan is None or faster)
    if not wants:
        if err:
            raise ConfigError(err)
        line = "" if plan is not None else (f"distributed.shard = \"auto\": not sharded: {one} of {budget_gib:g} GiB "
                                            f"and the sharded base needs ~{peak:.1f} GiB per card")
        return Decision(False, cfg, plan, tuple(lines), line, {**record, "sharded": False}, True)
    if mine:
        line = (f"distributed.shard = \"auto\": not sharded although {one} of {budget_gib:g} GiB and the sharded "
                f"base fits (~{peak:.1f} GiB per card): {', '.join(mine)} (as set) does not compose with sharding")
        if err:
            raise ConfigError(err + f"; {line}")
        return Decision(False, cfg, plan, tuple(lines), line, {**record, "sharded": False}, True)
    line = (f"distributed.shard = \"auto\": the base is sharded over {processes} processes ({budget_gib:g} GiB per "
            f"card, the least free of all ranks or memory.vram_gb): {one}; sharded ~{peak:.1f} GiB per card"
            + (f", ~{step:.2f} s/step (estimated)" if step else "")
            + (f"; not chosen with sharding (they do not compose with it): {', '.join(off)}" if off else ""))
    return Decision(True, run_cfg, plan, tuple(lines), line, {**record, "sharded": True}, True)


# ====================================================================== sharding the denoiser


def shard_base(cfg, denoiser: torch.nn.Module, blocks: Sequence[torch.nn.Module], device: torch.device,
               processes: int, log: Callable[[str], None]) -> int:
    """Place the (LoRA-injected) denoiser on ``device`` sharded: each repeated block moved there and
    ``fully_shard``-ed in turn (at most one whole block on the device besides the shards: the adapter leaves a base
    to be sharded on the CPU after loading, ``autoplan.loading_memory``), then what lies outside the blocks, the LoRA
    parameters (everything trainable) left whole; returns the number of sharded blocks (0: sharding off)."""
    if not on(cfg):
        return 0
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not blocks:
        raise ConfigError(f"distributed.shard = \"base\": {type(denoiser).__name__} has no repeated blocks lorakit "
                          "knows how to shard; set distributed.shard = \"none\"")
    mesh, name = init_device_mesh(device.type, (processes,)), type(denoiser).__name__
    # FSDP2 warns for every block that returns a view (diffusers' blocks slice their outputs): harmless unless the
    # caller writes into that view in place, which would skip the backward gather; the gloo tests compare sharded
    # runs of the toy FLUX.1 against one process (tests/integration/test_multi_gpu_shard.py)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

    def move(t: torch.Tensor) -> torch.Tensor:  # a model built on the meta device (benchmarks): left uninitialised
        return torch.empty_like(t, device=device) if t.is_meta else t.to(device)

    inside = {id(m) for b in blocks for m in b.modules()}
    for block in blocks:
        block._apply(move)
        fully_shard(block, mesh=mesh, ignored_params={p for p in block.parameters() if p.requires_grad})
    for mod in denoiser.modules():
        if id(mod) not in inside:
            mod._apply(move, recurse=False)
    fully_shard(denoiser, mesh=mesh, ignored_params={p for p in denoiser.parameters() if p.requires_grad})
    log(f"sharded base: {len(blocks)} blocks and the rest of the {name} over {processes} "
        "processes (FSDP2); the LoRA stays whole on each")
    return len(blocks)


# ====================================================================== the other ranks' forwards


class Lockstep:
    """The forwards rank 0 runs outside the training steps (validation loss, previews, the LoRA-effect check), run by
    another rank too, in the same order and with the same inputs, results discarded: with a sharded base each of
    them gathers every block from all processes. Built after ``loop.prepare_model``; runs step 0's validation and the
    before-previews as rank 0's ``loop.prepare`` does."""

    def __init__(self, r, cfg, start_step: int, watchdog) -> None:
        from lorakit.data.report import run_settings
        from lorakit.train.previews import Previews
        from lorakit.train.validation import Validator, attach

        def quiet(_line: str) -> None:
            return None

        self.r, self.cfg = r, cfg
        self.previews = Previews(cfg, r.adapter.spec, r.adapter, r.run, r.device, r.compute_dtype, watchdog, quiet,
                                 resolution=run_settings(r.dataset, cfg.training.batch_size)["resolution"])
        self.previews.modules = r.placed.modules
        self.validator = Validator(r.validation, cfg, r.run, r.adapter, r.latents, r.texts, r.device, r.compute_dtype,
                                   None, quiet)
        attach(self.validator, r.placed.modules, r.placed.targets, r.dataset, r.stream)
        if self.validator.enabled and start_step == 0:
            self.validator.loss()
        if self.previews.prompts and r.cfg.sample.at_start and start_step == 0:
            self.draw()

    def draw(self) -> None:
        from lorakit.train.steps import autocast, no_training_randomness

        for p in self.previews.prompts:  # as Previews.draw (compile is refused with sharding: no eager stance)
            with torch.no_grad(), autocast(self.r.device, self.r.compute_dtype), \
                    no_training_randomness(self.previews.modules):
                self.r.adapter.sample(p, torch.Generator().manual_seed(p.seed))

    def after_step(self, step: int) -> None:
        if self.validator.due(step):
            self.validator.loss()
        if self.previews.due(step):
            self.draw()

    def finish(self, next_batch) -> None:
        from lorakit.train import steps

        r = self.r
        if self.previews.prompts:
            self.draw()
        steps.lora_effect(r.adapter, r.placed.modules, next_batch, self.cfg.training,
                          torch.Generator().manual_seed(self.cfg.training.seed), r.device, r.compute_dtype)
