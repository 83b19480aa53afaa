"""`lorakit import kohya train.sh`: an sd-scripts training command line (a shell script, a Windows .bat, the line
FluxGym writes, a pasted text file) instead of a ``--config_file`` TOML.

The command is read by :mod:`lorakit.config.cmdline`; the script's name tells the family (``sdxl_train_network.py``
→ sdxl, ``flux_train_network.py`` → flux1, ``sd3_train_network.py`` → sd3, ``train_network.py`` → sd15); the options go
through the same mapping as a TOML's (:func:`lorakit.config.kohya_import.import_kohya_flat`). What only a command line
has is translated here: ``--optimizer_args`` / ``--network_args`` item by item, ``--split_mode``, the launcher's own
options, and sd-scripts' defaults for what the line leaves out (rank 4, alpha 1, lr 2e-6, 1600 steps, fp32, saving
only at the end), which differ from lorakit's and are written with a note. The dataset TOML named by
``--dataset_config`` is referenced as today (data.config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lorakit.config.cmdline import CommandLine, read_command, typed
from lorakit.errors import ConfigError

SD_SCRIPTS = {"train_network.py": "sd15", "sdxl_train_network.py": "sdxl", "flux_train_network.py": "flux1",
              "sd3_train_network.py": "sd3"}
# sd-scripts / musubi-tuner LoRA scripts of models lorakit has no family for
NO_FAMILY = {"lumina_train_network.py": "Lumina 2", "hunyuan_image_train_network.py": "HunyuanImage",
             "anima_train_network.py": "Anima", "flux_kontext_train_network.py": "FLUX.1 Kontext (image editing)",
             "hv_train_network.py": "HunyuanVideo", "hv_1_5_train_network.py": "HunyuanVideo 1.5",
             "wan_train_network.py": "Wan", "fpack_train_network.py": "FramePack",
             "kandinsky5_train_network.py": "Kandinsky 5", "krea2_train_network.py": "Krea 2",
             "ideogram4_train_network.py": "Ideogram 4", "hidream_o1_train_network.py": "HiDream-O1",
             "flux_2_train_network_self_flow.py": "FLUX.2 self-flow training (another objective)"}
MUSUBI_SCRIPTS = {"flux_2_train_network.py": "flux2", "qwen_image_train_network.py": "qwenimage",
                  "zimage_train_network.py": "zimage"}
_FAMILIES = "lorakit trains SDXL, SD 1.5, FLUX.1, FLUX.2, SD3.5, Qwen-Image and Z-Image"
LAUNCH = "an accelerate launch setting: lorakit starts its own processes (lorakit train --gpus N, [distributed])"
# options whose values stay text even when they look like numbers
TEXT_KEYS = frozenset({"output_name", "training_comment", "resolution", "caption_extension", "model_version",
                       "pretrained_model_name_or_path", "dit", "vae", "text_encoder", "clip_l", "t5xxl", "ae", "clip_g",
                       "dataset_config", "sample_prompts", "network_weights", "optimizer_args", "network_args",
                       "lr_scheduler_args", "output_dir", "train_data_dir", "reg_data_dir", "logging_dir",
                       "conditioning_data_dir", "config_file", "log_prefix", "wandb_run_name"})
_ADAFACTOR_BUILT_IN = {"relative_step": "False", "scale_parameter": "False", "warmup_init": "False"}
# network_args items lorakit has a key for
_NETWORK_ARGS = {"conv_dim": ("network.conv_rank", int), "conv_rank": ("network.conv_rank", int),
                 "conv_alpha": ("network.conv_alpha", float), "train_blocks": ("network.train_blocks", str),
                 "train_double_block_indices": ("network.double_block_indices", str),
                 "train_single_block_indices": ("network.single_block_indices", str)}


def typed_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: typed(v, text=k in TEXT_KEYS or k.startswith("metadata_") or k.endswith(("_dir", "_path")))
            for k, v in options.items()}


def launcher_report(cmd: CommandLine) -> list[tuple[str, str]]:
    """Every option given to `accelerate launch` (or python), each named with why it is not carried over."""
    dropped = []
    for key, value in cmd.launcher.items():
        why = LAUNCH
        if key == "num_processes" and str(value).isdigit() and int(value) > 1:
            why = f"{value} processes: run `lorakit train run.toml --gpus {value}`"
        elif key == "mixed_precision":
            why = "the training script's own --mixed_precision (or its default) is what counts"
        dropped.append((f"accelerate launch --{key}", why))
    return dropped


def split_items(value: Any) -> list[str]:
    """``--optimizer_args "a=b" "c=d"`` (a list) or one string "a=b c=d" → ["a=b", "c=d"]."""
    items = value if isinstance(value, list) else [value]
    return [part for item in items if isinstance(item, str) for part in item.split()]


def optimizer_args(value: Any, optimizer: str, extra: list, dropped: list) -> None:
    from lorakit.config.kohya_ss_import import parse_optimizer_args

    items = split_items(value)
    known, rest = parse_optimizer_args(" ".join(items))
    for key, v in known.items():
        extra.append(("optimizer_args", f"optimizer.{key}", v))
    built_in = [i for i in rest if optimizer.lower() == "adafactor" and
                _ADAFACTOR_BUILT_IN.get(i.partition("=")[0]) == i.partition("=")[2]]
    if built_in:
        dropped.append(("optimizer_args (" + " ".join(built_in) + ")", "lorakit's adafactor always runs with "
                        "relative_step=False, scale_parameter=False, warmup_init=False: nothing to carry over"))
    rest = [i for i in rest if i not in built_in]
    if rest:
        dropped.append(("optimizer_args (" + " ".join(rest) + ")",
                        "no lorakit equivalent (lorakit takes weight_decay, betas and eps)"))


def network_args(value: Any, extra: list, dropped: list) -> None:
    for item in split_items(value):
        key, _, v = item.partition("=")
        if key in _NETWORK_ARGS:
            target, convert = _NETWORK_ARGS[key]
            try:
                extra.append((f"network_args ({item})", target, convert(v)))
                continue
            except ValueError:
                pass
        dropped.append((f"network_args ({item})", "no lorakit equivalent (lorakit takes conv_dim, conv_alpha, "
                        "train_blocks and the block indices; set other network.* keys by hand)"))


def defaults(flat: Mapping[str, Any], trainer: str, extra: list, notes: list,
             mixed_precision: str | None = None) -> None:
    """What the trainer does when the command line leaves an option out, where lorakit's default differs."""
    def put(target: str, value: Any, why: str) -> None:
        extra.append((None, target, value))
        notes.append(f"{why}: {owner} default {value!r} was written ({target})")

    owner = trainer + ("'" if trainer.endswith("s") else "'s")

    if "network_dim" not in flat and "network_weights" not in flat:
        put("network.rank", 4, "--network_dim is not given")
    if "network_alpha" not in flat:
        put("network.alpha", 1.0, "--network_alpha is not given")
    if "learning_rate" not in flat and "unet_lr" not in flat:
        put("optimizer.lr", 2e-6, "--learning_rate is not given")
    if "max_train_steps" not in flat and "max_train_epochs" not in flat:
        put("training.max_steps", 1600, "--max_train_steps is not given")
    if "mixed_precision" not in flat:
        put("training.mixed_precision", mixed_precision or "no",
            "--mixed_precision is not given" + (" (accelerate launch's applies)" if mixed_precision else
                                                 ", so the training runs in float32"))
    if "save_every_n_steps" not in flat and "save_every_n_epochs" not in flat:
        put("save.every_n_steps", 0, "--save_every_n_steps / --save_every_n_epochs are not given, so only the "
                                     "final LoRA is saved")
    # the text encoder (trained unless network_train_unet_only, as sd-scripts does): kohya_import._text_encoder, for
    # every import path
    if "train_data_dir" in flat and "caption_extension" not in flat and "dataset_config" not in flat:
        extra.append((None, "data.caption_extension", ".caption"))
        notes.append("--caption_extension is not given: sd-scripts then reads <image>.caption files; written as "
                     "data.caption_extension = \".caption\" (pass .txt if your captions are .txt files)")
    if "seed" not in flat:
        notes.append(f"--seed is not given: {trainer} then draws a random seed; lorakit uses training.seed = 42")


