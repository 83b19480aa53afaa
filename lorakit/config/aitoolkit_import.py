"""Import an ostris ai-toolkit job config (YAML: ``job`` / ``config.name`` / ``config.process[0]`` with ``network``,
``train``, ``model``, ``datasets``, ``save``, ``sample``) into lorakit's shape.

Key names and defaults are those of ai-toolkit's ``toolkit/config_modules.py`` and its ``config/examples``
(reference only, no code taken). ai-toolkit's datasets are plain image folders (no ``N_name`` repeat folders) with
one or several resolutions, so they are written as a kohya dataset TOML next to the run.toml (``data.config``): one
``[[datasets]]`` per resolution, each folder a subset with its ``num_repeats``. Every key of the file is reported,
mapped or not carried over with the reason (:mod:`lorakit.config.importing`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from lorakit.config.importing import ImportResult, file_family, render, set_key, settle
from lorakit.config.toml_io import toml_value
from lorakit.errors import ConfigError

_TRAINERS = ("sd_trainer", "ui_trainer", "diffusion_trainer")
# model.arch → lorakit family (ai-toolkit also trains many a model lorakit has no family for: refused by name)
_ARCHES = {"sdxl": "sdxl", "sd1": "sd15", "flux": "flux1", "flex1": "flux1", "flux2": "flux2",
           "flux2_klein_4b": "flux2", "flux2_klein_9b": "flux2", "sd3": "sd3", "qwen_image": "qwenimage",
           "zimage": "zimage"}
_FLAGS = (("is_flux", "flux1"), ("is_xl", "sdxl"), ("is_v3", "sd3"))
_NAME_HINTS = (("flux.2", "flux2"), ("flux2", "flux2"), ("flux.1", "flux1"), ("flux1", "flux1"), ("flex.1", "flux1"),
               ("qwen-image", "qwenimage"), ("qwen_image", "qwenimage"), ("z-image", "zimage"),
               ("stable-diffusion-3", "sd3"), ("sd3", "sd3"), ("xl", "sdxl"), ("v1-5", "sd15"), ("1.5", "sd15"))
_OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "prodigy": "prodigy", "adafactor": "adafactor",
               "lion": "lion", "came": "came"}
_SCHEDULERS = {"constant": "constant", "linear": "linear", "cosine": "cosine"}
_PRECISION = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "fp32": "fp32",
              "float32": "fp32", "float": "fp32"}
_COMPUTE = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "fp32": "no", "float32": "no"}
_LOSSES = {"mse": "l2", "mae": "l1"}
_NETWORKS = {"lora": "lora", "locon": "locon", "lokr": "lokr"}

_BUILT_IN = "lorakit always does this"
_FAMILY = "read to choose model.family"
_TE_CACHE = "lorakit runs the text encoders once before training and caches their outputs"
_PLANNED = "placement is planned by lorakit (memory.auto / memory.vram_gb)"
_HUB = "uploads: use `lorakit push RUN --repo user/name` after the run"


def _lookup(table: Mapping[str, str], what: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        key = str(value).lower()
        if key not in table:
            raise ValueError(f"{value!r}: lorakit has no such {what} (it has {', '.join(sorted(set(table.values())))})")
        return table[key]
    return convert


# section → key → (lorakit key, conversion) or a reason it is not carried over
_TRAIN: dict[str, Any] = {
    "steps": ("training.max_steps", int), "lr": ("optimizer.lr", float), "unet_lr": ("optimizer.lr", float),
    "batch_size": ("training.batch_size", int),
    "gradient_accumulation_steps": ("training.gradient_accumulation", int),
    "gradient_accumulation": ("training.gradient_accumulation", int),
    "gradient_checkpointing": ("memory.gradient_checkpointing", bool),
    "optimizer": ("optimizer.name", _lookup(_OPTIMIZERS, "optimizer")),
    "lr_scheduler": ("optimizer.scheduler", _lookup(_SCHEDULERS, "lr_scheduler")),
    "max_grad_norm": ("optimizer.max_grad_norm", float), "min_snr_gamma": ("training.min_snr_gamma", float),
    "snr_gamma": ("training.min_snr_gamma", float), "noise_offset": ("training.noise_offset", float),
    "train_text_encoder": ("network.train_text_encoder", bool),
    "dtype": ("training.mixed_precision", _lookup(_COMPUTE, "dtype")),
    "cache_text_embeddings": ("memory.cache_text_encoder_outputs", bool),
    "skip_first_sample": ("sample.at_start", lambda v: not v),
    "loss_type": ("training.loss", _lookup(_LOSSES, "loss_type")),
    "timestep_type": ("training.timestep_sampling", _lookup({"sigmoid": "sigmoid"}, "timestep_type")),
    "noise_scheduler": "lorakit uses the family's own objective (flow matching for FLUX, SD3.5, Qwen-Image, "
                       "Z-Image; DDPM noise for SDXL and SD 1.5)",
    "xformers": "lorakit picks its attention kernel (PyTorch SDPA)",
    "sdp": "lorakit picks its attention kernel (PyTorch SDPA)",
    "attention_backend": "lorakit picks its attention kernel (PyTorch SDPA)",
    "unload_text_encoder": _TE_CACHE, "force_first_sample": "sample.at_start says whether to sample before training",
}
_MODEL: dict[str, Any] = {
    "name_or_path": ("model.checkpoint", str), "vae_path": ("model.vae", str),
    "arch": _FAMILY, "is_flux": _FAMILY, "is_xl": _FAMILY, "is_v3": _FAMILY, "is_v2": _FAMILY,
    "quantize": ("memory.fp8_base", bool), "quantize_te": _TE_CACHE, "qtype_te": _TE_CACHE,
    "low_vram": _PLANNED, "layer_offloading": _PLANNED, "auto_memory": _PLANNED,
    "dtype": "lorakit loads the frozen base in bf16 (memory.fp8_base stores it in fp8)",
    "compile": "set memory.compile (CUDA only)",
}
_SAVE: dict[str, Any] = {
    "dtype": ("save.precision", _lookup(_PRECISION, "save dtype")), "save_every": ("save.every_n_steps", int),
    "max_step_saves_to_keep": ("save.keep_last", int),
    "save_format": ("save.format", _lookup({"diffusers": "diffusers"}, "save_format (safetensors: lorakit writes "
                                           ".safetensors in the kohya layout by default)")),
    "push_to_hub": _HUB, "hf_repo_id": _HUB, "hf_private": _HUB,
}
_SAMPLE: dict[str, Any] = {
    "sample_every": ("sample.every_n_steps", int), "width": ("sample.width", int), "height": ("sample.height", int),
    "sample_steps": ("sample.steps", int), "seed": ("sample.seed", int),
    "neg": ("sample.negative_prompt", lambda v: "" if v in (None, False) else str(v)),  # ai-toolkit's default: False
    "sampler": "lorakit samples with the family's own sampler (SDXL: sample.sampler)",
    "walk_seed": "lorakit always walks: preview i without its own seed draws with sample.seed + i",
}
_LOGGING: dict[str, Any] = {"log_every": ("log.every_n_steps", int),
                            "use_wandb": "lorakit writes metrics.jsonl and TensorBoard (log.tensorboard)",
                            "use_ui_logger": "lorakit's web UI reads the run folder",
                            "project_name": "lorakit writes metrics.jsonl and TensorBoard (log.tensorboard)",
                            "run_name": "lorakit writes metrics.jsonl and TensorBoard (log.tensorboard)"}
_DATASET_KEYS = {"caption_ext": "caption_extension", "caption_dropout_rate": "caption_dropout_rate",
                 "shuffle_tokens": "shuffle_caption", "keep_tokens": "keep_tokens",
                 "token_dropout_rate": "caption_tag_dropout_rate", "flip_x": "flip_aug", "num_repeats": "num_repeats",
                 "is_reg": "is_reg", "default_caption": "class_tokens"}
_DATASET_BUILT_IN = {"cache_latents": "lorakit always caches latents on disk",
                     "cache_latents_to_disk": "lorakit always caches latents on disk",
                     "cache_text_embeddings": _TE_CACHE}
_DEFAULTS = {"network_weight": 1, "loss_multiplier": 1, "num_frames": 1, "shrink_video_to_frames": True, "scale": 1,
             "flip_y": False, "controls": [], "mask_min_value": 0.1, "sample_start_step": 0, "train_unet": True,
             "transformer_only": True, "lokr_full_rank": True, "network_kwargs": {}, "model_kwargs": {},
             "content_or_style": "balanced"}


def dataset_path(out: Path) -> Path:
    """The dataset TOML written beside ``out`` (run.toml → run.dataset.toml)."""
    return out.with_name(out.stem + ".dataset.toml")


def read_job(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the whole document, config.process[0]) of an ai-toolkit job YAML, or one line naming the file."""
    import yaml  # PyYAML: a hard dependency of transformers and huggingface_hub, both pinned by lorakit

    from lorakit.config.importing import read_source

    text = read_source(path, "pass the job YAML ai-toolkit runs (e.g. config/my_lora.yaml)")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or 'parse error'}{line}); pass "
                          "the job YAML ai-toolkit runs") from None
    if isinstance(doc, dict) and "LoRA_type" in doc:
        raise ConfigError(f"{path}: a kohya_ss GUI config, not an ai-toolkit job; use `lorakit import kohya_ss "
                          f"{path}`")
    process = doc.get("config", {}).get("process") if isinstance(doc, dict) and isinstance(doc.get("config"),
                                                                                          dict) else None
    if not isinstance(process, list) or not process or not isinstance(process[0], dict):
        hint = (" (an sd-scripts TOML? use `lorakit import kohya`)" if path.suffix.lower() == ".toml" else
                " (a training command line? use `lorakit import kohya` or `lorakit import musubi`)"
                if "train_network.py" in text or "train.py" in text else "")
        raise ConfigError(f"{path}: not an ai-toolkit job config (no config.process list){hint}; pass the job YAML "
                          "ai-toolkit runs (job: extension, config: {name, process: [...]})")
    first = process[0]
    kind = str(first.get("type", ""))
    if kind not in _TRAINERS:
        raise ConfigError(f"{path}: config.process[0].type is {kind!r}, not a LoRA training process "
                          f"({', '.join(_TRAINERS)}); lorakit imports LoRA training jobs only")
    return doc, first


