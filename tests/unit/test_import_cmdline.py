"""`lorakit import kohya train.sh|train.bat` (an sd-scripts / FluxGym training command line) and `lorakit import musubi`
(kohya-ss/musubi-tuner command lines + its dataset TOML): exact translated values, every option reported (mapped or
not carried over with its reason), the defaults that differ from lorakit's written with a note, the refusals, and
outputs lorakit's loaders accept. The examples follow the real formats: FluxGym's generated train.sh / train.bat,
sd-scripts' argparse options, musubi-tuner's docs/flux_2.md, docs/qwen_image.md, docs/dataset_config.md and
training/parser_common.py."""

from __future__ import annotations

import tomllib

import pytest
from PIL import Image

from lorakit.cli import main
from lorakit.config.load import load_config

# FluxGym's train.sh for a FLUX.1-dev LoRA (its gen_sh output; 16 GB preset)
_FLUXGYM_SH = """\
accelerate launch \\
  --mixed_precision bf16 \\
  --num_cpu_threads_per_process 1 \\
  sd-scripts/flux_train_network.py \\
  --pretrained_model_name_or_path "/home/u/fluxgym/models/unet/flux1-dev.sft" \\
  --clip_l "/home/u/fluxgym/models/clip/clip_l.safetensors" \\
  --t5xxl "/home/u/fluxgym/models/clip/t5xxl_fp16.safetensors" \\
  --ae "/home/u/fluxgym/models/vae/ae.sft" \\
  --cache_latents_to_disk \\
  --save_model_as safetensors \\
  --sdpa --persistent_data_loader_workers \\
  --max_data_loader_n_workers 2 \\
  --seed 42 \\
  --gradient_checkpointing \\
  --mixed_precision bf16 \\
  --save_precision bf16 \\
  --network_module networks.lora_flux \\
  --network_dim 4 \\
  --optimizer_type adafactor \\
  --optimizer_args "relative_step=False" "scale_parameter=False" "warmup_init=False" \\
  --split_mode \\
  --network_args "train_blocks=single" \\
  --lr_scheduler constant_with_warmup \\
  --max_grad_norm 0.0 \\
  --sample_prompts="/home/u/fluxgym/outputs/ohwx/sample_prompts.txt" --sample_every_n_steps="200" \\
  --learning_rate 8e-4 \\
  --cache_text_encoder_outputs \\
  --cache_text_encoder_outputs_to_disk \\
  --fp8_base \\
  --highvram \\
  --max_train_epochs 16 \\
  --save_every_n_epochs 4 \\
  --dataset_config "dataset.toml" \\
  --output_dir "/home/u/fluxgym/outputs/ohwx" \\
  --output_name ohwx \\
  --timestep_sampling shift \\
  --discrete_flow_shift 3.1582 \\
  --model_prediction_type raw \\
  --guidance_scale 1 \\
  --loss_type l2
"""
# FluxGym's dataset.toml (sd-scripts' schema, read by lorakit as it is)
_FLUXGYM_DATASET = """\
[general]
shuffle_caption = false
caption_extension = '.txt'
keep_tokens = 1

[[datasets]]
resolution = 512
batch_size = 1
keep_tokens = 1

  [[datasets.subsets]]
  image_dir = '{images}'
  class_tokens = 'ohwx'
  num_repeats = 10
"""


def _images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("ohwx, a photo")
    return folder


