"""The training run, top to bottom: data → caches → LoRA and memory plan → loop (noise → loss → backward → step) →
samples, checkpoints → export and verification.

Model-family knowledge stays behind the adapter (lorakit/models/<family>); this file never asks which family it
trains. The loaded config is read, never written: the memory plan returns the config the run uses
(``placement.Placed.cfg``), recorded in ``plan.json`` beside the user's ``config.toml``. Every file a user may depend
on is written atomically, and the resume state holds everything needed to continue bit-for-bit (LoRA, optimizer,
scheduler, RNG, data position). The units beside this file: ``steps`` (one optimizer step), ``placement`` (LoRA,
plan, device), ``previews``, ``report`` (the step reporter) and ``resume`` (saving and resuming).
"""

from __future__ import annotations

import functools
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lorakit.config.load import dump_toml
from lorakit.config.schema import Config
from lorakit.data.cache import LatentCache, TextCache, cache_folder
from lorakit.data.captions import fixed_captions
from lorakit.data.masks import MaskCache
from lorakit.data.report import run_settings
from lorakit.data.scan import scan_dataset
from lorakit.data.stream import BatchStream
from lorakit.data.validation import make_validation
from lorakit.errors import DataError, TrainingError
from lorakit.device import torch_device
from lorakit.fsutil import write_text
from lorakit.models.base import Batch
from lorakit.models.registry import get_family
from lorakit.train import (autoplan, distributed, ema, epochs, fused, health, memory, optim, placement, resume, steps,
                           validation)
from lorakit.train.export import verify_export
from lorakit.train.metrics import MetricsWriter
from lorakit.train.previews import Previews
from lorakit.train.report import Progress, StepReporter
from lorakit.train.rundir import RunDir


@dataclass
class RunResult:
    run_dir: Path
    lora_path: Path
    steps: int
    final_loss: float
    samples: list[Path]


@dataclass
class Run:
    """What the phases of a run hand on to each other."""

    cfg: Config                     # as loaded (config.toml); the run itself uses ``placed.cfg``
    run: RunDir
    device: torch.device
    compute_dtype: torch.dtype
    adapter: Any = None
    dataset: Any = None
    stream: Any = None
    fingerprint: Optional[dict] = None
    latents: Any = None
    texts: Any = None
    placed: Any = None
    validation: Any = None          # data.validation.ValidationSet (held-out images; empty when none)
    validator: Any = None           # train.validation.Validator
    ema: Any = None                 # training.ema: ema.LoraEMA
    masks: Any = None               # data.alpha_mask / data.mask_dir: data.masks.MaskCache


def train(cfg: Config, *, resume: bool = False, force: bool = False, log: Callable[[str], None] = print,
          run_dir: Optional[Path] = None) -> RunResult:
    """Run (or continue) one training run described by ``cfg``; the stall watchdog watches every phase, from
    the dataset scan to the checks after the final save. ``run_dir``: the folder a resume continues (the one given
    to ``--resume``, wherever it was copied or moved; default ``save.dir/save.name``)."""
    watchdog = health.StallWatchdog(cfg.training.stall_timeout, log=log).start()
    try:
        with distributed.joined(cfg):  # several processes (--gpus N, accelerate launch): rank 0 runs, others follow
            return (_train if distributed.is_main() else distributed.follow)(cfg, resume, force, log, watchdog, run_dir)
    finally:
        watchdog.stop()


def _train(cfg: Config, resume_: bool, force: bool, log: Callable[[str], None], watchdog, run_dir) -> RunResult:
    r = start(cfg, resume_, log, run_dir)
    try:
        return _run(r, resume_, force, log, watchdog)
    finally:
        r.run.unlock()  # the run folder's lock (the OS drops it too when the process ends in any way)


def _run(r: "Run", resume_: bool, force: bool, log: Callable[[str], None], watchdog) -> RunResult:
    try:
        ready = prepare(r, resume_, force, log, watchdog)
    except BaseException:
        # a failed (or interrupted) start costs nothing: the folder it made goes, the caches (outside it) stay
        if not resume_ and r.run.discard():
            log(f"nothing was trained; {r.run.root} was removed, so the corrected command starts cleanly "
                "(caches already written are kept)")
        raise
    run_cfg, next_batch, generator, optimizer, scheduler, scaler, previews, reporter, metrics, start_step = ready
    loop_steps(r, run_cfg, next_batch, generator, optimizer, scheduler, scaler, previews, reporter, start_step,
               watchdog)
    return finish(r, run_cfg, next_batch, generator, optimizer, scheduler, previews, reporter, metrics, watchdog, log)