def aitoolkit_family(model: Mapping[str, Any], path: Path) -> tuple[str, list[str]]:
    """model.arch (or the is_flux / is_xl / is_v3 flags, or the model's name) → family; the base model file's header
    wins where it names one."""
    arch = str(model.get("arch") or "").split(":")[0].lower()
    name = str(model.get("name_or_path") or "")
    if arch and arch not in _ARCHES:
        raise ConfigError(f"{path}: model.arch {arch!r} has no lorakit family (lorakit trains "
                          f"{', '.join(sorted(set(_ARCHES)))} in ai-toolkit's names); pass --family if the model is "
                          "one of those")
    if model.get("is_v2") is True:
        raise ConfigError(f"{path}: model.is_v2 (Stable Diffusion 2.x): lorakit has no SD 2 family")
    named = _ARCHES.get(arch) or next((fam for flag, fam in _FLAGS if model.get(flag) is True), None)
    if named is None:
        lowered = Path(name).name.lower()
        named = next((fam for hint, fam in _NAME_HINTS if hint in lowered), None)
    header = file_family(name)
    if header and named and header != named:
        return header, [f"model.arch / flags say {named}, but {name} is a {header} checkpoint (its header): "
                        f"model.family = {header!r} was written"]
    if header or named:
        return header or named, []
    return "sd15", ["nothing names the model's architecture (model.arch, is_flux, is_xl): ai-toolkit then trains "
                    "SD 1.x, so model.family = 'sd15' was written; pass --family if that is wrong"]


