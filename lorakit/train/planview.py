"""``lorakit plan run.toml [--card NAME]``: the plan a run would make on a card, without loading or running anything.

The family's full-size denoiser is built on the meta device (``ModelSpec.planning_model``: shapes only, no memory, no
file read), its LoRA counted from the targets, and :func:`lorakit.train.autoplan.choose` plans it for the card: the
card table's facts with ``--card``, else the local CUDA card. Prints every planned setting with who chose it (you,
the planner, or the default / preset), the estimated peak memory with its parts, the caching batch, and the s/step
estimate with the measured row it comes from and what was extrapolated.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from lorakit.errors import ConfigError
from lorakit.train import autoplan, budget, cards


def lora_parameters(model, targets: dict[str, int], algo: str = "lora") -> int:
    """Trainable parameters of ``targets`` ({path: rank}) on ``model``: LoRA's down (in → rank) + up (rank → out);
    LoHa (``network.type = "loha"``) two such pairs; DoRA one pair plus its magnitude, one per input column
    (lorakit/lora/variants.py). LoKr is counted as LoRA (its Kronecker factors are mostly smaller)."""
    from torch import nn

    total = 0
    for path, rank in targets.items():
        sub = model.get_submodule(path)
        if isinstance(sub, nn.Conv2d):
            k = sub.kernel_size[0] * sub.kernel_size[1]
            fan_in, fan_out, columns = sub.in_channels * k, sub.out_channels, sub.in_channels
        else:
            fan_in, fan_out = sub.in_features, sub.out_features
            columns = fan_in
        total += rank * (fan_in + fan_out) * (2 if algo == "loha" else 1) + (columns if algo == "dora" else 0)
    return total


_SIZES: dict[tuple, budget.Sizes] = {}
_BUILT: dict[str, tuple] = {}  # one meta model per family / variant / network / dtype in a process (tests, the UI)
_TARGETS: dict[int, frozenset[str]] = {}  # id(meta model) -> its LoRA targets' paths (no LoRA is injected there)


def meta_model(cfg) -> tuple:
    """(spec, model, blocks, trainable) of ``cfg``'s full-size denoiser on the meta device, LoRA counted."""
    import json

    import torch

    from lorakit.config.toml_io import config_to_dict
    from lorakit.models.registry import get_family
    from lorakit.train import speed

    spec = get_family(cfg.model.family).SPEC
    if spec.planning_model is None:
        raise ConfigError(f"lorakit plan: the {cfg.model.family} family does not describe its full-size model for "
                          "planning; plan it on the card itself (lorakit train logs the plan)")
    # the checkpoint too: a family may read its size from the file's header (FLUX.2)
    key = json.dumps([cfg.model.family, getattr(cfg.model, "variant", None), str(cfg.model.checkpoint),
                      cfg.training.mixed_precision,
                      config_to_dict(cfg).get("network", {})], sort_keys=True, default=str)
    if key not in _BUILT:
        with torch.device("meta"):
            model, targets = spec.planning_model(cfg)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[cfg.training.mixed_precision]
        model._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)  # as loaded; ModelMixin.to() would warn
        model.requires_grad_(False)
        trainable = [torch.empty(lora_parameters(model, targets, str(getattr(cfg.network, "type", "lora"))),
                                 device="meta")]
        _BUILT[key] = (spec, model, speed.repeated_blocks(model, extra=spec.compile_blocks), trainable)
        _TARGETS[id(model)] = frozenset(targets)
    return _BUILT[key]


def sizes_of(cfg) -> budget.Sizes:
    """The byte counts of ``cfg``'s full-size denoiser (once per model in a process: they take seconds)."""
    spec, model, blocks, trainable = meta_model(cfg)
    key = (id(model), tuple(spec.host_linears), sum(int(t.numel()) for t in trainable))
    if key not in _SIZES:
        _SIZES[key] = budget.Sizes.of(model, blocks, trainable, spec.host_linears, spec=spec,
                                         paths=_TARGETS.get(id(model)))
    return _SIZES[key]


def plan_for(cfg, card: cards.CardFacts, log=None) -> tuple[Optional[budget.Plan], list[str]]:
    """The automatic plan of ``cfg`` on ``card`` (None where nothing is planned) and the lines it logged."""
    from lorakit.train import swap

    spec, model, blocks, trainable = meta_model(cfg)
    lines: list[str] = []
    if not getattr(cfg.memory, "auto", True):  # as train/placement.py: memory.vram_gb alone plans, or nothing does
        return (_as_written_plan(cfg, card, log or lines.append) if cfg.memory.vram_gb else None), lines
    plan = autoplan.choose(cfg, spec, model, blocks, trainable, swap.LOOKAHEAD, card, device=None,
                           log=log or lines.append, sizes=sizes_of(cfg))
    return plan, lines


