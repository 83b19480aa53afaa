"""The LoRA on the model and the model on the device: injection, the memory plan (frozen, recorded in
``plan.json``), then fp8 storage, block swap, checkpointing and compile as the plan says.

The plan is the one place where what runs can differ from what the config says (``memory.vram_gb`` chooses), and it
never writes into the loaded config: it returns a copy with its choices applied (:attr:`Placed.cfg`), which the rest
of the run uses and the LoRA's metadata records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from lorakit.config.schema import Config
from lorakit.lora.inject import inject_lora
from lorakit.train import budget, memory, speed, swap, warmstart

# what the plan decides: the settings recorded in plan.json and compared on --resume
PLANNED = tuple(f"memory.{k}" for k in budget.CONSTRAINTS) + ("training.batch_size", "training.gradient_accumulation")


@dataclass
class Placed:
    cfg: Config                                 # the config the run uses: the loaded one with the plan applied
    plan: dict                                  # plan.json: settings, who chose each, the estimate, notes
    modules: dict[str, torch.nn.Module]         # component name → module (the denoiser under spec.denoiser_name)
    targets: dict[str, dict[str, int]]
    groups: list[dict]
    trainable: list[torch.Tensor]


def inject(cfg: Config, adapter, compute_dtype: torch.dtype, log: Callable[[str], None] = print
           ) -> tuple[dict, dict, list[dict]]:
    """LoRA on every component the adapter targets; returns (modules, targets, optimizer parameter groups). With
    ``network.weights`` the LoRA then holds that file's weights (read and checked before injection)."""
    spec = adapter.spec
    targets = adapter.lora_targets(cfg.network)
    modules = {spec.denoiser_name: adapter.denoiser(), **adapter.text_encoder_modules()}
    alphas = {component: {name: (cfg.network.conv_alpha if _is_conv(modules[component], name) else cfg.network.alpha)
                          for name in module_targets} for component, module_targets in targets.items()}
    start_from = warmstart.read(cfg, adapter, targets, alphas, log)  # network.weights (issue 23)
    torch.manual_seed(cfg.training.seed)
    groups = []
    for component, module_targets in targets.items():
        module = modules[component]
        alpha = alphas[component]
        # every call of the denoiser runs in autocast (steps, previews, the LoRA check); a trained text encoder
        # also runs outside it (next_batch encodes the captions)
        denoiser = component == spec.denoiser_name
        params = inject_lora(module, module_targets, alpha, cfg.network.dropout,
                             under_autocast=denoiser and compute_dtype != torch.float32)
        lr = cfg.optimizer.lr if denoiser else (cfg.network.text_encoder_lr or cfg.optimizer.lr)
        groups.append({"params": params, "lr": lr, "name": component})
    warmstart.load(start_from, modules)
    return modules, targets, groups


def place(cfg: Config, adapter, device: torch.device, compute_dtype: torch.dtype, buckets: int,
          log: Callable[[str], None]) -> Placed:
    """Inject the LoRA, plan memory, place the denoiser and prepare it (checkpointing, compile)."""
    spec = adapter.spec
    modules, targets, groups = inject(cfg, adapter, compute_dtype, log)
    trainable = [p for g in groups for p in g["params"]]
    denoiser = modules[spec.denoiser_name]
    # after injection (peft wraps the Linears first), before compile: the memory plan, then fp8 storage and block
    # swap, applied block by block while the denoiser moves to the device
    adapter.before_placement(cfg.memory, log)
    blocks = speed.repeated_blocks(denoiser, extra=spec.compile_blocks)
    chosen: Optional[budget.Plan] = None
    run_cfg = cfg
    if cfg.memory.vram_gb:
        chosen = budget.apply_budget(cfg, spec, denoiser, blocks, trainable, swap.LOOKAHEAD, log=log, device=device)
        run_cfg = chosen.applied
        memory.check_supported(run_cfg, device, planned=True)
        adapter.before_placement(run_cfg.memory, log)  # what the plan chose that the adapter applies
    mem = run_cfg.memory
    swapper = swap.place_denoiser(denoiser, blocks, device, fp8_base=mem.fp8_base, fp8_compute=mem.fp8_compute,
                                  blocks_to_swap=mem.blocks_to_swap, log=log)
    speed.prepare_denoiser(denoiser, mem, device, log=log, cuda_graphs=mem.cuda_graphs, swapper=swapper,
                           buckets=buckets, extra_regions=spec.compile_blocks)
    log(f"LoRA: {sum(len(t) for t in targets.values())} modules, {sum(p.numel() for p in trainable):,} parameters")
    return Placed(run_cfg, plan_record(cfg, run_cfg, chosen), modules, targets, groups, trainable)


def plan_record(cfg: Config, run_cfg: Config, chosen: Optional[budget.Plan]) -> dict[str, Any]:
    """plan.json: every planned setting as it runs, whether the config or the plan set it, and the estimate."""
    settings = {key: _get(run_cfg, key) for key in PLANNED}
    return {"settings": settings,
            "chosen_by": {key: ("plan" if _get(cfg, key) != value else "config") for key, value in settings.items()},
            "vram_gb": cfg.memory.vram_gb,
            "estimate_gib": round(chosen.estimate_gib, 3) if chosen else None,
            "parts": {k: round(v, 3) for k, v in chosen.parts.items()} if chosen else None,
            "notes": list(chosen.notes) if chosen else []}


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _is_conv(module: torch.nn.Module, name: str) -> bool:
    sub = module.get_submodule(name)
    return isinstance(sub, torch.nn.Conv2d) and sub.kernel_size != (1, 1)
