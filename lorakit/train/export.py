"""Writing the LoRA file a user ships (with metadata and hashes), and checking it afterwards.

The family adapter names the tensors (kohya or diffusers layout); this module adds the ``ss_*`` and
``modelspec.*`` metadata CivitAI and the WebUIs read, computes ``sshs_*`` hashes, writes atomically, and
verifies the written file: it reloads through the safe loader, holds exactly the expected keys, and every
LoRA pair fits the base module it was trained on.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lorakit.config.schema import Config
from lorakit.lora.io import load_lora_file, model_hashes, save_safetensors_atomic
from lorakit.lora.metadata import common_metadata, variant_metadata

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def dataset_info(dataset, stream) -> dict:
    """What the ss_* metadata says about the data: tag frequency, folders, image counts, buckets."""
    from lorakit.data.captions import tag_frequency
    from lorakit.data.report import bucket_info, dataset_dirs, run_settings

    # counts with repeats, bucket_info in sd-scripts' nested structure (issue 22)
    return {"tag_frequency": tag_frequency(dataset), "dataset_dirs": dataset_dirs(dataset),
            "num_train_images": sum(it.repeats for it in dataset.items if not it.is_reg),
            "num_reg_images": sum(it.repeats for it in dataset.items if it.is_reg),
            "num_batches_per_epoch": stream.steps_per_epoch, "num_epochs": None,
            "bucket_info": bucket_info(dataset),  # kohya's batch per device, and the processes (multi-GPU)
            "settings": {**run_settings(dataset, stream.batch_size // getattr(stream, "processes", 1)),
                         "processes": getattr(stream, "processes", 1)}}


def export_lora(path: Path, adapter, lora: dict, cfg: Config, dataset, stream, step: int,
                session: tuple[str, float], extra: dict[str, str] | None = None) -> Path:
    """Write ``lora`` (component → module → LoraModule) to ``path`` in ``cfg.save.format`` with metadata
    (``extra``: more metadata entries, e.g. the best validation step)."""
    tensors = adapter.export(lora, cfg.save.format)
    dtype = SAVE_DTYPES[cfg.save.precision]
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in tensors.items()}
    per_epoch = max(stream.steps_per_epoch, 1)
    epochs = -(-step // per_epoch)
    info = dataset_info(dataset, stream)
    info["num_epochs"] = -(-cfg.training.max_steps // per_epoch)
    meta = common_metadata(cfg=cfg, spec=adapter.spec, dataset_info=info, steps=step,
                           epochs=epochs, started_at=session[1], finished_at=time.time(),
                           base_model_file=cfg.model.checkpoint, session_id=session[0])
    meta.update(adapter.metadata(cfg))
    meta.update(variant_metadata(cfg))  # issue 23: lycoris.kohya for LoHa/LoKr/DoRA
    meta.update(_modelspec_and_base_hashes(cfg, dataset, meta))
    meta.update(extra or {})
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(tensors, meta)
    save_safetensors_atomic(path, tensors, meta)
    return path


def _modelspec_and_base_hashes(cfg: Config, dataset, family_md: dict) -> dict:
    """modelspec.* complete for every family (issue 22) and ss_sd_model_hash / ss_new_sd_model_hash of the base
    file (A1111's legacy hash and the full SHA-256; hashed once per file and cached by size and mtime)."""
    import datetime

    from lorakit.lora.metadata import run_modelspec

    triggers = []
    for sub in dataset.subsets:
        words = (getattr(sub, "class_tokens", "") or "").split()
        if words and not sub.is_reg and words[0] not in triggers:
            triggers.append(words[0])
    if cfg.data.trigger:
        triggers = [cfg.data.trigger]
    from lorakit.data.report import run_settings

    out = run_modelspec(cfg=cfg, family_md=family_md, trigger_words=triggers,
                        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                        resolution=run_settings(dataset, cfg.training.batch_size).get("resolution"))
    out.update(base_hashes(cfg.model.checkpoint))
    return out


_HASHES: dict = {}


def base_hashes(checkpoint) -> dict:
    from lorakit.lora.io import file_legacy_hash, file_sha256

    path = Path(checkpoint) if checkpoint else None
    if path is None or not path.is_file():
        return {}
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = {"ss_sd_model_hash": file_legacy_hash(path), "ss_new_sd_model_hash": file_sha256(path)}
    return dict(_HASHES[key])


def verify_export(path: Path, adapter, lora: dict, fmt: str) -> list[str]:
    """Problems with a written LoRA file (empty list when it is sound)."""
    problems: list[str] = []
    try:
        tensors, meta = load_lora_file(path)
    except Exception as exc:  # report, never crash after a finished run
        return [f"{path} does not load: {exc}"]
    expected = adapter.export(lora, fmt)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"{len(missing)} expected keys missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} keys that map onto no trained module, e.g. {extra[:3]}")
    for key in sorted(set(expected) & set(tensors)):
        if tuple(tensors[key].shape) != tuple(expected[key].shape):
            problems.append(f"{key}: shape {tuple(tensors[key].shape)} != {tuple(expected[key].shape)}")
    denoiser = adapter.denoiser()
    for component, modules in lora.items():
        root = denoiser if component == adapter.spec.denoiser_name else adapter.text_encoder_modules().get(component)
        if root is None:
            problems.append(f"component {component!r} has no module in the base model")
            continue
        for name, pair in modules.items():
            try:
                base = root.get_submodule(name)
            except AttributeError:
                problems.append(f"{component}: {name} is not a module of the base model")
                continue
            weight = getattr(base, "base_layer", base).weight
            if pair.algo in ("loha", "lokr"):  # issue 23: the variant's ΔW must have the weight's shape
                from lorakit.lora.variants import module_delta

                try:
                    module_delta(pair, weight)
                except (RuntimeError, ValueError) as exc:
                    problems.append(f"{component}: {name}: {pair.algo} does not fit weight {tuple(weight.shape)} "
                                    f"({exc})")
                continue
            if pair.down.shape[1] != weight.shape[1] or pair.up.shape[0] != weight.shape[0]:
                problems.append(f"{component}: {name}: LoRA {tuple(pair.up.shape)}@{tuple(pair.down.shape)} does "
                                f"not fit weight {tuple(weight.shape)}")
    for key, value in meta.items():
        if not isinstance(value, str):
            problems.append(f"metadata {key} is not a string")
    return problems
