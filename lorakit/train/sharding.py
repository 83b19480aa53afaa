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
  chooses those) is not used; :func:`check_room` logs the per-card estimate and holds it against ``memory.vram_gb``.
* **Checkpoints** hold the LoRA state only (as without sharding): rank 0 writes them, a resume on any number of
  processes reads them.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

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
    lora = sizes.lora_params * (4 + 4 + budget.STATE_BYTES.get(cfg.optimizer.name, 8))
    parts = {"weights": (base / processes if sharded else base) / GIB}
    if sharded:
        parts["gathered blocks"] = GATHERED_BLOCKS * largest * (processes - 1) / processes / GIB
    parts.update({"LoRA+optimizer": lora / GIB, "activations": rate * images})
    return parts


def check_room(cfg, spec, denoiser, blocks: Sequence[torch.nn.Module], trainable, processes: int,
               log: Callable[[str], None]) -> dict:
    """The run's per-card estimate with the base sharded, logged and returned (plan.json's ``"sharded"``); held
    against ``memory.vram_gb`` (per card) when set. The automatic plan is not used with sharding (what it chooses
    besides checkpointing does not compose)."""
    from lorakit.train import budget

    sizes = budget.Sizes.of(denoiser, blocks, trainable)
    parts = per_card(sizes, budget.for_model(spec, denoiser), cfg, processes, sharded=True)
    peak = sum(parts.values()) + budget.RESERVE_GIB
    shown = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
    log(f"sharded base over {processes} processes: about {peak:.2f} GiB per card ({shown}, reserve "
        f"{budget.RESERVE_GIB}); the automatic memory plan is off with distributed.shard = \"base\" ([memory] runs as "
        "written)")
    room = cfg.memory.vram_gb
    if room and peak > room:
        raise ConfigError(f"memory.vram_gb = {room:g} (per card): the sharded base needs about {peak:.1f} GiB per card "
                          f"on {processes} processes; use more processes, memory.gradient_checkpointing = true, a "
                          "smaller training.batch_size or data.resolution")
    return {"processes": processes, "per_card_gib": round(peak, 3), "parts": {k: round(v, 3) for k, v in parts.items()}}


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
