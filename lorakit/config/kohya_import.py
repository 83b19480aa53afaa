"""Import a kohya sd-scripts training config (``--config_file`` TOML or an args dict) into lorakit's shape.

sd-scripts flattens every table of its config file into one namespace of command-line option names; this
module maps the options lorakit has an equivalent for onto ``section.key`` and reports every other option
by name (never silently dropped) so the user can see what did not carry over. The result is a plain dict
for :func:`lorakit.config.load.load_config` (``data=``), which then validates it like any other config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from lorakit.config.toml_io import read_toml
from lorakit.errors import ConfigError

_SAME = lambda v: v  # noqa: E731

_OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "prodigy": "prodigy", "adafactor": "adafactor",
               "bitsandbytes.optim.adamw8bit": "adamw8bit", "prodigyopt.prodigy": "prodigy"}
_SCHEDULERS = {"constant": "constant", "constant_with_warmup": "constant", "linear": "linear", "cosine": "cosine",
               "cosine_with_min_lr": "cosine_with_min_lr", "cosine_with_restarts": "cosine_with_restarts"}
_PRECISION = {"fp16": "fp16", "bf16": "bf16", "float": "fp32", "fp32": "fp32"}


def _resolution(v: Any) -> Any:
    """kohya writes ``"1024"`` or ``"832,1216"``; lorakit wants 1024 or [832, 1216]."""
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",")]
        if all(p.isdigit() for p in parts) and len(parts) in (1, 2):
            nums = [int(p) for p in parts]
            return nums[0] if len(nums) == 1 or nums[0] == nums[1] else nums
    return v


def _lookup(table: Mapping[str, str]) -> Callable[[Any], Any]:
    return lambda v: table.get(v.lower(), v) if isinstance(v, str) else v


# kohya option → (lorakit key, value conversion)
KOHYA_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "pretrained_model_name_or_path": ("model.checkpoint", _SAME),
    "vae": ("model.vae", _SAME), "clip_l": ("model.clip_l", _SAME), "t5xxl": ("model.t5xxl", _SAME),
    "ae": ("model.ae", _SAME), "clip_g": ("model.clip_g", _SAME),
    "train_data_dir": ("data.dir", _SAME), "dataset_config": ("data.config", _SAME),
    "reg_data_dir": ("data.reg_dir", _SAME), "prior_loss_weight": ("data.prior_loss_weight", _SAME),
    "resolution": ("data.resolution", _resolution),
    **{k: (f"data.{k}", _SAME) for k in (
        "caption_extension", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
        "bucket_no_upscale", "shuffle_caption", "caption_separator", "keep_tokens", "caption_prefix",
        "caption_suffix", "caption_dropout_rate", "caption_tag_dropout_rate", "flip_aug")},
    "network_dim": ("network.rank", _SAME), "network_alpha": ("network.alpha", _SAME),
    "network_dropout": ("network.dropout", _SAME),
    "network_train_unet_only": ("network.train_text_encoder", lambda v: (not v) if isinstance(v, bool) else v),
    "text_encoder_lr": ("network.text_encoder_lr", lambda v: v[0] if isinstance(v, list) and v else v),
    "learning_rate": ("optimizer.lr", _SAME), "unet_lr": ("optimizer.lr", _SAME),
    "optimizer_type": ("optimizer.name", _lookup(_OPTIMIZERS)),
    "lr_scheduler": ("optimizer.scheduler", _lookup(_SCHEDULERS)),
    "lr_warmup_steps": ("optimizer.warmup_steps", _SAME), "max_grad_norm": ("optimizer.max_grad_norm", _SAME),
    "max_train_steps": ("training.max_steps", _SAME), "max_train_epochs": ("training.max_epochs", _SAME),
    "save_every_n_epochs": ("save.every_n_epochs", _SAME), "network_weights": ("network.weights", _SAME),
    "max_token_length": ("data.max_token_length", _SAME), "alpha_mask": ("data.alpha_mask", _SAME), "conditioning_data_dir": ("data.mask_dir", _SAME), "train_batch_size": ("training.batch_size", _SAME),
    "gradient_accumulation_steps": ("training.gradient_accumulation", _SAME), "seed": ("training.seed", _SAME),
    "mixed_precision": ("training.mixed_precision", _SAME),
    "v_parameterization": ("training.prediction", lambda v: "v_prediction" if v is True else "epsilon"),
    **{k: (f"training.{k}", _SAME) for k in (
        "min_timestep", "max_timestep", "noise_offset", "min_snr_gamma", "huber_c", "timestep_sampling",
        "sigmoid_scale", "discrete_flow_shift", "guidance_scale", "apply_t5_attn_mask",
        "multires_noise_iterations", "multires_noise_discount", "ip_noise_gamma", "debiased_estimation_loss")},
    "t5xxl_max_token_length": ("training.t5_max_length", _SAME),
    "loss_type": ("training.loss", _SAME),
    "gradient_checkpointing": ("memory.gradient_checkpointing", _SAME), "fp8_base": ("memory.fp8_base", _SAME),
    "blocks_to_swap": ("memory.blocks_to_swap", _SAME), "cache_latents": ("memory.cache_latents", _SAME),
    "cache_text_encoder_outputs": ("memory.cache_text_encoder_outputs", _SAME),
    "fused_backward_pass": ("memory.fused_backward", _SAME),
    "sample_every_n_steps": ("sample.every_n_steps", _SAME), "sample_prompts": ("sample.prompts_file", _SAME),
    "sample_at_first": ("sample.at_start", _SAME),
    "output_dir": ("save.dir", _SAME), "output_name": ("save.name", _SAME),
    "save_every_n_steps": ("save.every_n_steps", _SAME),
    "save_precision": ("save.precision", _lookup(_PRECISION)), "training_comment": ("save.comment", _SAME),
}
# Options that need no equivalent because lorakit always behaves that way.
_BUILT_IN = frozenset({"cache_latents_to_disk", "cache_text_encoder_outputs_to_disk", "save_model_as",
                       "sdpa", "xformers", "persistent_data_loader_workers", "max_data_loader_n_workers"})


def kohya_family(args: Mapping[str, Any]) -> str | None:
    """The family whose ``ModelSpec.network_module`` is the config's ``network_module`` (sd-scripts' own module
    names: ``networks.lora_flux``, ``networks.lora``), asked of the installed family packages."""
    from lorakit.models.registry import families, get_family

    module = str(args.get("network_module", ""))
    found = [name for name in families() if get_family(name).SPEC.network_module == module]
    return found[0] if len(found) == 1 else _one_of(found, args)


def _one_of(found: list[str], args: Mapping[str, Any]) -> str | None:
    """Families sharing a network module (sd-scripts' ``networks.lora`` trains SD 1.x and SDXL): the one the base
    model file is (its header), else the one kohya_ss's ``sdxl`` flag or the file's name says; None when nothing
    tells (the caller asks for --family)."""
    from lorakit.config.importing import file_family

    model = str(args.get("pretrained_model_name_or_path", ""))
    named = file_family(model, found)
    if named:
        return named
    if "sdxl" in args and "sdxl" in found and "sd15" in found:
        return "sdxl" if args["sdxl"] in (True, "true", "True", 1) else "sd15"
    stem = Path(model).name.lower().replace("-", "").replace("_", "").replace(" ", "")
    hits = [f for f, marks in (("sdxl", ("sdxl", "xl")), ("sd15", ("v15", "sd15", "v1", "1.5"))) if f in found
            and any(m in stem for m in marks)]
    return hits[0] if len(hits) == 1 else None


def flatten_kohya(raw: Mapping[str, Any]) -> dict[str, Any]:
    """sd-scripts ignores table names in its config file: flatten them into one option namespace."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(flatten_kohya(value))
        else:
            flat[str(key)] = value
    return flat


def import_kohya_args(args: Mapping[str, Any], family: str | None = None, bucket_default: bool = True
                      ) -> tuple[dict[str, Any], list[str]]:
    """kohya options → (lorakit config dict, names of options that were not carried over); ``bucket_default``:
    write sd-scripts' enable_bucket = false when the options leave it out (musubi-tuner sets it in its dataset
    TOML only)."""
    out: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    fam = family or kohya_family(args)
    if fam:
        out["model"] = {"family": fam}
    for key, value in args.items():
        if value == "" and key in KOHYA_KEYS:  # kohya_ss writes unset paths as "": sd-scripts reads them as unset
            skipped.append(key)
        elif key in KOHYA_KEYS:
            target, convert = KOHYA_KEYS[key]
            section, name = target.split(".")
            out.setdefault(section, {})[name] = convert(value)
        elif key not in _BUILT_IN and key != "network_module":
            skipped.append(key)
    _text_encoder(args, out, skipped, fam)
    _unet_lr_wins(args, out, skipped)
    for epochs, steps in (("max_train_epochs", "max_train_steps"), ("save_every_n_epochs", "save_every_n_steps")):
        if args.get(epochs) and steps in args:  # issue 23: epochs win, as in sd-scripts
            target = KOHYA_KEYS[steps][0].split(".")
            out[target[0]].pop(target[1], None)
            skipped.append(steps)
    d = out.get("data", {})  # walk7o: an inert keep_tokens is not carried over (lorakit refuses it)
    if d.get("keep_tokens") and not (d.get("shuffle_caption") or d.get("caption_tag_dropout_rate") or d.get("config")):
        d.pop("keep_tokens")
        skipped.append("keep_tokens")
    _restarts(args, out, skipped)
    if str(args.get("lr_scheduler") or "constant").lower() == "constant" and args.get("lr_warmup_steps") not in (
            None, "", 0):   # sd-scripts refuses it ("constant does not require num_warmup_steps"), as kohya_ss's import
        out["optimizer"].pop("warmup_steps", None)
        skipped.append("lr_warmup_steps")
    if "enable_bucket" not in args and bucket_default:  # sd-scripts' default is off: every image cropped to the resolution
        out.setdefault("data", {})["enable_bucket"] = False
    if args.get("fused_backward_pass"):
        # sd-scripts clips each gradient on its own under fused_backward_pass; lorakit offers no per-tensor
        # clipping there (global clipping needs every gradient at once), so clipping does not carry over
        if float(out.get("optimizer", {}).get("max_grad_norm", 1.0) or 0) > 0 and "max_grad_norm" in args:
            skipped.append("max_grad_norm")
        out.setdefault("optimizer", {})["max_grad_norm"] = 0.0
    return out, sorted(skipped)


def _restarts(args: Mapping[str, Any], out: dict[str, dict[str, Any]], skipped: list[str]) -> None:
    """sd-scripts' cosine_with_restarts (diffusers' hard restarts): lr_scheduler_num_cycles is carried over as
    optimizer.num_cycles; with one cycle (unset or 1, its default) it is one cosine decay, imported as "cosine".
    With another schedule sd-scripts does not read lr_scheduler_num_cycles: it stays dropped."""
    if str(args.get("lr_scheduler", "")).lower() != "cosine_with_restarts":
        return
    cycles = args.get("lr_scheduler_num_cycles", 1)
    if cycles in (None, "", 1):
        out["optimizer"]["scheduler"] = "cosine"
    else:
        out["optimizer"]["num_cycles"] = cycles   # a bad value is refused by the validation, naming the key
    if "lr_scheduler_num_cycles" in args:
        skipped.remove("lr_scheduler_num_cycles")


SD_SCRIPTS_DEFAULT_LR = 2e-6   # sd-scripts' --learning_rate default (library/train_util.py)


def _text_encoder(args: Mapping[str, Any], out: dict[str, dict[str, Any]], skipped: list[str], fam: str | None) -> None:
    """sd-scripts trains the text-encoder LoRA unless network_train_unet_only is set (train_network.py:
    ``is_train_text_encoder = not args.network_train_unet_only``; FLUX.1 its CLIP-L, SD3 its CLIPs), at
    text_encoder_lr, else learning_rate (whose default is 2e-6). Imported the same way where the family offers a
    text-encoder LoRA; a text_encoder_lr of 0 trains none there (sd-scripts skips a group whose lr is 0)."""
    from lorakit.config import families

    if not _set(args.get("network_train_unet_only")) and fam and families.text_encoder_lora(fam):
        out.setdefault("network", {})["train_text_encoder"] = True
    net = out.get("network", {})
    if not net.get("train_text_encoder"):
        return
    te_lr = args.get("text_encoder_lr")
    if te_lr == 0 or (isinstance(te_lr, list) and te_lr and all(v == 0 for v in te_lr)):
        net["train_text_encoder"] = False
        net.pop("text_encoder_lr", None)
        skipped.append("text_encoder_lr")
        return
    if not _set(te_lr) and _set(args.get("unet_lr")) and not _set(args.get("learning_rate")):
        net["text_encoder_lr"] = SD_SCRIPTS_DEFAULT_LR
    if out.get("memory", {}).get("cache_text_encoder_outputs"):
        out["memory"].pop("cache_text_encoder_outputs")
        skipped.append("cache_text_encoder_outputs")


def _set(value: Any) -> bool:
    return value not in (None, "")


def _unet_lr_wins(args: Mapping[str, Any], out: dict[str, dict[str, Any]], skipped: list[str]) -> None:
    """sd-scripts trains the denoiser at unet_lr whenever it is set, whatever the order of the keys; learning_rate
    then only reaches the text encoders (when text_encoder_lr is not given)."""
    if not (_set(args.get("unet_lr")) and _set(args.get("learning_rate"))):
        return
    out["optimizer"]["lr"] = args["unet_lr"]
    te_trained = out.get("network", {}).get("train_text_encoder") is True
    if te_trained and not _set(args.get("text_encoder_lr")) and args["learning_rate"] != args["unet_lr"]:
        out.setdefault("network", {})["text_encoder_lr"] = args["learning_rate"]
    else:
        skipped.append("learning_rate")


def _target(key: str, args: Mapping[str, Any]) -> str:
    """The lorakit key a carried-over kohya option landed on (learning_rate moves aside for unet_lr)."""
    if key == "learning_rate" and _set(args.get("unet_lr")):
        return "network.text_encoder_lr"
    return KOHYA_KEYS[key][0]


def import_kohya_toml(path: str | Path, family: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Read a kohya ``--config_file`` TOML; see :func:`import_kohya_args`."""
    raw = read_toml(Path(path), str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table of kohya options")
    return import_kohya_args(flatten_kohya(raw), family)


# why an sd-scripts option has no lorakit key (anything not listed: "no lorakit equivalent")
_DROP_REASONS = {
    "network_module": "read to choose model.family",
    "sdxl": "read to choose model.family (kohya_ss's SDXL flag)",
    "network_args": "kohya network_args are not imported one by one; set network.* keys (conv_rank, train_blocks, "
                    "module_ranks) by hand",
    "save_state": "lorakit always saves resume state",
    "logging_dir": "metrics and TensorBoard logs go to the run folder",
    "log_with": "lorakit writes metrics.jsonl and TensorBoard (log.tensorboard)",
    "highvram": "placement is planned by memory.vram_gb",
    "lowram": "placement is planned by memory.vram_gb",
    "masked_loss": "lorakit masks the loss whenever data.alpha_mask or data.mask_dir is set",
    "max_train_steps": "max_train_epochs is set too: sd-scripts lets the epochs win, and so does lorakit",
    "save_every_n_steps": "save_every_n_epochs is set too: lorakit takes one of them (the epochs)",
    "sample_every_n_epochs": "lorakit counts in steps (sample.every_n_steps)",
    "sample_sampler": "set sample.sampler (euler, dpmpp_2m)",
    "max_grad_norm": "not carried over with fused_backward_pass (no global clipping there)",
    "learning_rate": "unet_lr is set and wins for the denoiser, as in sd-scripts (optimizer.lr = unet_lr)",
    "lr_warmup_steps": "lr_scheduler is constant (sd-scripts' default), which sd-scripts refuses with a warmup "
                       "(\"constant does not require num_warmup_steps\"); for a warmup, import lr_scheduler = "
                       "\"constant_with_warmup\"",
    "lr_scheduler_num_cycles": "sd-scripts reads it only with lr_scheduler = \"cosine_with_restarts\" "
                               "(optimizer.num_cycles there)",
    "text_encoder_lr": "0: sd-scripts trains no text-encoder LoRA then, so network.train_text_encoder = false",
    "cache_text_encoder_outputs": "the text-encoder LoRA trains, so its outputs change every step: lorakit keeps the "
                                  "text encoders loaded (set network_train_unet_only = true to cache them)",
    "model_prediction_type": "lorakit's FLUX.1 objective uses the model's raw prediction (sd-scripts' 'raw', which "
                             "FluxGym passes); 'additive' and 'sigma_scaled' are not offered",
    "keep_tokens": "has no effect without shuffle_caption or caption_tag_dropout_rate (sd-scripts ignores it too)",
}

def _text_encoder_notes(flat: Mapping[str, Any], out: Mapping[str, Any], family: str) -> list[str]:
    """What the import did about sd-scripts' default of training the text encoder (network_train_unet_only unset)."""
    if _set(flat.get("network_train_unet_only")):
        return []
    net = out.get("network", {})
    if net.get("train_text_encoder"):
        lr = net.get("text_encoder_lr") or out.get("optimizer", {}).get("lr", "optimizer.lr")
        why = (" (sd-scripts' default learning_rate: unet_lr is set, learning_rate is not)"
               if net.get("text_encoder_lr") == SD_SCRIPTS_DEFAULT_LR and not _set(flat.get("text_encoder_lr")) else "")
        return [f"network_train_unet_only is not set, so sd-scripts trains a LoRA on the text encoder too (its "
                f"default): written as network.train_text_encoder = true, at lr {lr}{why}; set it to false to train "
                "the denoiser only"]
    if flat.get("text_encoder_lr") is not None and "text_encoder_lr" not in net:
        return []
    return [f"network_train_unet_only is not set (sd-scripts' default trains the text encoder too), but lorakit "
            f"offers no text-encoder LoRA for {family}: the denoiser alone is trained"]


def _refuse_json(path: Path) -> None:
    """kohya_ss's GUI saves its own JSON (keys like epoch, max_resolution, lr_warmup in percent), not sd-scripts'
    options: say so in one line rather than 'invalid TOML' at line 1."""
    try:
        head = path.read_bytes()[:64].lstrip()
    except OSError:
        return  # read_toml names a missing or unreadable file
    if path.suffix.lower() in (".yaml", ".yml") or head.startswith((b"job:", b"---", b"config:")):
        raise ConfigError(f"{path}: a YAML file (an ai-toolkit job config?), not an sd-scripts --config_file TOML; "
                          f"import it with `lorakit import ai-toolkit {path}`")
    if (path.suffix.lower() == ".json" or head.startswith(b"{")) and b'"model_type"' in path.read_bytes()[:1 << 20]:
        raise ConfigError(f"{path}: a JSON file (a OneTrainer config?), not an sd-scripts --config_file TOML; import "
                          f"it with `lorakit import onetrainer {path}`")
    if path.suffix.lower() == ".json" or head.startswith(b"{"):
        raise ConfigError(f"{path}: a JSON file (kohya_ss's GUI config), not an sd-scripts --config_file TOML; "
                          f"import it with `lorakit import kohya_ss {path}`, or import the TOML kohya_ss writes for "
                          "the run it starts (config_lora-*.toml in its output folder)")


_EMPTY = "empty: sd-scripts reads an empty value as not set, so lorakit's default applies"


def import_kohya_files(config: Path, dataset: Path | None = None, family: str | None = None
                       ) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """`lorakit import kohya`: an sd-scripts config TOML (+ its dataset TOML) -> (run.toml text, mapped
    (kohya key, lorakit key), dropped (kohya key, why), notes). The dataset TOML is referenced as data.config,
    which lorakit reads in sd-scripts' own schema. A script or text file holding the training command line
    (``accelerate launch ... flux_train_network.py --network_dim 4 ...``) is read by
    :mod:`lorakit.config.kohya_cmd_import`."""
    from lorakit.config.cmdline import looks_like_command

    if looks_like_command(Path(config)):
        from lorakit.config.kohya_cmd_import import import_kohya_command

        return import_kohya_command(Path(config), dataset, family)
    _refuse_json(Path(config))
    raw = read_toml(Path(config), str(config))
    from lorakit.config.kohya_cmd_import import defaults

    flat = flatten_kohya(raw)
    extra: Extra = []
    notes: list[str] = []
    defaults(flat, "sd-scripts", extra, notes)
    return import_kohya_flat(flat, Path(config), dataset, family, extra=extra, notes_first=notes)


Extra = list[tuple[str | None, str, Any]]  # (source key or None for a default, lorakit key, value)


def import_kohya_flat(flat: dict[str, Any], config: Path, dataset: Path | None = None, family: str | None = None, *,
                      extra: Extra | None = None, dropped_first: list[tuple[str, str]] | None = None,
                      notes_first: list[str] | None = None, how: str = "lorakit import kohya",
                      bucket_default: bool = True
                      ) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """sd-scripts' options (one flat namespace) -> (run.toml text, mapped, dropped, notes); ``extra``: values the
    caller translated itself (a command line's --optimizer_args, sd-scripts' defaults), put in before validation."""
    from lorakit.config.importing import settle
    from lorakit.config.load import dump_toml

    dropped_first = list(dropped_first or [])
    if dataset is not None:
        if not Path(dataset).is_file():
            raise ConfigError(f"--dataset: {dataset} not found")
        flat["dataset_config"] = str(Path(dataset).resolve())
    if flat.get("dataset_config") and flat.get("train_data_dir"):
        flat.pop("train_data_dir")
        dropped_first.append(("train_data_dir", "replaced by the dataset config (sd-scripts does the same)"))
    out, skipped = import_kohya_args(flat, family, bucket_default)
    if "model" not in out or "family" not in out.get("model", {}):
        raise ConfigError(f"{config}: cannot tell the model family (network_module is "
                          f"{flat.get('network_module', 'missing')!r}, the base model "
                          f"{flat.get('pretrained_model_name_or_path', 'not given')!r}); pass --family, e.g. "
                          "--family sdxl, --family sd15 or --family flux1")
    notes: list[str] = list(notes_first or [])
    mapped = [(k, _target(k, flat)) for k in flat if k in KOHYA_KEYS and k not in skipped]
    mapped += [(k, "(built in)") for k in flat if k in _BUILT_IN]
    if out.get("optimizer", {}).get("scheduler") == "cosine" and str(flat.get("lr_scheduler")).lower() == \
            "cosine_with_restarts":
        notes.append("lr_scheduler cosine_with_restarts with 1 cycle is one cosine decay: written as "
                     "optimizer.scheduler = \"cosine\"")
        if "lr_scheduler_num_cycles" in flat:
            mapped.append(("lr_scheduler_num_cycles", "optimizer.scheduler"))
    if "num_cycles" in out.get("optimizer", {}):
        mapped.append(("lr_scheduler_num_cycles", "optimizer.num_cycles"))
    dropped = dropped_first + [(k, _EMPTY if flat.get(k) == "" else _DROP_REASONS.get(k, "no lorakit equivalent"))
                               for k in skipped]
    if "network_module" in flat:  # read by kohya_family; named, never silently left out
        dropped.append(("network_module", f"{flat['network_module']!r}: {_DROP_REASONS['network_module']}"))
    if "enable_bucket" not in flat and bucket_default:
        notes.append("enable_bucket is not set, so sd-scripts crops every image to the resolution (its default): "
                     "written as data.enable_bucket = false; set it true to train in aspect-ratio buckets "
                     "(a dataset TOML's own enable_bucket still wins)")
    notes += _text_encoder_notes(flat, out, family or out["model"]["family"])
    te_lr = flat.get("text_encoder_lr")
    if isinstance(te_lr, list) and len(set(te_lr)) > 1:
        notes.append(f"text_encoder_lr gives one lr per text encoder ({te_lr}); lorakit has one "
                     f"network.text_encoder_lr for all of them: {te_lr[0]} was written, so the other "
                     "encoder(s) train at another lr than in sd-scripts; set network.text_encoder_lr yourself")
    origin = {_target(k, flat): k for k, _ in mapped if k in KOHYA_KEYS}
    for src, target, value in extra or []:
        section, name = target.split(".")
        out.setdefault(section, {})[name] = value
        if src is not None:
            mapped.append((src, target))
            origin[target] = src
    # a value lorakit refuses is taken out and named
    refused, more = settle(out, origin, config, required_is_error=False)
    gone = {k for k, _ in refused}
    mapped = [(k, t) for k, t in mapped if k not in gone]
    dropped += refused
    notes += more
    header = f"# imported from {Path(config).name}" + (f" and {Path(dataset).name}" if dataset else "") + \
        f" by `{how}`\n"
    return header + dump_toml(out), mapped, dropped, notes
