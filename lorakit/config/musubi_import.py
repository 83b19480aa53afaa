"""`lorakit import musubi`: a kohya-ss/musubi-tuner training command line (``flux_2_train_network.py``,
``qwen_image_train_network.py``, ``zimage_train_network.py``; a .sh / .bat / text file, or its ``--config_file``
TOML) and its dataset TOML → run.toml + ``<out>.dataset.toml``.

Option names, defaults and the dataset schema are musubi-tuner's (``training/parser_common.py``, the per-model
``*_setup_parser``, ``dataset/config_utils.py`` and docs/*.md; reference only, no code taken). The options musubi
shares with sd-scripts go through sd-scripts' mapping (:func:`lorakit.config.kohya_import.import_kohya_flat`); what
only musubi has is translated here (``--dit`` / ``--vae`` / ``--text_encoder`` → model.*, ``--model_version`` →
model.variant, ``--networks.loha`` / ``lokr`` → network.type, its timestep names). musubi's dataset TOML
(``[general]`` + ``[[datasets]]`` with ``image_directory``, ``cache_directory``, ``num_repeats`` ...) is written in
kohya's dataset schema, which lorakit reads (data.config). Every option and dataset key is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lorakit.config.cmdline import CommandLine, looks_like_command, read_command
from lorakit.config.importing import ImportResult
from lorakit.config.kohya_cmd_import import (MUSUBI_SCRIPTS, NO_FAMILY, SD_SCRIPTS, defaults, launcher_report, near,
                                             network_args, optimizer_args, typed_options)
from lorakit.config.toml_io import read_toml, toml_value
from lorakit.errors import ConfigError

_FAMILIES = "lorakit trains FLUX.2, Qwen-Image and Z-Image from musubi-tuner (SDXL, SD 1.5, FLUX.1, SD3.5 from " \
            "sd-scripts: `lorakit import kohya`)"
_ATTENTION = "lorakit picks its attention kernel (PyTorch SDPA)"
_TE = "lorakit runs the text encoder once before training and caches its outputs"
_PLANNED = "placement is planned by lorakit (memory.auto / memory.vram_gb)"
_HUB = "uploads: use `lorakit push RUN --repo user/name` after the run"
_LOGS = "lorakit writes metrics.jsonl and TensorBoard (log.tensorboard) in the run folder"
_META = "lorakit writes ss_* and modelspec.* metadata itself"
_REASONS: dict[str, str] = {
    **{k: _ATTENTION for k in ("sdpa", "flash_attn", "sage_attn", "xformers", "flash3", "split_attn",
                               "use_32bit_attention")},
    **{k: _TE for k in ("fp8_text_encoder", "fp8_vl", "fp8_llm", "fp8_t5")},
    **{k: _PLANNED for k in ("gradient_checkpointing_cpu_offload", "use_pinned_memory_for_block_swap",
                             "block_swap_h2d_only", "block_swap_ring_size", "img_in_txt_in_offloading")},
    **{k: _HUB for k in ("huggingface_repo_id", "huggingface_repo_type", "huggingface_path_in_repo",
                         "huggingface_token", "huggingface_repo_visibility", "save_state_to_huggingface",
                         "resume_from_huggingface", "async_upload")},
    **{k: _LOGS for k in ("log_with", "logging_dir", "log_prefix", "log_tracker_name", "wandb_run_name",
                          "log_tracker_config", "wandb_api_key", "log_config")},
    **{k: _META for k in ("metadata_title", "metadata_author", "metadata_description", "metadata_license",
                          "metadata_tags", "metadata_reso", "metadata_arch", "no_metadata")},
    **{k: "set memory.compile (lorakit picks the mode)" for k in (
        "compile_backend", "compile_mode", "compile_dynamic", "compile_fullgraph", "compile_cache_size_limit",
        "dynamo_backend", "dynamo_mode", "dynamo_fullgraph", "dynamo_dynamic", "cuda_allow_tf32",
        "cuda_cudnn_benchmark")},
    **{k: "lorakit starts its own processes (lorakit train --gpus N, [distributed])" for k in (
        "ddp_timeout", "ddp_gradient_as_bucket_view", "ddp_static_graph")},
    "fp8_scaled": "read with --fp8_base: lorakit's memory.fp8_base is its one fp8 storage switch",
    "vae_dtype": "lorakit picks the autoencoder's dtype",
    "disable_numpy_memmap": "lorakit reads safetensors files its own way",
    "num_layers": "lorakit trains the full Qwen-Image transformer",
    "resume": "continue a stopped lorakit run with `lorakit train --resume DIR`",
    "save_state": "lorakit always saves resume state", "save_state_on_train_end": "lorakit always saves resume state",
    "show_timesteps": "lorakit shows no timestep plot", "mode_scale": "only for --weighting_scheme mode",
    "preserve_distribution_shape": "lorakit samples σ over the whole range of min/max timestep",
    "num_timestep_buckets": "lorakit draws σ without buckets",
    "dim_from_weights": "set network.rank to the rank of network.weights",
    "save_last_n_epochs": "lorakit keeps the last save.keep_last checkpoints",
    "save_last_n_steps": "lorakit keeps the last save.keep_last checkpoints",
    "save_last_n_epochs_state": "lorakit keeps the last save.keep_last checkpoints",
    "save_last_n_steps_state": "lorakit keeps the last save.keep_last checkpoints",
    "lr_decay_steps": "lorakit's schedules decay over the whole run",
    "lr_scheduler_power": "no lorakit equivalent",
}
# musubi --timestep_sampling → lorakit training.timestep_sampling (None: every family; else that family's own shift)
_TIMESTEPS: dict[str, tuple[str, str | None]] = {
    "uniform": ("uniform", None), "sigmoid": ("sigmoid", None), "shift": ("shift", None),
    "flux_shift": ("flux_shift", "flux1"), "flux2_shift": ("flux_shift", "flux2"),
    "qwen_shift": ("flux_shift", "qwenimage")}
_FLUX2_VERSIONS = {"klein-base-4b": "base", "klein-base-9b": "base", "klein-4b": "distilled", "klein-9b": "distilled"}
_IMAGE_KEYS = {"resolution", "batch_size", "enable_bucket", "bucket_no_upscale"}   # [[datasets]] in kohya's schema
_SUBSET_KEYS = {"caption_extension": "caption_extension", "num_repeats": "num_repeats"}
_MUSUBI_DEFAULT_RESOLUTION = [960, 544]


def dataset_path(out: Path) -> Path:
    return out.with_name(out.stem + ".dataset.toml")


def _read(path: Path) -> tuple[str | None, CommandLine | None, dict[str, Any]]:
    """(script name, the command, its options) from a command file, or (None, None, options) from a --config_file
    TOML."""
    if looks_like_command(path):
        cmd = read_command(path)
        return cmd.script, cmd, typed_options(cmd.options)
    from lorakit.config.kohya_import import flatten_kohya

    if path.suffix.lower() != ".toml":
        raise ConfigError(f"{path}: neither a musubi-tuner command line (no *_train_network.py in it) nor a "
                          "--config_file TOML; pass the .sh / .bat / text file holding the training command")
    raw = read_toml(path, str(path))
    if "datasets" in raw and isinstance(raw.get("datasets"), list):
        raise ConfigError(f"{path}: a dataset config (it has [[datasets]]), not the training command; pass the "
                          "command line and give this file with --dataset (or let --dataset_config name it)")
    return None, None, flatten_kohya(raw)


def musubi_family(script: str | None, flat: Mapping[str, Any], path: Path) -> str:
    if script in SD_SCRIPTS:
        raise ConfigError(f"{path}: an sd-scripts command ({script}); import it with `lorakit import kohya {path}`")
    if script in NO_FAMILY:
        raise ConfigError(f"{path}: {script} trains {NO_FAMILY[script]}: lorakit has no such family ({_FAMILIES})")
    if script in ("qwen_image_train.py", "zimage_train.py", "hv_train.py", "hidream_o1_train.py"):
        raise ConfigError(f"{path}: {script} is musubi-tuner's full fine-tune, not LoRA training; lorakit trains "
                          "LoRAs: import a *_train_network.py command")
    if script in MUSUBI_SCRIPTS:
        return MUSUBI_SCRIPTS[script]
    if script is not None:
        raise ConfigError(f"{path}: {script} is not a musubi-tuner LoRA training script ({_FAMILIES})")
    from lorakit.models.registry import families, get_family

    module = str(flat.get("network_module", ""))
    found = [f for f in families() if get_family(f).SPEC.network_module == module]
    if len(found) == 1 and found[0] in MUSUBI_SCRIPTS.values():
        return found[0]
    raise ConfigError(f"{path}: cannot tell the model family (network_module is {module or 'missing'!r}); pass "
                      "--family flux2, --family qwenimage or --family zimage")


class _Report:
    def __init__(self) -> None:
        self.mapped: list[tuple[str, str]] = []
        self.dropped: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.extra: list[tuple[str | None, str, Any]] = []


def _model(flat: dict[str, Any], fam: str, path: Path, rep: _Report) -> None:
    from lorakit.models.registry import get_family

    keys = get_family(fam).SPEC.config_keys
    if "dit" in flat:
        rep.extra.append(("dit", "model.checkpoint", str(flat.pop("dit"))))
    if "vae" in flat:
        target = "model.ae" if "model.ae" in keys else "model.vae"
        rep.extra.append(("vae", target, str(flat.pop("vae"))))
    if "text_encoder" in flat:
        rep.extra.append(("text_encoder", "model.text_encoder", str(flat.pop("text_encoder"))))
    for flag in ("edit", "edit_plus"):
        if flat.get(flag) is True:
            raise ConfigError(f"{path}: --{flag} trains Qwen-Image-Edit (with control images); lorakit trains "
                              "Qwen-Image text-to-image LoRAs")
        flat.pop(flag, None)
    version = str(flat.pop("model_version", "") or "").lower()
    if not version:
        return
    if fam == "flux2" and version in _FLUX2_VERSIONS:
        rep.extra.append(("model_version", "model.variant", _FLUX2_VERSIONS[version]))
    elif fam == "flux2" and version == "dev":
        rep.dropped.append(("model_version", "'dev': lorakit tells FLUX.2 dev from Klein by the weights"))
    elif fam == "qwenimage" and version == "original":
        rep.dropped.append(("model_version", "'original': Qwen-Image, the model lorakit trains"))
    elif fam == "qwenimage":
        raise ConfigError(f"{path}: --model_version {version} trains Qwen-Image-Edit / -Layered (with control or "
                          "layer images); lorakit trains Qwen-Image text-to-image LoRAs")
    else:
        rep.dropped.append(("model_version", f"{version!r}: no such {fam} version in lorakit (it reads the "
                                             "variant from the weights)"))


def _objective(flat: dict[str, Any], fam: str, rep: _Report) -> None:
    sampling = flat.pop("timestep_sampling", None)
    if sampling is None:
        rep.notes.append("--timestep_sampling is not given: musubi-tuner then samples 'sigma', which lorakit lacks; "
                         "lorakit's default training.timestep_sampling = \"flux_shift\" (the family's own "
                         "resolution-dependent shift) applies")
    else:
        value, only = _TIMESTEPS.get(str(sampling), (None, None))
        if value and (only is None or only == fam):
            rep.extra.append(("timestep_sampling", "training.timestep_sampling", value))
        else:
            rep.dropped.append(("timestep_sampling", f"{sampling!r} has no lorakit equivalent for {fam} (lorakit has "
                                                     "uniform, sigmoid, shift and flux_shift: the family's own shift)"))
    scheme = flat.pop("weighting_scheme", None)
    if scheme is not None:
        rep.dropped.append(("weighting_scheme", "'none': lorakit weights every timestep alike too" if scheme == "none"
                            else f"{scheme!r}: lorakit weights every timestep alike (no loss weighting scheme)"))


def _network(flat: dict[str, Any], rep: _Report) -> None:
    module = str(flat.get("network_module", ""))
    if module in ("networks.loha", "networks.lokr"):
        flat.pop("network_module")
        rep.extra.append(("network_module", "network.type", module.split(".")[1]))


def import_musubi(config: Path, out_path: Path = Path("run.toml"), family: str | None = None,
                  dataset: Path | None = None) -> ImportResult:
    """`lorakit import musubi train.sh -o run.toml`: → {run.toml, run.dataset.toml} and the report."""
    try:
        return _import(Path(config), Path(out_path), family, dataset)
    except (TypeError, AttributeError) as exc:
        raise ConfigError(f"{config}: a value of an unexpected type ({exc}); fix it and import again") from None


def _import(path: Path, out_path: Path, family: str | None, dataset: Path | None) -> ImportResult:
    from lorakit.config.kohya_import import import_kohya_flat

    script, cmd, flat = _read(path)
    fam = family or musubi_family(script, flat, path)
    rep = _Report()
    if cmd is not None:
        rep.notes += cmd.notes
        rep.dropped += launcher_report(cmd)
        rep.dropped += [(f"(positional) {tok}", "musubi-tuner takes no positional arguments") for tok in cmd.positional]
    near(flat, path)
    if "config_file" in flat:
        rep.dropped.append(("config_file", "import that TOML on its own (`lorakit import musubi CONFIG.toml`); this "
                                           "command line's options were imported"))
        flat.pop("config_file")
    _model(flat, fam, path, rep)
    _objective(flat, fam, rep)
    _network(flat, rep)
    if "optimizer_args" in flat:
        optimizer_args(flat.pop("optimizer_args"), str(flat.get("optimizer_type", "")), rep.extra, rep.dropped)
    if "network_args" in flat:
        network_args(flat.pop("network_args"), rep.extra, rep.dropped)
    if "compile" in flat:
        rep.extra.append(("compile", "memory.compile", flat.pop("compile") is True))
    for key in [k for k in flat if k in _REASONS]:
        flat.pop(key)
        rep.dropped.append((key, _REASONS[key]))
    launch_mp = cmd.launcher.get("mixed_precision") if cmd is not None else None
    if cmd is not None and "mixed_precision" not in flat and launch_mp:
        rep.dropped = [(k, w) for k, w in rep.dropped if k != "accelerate launch --mixed_precision"]
        rep.extra.append(("accelerate launch --mixed_precision", "training.mixed_precision", str(launch_mp)))
    defaults({**flat, **({"mixed_precision": launch_mp} if launch_mp else {})}, "musubi-tuner", rep.extra, rep.notes)
    toml_path = dataset_path(out_path)
    source = dataset or flat.pop("dataset_config", None)
    if not source:
        raise ConfigError(f"{path}: no --dataset_config (musubi-tuner reads its images only from a dataset TOML); "
                          "add it to the command or pass --dataset DATASET.toml")
    source = Path(str(source)).expanduser()
    if not source.is_file():
        raise ConfigError(f"{path}: the dataset config {source} is not found; pass --dataset DATASET.toml (musubi's "
                          "[general] / [[datasets]] file)")
    dataset_text = convert_dataset(source, toml_path, rep)
    rep.extra.append(("dataset_config", "data.config", str(toml_path.resolve())))
    text, mapped, dropped, notes = import_kohya_flat(
        flat, path, None, fam, extra=rep.extra, dropped_first=rep.dropped, notes_first=rep.notes,
        how="lorakit import musubi", bucket_default=False)
    return ImportResult({out_path: text, toml_path: dataset_text}, mapped + rep.mapped, dropped, notes)


def convert_dataset(source: Path, toml_path: Path, rep: _Report) -> str:
    """musubi's dataset TOML → kohya's dataset schema (one [[datasets]] with one subset per image_directory)."""
    doc = read_toml(source, str(source))
    name = source.name
    general = doc.get("general", {})
    sets = doc.get("datasets")
    if not isinstance(general, dict) or not isinstance(sets, list) or not sets:
        raise ConfigError(f"{source}: not a musubi-tuner dataset config (expected [general] and at least one "
                          "[[datasets]] with image_directory)")
    for key in doc:
        if key not in ("general", "datasets"):
            rep.dropped.append((f"{name}: {key}", "not part of musubi-tuner's dataset config; not read"))
    out_general: dict[str, Any] = {}
    for key, value in general.items():
        if key in _IMAGE_KEYS or key in _SUBSET_KEYS:
            out_general[key] = value
            rep.mapped.append((f"{name}: general.{key}", f"{toml_path.name}: general.{key}"))
        else:
            rep.dropped.append((f"{name}: general.{key}", "not a musubi-tuner [general] key; not read"))
    if "resolution" not in general and any("resolution" not in ds for ds in sets if isinstance(ds, dict)):
        out_general["resolution"] = _MUSUBI_DEFAULT_RESOLUTION
        rep.notes.append(f"{name}: resolution is not set: musubi-tuner's default [960, 544] (width, height) was "
                         "written")
    if "enable_bucket" not in general:
        out_general["enable_bucket"] = False
        rep.notes.append(f"{name}: enable_bucket is not set: musubi-tuner then crops every image to the resolution "
                         "(its default); written as enable_bucket = false")
    lines = [f"# the datasets of {name}, written by `lorakit import musubi` (kohya's dataset schema)", "[general]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in out_general.items()]
    for i, ds in enumerate(sets):
        where = f"datasets[{i}]"
        if not isinstance(ds, dict):
            raise ConfigError(f"{source}: {where} must be a table")
        for key, kind in (("image_jsonl_file", "a metadata JSONL file"), ("video_directory", "videos"),
                          ("video_jsonl_file", "videos")):
            if key in ds:
                raise ConfigError(f"{source}: {where}.{key}: lorakit reads image folders with caption files, not "
                                  f"{kind}; point image_directory at a folder of images and <name>.txt captions")
        if ds.get("control_directory"):
            raise ConfigError(f"{source}: {where}.control_directory: control (reference) images train an editing "
                              "LoRA; lorakit trains text-to-image LoRAs: remove it to train on the images alone")
        if ds.get("multiple_target") is True:
            raise ConfigError(f"{source}: {where}.multiple_target trains Qwen-Image-Layered; lorakit trains "
                              "text-to-image LoRAs: remove it")
        if "image_directory" not in ds:
            raise ConfigError(f"{source}: {where} has no image_directory; set it to the folder of images and captions")
        group = {k: v for k, v in ds.items() if k in _IMAGE_KEYS}
        subset: dict[str, Any] = {"image_dir": str(_resolve(ds["image_directory"], source))}
        rep.mapped.append((f"{name}: {where}.image_directory", f"{toml_path.name}: image_dir"))
        for key, value in ds.items():
            src = f"{name}: {where}.{key}"
            if key in group:
                rep.mapped.append((src, f"{toml_path.name}: {where}.{key}"))
            elif key in _SUBSET_KEYS:
                subset[_SUBSET_KEYS[key]] = value
                rep.mapped.append((src, f"{toml_path.name}: {_SUBSET_KEYS[key]}"))
            elif key == "cache_directory":
                rep.dropped.append((src, "lorakit keeps its own caches (keyed by each image's content) under "
                                         "data.cache_dir; musubi's cache files are not read"))
            elif key in ("no_resize_control", "control_resolution", "control_directory", "multiple_target"):
                rep.dropped.append((src, "only for control images (editing LoRAs): nothing to carry over"))
            elif key.startswith("fp_"):
                rep.dropped.append((src, "FramePack only"))
            elif key != "image_directory":
                rep.dropped.append((src, f"{ds[key]!r}: no lorakit equivalent"))
        lines.append("\n[[datasets]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in group.items()]
        lines.append("\n  [[datasets.subsets]]")
        lines += [f"  {k} = {toml_value(v)}" for k, v in subset.items()]
    if not any("caption_extension" in ds for ds in sets) and "caption_extension" not in general:
        rep.notes.append(f"{name}: caption_extension is not set (musubi-tuner needs it for caption files): lorakit "
                         "reads <image>.txt")
    return "\n".join(lines) + "\n"


def _resolve(raw: Any, source: Path) -> Path:
    p = Path(str(raw)).expanduser()
    return p if p.is_absolute() or not (source.parent / p).is_dir() else (source.parent / p).resolve()