def prepare_model(r: "Run", resume_: bool, force: bool, log: Callable[[str], None], watchdog) -> tuple:
    """Dataset, model, caches, plan, optimizer, resume state: what every process of a run prepares alike."""
    cfg = r.cfg
    watchdog.beat("scanning the dataset")
    scan(r, resume_, force, log)
    cfg = r.cfg = epochs.apply(cfg, r.stream.steps_per_epoch, log)  # training.max_epochs / save.every_n_epochs
    if (warn := optim.schedule_warning(cfg.optimizer.scheduler, cfg.optimizer.warmup_steps, cfg.training.max_steps)):
        log(warn)  # after the epochs: their step count is the run's
    watchdog.beat("loading the base model")
    load_and_cache(r, watchdog, log)
    r.placed = placement.place(cfg, r.adapter, r.device, r.compute_dtype,
                               buckets=len({item.bucket for item in r.dataset.items}), log=log,
                               room=autoplan.recorded_room(r.run.root) if resume_ else None, resuming=resume_)
    run_cfg = r.placed.cfg
    health.check_disk(run_cfg, r.run, r.dataset, r.adapter.spec, lora_params=sum(p.numel() for p in r.placed.trainable))
    if resume_:
        resume.check_plan(r.run, r.placed.plan, force, log)
    if run_cfg.training.batch_size * distributed.world() != r.stream.batch_size:  # the plan split the batch
        r.stream = BatchStream(r.dataset, run_cfg.training.batch_size, run_cfg.training.seed, distributed.world())
    optimizer, scheduler, scaler = make_optimizer(run_cfg, r)
    r.ema = ema.attach(run_cfg, optimizer, r.placed.trainable, log)  # before restore: resume state carries it
    generator = torch.Generator().manual_seed(cfg.training.seed)
    start_step = 0
    if resume_:
        start_step = resume.restore(r.run, r.fingerprint, force, r.placed.modules, r.placed.targets, optimizer,
                                    scheduler, r.stream, generator, log)
    distributed.check_start(r.placed.trainable, r.placed.plan, start_step)
    return run_cfg, generator, optimizer, scheduler, scaler, start_step


def prepare(r: "Run", resume_: bool, force: bool, log: Callable[[str], None], watchdog) -> tuple:
    """Everything before the first step: dataset, model, caches, plan, optimizer, resume state, first previews."""
    run_cfg, generator, optimizer, scheduler, scaler, start_step = prepare_model(r, resume_, force, log, watchdog)
    cfg = r.cfg
    if resume_:  # config.toml says what the run continues with; from step 0 the steps logged before are redone
        resume.accepted(r.run, cfg, start_step, log)
    write_text(r.run.root / "plan.json", json.dumps(r.placed.plan, indent=2, default=str))  # a refused resume keeps it
    previews = Previews(run_cfg, r.adapter.spec, r.adapter, r.run, r.device, r.compute_dtype, watchdog, log,
                        resolution=run_settings(r.dataset, run_cfg.training.batch_size)["resolution"])
    metrics = MetricsWriter(r.run.root, tensorboard=cfg.log.tensorboard, resume_step=start_step if resume_ else None)
    for note in metrics.notes:
        log(f"warning: {note}")
    previews.metrics, previews.modules = metrics, r.placed.modules
    r.validator = validation.start(r, run_cfg, metrics, start_step, log)
    r.run.write_status(status="running", step=start_step, max_steps=cfg.training.max_steps)
    if previews.prompts and cfg.sample.at_start and start_step == 0:
        previews.draw(0, "before")
    reporter = StepReporter(run_cfg, metrics, Progress(cfg.training.max_steps, start_step, cfg.log.progress), log,
                            start_step, r.device)
    return (run_cfg, batches(r, run_cfg), generator, optimizer, scheduler, scaler, previews, reporter, metrics,
            start_step)


# ====================================================================== phases before the loop


