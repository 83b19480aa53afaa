"""The automatic plan: on CUDA, the fastest setting that fits the card, compile and CUDA graphs included.

With ``memory.auto`` (the default) a CUDA run reads its card (:func:`lorakit.train.cards.local_card`: free memory,
compute capability, float8 matmuls, host RAM, host link) and :func:`choose` plans it: the memory budget is
``memory.vram_gb`` when set, else the memory free on the card when the model is placed. For each way of running the
compiled blocks — ``compile`` with CUDA graphs, without, and each with and without host streaming (block swap,
``modulation_on_cpu``) — :func:`lorakit.train.budget.apply_budget` finds the fastest memory setting that fits; the
s/step model (:func:`lorakit.train.cards.step_seconds`, calibrated from benchmarks/RESULTS.md) then picks the fastest
of those. Every ``[memory]`` key the user set (file or override; a preset's values are not the user's) is a
constraint: ``compile`` and ``cuda_graphs`` are kept as set, the keys of :data:`lorakit.train.budget.CONSTRAINTS` as
there. One log line says what was chosen, on which card, the estimate and the runner-up; ``plan.json`` has the rest.

The same function answers ``lorakit plan run.toml --card NAME`` with the card table's facts and the full-size model
built on the meta device (nothing is loaded or run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

from lorakit.errors import ConfigError
from lorakit.train import budget, cards

# what the automatic plan adds to budget.CONSTRAINTS: each, when the user set it, kept as set
STEERED = ("compile", "cuda_graphs")
HOST_RAM_SHARE = 0.5  # at most this share of host RAM is pinned for swapped blocks / host modulations
# what the plan decides: the settings recorded in plan.json (lorakit/train/placement.py) and compared on --resume
PLANNED = tuple(f"memory.{k}" for k in budget.CONSTRAINTS + STEERED) + (
    "training.batch_size", "training.gradient_accumulation")


@dataclass(frozen=True)
class Option:
    mode: str
    plan: budget.Plan
    step: Optional[cards.StepEstimate]

    @property
    def seconds(self) -> float:
        return self.step.seconds if self.step else math.inf


def wanted(cfg, device) -> bool:
    """Whether this run plans automatically: on CUDA, unless ``memory.auto = false``."""
    return getattr(device, "type", None) == "cuda" and bool(getattr(cfg.memory, "auto", True))


def settings_of(memory: Any) -> dict[str, Any]:
    """The knobs the s/step model reads, from a (planned) memory config."""
    return {"compile": bool(memory.compile), "cuda_graphs": bool(memory.cuda_graphs), "fp8_base": bool(memory.fp8_base),
            "fp8_compute": bool(memory.fp8_compute),
            "checkpoint_fraction": float(memory.checkpoint_fraction) if memory.gradient_checkpointing else 0.0,
            "activation_budget": memory.activation_budget, "modulation_on_cpu": bool(memory.modulation_on_cpu),
            "blocks_to_swap": int(memory.blocks_to_swap)}


def summary(memory: Any, plan: budget.Plan) -> str:
    """The chosen setting in a few words."""
    parts = ["compile" if memory.compile else "eager"]
    if memory.cuda_graphs:
        parts.append("cuda_graphs")
    if memory.activation_budget is not None:
        parts.append(f"activation_budget = {memory.activation_budget:g} (no block checkpointing)")
    elif not memory.gradient_checkpointing:
        parts.append("no checkpointing")
    elif memory.checkpoint_fraction < 1:
        parts.append(f"checkpoint_fraction = {memory.checkpoint_fraction:.3g}")
    else:
        parts.append("every block checkpointed")
    parts.append("fp8 compute" if memory.fp8_compute and memory.fp8_base else
                 "fp8 storage" if memory.fp8_base else "bf16 weights")
    if memory.blocks_to_swap:
        parts.append(f"blocks_to_swap = {memory.blocks_to_swap}")
    if memory.modulation_on_cpu:
        parts.append("modulation_on_cpu")
    return ", ".join(parts)


def _swapped(plan: budget.Plan, sizes: budget.Sizes) -> int:
    """Bytes of the blocks the plan swaps, as stored."""
    from lorakit.train.swap import spread

    k = 1 if plan.fp8_base else 0
    return sum(sizes.blocks[i][k] for i in spread(len(sizes.blocks), plan.blocks_to_swap)) if plan.blocks_to_swap else 0


def choose(cfg, spec, model, blocks: Sequence, trainable: Sequence, lookahead: int, card: cards.CardFacts, *,
           device=None, log: Callable[[str], None] = print,
           sizes: Optional[budget.Sizes] = None, room: Optional[float] = None) -> Optional[budget.Plan]:
    """The fastest plan that fits ``card`` (see the module doc), logged in one line; None (with a line saying so)
    where nothing is planned: a family without measured rows, or nothing fitting the free memory when the user set
    no ``memory.vram_gb`` (the run then goes as configured). ``sizes``: the model's byte counts (with
    ``spec.host_linears``) when already known; else taken from ``model``. ``room``: the budget in GiB when no
    ``memory.vram_gb`` is set (a resumed run plans with the one it started with: :func:`recorded_room`), else the
    card's free memory."""
    from lorakit.config.load import explicit_keys
    from lorakit.config.resolution import resolution_wh

    explicit = explicit_keys(cfg)
    mem = cfg.memory
    mine = [k for k in ("vram_gb",) + STEERED + budget.CONSTRAINTS if f"memory.{k}" in explicit]
    spec = budget.for_model(spec, model)  # the numbers of this model's size (FLUX.2: Klein 4B / 9B / dev)
    rows = cards.rows_for(spec)
    if not rows:
        log(f"plan: {spec.family} has no measured memory and speed rows yet; the [memory] settings run as written "
            "(memory.vram_gb plans them if the family supports it)")
        return None
    if mem.blocks_to_swap and "memory.blocks_to_swap" in explicit:  # a swap the user set, with what cannot run it:
        from lorakit.train.memory import check_block_swap  # the run's own refusal, not "nothing fits … as written"

        check_block_swap(bool(mem.gradient_checkpointing) or "memory.gradient_checkpointing" not in explicit,
                         bool(mem.cuda_graphs) and "memory.cuda_graphs" in explicit)
    if mem.cuda_graphs and "memory.cuda_graphs" in explicit and "memory.compile" in explicit and not mem.compile:
        raise ConfigError("memory.cuda_graphs: CUDA graphs replay the compiled blocks; set memory.compile = true too")
    _refuse_conflicts(cfg, explicit)
    if mem.fp8_compute and not card.fp8:  # the run stops there before loading (fp8.check_compute): say so here too
        raise ConfigError(f"memory.fp8_compute: {card.name} has no float8 tensor cores (needs compute capability "
                          "8.9+, e.g. RTX 40xx, L4, H100); set it to false and keep memory.fp8_base for the memory "
                          "saving")
    room = float(mem.vram_gb) if mem.vram_gb else room or math.floor(card.free_gib * 10) / 10
    if mem.vram_gb and round(card.total_gib, 1) < mem.vram_gb < math.inf:  # planned as set, never trimmed
        log(f"warning: memory.vram_gb = {mem.vram_gb:g} is more than the {card.name}'s {card.total_gib:.1f} GiB: the "
            f"plan below is for {mem.vram_gb:g} GiB and may not fit this card; set memory.vram_gb to at most "
            f"{math.floor(card.free_gib * 10) / 10:g} (what lorakit plans with when it is unset) or leave it out")
    comps = dict(getattr(spec, "component_gib", ()) or ())
    te_gib = comps.get("trained text encoders", comps.get("text encoders", 0.0))  # (FLUX.1, SD3.5: not T5)
    if getattr(cfg.network, "train_text_encoder", False) and te_gib:
        log(f"warning: network.train_text_encoder: the text encoders (~{te_gib:.2f} GiB as loaded) stay on the GPU "
            "while training, with their activations; the estimated peak below counts the denoiser only: keep that "
            "much more free (a lower memory.vram_gb) if the run runs out of memory")
    compiles = [bool(mem.compile)] if "memory.compile" in explicit else [card.can_compile]
    variant = cfg.network.type in ("loha", "lokr", "dora")  # issue 23: their layers run eager, in bf16 weights
    if variant and (compiles != [False] or card.fp8):
        log(f"plan: network.type = \"{cfg.network.type}\" runs eager without fp8 weights (compile, CUDA graphs and "
            "float8 are not built for its layers)")
        compiles = [False]
    # LoHa / LoKr (peft) build each layer's full-size ΔW in fp32 and keep it for the backward: a block left out of
    # checkpointing keeps 4 bytes per base weight, which the activation rates do not count; every block checkpointed
    materialized = cfg.network.type in ("loha", "lokr") and not ({"memory.gradient_checkpointing",
                                                                 "memory.checkpoint_fraction",
                                                                 "memory.activation_budget"} & explicit)
    if materialized:
        log(f"plan: network.type = \"{cfg.network.type}\" keeps each layer's full-size delta weight (fp32) for the "
            "backward: every block checkpointed (the activation estimate does not count those copies)")
    sizes = sizes or budget.Sizes.of(model, blocks, trainable, spec.host_linears, spec=spec)
    w, h = resolution_wh(cfg.data.resolution)
    options: list[Option] = []
    failures: dict[str, str] = {}
    seen: set[tuple] = set()
    for compile_ in compiles:
        graphs = [bool(mem.cuda_graphs)] if "memory.cuda_graphs" in explicit or not compile_ else [True, False]
        # the budget tries bf16 settings before any fp8 one; where the card multiplies in float8, fp8 compute is
        # also planned on its own, and the s/step model compares (FLUX.1-dev: fp8 compute with activation_budget 0.35
        # ran 0.423 s against 0.536 s for bf16 with 98 % of the blocks checkpointed, RESULTS.md round 11 / issue 28)
        fp8_too = compile_ and card.fp8 and "memory.fp8_base" not in explicit and mem.fp8_compute is not False \
            and not variant
        # the budget tries the least checkpointing that fits first; full checkpointing is also planned on its own
        # and the s/step model compares (SDXL under compile + CUDA graphs: 0.114 s with every block checkpointed
        # against 0.127 s with none, H100, RESULTS.md round 14)
        ckpts = (False, True) if not ({"memory.gradient_checkpointing", "memory.checkpoint_fraction",
                                       "memory.activation_budget"} & explicit) else (False,)
        if materialized and ckpts == (False, True):
            ckpts = (True,)
        for cuda_graphs, streaming, fp8, full in [(g, s, f, c) for g in graphs for s in (False, True)
                                                  for f in ((False, True) if fp8_too else (False,)) for c in ckpts]:
            mode = (("compile" if compile_ else "eager") + (" + cuda_graphs" if cuda_graphs else "")
                    + (", host streaming allowed" if streaming else "") + (", fp8 weights" if fp8 else "")
                    + (", every block checkpointed" if full else ""))
            planned = replace(cfg, memory=replace(mem, vram_gb=room, compile=compile_, cuda_graphs=cuda_graphs,
                                                  **({"fp8_base": True} if fp8 else {}),
                                                  **({"fp8_base": False} if variant else {}),  # bf16 weights only
                                                  **({"gradient_checkpointing": True, "checkpoint_fraction": 1.0}
                                                     if full else {})))
            notes: list[str] = []
            fixed = explicit | ({"memory.fp8_base"} if fp8 or variant else set()) | (
                {"memory.gradient_checkpointing", "memory.checkpoint_fraction"} if full else set())
            try:
                plan = budget.apply_budget(planned, spec, model, blocks, trainable, lookahead, log=notes.append,
                                           device=device, fixed_keys=fixed,
                                           allow_streaming=streaming,
                                           fp8_matmuls=card.fp8 if device is None else None, sizes=sizes,
                                           card=card, user_keys=frozenset(explicit))
            except ConfigError as why:
                failures[mode] = str(why)
                continue
            swapped = _swapped(plan, sizes)
            pinned = swapped + (sizes.host_linears if plan.modulation_on_cpu else 0)
            if card.host_ram_bytes and pinned > HOST_RAM_SHARE * card.host_ram_bytes:
                failures[mode] = (f"it pins {pinned / cards.GIB:.1f} GiB of host RAM, more than half of the "
                                  f"{card.host_ram_bytes / cards.GIB:.0f} GiB here")
                continue
            settings = settings_of(plan.applied.memory)
            key = tuple(sorted(settings.items()))
            if key in seen:
                continue
            seen.add(key)
            images = cfg.training.batch_size * w * h / 1024**2  # per optimizer step, split or not
            step = cards.step_seconds(spec.family, settings, card, images=images, swapped_bytes=swapped,
                                      host_bytes=sizes.host_linears if plan.modulation_on_cpu else 0, rows=rows)
            options.append(Option(mode, plan, step))
    if not options:
        why = failures.get("compile, host streaming allowed") or failures.get("eager, host streaming allowed") or \
            next(iter(failures.values()), "no setting was tried")
        if mem.vram_gb:
            raise ConfigError(why)
        log(f"plan for {card.describe()}: nothing lorakit plans fits ({why}); the [memory] settings run as written")
        return None
    best = min(options, key=lambda o: o.seconds)  # min keeps the first of equals: graphs, no streaming, bf16 first
    memory = best.plan.applied.memory
    others = sorted((o for o in options if o is not best), key=lambda o: o.seconds)
    runner = (f"; next best: {summary(others[0].plan.applied.memory, others[0].plan)}"
              + (f" ~{others[0].seconds:.2f} s/step" if others[0].step else "")) if others else ""
    split = (f"; training.batch_size {cfg.training.batch_size} split into {best.plan.batch_size} x "
             f"{best.plan.gradient_accumulation} accumulated"
             if best.plan.batch_size != cfg.training.batch_size else "")
    line = (f"plan for {card.describe()}: {summary(memory, best.plan)}{split}; estimated peak "
            f"{best.plan.estimate_gib:.1f} of {room:g} GiB"
            + (f", ~{best.step.seconds:.2f} s/step ({'extrapolated' if best.step.extrapolated else 'measured'})"
               if best.step else ", no s/step estimate")
            + runner + (f"; {spec.planning_estimate}" if spec.planning_estimate
                        and not cards.measured_kind(rows, settings_of(memory)) else "")
            + ("; kept as you set: " + ", ".join(f"memory.{k}" for k in mine) if mine else "")
            + "; plan.json has the details")
    log(line)
    return replace(best.plan, notes=best.plan.notes + (line,), step=best.step, card=card, line=line)


