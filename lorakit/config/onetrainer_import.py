"""`lorakit import onetrainer`: a Nerogar/OneTrainer saved config (the JSON its UI saves, or a training preset) →
run.toml + ``<out>.dataset.toml``.

Key names, enums and defaults are OneTrainer's (``modules/util/config/TrainConfig.py``, ``ConceptConfig.py``,
``SampleConfig.py``, ``modules/util/enum/*`` and ``training_presets/*.json``; reference only, no code taken).
OneTrainer's concepts (inline ``concepts``, else the ``concept_file_name`` JSON) are image folders with a
``balancing`` (repeats), so they become a kohya dataset TOML (data.config), one subset per concept. Every key of the
file is reported: mapped, or not carried over with the reason (:mod:`lorakit.config.importing`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from lorakit.config.importing import ImportResult, file_family, render, set_key, settle
from lorakit.config.toml_io import toml_value
from lorakit.errors import ConfigError

_FAMILIES = {"STABLE_DIFFUSION_15": "sd15", "STABLE_DIFFUSION_XL_10_BASE": "sdxl", "FLUX_DEV_1": "flux1",
             "FLUX_2": "flux2", "STABLE_DIFFUSION_3": "sd3", "STABLE_DIFFUSION_35": "sd3", "QWEN": "qwenimage",
             "Z_IMAGE": "zimage"}
_PEFT = {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr"}
_OPTIMIZERS = {"ADAMW": "adamw", "ADAMW_8BIT": "adamw8bit", "PRODIGY": "prodigy", "ADAFACTOR": "adafactor",
               "LION": "lion", "CAME": "came", "SCHEDULE_FREE_ADAMW": "adamw_schedulefree"}
_SCHEDULERS = {"CONSTANT": "constant", "LINEAR": "linear", "COSINE": "cosine"}
_COMPUTE = {"BFLOAT_16": "bf16", "FLOAT_16": "fp16", "FLOAT_32": "no"}
_SAVE_DTYPE = {"BFLOAT_16": "bf16", "FLOAT_16": "fp16", "FLOAT_32": "fp32"}
_TIMESTEPS = {"UNIFORM": "uniform", "SIGMOID": "sigmoid", "LOGIT_NORMAL": "logit_normal"}
_DENOISER = ("unet", "transformer", "prior")
_TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4")
_PLANNED = "placement is planned by lorakit (memory.auto / memory.vram_gb)"
_REASONS = {
    "__version": "the version of OneTrainer's config format", "workspace_dir": "lorakit's run folder is save.dir/name",
    "cache_dir": "lorakit keeps its caches under data.cache_dir (keyed by each image's content)",
    "debug_mode": "no lorakit equivalent", "debug_dir": "no lorakit equivalent",
    "tensorboard": "lorakit writes TensorBoard under the run folder (log.tensorboard)",
    "tensorboard_expose": "run TensorBoard yourself on <run>/tensorboard",
    "tensorboard_always_on": "run TensorBoard yourself on <run>/tensorboard",
    "tensorboard_port": "run TensorBoard yourself on <run>/tensorboard",
    "latent_caching": "lorakit always caches latents", "clear_cache_before_training":
        "lorakit's caches are keyed by content: a changed image or caption is re-encoded",
    "continue_last_backup": "continue a stopped lorakit run with `lorakit train --resume DIR`",
    "backup_after": "lorakit saves resume state with every checkpoint (save.every_n_steps)",
    "backup_after_unit": "lorakit saves resume state with every checkpoint", "rolling_backup": "lorakit saves resume "
    "state with every checkpoint", "rolling_backup_count": "lorakit keeps save.keep_last checkpoints",
    "backup_before_save": "lorakit saves resume state with every checkpoint",
    "dataloader_threads": "lorakit decodes images once into its cache", "temp_device": _PLANNED,
    "async_offloading": _PLANNED, "enable_autocast_cache": _PLANNED, "only_cache": "run `lorakit train` to train",
    "attention_mechanism": "lorakit picks its attention kernel (PyTorch SDPA)",
    "fallback_train_dtype": "training.mixed_precision is the compute precision",
    "lora_weight_dtype": "lorakit keeps the LoRA weights in fp32",
    "samples_to_tensorboard": "lorakit writes previews to <run>/samples",
    "sample_image_format": "lorakit writes previews as PNG", "sample_video_format": "lorakit trains image LoRAs",
    "sample_audio_format": "lorakit trains image LoRAs", "non_ema_sampling": "set sample.use_ema",
    "secrets": "never imported (tokens)", "cloud": "lorakit trains on this machine",
    "huggingface_cache_dir": "lorakit reads the Hugging Face cache (HF_HOME)", "offline_mode": "set HF_HUB_OFFLINE=1",
    "multi_gpu": "run `lorakit train run.toml --gpus N`", "device_indexes": "run `lorakit train run.toml --gpus N`",
    "include_train_config": "lorakit writes the config into the LoRA's metadata itself",
    "prevent_overwrites": "lorakit never overwrites a finished run", "save_filename_prefix": "save.name names the files",
    "optimizer_defaults": "OneTrainer's per-optimizer UI defaults (the chosen optimizer's settings are read)",
    "model_type": "read to choose model.family", "training_method": "a LoRA training (LORA) is imported",
    "peft_type": "read to choose network.type", "concept_file_name": "its concepts are written to the dataset TOML",
    "concepts": "written to the dataset TOML", "sample_definition_file_name": "its prompts are read",
    "samples": "its prompts are read", "learning_rate_cycles": "cycles of OneTrainer's restart schedules; "
    "lorakit's cosine runs one", "learning_rate_min_factor": "set optimizer.min_lr_ratio with cosine_with_min_lr", "train_device": "training.device picks the device (auto: cuda)",
}


def dataset_path(out: Path) -> Path:
    return out.with_name(out.stem + ".dataset.toml")


def _json(path: Path, what: str) -> Any:
    from lorakit.config.importing import read_source

    text = read_source(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); {what}") from None


class _Walk:
    def __init__(self) -> None:
        self.out: dict[str, dict[str, Any]] = {}
        self.mapped: list[tuple[str, str]] = []
        self.dropped: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.origin: dict[str, str] = {}
        self.seen: set[str] = set()

    def put(self, src: str, target: str, value: Any) -> None:
        set_key(self.out, target, value)
        self.mapped.append((src, target))
        self.origin[target] = src
        self.seen.add(src)

    def drop(self, src: str, why: str) -> None:
        self.dropped.append((src, why))
        self.seen.add(src)

    def other(self, src: str, value: Any) -> None:
        if value in (None, False, "", [], {}) or (not isinstance(value, bool) and value == 0):
            self.drop(src, "off or empty: nothing to carry over")
        else:
            self.drop(src, f"{value!r}: no lorakit equivalent")


def read_config(path: Path) -> dict[str, Any]:
    doc = _json(path, "pass the JSON OneTrainer saves (its UI's config save, or a training preset)")
    if not isinstance(doc, dict) or "model_type" not in doc:
        hint = (" (a kohya_ss GUI config? use `lorakit import kohya_ss`)" if isinstance(doc, dict) and
                "LoRA_type" in doc else "")
        raise ConfigError(f"{path}: not a OneTrainer config (no model_type key){hint}; pass the JSON OneTrainer "
                          "saves (its UI's config save, or a training preset)")
    method = str(doc.get("training_method", "FINE_TUNE"))
    if method != "LORA":
        raise ConfigError(f"{path}: training_method is {method!r}; lorakit trains LoRAs: choose LoRA in OneTrainer "
                          "(training_method = \"LORA\") and import again")
    return doc


def _family(doc: Mapping[str, Any], path: Path, family: str | None, walk: _Walk) -> str:
    kind = str(doc["model_type"])
    if family:
        return family
    if kind not in _FAMILIES:
        raise ConfigError(f"{path}: model_type {kind!r} has no lorakit family (lorakit trains "
                          f"{', '.join(_FAMILIES)} in OneTrainer's names); pass --family if the model is one of those")
    named = _FAMILIES[kind]
    header = file_family(doc.get("base_model_name"))
    if header and header != named:
        walk.notes.append(f"model_type says {named}, but {doc.get('base_model_name')} is a {header} checkpoint (its "
                          f"header): model.family = {header!r} was written")
        return header
    return named


def _optimizer(opt: Any, walk: _Walk, path: Path) -> None:
    if not isinstance(opt, dict):
        return
    name = str(opt.get("optimizer", "ADAMW"))
    if name in _OPTIMIZERS:
        walk.put("optimizer.optimizer", "optimizer.name", _OPTIMIZERS[name])
    else:
        walk.drop("optimizer.optimizer", f"{name!r}: lorakit has no such optimizer (it has "
                                         f"{', '.join(sorted(set(_OPTIMIZERS.values())))})")
    betas = [opt.get("beta1"), opt.get("beta2")]
    if all(isinstance(b, (int, float)) for b in betas):
        walk.put("optimizer.beta1", "optimizer.betas", [float(b) for b in betas])
        walk.mapped.append(("optimizer.beta2", "optimizer.betas"))
        walk.seen.add("optimizer.beta2")
    for key, value in opt.items():
        src = f"optimizer.{key}"
        if src in walk.seen or key == "optimizer":
            continue
        if key in ("weight_decay", "eps") and isinstance(value, (int, float)) and not isinstance(value, bool):
            walk.put(src, f"optimizer.{key}", float(value))
        elif key in ("relative_step", "scale_parameter", "warmup_init") and value is False and name == "ADAFACTOR":
            walk.drop(src, "False: lorakit's adafactor always runs so")
        elif value is None:
            walk.drop(src, "unset: the optimizer's default applies")
        else:
            walk.other(src, value)


def _parts(doc: Mapping[str, Any], fam: str, walk: _Walk) -> None:
    for part in _DENOISER:
        body = doc.get(part)
        if not isinstance(body, dict):
            continue
        main = part == ("unet" if fam in ("sd15", "sdxl") else "transformer")
        for key, value in body.items():
            src = f"{part}.{key}"
            if not main:
                walk.drop(src, f"{fam} has no {part} (OneTrainer keeps the section for every model)")
            elif key == "learning_rate" and value is not None:
                walk.put(src, "optimizer.lr", float(value))
            elif key == "gradient_checkpointing":
                walk.put(src, "memory.gradient_checkpointing", value not in (False, "OFF", "NONE"))
            elif key == "weight_dtype" and value == "FLOAT_8":
                walk.put(src, "memory.fp8_base", True)
            elif key == "weight_dtype":
                walk.drop(src, f"{value!r}: lorakit stores the frozen base in bf16, or fp8 with memory.fp8_base")
            elif key == "train" and value is True:
                walk.drop(src, "lorakit always trains the denoiser's LoRA")
            else:
                walk.other(src, value)
    te_trained = False
    for part in _TEXT_ENCODERS + ("vae", "effnet_encoder", "decoder", "decoder_text_encoder", "decoder_vqgan",
                                  "unconditional_transformer", "quantization"):
        body = doc.get(part)
        if not isinstance(body, dict):
            continue
        for key, value in body.items():
            src = f"{part}.{key}"
            if part in _TEXT_ENCODERS and key == "train" and value is True and fam in ("sd15", "sdxl", "flux1", "sd3"):
                te_trained = True
                walk.put(src, "network.train_text_encoder", True)
            elif part in _TEXT_ENCODERS and key == "learning_rate" and value is not None:
                walk.put(src, "network.text_encoder_lr", float(value))
            elif part in _TEXT_ENCODERS and key == "train":
                walk.drop(src, "not trained" if value is False else f"lorakit trains no text encoder of {fam}")
            elif key == "weight_dtype":
                walk.drop(src, f"{value!r}: lorakit picks the dtype of the frozen encoders")
            else:
                walk.other(src, value)
    if not te_trained:
        set_key(walk.out, "network.train_text_encoder", False)


def _units(doc: Mapping[str, Any], walk: _Walk, key: str, unit_key: str, steps: str, epochs: str | None) -> None:
    value, unit = doc.get(key), str(doc.get(unit_key, "NEVER"))
    if key not in doc and unit_key not in doc:
        return
    if unit == "STEP" and isinstance(value, int):
        walk.put(key, steps, value)
    elif unit == "EPOCH" and epochs and isinstance(value, int):
        walk.put(key, epochs, value)
    elif unit == "NEVER":
        walk.put(key, steps, 0)
    else:
        walk.drop(key, f"every {value} {unit.lower()}(s): lorakit counts in steps" + (" or epochs" if epochs else ""))
    if unit_key in doc:
        used = [t for s, t in walk.mapped if s == key]
        walk.mapped.append((unit_key, used[0])) if used else walk.drop(unit_key, "read with " + key)
        walk.seen.add(unit_key)


def _concepts(doc: Mapping[str, Any], path: Path, walk: _Walk, toml_path: Path) -> str:
    concepts = doc.get("concepts")
    where = "concepts"
    if not concepts:
        name = str(doc.get("concept_file_name") or "")
        file = next((p for p in (Path(name), path.parent / name) if name and p.is_file()), None)
        if file is None:
            raise ConfigError(f"{path}: no concepts, and the concept file {name or '(none)'!r} is not found; save "
                              "the config from OneTrainer with its concepts, or put concepts.json where it names")
        concepts, where = _json(file, "pass OneTrainer's concepts JSON"), file.name
    if not isinstance(concepts, list):
        raise ConfigError(f"{path}: {where} is not a list of concepts")
    lines = [f"# the concepts of {path.name}, written by `lorakit import onetrainer` (kohya's dataset schema)",
             "\n[[datasets]]"]
    count = 0
    for i, c in enumerate(concepts):
        src = f"{where}[{i}]"
        if not isinstance(c, dict) or not c.get("path"):
            raise ConfigError(f"{path}: {src} has no path; set the concept's image folder in OneTrainer")
        if c.get("enabled") is False or str(c.get("type", "STANDARD")) != "STANDARD":
            walk.drop(src, "disabled" if c.get("enabled") is False else f"type {c.get('type')!r}: lorakit imports "
                      "training concepts (STANDARD) only; set validation.* / data.validation_dir by hand")
            continue
        text = c.get("text") if isinstance(c.get("text"), dict) else {}
        source = str(text.get("prompt_source", "sample"))
        if source != "sample":
            raise ConfigError(f"{path}: {src}.text.prompt_source is {source!r}; lorakit reads one caption file per "
                              "image (OneTrainer's 'sample'): write <image>.txt captions and import again")
        subset: dict[str, Any] = {"image_dir": str(Path(str(c["path"])).expanduser()), "caption_extension": ".txt"}
        balancing, strategy = c.get("balancing", 1.0), str(c.get("balancing_strategy", "REPEATS"))
        if strategy == "REPEATS" and float(balancing).is_integer():
            subset["num_repeats"] = int(balancing)
        else:
            subset["num_repeats"] = max(1, round(float(balancing)))
            walk.notes.append(f"{src}: balancing {balancing} ({strategy}) was written as num_repeats = "
                              f"{subset['num_repeats']} (lorakit repeats whole images)")
        if text.get("enable_tag_shuffling"):
            subset["shuffle_caption"] = True
            subset["keep_tokens"] = int(text.get("keep_tags_count", 1))
            subset["caption_separator"] = str(text.get("tag_delimiter", ","))
        if text.get("tag_dropout_enable") and float(text.get("tag_dropout_probability") or 0) > 0:
            subset["caption_tag_dropout_rate"] = float(text["tag_dropout_probability"])
        image = c.get("image") if isinstance(c.get("image"), dict) else {}
        if image.get("enable_random_flip"):
            subset["flip_aug"] = True
        walk.mapped.append((src, f"{toml_path.name}: [[datasets.subsets]] {', '.join(subset)}"))
        for key, value in c.items():
            if key in ("path", "balancing", "balancing_strategy", "text", "image", "enabled", "type", "name",
                       "seed", "concept_stats", "image_variations", "text_variations"):
                continue
            if key == "loss_weight" and value != 1.0 or key == "include_subdirectories" and value is True:
                walk.drop(f"{src}.{key}", f"{value!r}: no lorakit equivalent")
        for part, body in (("text", text), ("image", image)):
            for key, value in body.items():
                if key in ("prompt_source", "enable_tag_shuffling", "keep_tags_count", "tag_delimiter",
                           "tag_dropout_enable", "tag_dropout_probability", "enable_random_flip", "prompt_path"):
                    continue
                if value not in (None, False, "", 0, 0.0, "FULL", "NONE") and key not in ("enable_crop_jitter",
                                                                                         "resolution_override"):
                    walk.drop(f"{src}.{part}.{key}", f"{value!r}: no lorakit equivalent")
        lines.append("\n  [[datasets.subsets]]")
        lines += [f"  {k} = {toml_value(v)}" for k, v in subset.items()]
        count += 1
    if not count:
        raise ConfigError(f"{path}: no enabled training concept; enable one in OneTrainer and import again")
    set_key(walk.out, "data.config", str(toml_path.resolve()))
    return "\n".join(lines) + "\n"


def _samples(doc: Mapping[str, Any], path: Path, walk: _Walk) -> None:
    samples = doc.get("samples")
    name = str(doc.get("sample_definition_file_name") or "")
    if not samples and name:
        file = next((p for p in (Path(name), path.parent / name) if p.is_file()), None)
        samples = _json(file, "pass OneTrainer's samples JSON") if file else None
        if file is None:
            walk.notes.append(f"sample_definition_file_name {name!r} is not found here: no sample prompts imported")
    prompts = [str(s["prompt"]) for s in samples or [] if isinstance(s, dict) and s.get("prompt")
               and s.get("enabled", True) is not False]
    if prompts:
        set_key(walk.out, "sample.prompts", prompts)
        walk.mapped.append(("samples" if doc.get("samples") else "sample_definition_file_name", "sample.prompts"))
        walk.seen.add(walk.mapped[-1][0])
        walk.notes.append(f"{len(prompts)} sample prompt(s) imported; their own size / seed / steps are not "
                          "(lorakit has one sample.width / seed / steps for every preview)")


def import_onetrainer(config: Path, out_path: Path = Path("run.toml"), family: str | None = None) -> ImportResult:
    """`lorakit import onetrainer config.json -o run.toml`: → {run.toml, run.dataset.toml} and the report."""
    try:
        return _import(Path(config), Path(out_path), family)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{config}: a value of an unexpected type ({exc}); fix it in OneTrainer and import "
                          "again") from None


def _import(path: Path, out_path: Path, family: str | None) -> ImportResult:
    doc = read_config(path)
    walk = _Walk()
    fam = _family(doc, path, family, walk)
    set_key(walk.out, "model.family", fam)
    peft = str(doc.get("peft_type", "LORA"))
    if peft not in _PEFT:
        raise ConfigError(f"{path}: peft_type {peft!r} has no lorakit equivalent (lorakit trains LORA, LOHA, LOKR); "
                          "change it in OneTrainer and import again")
    if not str(doc.get("base_model_name") or "").strip():
        raise ConfigError(f"{path}: base_model_name is empty; choose the base model in OneTrainer and import again")
    kind = "dora" if doc.get("lora_decompose") is True and peft == "LORA" else _PEFT[peft]
    if kind != "lora":
        walk.put("peft_type" if kind != "dora" else "lora_decompose", "network.type", kind)
    toml_path = dataset_path(out_path)
    dataset_text = _concepts(doc, path, walk, toml_path)
    _samples(doc, path, walk)
    _optimizer(doc.get("optimizer"), walk, path)
    walk.seen.add("optimizer")
    _parts(doc, fam, walk)
    _units(doc, walk, "save_every", "save_every_unit", "save.every_n_steps", "save.every_n_epochs")
    _units(doc, walk, "sample_after", "sample_after_unit", "sample.every_n_steps", None)
    _simple(doc, fam, walk)
    for key, value in doc.items():
        if key in walk.seen or any(s.startswith(f"{key}.") for s in walk.seen):
            continue
        if key in _REASONS:
            walk.drop(key, _REASONS[key])
        else:
            walk.other(key, value)
    dropped, more = settle(walk.out, walk.origin, path)
    gone = {s for s, _ in dropped}
    header = f"# imported from {path.name} by `lorakit import onetrainer`\n"
    return ImportResult({out_path: render(walk.out, header), toml_path: dataset_text},
                        [(s, t) for s, t in walk.mapped if s not in gone], walk.dropped + dropped, walk.notes + more)


def _simple(doc: Mapping[str, Any], fam: str, walk: _Walk) -> None:
    """The top-level keys with one lorakit key each."""
    get = doc.get
    walk.put("base_model_name", "model.checkpoint", str(get("base_model_name")))
    if "learning_rate" in doc and "lr" not in walk.out.get("optimizer", {}):
        walk.put("learning_rate", "optimizer.lr", float(get("learning_rate")))
    elif "learning_rate" in doc:
        walk.drop("learning_rate", "the denoiser's own learning_rate is set and wins, as in OneTrainer")
    for key, target, convert in (("epochs", "training.max_epochs", int), ("batch_size", "training.batch_size", int),
                                 ("gradient_accumulation_steps", "training.gradient_accumulation", int),
                                 ("lora_rank", "network.rank", int), ("lora_alpha", "network.alpha", float),
                                 ("aspect_ratio_bucketing", "data.enable_bucket", bool),
                                 ("ema_decay", "training.ema_decay", float), ("compile", "memory.compile", bool)):
        if key in doc and not (key == "ema_decay" and get("ema", "OFF") == "OFF"):
            walk.put(key, target, convert(get(key)))
    if "lora_rank" not in doc:
        walk.put("lora_rank (not set)", "network.rank", 16)
        walk.notes.append("lora_rank is not set: OneTrainer's default 16 was written (network.rank = 16)")
    if "lora_alpha" not in doc:
        walk.put("lora_alpha (not set)", "network.alpha", 1.0)
        walk.notes.append("lora_alpha is not set: OneTrainer's default 1.0 was written (network.alpha = 1.0)")
    if "epochs" not in doc:
        walk.put("epochs (not set)", "training.max_epochs", 100)
        walk.notes.append("epochs is not set: OneTrainer's default 100 was written (training.max_epochs = 100)")
    if "ema" in doc:
        (walk.put("ema", "training.ema", True) if get("ema") != "OFF" else walk.drop("ema", "'OFF': no EMA"))
    if "ema_decay" in doc and get("ema", "OFF") == "OFF":
        walk.drop("ema_decay", "ema is OFF: no EMA is kept")
    for key, table, target, what in (("learning_rate_scheduler", _SCHEDULERS, "optimizer.scheduler", "schedule"),
                                     ("train_dtype", _COMPUTE, "training.mixed_precision", "compute dtype"),
                                     ("output_dtype", _SAVE_DTYPE, "save.precision", "save dtype")):
        if key in doc:
            value = str(get(key))
            (walk.put(key, target, table[value]) if value in table else
             walk.drop(key, f"{value!r}: lorakit has no such {what} (it has {', '.join(table)})"))
    warmup = get("learning_rate_warmup_steps")
    if warmup is not None and float(warmup) >= 1 and float(warmup).is_integer():
        walk.put("learning_rate_warmup_steps", "optimizer.warmup_steps", int(warmup))
    elif "learning_rate_warmup_steps" in doc:
        walk.drop("learning_rate_warmup_steps", f"{warmup!r}: a fraction of the run; set optimizer.warmup_steps "
                                                "in steps" if warmup else "off or empty: nothing to carry over")
    if "clip_grad_norm" in doc:
        walk.put("clip_grad_norm", "optimizer.max_grad_norm", float(get("clip_grad_norm") or 0.0))
    if "resolution" in doc:
        res = str(get("resolution")).replace(" ", "")
        if res.isdigit():
            walk.put("resolution", "data.resolution", int(res))
        elif "x" in res and all(p.isdigit() for p in res.split("x")):
            w, h = res.split("x")
            walk.put("resolution", "data.resolution", [int(w), int(h)])
        else:
            walk.drop("resolution", f"{res!r}: several resolutions; lorakit trains one (data.resolution)")
    dest = str(get("output_model_destination") or "")
    if dest:
        walk.put("output_model_destination", "save.dir", str(Path(dest).parent))
        walk.mapped.append(("output_model_destination", "save.name"))
        set_key(walk.out, "save.name", Path(dest).stem)
    fmt = str(get("output_model_format", ""))
    if fmt:
        (walk.put("output_model_format", "save.format", "diffusers") if fmt == "DIFFUSERS_LORA" else
         walk.drop("output_model_format", f"{fmt!r}: lorakit writes the kohya layout (ComfyUI, A1111, Forge read it)"
                   if fmt in ("SAFETENSORS", "KOHYA_LORA", "COMFY_LORA", "LEGACY_LORA", "ORIGINAL_LORA") else
                   f"{fmt!r}: lorakit writes kohya or diffusers LoRAs (save.format)"))
    if get("dynamic_timestep_shifting") is True:
        walk.put("dynamic_timestep_shifting", "training.timestep_sampling", "flux_shift")
        if "timestep_distribution" in doc:
            walk.drop("timestep_distribution", "dynamic_timestep_shifting is on: lorakit's flux_shift (a sigmoid "
                                               "sample shifted by the image size) is the family's own")
    elif "timestep_distribution" in doc:
        value = str(get("timestep_distribution"))
        (walk.put("timestep_distribution", "training.timestep_sampling", _TIMESTEPS[value]) if value in _TIMESTEPS
         else walk.drop("timestep_distribution", f"{value!r}: lorakit has uniform, sigmoid, logit_normal, shift and "
                                                 "flux_shift"))
    if "dynamic_timestep_shifting" in doc and get("dynamic_timestep_shifting") is not True:
        walk.drop("dynamic_timestep_shifting", "off or empty: nothing to carry over")
    for key, target in (("offset_noise_weight", "training.noise_offset"),
                        ("perturbation_noise_weight", "training.ip_noise_gamma"),
                        ("dropout_probability", "network.dropout")):
        if get(key):
            walk.put(key, target, float(get(key)))
    losses = {k: float(get(k) or 0) for k in ("mse_strength", "mae_strength", "huber_strength", "log_cosh_strength")
              if k in doc}
    on = [k for k, v in losses.items() if v]
    walk.seen.update(on)
    if len(on) == 1 and on[0] != "log_cosh_strength" and losses[on[0]] == 1.0:
        walk.put(on[0], "training.loss", {"mse_strength": "l2", "mae_strength": "l1", "huber_strength": "huber"}[on[0]])
    elif on:
        walk.drop(", ".join(on), "a mix or scale of losses: lorakit trains one loss (training.loss)")
