"""Import a kohya_ss GUI config (the JSON its LoRA tab saves) into lorakit's shape.

The GUI's JSON is not sd-scripts' option set: it holds what the GUI's form holds (``epoch``, ``max_resolution``,
``lr_warmup`` as a percent of the steps, ``LoRA_type``, the ``sdxl`` / ``flux1_checkbox`` / ``sd3_checkbox`` model
boxes, ``sample_prompts`` as text, 0 for "unset") and the GUI turns it into sd-scripts options when it starts a run.
This module does the same translation, as kohya_ss's ``lora_gui.py`` documents it (reference only, no code taken),
then hands the sd-scripts options to :mod:`lorakit.config.kohya_import`, whose mapping, reasons and family rules it
shares, and to :func:`lorakit.config.importing.settle`. Every GUI key is reported: mapped, or not carried over with
the reason.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from lorakit.config.importing import ImportResult, file_family, render, set_key, settle
from lorakit.config.kohya_import import _DROP_REASONS, _EMPTY, KOHYA_KEYS, _target, import_kohya_args
from lorakit.errors import ConfigError

# what kohya_ss counts as an image when it turns epochs into steps (lora_gui.py, train_model)
GUI_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

_RENAMED = {"max_resolution": "resolution", "optimizer": "optimizer_type"}
# LoRA_type → lorakit network.type (the ones lorakit trains)
_LORA_TYPES = {"Standard": "lora", "Flux1": "lora", "Kohya LoCon": "locon", "LoCon": "locon",
               "LyCORIS/LoCon": "locon", "LyCORIS/LoHa": "loha", "Kohya LoHa": "loha", "LyCORIS/LoKr": "lokr",
               "Kohya LoKr": "lokr"}
_CONV_TYPES = {"Kohya LoCon", "LoCon", "LyCORIS/LoCon", "LyCORIS/LoHa", "LyCORIS/LoKr", "Kohya LoHa", "Kohya LoKr"}
# kohya_ss passes these only with one model box ticked (lora_gui.py's config_toml_data)
_ONLY_FOR = {
    "clip_l": ("flux1",), "t5xxl": ("flux1",), "ae": ("flux1",), "clip_g": ("sd3",),  # SD3: sd3_clip_l, sd3_t5xxl
    "t5xxl_max_token_length": ("flux1",), "guidance_scale": ("flux1",), "apply_t5_attn_mask": ("flux1",),
    "blocks_to_swap": ("flux1", "sd3"), "discrete_flow_shift": ("flux1", "sd3"),
    "timestep_sampling": ("flux1", "sd3"), "max_token_length": ("sdxl", "sd15", "sd3"),
    "train_blocks": ("flux1",), "split_mode": ("flux1",), "mem_eff_save": ("flux1",),
}
# GUI keys at the value that asks for nothing (kohya_ss's defaults; where another key makes them matter it is named)
_AT_DEFAULT: dict[str, tuple[Any, ...]] = {
    "lr_scheduler_num_cycles": (1, ""), "lr_scheduler_power": (1, ""), "clip_skip": (1,), "prior_loss_weight": (1,),
    "multires_noise_discount": (0.3, 0), "huber_schedule": ("snr",), "LyCORIS_preset": ("full",), "unit": (1,),
    "factor": (-1,), "dynamo_backend": ("no",), "dynamo_mode": ("default",), "train_on_input": (True,),
    "model_prediction_type": ("raw",), "num_processes": (1,), "num_machines": (1,),
    "num_cpu_threads_per_process": (2,), "huber_scale": (1,), "xformers": ("sdpa", "none"),
}
# GUI keys for which 0 means "unset": kohya_ss does not pass them to sd-scripts then
_ZERO_UNSET = frozenset({
    "adaptive_noise_scale", "ip_noise_gamma", "max_timestep", "min_snr_gamma", "min_timestep", "max_train_epochs",
    "max_train_steps", "sample_every_n_epochs", "sample_every_n_steps", "save_every_n_epochs", "save_every_n_steps",
    "save_last_n_steps", "save_last_n_steps_state", "save_last_n_epochs", "save_last_n_epochs_state", "seed",
    "stop_text_encoder_training", "stop_text_encoder_training_pct", "v_pred_like_loss", "vae_batch_size",
    "noise_offset", "multires_noise_iterations", "blocks_to_swap", "lr_warmup", "lr_warmup_steps", "unet_lr",
    "text_encoder_lr", "t5xxl_lr"})
# values kept as written (names, paths, free text) even when they look like numbers
_TEXT_KEYS = frozenset({"output_name", "training_comment", "sample_prompts", "caption_extension", "max_resolution",
                        "optimizer_args", "train_data_dir", "output_dir", "pretrained_model_name_or_path"})
_LAUNCH = "an accelerate launch setting: lorakit starts its own processes (lorakit train --gpus N, [distributed])"
_GUI_REASONS = {
    "LoRA_type": "read to choose network.type",
    "sdxl": "read to choose model.family", "flux1_checkbox": "read to choose model.family",
    "sd3_checkbox": "read to choose model.family", "v2": "read to choose model.family",
    "model_list": "read to choose model.family (the GUI's quick pick; pretrained_model_name_or_path is the model)",
    "xformers": "lorakit picks its attention kernel (PyTorch SDPA)",
    "cache_latents_to_disk": "lorakit always caches latents on disk",
    "sdxl_cache_text_encoder_outputs_to_disk": "lorakit caches text-encoder outputs on disk",
    "flux1_cache_text_encoder_outputs_to_disk": "lorakit caches text-encoder outputs on disk",
    "sd3_cache_text_encoder_outputs_to_disk": "lorakit caches text-encoder outputs on disk",
    "noise_offset_type": "read to choose between noise_offset and multires noise",
    "sdxl_no_half_vae": "lorakit encodes latents with the VAE in float32 where fp16 overflows",
    "full_bf16": "lorakit keeps the LoRA weights in fp32 with bf16 compute (training.mixed_precision)",
    "full_fp16": "lorakit keeps the LoRA weights in fp32 with fp16 compute (training.mixed_precision)",
    "save_model_as": "lorakit writes .safetensors (save.format picks the kohya or diffusers layout)",
    "huggingface_repo_id": "uploads: use `lorakit push RUN --repo user/name` after the run",
    "save_state": "lorakit always saves resume state", "logging_dir": "logs go to the run folder",
    "max_data_loader_n_workers": "lorakit decodes images once into its cache",
    "persistent_data_loader_workers": "lorakit decodes images once into its cache",
    "mem_eff_attn": "lorakit picks its attention kernel (PyTorch SDPA)",
    "sample_sampler": "set sample.sampler (SDXL: euler, dpmpp_2m); FLUX samples with its own flow sampler",
}
for _k in ("num_cpu_threads_per_process", "num_processes", "num_machines", "multi_gpu", "gpu_ids",
           "main_process_port", "dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic",
           "extra_accelerate_launch_args"):
    _GUI_REASONS[_k] = _LAUNCH
_NUM_RE = re.compile(r"^\s*-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _num(value: Any) -> Any:
    """Older kohya_ss presets store numbers as text ("50", "1", "" for unset)."""
    if isinstance(value, str) and _NUM_RE.match(value):
        f = float(value)
        return int(f) if f.is_integer() and not any(c in value for c in ".eE") else f
    return value


def _off(value: Any) -> bool:
    return value in ("", None, False, 0, [], {}) and value is not True


def read_gui_json(path: Path) -> dict[str, Any]:
    """The GUI JSON as a dict of GUI keys, or one line naming the file and what to pass instead."""
    from lorakit.config.importing import read_source

    text = read_source(path, "pass the JSON kohya_ss saved from its LoRA tab")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        yaml_like = re.search(r"^\s*(job|config):", text, re.M)
        toml_like = re.search(r"^\s*[\w.]+\s*=", text, re.M)
        command = re.search(r"train(_network)?\.py", text)
        hint = ("a training command line? use `lorakit import kohya` (sd-scripts, FluxGym) or `lorakit import "
                "musubi` (musubi-tuner)" if command
                else "an ai-toolkit YAML config? use `lorakit import ai-toolkit`" if yaml_like
                else "an sd-scripts TOML? use `lorakit import kohya`" if toml_like
                else "pass the JSON kohya_ss saved from its LoRA tab")
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); {hint}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object of kohya_ss settings, got {type(doc).__name__}; pass the "
                          "JSON kohya_ss saved from its LoRA tab")
    if "LoRA_type" not in doc:
        if "model_type" in doc and "training_method" in doc:
            raise ConfigError(f"{path}: a OneTrainer config, not a kohya_ss GUI config; use `lorakit import "
                              f"onetrainer {path}`")
        kind = ("a kohya_ss Dreambooth / fine-tuning config" if "max_resolution" in doc or "epoch" in doc
                else "not a kohya_ss GUI config")
        raise ConfigError(f"{path}: {kind} (no LoRA_type key); lorakit trains LoRAs: pass a config saved from "
                          "kohya_ss's LoRA tab")
    return {str(k): (v if k in _TEXT_KEYS else _num(v)) for k, v in doc.items()}


def gui_family(gui: Mapping[str, Any], path: Path) -> tuple[str, list[str]]:
    """The family the GUI's model boxes (and LoRA_type) name; the base model file's header wins where it names one."""
    notes: list[str] = []
    for box, name in (("hunyuan_image_checkbox", "HunyuanImage"), ("anima_checkbox", "Anima"),
                      ("lumina_checkbox", "Lumina")):
        if gui.get(box) is True:
            raise ConfigError(f"{path}: {box} is ticked: lorakit has no {name} family; lorakit trains "
                              "SDXL, SD 1.5, FLUX.1, FLUX.2, SD3.5, Qwen-Image and Z-Image")
    if gui.get("flux1_checkbox") is True or str(gui.get("LoRA_type", "")).startswith("Flux1"):
        flags = "flux1"
    elif gui.get("sd3_checkbox") is True:
        flags = "sd3"
    elif gui.get("sdxl") is True:
        flags = "sdxl"
    elif gui.get("v2") is True:
        raise ConfigError(f"{path}: v2 is ticked (Stable Diffusion 2.x): lorakit has no SD 2 family")
    else:
        flags = "sd15"
    header = file_family(gui.get("pretrained_model_name_or_path"))
    if header and header != flags:
        notes.append(f"the model boxes say {flags}, but {gui.get('pretrained_model_name_or_path')} is a {header} "
                     f"checkpoint (its header): model.family = {header!r} was written")
        return header, notes
    return flags, notes


def _image_count(folder: Path) -> int:
    try:
        return sum(1 for p in folder.iterdir() if p.suffix.lower() in GUI_IMAGE_EXTENSIONS and p.is_file())
    except OSError:
        return 0


def steps_from_epochs(gui: Mapping[str, Any]) -> tuple[int, str] | None:
    """kohya_ss's own count when max_train_steps is 0: sum of images x repeats over the 'N_name' folders, / batch
    / accumulation x epoch (x 2 with regularisation images), rounded up; None when the folder cannot be read."""
    from lorakit.data.scan import folder_repeats

    root = Path(str(gui.get("train_data_dir") or "")).expanduser()
    if not str(gui.get("train_data_dir") or "") or not root.is_dir():
        return None
    total = 0
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        repeats = folder_repeats(sub.name)
        if repeats:
            total += repeats * _image_count(sub)
    if total == 0:
        return None
    batch = int(gui.get("train_batch_size") or 1)
    accum = int(gui.get("gradient_accumulation_steps") or 1)
    epoch = int(gui.get("epoch") or 1)
    reg = 2 if str(gui.get("reg_data_dir") or "") else 1
    steps = math.ceil(total / batch / accum * epoch * reg)
    how = (f"{total} images x repeats / batch {batch} / accumulation {accum} x {epoch} epoch(s)"
           + (" x 2 (regularisation images)" if reg == 2 else "") + f" = {steps}")
    return steps, how


def parse_optimizer_args(text: str) -> tuple[dict[str, Any], list[str]]:
    """``optimizer_args`` ("weight_decay=0.1 betas=0.9,0.99") → (optimizer.* keys lorakit has, the rest as text)."""
    out: dict[str, Any] = {}
    rest: list[str] = []
    for item in str(text).replace('"', "").split():
        key, _, value = item.partition("=")
        try:
            if key in ("weight_decay", "eps"):
                out[key] = float(value)
            elif key == "betas":
                out[key] = [float(b) for b in value.strip("()[]").split(",")]
            else:
                rest.append(item)
        except ValueError:
            rest.append(item)
    return out, rest


class _Report:
    """GUI key → where it went (mapped) or why not (dropped), in the GUI's own key names."""

    def __init__(self) -> None:
        self.mapped: list[tuple[str, str]] = []
        self.dropped: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.seen: set[str] = set()

    def map(self, key: str, target: str) -> None:
        self.mapped.append((key, target))
        self.seen.add(key)

    def drop(self, key: str, why: str) -> None:
        self.dropped.append((key, why))
        self.seen.add(key)


