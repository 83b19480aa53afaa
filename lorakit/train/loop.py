"""The training run, top to bottom: data → caches → LoRA → loop (noise → loss → backward → step) → samples,
checkpoints → export and verification.

Model-family knowledge stays behind the adapter (lorakit/models/<family>); this file never asks which
family it trains. Every file a user may depend on is written atomically, and the resume state holds
everything needed to continue bit-for-bit (LoRA, optimizer, scheduler, RNG, data position).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lorakit.config.load import config_to_dict, dump_toml
from lorakit.config.resolution import resolution_wh
from lorakit.config.schema import Config
from lorakit.data.cache import LatentCache, TextCache, cache_folder
from lorakit.data.captions import fixed_captions
from lorakit.data.images import save_image
from lorakit.data.scan import scan_dataset
from lorakit.data.stream import BatchStream
from lorakit.errors import ConfigError, DataError, TrainingError
from lorakit.fsutil import write_text
from lorakit.lora.inject import enable_lora, extract_lora, inject_lora, load_lora_into
from lorakit.lora.io import save_safetensors_atomic
from lorakit.models.base import Batch, SamplePrompt, to_gpu
from lorakit.models.registry import get_family
from lorakit.train import budget, checkpoint, fused, health, memory, optim, speed, swap
from lorakit.train.export import export_lora, verify_export
from lorakit.train.metrics import MetricsWriter, plot_loss, read_metrics
from lorakit.train.rundir import RunDir
from lorakit.train.sampling import load_prompts, sample_filename


@dataclass
class RunResult:
    run_dir: Path
    lora_path: Path
    steps: int
    final_loss: float
    samples: list[Path]


def train(cfg: Config, *, resume: bool = False, force: bool = False, log: Callable[[str], None] = print) -> RunResult:
    """Run (or continue) one training run described by ``cfg``; the stall watchdog watches every phase, from
    the dataset scan to the checks after the final save."""
    watchdog = health.StallWatchdog(cfg.training.stall_timeout, log=log).start()
    try:
        return _train(cfg, resume, force, log, watchdog)
    finally:
        watchdog.stop()


def _train(cfg: Config, resume: bool, force: bool, log: Callable[[str], None], watchdog) -> RunResult:
    # ------------------------------------------------------------------ run folder, family, device
    run = RunDir(Path(cfg.save.dir) / cfg.save.name, cfg.save.name)
    if resume and not run.root.exists():
        raise TrainingError(f"--resume: {run.root} does not exist; start the run without --resume")
    if not resume:
        run.create()
        write_text(run.root / "config.toml", dump_toml(cfg))  # first: makes --resume possible
    family = get_family(cfg.model.family)
    spec = family.SPEC
    device = pick_device(cfg.training.device)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[cfg.training.mixed_precision]
    weight_dtype = compute_dtype if device.type == "cuda" else torch.float32
    check_unsupported(cfg, device)
    memory.configure_allocator(cfg, device)

    # ------------------------------------------------------------------ dataset check before any GPU work
    watchdog.beat("scanning the dataset")
    dataset = scan_dataset(cfg.data, divisibility=spec.bucket_divisibility)
    report = dataset.report
    write_text(run.root / "data_report.json", _json(report.to_json(cfg.training.batch_size)))
    log(report.to_table(cfg.training.batch_size))
    if report.usable == 0:
        raise DataError(f"no usable image in {cfg.data.dir or cfg.data.config}: see the report above")
    stream = BatchStream(dataset, cfg.training.batch_size, cfg.training.seed)
    check_disk(cfg, run, dataset, spec)
    fingerprint = run_fingerprint(cfg, dataset)
    if resume and not force:
        check_unchanged(run, fingerprint)  # refuse a changed run before minutes of model loading and caching

    # ------------------------------------------------------------------ model and caches
    watchdog.beat("loading the base model")
    adapter = family.Adapter(cfg)
    adapter.load(cfg.model, cfg.memory, device, weight_dtype)
    identity = adapter.identity()
    cache_root = cache_folder(cfg.data, cfg.save.dir)
    latents = LatentCache(cache_root, identity["vae"])
    watchdog.beat("caching latents")
    latents.ensure(dataset.items, adapter.encode_images, flip=cfg.data.flip_aug, progress=cfg.log.progress)
    texts: Optional[TextCache] = None
    if cfg.memory.cache_text_encoder_outputs and not cfg.network.train_text_encoder:
        texts = TextCache(cache_root, identity["text"])
        watchdog.beat("caching text-encoder outputs")
        texts.ensure(sorted(set(fixed_captions(dataset))), adapter.encode_text, progress=cfg.log.progress)
        adapter.offload_encoders()

    # ------------------------------------------------------------------ LoRA, optimizer, schedule
    targets = adapter.lora_targets(cfg.network)
    modules = {"denoiser": adapter.denoiser(), **adapter.text_encoder_modules()}
    torch.manual_seed(cfg.training.seed)
    groups = []
    for component, module_targets in targets.items():
        module = modules["denoiser"] if component in ("unet", "transformer") else modules[component]
        alpha = {name: (cfg.network.conv_alpha if _is_conv(module, name) else cfg.network.alpha)
                 for name in module_targets}
        # every call of the denoiser runs in autocast (steps, previews, the LoRA check); a trained text encoder
        # also runs outside it (next_batch encodes the captions)
        denoiser = component in ("unet", "transformer")
        params = inject_lora(module, module_targets, alpha, cfg.network.dropout,
                             under_autocast=denoiser and compute_dtype != torch.float32)
        lr = cfg.optimizer.lr if denoiser else (
            cfg.network.text_encoder_lr or cfg.optimizer.lr)
        groups.append({"params": params, "lr": lr, "name": component})
    trainable = [p for g in groups for p in g["params"]]
    # after injection (peft wraps the Linears first), before compile: the memory budget's choices, then fp8
    # storage and block swap, applied block by block while the denoiser moves to the device
    adapter.before_placement(cfg.memory, log)
    blocks = speed.repeated_blocks(modules["denoiser"])
    if cfg.memory.vram_gb:
        budget.apply_budget(cfg, spec, modules["denoiser"], blocks, trainable, swap.LOOKAHEAD, log=log, device=device)
        adapter.before_placement(cfg.memory, log)  # what the budget chose that the adapter applies (modulation_on_cpu)
        if cfg.training.batch_size != stream.batch_size:  # the budget split the batch (gradient accumulation)
            stream = BatchStream(dataset, cfg.training.batch_size, cfg.training.seed)
    swapper = swap.place_denoiser(modules["denoiser"], blocks, device, fp8_base=cfg.memory.fp8_base,
                                  fp8_compute=cfg.memory.fp8_compute, blocks_to_swap=cfg.memory.blocks_to_swap,
                                  log=log)
    speed.prepare_denoiser(modules["denoiser"], cfg.memory, device, log=log,  # checkpointing, regional compile
                           cuda_graphs=cfg.memory.cuda_graphs, swapper=swapper,
                           buckets=len({item.bucket for item in dataset.items}))
    log(f"LoRA: {sum(len(t) for t in targets.values())} modules, {sum(p.numel() for p in trainable):,} parameters")
    build = optim.build_optimizer
    if cfg.memory.fused_backward:  # each LoRA parameter is stepped inside backward; same optimizer interface
        build = functools.partial(fused.build_fused_optimizer, nan_policy=cfg.training.nan_policy)
    optimizer = build(groups, cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay,
                      cfg.optimizer.betas, cfg.optimizer.eps, fused=fused_adamw(cfg, device))
    scheduler = optim.build_scheduler(optimizer, cfg.optimizer.scheduler, cfg.optimizer.warmup_steps,
                                      cfg.training.max_steps, cfg.optimizer.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type) if cfg.training.mixed_precision == "fp16" else None
    generator = torch.Generator().manual_seed(cfg.training.seed)
    start_step = 0
    if resume:
        start_step = restore(run, fingerprint, force, modules, targets, optimizer, scheduler, stream, generator, log)
        if start_step == 0:  # steps logged before the kill are redone: drop them
            (run.root / "metrics.jsonl").unlink(missing_ok=True)

    # ------------------------------------------------------------------ previews
    defaults = SamplePrompt(prompt="", negative=cfg.sample.negative_prompt,
                            width=cfg.sample.width or resolution_wh(cfg.data.resolution)[0],
                            height=cfg.sample.height or resolution_wh(cfg.data.resolution)[1],
                            steps=cfg.sample.steps, seed=cfg.sample.seed,
                            cfg_scale=spec.default_cfg_scale if cfg.sample.cfg_scale is None else cfg.sample.cfg_scale)
    prompts = load_prompts(cfg.sample.prompts, cfg.sample.prompts_file, defaults)
    samples: list[Path] = []

    def make_samples(step: int, tag: str = "") -> list[Path]:
        watchdog.beat(f"sampling at step {step}")
        out = []
        for i, p in enumerate(prompts):
            # previews run eager: compiled training regions would recompile for every sample shape
            eager = torch.compiler.set_stance("force_eager") if cfg.memory.compile else contextlib.nullcontext()
            with torch.no_grad(), autocast(device, compute_dtype), eager:
                img = adapter.sample(p, torch.Generator().manual_seed(p.seed))
            path = run.samples / sample_filename(cfg.save.name, step, i, p.seed, tag)
            save_image(img, path)
            problem = health.image_problem(img)
            if problem:
                log(f"warning: sample {path.name} looks {problem}: often NaN weights in disguise; check the "
                    "loss curve and try a lower learning rate")
                metrics.write({"step": step, "sample_problem": problem, "sample": path.name})
            out.append(path)
        return out

    metrics = MetricsWriter(run.root, tensorboard=cfg.log.tensorboard, resume_step=start_step)
    run.write_status(status="running", step=start_step, max_steps=cfg.training.max_steps)
    if prompts and cfg.sample.at_start and start_step == 0:
        samples += make_samples(0, "before")

    # ------------------------------------------------------------------ the loop
    def next_batch() -> Batch:
        picked = next(stream)
        if texts is not None:
            per = [texts.get(caption) for _, _, caption in picked]
            text = {k: torch.stack([t[k] for t in per]) for k in per[0]}
        else:
            text = adapter.encode_text([caption for _, _, caption in picked])
        return Batch(
            latents=torch.stack([latents.get(item, flipped) for item, flipped, _ in picked]),
            text=text,
            original_sizes=[(it.original_size[1], it.original_size[0]) for it, _, _ in picked],
            crop_top_lefts=[(it.crop[1], it.crop[0]) for it, _, _ in picked],
            target_sizes=[(it.bucket[1], it.bucket[0]) for it, _, _ in picked],
            loss_weight=torch.tensor([it.loss_weight for it, _, _ in picked], dtype=torch.float32),
            captions=[caption for _, _, caption in picked],
        )

    last_saved: Optional[Path] = None
    loss_value = float("nan")
    skipped = 0
    progress = make_progress(cfg, start_step)
    t_last = time.perf_counter()
    pending: list[tuple[int, health.StepStats, dict]] = []  # steps whose numbers are not read yet
    failed_at: list[int] = []

    def report(step: int, stats: health.StepStats, at_step: dict) -> None:
        """A finished step's numbers: the NaN policy, the metrics row, the progress bar. ``at_step``: what the loop
        knew when it queued the step (seconds since the previous one, learning rate, epoch)."""
        nonlocal loss_value, skipped
        loss_value, grad_norm = stats.read()
        if not stats.ok():
            if cfg.training.nan_policy == "stop":
                failed_at.append(step)
                raise TrainingError(
                    f"step {step}: loss {loss_value} / gradient norm {grad_norm} is not finite; stopped. "
                    f"Last good checkpoint: {last_saved or 'none yet'}. Likely causes: "
                    + "; ".join(health.NAN_CAUSES))
            skipped += 1
            log(f"warning: step {step}: non-finite loss/gradient, step skipped ({skipped} so far)")
            metrics.write({"step": step, "skipped_step": True, "skipped_total": skipped})
        row = {"step": step, "loss": loss_value, "lr": at_step["lr"], "seconds": at_step["seconds"],
               "grad_norm": grad_norm, "epoch": at_step["epoch"], "peak_mem_gib": peak_memory_gib(device)}
        if step == start_step + 1 and cfg.memory.compile:  # compile cost, reported apart from step speed
            log(f"first step: {row['seconds']:.1f} s including compilation (inductor keeps compiled kernels "
                "in its on-disk cache: later runs with the same shapes compile faster)")
        if step % cfg.log.every_n_steps == 0 or step == cfg.training.max_steps:
            metrics.write(row)
        progress.update(row)

    def report_pending() -> None:
        while pending:
            report(*pending.pop(0))

    def report_finished_steps() -> None:
        """After an out-of-memory error or an interrupt: write the rows of the steps that did finish (their own
        NaN check no longer matters; the run stops anyway)."""
        with contextlib.suppress(Exception):
            report_pending()

    # what lives for the whole run (models, compiled graphs, caches) leaves the garbage collector's sight, so that no
    # full collection walks it between steps (272 ms each for a FLUX.1-sized object graph on a 2-core CPU); not
    # when the caller froze objects itself (unfreezing is all or nothing)
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.collect()
        gc.freeze()
    try:
        for step in range(start_step + 1, cfg.training.max_steps + 1):
            watchdog.beat(f"training step {step}")
            stats = update_step(adapter, next_batch, cfg, generator, optimizer, trainable, scaler, device,
                                compute_dtype)
            scheduler.step()
            if step == start_step + 1 and freeze:  # and what the first step built (compiled blocks, CUDA graphs)
                gc.collect()
                gc.freeze()
            now = time.perf_counter()
            save_now = cfg.save.every_n_steps and step % cfg.save.every_n_steps == 0 and step < cfg.training.max_steps
            sample_now = cfg.sample.every_n_steps and step % cfg.sample.every_n_steps == 0 and prompts \
                and step < cfg.training.max_steps
            report_pending()  # the previous step's numbers: by now the GPU is busy with this step's work
            pending.append((step, stats, {"seconds": now - t_last, "lr": scheduler.get_last_lr()[-1],
                                          "epoch": stream.epoch}))
            t_last = now
            # this step's too when they are read already, or before a save or preview (a step that went
            # non-finite stops the run before anything is saved after it)
            if not stats.deferred or save_now or sample_now:
                report_pending()
            if save_now:
                watchdog.beat(f"saving step {step}")
                last_saved = save_checkpoint(run, cfg, adapter, modules, targets, optimizer, scheduler, stream,
                                             generator, step, fingerprint, dataset)
            if sample_now:
                samples += make_samples(step)
        report_pending()
    except KeyboardInterrupt:
        report_finished_steps()
        raise
    except torch.cuda.OutOfMemoryError:
        report_finished_steps()
        failure = TrainingError(
            f"out of GPU memory at step {step} (batch {cfg.training.batch_size}, resolution {cfg.data.resolution}). "
            "Set memory.vram_gb to your card's memory to have lorakit choose settings that fit, or lower it if "
            "already set; by hand: training.batch_size = 1, memory.gradient_checkpointing = true, "
            "memory.fp8_base = true, memory.blocks_to_swap (FLUX), or a lower data.resolution. "
            f"Last checkpoint kept: {last_saved or 'none yet'}.")
        run.write_status(status="failed", step=step, error=str(failure))
        raise failure from None
    except TrainingError as exc:
        run.write_status(status="failed", step=failed_at[0] if failed_at else step, error=str(exc))
        raise
    finally:
        progress.close()
        if freeze:
            gc.unfreeze()

    # ------------------------------------------------------------------ final save, samples, checks
    final_step = cfg.training.max_steps
    watchdog.beat(f"saving the final LoRA (step {final_step})")
    save_checkpoint(run, cfg, adapter, modules, targets, optimizer, scheduler, stream, generator, final_step,
                    fingerprint, dataset, final=True)
    if prompts:
        samples += make_samples(final_step, "after")
        grid = before_after_grid(run, cfg.save.name, len(prompts))
        if grid:
            log(f"before/after grid: {grid}")
    metrics.close()
    plot_loss(read_metrics(run.root / "metrics.jsonl"), run.root / "loss.png")
    watchdog.beat("checking the trained LoRA")
    effect = lora_effect(adapter, modules, next_batch, cfg.training, generator, device, compute_dtype)
    if effect == 0.0:
        log("warning: the trained LoRA does not change the model's output at all on the training data "
            "(the most common silent failure): check optimizer.lr and the LoRA targets")
    problems = verify_export(run.lora_path(), adapter, extract_all(modules, targets), cfg.save.format)
    for p in problems:
        log(f"warning: export check: {p}")
    run.write_status(status="finished", step=final_step, lora=str(run.lora_path()), lora_effect=effect,
                     skipped_steps=skipped, export_problems=problems)
    log(f"LoRA: {run.lora_path()}")
    return RunResult(run.root, run.lora_path(), final_step, loss_value, samples)


# ====================================================================== one step


def update_step(adapter, next_batch, cfg: Config, generator, optimizer, trainable, scaler, device,
                compute_dtype) -> health.StepStats:
    """``train_step``, then the optimizer update unless the loss or the gradient is not finite (the loop's
    ``nan_policy`` then stops the run or counts the step as skipped).

    A fused torch AdamW (the CUDA default) makes that decision on the GPU (``health.skip_on_device``), so the host
    queues the update and the next step without waiting, and reads this step's numbers later. Any other optimizer
    waits here for the numbers: one GPU synchronisation per step."""
    stats = train_step(adapter, next_batch, cfg, generator, optimizer, trainable, scaler, device, compute_dtype)
    in_backward = getattr(optimizer, "steps_in_backward", False)  # memory.fused_backward: already stepped
    if scaler is None and not in_backward and health.skip_on_device(optimizer, stats):
        optimizer_step(optimizer, scaler)
    elif stats.ok():
        optimizer_step(optimizer, scaler)
    else:
        optimizer.zero_grad(set_to_none=True)
    return stats


def train_step(adapter, next_batch, cfg: Config, generator, optimizer, trainable, scaler, device,
               compute_dtype) -> health.StepStats:
    """One optimizer step's worth of forward/backward (with gradient accumulation); returns its loss and gradient
    norm as ``health.StepStats`` (read without a synchronisation until asked for)."""
    from lorakit.train import objectives, speed

    accumulation = cfg.training.gradient_accumulation
    total = torch.zeros((), device=device)  # summed on the device: reading it would wait for the GPU
    for _ in range(accumulation):
        speed.mark_step()  # CUDA graph trees: a new forward/backward begins (no-op unless CUDA graphs are on)
        batch = to_device(next_batch(), device)
        noise = to_gpu(torch.randn(batch.latents.shape, generator=generator), device)
        noised = adapter.noise(batch.latents, noise, batch, cfg.training, generator)
        with autocast(device, compute_dtype):
            pred = adapter.predict(noised, batch)
        per_sample = objectives.loss_per_sample(pred.float(), noised.target.float(), cfg.training.loss,
                                                cfg.training.huber_c)
        loss = objectives.weighted_mean(per_sample, noised.weight.to(device) * batch.loss_weight) / accumulation
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach().float()
    if scaler:
        scaler.unscale_(optimizer)
    if getattr(optimizer, "steps_in_backward", False):  # memory.fused_backward: stepped, grads already freed
        grad_norm = optimizer.grad_norm()
    elif cfg.optimizer.max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.optimizer.max_grad_norm)
    else:
        # one foreach reduction (a per-parameter sum would queue thousands of kernels every step)
        grad_norm = torch.nn.utils.get_total_norm([p.grad.float() for p in trainable if p.grad is not None])
    return health.StepStats(total, grad_norm)


def optimizer_step(optimizer, scaler) -> None:
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ====================================================================== saving and resuming


def extract_all(modules, targets) -> dict[str, dict]:
    """Trained LoRA of every component: component → module path → LoraModule."""
    out = {}
    for component in targets:
        module = modules["denoiser"] if component in ("unet", "transformer") else modules[component]
        out[component] = extract_lora(module)
    return out


def save_checkpoint(run: RunDir, cfg: Config, adapter, modules, targets, optimizer, scheduler, stream, generator,
                    step: int, fingerprint: dict, dataset, final: bool = False) -> Path:
    """Write the LoRA file (atomic) and the resume state (atomic folder), then prune old ones.

    A full disk stops the run with a TrainingError naming the file; the atomic writes leave the previous
    checkpoint untouched, so the run resumes from it once there is space."""
    previous = run.latest_state()
    lora = extract_all(modules, targets)
    target = run.lora_path(None if final else step)
    try:
        path = export_lora(target, adapter, lora, cfg, dataset, stream, step, run.session())
        target = run.state_path(step)
        rng = checkpoint.capture_rng()
        rng["loop_generator"] = generator.get_state()
        checkpoint.save_state(target, lora=lora, optimizer_state=optimizer.state_dict(),
                              scheduler_state=scheduler.state_dict(), rng=rng, data_state=stream.state_dict(),
                              step=step, config_fingerprint=fingerprint)
    except Exception as exc:
        if not health.is_disk_full(exc):
            raise
        raise TrainingError(
            f"disk full while writing {target} (step {step}): nothing was "
            f"overwritten; the last complete checkpoint is {previous or 'none yet'}. Free some space (or lower "
            f"save.keep_last) and continue with `lorakit train --resume {run.root}`.") from None
    run.prune(cfg.save.keep_last)
    run.write_status(step=step, last_checkpoint=str(path))
    return path


def restore(run: RunDir, fingerprint: dict, force: bool, modules, targets, optimizer, scheduler, stream,
            generator, log) -> int:
    """Load the newest resume state that verifies (a damaged one is reported and skipped); 0 when none."""
    state = None
    for state_dir in reversed(run.complete_states()):
        try:
            state = checkpoint.load_state(state_dir)
            break
        except checkpoint.IncompleteStateError as exc:
            log(f"warning: {exc}; trying the checkpoint before it")
    if state is None:
        log(f"--resume: {run.root} has no complete checkpoint (the run stopped before its first save finished); "
            "starting again from step 0. Caches already written are reused.")
        return 0
    changed = checkpoint.fingerprint_diff(state["config_fingerprint"], fingerprint)
    if changed and not force:
        raise settings_changed(state_dir, changed)
    for component in targets:
        module = modules["denoiser"] if component in ("unet", "transformer") else modules[component]
        load_lora_into(module, state["lora"][component])
    optimizer.load_state_dict(state["optimizer_state"])
    scheduler.load_state_dict(state["scheduler_state"])
    stream.load_state_dict(state["data_state"])
    rng = dict(state["rng"])
    generator.set_state(rng.pop("loop_generator"))
    checkpoint.restore_rng(rng)
    log(f"resumed from {state_dir} at step {state['step']}")
    return int(state["step"])


def check_unchanged(run: RunDir, fingerprint: dict) -> None:
    """Compare with the newest state's saved fingerprint (a cheap read; restore() verifies the state fully)."""
    import json

    latest = run.latest_state()
    try:
        saved = json.loads((latest / "train_state.json").read_text())["config_fingerprint"] if latest else None
    except (OSError, ValueError, KeyError):
        return  # a damaged state: restore() reports it and falls back to an earlier one
    changed = checkpoint.fingerprint_diff(saved, fingerprint) if saved is not None else []
    if changed:
        raise settings_changed(latest, changed)