def _refuse_conflicts(cfg, explicit) -> None:
    """Keys the user set that no plan can keep together, refused as the run refuses the planned config
    (lorakit/train/memory.py check_supported), not "nothing fits ... run as written"; a key left unset is taken as the
    plan would choose it."""
    from lorakit.train import memory as checks

    mem = cfg.memory
    if mem.activation_budget is not None and "memory.activation_budget" in explicit:
        view = replace(mem, compile=mem.compile if "memory.compile" in explicit else True,
                       gradient_checkpointing=mem.gradient_checkpointing
                       if "memory.gradient_checkpointing" in explicit else False)
        checks.check_activation_budget(replace(cfg, memory=view))
    if mem.checkpoint_fraction < 1.0 and not mem.gradient_checkpointing and \
            {"memory.checkpoint_fraction", "memory.gradient_checkpointing"} <= set(explicit):
        raise ConfigError("memory.checkpoint_fraction: only has an effect with memory.gradient_checkpointing = true; "
                          "remove it or turn checkpointing on")


def loading_memory(cfg, spec, device) -> Any:
    """The ``[memory]`` the adapter loads with: under the automatic plan, ``vram_gb`` set to the card's free memory
    (when the user set none), so that a family that places its denoiser block by block under a budget keeps it off
    the GPU until the plan is made (FLUX.1: no 22 GiB of bf16 weights on a 12 GiB card while the caches fill)."""
    mem = cfg.memory
    if getattr(cfg.distributed, "shard", "none") == "base" and not mem.vram_gb:  # issue 24: a base to be sharded
        return replace(mem, vram_gb=float("inf"))  # stays on the CPU after loading (deferred placement reads vram_gb)
    if mem.vram_gb or not wanted(cfg, device) or not cards.has_rows(spec):
        return mem
    return replace(mem, vram_gb=math.floor(cards.local_card(device).free_gib * 10) / 10)


