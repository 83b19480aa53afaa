"""The LoRA on the model and the model on the device: injection, the memory plan (frozen, recorded in
``plan.json``), then fp8 storage, block swap, checkpointing and compile as the plan says.

The plan is the one place where what runs can differ from what the config says (``memory.vram_gb`` chooses), and it
never writes into the loaded config: it returns a copy with its choices applied (:attr:`Placed.cfg`), which the rest
of the run uses and the LoRA's metadata records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from lorakit.config.schema import Config
from lorakit.errors import ConfigError
from lorakit.lora.inject import inject_lora
from lorakit.train import autoplan, budget, cards, distributed, memory, sharding, speed, swap, warmstart

PLANNED = autoplan.PLANNED  # what the plan decides: the settings recorded in plan.json and compared on --resume


@dataclass
class Placed:
    cfg: Config                                 # the config the run uses: the loaded one with the plan applied
    plan: dict                                  # plan.json: settings, who chose each, the estimate, notes
    modules: dict[str, torch.nn.Module]         # component name → module (the denoiser under spec.denoiser_name)
    targets: dict[str, dict[str, int]]
    groups: list[dict]
    trainable: list[torch.Tensor]


def inject(cfg: Config, adapter, compute_dtype: torch.dtype, log: Callable[[str], None] = print,
           resuming: bool = False) -> tuple[dict, dict, list[dict]]:
    """LoRA on every component the adapter targets; returns (modules, targets, optimizer parameter groups). With
    ``network.weights`` the LoRA then holds that file's weights (read and checked before injection), unless the run
    is resuming: its resume state holds the LoRA, so the file is not read (it may be gone by then)."""
    spec = adapter.spec
    targets = adapter.lora_targets(cfg.network)
    modules = {spec.denoiser_name: adapter.denoiser(), **adapter.text_encoder_modules()}
    alphas = {component: {name: (cfg.network.conv_alpha if _is_conv(modules[component], name) else cfg.network.alpha)
                          for name in module_targets} for component, module_targets in targets.items()}
    start_from = None if resuming else warmstart.read(cfg, adapter, targets, alphas, log)  # network.weights
    torch.manual_seed(cfg.training.seed)
    groups = []
    for component, module_targets in targets.items():
        module = modules[component]
        check_rank_fits(module, module_targets)
        alpha = alphas[component]
        # every call of the denoiser runs in autocast (steps, previews, the LoRA check); a trained text encoder
        # also runs outside it (next_batch encodes the captions)
        denoiser = component == spec.denoiser_name
        params = inject_lora(module, module_targets, alpha, cfg.network.dropout,
                             under_autocast=denoiser and compute_dtype != torch.float32,
                             algo="lora" if cfg.network.type == "locon" else cfg.network.type,
                             factor=cfg.network.factor)
        lr = cfg.optimizer.lr if denoiser else (cfg.network.text_encoder_lr or cfg.optimizer.lr)
        groups.append({"params": params, "lr": lr, "name": component})
    warmstart.load(start_from, modules)
    return modules, targets, groups


def check_rank_fits(module: torch.nn.Module, targets: dict[str, int]) -> None:
    """Refuse a rank larger than the narrowest targeted layer (min of its input and output width): such a LoRA
    holds no more than a full update of that layer, in more parameters. One line naming the key and the layer."""
    subs = dict(module.named_modules())
    too_wide = []                                 # (layer width, path, config key, rank) of each layer the rank exceeds
    for path, rank in targets.items():
        sub = subs.get(path)
        if isinstance(sub, torch.nn.Conv2d):
            width, key = min(sub.out_channels, sub.in_channels * sub.kernel_size[0] * sub.kernel_size[1]), "conv_rank"
        elif isinstance(sub, torch.nn.Linear):
            width, key = min(sub.in_features, sub.out_features), "rank"
        else:
            continue
        if rank > width:
            too_wide.append((width, path, key, rank))
    if too_wide:
        width, path, key, rank = min(too_wide)
        raise ConfigError(f"network.{key}: {rank} is larger than the narrowest targeted layer ({path}, {width} wide; "
                          f"{len(too_wide)} layers are narrower than the rank); choose at most {width}")


def place(cfg: Config, adapter, device: torch.device, compute_dtype: torch.dtype, buckets: int,
          log: Callable[[str], None], room: Optional[float] = None, resuming: bool = False) -> Placed:
    """Inject the LoRA, plan memory, place the denoiser and prepare it (checkpointing, compile)."""
    spec = adapter.spec
    modules, targets, groups = inject(cfg, adapter, compute_dtype, log, resuming)
    trainable = [p for g in groups for p in g["params"]]
    denoiser = modules[spec.denoiser_name]
    # after injection (peft wraps the Linears first), before compile: the memory plan, then fp8 storage and block
    # swap, applied block by block while the denoiser moves to the device
    adapter.before_placement(cfg.memory, log)
    blocks = speed.repeated_blocks(denoiser, extra=spec.compile_blocks)
    chosen: Optional[budget.Plan] = None
    run_cfg = cfg
    sharded = None
    decision = _decide(cfg, spec, denoiser, blocks, trainable, device, room, log)  # distributed.shard (issue 24)
    if decision.shard:  # a sharded base: the per-card estimate; the plan's choices do not compose with it
        run_cfg = decision.cfg
        sharded = sharding.check_room(run_cfg, budget.for_model(spec, denoiser), denoiser, blocks, trainable,
                                      distributed.world(), log, auto=decision.record is not None)
        if decision.record:
            sharded["auto"] = decision.record
    elif decision.planned:  # the single-card plan decide() made
        for line in decision.single_lines:
            log(line)
        chosen = decision.single
    elif autoplan.wanted(cfg, device):  # on CUDA: the fastest setting that fits the card (memory.auto)
        chosen = autoplan.choose(cfg, spec, denoiser, blocks, trainable, swap.LOOKAHEAD, _card(device),
                                 device=device, log=log, room=room)
    elif cfg.memory.vram_gb:
        chosen = budget.apply_budget(cfg, spec, denoiser, blocks, trainable, swap.LOOKAHEAD, log=log, device=device)
    if chosen is not None:
        run_cfg = chosen.applied
        if chosen.card is not None:  # the automatic plan: the previews' peak on the card too (VAE decode tiled if needed)
            phases = autoplan.plan_phases(run_cfg, budget.for_model(spec, denoiser), chosen, run_cfg.memory.vram_gb)
            if phases.previews["vae_tiling"]:
                autoplan.tile_vae(adapter, log)
            chosen = dataclasses.replace(chosen, phases=phases)
    if chosen is not None or autoplan.wanted(cfg, device):  # combinations are checked on what runs
        memory.check_supported(run_cfg, device, planned=True)
    if chosen is not None:
        adapter.before_placement(run_cfg.memory, log)  # what the plan chose that the adapter applies
    mem = run_cfg.memory
    swapper = None if sharding.on(run_cfg) else swap.place_denoiser(
        denoiser, blocks, device, fp8_base=mem.fp8_base, fp8_compute=mem.fp8_compute,
        blocks_to_swap=mem.blocks_to_swap, log=log, fp8_convs=spec.fp8_convs)
    speed.prepare_denoiser(denoiser, mem, device, log=log, cuda_graphs=mem.cuda_graphs, swapper=swapper,
                           buckets=buckets, extra_regions=spec.compile_blocks)
    # distributed.shard = "base": placed block by block while sharded over the processes (FSDP2), after checkpointing
    # is chosen (it finds the blocks by class, which sharding renames)
    distributed.shard(run_cfg, denoiser, blocks, device, log)
    log(f"LoRA: {sum(len(t) for t in targets.values())} modules, {sum(p.numel() for p in trainable):,} parameters")
    record = plan_record(cfg, run_cfg, chosen)
    if sharded:
        record["sharded"] = sharded  # plan.json: the per-card estimate of a sharded base
        if decision.record:  # chosen by distributed.shard = "auto": --resume decides again on the same budget
            record["budget_gib"] = decision.record["room_gib"]
    return Placed(run_cfg, record, modules, targets, groups, trainable)


def _card(device: torch.device) -> cards.CardFacts:
    """This card's facts, its free memory the least of all processes' (every rank plans the same)."""
    card = cards.local_card(device)
    return dataclasses.replace(card, free_bytes=distributed.least(card.free_bytes))


def _decide(cfg: Config, spec, denoiser, blocks, trainable, device: torch.device, room: Optional[float],
            log: Callable[[str], None]) -> sharding.Decision:
    """:func:`sharding.decide` for this run, logged: from the loaded denoiser's sizes and the least free memory."""
    cuda, planned = device.type == "cuda", autoplan.wanted(cfg, device)
    auto = getattr(cfg.distributed, "shard", "none") == "auto" and planned
    spec = budget.for_model(spec, denoiser)
    sizes = budget.Sizes.of(denoiser, blocks, trainable, spec.host_linears, spec=spec) if auto else None
    decision = sharding.decide(cfg, spec, sizes, _card(device) if auto else None, distributed.world(), cuda=cuda,
                               model=denoiser, blocks=blocks, trainable=trainable, room=room, device=device)
    if decision.line:
        log(decision.line)
    return decision