def start(cfg: Config, resume_: bool, log: Callable[[str], None], run_dir: Optional[Path] = None) -> Run:
    """The run folder (locked while this process trains in it), the device and the checks that need no file read."""
    run = RunDir(Path(run_dir) if run_dir else Path(cfg.save.dir) / cfg.save.name, cfg.save.name)
    if resume_ and not run.root.is_dir():
        raise TrainingError(f"--resume: {run.root} does not exist; start the run without --resume")
    if resume_ and distributed.is_main():
        run.lock()
        resume.tidy(run, log, cfg)  # refuses a finished run
    try:
        return _start(cfg, resume_, run)
    except BaseException:
        run.unlock()
        raise


def _start(cfg: Config, resume_: bool, run: RunDir) -> Run:
    family = get_family(cfg.model.family)
    device = torch_device(cfg.training.device)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[cfg.training.mixed_precision]
    memory.check_supported(cfg, device)
    family.Adapter.check_config(cfg, device)
    if not resume_ and distributed.is_main():  # after the checks that need no file: a refused config leaves none
        try:
            run.create()  # refuses (TrainingError, below) a folder that holds anything; then only new files follow
            write_text(run.root / "config.toml", dump_toml(cfg))  # first: makes --resume possible
        except TrainingError:
            raise
        except BaseException as exc:  # a full disk at start: a failed start leaves nothing that blocks the rerun
            run.discard()
            raise health.disk_error(exc, run.root / "config.toml") from None
    memory.configure_allocator(cfg, device)
    return Run(cfg, run, device, compute_dtype, adapter=family.Adapter(cfg))


def scan(r: Run, resume_: bool, force: bool, log: Callable[[str], None]) -> None:
    """The dataset check before any GPU work; a changed run is refused before minutes of loading and caching."""
    cfg, spec, batch = r.cfg, r.adapter.spec, r.cfg.training.batch_size * distributed.world()  # the global batch
    r.dataset = scan_dataset(cfg.data, divisibility=spec.bucket_divisibility)
    report = r.dataset.report
    if distributed.is_main():
        write_text(r.run.root / "data_report.json", _json(report.to_json(batch, cfg.training.gradient_accumulation)))
    log(report.to_table(batch, cfg.training.gradient_accumulation))
    if report.usable == 0:
        raise DataError(f"no usable image in {cfg.data.dir or cfg.data.config}: see the report above")
    r.dataset, r.validation = make_validation(r.dataset, cfg.data, cfg.training.seed, spec.bucket_divisibility)
    if len(r.validation):
        log(f"validation: {len(r.validation)} image(s) from {r.validation.source}, never trained on: "
            + ", ".join(r.validation.names()))
    r.stream = BatchStream(r.dataset, cfg.training.batch_size, cfg.training.seed, processes=distributed.world())
    health.check_disk(cfg, r.run, r.dataset, spec)
    r.fingerprint = resume.run_fingerprint(cfg, r.dataset)
    if resume_ and not force:
        resume.check_unchanged(r.run, r.fingerprint)