def near(flat: dict[str, Any], path: Path) -> None:
    """A relative --dataset_config / --sample_prompts found next to the script is written as that file's path."""
    for key in ("dataset_config", "sample_prompts", "config_file"):
        value = flat.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (path.parent / value).exists():
            flat[key] = str((path.parent / value).resolve())


def _family(cmd: CommandLine, family: str | None) -> tuple[str, list[str]]:
    from lorakit.config.importing import file_family

    script = cmd.script
    if script in MUSUBI_SCRIPTS or script.replace("_network", "") in ("qwen_image_train.py", "zimage_train.py"):
        raise ConfigError(f"{cmd.path}: a musubi-tuner command ({script}); import it with `lorakit import musubi "
                          f"{cmd.path}`")
    if script in NO_FAMILY:
        raise ConfigError(f"{cmd.path}: {script} trains {NO_FAMILY[script]}: lorakit has no such family "
                          f"({_FAMILIES})")
    if script not in SD_SCRIPTS:
        raise ConfigError(f"{cmd.path}: {script} is not an sd-scripts LoRA training script (a full fine-tune or "
                          "another kind of training?); lorakit trains LoRAs: import a *train_network.py command")
    if cmd.options.get("v2") is True:
        raise ConfigError(f"{cmd.path}: --v2 (Stable Diffusion 2.x): lorakit has no SD 2 family")
    if family:
        return family, []
    named = SD_SCRIPTS[script]
    model = cmd.options.get("pretrained_model_name_or_path")
    header = file_family(model)
    if header and header != named:
        return header, [f"{script} trains {named}, but {model} is a {header} checkpoint (its header): "
                        f"model.family = {header!r} was written"]
    return named, []