def _steps(gui: Mapping[str, Any], args: dict[str, Any], origin: dict[str, str], rep: _Report) -> int | None:
    """Run length as kohya_ss hands it to sd-scripts; the number of steps when it is known here."""
    epochs, steps = int(gui.get("max_train_epochs") or 0), int(gui.get("max_train_steps") or 0)
    if epochs > 0:
        args["max_train_epochs"] = epochs
        origin["max_train_epochs"] = "max_train_epochs"
        rep.drop("epoch", "max_train_epochs is set and wins in sd-scripts (training.max_epochs)")
        if steps:
            args["max_train_steps"] = steps  # import_kohya_args lets the epochs win and says so
            origin["max_train_steps"] = "max_train_steps"
        return None
    if steps > 0:
        args["max_train_steps"] = steps
        origin["max_train_steps"] = "max_train_steps"
        rep.drop("epoch", "max_train_steps is set: kohya_ss trains that many steps, whatever the epochs")
        return steps
    if str(gui.get("dataset_config") or ""):
        args["max_train_steps"] = 1600
        origin["max_train_steps"] = "max_train_steps"
        rep.drop("epoch", "with dataset_config kohya_ss does not count steps from the epochs")
        rep.notes.append("max_train_steps is 0 with a dataset_config: sd-scripts then trains its default 1600 steps; "
                         "training.max_steps = 1600 was written")
        return 1600
    if "max_train_steps" in gui:
        rep.drop("max_train_steps", "0: kohya_ss counts the steps from epoch (see the note)")
    counted = steps_from_epochs(gui)
    if counted:
        args["max_train_steps"] = counted[0]
        origin["max_train_steps"] = "epoch"
        rep.notes.append(f"max_train_steps is 0: kohya_ss counts the steps from epoch as {counted[1]}; "
                         f"training.max_steps = {counted[0]} was written")
        return counted[0]
    args["max_train_epochs"] = int(gui.get("epoch") or 1)
    origin["max_train_epochs"] = "epoch"
    rep.notes.append(f"max_train_steps is 0 and {gui.get('train_data_dir')!r} has no 'N_name' image folders here to "
                     f"count: training.max_epochs = {args['max_train_epochs']} was written (lorakit counts the "
                     "steps from the data at the start of the run)")
    return None


