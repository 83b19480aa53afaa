"""The ``ss_*`` and ``modelspec.*`` metadata written into every LoRA file (kohya-format.md §4).

Readers (ComfyUI, A1111's LoRA browser, CivitAI's uploader, kohya's tools) show these keys, so the names and
value formats follow sd-scripts: every value is a string, nested values are JSON, booleans are "True"/"False",
resolutions are "(w, h)". Family-specific keys (FLUX timestep sampling, ...) come from the adapter's
``metadata()``; hashes (sshs_*) are added last by the exporter with :func:`lorakit.lora.io.model_hashes`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import lorakit
from lorakit.config.resolution import resolution_wh
from lorakit.config.schema import Config
from lorakit.models.base import ModelSpec

MODELSPEC_VERSION = "1.0.1"


def _s(value: Any) -> str:
    """kohya's string form: str() for scalars (so True → "True", None → "None")."""
    return str(value)


def _network_args(cfg: Config) -> dict[str, str]:
    """``ss_network_args``: the network options beyond dim/alpha, under kohya's network_args names."""
    net = cfg.network
    args: dict[str, str] = {}
    if net.conv_rank:
        args["conv_dim"] = str(net.conv_rank)
        args["conv_alpha"] = str(net.conv_alpha)
    if net.train_blocks != "all":
        args["train_blocks"] = net.train_blocks
    if net.double_block_indices:
        args["train_double_block_indices"] = str(net.double_block_indices)
    if net.single_block_indices:
        args["train_single_block_indices"] = str(net.single_block_indices)
    for kind, rank in sorted((net.module_ranks or {}).items()):
        args[f"{kind}_dim"] = str(rank)
    args.update(variant_args(net))
    return args


def variant_args(net) -> dict[str, str]:
    """issue 23: the network_args LyCORIS' kohya module (``lycoris.kohya``) reads for a LoHa/LoKr/DoRA run:
    ``algo`` (DoRA is LyCORIS' lora/locon with ``dora_wd``; lorakit's magnitude is on the input axis, so
    ``wd_on_output`` is False), LoKr's ``factor``."""
    if net.type == "loha":
        return {"algo": "loha"}
    if net.type == "lokr":
        return {"algo": "lokr", "factor": str(net.factor)}
    if net.type == "dora":
        return {"algo": "locon" if net.conv_rank else "lora", "dora_wd": "True", "wd_on_output": "False"}
    return {}


def variant_metadata(cfg: Config) -> dict[str, str]:
    """``ss_network_module`` of a LoHa/LoKr/DoRA file: LyCORIS' ``lycoris.kohya`` (what kohya's scripts and the
    WebUIs' metadata readers expect of a LyCORIS file); empty for LoRA/LoCon (the family's module stands)."""
    return {"ss_network_module": "lycoris.kohya"} if cfg.network.type in ("loha", "lokr", "dora") else {}


def describe_optimizer(name: str, weight_decay: float, betas: Sequence[float], eps: float) -> str:
    """The ``ss_optimizer`` string kohya writes: the class path and its non-lr arguments."""
    paths: dict[str, str] = {
        "adamw": "torch.optim.adamw.AdamW",
        "adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit",
        "prodigy": "prodigyopt.prodigy.Prodigy",
        "adafactor": "transformers.optimization.Adafactor",
        "lion": "lion_pytorch.lion_pytorch.Lion",
        "came": "came_pytorch.CAME.CAME",
        "adamw_schedulefree": "schedulefree.adamw_schedulefree.AdamWScheduleFree",
    }
    args: dict[str, Any] = {"weight_decay": weight_decay}
    if name == "adafactor":
        args.update(relative_step=False, scale_parameter=False, warmup_init=False)
    elif name == "lion":
        args.update(betas=tuple(float(b) for b in betas))
    elif name == "came":
        args.update(betas=tuple(float(b) for b in betas) + (0.9999,))
    else:
        args.update(betas=tuple(float(b) for b in betas), eps=eps)
    return f"{paths.get(name, name)}({','.join(f'{k}={v}' for k, v in args.items())})"