class _Walk:
    """Reports each key of the file once, by its dotted path in the file."""

    def __init__(self, out: dict[str, dict[str, Any]]) -> None:
        self.out = out
        self.mapped: list[tuple[str, str]] = []
        self.dropped: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.origin: dict[str, str] = {}

    def put(self, src: str, target: str, value: Any) -> None:
        set_key(self.out, target, value)
        self.mapped.append((src, target))
        self.origin[target] = src

    def drop(self, src: str, why: str) -> None:
        self.dropped.append((src, why))

    def table(self, prefix: str, body: Any, rules: Mapping[str, Any], skip: tuple[str, ...] = ()) -> None:
        if not isinstance(body, dict):
            if body is not None:
                self.drop(prefix, f"{body!r}: expected a table of settings; not read")
            return
        for key, value in body.items():
            src = f"{prefix}.{key}"
            rule = rules.get(key)
            if key in skip:
                continue
            if isinstance(rule, tuple):
                target, convert = rule
                if value is None:
                    self.drop(src, "null: ai-toolkit's default, lorakit's default applies")
                    continue
                try:
                    self.put(src, target, convert(value))
                except (TypeError, ValueError) as exc:
                    self.drop(src, str(exc) if "lorakit" in str(exc) else f"{value!r}: not a valid value ({exc})")
            elif isinstance(rule, str):
                self.drop(src, rule)
            else:
                self.other(src, key, value)

    def other(self, src: str, key: str, value: Any) -> None:
        if key in _DEFAULTS and value == _DEFAULTS[key]:
            self.drop(src, f"{value!r}: ai-toolkit's default, nothing to carry over")
        elif value in (None, False, "", [], {}) or (not isinstance(value, bool) and value == 0):
            self.drop(src, "off or empty: nothing to carry over")
        else:
            self.drop(src, f"{value!r}: no lorakit equivalent")