def test_fluxgym_train_sh_becomes_a_run_toml_lorakit_loads(tmp_path, capsys):
    (tmp_path / "dataset.toml").write_text(_FLUXGYM_DATASET.format(images=_images(tmp_path / "ohwx")))
    script, out = tmp_path / "train.sh", tmp_path / "run.toml"
    script.write_text(_FLUXGYM_SH)
    assert main(["import", "kohya", str(script), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = tomllib.loads(out.read_text())
    assert doc["model"] == {"family": "flux1", "checkpoint": "/home/u/fluxgym/models/unet/flux1-dev.sft",
                            "clip_l": "/home/u/fluxgym/models/clip/clip_l.safetensors",
                            "t5xxl": "/home/u/fluxgym/models/clip/t5xxl_fp16.safetensors",
                            "ae": "/home/u/fluxgym/models/vae/ae.sft"}
    # alpha: sd-scripts' default 1; CLIP-L's LoRA trains (no --network_train_unet_only: sd-scripts trains it with T5's
    # outputs cached, lorakit keeps the encoders loaded)
    assert doc["network"] == {"rank": 4, "alpha": 1.0, "train_blocks": "single", "train_text_encoder": True}
    assert doc["optimizer"] == {"name": "adafactor", "scheduler": "constant", "max_grad_norm": 0.0, "lr": 0.0008}
    assert doc["training"] == {"seed": 42, "mixed_precision": "bf16", "max_epochs": 16, "timestep_sampling": "shift",
                               "discrete_flow_shift": 3.1582, "guidance_scale": 1, "loss": "l2"}
    assert doc["memory"] == {"gradient_checkpointing": True, "fp8_base": True}
    assert doc["save"] == {"precision": "bf16", "every_n_epochs": 4, "dir": "/home/u/fluxgym/outputs/ohwx",
                           "name": "ohwx"}
    assert doc["sample"] == {"prompts_file": "/home/u/fluxgym/outputs/ohwx/sample_prompts.txt", "every_n_steps": 200}
    assert doc["data"]["config"] == str(tmp_path / "dataset.toml")  # relative: found next to the script
    cfg = load_config(out)
    assert cfg.network.alpha == 1.0 and cfg.data.config == str(tmp_path / "dataset.toml")
    assert "mapped   split_mode -> network.train_blocks" in lines
    assert "mapped   network_args (train_blocks=single) -> network.train_blocks" in lines
    assert "mapped   sample_every_n_steps -> sample.every_n_steps" in lines
    assert "dropped  accelerate launch --num_cpu_threads_per_process: an accelerate launch setting: lorakit starts " \
           "its own processes (lorakit train --gpus N, [distributed])" in lines
    assert "dropped  optimizer_args (relative_step=False scale_parameter=False warmup_init=False): lorakit's " \
           "adafactor always runs with relative_step=False, scale_parameter=False, warmup_init=False: nothing to " \
           "carry over" in lines
    assert "dropped  highvram: placement is planned by memory.vram_gb" in lines
    assert "dropped  network_module: 'networks.lora_flux': read to choose model.family" in lines
    assert any(line.startswith("dropped  model_prediction_type: lorakit's FLUX.1 objective uses the model's raw "
                               "prediction") for line in lines)
    assert "note: --network_alpha is not given: sd-scripts' default 1.0 was written (network.alpha)" in lines
    reported = {line.split()[1].rstrip(":") for line in lines if line.startswith(("mapped ", "dropped "))}
    options = {tok[2:].split("=")[0] for tok in _FLUXGYM_SH.split() if tok.startswith("--")}
    launcher = {"mixed_precision", "num_cpu_threads_per_process"}
    assert options - launcher <= reported | {"optimizer_args", "network_args"}  # every option named


_SDXL_BAT = """\
@echo off
REM my SDXL character LoRA
set MODELS=C:\\sd\\models
cd /d C:\\sd\\sd-scripts
call venv\\Scripts\\activate
accelerate launch --num_processes 2 --multi_gpu ^
  sdxl_train_network.py extra_token ^
  --pretrained_model_name_or_path="%MODELS%\\sd_xl_base_1.0.safetensors" ^
  --train_data_dir "C:\\sd\\train\\img" ^
  --resolution "1024,1024" --enable_bucket ^
  --network_module networks.lora --network_dim 32 --network_alpha 16 ^
  --network_args "conv_dim=8" "conv_alpha=4" "algo=locon" ^
  --optimizer_type AdamW8bit --optimizer_args "weight_decay=0.05" "betas=0.9,0.99" "decouple=True" ^
  --unet_lr 1e-4 --text_encoder_lr 5e-5 ^
  --output_dir "C:\\sd\\out" --output_name ohwx-xl ^
  --no_half_vae
"""


def test_windows_bat_with_carets_and_the_defaults_sd_scripts_applies(tmp_path, capsys):
    script, out = tmp_path / "train.bat", tmp_path / "run.toml"
    script.write_text(_SDXL_BAT.replace("\n", "\r\n"))
    assert main(["import", "kohya", str(script), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = tomllib.loads(out.read_text())
    assert doc["model"] == {"family": "sdxl", "checkpoint": "C:\\sd\\models\\sd_xl_base_1.0.safetensors"}
    assert doc["data"] == {"dir": "C:\\sd\\train\\img", "resolution": 1024, "enable_bucket": True,
                           "caption_extension": ".caption"}
    assert doc["network"] == {"rank": 32, "alpha": 16, "text_encoder_lr": 5e-05, "conv_rank": 8, "conv_alpha": 4.0,
                              "train_text_encoder": True}
    assert doc["optimizer"] == {"name": "adamw8bit", "lr": 0.0001, "weight_decay": 0.05, "betas": [0.9, 0.99]}
    # sd-scripts' defaults where the line says nothing (lorakit's differ): 1600 steps, fp32, save only at the end
    assert doc["training"] == {"max_steps": 1600, "mixed_precision": "no"}
    assert doc["save"] == {"dir": "C:\\sd\\out", "name": "ohwx-xl", "every_n_steps": 0}
    load_config(out)
    assert "dropped  accelerate launch --num_processes: 2 processes: run `lorakit train run.toml --gpus 2`" in lines
    assert "dropped  network_args (algo=locon): no lorakit equivalent (lorakit takes conv_dim, conv_alpha, " \
           "train_blocks and the block indices; set other network.* keys by hand)" in lines
    assert "dropped  optimizer_args (decouple=True): no lorakit equivalent (lorakit takes weight_decay, betas and " \
           "eps)" in lines
    assert "dropped  (positional) extra_token: sd-scripts takes no positional arguments" in lines
    assert "dropped  no_half_vae: no lorakit equivalent" in lines
    assert "note: --max_train_steps is not given: sd-scripts' default 1600 was written (training.max_steps)" in lines
    assert "note: --mixed_precision is not given, so the training runs in float32: sd-scripts' default 'no' was " \
           "written (training.mixed_precision)" in lines
    assert any(line.startswith("note: --caption_extension is not given: sd-scripts then reads <image>.caption")
               for line in lines)
    assert any(ln.startswith("note: network_train_unet_only is not set, so sd-scripts trains a LoRA on the text encoder "
                             "too (its default): written as network.train_text_encoder = true") for ln in lines), lines
    assert "note: --seed is not given: sd-scripts then draws a random seed; lorakit uses training.seed = 42" in lines


@pytest.mark.parametrize("text, name, message", [
    ("cd sd-scripts\nsource venv/bin/activate\n", "train.sh", "no training command found (no *train_network.py "
     "line); pass the script or text file whose command runs the training"),
    ("python flux_train_network.py --network_dim 4\npython sdxl_train_network.py --network_dim 8\n", "train.sh",
     "2 training commands (line 1 (flux_train_network.py), line 2 (sdxl_train_network.py)); keep the one to import"),
    ("accelerate launch flux_2_train_network.py --dit a.safetensors\n", "run.txt",
     "a musubi-tuner command (flux_2_train_network.py); import it with `lorakit import musubi"),
    ("python lumina_train_network.py --network_dim 4\n", "train.sh", "lumina_train_network.py trains Lumina 2: "
     "lorakit has no such family"),
    ("python train_network.py --v2 --network_dim 4\n", "train.sh", "--v2 (Stable Diffusion 2.x): lorakit has no SD 2 "
     "family"),
    ("python sdxl_train.py --learning_rate 1e-6\n", "train.sh", "sdxl_train.py is not an sd-scripts LoRA training "
     "script (a full fine-tune or another kind of training?)"),
    ('python flux_train_network.py --output_name "ohwx\n', "train.sh", "line 1: cannot split the command line (No "
     "closing quotation: an unclosed quote?); fix the quotes and import again"),
])
def test_command_line_refusals_name_the_file_and_what_to_do(tmp_path, capsys, text, name, message):
    script, out = tmp_path / name, tmp_path / "run.toml"
    script.write_text(text)
    assert main(["import", "kohya", str(script), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(script) in err[0] and message in err[0] and not out.exists()


# --------------------------------------------------------------------------------------------- musubi-tuner

# docs/flux_2.md's training command for Klein base 4B, as a user's script with the cache steps before it
_KLEIN_SH = """\
#!/bin/bash
python src/musubi_tuner/flux_2_cache_latents.py --dataset_config dataset.toml --vae /models/ae.safetensors \\
    --model_version klein-base-4b
python src/musubi_tuner/flux_2_cache_text_encoder_outputs.py --dataset_config dataset.toml \\
    --text_encoder /models/qwen3/model-00001-of-00002.safetensors --batch_size 16 --model_version klein-base-4b

MODELS=/models
accelerate launch --num_cpu_threads_per_process 1 --mixed_precision bf16 src/musubi_tuner/flux_2_train_network.py \\
    --model_version klein-base-4b \\
    --dit $MODELS/flux2-klein-base-4b.safetensors \\
    --vae ${MODELS}/ae.safetensors \\
    --text_encoder "$MODELS/qwen3/model-00001-of-00002.safetensors" \\
    --dataset_config dataset.toml \\
    --sdpa --mixed_precision bf16 \\
    --timestep_sampling flux2_shift --weighting_scheme none \\
    --optimizer_type adamw8bit --learning_rate 1e-4 --gradient_checkpointing \\
    --max_data_loader_n_workers 2 --persistent_data_loader_workers \\
    --network_module networks.lora_flux_2 --network_dim 32 --network_alpha 16 \\
    --fp8_base --fp8_scaled --blocks_to_swap 8 \\
    --max_train_epochs 16 --save_every_n_epochs 1 --seed 42 \\
    --output_dir output --output_name klein-ohwx
"""
_KLEIN_DATASET = """\
[general]
resolution = [1024, 1024]
caption_extension = ".txt"
batch_size = 1
enable_bucket = true
bucket_no_upscale = false

[[datasets]]
image_directory = "images"
cache_directory = "cache"
num_repeats = 10
"""


def test_musubi_flux2_klein_command_and_dataset_toml(tmp_path, capsys):
    from lorakit.data.kohya_toml import load_dataset_toml

    _images(tmp_path / "images", 3)
    (tmp_path / "dataset.toml").write_text(_KLEIN_DATASET)
    script, out = tmp_path / "train_klein.sh", tmp_path / "run.toml"
    script.write_text(_KLEIN_SH)
    assert main(["import", "musubi", str(script), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = tomllib.loads(out.read_text())
    assert doc["model"] == {"family": "flux2", "checkpoint": "/models/flux2-klein-base-4b.safetensors",
                            "ae": "/models/ae.safetensors",
                            "text_encoder": "/models/qwen3/model-00001-of-00002.safetensors", "variant": "base"}
    assert doc["network"] == {"rank": 32, "alpha": 16}
    assert doc["optimizer"] == {"name": "adamw8bit", "lr": 0.0001}
    assert doc["training"] == {"mixed_precision": "bf16", "max_epochs": 16, "seed": 42,
                               "timestep_sampling": "flux_shift"}
    assert doc["memory"] == {"gradient_checkpointing": True, "fp8_base": True, "blocks_to_swap": 8}
    assert doc["save"] == {"every_n_epochs": 1, "dir": "output", "name": "klein-ohwx"}
    assert doc["data"] == {"config": str(tmp_path / "run.dataset.toml")}
    ds = tomllib.loads((tmp_path / "run.dataset.toml").read_text())
    assert ds == {"general": {"resolution": [1024, 1024], "caption_extension": ".txt", "batch_size": 1,
                              "enable_bucket": True, "bucket_no_upscale": False},
                  "datasets": [{"subsets": [{"image_dir": str(tmp_path / "images"), "num_repeats": 10}]}]}
    cfg = load_config(out)
    groups, subsets = load_dataset_toml(cfg.data.config, cfg.data)  # lorakit reads the translated dataset
    assert [(s.dir, s.repeats, s.caption_extension) for s in subsets] == [(tmp_path / "images", 10, ".txt")]
    assert groups[0].buckets.enable_bucket is True and groups[0].batch_size == 1
    assert "mapped   dit -> model.checkpoint" in lines and "mapped   vae -> model.ae" in lines
    assert "mapped   model_version -> model.variant" in lines
    assert "mapped   timestep_sampling -> training.timestep_sampling" in lines
    assert "dropped  fp8_scaled: read with --fp8_base: lorakit's memory.fp8_base is its one fp8 storage switch" in lines
    assert "dropped  weighting_scheme: 'none': lorakit weights every timestep alike too" in lines
    assert "dropped  network_module: 'networks.lora_flux_2': read to choose model.family" in lines
    assert "dropped  dataset.toml: datasets[0].cache_directory: lorakit keeps its own caches (keyed by each image's " \
           "content) under data.cache_dir; musubi's cache files are not read" in lines
    assert "note: lines running flux_2_cache_latents.py, flux_2_cache_text_encoder_outputs.py were not read (only " \
           "the training command, flux_2_train_network.py, holds the training settings)" in lines
    reported = {line.split()[1].rstrip(":") for line in lines if line.startswith(("mapped ", "dropped "))}
    train_part = _KLEIN_SH.split("flux_2_train_network.py", 1)[1]
    assert {t[2:] for t in train_part.split() if t.startswith("--")} <= reported  # every option named


# docs/qwen_image.md's command, written by a user who left out network_alpha, mixed precision on the script and
# the dataset's resolution
_QWEN_SH = """\
accelerate launch --num_cpu_threads_per_process 1 --mixed_precision bf16 src/musubi_tuner/qwen_image_train_network.py \\
    --dit /m/qwen_image_bf16.safetensors \\
    --vae /m/qwen_image_vae.safetensors \\
    --text_encoder /m/qwen_2.5_vl_7b.safetensors \\
    --model_version original \\
    --dataset_config {dataset} \\
    --sdpa --fp8_vl \\
    --timestep_sampling qwen_shift \\
    --weighting_scheme logit_normal --discrete_flow_shift 2.2 \\
    --optimizer_type adamw8bit --learning_rate 5e-5 --gradient_checkpointing \\
    --network_module networks.lora_qwen_image \\
    --network_dim 16 --network_args "loraplus_lr_ratio=4" \\
    --max_train_steps 2000 --save_every_n_steps 500 --seed 7 \\
    --output_dir out --output_name qwen-style
"""
_QWEN_DATASET = """\
[general]
caption_extension = ".txt"
batch_size = 2

[[datasets]]
image_directory = "{a}"
num_repeats = 2

[[datasets]]
image_directory = "{b}"
resolution = 768
batch_size = 1
fp_latent_window_size = 9
"""


def test_musubi_qwen_image_with_musubis_own_defaults(tmp_path, capsys):
    from lorakit.config.musubi_import import import_musubi
    from lorakit.data.kohya_toml import load_dataset_toml

    a, b = _images(tmp_path / "a"), _images(tmp_path / "b")
    dataset = tmp_path / "qwen_dataset.toml"
    dataset.write_text(_QWEN_DATASET.format(a=a, b=b))
    script = tmp_path / "qwen.txt"
    script.write_text(_QWEN_SH.format(dataset=dataset))
    res = import_musubi(script, tmp_path / "qwen.toml")
    doc = tomllib.loads(res.text)
    assert doc["model"] == {"family": "qwenimage", "checkpoint": "/m/qwen_image_bf16.safetensors",
                            "vae": "/m/qwen_image_vae.safetensors", "text_encoder": "/m/qwen_2.5_vl_7b.safetensors"}
    assert doc["network"] == {"rank": 16, "alpha": 1.0}  # musubi's default network_alpha 1
    # accelerate launch's --mixed_precision counts in musubi when the script's own is not given
    assert doc["training"] == {"max_steps": 2000, "seed": 7, "timestep_sampling": "flux_shift",
                               "mixed_precision": "bf16"}
    # qwen_shift is Qwen-Image's dynamic shift (lorakit's flux_shift there), which ignores discrete_flow_shift
    assert ("discrete_flow_shift", "2.2 not carried over, lorakit refuses it (training.discrete_flow_shift: only has "
            "an effect with training.timestep_sampling = \"shift\"; remove it or set that too)") in res.dropped
    assert doc["save"] == {"every_n_steps": 500, "dir": "out", "name": "qwen-style"}
    files = list(res.files)
    ds = tomllib.loads(res.files[files[1]])
    assert ds["general"] == {"caption_extension": ".txt", "batch_size": 2, "resolution": [960, 544],
                             "enable_bucket": False}
    assert ds["datasets"] == [{"subsets": [{"image_dir": str(a), "num_repeats": 2}]},
                              {"resolution": 768, "batch_size": 1, "subsets": [{"image_dir": str(b)}]}]
    assert ("qwen_dataset.toml: datasets[1].fp_latent_window_size", "FramePack only") in res.dropped
    assert ("weighting_scheme", "'logit_normal': lorakit weights every timestep alike (no loss weighting scheme)") \
        in res.dropped
    assert ("fp8_vl", "lorakit runs the text encoder once before training and caches its outputs") in res.dropped
    assert ("model_version", "'original': Qwen-Image, the model lorakit trains") in res.dropped
    assert ("network_args (loraplus_lr_ratio=4)", "no lorakit equivalent (lorakit takes conv_dim, conv_alpha, "
            "train_blocks and the block indices; set other network.* keys by hand)") in res.dropped
    assert ("accelerate launch --mixed_precision", "training.mixed_precision") in res.mapped
    assert "--network_alpha is not given: musubi-tuner's default 1.0 was written (network.alpha)" in res.notes
    assert "qwen_dataset.toml: resolution is not set: musubi-tuner's default [960, 544] (width, height) was " \
           "written" in res.notes
    for path, text in res.files.items():
        path.write_text(text)
    cfg = load_config(files[0])
    groups, subsets = load_dataset_toml(cfg.data.config, cfg.data)
    assert [g.batch_size for g in groups] == [2, 1] and [s.repeats for s in subsets] == [2, 1]
    assert [g.buckets.enable_bucket for g in groups] == [False, False]


@pytest.mark.parametrize("edit, message", [
    (lambda s, d: (s.replace("--model_version original", "--model_version edit-2511"), d),
     "--model_version edit-2511 trains Qwen-Image-Edit / -Layered (with control or layer images); lorakit trains "
     "Qwen-Image text-to-image LoRAs"),
    (lambda s, d: (s, d + 'control_directory = "/ctl"\n'), "datasets[1].control_directory: control (reference) "
     "images train an editing LoRA; lorakit trains text-to-image LoRAs: remove it to train on the images alone"),
    (lambda s, d: (s, d.replace('image_directory = "', 'image_jsonl_file = "', 1)), "datasets[0].image_jsonl_file: "
     "lorakit reads image folders with caption files, not a metadata JSONL file"),
    (lambda s, d: (s.replace("qwen_image_train_network.py", "wan_train_network.py"), d),
     "wan_train_network.py trains Wan: lorakit has no such family"),
    (lambda s, d: (s.replace("qwen_image_train_network.py", "qwen_image_train.py"), d),
     "qwen_image_train.py is musubi-tuner's full fine-tune, not LoRA training"),
    (lambda s, d: (s.replace("src/musubi_tuner/qwen_image_train_network.py", "sdxl_train_network.py"), d),
     "an sd-scripts command (sdxl_train_network.py); import it with `lorakit import kohya"),
    (lambda s, d: (s.replace("--dataset_config", "--dataset_configs"), d),
     "no --dataset_config (musubi-tuner reads its images only from a dataset TOML); add it to the command or pass "
     "--dataset DATASET.toml"),
])
def test_musubi_refusals_name_the_file_and_what_to_do(tmp_path, capsys, edit, message):
    dataset = tmp_path / "dataset.toml"
    script_text, dataset_text = edit(_QWEN_SH.format(dataset=dataset), _QWEN_DATASET.format(a="/a", b="/b"))
    dataset.write_text(dataset_text)
    script, out = tmp_path / "train.sh", tmp_path / "run.toml"
    script.write_text(script_text)
    assert main(["import", "musubi", str(script), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not out.exists() and not (tmp_path / "run.dataset.toml").exists()


def test_musubi_never_overwrites_and_loha_is_read_as_the_network_type(tmp_path, capsys):
    from lorakit.config.musubi_import import import_musubi

    dataset = tmp_path / "dataset.toml"
    dataset.write_text(_QWEN_DATASET.format(a=_images(tmp_path / "a"), b=_images(tmp_path / "b")))
    script = tmp_path / "train.sh"
    script.write_text(_QWEN_SH.format(dataset=dataset).replace("networks.lora_qwen_image", "networks.loha"))
    res = import_musubi(script, tmp_path / "run.toml")
    assert "type" not in tomllib.loads(res.text)["network"]  # networks.loha -> network.type, which Qwen-Image lacks
    assert ("network_module", "'loha' not carried over, lorakit refuses it (network.type: \"loha\" is built for sdxl "
            "and sd15 (kohya/LyCORIS names); qwenimage trains \"lora\" only for now)") in res.dropped
    (tmp_path / "run.dataset.toml").write_text("# mine\n")
    assert main(["import", "musubi", str(script), "-o", str(tmp_path / "run.toml")]) == 2
    assert "run.dataset.toml: already exists; choose another -o" in capsys.readouterr().err
    assert (tmp_path / "run.dataset.toml").read_text() == "# mine\n" and not (tmp_path / "run.toml").exists()


def test_a_kohya_toml_gets_sd_scripts_defaults_too(tmp_path, capsys):
    """A --config_file TOML is the same option namespace as a command line: what it leaves out is sd-scripts'
    default (alpha 1, not lorakit's 16, which would scale the LoRA 16x)."""
    config, out = tmp_path / "config.toml", tmp_path / "run.toml"
    config.write_text('[model]\npretrained_model_name_or_path = "/m/sd_xl_base_1.0.safetensors"\n'
                      'network_module = "networks.lora"\nnetwork_dim = 16\n[training]\nmax_train_steps = 800\n'
                      'learning_rate = 1e-4\nmixed_precision = "bf16"\nsave_every_n_steps = 200\n'
                      'network_train_unet_only = true\ntrain_data_dir = "/data/img"\ncaption_extension = ".txt"\n')
    assert main(["import", "kohya", str(config), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = tomllib.loads(out.read_text())
    assert doc["network"] == {"rank": 16, "train_text_encoder": False, "alpha": 1.0}
    assert doc["training"] == {"max_steps": 800, "mixed_precision": "bf16"}
    assert "note: --network_alpha is not given: sd-scripts' default 1.0 was written (network.alpha)" in lines
    assert load_config(out).network.alpha == 1.0


# --------------------------------------------------------------------------------------------- OneTrainer

def _onetrainer_sdxl(images) -> dict:
    """A OneTrainer UI save of its '#sdxl 1.0 LoRA' preset (key names, enums and defaults of TrainConfig.py)."""
    return {
        "__version": 10, "training_method": "LORA", "model_type": "STABLE_DIFFUSION_XL_10_BASE", "debug_mode": False,
        "workspace_dir": "workspace/run", "cache_dir": "workspace-cache/run", "tensorboard": True,
        "continue_last_backup": False, "base_model_name": "stabilityai/stable-diffusion-xl-base-1.0",
        "output_dtype": "FLOAT_16", "output_model_format": "SAFETENSORS",
        "output_model_destination": "models/ohwx-xl.safetensors", "compile": False,
        "concept_file_name": "training_concepts/concepts.json",
        "concepts": [{"name": "ohwx", "path": str(images), "enabled": True, "type": "STANDARD",
                      "include_subdirectories": False, "balancing": 4.0, "balancing_strategy": "REPEATS",
                      "loss_weight": 1.0, "seed": 123, "image_variations": 1, "text_variations": 1,
                      "image": {"enable_crop_jitter": True, "enable_random_flip": True, "enable_fixed_flip": False,
                                "enable_random_rotate": False, "random_rotate_max_angle": 0.0,
                                "enable_resolution_override": False, "resolution_override": "512"},
                      "text": {"prompt_source": "sample", "prompt_path": "", "enable_tag_shuffling": True,
                               "tag_delimiter": ",", "keep_tags_count": 1, "tag_dropout_enable": False,
                               "tag_dropout_mode": "FULL", "tag_dropout_probability": 0.0,
                               "caps_randomize_enable": False}},
                     {"name": "val", "path": "/data/val", "enabled": True, "type": "VALIDATION"}],
        "aspect_ratio_bucketing": True, "latent_caching": True, "learning_rate_scheduler": "COSINE",
        "learning_rate": 0.0003, "learning_rate_warmup_steps": 200.0, "learning_rate_cycles": 1.0, "epochs": 30,
        "batch_size": 4, "gradient_accumulation_steps": 1, "ema": "OFF", "ema_decay": 0.999,
        "train_dtype": "BFLOAT_16", "resolution": "1024", "attention_mechanism": "SDP", "mse_strength": 1.0,
        "mae_strength": 0.0, "huber_strength": 0.0, "clip_grad_norm": 1.0, "offset_noise_weight": 0.05,
        "perturbation_noise_weight": 0.0, "timestep_distribution": "UNIFORM", "dynamic_timestep_shifting": False,
        "unet": {"train": True, "learning_rate": None, "weight_dtype": "FLOAT_16", "gradient_checkpointing": True,
                 "stop_training_after": None},
        "text_encoder": {"train": False, "weight_dtype": "FLOAT_16", "learning_rate": None},
        "text_encoder_2": {"train": False, "weight_dtype": "FLOAT_16"},
        "vae": {"weight_dtype": "FLOAT_32"},
        "masked_training": False, "peft_type": "LORA", "lora_rank": 32, "lora_alpha": 16.0, "lora_decompose": False,
        "optimizer": {"optimizer": "ADAMW_8BIT", "beta1": 0.9, "beta2": 0.999, "eps": 1e-08, "weight_decay": 0.01,
                      "amsgrad": False, "is_paged": False, "min_8bit_size": 4096, "stochastic_rounding": True},
        "sample_after": 250, "sample_after_unit": "STEP",
        "samples": [{"enabled": True, "prompt": "ohwx woman, portrait", "width": 1024, "height": 1024, "seed": 42},
                    {"enabled": False, "prompt": "not this one"}],
        "save_every": 5, "save_every_unit": "EPOCH", "save_filename_prefix": "",
        "secrets": {"huggingface_token": "hf_x"},
    }


def test_onetrainer_sdxl_lora_config_becomes_run_and_dataset_toml(tmp_path, capsys):
    import json

    from lorakit.data.kohya_toml import load_dataset_toml

    cfg_json = _onetrainer_sdxl(_images(tmp_path / "ohwx"))
    src, out = tmp_path / "ohwx.json", tmp_path / "run.toml"
    src.write_text(json.dumps(cfg_json, indent=4))
    assert main(["import", "onetrainer", str(src), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = tomllib.loads(out.read_text())
    assert doc["model"] == {"family": "sdxl", "checkpoint": "stabilityai/stable-diffusion-xl-base-1.0"}
    assert doc["network"] == {"train_text_encoder": False, "rank": 32, "alpha": 16.0}
    assert doc["optimizer"] == {"name": "adamw8bit", "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.01,
                                "lr": 0.0003, "scheduler": "cosine", "warmup_steps": 200, "max_grad_norm": 1.0}
    assert doc["training"] == {"max_epochs": 30, "batch_size": 4, "gradient_accumulation": 1,
                               "mixed_precision": "bf16", "noise_offset": 0.05, "loss": "l2"}
    assert doc["save"] == {"every_n_epochs": 5, "precision": "fp16", "dir": "models", "name": "ohwx-xl"}
    assert doc["sample"] == {"prompts": ["ohwx woman, portrait"], "every_n_steps": 250}
    assert doc["data"] == {"config": str(tmp_path / "run.dataset.toml"), "resolution": 1024, "enable_bucket": True}
    assert doc["memory"] == {"gradient_checkpointing": True, "compile": False}
    ds = tomllib.loads((tmp_path / "run.dataset.toml").read_text())
    assert ds["datasets"][0]["subsets"] == [{"image_dir": str(tmp_path / "ohwx"), "caption_extension": ".txt",
                                             "num_repeats": 4, "shuffle_caption": True, "keep_tokens": 1,
                                             "caption_separator": ",", "flip_aug": True}]
    cfg = load_config(out)
    _, subsets = load_dataset_toml(cfg.data.config, cfg.data)
    assert [(s.repeats, s.flip_aug) for s in subsets] == [(4, True)]
    assert "dropped  concepts[1]: type 'VALIDATION': lorakit imports training concepts (STANDARD) only; set " \
           "validation.* / data.validation_dir by hand" in lines
    assert "dropped  secrets: never imported (tokens)" in lines
    assert "mapped   save_every_unit -> save.every_n_epochs" in lines and "mapped   samples -> sample.prompts" in lines
    assert "dropped  output_model_format: 'SAFETENSORS': lorakit writes the kohya layout (ComfyUI, A1111, Forge " \
           "read it)" in lines
    assert "dropped  optimizer.min_8bit_size: 4096: no lorakit equivalent" in lines
    assert "dropped  unet.weight_dtype: 'FLOAT_16': lorakit stores the frozen base in bf16, or fp8 with " \
           "memory.fp8_base" in lines
    reported = {line.split()[1].rstrip(":").split(".")[0].split("[")[0] for line in lines
                if line.startswith(("mapped ", "dropped "))}
    assert set(cfg_json) <= reported | {"concepts", "samples", "optimizer"}  # every top-level key named


@pytest.mark.parametrize("change, message", [
    ({"training_method": "FINE_TUNE"}, "training_method is 'FINE_TUNE'; lorakit trains LoRAs"),
    ({"model_type": "STABLE_CASCADE_1"}, "model_type 'STABLE_CASCADE_1' has no lorakit family"),
    ({"peft_type": "OFT_2"}, "peft_type 'OFT_2' has no lorakit equivalent"),
    ({"concepts": None, "concept_file_name": "missing.json"}, "no concepts, and the concept file 'missing.json' is "
     "not found"),
])
def test_onetrainer_refusals_name_the_file_and_what_to_do(tmp_path, capsys, change, message):
    import json

    cfg_json = {**_onetrainer_sdxl(tmp_path), **change}
    src, out = tmp_path / "ot.json", tmp_path / "run.toml"
    src.write_text(json.dumps(cfg_json))
    assert main(["import", "onetrainer", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and message in err[0] and not out.exists()


def test_zimage_powershell_module_form_and_the_vae_key_the_family_takes(tmp_path):
    """PowerShell backticks, `python -m musubi_tuner.zimage_train_network`, --vae → model.ae (Z-Image's key)."""
    from lorakit.config.musubi_import import import_musubi

    dataset = tmp_path / "zi.toml"
    dataset.write_text(f'[general]\nresolution = 1024\ncaption_extension = ".txt"\nenable_bucket = true\n\n'
                       f'[[datasets]]\nimage_directory = "{_images(tmp_path / "zi")}"\n')
    script = tmp_path / "train.ps1"
    script.write_text("$env:MODELS = 'D:\\models'\n"
                      "accelerate launch --mixed_precision bf16 -m musubi_tuner.zimage_train_network `\n"
                      "  --dit \"$env:MODELS\\z_image_de_turbo.safetensors\" --vae \"$env:MODELS\\ae.safetensors\" `\n"
                      f"  --text_encoder \"$env:MODELS\\qwen3_4b.safetensors\" --dataset_config \"{dataset}\" `\n"
                      "  --timestep_sampling shift --discrete_flow_shift 2.0 --network_module networks.lora_zimage `\n"
                      "  --network_dim 32 --network_alpha 32 --learning_rate 1e-4 --fp8_llm --max_train_steps 3000\n")
    res = import_musubi(script, tmp_path / "run.toml")
    doc = tomllib.loads(res.text)
    assert doc["model"] == {"family": "zimage", "checkpoint": "D:\\models\\z_image_de_turbo.safetensors",
                            "ae": "D:\\models\\ae.safetensors", "text_encoder": "D:\\models\\qwen3_4b.safetensors"}
    assert doc["training"] == {"max_steps": 3000, "timestep_sampling": "shift", "discrete_flow_shift": 2.0,
                               "mixed_precision": "bf16"}
    assert ("fp8_llm", "lorakit runs the text encoder once before training and caches its outputs") in res.dropped
    assert tomllib.loads(res.files[tmp_path / "run.dataset.toml"])["general"] == {
        "resolution": 1024, "caption_extension": ".txt", "enable_bucket": True}


def test_a_kohya_toml_mentioning_a_script_in_a_comment_is_still_a_toml(tmp_path):
    from lorakit.config.cmdline import looks_like_command

    config = tmp_path / "config_lora.toml"
    config.write_text("# run: accelerate launch sdxl_train_network.py --config_file config_lora.toml\n"
                      "network_dim = 8\n")
    assert not looks_like_command(config) and looks_like_command(tmp_path / "train.bat")


def test_each_importer_names_the_one_for_a_file_of_another_kind(tmp_path, capsys):
    import json

    script = tmp_path / "train.sh"
    script.write_text(_FLUXGYM_SH)
    ot = tmp_path / "ot.json"
    ot.write_text(json.dumps(_onetrainer_sdxl(tmp_path)))
    out = str(tmp_path / "run.toml")
    assert main(["import", "kohya_ss", str(script), "-o", out]) == 2
    assert "a training command line? use `lorakit import kohya` (sd-scripts, FluxGym) or `lorakit import musubi` " \
           "(musubi-tuner)" in capsys.readouterr().err
    assert main(["import", "ai-toolkit", str(script), "-o", out]) == 2
    assert "(a training command line? use `lorakit import kohya` or `lorakit import musubi`)" in \
        capsys.readouterr().err
    assert main(["import", "kohya_ss", str(ot), "-o", out]) == 2
    assert f"a OneTrainer config, not a kohya_ss GUI config; use `lorakit import onetrainer {ot}`" in \
        capsys.readouterr().err
    assert main(["import", "kohya", str(ot), "-o", out]) == 2
    assert f"import it with `lorakit import onetrainer {ot}`" in capsys.readouterr().err
    assert main(["import", "musubi", str(script), "-o", out]) == 2
    assert "an sd-scripts command (flux_train_network.py); import it with `lorakit import kohya" in \
        capsys.readouterr().err


def test_a_command_line_with_config_file_reads_it_and_its_own_options_win(tmp_path, capsys):
    (tmp_path / "base.toml").write_text('[network]\nnetwork_module = "networks.lora"\nnetwork_dim = 8\n'
                                        'network_alpha = 4\n[training]\nlearning_rate = 1e-4\nmax_train_steps = 500\n'
                                        'mixed_precision = "fp16"\nsave_every_n_steps = 100\n'
                                        'network_train_unet_only = true\ntrain_data_dir = "/data"\n'
                                        'caption_extension = ".txt"\n')
    script, out = tmp_path / "train.sh", tmp_path / "run.toml"
    script.write_text("accelerate launch sdxl_train_network.py --config_file base --network_dim 16 "
                      "--pretrained_model_name_or_path /m/sdxl.safetensors\n")
    assert main(["import", "kohya", str(script), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = tomllib.loads(out.read_text())
    assert (doc["network"]["rank"], doc["network"]["alpha"], doc["optimizer"]["lr"], doc["training"]["max_steps"]) \
        == (16, 4, 1e-4, 500)
    assert f"note: --config_file {tmp_path / 'base.toml'} was read; the command line's own options win over it" in lines


def test_onetrainer_flux_preset_shape_with_its_defaults(tmp_path):
    """OneTrainer's '#flux LoRA' preset keys (NF4 transformer, dynamic shifting, DIFFUSERS_LORA) with concepts; what
    the preset leaves out is OneTrainer's default (rank 16, alpha 1.0, 100 epochs)."""
    import json

    from lorakit.config.onetrainer_import import import_onetrainer

    concepts = tmp_path / "training_concepts" / "concepts.json"
    concepts.parent.mkdir()
    concepts.write_text(json.dumps([{"name": "c", "path": str(tmp_path / "img"), "balancing": 2.5,
                                     "balancing_strategy": "REPEATS"}]))
    src = tmp_path / "flux.json"
    src.write_text(json.dumps({
        "backup_after": 10, "base_model_name": "black-forest-labs/FLUX.1-dev", "batch_size": 4,
        "learning_rate": 0.0003, "model_type": "FLUX_DEV_1", "output_model_destination": "models/lora.safetensors",
        "output_model_format": "DIFFUSERS_LORA", "resolution": "768",
        "transformer": {"train": True, "weight_dtype": "NFLOAT_4"},
        "text_encoder": {"train": False, "weight_dtype": "BFLOAT_16"},
        "text_encoder_2": {"train": False, "weight_dtype": "NFLOAT_4"}, "training_method": "LORA",
        "vae": {"weight_dtype": "FLOAT_32"}, "train_dtype": "BFLOAT_16", "timestep_distribution": "LOGIT_NORMAL",
        "dynamic_timestep_shifting": True, "concept_file_name": "training_concepts/concepts.json"}))
    res = import_onetrainer(src, tmp_path / "run.toml")
    doc = tomllib.loads(res.text)
    assert doc["model"] == {"family": "flux1", "checkpoint": "black-forest-labs/FLUX.1-dev"}
    assert doc["network"] == {"train_text_encoder": False, "rank": 16, "alpha": 1.0}
    assert doc["training"] == {"batch_size": 4, "max_epochs": 100, "mixed_precision": "bf16",
                               "timestep_sampling": "flux_shift"}
    assert doc["save"] == {"dir": "models", "name": "lora", "format": "diffusers"}
    assert ("transformer.weight_dtype", "'NFLOAT_4': lorakit stores the frozen base in bf16, or fp8 with "
            "memory.fp8_base") in res.dropped
    assert "lora_alpha is not set: OneTrainer's default 1.0 was written (network.alpha = 1.0)" in res.notes
    assert "concepts.json[0]: balancing 2.5 (REPEATS) was written as num_repeats = 2 (lorakit repeats whole images)" \
        in res.notes
    assert tomllib.loads(res.files[tmp_path / "run.dataset.toml"])["datasets"][0]["subsets"][0]["num_repeats"] == 2