def _warmup(gui: Mapping[str, Any], args: dict[str, Any], origin: dict[str, str], steps: int | None,
            rep: _Report) -> None:
    pct, fixed = float(gui.get("lr_warmup") or 0), int(gui.get("lr_warmup_steps") or 0)
    if not pct and not fixed:
        return
    if str(gui.get("lr_scheduler", "")).lower() == "constant":
        for key in ("lr_warmup", "lr_warmup_steps"):
            if gui.get(key):
                rep.drop(key, "lr_scheduler is constant, which sd-scripts runs without warmup (it refuses warmup "
                              "steps there); choose constant_with_warmup in kohya_ss for a warmup")
        return
    if fixed:
        args["lr_warmup_steps"] = fixed
        origin["lr_warmup_steps"] = "lr_warmup_steps"
        if pct:
            rep.drop("lr_warmup", "lr_warmup_steps is set and wins, as in kohya_ss")
    elif steps:
        args["lr_warmup_steps"] = int(pct / 100 * steps)
        origin["lr_warmup_steps"] = "lr_warmup"
        rep.notes.append(f"lr_warmup is {pct:g}% of the steps: {pct:g}% of {steps} = {args['lr_warmup_steps']} "
                         "warmup steps (optimizer.warmup_steps)")
    else:
        rep.drop("lr_warmup", f"{pct:g}% of a step count lorakit knows only at the start of the run (epochs): set "
                              "optimizer.warmup_steps yourself")


