"""Saving and resuming: the LoRA file and the resume state of a step, the newest state that verifies, and what must
not change between a run and its resume (the config's fingerprint and the memory plan)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lorakit.config.load import config_to_dict, dump_toml, load_config
from lorakit.config.schema import Config
from lorakit.errors import LorakitError, TrainingError
from lorakit.fsutil import atomic_path, write_bytes, write_text
from lorakit.lora.inject import extract_lora, load_lora_into
from lorakit.train import checkpoint, distributed, health
from lorakit.train.export import export_lora
from lorakit.train.rundir import RunDir


def extract_all(modules, targets) -> dict[str, dict]:
    """Trained LoRA of every component: component → module path → LoraModule (``modules`` by component name)."""
    return {component: extract_lora(modules[component]) for component in targets}


def save_checkpoint(run: RunDir, cfg: Config, adapter, modules, targets, optimizer, scheduler, stream, generator,
                    step: int, fingerprint: dict, dataset, final: bool = False) -> Path:
    """Write the LoRA file (atomic) and the resume state (atomic folder), then prune old ones. ``cfg`` is the config
    the run uses (the plan applied), so the LoRA's metadata records what ran.

    A full disk stops the run with a TrainingError naming the file; the atomic writes leave the previous
    checkpoint untouched, so the run resumes from it once there is space. A Ctrl-C/SIGTERM during the save is raised
    when it is done (the first lazy import of torch's serialisation code is inside), so a stop keeps this checkpoint."""
    from lorakit.interrupts import deferred

    with deferred():
        return _save_checkpoint(run, cfg, adapter, modules, targets, optimizer, scheduler, stream, generator, step,
                                fingerprint, dataset, final)


def _save_checkpoint(run: RunDir, cfg: Config, adapter, modules, targets, optimizer, scheduler, stream, generator,
                     step: int, fingerprint: dict, dataset, final: bool) -> Path:
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
            f"{health.disk_problem(exc)} while writing {target} (step {step}): nothing was "
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
            _check_parts(state_dir, state, targets)
            break
        except checkpoint.IncompleteStateError as exc:
            state = None
            log(f"warning: {exc}; trying the checkpoint before it")
    if state is None:
        log(f"--resume: {run.root} has no complete checkpoint (the run stopped before its first save finished); "
            "starting again from step 0. Caches already written are reused.")
        return 0
    changed = _changed(state["config_fingerprint"], fingerprint)
    if changed and not force:
        raise settings_changed(state_dir, changed)
    _check_data_order(state_dir, state["data_state"], stream)
    for component in targets:
        load_lora_into(modules[component], state["lora"][component])
    optimizer.load_state_dict(state["optimizer_state"])
    scheduler.load_state_dict(state["scheduler_state"])
    stream.load_state_dict(state["data_state"])
    rng = dict(state["rng"])
    generator.set_state(rng.pop("loop_generator"))
    checkpoint.restore_rng(rng)
    log(f"resumed from {state_dir} at step {state['step']}")
    return int(state["step"])


def accepted(run: RunDir, cfg: Config, start_step: int, log) -> None:
    """A resume that passed every check (its state restored, or none to restore): the metrics rows of a run that
    starts again from step 0 go, and ``config.toml`` says what the run now continues with (a raised
    ``training.max_steps``, a change --force-resume let through), so sweep reports, inspect and the next
    --resume read the truth. The file it replaces is kept beside it as ``config.until-stepN.toml`` (N: the step it
    trained to), never overwritten; a resume that changes nothing writes nothing."""
    if start_step == 0:  # steps logged before the kill are redone: drop them
        (run.root / "metrics.jsonl").unlink(missing_ok=True)
    keep_delivered(run, cfg, start_step, log)
    path, new = run.root / "config.toml", dump_toml(cfg)
    old = path.read_bytes() if path.is_file() else None  # none through the Python API on a folder without one
    try:
        before = dump_toml(load_config(path)) if old is not None else ""  # as lorakit reads it: comments aside
    except LorakitError:
        before = None  # (the resume read it a moment ago; kept as it is either way)
    if before == new:  # the same settings (a file edited by hand keeps its comments and layout)
        return
    kept, n = run.root / f"config.until-step{start_step:08d}.toml", 1
    while old is not None and kept.exists() and kept.read_bytes() != old:
        n += 1
        kept = run.root / f"config.until-step{start_step:08d}-{n}.toml"
    if old is not None:
        write_bytes(kept, old)
    write_text(path, new)
    changes = _toml_changes(before or "", new) if before else []
    log(f"{path} now holds this resume's settings"
        + (f" ({'; '.join(changes[:4])}{'; …' if len(changes) > 4 else ''})" if changes else "")
        + (f"; the config it replaced is kept as {kept.name}" if old is not None else ""))


def keep_delivered(run: RunDir, cfg: Config, start_step: int, log) -> list[Path]:
    """A resume that goes on past a run's end (a raised ``training.max_steps`` / ``max_epochs``) would write its
    final LoRA over the one the run delivered: that file (and its ``-ema`` twin) is kept beside it first as
    ``<name>.until-stepN.safetensors`` (N: the step it holds), byte for byte and never overwritten, like
    ``config.until-stepN.toml``; one line says so. Returns the copies made."""
    kept_paths = []
    for path in (run.lora_path(), run.root / f"{cfg.save.name}-ema.safetensors"):
        if not path.is_file():
            continue
        step = _file_step(path) or start_step
        if cfg.training.max_steps <= step:
            continue  # this resume ends where the file's run ended (a run stopped after its final save): no extension
        stem = path.name.removesuffix(".safetensors")
        kept, n = path.with_name(f"{stem}.until-step{step:08d}.safetensors"), 1
        while kept.exists() and not _same_bytes(kept, path):
            n += 1
            kept = path.with_name(f"{stem}.until-step{step:08d}-{n}.safetensors")
        if kept.exists():
            continue  # kept by an earlier attempt of this resume
        import shutil

        with atomic_path(kept, overwrite=False) as tmp:
            shutil.copyfile(path, tmp)
        kept_paths.append(kept)
        log(f"the LoRA this run delivered at step {step} is kept as {kept} (this resume writes {path.name} anew "
            "when it finishes)")
    return kept_paths


def _file_step(path: Path) -> int:
    """The step a LoRA file holds (its ``ss_steps`` metadata); 0 when unknown."""
    from lorakit.safetensors_header import read_safetensors_header

    try:
        value = read_safetensors_header(path)[1].get("ss_steps", "")
    except LorakitError:
        return 0
    return int(value) if value.isdigit() else 0


def _same_bytes(a: Path, b: Path) -> bool:
    import filecmp

    return filecmp.cmp(a, b, shallow=False)


def _toml_changes(old: str, new: str) -> list[str]:
    """``section.key old → new`` for every key whose value differs between two config TOML texts."""
    import tomllib

    def flat(text: str) -> dict:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return {}
        return {f"{s}.{k}" if isinstance(v, dict) else s: (vv if isinstance(v, dict) else v)
                for s, v in data.items() for k, vv in (v.items() if isinstance(v, dict) else [(s, v)])}

    a, b = flat(old), flat(new)
    return [f"{k} {a.get(k, 'unset')} → {b.get(k, 'unset')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _check_parts(state_dir: Path, state: dict, targets) -> None:
    """A state that loads but lacks what a resume of this run needs is damaged, like one with a bad byte."""
    missing = [c for c in targets if c not in state["lora"]]
    if missing:
        raise checkpoint.IncompleteStateError(f"{state_dir}: no LoRA weights for {', '.join(missing)}")
    if "loop_generator" not in state["rng"] or "torch" not in state["rng"]:
        raise checkpoint.IncompleteStateError(f"{state_dir}: rng.pt lacks the training random streams")
    try:
        int(state["data_state"]["epoch"]), int(state["data_state"]["position"])
    except (ValueError, KeyError, TypeError):
        raise checkpoint.IncompleteStateError(f"{state_dir}: train_state.json has no data position") from None


def _check_data_order(state_dir: Path, saved: dict, stream) -> None:
    """The saved data position means something only for the data order it was taken in (seed, batch size): a
    change that --force-resume let through ends here in one line, before any weight is touched."""
    batch = "training.batch_size" if distributed.world() == 1 else "processes × training.batch_size"
    for key, name, now in (("seed", "training.seed", stream.seed), ("batch_size", batch, stream.batch_size)):
        if key in saved and saved[key] != now:
            raise TrainingError(
                f"cannot resume {state_dir} with {name} = {now}: it was saved with {name} = {saved[key]}, and its "
                f"data position belongs to that order (even with --force-resume). Set {name} = {saved[key]} to "
                "continue it, or start a new run.")


def check_unchanged(run: RunDir, fingerprint: dict) -> None:
    """Compare with the newest state's saved fingerprint (a cheap read; restore() verifies the state fully)."""
    latest = run.latest_state()
    try:
        saved = json.loads((latest / "train_state.json").read_text())["config_fingerprint"] if latest else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # a damaged state: restore() reports it and falls back to an earlier one
    changed = _changed(saved, fingerprint) if saved is not None else []
    if changed:
        raise settings_changed(latest, changed)


def settings_changed(state_dir: Path, changed: list[str]) -> TrainingError:
    changed = [line.replace("training.batch_size:", "the global batch (processes × training.batch_size):", 1)
               for line in changed]
    return TrainingError(f"cannot resume {state_dir}: the run's settings changed ({'; '.join(changed)}). "
                         "Use --force-resume to continue anyway, or start a new run.")


def check_plan(run: RunDir, plan: dict, force: bool, log=print) -> None:
    """A resumed run must run as it ran: the plan derived now against ``plan.json`` (what the first start chose).
    A different plan (another card, another PyTorch, a changed estimate) is refused naming each difference, unless
    ``force``; the new plan is then recorded."""
    path = run.root / "plan.json"
    if not path.exists():
        return  # no plan recorded yet (a run stopped before planning): this one is written
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        saved, processes = recorded["settings"], int(recorded.get("processes", 1))
        if not isinstance(saved, dict):
            raise TypeError("settings is not a table")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log(f"warning: {path} is unreadable ({type(exc).__name__}: {str(exc)[:80]}): the memory plan cannot be "
            "compared with the one the run started with; the plan chosen now is used and recorded")
        return
    saved, now = distributed.global_batch(saved, processes), distributed.global_batch(plan["settings"])
    changed = [f"{key}: {saved.get(key)!r} then, {now.get(key)!r} now"
               for key in sorted(set(saved) | set(now))
               # a key an older plan.json lacks (memory.compile, memory.cuda_graphs) is compared from now on
               if key in saved and saved.get(key) != now.get(key)]
    if changed and not force:
        raise TrainingError(f"cannot resume {run.root}: the memory plan differs from the one it ran with "
                            f"({'; '.join(changed)}). Resume on the same card and settings, or use --force-resume "
                            "to continue with the new plan.")


# the run's length (steps or, walk7o, epochs: a resume may raise either) and where it runs: not compared at a resume
_EXTENDABLE = ("max_steps", "max_epochs", "stall_timeout", "device")


def _changed(saved: dict, now: dict) -> list[str]:
    """``checkpoint.fingerprint_diff`` without the keys a resume may change (a state written before walk7o holds
    ``training.max_epochs``)."""
    if isinstance(saved, dict) and isinstance(saved.get("training"), dict):
        saved = {**saved, "training": {k: v for k, v in saved["training"].items() if k not in _EXTENDABLE}}
    if isinstance(saved, dict) and "mask_hash" not in saved and isinstance(now, dict):  # a state from before fixes8
        now = {k: v for k, v in now.items() if k != "mask_hash"}
    if isinstance(saved, dict) and "validation" not in saved and isinstance(now, dict):  # before the family walk
        now = {k: v for k, v in now.items() if k != "validation"}
    return checkpoint.fingerprint_diff(saved, now)


def run_fingerprint(cfg: Config, dataset) -> dict:
    """What must not change between a run and its resume."""
    d = config_to_dict(cfg)  # training.batch_size: the global batch (processes × per process; resumable on others)
    d["training"] = {**d.get("training", {}), "batch_size": cfg.training.batch_size * distributed.world()}
    out = {"model": d.get("model", {}), "network": d.get("network", {}), "data": d.get("data", {}),
           "dataset_hash": dataset_fingerprint(dataset), "training": {k: v for k, v in d.get("training", {}).items()
                                                            if k not in _EXTENDABLE},
           "optimizer": d.get("optimizer", {})}
    if cfg.data.validation_split > 0 or cfg.data.validation_dir is not None:
        # familywalk: other timesteps per image draw other noise, so the losses (and keep_best) would compare
        # numbers of two measures; every_n_steps and keep_best may change
        out["validation"] = {"timesteps": cfg.validation.timesteps}
    if cfg.data.mask_dir and not cfg.data.alpha_mask:  # an alpha mask is in the image's bytes (dataset_hash)
        out["mask_hash"] = mask_fingerprint(dataset, cfg.data.mask_dir)
    return out


def mask_fingerprint(dataset, mask_dir) -> str:
    """fixes8: a hash of the ``data.mask_dir`` mask of every training image (its bytes), so a mask edited between a
    run and its --resume is reported like an edited image or caption."""
    import hashlib

    from lorakit.data.masks import mask_file

    h = hashlib.sha256()
    for it in dataset.items:
        if not it.is_reg:
            path = mask_file(it, mask_dir)
            h.update(f"{it.path.name}|{path.name}|{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def dataset_fingerprint(dataset) -> str:
    """A hash of what the model sees: every usable image's bytes, caption, bucket, crop and repeats."""
    import hashlib

    h = hashlib.sha256()
    for it in dataset.items:
        h.update(f"{it.sha256}|{it.caption}|{it.bucket}|{it.crop}|{it.repeats}|{it.is_reg}|{it.loss_weight}\n".encode())
    return h.hexdigest()


def tidy(run: RunDir, log, cfg: Optional[Config] = None) -> None:
    """At a resume (the folder locked): refuse a run that already finished (with ``cfg``), remove the temp files a
    kill left (lorakit's own names only), and say when run.json was damaged (it is written anew)."""
    if cfg is not None:
        try:
            check_not_finished(run, cfg)
        except TrainingError:
            run.unlock()
            raise
    removed = run.clean_temps()
    if removed:
        names = ", ".join(str(p.relative_to(run.root)) for p in removed[:4]) + (", …" if len(removed) > 4 else "")
        log(f"removed {len(removed)} temporary file(s) an interrupted run left: {names}")
    problem = run.status_problem()
    if problem:
        log(f"warning: {problem}")


def check_not_finished(run: RunDir, cfg: Config) -> None:
    """--resume of a run that already ended at ``training.max_steps`` (run.json says "finished"): nothing to
    continue, so refuse in one line before anything loads, rather than redo the run's end over its LoRA and
    previews. A run counted in ``training.max_epochs`` learns its steps at the scan: it is refused when its epochs are
    those its config.toml trained to."""
    status, max_steps = run.read_status(), cfg.training.max_steps
    step = status.get("step")
    epochs = cfg.training.max_epochs
    if epochs is not None and status.get("status") == "finished" and isinstance(step, int) \
            and epochs <= (_recorded_epochs(run) or 0):  # walk7o: an epochs run whose epochs were not raised
        raise TrainingError(
            f"--resume: {run.root} finished at step {step} (training.max_epochs = {epochs}); nothing was changed "
            f"(its LoRA: {run.lora_path()}). To train it further, raise the epochs: `lorakit train --resume "
            f"{run.root} training.max_epochs={2 * epochs}`")
    if status.get("status") != "finished" or epochs is not None or not isinstance(step, int) or step < max_steps:
        return
    recorded = _recorded_epochs(run, "max_steps")
    if step == max_steps:
        past = ""
    elif recorded == max_steps:
        past = f" in its config.toml; an earlier --resume trained on to {step}"
    else:  # walk8c: the lower count came with this command, not from the run's config.toml
        past = (f" given here, below the {step} it trained to; its config.toml says "
                f"{recorded if recorded is not None else 'nothing'}")
    raise TrainingError(
        f"--resume: {run.root} finished at step {step} (training.max_steps = {max_steps}{past}); nothing was changed "
        f"(its LoRA: {run.lora_path()}). To train it further, raise the step count: `lorakit train --resume {run.root} "
        f"training.max_steps={2 * step}`")


def _recorded_epochs(run: RunDir, key: str = "max_epochs") -> Optional[int]:
    """training.max_epochs (or another training key) of the run's config.toml (what it trained to); None when unset
    or unreadable."""
    import tomllib

    try:
        value = tomllib.loads((run.root / "config.toml").read_text(encoding="utf-8")).get("training", {}) \
            .get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def interrupted(run: RunDir, step: int) -> Exception:
    """Ctrl-C or SIGTERM during the steps: run.json says "interrupted", and one line names the checkpoint a resume
    continues from."""
    last = run.latest_state()
    where = (f"the last complete checkpoint is step {int(last.name.removeprefix('step'))}; `lorakit train --resume "
             f"{run.root}` continues from there" if last else
             f"no checkpoint was complete yet; `lorakit train --resume {run.root}` starts again from step 0 and "
             "reuses the caches")
    message = f"interrupted at step {step}: {where}"
    from lorakit.errors import Interrupted

    health.record_failure(run, status="interrupted", step=step, error=message)
    return Interrupted(message)


def draw_loss(run: RunDir, step: int) -> None:
    """loss.png beside the checkpoints (after each save and at the end). A full disk here stops the run with the
    resume line: the checkpoint of this step is complete."""
    from lorakit.interrupts import deferred
    from lorakit.train.metrics import plot_loss, read_metrics

    try:
        with deferred():  # a Ctrl-C/SIGTERM is raised after the drawing, not inside matplotlib's first import
            plot_loss(read_metrics(run.root / "metrics.jsonl"), run.root / "loss.png")
    except Exception as exc:
        if not health.is_disk_full(exc):
            raise
        raise TrainingError(
            f"{health.disk_problem(exc)} while writing {run.root / 'loss.png'} (step {step}): the last complete "
            f"checkpoint is {run.latest_state() or 'none yet'}. Free some space and continue with "
            f"`lorakit train --resume {run.root}`.") from None