def settings_changed(state_dir: Path, changed: list[str]) -> TrainingError:
    return TrainingError(f"cannot resume {state_dir}: the run's settings changed ({'; '.join(changed)}). "
                         "Use --force-resume to continue anyway, or start a new run.")


def run_fingerprint(cfg: Config, dataset) -> dict:
    """What must not change between a run and its resume."""
    d = config_to_dict(cfg)
    return {"model": d.get("model", {}), "network": d.get("network", {}), "data": d.get("data", {}),
            "dataset_hash": dataset_fingerprint(dataset), "training": {k: v for k, v in d.get("training", {}).items()
                                                             if k not in ("max_steps", "stall_timeout", "device")},
            "optimizer": d.get("optimizer", {})}


# ====================================================================== helpers


def dataset_fingerprint(dataset) -> str:
    """A hash of what the model sees: every usable image's bytes, caption, bucket, crop and repeats."""
    import hashlib

    h = hashlib.sha256()
    for it in dataset.items:
        h.update(f"{it.sha256}|{it.caption}|{it.bucket}|{it.crop}|{it.repeats}|{it.is_reg}|{it.loss_weight}\n".encode())
    return h.hexdigest()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name!r} asked for, but no CUDA device is available; use \"auto\" or \"cpu\"")
    return dev