def _learning_rates(gui: Mapping[str, Any], args: dict[str, Any], origin: dict[str, str], rep: _Report) -> None:
    """kohya_ss: unet_lr (when > 0) trains the denoiser, text_encoder_lr (when > 0) the text encoders; the text
    encoders train unless text_encoder_lr is 0 while unet_lr is not (lora_gui.py, resolve_network_train_flags)."""
    lr, unet, te = (float(gui.get(k) or 0) for k in ("learning_rate", "unet_lr", "text_encoder_lr"))
    if lr:
        args["learning_rate"] = lr
        origin["learning_rate"] = "learning_rate"
    if unet:
        args["unet_lr"] = unet
        origin["unet_lr"] = "unet_lr"
    if te:
        args["text_encoder_lr"] = te
        origin["text_encoder_lr"] = "text_encoder_lr"
    for key, value in (("learning_rate", lr), ("unet_lr", unet), ("text_encoder_lr", te)):
        if key in gui and not value and key != "text_encoder_lr":  # a 0 text_encoder_lr: see train_text_encoder
            rep.drop(key, "0: unset in kohya_ss (it does not pass it to sd-scripts)")
    unet_only = te == 0 and unet != 0
    args["network_train_unet_only"] = unet_only
    origin["network_train_unet_only"] = "text_encoder_lr" if "text_encoder_lr" in gui else "unet_lr"
    if float(gui.get("t5xxl_lr") or 0):
        rep.drop("t5xxl_lr", "lorakit does not train the T5 encoder")
    if unet_only:
        rep.notes.append("text_encoder_lr is 0 and unet_lr is not: kohya_ss trains the denoiser only "
                         "(network.train_text_encoder = false)")