def _as_written_plan(cfg, card: cards.CardFacts, log) -> budget.Plan:
    """``memory.auto = false`` with ``memory.vram_gb``: the run's :func:`budget.apply_budget` (compile and CUDA graphs
    as written, nothing steered), with the s/step estimate and a log line for :func:`planned`."""
    from dataclasses import replace

    from lorakit.config.resolution import resolution_wh
    from lorakit.train import swap

    spec, model, blocks, trainable = meta_model(cfg)
    plan = budget.apply_budget(cfg, spec, model, blocks, trainable, swap.LOOKAHEAD, log=lambda _: None, device=None,
                               fp8_matmuls=card.fp8, sizes=sizes_of(cfg), card=card)
    w, h = resolution_wh(cfg.data.resolution)
    step = cards.step_seconds(spec.family, autoplan.settings_of(plan.applied.memory), card,
                              images=cfg.training.batch_size * w * h / 1024**2,
                              rows=cards.rows_for(budget.for_model(spec, model)))
    chosen = autoplan.summary(plan.applied.memory, plan)
    line = (f"memory.auto = false: memory.vram_gb = {cfg.memory.vram_gb:g} plans {chosen} (compile and cuda_graphs "
            f"as written); estimated peak {plan.estimate_gib:.1f} of {cfg.memory.vram_gb:g} GiB")
    log(line)
    return replace(plan, step=step, card=card, line=line)


def cards_lines(cfg, card: cards.CardFacts, gpus: int, single: Optional[budget.Plan]) -> list[str]:
    """``lorakit plan --gpus N`` (issue 24): the memory of each of N cards, the whole base on each (data-parallel:
    the plan above on every card) and the base sharded (``distributed.shard = "base"``: 1/N of the weights as loaded
    plus the gathered blocks, with the config's checkpointing; the plan's other levers do not compose with it)."""
    from lorakit.train import sharding

    spec, model = meta_model(cfg)[:2]
    spec = budget.for_model(spec, model)
    room = float(cfg.memory.vram_gb) if cfg.memory.vram_gb else math.floor(card.free_gib * 10) / 10
    b = cfg.training.batch_size
    out = [f"  {gpus} cards (memory.vram_gb and every peak here are per card: {room:g} GiB each; training.batch_size "
           f"{b} is per card, the global batch {gpus * b}):"]
    shardable = cfg.model.family in _shardable()
    rows = [("none", "whole base on each card", sharding.per_card(sizes_of(cfg), spec, cfg, gpus, sharded=False))]
    if shardable:
        rows.append(("base", "base sharded", sharding.per_card(sizes_of(cfg), spec, cfg, gpus, sharded=True)))
    if single is not None:
        out.append(f"    distributed.shard = \"none\" (data-parallel, the plan above on every card): "
                   f"~{single.estimate_gib:.2f} GiB per card")
    fits = {}
    for value, label, parts in rows:
        peak = sum(parts.values()) + budget.RESERVE_GIB
        fits[value] = peak <= room
        shown = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        ckpt = "checkpointing" if cfg.memory.gradient_checkpointing else "no checkpointing"
        out.append(f"    distributed.shard = \"{value}\" ({label}, weights as loaded, {ckpt}): ~{peak:.2f} GiB per "
                   f"card ({shown}, reserve {budget.RESERVE_GIB}) {'fits' if fits[value] else 'does not fit'}")
    if not shardable:
        out.append(f"    distributed.shard = \"base\" is not offered for {cfg.model.family} (only "
                   f"{', '.join(sorted(_shardable()))})")
    if sharding.on(cfg):
        out.append("    this config shards (distributed.shard = \"base\"): the run uses the sharded row; the automatic "
                   "plan above (one card alone) is not applied")
        return out
    # what the run decides (sharding.decide, as train/placement.py calls it, on N such cards)
    _, model, blocks, trainable = meta_model(cfg)
    try:
        decision = sharding.decide(cfg, spec, sizes_of(cfg), card, gpus, cuda=True, model=model, blocks=blocks,
                                   trainable=trainable)
    except ConfigError as exc:  # memory.vram_gb set and neither one card nor the sharded base fits it
        return out + [f"    the run would stop: {exc}"]
    if decision.line:
        out.append(f"    {decision.line}")
    if decision.shard:
        out.append(f"    the run would shard: `lorakit train --gpus {gpus}` runs the base sharded (distributed.shard "
                   "= \"auto\"), the automatic plan above (one card alone) is not applied")
    elif shardable and fits["base"] and not fits["none"]:
        why = "distributed.shard = \"none\"" if cfg.distributed.shard == "none" else "it does not choose it"
        out.append(f"    one card cannot hold this base as loaded: distributed.shard = \"base\" with --gpus {gpus} "
                   f"fits without block swap or fp8 storage; the run would not shard ({why})")
    return out