# VAE encoder working memory per 1024² image (bf16): issue 28's H100 run of the SDXL character preset peaked at
# 17.3 GiB while caching latents in batches of 4, with about 6.9 GiB of SDXL weights on the device: (17.3 - 6.9) / 4 = 2.6
ENCODE_GIB_PER_IMAGE = 2.6
# VAE decoder working memory per 1024² image: an estimate, not a measurement (the decoder runs at full resolution with
# the widest channels last; taken as twice the encoder's)
DECODE_GIB_PER_IMAGE = 2 * ENCODE_GIB_PER_IMAGE
LATENT_BATCH = 4  # data/cache.py's default: the most the caching batches are ever raised to
TILE = 512        # side of the VAE tiles when tiling is planned (diffusers' enable_tiling, tile sizes set to this)


@dataclass(frozen=True)
class CachePlan:
    """How the caches are filled on this card: images per VAE call and VAE tiling, from the memory free after
    loading; ``work_gib`` the VAE's working memory at that batch."""

    latent_batch: int
    free_gib: float
    line: str
    vae_tiling: bool = False
    work_gib: float = 0.0

    @property
    def key(self) -> str:
        """What the latent cache key gets for tiled encoding (tiles blend at their seams: other latents)."""
        return f"+tiled{TILE}" if self.vae_tiling else ""