def _samples(gui: Mapping[str, Any], out: dict[str, dict[str, Any]], rep: _Report) -> None:
    text = str(gui.get("sample_prompts") or "")
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if prompts:
        set_key(out, "sample.prompts", prompts)
        rep.map("sample_prompts", "sample.prompts")
    elif "sample_prompts" in gui:
        rep.drop("sample_prompts", _EMPTY)
    if int(gui.get("sample_every_n_epochs") or 0):
        rep.drop("sample_every_n_epochs", _DROP_REASONS["sample_every_n_epochs"])


def _network(gui: Mapping[str, Any], path: Path, out: dict[str, dict[str, Any]], rep: _Report) -> None:
    lora_type = str(gui.get("LoRA_type") or "Standard")
    if lora_type not in _LORA_TYPES:
        raise ConfigError(f"{path}: LoRA_type {lora_type!r} has no lorakit equivalent (lorakit trains Standard LoRA, "
                          "LoCon, LoHa, LoKr and DoRA); choose one of those in kohya_ss, or edit LoRA_type, and "
                          "import again")
    kind = _LORA_TYPES[lora_type]
    if gui.get("dora_wd") is True and kind in ("lora", "locon") and lora_type.startswith("LyCORIS"):
        kind = "dora"
        rep.map("dora_wd", "network.type")
    if kind != "lora":
        set_key(out, "network.type", kind)
    rep.map("LoRA_type", "network.type") if kind != "lora" else rep.drop("LoRA_type", _GUI_REASONS["LoRA_type"])
    for key, target in (("conv_dim", "network.conv_rank"), ("conv_alpha", "network.conv_alpha")):
        if key not in gui:
            continue
        if lora_type in _CONV_TYPES and int(gui.get("conv_dim") or 0) > 0:
            set_key(out, target, gui[key])
            rep.map(key, target)
        else:
            rep.drop(key, f"kohya_ss passes it only with a LoCon / LyCORIS LoRA_type (this is {lora_type!r})")
    if str(gui.get("LoRA_type")) == "Flux1":
        blocks = "single" if gui.get("split_mode") is True else str(gui.get("train_blocks") or "all")
        for key, target, value in (("train_blocks", "network.train_blocks", blocks),
                                   ("train_double_block_indices", "network.double_block_indices", None),
                                   ("train_single_block_indices", "network.single_block_indices", None)):
            value = value if value is not None else str(gui.get(key) or "")
            if key in gui and value not in ("", "all"):
                set_key(out, target, value)
                rep.map(key, target)
            elif key in gui:
                rep.drop(key, f"{gui[key]!r}: every block, lorakit's default")
    if kind == "lokr" and "factor" in gui:
        set_key(out, "network.factor", int(gui["factor"]))
        rep.map("factor", "network.factor")