def _shardable() -> set[str]:
    from lorakit.config import families

    return set(families.applies_to("distributed.shard"))


def who(cfg, key: str, value, explicit: frozenset[str]) -> str:
    section, name = key.split(".")
    set_to = getattr(getattr(cfg, section), name)
    if key in explicit:  # kept as set, except a batch the card cannot hold (split with accumulation, same effective)
        return "you" if set_to == value else f"planner (you set {set_to}" + (
            "; the same effective batch)" if section == "training" else ")")
    return "planner" if set_to != value else "as loaded (default or preset)"


def report(cfg, card: cards.CardFacts, label: str) -> str:
    """What ``lorakit plan`` prints (and the web UI's Train page shows: the same text)."""
    return planned(cfg, card, label)[0]


def planned(cfg, card: cards.CardFacts, label: str, gpus: int = 1) -> tuple[str, Optional[budget.Plan]]:
    """:func:`report`'s text and the plan it shows (None where nothing is planned); ``gpus`` > 1: with the per-card
    memory of that many cards (:func:`cards_lines`)."""
    from lorakit.config.load import explicit_keys

    PLANNED = autoplan.PLANNED
    try:
        plan, lines = plan_for(cfg, card)
    except ConfigError as exc:  # nothing fits one card: with several, the sharded row may
        if gpus == 1:
            raise
        plan, lines = None, [f"  one card: {exc}"]
    out = [f"lorakit plan: {label} on {card.describe()}" + (f" (card table: {card.key})" if card.key else "")]
    out += [f"  note: {n}" for n in card.notes]
    if plan is None and not getattr(cfg.memory, "auto", True):
        out.append("  memory.auto = false: lorakit train runs the [memory] settings as written (nothing is planned); "
                   "remove it, or set memory.vram_gb, for a plan")
    # the planner's warnings and notes (network.type = "loha" runs eager: why compile is off); its log line: below
    out += lines if plan is None else [f"  {ln}" for ln in lines if ln.startswith(("warning:", "plan: "))]
    if plan is None:
        if gpus > 1:
            out += cards_lines(cfg, card, gpus, None)
        return "\n".join(out), None
    explicit = explicit_keys(cfg)
    applied = plan.applied
    rows = [(key, getattr(getattr(applied, key.split(".")[0]), key.split(".")[1])) for key in PLANNED]
    width = max(len(k) for k, _ in rows) + 2
    out.append(f"  {'setting':<{width}}{'value':<10}chosen by")
    for key, value in rows:
        shown = str(value).lower() if isinstance(value, bool) or value is None else f"{value:.3g}" \
            if isinstance(value, float) else str(value)
        out.append(f"  {key:<{width}}{shown:<10}{who(cfg, key, value, explicit)}")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in plan.parts.items())
    room = applied.memory.vram_gb
    out.append(f"  estimated peak: {plan.estimate_gib:.2f} GiB of {room:g} GiB ({parts}, reserve {budget.RESERVE_GIB}; "
               f"{plan.margin_gib:.2f} more kept free)")
    out.append(f"  estimated step: {plan.step.describe()}" if plan.step else
               "  estimated step: no measured row for this family")
    phases = autoplan.plan_phases(applied, budget.for_model(meta_model(cfg)[0], meta_model(cfg)[1]), plan, room)
    out.append("  peak by phase (the whole run):")
    out += [f"    {line}" for line in phases.lines()]
    if plan.step and plan.step.link_bound:
        out.append(f"  the host link ({card.host_link_gbs:g} GB/s) bounds this setting's step")
    out.append(f"  log line: {plan.line}")
    if gpus > 1:
        out += cards_lines(cfg, card, gpus, plan)
    return "\n".join(out), plan


def main(config: str, overrides: Sequence[str], card_key: Optional[str], gpus: int = 1) -> int:
    from lorakit.config.load import load_config

    cfg = load_config(config, list(overrides))
    if card_key:
        facts = cards.card(card_key)
    else:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("lorakit plan: no CUDA GPU here; name a card with --card, one of: "
                              + ", ".join(cards.card_names()))
        facts = cards.local_card(torch.device("cuda"))
    if gpus < 1:
        raise ConfigError(f"--gpus {gpus}: give 1 or more")
    print(planned(cfg, facts, config, gpus)[0])
    from lorakit.train import optim

    o, steps = cfg.optimizer, cfg.training.max_steps
    if isinstance(steps, int) and (warn := optim.schedule_warning(o.scheduler, o.warmup_steps, steps)):
        print(warn)  # the line the run would log at its start, shown before anything runs
    return 0