def _network(net: Any, walk: _Walk, path: Path) -> None:
    if not isinstance(net, dict):
        raise ConfigError(f"{path}: config.process[0].network is missing; lorakit imports LoRA training jobs (network: "
                          "{type: lora, linear: 16, linear_alpha: 16})")
    kind = str(net.get("type", "lora")).lower()
    if kind not in _NETWORKS:
        raise ConfigError(f"{path}: network.type {kind!r} has no lorakit equivalent (lorakit trains lora, locon, "
                          "lokr, loha, dora); change it and import again")
    if kind != "lora":
        walk.put("network.type", "network.type", _NETWORKS[kind])
    elif "type" in net:
        walk.drop("network.type", "'lora': lorakit's default")
    rank = net.get("linear", net.get("rank"))
    alpha = net.get("linear_alpha", net.get("alpha"))
    for key in ("linear", "rank"):
        if key in net:
            (walk.put(f"network.{key}", "network.rank", int(net[key])) if net[key] == rank
             else walk.drop(f"network.{key}", "network.linear is set and wins, as in ai-toolkit"))
    if rank is None:
        set_key(walk.out, "network.rank", 4)
        walk.notes.append("network.linear is not set: ai-toolkit's default rank 4 was written (network.rank = 4)")
    for key in ("linear_alpha", "alpha"):
        if key in net:
            (walk.put(f"network.{key}", "network.alpha", float(net[key])) if net[key] == alpha
             else walk.drop(f"network.{key}", "network.linear_alpha is set and wins, as in ai-toolkit"))
    if alpha is None:
        set_key(walk.out, "network.alpha", 1.0)
        walk.notes.append("network.linear_alpha is not set: ai-toolkit's default alpha 1.0 was written (network.alpha "
                          "= 1.0; the update is scaled by alpha / rank)")
    if net.get("conv"):
        walk.put("network.conv", "network.conv_rank", int(net["conv"]))
        walk.put("network.conv_alpha", "network.conv_alpha", float(net.get("conv_alpha") or net["conv"])) \
            if "conv_alpha" in net else set_key(walk.out, "network.conv_alpha", float(net["conv"]))
    else:
        for key in ("conv", "conv_alpha"):
            if key in net:
                walk.drop(f"network.{key}", "network.conv is not set: no convolution LoRA in ai-toolkit either")
    if kind == "lokr" and "lokr_factor" in net:
        walk.put("network.lokr_factor", "network.factor", int(net["lokr_factor"]))
    elif "lokr_factor" in net:
        walk.drop("network.lokr_factor", f"only for network.type lokr (this is {kind})")
    if "dropout" in net:
        if net["dropout"]:
            walk.put("network.dropout", "network.dropout", float(net["dropout"]))
        else:
            walk.drop("network.dropout", "off or empty: nothing to carry over")
    if kind == "lokr" and net.get("lokr_full_rank", True):  # ai-toolkit's default
        walk.drop("network.lokr_full_rank", "lorakit's LoKr keeps the rank (network.rank) on the smaller factor; "
                                            "ai-toolkit's full-rank LoKr is not available")
    used = {"type", "linear", "rank", "linear_alpha", "alpha", "conv", "conv_alpha", "lokr_factor", "dropout"}
    used |= {"lokr_full_rank"} if kind == "lokr" and net.get("lokr_full_rank", True) else set()
    for key, value in net.items():
        if key not in used:
            walk.other(f"network.{key}", key, value)