def load_and_cache(r: Run, watchdog, log: Callable[[str], None]) -> None:
    """The frozen base model, then the latent and text caches (encoders leave the GPU afterwards)."""
    cfg = r.cfg
    weight_dtype = r.compute_dtype if r.device.type == "cuda" else torch.float32
    r.adapter.load(cfg.model, autoplan.loading_memory(cfg, r.adapter.spec, r.device), r.device, weight_dtype)
    identity = r.adapter.identity()
    cache_root = cache_folder(cfg.data, r.run.root.parent)  # save.dir, or where a moved run folder now lives
    caching = autoplan.caching_plan(cfg, r.dataset.items, r.device, log, r.adapter)  # VAE batch / tiling: free memory
    r.latents = LatentCache(cache_root, identity["vae"] + (caching.key if caching else ""))
    watchdog.beat("caching latents")
    distributed.split(r.latents.ensure, r.dataset.items, r.latents.path, encode=r.adapter.encode_images,
                      flip=any(s.flip_aug for s in r.dataset.subsets),  # a data.config TOML may flip where [data] not
                      progress=cfg.log.progress, **({"batch_size": caching.latent_batch} if caching else {}))
    distributed.split(r.latents.ensure, r.validation.items, r.latents.path, encode=r.adapter.encode_images, flip=False,
                      progress=cfg.log.progress)
    if cfg.data.alpha_mask or cfg.data.mask_dir:
        first = r.dataset.items[0]  # pixels per latent pixel, as the loaded VAE encodes (tiny VAEs differ)
        r.masks = MaskCache(cache_root, cfg.data.alpha_mask, cfg.data.mask_dir,
                            first.bucket[0] // r.latents.get(first).shape[-1])
        r.masks.ensure(r.dataset.items, flip=any(s.flip_aug for s in r.dataset.subsets))
    if cfg.memory.cache_text_encoder_outputs and not cfg.network.train_text_encoder:
        r.texts = TextCache(cache_root, identity["text"])
        watchdog.beat("caching text-encoder outputs")
        distributed.split(r.texts.ensure, sorted(set(fixed_captions(r.dataset)) | set(r.validation.captions)),
                          r.texts.path, encode=r.adapter.encode_text, progress=cfg.log.progress)
        r.adapter.offload_encoders()


def make_optimizer(cfg: Config, r: Run):
    build = optim.build_optimizer
    if cfg.memory.fused_backward:  # each LoRA parameter is stepped inside backward; same optimizer interface
        build = functools.partial(fused.build_fused_optimizer, nan_policy=cfg.training.nan_policy)
    optimizer = build(r.placed.groups, cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay,
                      cfg.optimizer.betas, cfg.optimizer.eps, fused=optim.fused_adamw(cfg, r.device))
    scheduler = optim.build_scheduler(optimizer, cfg.optimizer.scheduler, cfg.optimizer.warmup_steps,
                                      cfg.training.max_steps, cfg.optimizer.min_lr_ratio, cfg.optimizer.num_cycles)
    scaler = torch.amp.GradScaler(r.device.type) if cfg.training.mixed_precision == "fp16" else None
    return optimizer, scheduler, scaler


def batches(r: Run, cfg: Config) -> Callable[[], Batch]:
    """The next batch: cached latents, cached (or freshly encoded) text, SDXL-style size conditioning."""
    def next_batch() -> Batch:
        picked = next(r.stream)
        if r.texts is not None:
            per = [r.texts.get(caption) for _, _, caption in picked]
            text = {k: torch.stack([t[k] for t in per]) for k in per[0]}
        else:
            text = r.adapter.encode_text([caption for _, _, caption in picked])
        latents = torch.stack([r.latents.get(item, flipped) for item, flipped, _ in picked])
        return Batch(
            latents=latents,
            text=text,
            original_sizes=[(it.original_size[1], it.original_size[0]) for it, _, _ in picked],
            crop_top_lefts=[(it.crop[1], it.crop[0]) for it, _, _ in picked],
            target_sizes=[(it.bucket[1], it.bucket[0]) for it, _, _ in picked],
            loss_weight=torch.tensor([it.loss_weight for it, _, _ in picked], dtype=torch.float32),
            captions=[caption for _, _, caption in picked],
            mask=(torch.stack([r.masks.get(it, flipped, latents[0]) for it, flipped, _ in picked])
                  if r.masks is not None else None),
        )
    return next_batch


# ====================================================================== the loop


def loop_steps(r: Run, cfg: Config, next_batch, generator, optimizer, scheduler, scaler, previews: Previews,
               reporter: StepReporter, start_step: int, watchdog) -> None:
    """Steps ``start_step + 1`` … ``max_steps``: step, report, save and preview when due."""
    placed = r.placed
    # what lives for the whole run (models, compiled graphs, caches) leaves the garbage collector's sight, so that no
    # full collection walks it between steps (272 ms each for a FLUX.1-sized object graph on a 2-core CPU); not
    # when the caller froze objects itself (unfreezing is all or nothing)
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.collect()
        gc.freeze()
    step, t_last = start_step, time.perf_counter()
    try:
        for step in range(start_step + 1, cfg.training.max_steps + 1):
            watchdog.beat(f"training step {step}")
            stats, lr = steps.update_step(r.adapter, next_batch, cfg, generator, optimizer, placed.trainable, scaler,
                                          r.device, r.compute_dtype), scheduler.get_last_lr()[-1]  # this step's lr
            if r.ema is not None:
                r.ema.update()
            scheduler.step()
            if step == start_step + 1 and freeze:  # and what the first step built (compiled blocks, CUDA graphs)
                gc.collect()
                gc.freeze()
            now = time.perf_counter()
            save_now = cfg.save.every_n_steps and step % cfg.save.every_n_steps == 0 and step < cfg.training.max_steps
            sample_now = previews.due(step)
            val_now = r.validator.due(step)
            # this step's numbers are read now when a save or preview follows (a step that went non-finite stops the
            # run before anything is saved after it)
            reporter.add(step, stats, {"seconds": now - t_last, "lr": lr,
                                       "epoch": r.stream.epoch}, read_now=bool(save_now or sample_now or val_now))
            t_last = now
            if val_now:  # before the save: a kill between the two redoes both on resume
                watchdog.beat(f"validation loss at step {step}")
                r.validator.run_at(step)
            if sample_now:  # before the save: once state N exists, so do step N's previews
                with ema.for_previews(r.ema, cfg):
                    previews.draw(step)
            if save_now:
                watchdog.beat(f"saving step {step}")
                reporter.metrics.flush()
                reporter.last_saved = resume.save_checkpoint(r.run, cfg, r.adapter, placed.modules, placed.targets,
                                                             optimizer, scheduler, r.stream, generator, step,
                                                             r.fingerprint, r.dataset)
                resume.draw_loss(r.run, step)
        reporter.flush()
    except KeyboardInterrupt:
        reporter.flush_quietly()
        raise resume.interrupted(r.run, step) from None
    except torch.cuda.OutOfMemoryError:
        reporter.flush_quietly()
        failure = TrainingError(
            f"out of GPU memory at step {step} (batch {cfg.training.batch_size}, resolution {cfg.data.resolution}). "
            "Set memory.vram_gb to your card's memory to have lorakit choose settings that fit, or lower it if "
            "already set; by hand: training.batch_size = 1, memory.gradient_checkpointing = true, "
            "memory.fp8_base = true, memory.blocks_to_swap, or a lower data.resolution. "
            f"Last checkpoint kept: {reporter.last_saved or 'none yet'}.")
        health.record_failure(r.run, status="failed", step=step, error=str(failure))
        raise failure from None
    except TrainingError as exc:
        exc = health.name_nonfinite_weights(exc, reporter.failed_at, r.placed.modules, r.cfg.model)
        health.record_failure(r.run, status="failed", step=reporter.failed_at or step, error=str(exc))
        raise exc
    finally:
        reporter.progress.close()
        if freeze:
            gc.unfreeze()


# ====================================================================== after the loop


def finish(r: Run, cfg: Config, next_batch, generator, optimizer, scheduler, previews: Previews,
           reporter: StepReporter, metrics: MetricsWriter, watchdog, log: Callable[[str], None]) -> RunResult:
    """The final save, the after-samples and grid, the loss plot, then the checks of the trained LoRA."""
    placed, final_step = r.placed, cfg.training.max_steps
    watchdog.beat(f"saving the final LoRA (step {final_step})")
    resume.save_checkpoint(r.run, cfg, r.adapter, placed.modules, placed.targets, optimizer, scheduler, r.stream,
                           generator, final_step, r.fingerprint, r.dataset, final=True)
    ema_path = ema.save_file(r.ema, r.run, cfg, r.adapter, placed.modules, placed.targets, r.dataset, r.stream,
                             final_step)
    if previews.prompts:
        with ema.for_previews(r.ema, cfg):
            previews.draw(final_step, "after")
        grid = previews.grid()
        if grid:
            log(f"before/after grid: {grid}")
    metrics.close()
    resume.draw_loss(r.run, final_step)
    watchdog.beat("checking the trained LoRA")
    effect = steps.lora_effect(r.adapter, placed.modules, next_batch, cfg.training,
                               torch.Generator().manual_seed(cfg.training.seed), r.device, r.compute_dtype)
    if effect == 0.0:
        log("warning: the trained LoRA does not change the model's output at all on the training data "
            "(the most common silent failure): check optimizer.lr and the LoRA targets")
    problems = verify_export(r.run.lora_path(), r.adapter, resume.extract_all(placed.modules, placed.targets),
                             cfg.save.format)
    for p in problems:
        log(f"warning: export check: {p}")
    r.run.write_status(status="finished", step=final_step, lora=str(r.run.lora_path()), lora_effect=effect,
                       skipped_steps=reporter.skipped, export_problems=problems, **validation.report(r.validator, log))
    log(f"LoRA: {r.run.lora_path()}" + (f" (EMA: {ema_path})" if ema_path else ""))
    return RunResult(r.run.root, r.run.lora_path(), final_step, reporter.loss, previews.paths)


# ====================================================================== helpers


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