def plan_record(cfg: Config, run_cfg: Config, chosen: Optional[budget.Plan]) -> dict[str, Any]:
    """plan.json: every planned setting as it runs, whether the config or the plan set it, and the estimate."""
    settings = {key: _get(run_cfg, key) for key in PLANNED}
    return {"settings": settings,
            "chosen_by": {key: ("plan" if _get(cfg, key) != value else "config") for key, value in settings.items()},
            "vram_gb": cfg.memory.vram_gb,
            "budget_gib": run_cfg.memory.vram_gb if chosen else None,  # the automatic plan's room (kept on --resume)
            "estimate_gib": round(chosen.estimate_gib, 3) if chosen else None,
            "parts": {k: round(v, 3) for k, v in chosen.parts.items()} if chosen else None,
            "notes": list(chosen.notes) if chosen else [],
            "card": chosen.card.describe() if chosen and chosen.card else None,
            "s_step_estimate": round(chosen.step.seconds, 3) if chosen and chosen.step else None,
            "s_step_basis": chosen.step.describe() if chosen and chosen.step else None,
            "phases": chosen.phases.record() if chosen and chosen.phases else None}


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _is_conv(module: torch.nn.Module, name: str) -> bool:
    sub = module.get_submodule(name)
    return isinstance(sub, torch.nn.Conv2d) and sub.kernel_size != (1, 1)