def _train(train: Any, walk: _Walk, path: Path) -> None:
    if not isinstance(train, dict):
        walk.notes.append("config.process[0].train is missing: lorakit's defaults apply (ai-toolkit's are 1000 steps "
                          "at lr 1e-6)")
        return
    if train.get("train_unet") is False:
        raise ConfigError(f"{path}: train.train_unet is false (text encoder only): lorakit always trains the "
                          "denoiser's LoRA; remove it and import again")
    if "timestep_type" not in train and walk.out.get("model", {}).get("family") in ("flux1", "flux2"):
        walk.notes.append("train.timestep_type is not set: ai-toolkit then draws FLUX timesteps with 'sigmoid'; "
                          "lorakit's default is training.timestep_sampling = \"flux_shift\" (set \"sigmoid\" to "
                          "match)")
    walk.table("train", train, _TRAIN, skip=("ema_config", "optimizer_params", "text_encoder_lr", "disable_sampling",
                                             "lr", "unet_lr"))
    if train.get("unet_lr") is not None:
        walk.put("train.unet_lr", "optimizer.lr", float(train["unet_lr"]))
        if "lr" in train:
            walk.drop("train.lr", "train.unet_lr is set and wins for the denoiser, as in ai-toolkit")
    elif "lr" in train:
        walk.put("train.lr", "optimizer.lr", float(train["lr"]))
    if "text_encoder_lr" in train:
        if train.get("train_text_encoder") is True:
            walk.put("train.text_encoder_lr", "network.text_encoder_lr", float(train["text_encoder_lr"]))
        else:
            walk.drop("train.text_encoder_lr", "train.train_text_encoder is not true: no text encoder is trained")
    ema = train.get("ema_config")
    if isinstance(ema, dict):
        if "use_ema" in ema:
            walk.put("train.ema_config.use_ema", "training.ema", bool(ema["use_ema"]))
        for key, value in ema.items():
            if key == "ema_decay" and ema.get("use_ema") is True:
                walk.put("train.ema_config.ema_decay", "training.ema_decay", float(value))
            elif key == "ema_decay":
                walk.drop("train.ema_config.ema_decay", "use_ema is not true: no EMA is kept")
            elif key != "use_ema":
                walk.other(f"train.ema_config.{key}", key, value)
    elif "ema_config" in train:
        walk.other("train.ema_config", "ema_config", ema)
    params = train.get("optimizer_params")
    if isinstance(params, dict):
        for key, value in params.items():
            src = f"train.optimizer_params.{key}"
            if key in ("weight_decay", "eps"):
                walk.put(src, f"optimizer.{key}", float(value))
            elif key == "betas" and isinstance(value, (list, tuple)):
                walk.put(src, "optimizer.betas", [float(b) for b in value])
            else:
                walk.other(src, key, value)
    elif "optimizer_params" in train:
        walk.other("train.optimizer_params", "optimizer_params", params)
    if train.get("disable_sampling") is True:
        set_key(walk.out, "sample.at_start", False)
        set_key(walk.out, "sample.every_n_steps", 0)
        walk.mapped.append(("train.disable_sampling", "sample.at_start, sample.every_n_steps"))
        walk.notes.append("train.disable_sampling: lorakit still renders the sample prompts once after training "
                          "(remove them for none)")
    elif "disable_sampling" in train:
        walk.drop("train.disable_sampling", "off or empty: nothing to carry over")