def tiled_share(pixels: float) -> float:
    """The share of an image's VAE working memory that tiling keeps: one TILE² tile (with its overlap) at a time."""
    return min(1.0, 1.25 * TILE * TILE / max(pixels, 1.0))


def plan_caching(free_bytes: int, max_pixels: int, *, default: int = LATENT_BATCH, tiling: bool = False) -> CachePlan:
    """The largest latent-caching batch (≤ ``default``) whose VAE working memory (:data:`ENCODE_GIB_PER_IMAGE` per
    1024² image of the largest bucket) fits the free memory less the planner's reserve; at least 1. Where not even one
    image fits and the family's VAE tiles (``tiling``), one image per call, tiled."""
    free = free_bytes / cards.GIB
    per = ENCODE_GIB_PER_IMAGE * max_pixels / 1024**2
    fits = int((free - budget.RESERVE_GIB) // per) if per > 0 else default
    batch = max(1, min(default, fits))
    tiled = fits < 1 and tiling
    work = per * (tiled_share(max_pixels) if tiled else batch)
    line = (f"caching: {batch} image{'s' if batch > 1 else ''} per VAE call ({free:.1f} GiB free, ~{per:.1f} GiB "
            f"each at the largest bucket)")
    if tiled:
        line += f"; tiled ({TILE}² tiles, ~{work:.1f} GiB): not even one whole image fits"
    elif fits < 1:
        line += "; even one may not fit: lower data.max_bucket_reso if caching runs out of memory"
    return CachePlan(batch, round(free, 2), line, tiled, round(work, 3))


def caching_plan(cfg, items, device, log: Callable[[str], None] = print, adapter=None) -> Optional[CachePlan]:
    """:func:`plan_caching` for a run about to fill its latent cache (None off the automatic plan); with tiling planned
    the adapter's VAE tiles (:func:`tile_vae`)."""
    if not wanted(cfg, device) or not items:
        return None
    free = cards.local_card(device).free_bytes
    if cfg.memory.vram_gb:  # a budget the user set bounds the caches too
        import torch

        free = min(free, int(cfg.memory.vram_gb * cards.GIB) - torch.cuda.memory_allocated(device))
    spec = getattr(adapter, "spec", None)
    plan = plan_caching(free, max(it.bucket[0] * it.bucket[1] for it in items),
                        tiling=bool(getattr(spec, "vae_tiling", False)))
    if plan.vae_tiling and not tile_vae(adapter, log):
        plan = replace(plan, vae_tiling=False, line=plan.line + "; this family's VAE does not tile")
    log(plan.line)
    return plan


def tile_vae(adapter, log: Callable[[str], None] = print) -> bool:
    """Switch the adapter's VAE (``adapter.vae_module()``, where the family has one) to diffusers' tiled encode and
    decode with :data:`TILE`² tiles; False where it cannot tile."""
    get = getattr(adapter, "vae_module", None)
    vae = get() if get is not None else None
    if vae is None or not hasattr(vae, "enable_tiling"):
        return False
    if hasattr(vae, "tile_sample_min_height"):  # Qwen-Image's (Wan's) VAE: tile and stride in pixels, per axis
        vae.enable_tiling(tile_sample_min_height=TILE, tile_sample_min_width=TILE,
                          tile_sample_stride_height=TILE * 3 // 4, tile_sample_stride_width=TILE * 3 // 4)
    else:
        vae.enable_tiling()
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_sample_min_size, vae.tile_latent_min_size = TILE, TILE // down
    log(f"VAE: tiled encode / decode ({TILE}² tiles), planned from the free memory")
    return True


@dataclass(frozen=True)
class Phases:
    """The whole run on the card: the peak of each phase (GiB, the planner's reserve included) and what was chosen
    for it. ``cache``: latent caching (batch, tiling) and text caching (encoders on the GPU or the CPU); ``train``:
    the training step (the plan's estimate); ``previews``: sampling at the preview size (CFG: a batch of 2, or two
    passes of 1 where the family's sampler runs them one after the other) and the VAE decode (tiled where it would
    not fit)."""

    room_gib: float
    cache: dict
    train_gib: float
    previews: dict

    def lines(self) -> list[str]:
        c, p = self.cache, self.previews
        out = [f"cache: ~{c['peak_gib']:.2f} GiB ({c['latent_batch']} image(s) per VAE call"
               + (", VAE tiled" if c["vae_tiling"] else "") + f"; text encoders on the {c['text_encoders']})",
               f"train: ~{self.train_gib:.2f} GiB (the step above)",
               f"previews: ~{p['peak_gib']:.2f} GiB ({p['width']}x{p['height']}, batch {p['batch']}"
               + (" (CFG)" if p["batch"] > 1 else "") + (", CFG in 2 passes" if p.get("cfg_passes", 1) > 1 else "")
               + (", VAE decode tiled" if p["vae_tiling"] else "") + ")"]
        over = [(name, gib) for name, gib in (("caching", c["peak_gib"]), ("training", self.train_gib),
                                               ("previews", p["peak_gib"])) if gib > self.room_gib]
        hints = {"caching": "lower data.max_bucket_reso",
                 "previews": f"set sample.width / sample.height below {p['width']}x{p['height']}"}
        for name, gib in over:  # (two decimals: 22.52 is not "~22.5 GiB, more than the 22.5 GiB")
            out.append(f"warning: {name} need{'' if name == 'previews' else 's'} ~{gib:.2f} GiB, more than the {self.room_gib:g} GiB planned for"
                       + (f"; {hints[name]} if it runs out of memory" if name in hints else ""))
        return out

    def record(self) -> dict:
        return {"room_gib": self.room_gib, "cache": self.cache, "train_gib": round(self.train_gib, 3),
                "previews": self.previews}


def plan_phases(cfg, spec, plan: budget.Plan, room: float, *, max_pixels: Optional[int] = None) -> Phases:
    """:class:`Phases` of a planned run on ``room`` GiB. Counts the family's frozen components as loaded
    (``ModelSpec.component_gib``), the denoiser as planned (during caching only where the family does not place it
    block by block later: the families with ``memory.blocks_to_swap`` keep it off the GPU while the caches fill), the
    LoRA and optimizer state and CUDA graph pool during previews, and the activations of a forward without gradients at
    the family's checkpointed rate (an upper bound: only one block's intermediates live at a time), for a batch of 2
    under CFG where the family's sampler batches it (``ModelSpec.cfg_batched``), else of 1."""
    from lorakit.config.resolution import resolution_wh

    parts = plan.parts
    comps = dict(getattr(spec, "component_gib", ()) or ())
    vae, te = comps.get("vae", 0.0), comps.get("text encoders", 0.0)
    w, h = resolution_wh(cfg.data.resolution)
    pixels = max_pixels or w * h
    denoiser = 0.0 if "memory.blocks_to_swap" in spec.config_keys else parts["weights"]
    reserve = budget.RESERVE_GIB
    cache = plan_caching(int(max(room - denoiser - vae, 0) * cards.GIB), pixels, tiling=spec.vae_tiling)
    from lorakit.device import ENCODER_MARGIN_GIB

    te_gpu = denoiser + vae + te + ENCODER_MARGIN_GIB <= room  # device.device_for's rule, which the families follow
    cache_peak = max(denoiser + vae + cache.work_gib, denoiser + (te if te_gpu else 0.0)) + reserve
    sw = cfg.sample.width or w
    sh = cfg.sample.height or h
    scale = spec.default_cfg_scale if cfg.sample.cfg_scale is None else cfg.sample.cfg_scale
    passes = 2 if float(scale) > 1.0 else 1  # CFG: conditional and unconditional predictions
    batch = passes if spec.cfg_batched else 1  # in one forward, or one after the other
    spix = sw * sh / 1024**2
    held = parts["weights"] + parts.get("swap window", 0.0) + parts["LoRA+optimizer"] + \
        parts.get("CUDA graph pool", 0.0) + vae
    sample_act = batch * spec.activation_gib[0] * spix
    decode = DECODE_GIB_PER_IMAGE * spix
    tiled = spec.vae_tiling and held + max(sample_act, decode) + reserve > room
    if tiled:
        decode *= tiled_share(sw * sh)
    previews = {"width": sw, "height": sh, "batch": batch, "cfg_passes": passes // batch, "vae_tiling": bool(tiled),
                "peak_gib": round(held + max(sample_act, decode) + reserve, 3)}
    return Phases(room, {"latent_batch": cache.latent_batch, "vae_tiling": cache.vae_tiling,
                         "text_encoders": "GPU" if te_gpu else "CPU", "peak_gib": round(cache_peak, 3)},
                  plan.estimate_gib, previews)


def recorded_room(run_root) -> Optional[float]:
    """The budget a run's automatic plan used (``plan.json``'s ``budget_gib``), so that ``--resume`` plans the same
    way whatever else holds the card's memory now; None when not recorded."""
    import json
    from pathlib import Path

    try:
        value = json.loads((Path(run_root) / "plan.json").read_text()).get("budget_gib")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None