def fused_adamw(cfg: Config, device: torch.device) -> Optional[bool]:
    """memory.fused_optimizer, unset = on for AdamW on CUDA (measured faster and leaner: RESULTS.md run 4)."""
    if cfg.memory.fused_optimizer is not None:
        return cfg.memory.fused_optimizer
    return True if device.type == "cuda" and cfg.optimizer.name == "adamw" else None


def check_unsupported(cfg: Config, device: torch.device) -> None:
    """Options that cannot apply to this family/device are errors, never silent no-ops."""
    memory.check_supported(cfg, device)


def check_disk(cfg: Config, run: RunDir, dataset, spec) -> None:
    """Stop before training when the disk cannot hold what the run will write."""
    w, h = resolution_wh(cfg.data.resolution)
    lat = spec.latent_channels * (w // spec.vae_downscale) * (h // spec.vae_downscale) * 4
    n = len(dataset.items) * (2 if cfg.data.flip_aug else 1)
    rank_params = cfg.network.rank * 2 * 3072 * 800  # generous upper bound of LoRA parameters
    ckpt = rank_params * 2 + rank_params * 4 * 3
    need = n * lat * 1.2 + ckpt * (cfg.save.keep_last + 1) + 2e6 * (len(cfg.sample.prompts) + 1) * 4
    free = shutil.disk_usage(run.root if run.root.exists() else Path(cfg.save.dir).resolve().anchor).free
    if free < need:
        raise TrainingError(f"not enough disk space in {run.root}: about {need / 2**30:.2f} GiB needed "
                            f"(caches, {cfg.save.keep_last} checkpoints, samples), {free / 2**30:.2f} GiB free")


def lora_effect(adapter, modules, next_batch, training, generator, device, compute_dtype) -> float:
    """Mean |output with LoRA − output without| on one training batch (0 means the LoRA does nothing)."""
    batch = to_device(next_batch(), device)
    noise = torch.randn(batch.latents.shape, generator=generator).to(device)
    with torch.no_grad(), autocast(device, compute_dtype):
        noised = adapter.noise(batch.latents, noise, batch, training, generator)
        with_lora = adapter.predict(noised, batch).float()
        for m in modules.values():
            enable_lora(m, False)
        try:
            without = adapter.predict(noised, batch).float()
        finally:
            for m in modules.values():
                enable_lora(m, True)
    return float((with_lora - without).abs().mean())


def before_after_grid(run: RunDir, name: str, n: int) -> Optional[Path]:
    from PIL import Image

    before = sorted(run.samples.glob(f"{glob_safe(name)}_before_*.png"))
    after = sorted(run.samples.glob(f"{glob_safe(name)}_after_*.png"))
    if not before or len(before) != len(after):
        return None
    w, h = Image.open(before[0]).size
    grid = Image.new("RGB", (w * len(before), h * 2), "white")
    for i, (b, a) in enumerate(zip(before, after)):
        grid.paste(Image.open(b).convert("RGB").resize((w, h)), (i * w, 0))
        grid.paste(Image.open(a).convert("RGB").resize((w, h)), (i * w, h))
    path = run.samples / "before_after.png"
    save_image(grid, path)
    return path


def glob_safe(text: str) -> str:
    from lorakit.train.rundir import glob_escape

    return glob_escape(text)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a batch to ``device`` without waiting for the GPU (``models.base.to_gpu``: a copy that waits would
    start every step from an idle GPU)."""
    batch.latents = to_gpu(batch.latents, device)
    batch.host_text = batch.text
    batch.text = {k: to_gpu(v, device) for k, v in batch.text.items()}
    batch.loss_weight = to_gpu(batch.loss_weight, device)
    return batch


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:
        return float("nan")


def make_progress(cfg: Config, start: int):
    return Progress(cfg.training.max_steps, start, enabled=cfg.log.progress)


class Progress:
    """A tqdm bar showing loss, it/s, ETA and memory."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
        self.ema: Optional[float] = None

    def update(self, row: dict[str, Any]) -> None:
        loss = row["loss"]
        if math.isfinite(loss):
            self.ema = loss if self.ema is None else 0.95 * self.ema + 0.05 * loss
        self.bar.set_postfix(loss=f"{self.ema:.4f}" if self.ema is not None else "nan",
                             lr=f"{row['lr']:.2e}", mem=f"{row['peak_mem_gib']:.1f}G", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _is_conv(module: torch.nn.Module, name: str) -> bool:
    sub = module.get_submodule(name)
    return isinstance(sub, torch.nn.Conv2d) and sub.kernel_size != (1, 1)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)