def _sample(sample: Any, walk: _Walk, family: str, trigger: str | None) -> None:
    if not isinstance(sample, dict):
        return
    walk.table("sample", sample, _SAMPLE, skip=("prompts", "samples", "guidance_scale"))
    prompts = [str(p) for p in sample.get("prompts") or [] if p]
    items = sample.get("samples") or []
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("prompt"):
            prompts.append(str(item["prompt"]))
            for key in item:
                if key != "prompt":
                    walk.drop(f"sample.samples[{i}].{key}", "lorakit has one size / seed / guidance for every "
                                                            "preview (sample.width, sample.seed, ...)")
    if trigger:
        prompts = [p.replace("[trigger]", trigger) for p in prompts]
    elif any("[trigger]" in p for p in prompts):
        walk.notes.append("sample prompts hold [trigger] but no trigger_word is set: written as they are")
    for key in ("prompts", "samples"):
        if key in sample:
            (walk.mapped.append((f"sample.{key}", "sample.prompts")) if prompts
             else walk.drop(f"sample.{key}", "off or empty: nothing to carry over"))
    if prompts:
        set_key(walk.out, "sample.prompts", prompts)
    if "guidance_scale" in sample:
        target = "sample.guidance" if family in ("flux1", "flux2") else "sample.cfg_scale"
        walk.put("sample.guidance_scale", target, float(sample["guidance_scale"]))