def common_metadata(*, cfg: Config, spec: ModelSpec, dataset_info: dict, steps: int, epochs: int,
                    started_at: float, finished_at: Optional[float], base_model_file: Optional[str],
                    session_id: str) -> dict[str, str]:
    """The family-independent ``ss_*`` keys (plus ``lorakit_version``), all values ``str``.

    ``dataset_info`` (from the data pipeline) may hold: ``tag_frequency`` {dir: {tag: n}},
    ``dataset_dirs`` {dir: {"n_repeats": int, "img_count": int}}, ``num_train_images`` (with repeats),
    ``num_reg_images``, ``num_batches_per_epoch``, ``num_epochs`` (planned; default ``epochs``),
    ``bucket_info`` (JSON-able), ``settings`` (:func:`lorakit.data.report.run_settings`: the resolution, batch
    size, keep_tokens and flip_aug the run took, e.g. from a data.config dataset TOML). Missing entries are written as empty/zero values.
    ``finished_at`` None (an intermediate checkpoint) leaves ``ss_training_finished_at`` out.
    """
    net, opt, tr, data, mem = cfg.network, cfg.optimizer, cfg.training, cfg.data, cfg.memory
    taken = dataset_info.get("settings") or {}    # what the scanned dataset (a data.config TOML) set, over [data]'s
    w, h = taken.get("resolution") or resolution_wh(data.resolution)
    te_lr = (net.text_encoder_lr or opt.lr) if net.train_text_encoder else None
    md: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_output_name": cfg.save.name,
        "ss_training_comment": cfg.save.comment,
        "ss_steps": steps,
        "ss_epoch": epochs,
        "ss_max_train_steps": tr.max_steps,
        "ss_num_epochs": dataset_info.get("num_epochs", epochs),
        "ss_num_batches_per_epoch": dataset_info.get("num_batches_per_epoch", 0),
        "ss_base_model_version": spec.metadata_base_version,
        "ss_v2": False,
        "ss_sd_model_name": os.path.basename(base_model_file or cfg.model.checkpoint or ""),
        "ss_network_module": spec.network_module,
        "ss_network_dim": net.rank,
        "ss_network_alpha": net.alpha,
        "ss_network_dropout": net.dropout,
        "ss_network_args": json.dumps(_network_args(cfg)),
        "ss_network_train_unet_only": not net.train_text_encoder,
        "ss_optimizer": describe_optimizer(opt.name, opt.weight_decay, opt.betas, opt.eps),
        "ss_learning_rate": opt.lr,
        "ss_unet_lr": opt.lr,
        "ss_text_encoder_lr": te_lr,
        "ss_lr_scheduler": opt.scheduler,
        "ss_lr_warmup_steps": opt.warmup_steps,
        "ss_max_grad_norm": opt.max_grad_norm,
        "ss_seed": tr.seed,
        "ss_mixed_precision": tr.mixed_precision,
        "ss_gradient_checkpointing": mem.gradient_checkpointing,
        "ss_gradient_accumulation_steps": tr.gradient_accumulation,
        "ss_batch_size_per_device": taken.get("batch_size", tr.batch_size),
        "ss_total_batch_size": taken.get("batch_size", tr.batch_size) * tr.gradient_accumulation
        * taken.get("processes", 1),  # × data-parallel processes, as kohya's
        "ss_fp8_base": mem.fp8_base,
        "lorakit_fp8_compute": bool(mem.fp8_compute),  # float8 matmuls change the numerics, not only the storage
        "ss_resolution": f"({w}, {h})",
        "ss_enable_bucket": data.enable_bucket,
        "ss_min_bucket_reso": data.min_bucket_reso,
        "ss_max_bucket_reso": data.max_bucket_reso,
        "ss_bucket_no_upscale": data.bucket_no_upscale,
        "ss_keep_tokens": taken.get("keep_tokens", data.keep_tokens),
        "ss_shuffle_caption": data.shuffle_caption,
        "ss_flip_aug": taken.get("flip_aug", data.flip_aug),
        "ss_caption_dropout_rate": data.caption_dropout_rate,
        "ss_caption_tag_dropout_rate": data.caption_tag_dropout_rate,
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_cache_latents": mem.cache_latents,
        "ss_num_train_images": dataset_info.get("num_train_images", 0),
        "ss_num_reg_images": dataset_info.get("num_reg_images", 0),
        "ss_prior_loss_weight": data.prior_loss_weight,
        "ss_tag_frequency": json.dumps(lower_tags(dataset_info.get("tag_frequency", {})), ensure_ascii=False),
        "ss_dataset_dirs": json.dumps(dataset_info.get("dataset_dirs", {}), ensure_ascii=False),
        "ss_noise_offset": tr.noise_offset,
        "ss_min_snr_gamma": tr.min_snr_gamma,
        # issue 23 (the keys sd-scripts writes for these options)
        "ss_multires_noise_iterations": tr.multires_noise_iterations or None,
        "ss_multires_noise_discount": tr.multires_noise_discount,
        "ss_ip_noise_gamma": tr.ip_noise_gamma or None,
        "ss_debiased_estimation": tr.debiased_estimation_loss,
        "ss_max_token_length": data.max_token_length if data.max_token_length != 75 else None,
        "ss_loss_type": tr.loss,
        "ss_huber_c": tr.huber_c,
        "lorakit_version": lorakit.__version__,
    }
    if "bucket_info" in dataset_info:
        md["ss_bucket_info"] = json.dumps(kohya_bucket_info(dataset_info["bucket_info"]))
    if finished_at is not None:
        md["ss_training_finished_at"] = finished_at
    return {k: _s(v) for k, v in md.items()}