def _optimizer_args(gui: Mapping[str, Any], out: dict[str, dict[str, Any]], rep: _Report) -> None:
    text = str(gui.get("optimizer_args") or "")
    if not text.strip():
        return
    known, rest = parse_optimizer_args(text)
    for key, value in known.items():
        set_key(out, f"optimizer.{key}", value)
    if known:
        rep.map("optimizer_args", ", ".join(f"optimizer.{k}" for k in known))
    if rest:
        rep.drop("optimizer_args" if not known else "optimizer_args (rest)",
                 f"{' '.join(rest)}: no lorakit equivalent (lorakit takes weight_decay, betas and eps)")


def import_kohya_ss_gui(config: Path, out_path: Path = Path("run.toml"), family: str | None = None) -> ImportResult:
    """`lorakit import kohya_ss GUI.json -o run.toml`: the GUI config → {out_path: run.toml text} and the report."""
    try:
        return _import(Path(config), out_path, family)
    except (TypeError, ValueError, AttributeError) as exc:  # a number field holding text, a list for a string ...
        raise ConfigError(f"{config}: a value of an unexpected type ({exc}); fix it in kohya_ss (or the file) and "
                          "import again") from None


def _import(path: Path, out_path: Path, family: str | None) -> ImportResult:
    gui = read_gui_json(path)
    if not str(gui.get("pretrained_model_name_or_path") or "").strip():
        raise ConfigError(f"{path}: pretrained_model_name_or_path is empty; choose the base model in kohya_ss (or set "
                          "it in the file) and import again")
    if not str(gui.get("train_data_dir") or "").strip() and not str(gui.get("dataset_config") or "").strip():
        raise ConfigError(f"{path}: train_data_dir and dataset_config are both empty; set the image folder (the "
                          "parent of the '10_name' folders) in kohya_ss and import again")
    rep = _Report()
    fam, fam_notes = (family, []) if family else gui_family(gui, path)
    rep.notes += fam_notes
    out: dict[str, dict[str, Any]] = {}
    args: dict[str, Any] = {}
    origin: dict[str, str] = {}  # sd-scripts option → GUI key
    steps = _steps(gui, args, origin, rep)
    _warmup(gui, args, origin, steps, rep)
    _cycles(gui, args, rep)
    _learning_rates(gui, args, origin, rep)
    _network(gui, path, out, rep)
    _samples(gui, out, rep)
    _optimizer_args(gui, out, rep)
    handled = {"epoch", "max_train_epochs", "max_train_steps", "lr_warmup", "lr_warmup_steps", "learning_rate",
               "unet_lr", "text_encoder_lr", "t5xxl_lr", "sample_prompts", "sample_every_n_epochs", "LoRA_type",
               "conv_dim", "conv_alpha", "factor", "dora_wd", "optimizer_args"}
    _options(gui, fam, args, origin, handled, rep)
    kout, skipped = import_kohya_args(args, fam)
    for section, body in kout.items():
        for key, value in body.items():
            out.setdefault(section, {}).setdefault(key, value)
    out.setdefault("model", {})["family"] = fam
    _report_options(gui, args, origin, skipped, rep)
    lorakit_origin = {(_target(k, args) if k in KOHYA_KEYS else k): g for k, g in origin.items()}
    lorakit_origin.update({t: g for g, t in rep.mapped if "," not in t})
    dropped, notes = settle(out, lorakit_origin, path)
    gone = {g for g, _ in dropped}
    rep.mapped = [(g, t) for g, t in rep.mapped if g not in gone]
    rep.dropped += dropped
    rep.notes += notes
    for key in gui:
        if key not in rep.seen:
            rep.drop(key, "no lorakit equivalent")
    header = f"# imported from {path.name} by `lorakit import kohya_ss`\n"
    return ImportResult({Path(out_path): render(out, header)}, sorted(set(rep.mapped)),
                        sorted(rep.dropped), rep.notes)