def _datasets(sets: Any, walk: _Walk, path: Path, toml_path: Path) -> str:
    """ai-toolkit's dataset folders → kohya dataset TOML text (one [[datasets]] per resolution)."""
    if not isinstance(sets, list) or not sets:
        raise ConfigError(f"{path}: config.process[0].datasets is missing or empty; add the image folder "
                          "(datasets: [{folder_path: /path/to/images}]) and import again")
    groups: dict[int, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for i, ds in enumerate(sets):
        src = f"datasets[{i}]"
        if not isinstance(ds, dict) or not ds.get("folder_path"):
            raise ConfigError(f"{path}: {src} has no folder_path; ai-toolkit's dataset_path / other dataset kinds are "
                              "not imported: set folder_path to the image folder")
        subset: dict[str, Any] = {"image_dir": str(Path(str(ds["folder_path"])).expanduser())}
        group: dict[str, Any] = {}
        walk.mapped.append((f"{src}.folder_path", f"{toml_path.name}: image_dir"))
        res = ds.get("resolution", 512)
        sizes = [int(r) for r in (res if isinstance(res, list) else [res])]
        walk.mapped.append((f"{src}.resolution", f"{toml_path.name}: [[datasets]] resolution = "
                                                 f"{', '.join(map(str, sizes))}"))
        for key, value in ds.items():
            ksrc = f"{src}.{key}"
            if key in ("folder_path", "resolution"):
                continue
            if key in _DATASET_KEYS:
                name = _DATASET_KEYS[key]
                if key == "caption_ext":
                    value = str(value) if str(value).startswith(".") else f".{value}"
                if key == "default_caption" and not value:
                    walk.drop(ksrc, "off or empty: nothing to carry over")
                    continue
                subset[name] = value
                walk.mapped.append((ksrc, f"{toml_path.name}: {name}"))
            elif key == "buckets":
                group["enable_bucket"] = bool(value)
                walk.mapped.append((ksrc, f"{toml_path.name}: enable_bucket"))
            elif key == "bucket_tolerance":
                group["bucket_reso_steps"] = int(value)
                walk.mapped.append((ksrc, f"{toml_path.name}: bucket_reso_steps"))
            elif key in _DATASET_BUILT_IN:
                walk.drop(ksrc, _DATASET_BUILT_IN[key])
            elif key == "trigger_word":
                walk.drop(ksrc, "lorakit does not add trigger words to captions; put it in the captions or "
                                "data.caption_prefix")
            else:
                walk.other(ksrc, key, value)
        for size in sizes:
            groups.setdefault(size, []).append((group, subset))
    lines = [f"# the datasets of {path.name}, written by `lorakit import ai-toolkit` (kohya's dataset schema)"]
    for size, members in groups.items():
        lines.append("\n[[datasets]]")
        lines.append(f"resolution = {size}")
        for key, value in members[0][0].items():
            lines.append(f"{key} = {toml_value(value)}")
        if any(group != members[0][0] for group, _ in members):
            walk.notes.append(f"the datasets at resolution {size} differ in buckets / bucket_tolerance, which kohya's "
                              f"dataset TOML sets once per resolution: the first one's ({members[0][0] or 'defaults'}) "
                              "was written")
        for _, subset in members:
            lines.append("\n  [[datasets.subsets]]")
            lines += [f"  {key} = {toml_value(value)}" for key, value in subset.items()]
    set_key(walk.out, "data.config", str(toml_path.resolve()))
    set_key(walk.out, "data.resolution", max(groups))
    return "\n".join(lines) + "\n"


def import_aitoolkit(config: Path, out_path: Path = Path("run.toml"), family: str | None = None) -> ImportResult:
    """`lorakit import ai-toolkit job.yaml -o run.toml`: → {run.toml, run.dataset.toml} and the report."""
    try:
        return _import(Path(config), out_path, family)
    except (TypeError, ValueError, AttributeError) as exc:  # `linear: sixteen`, a list where a table belongs ...
        raise ConfigError(f"{config}: a value of an unexpected type ({exc}); fix it in the YAML and import "
                          "again") from None


def _import(path: Path, out_path: Path, family: str | None) -> ImportResult:
    doc, proc = read_job(path)
    model = proc.get("model") if isinstance(proc.get("model"), dict) else {}
    if not str(model.get("name_or_path") or "").strip():
        raise ConfigError(f"{path}: model.name_or_path is empty; set the base model (a hub id or a file) and import "
                          "again")
    out: dict[str, dict[str, Any]] = {}
    walk = _Walk(out)
    fam, notes = (family, []) if family else aitoolkit_family(model, path)
    walk.notes += notes
    set_key(out, "model.family", fam)
    for key, value in doc.items():
        if key == "job":
            walk.drop("job", f"{value!r}: the kind of ai-toolkit job (a training job is imported)")
        elif key == "meta":
            walk.drop("meta", "ai-toolkit's own metadata; lorakit writes ss_* and modelspec.* metadata itself")
        elif key != "config":
            walk.other(key, key, value)
    for key, value in doc["config"].items():
        if key == "name":
            walk.put("config.name", "save.name", str(value))
        elif key != "process":
            walk.other(f"config.{key}", key, value)
    if len(doc["config"]["process"]) > 1:
        walk.drop("config.process[1:]", "only the first process is imported (one run per run.toml)")
    trigger = proc.get("trigger_word") or None
    toml_path = dataset_path(Path(out_path))
    _network(proc.get("network"), walk, path)
    _train(proc.get("train"), walk, path)
    walk.table("model", model, _MODEL, skip=("qtype",))
    if model.get("quantize") and str(model.get("qtype", "qfloat8")) != "qfloat8":
        walk.drop("model.qtype", f"{model['qtype']!r}: lorakit stores the frozen base in fp8 (e4m3) with "
                                 "memory.fp8_base, not in this type")
    elif "qtype" in model:
        walk.drop("model.qtype", "'qfloat8': lorakit's fp8 storage (memory.fp8_base)")
    walk.table("save", proc.get("save"), _SAVE)
    dataset_text = _datasets(proc.get("datasets"), walk, path, toml_path)
    _sample(proc.get("sample"), walk, fam, trigger)
    walk.table("logging", proc.get("logging"), _LOGGING)
    for key, value in proc.items():
        if key in ("network", "train", "model", "save", "datasets", "sample", "logging"):
            continue
        if key == "type":
            walk.drop("type", f"{value!r}: ai-toolkit's trainer (a LoRA training process)")
        elif key == "training_folder":
            walk.put("training_folder", "save.dir", str(value))
        elif key == "device":
            walk.put("device", "training.device", "cuda" if str(value) == "cuda" else str(value))
        elif key == "trigger_word":
            if value:
                walk.put("trigger_word", "data.trigger", str(value))
                walk.notes.append(f"trigger_word {value!r}: ai-toolkit adds it to captions that lack it; lorakit "
                                  "checks that every caption holds it (lorakit data check) and does not add it. "
                                  "[trigger] in the sample prompts was replaced by it")
            else:
                walk.drop("trigger_word", "off or empty: nothing to carry over")
        elif key in ("performance_log_every", "sqlite_db_path"):
            walk.drop(key, "ai-toolkit's own progress logging; lorakit logs each step's speed in metrics.jsonl")
        else:
            walk.other(key, key, value)
    dropped, more = settle(out, walk.origin, path)
    gone = {src for src, _ in dropped}
    mapped = [(s, t) for s, t in walk.mapped if s not in gone]
    header = f"# imported from {path.name} by `lorakit import ai-toolkit`\n"
    return ImportResult({Path(out_path): render(out, header), toml_path: dataset_text}, mapped,
                        walk.dropped + dropped, walk.notes + more)