def import_kohya_command(path: Path, dataset: Path | None = None, family: str | None = None
                         ) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    from lorakit.config.kohya_import import import_kohya_flat

    cmd = read_command(path)
    fam, notes = _family(cmd, family)
    notes = cmd.notes + notes
    flat = typed_options(cmd.options)
    dropped = launcher_report(cmd) + [(f"(positional) {tok}", "sd-scripts takes no positional arguments")
                                      for tok in cmd.positional]
    extra: list = []
    if "config_file" in flat:
        from lorakit.config.kohya_import import flatten_kohya
        from lorakit.config.toml_io import read_toml

        conf = Path(str(flat.pop("config_file")))
        conf = conf if conf.suffix == ".toml" else conf.with_name(conf.name + ".toml")
        found = next((c for c in (conf, path.parent / conf) if c.is_file()), None)
        if found is None:
            raise ConfigError(f"{path}: --config_file {conf} not found (looked in the working folder and next to "
                              f"{path.name}); import the config TOML with the command line's other options added")
        flat = {**flatten_kohya(read_toml(found, str(found))), **flat}  # the command line wins, as in sd-scripts
        extra_note = f"--config_file {found} was read; the command line's own options win over it"
        notes.append(extra_note)
    near(flat, path)
    if "optimizer_args" in flat:
        optimizer_args(flat.pop("optimizer_args"), str(flat.get("optimizer_type", "")), extra, dropped)
    if "network_args" in flat:
        network_args(flat.pop("network_args"), extra, dropped)
    if flat.pop("split_mode", None) is True:
        extra.append(("split_mode", "network.train_blocks", "single"))
    defaults(flat, "sd-scripts", extra, notes)
    return import_kohya_flat(flat, path, dataset, fam, extra=extra, dropped_first=dropped, notes_first=notes)