def _cycles(gui: Mapping[str, Any], args: dict[str, Any], rep: _Report) -> None:
    """lr_scheduler_num_cycles, which kohya_ss passes on and sd-scripts reads with cosine_with_restarts only:
    optimizer.num_cycles there (1, its default, is one cosine decay: "cosine"); otherwise reported as a default."""
    value = gui.get("lr_scheduler_num_cycles")
    if str(gui.get("lr_scheduler", "")).lower() != "cosine_with_restarts" or value in (None, "", 0, 1):
        return
    args["lr_scheduler_num_cycles"] = value   # a bad value is refused by the validation and reported (settle)
    rep.map("lr_scheduler_num_cycles", "optimizer.num_cycles")


def _options(gui: Mapping[str, Any], fam: str, args: dict[str, Any], origin: dict[str, str], handled: set[str],
             rep: _Report) -> None:
    """The GUI keys that are sd-scripts options (same name, or renamed), as kohya_ss passes them."""
    noise_type = str(gui.get("noise_offset_type") or "Original")
    if str(gui.get("dataset_config") or "") and "train_data_dir" in gui:
        rep.drop("train_data_dir", "replaced by the dataset config (kohya_ss does the same)")
    if not int(gui.get("save_every_n_steps") or 0) and not int(gui.get("save_every_n_epochs") or 0) and \
            "save_every_n_steps" in gui:
        args["save_every_n_steps"] = 0  # both 0: kohya_ss saves only at the end
        origin["save_every_n_steps"] = "save_every_n_steps"
        handled = handled | {"save_every_n_steps"}
    for key, value in gui.items():
        if key in handled or key in rep.seen:
            continue
        opt = _RENAMED.get(key, key)
        if key in _ONLY_FOR and fam not in _ONLY_FOR[key]:
            if not _off(value):
                rep.drop(key, f"kohya_ss passes it only for {' / '.join(_ONLY_FOR[key])}, not for {fam}")
            else:
                rep.drop(key, "off or empty in kohya_ss: nothing to carry over")
            continue
        if key in ("noise_offset", "adaptive_noise_scale") and noise_type != "Original" or \
                key.startswith("multires_noise") and noise_type != "Multires":
            rep.drop(key, f"noise_offset_type is {noise_type!r}: kohya_ss does not pass it")
            continue
        box, _, rest = key.partition("_")
        if box in ("sdxl", "flux1", "sd3") and rest and not rest.endswith("checkbox"):
            if box != fam:  # e.g. sdxl_cache_text_encoder_outputs in a FLUX.1 config: kohya_ss does not pass it
                rep.drop(key, f"a setting of the {box} box; this is a {fam} config")
                continue
            if rest in KOHYA_KEYS:  # sd3_clip_l -> clip_l, flux1_cache_text_encoder_outputs -> ...
                opt = rest
        if opt not in KOHYA_KEYS:
            continue  # reported by _report_options
        if key in _ZERO_UNSET and value == 0 or value == "":
            rep.drop(key, "0: unset in kohya_ss (it does not pass it to sd-scripts), lorakit's default applies"
                     if value == 0 else _EMPTY)
            continue
        args[opt] = value
        origin[opt] = key


def _report_options(gui: Mapping[str, Any], args: Mapping[str, Any], origin: Mapping[str, str], skipped: list[str],
                    rep: _Report) -> None:
    """Mapped / dropped lines for the options that went through sd-scripts' mapping, and reasons for the rest."""
    skipped_gui = {origin.get(k, k): k for k in skipped}
    for opt, key in origin.items():
        if key in skipped_gui.keys():
            continue
        if opt in KOHYA_KEYS and opt in args:
            rep.map(key, _target(opt, args))
    for key, opt in skipped_gui.items():
        if key not in rep.seen:
            rep.drop(key, _DROP_REASONS.get(opt, "no lorakit equivalent"))
    for key, value in gui.items():
        if key in rep.seen:
            continue
        if key in _GUI_REASONS:
            rep.drop(key, _GUI_REASONS[key])
        elif key in _ZERO_UNSET and value == 0 or _off(value):
            rep.drop(key, "off or empty in kohya_ss: nothing to carry over")
        elif value in _AT_DEFAULT.get(key, ()):
            rep.drop(key, f"{value!r}: kohya_ss's default, nothing to carry over")
        else:
            rep.drop(key, f"{value!r}: no lorakit equivalent")