def lower_tags(freq: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """sd-scripts counts tags lower-cased ("Smile" and "smile" are one tag in ss_tag_frequency)."""
    out: dict[str, dict[str, int]] = {}
    for folder, tags in freq.items():
        merged = out.setdefault(folder, {})
        for tag, n in tags.items():
            merged[tag.lower()] = merged.get(tag.lower(), 0) + int(n)
    return out


def kohya_bucket_info(info: Any) -> dict[str, Any]:
    """ss_bucket_info in sd-scripts' structure, {"buckets": {"0": {"resolution": [w, h], "count": n}, …},
    "mean_img_ar_error": x}; A1111/Forge's metadata card crashes on the flat {"WxH": n} form, which is
    converted here."""
    buckets = info.get("buckets", {}) if isinstance(info, dict) else {}
    if buckets and all(isinstance(v, int) for v in buckets.values()):  # flat {"1024x1024": n}
        rows = sorted((tuple(int(x) for x in str(k).split("x")), n) for k, n in buckets.items())
        buckets = {i: {"resolution": list(wh), "count": n} for i, (wh, n) in enumerate(rows)}
    return {"buckets": {str(i): {"resolution": list(b["resolution"]), "count": int(b["count"])}
                        for i, b in buckets.items()},
            "mean_img_ar_error": float(info.get("mean_img_ar_error", 0.0)) if isinstance(info, dict) else 0.0}


def run_modelspec(*, cfg: Config, family_md: dict[str, str], trigger_words: list[str], date: str,
                  resolution: Optional[tuple[int, int]] = None) -> dict[str, str]:
    """Every ``modelspec.*`` key for a run (all families): the family's architecture / implementation /
    prediction type (from its adapter's metadata) completed with spec version, title, resolution (the one the run
    took, e.g. from a data.config dataset TOML; default [data]'s), date, implementation_version and trigger_phrase."""
    w, h = resolution or resolution_wh(cfg.data.resolution)
    extra = {"trigger_phrase": ", ".join(trigger_words) if trigger_words else None,
             "description": cfg.save.comment or None}
    return modelspec_metadata(architecture=family_md["modelspec.architecture"], title=cfg.save.name,
                              resolution=f"{w}x{h}", date=date,
                              prediction_type=family_md.get("modelspec.prediction_type"),
                              # every lorakit family's denoiser is a diffusers class: the default implementation
                              implementation=family_md.get("modelspec.implementation",
                                                           "https://github.com/huggingface/diffusers"), extra=extra)


def modelspec_metadata(*, architecture: str, title: str, resolution: str, date: str,
                       prediction_type: Optional[str], implementation: str,
                       extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The Stability AI ModelSpec keys (``modelspec.*``) that UIs use to sort and label a LoRA.

    ``architecture`` e.g. "stable-diffusion-xl-v1-base/lora" or "flux-1-dev/lora"; ``resolution`` "WxH";
    ``date`` ISO 8601; ``prediction_type`` "epsilon"/"v" (SDXL) or None. ``extra`` fills optional keys such
    as author, description, license, tags, trigger_phrase (names without the ``modelspec.`` prefix).
    The spec version written is 1.0.1, as current sd-scripts writes.
    """
    md = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": architecture,
        "modelspec.implementation": implementation,
        "modelspec.implementation_version": f"lorakit/{lorakit.__version__}",
        "modelspec.title": title,
        "modelspec.resolution": resolution,
        "modelspec.date": date,
    }
    if prediction_type:
        md["modelspec.prediction_type"] = prediction_type
    for k, v in (extra or {}).items():
        if v is not None and v != "":
            md[f"modelspec.{k}"] = str(v)
    return md
