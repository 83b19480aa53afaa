"""`lorakit import kohya_ss` (the kohya_ss GUI's saved JSON) and `lorakit import ai-toolkit` (ostris ai-toolkit's job
YAML): exact translated values, the keys not carried over with their reasons, the refusals, and a run.toml that
lorakit's loader accepts. The example configs follow the real formats (kohya_ss presets/lora/*.json and
lora_gui.py; ai-toolkit config/examples/*.yaml and toolkit/config_modules.py)."""

from __future__ import annotations

import json
import tomllib

import pytest
from PIL import Image

from lorakit.cli import main
from lorakit.config.load import load_config

# --------------------------------------------------------------------------------------------- kohya_ss GUI


def _sdxl_gui(data_dir) -> dict:
    """A kohya_ss LoRA-tab save for SDXL (keys and value types as its presets hold them, strings included)."""
    return {
        "LoRA_type": "Standard", "LyCORIS_preset": "full", "adaptive_noise_scale": 0, "additional_parameters": "",
        "bucket_no_upscale": True, "bucket_reso_steps": 64, "cache_latents": True, "cache_latents_to_disk": True,
        "caption_dropout_every_n_epochs": 0.0, "caption_dropout_rate": 0.05, "caption_extension": ".txt",
        "clip_skip": 2, "color_aug": False, "conv_alpha": 1, "conv_dim": 8, "dataset_config": "",
        "enable_bucket": True, "epoch": 10, "flip_aug": False, "full_bf16": False, "gradient_accumulation_steps": "1",
        "gradient_checkpointing": True, "huggingface_repo_id": "me/ohwx", "keep_tokens": "1",
        "learning_rate": 0.0001, "lr_scheduler": "cosine", "lr_scheduler_num_cycles": "", "lr_warmup": 10,
        "max_bucket_reso": 2048, "max_resolution": "1024,1024", "max_timestep": 1000, "max_token_length": "75",
        "max_train_epochs": "", "max_train_steps": 0, "min_bucket_reso": 256, "min_snr_gamma": 5,
        "min_timestep": 0, "mixed_precision": "bf16", "model_list": "custom", "multires_noise_discount": 0.3,
        "multires_noise_iterations": 0, "network_alpha": 16, "network_dim": 32, "network_dropout": 0,
        "noise_offset": 0.0357, "noise_offset_type": "Original", "num_cpu_threads_per_process": 2,
        "optimizer": "AdamW8bit", "optimizer_args": "weight_decay=0.05 betas=0.9,0.99 decouple=True",
        "output_dir": "/out", "output_name": "ohwx-sdxl", "persistent_data_loader_workers": False,
        "pretrained_model_name_or_path": "/m/sd_xl_base_1.0.safetensors", "prior_loss_weight": 1.0,
        "reg_data_dir": "", "sample_every_n_epochs": 0, "sample_every_n_steps": 100,
        "sample_prompts": "ohwx woman, portrait --w 1024 --h 1024\n\nohwx woman on a beach --s 28\n",
        "sample_sampler": "euler_a", "save_every_n_epochs": 2, "save_every_n_steps": 0, "save_model_as": "safetensors",
        "save_precision": "fp16", "scale_weight_norms": 0, "sdxl": True, "sdxl_cache_text_encoder_outputs": False,
        "sdxl_no_half_vae": True, "seed": "1234", "shuffle_caption": True, "text_encoder_lr": 5e-05,
        "train_batch_size": 2, "train_data_dir": str(data_dir), "training_comment": "", "unet_lr": 0.0001,
        "v2": False, "v_parameterization": False, "vae": "", "xformers": "sdpa",
    }


def _data_dir(tmp_path):
    """kohya's repeat folders: 10 x 12 + 5 x 4 images; a folder without the N_ prefix is not counted."""
    root = tmp_path / "img"
    for name, n in (("10_ohwx woman", 12), ("5_woman", 4), ("misc", 3)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(root / name / f"{i}.png")
        (root / name / "notes.txt").write_text("not an image")
    return root


def _write(tmp_path, doc: dict, name: str = "gui.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=2))
    return path


def test_kohya_ss_sdxl_gui_json_becomes_a_run_toml_lorakit_loads(tmp_path, capsys):
    gui = _sdxl_gui(_data_dir(tmp_path))
    src, out = _write(tmp_path, gui), tmp_path / "run.toml"
    assert main(["import", "kohya_ss", str(src), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    doc = tomllib.loads(out.read_text())
    assert doc["model"] == {"family": "sdxl", "checkpoint": "/m/sd_xl_base_1.0.safetensors"}
    # steps from epochs as kohya_ss counts them: (10 x 12 + 5 x 4) / batch 2 / accumulation 1 x 10 epochs
    assert doc["training"]["max_steps"] == 700 and "max_epochs" not in doc["training"]
    assert doc["optimizer"]["warmup_steps"] == 70  # lr_warmup 10 % of 700
    assert (doc["optimizer"]["name"], doc["optimizer"]["lr"], doc["optimizer"]["scheduler"]) == (
        "adamw8bit", 0.0001, "cosine")
    assert (doc["optimizer"]["weight_decay"], doc["optimizer"]["betas"]) == (0.05, [0.9, 0.99])
    assert (doc["network"]["rank"], doc["network"]["alpha"]) == (32, 16)
    assert doc["network"]["train_text_encoder"] is True and doc["network"]["text_encoder_lr"] == 5e-05
    assert "conv_rank" not in doc["network"] and "type" not in doc["network"]
    assert doc["data"]["dir"] == str(tmp_path / "img") and doc["data"]["resolution"] == 1024
    assert (doc["data"]["keep_tokens"], doc["data"]["shuffle_caption"]) == (1, True)
    assert (doc["training"]["batch_size"], doc["training"]["seed"], doc["training"]["min_snr_gamma"],
            doc["training"]["noise_offset"]) == (2, 1234, 5, 0.0357)
    assert doc["save"] == {"dir": "/out", "name": "ohwx-sdxl", "every_n_epochs": 2, "precision": "fp16"}
    assert doc["sample"] == {"prompts": ["ohwx woman, portrait --w 1024 --h 1024", "ohwx woman on a beach --s 28"],
                             "every_n_steps": 100}
    cfg = load_config(out)  # what `lorakit config show` runs
    assert cfg.training.max_steps == 700 and cfg.optimizer.warmup_steps == 70
    lines = text.splitlines()
    assert "mapped   epoch -> training.max_steps" in lines and "mapped   lr_warmup -> optimizer.warmup_steps" in lines
    assert "mapped   max_resolution -> data.resolution" in lines and "mapped   optimizer -> optimizer.name" in lines
    assert "dropped  conv_dim: kohya_ss passes it only with a LoCon / LyCORIS LoRA_type (this is 'Standard')" in lines
    assert "dropped  clip_skip: 2: no lorakit equivalent" in lines
    assert "dropped  optimizer_args (rest): decouple=True: no lorakit equivalent (lorakit takes weight_decay, betas " \
           "and eps)" in lines
    assert "dropped  huggingface_repo_id: uploads: use `lorakit push RUN --repo user/name` after the run" in lines
    assert "dropped  multires_noise_iterations: noise_offset_type is 'Original': kohya_ss does not pass it" in lines
    assert any(line.startswith("note: max_train_steps is 0: kohya_ss counts the steps from epoch as 140 images x "
                               "repeats / batch 2 / accumulation 1 x 10 epoch(s) = 700") for line in lines)
    reported = {line.split()[1].rstrip(":") for line in lines if line.startswith(("mapped ", "dropped "))}
    assert reported | {"optimizer_args"} >= set(gui)  # every GUI key is either mapped or named with its reason


def test_kohya_ss_flux1_gui_json(tmp_path):
    from lorakit.config.kohya_ss_import import import_kohya_ss_gui

    gui = {"LoRA_type": "Flux1", "flux1_checkbox": True, "sdxl": False, "sd3_checkbox": False,
           "pretrained_model_name_or_path": "/m/flux1-dev.safetensors", "ae": "/m/ae.safetensors",
           "clip_l": "/m/clip_l.safetensors", "t5xxl": "/m/t5xxl_fp16.safetensors", "train_data_dir": "/data/img",
           "output_dir": "/out", "output_name": "ohwx-flux", "network_dim": 16, "network_alpha": 16,
           "learning_rate": 0.0003, "unet_lr": 0.0003, "text_encoder_lr": 0, "lr_scheduler": "constant",
           "lr_warmup": 5, "epoch": 1, "max_train_steps": 1200, "max_train_epochs": 0, "max_resolution": "512,768",
           "train_batch_size": 1, "optimizer": "AdamW8bit", "mixed_precision": "bf16", "fp8_base": True,
           "gradient_checkpointing": True, "cache_latents": True, "flux1_cache_text_encoder_outputs": True,
           "sdxl_cache_text_encoder_outputs": True, "guidance_scale": 1, "timestep_sampling": "shift",
           "discrete_flow_shift": 3.1582, "t5xxl_max_token_length": 512, "apply_t5_attn_mask": True,
           "min_snr_gamma": 7, "noise_offset": 0.05, "noise_offset_type": "Original", "max_token_length": 75,
           "train_blocks": "single", "save_every_n_steps": 200, "save_every_n_epochs": 0, "seed": 42,
           "sample_prompts": "", "sample_every_n_steps": 0, "blocks_to_swap": 0}
    res = import_kohya_ss_gui(_write(tmp_path, gui), tmp_path / "run.toml")
    doc = tomllib.loads(res.text)
    assert doc["model"] == {"family": "flux1", "checkpoint": "/m/flux1-dev.safetensors", "ae": "/m/ae.safetensors",
                            "clip_l": "/m/clip_l.safetensors", "t5xxl": "/m/t5xxl_fp16.safetensors"}
    assert doc["training"]["max_steps"] == 1200 and doc["data"]["resolution"] == [512, 768]
    assert doc["network"] == {"rank": 16, "alpha": 16, "train_blocks": "single", "train_text_encoder": False}
    assert (doc["training"]["timestep_sampling"], doc["training"]["discrete_flow_shift"],
            doc["training"]["guidance_scale"], doc["training"]["t5_max_length"]) == ("shift", 3.1582, 1, 512)
    assert doc["memory"]["fp8_base"] is True and doc["memory"]["cache_text_encoder_outputs"] is True
    assert doc["save"]["every_n_steps"] == 200 and "every_n_epochs" not in doc["save"]
    assert "warmup_steps" not in doc["optimizer"] and "min_snr_gamma" not in doc["training"]
    why = dict(res.dropped)
    assert why["lr_warmup"].startswith("lr_scheduler is constant, which sd-scripts runs without warmup")
    assert why["min_snr_gamma"] == "7 not carried over, lorakit refuses it (training.min_snr_gamma: applies only " \
                                   "to sd15, sdxl, not flux1; remove it)"
    assert why["sdxl_cache_text_encoder_outputs"] == "a setting of the sdxl box; this is a flux1 config"
    assert why["max_token_length"] == "kohya_ss passes it only for sdxl / sd15 / sd3, not for flux1"
    assert why["learning_rate"].startswith("unet_lr is set and wins")
    assert why["blocks_to_swap"].startswith("0: unset in kohya_ss")
    assert ("flux1_cache_text_encoder_outputs", "memory.cache_text_encoder_outputs") in res.mapped
    assert {k for k, _ in res.mapped} | set(why) == set(gui)
    load_config(tmp_path / "run.toml", data=doc)


def test_kohya_ss_unknown_optimizer_takes_its_lr_with_it_and_epochs_fall_back(tmp_path):
    """DAdaptAdam runs at lr 1.0: written as AdamW's lr it would wreck the run, so both are named, not written; with
    no image folder to count, the epochs are kept as training.max_epochs and the warmup percent is named."""
    from lorakit.config.kohya_ss_import import import_kohya_ss_gui

    gui = {"LoRA_type": "Standard", "sdxl": True, "pretrained_model_name_or_path": "/m/sd_xl_base_1.0.safetensors",
           "train_data_dir": str(tmp_path / "missing"), "optimizer": "DAdaptAdam", "learning_rate": 1.0,
           "unet_lr": 0, "text_encoder_lr": 0, "epoch": 8, "max_train_steps": "", "lr_warmup": 10,
           "lr_scheduler": "cosine"}
    res = import_kohya_ss_gui(_write(tmp_path, gui))
    doc = tomllib.loads(res.text)
    assert "name" not in doc.get("optimizer", {}) and "lr" not in doc.get("optimizer", {})
    assert doc["training"]["max_epochs"] == 8 and "max_steps" not in doc["training"]
    why = dict(res.dropped)
    assert why["optimizer"].startswith("'DAdaptAdam' not carried over, lorakit refuses it (optimizer.name: must be "
                                  "one of adamw, adamw8bit, prodigy")
    assert why["learning_rate"] == ("1.0 not carried over: it was set for optimizer 'DAdaptAdam', which lorakit lacks; "
                                    "set optimizer.name and optimizer.lr yourself")
    assert why["lr_warmup"].startswith("10% of a step count lorakit knows only at the start of the run")
    assert ("epoch", "training.max_epochs") in res.mapped


@pytest.mark.parametrize("change, message", [
    ({"LoRA_type": "LyCORIS/iA3"}, "LoRA_type 'LyCORIS/iA3' has no lorakit equivalent (lorakit trains Standard LoRA, "
                                   "LoCon, LoHa, LoKr and DoRA)"),
    ({"pretrained_model_name_or_path": ""}, "pretrained_model_name_or_path is empty; choose the base model in "
                                            "kohya_ss"),
    ({"train_data_dir": ""}, "train_data_dir and dataset_config are both empty"),
    ({"hunyuan_image_checkbox": True}, "hunyuan_image_checkbox is ticked: lorakit has no HunyuanImage family"),
    ({"LoRA_type": None}, "a kohya_ss Dreambooth / fine-tuning config (no LoRA_type key); lorakit trains LoRAs"),
    ({"epoch": "ten"}, "a value of an unexpected type (invalid literal for int() with base 10: 'ten'); fix it in "
                       "kohya_ss (or the file) and import again"),
])
def test_kohya_ss_refusals_name_the_file_and_what_to_do(tmp_path, capsys, change, message):
    gui = {"LoRA_type": "Standard", "sdxl": True, "pretrained_model_name_or_path": "/m/sd_xl_base_1.0.safetensors",
           "train_data_dir": "/data/img", "epoch": 1, "max_resolution": "1024,1024"}
    gui.update(change)
    gui = {k: v for k, v in gui.items() if v is not None}
    out = tmp_path / "run.toml"
    assert main(["import", "kohya_ss", str(_write(tmp_path, gui)), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "gui.json") in err[0] and message in err[0] and not out.exists()


def test_wrong_kinds_of_file_are_named_and_outputs_never_overwritten(tmp_path, capsys):
    yaml_job = tmp_path / "job.yaml"
    yaml_job.write_text("job: extension\nconfig:\n  name: x\n  process:\n    - type: sd_trainer\n")
    assert main(["import", "kohya_ss", str(yaml_job), "-o", str(tmp_path / "a.toml")]) == 2
    assert capsys.readouterr().err.strip().endswith("an ai-toolkit YAML config? use `lorakit import ai-toolkit`")
    gui = _write(tmp_path, {"LoRA_type": "Standard", "sdxl": True})
    assert main(["import", "ai-toolkit", str(gui), "-o", str(tmp_path / "a.toml")]) == 2
    assert f"a kohya_ss GUI config, not an ai-toolkit job; use `lorakit import kohya_ss {gui}`" in \
        capsys.readouterr().err
    assert main(["import", "kohya", str(gui), "-o", str(tmp_path / "a.toml")]) == 2
    assert f"import it with `lorakit import kohya_ss {gui}`" in capsys.readouterr().err
    assert main(["import", "kohya", str(yaml_job), "-o", str(tmp_path / "a.toml")]) == 2
    assert f"import it with `lorakit import ai-toolkit {yaml_job}`" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{\"LoRA_type\": ")
    assert main(["import", "kohya_ss", str(bad), "-o", str(tmp_path / "a.toml")]) == 2
    assert f"{bad}: not valid JSON" in capsys.readouterr().err
    out = tmp_path / "run.toml"
    out.write_text("# mine\n")
    full = _write(tmp_path, _sdxl_gui(tmp_path), "full.json")
    assert main(["import", "kohya_ss", str(full), "-o", str(out)]) == 2
    assert "already exists; choose another -o" in capsys.readouterr().err and out.read_text() == "# mine\n"
    assert not (tmp_path / "a.toml").exists()


# --------------------------------------------------------------------------------------------- ai-toolkit

_FLUX_JOB = """\
---
job: extension
config:
  # this name will be the folder and filename name
  name: "ohwx_flux_v1"
  process:
    - type: 'sd_trainer'
      training_folder: "output"
      device: cuda:0
      trigger_word: "p3r5on"
      network:
        type: "lora"
        linear: 16
        linear_alpha: 16
      save:
        dtype: float16 # precision to save
        save_every: 250 # save every this many steps
        max_step_saves_to_keep: 4 # how many intermittent saves to keep
        push_to_hub: false
      datasets:
        - folder_path: "{folder}"
          caption_ext: "txt"
          caption_dropout_rate: 0.05  # will drop out the caption 5% of time
          shuffle_tokens: false  # shuffle caption order, split by commas
          cache_latents_to_disk: true
          num_repeats: 3
          resolution: [ 512, 768, 1024 ]  # flux enjoys multiple resolutions
      train:
        batch_size: 1
        steps: 2000
        gradient_accumulation_steps: 1
        train_unet: true
        train_text_encoder: false
        gradient_checkpointing: true
        noise_scheduler: "flowmatch" # for training only
        optimizer: "adamw8bit"
        lr: 1e-4
        linear_timesteps: true
        ema_config:
          use_ema: true
          ema_decay: 0.99
        dtype: bf16
      model:
        name_or_path: "black-forest-labs/FLUX.1-dev"
        is_flux: true
        quantize: true  # run 8bit mixed precision
      sample:
        sampler: "flowmatch"
        sample_every: 250
        width: 1024
        height: 1024
        prompts:
          - "[trigger] holding a sign that says 'I LOVE PROMPTS!'"
          - "woman with red hair, playing chess at the park"
        neg: ""  # not used on flux
        seed: 42
        walk_seed: true
        guidance_scale: 4
        sample_steps: 20
meta:
  name: "[name]"
  version: '1.0'
"""


def test_aitoolkit_flux1_yaml_becomes_run_and_dataset_toml(tmp_path, capsys):
    job = tmp_path / "train_lora_flux_24gb.yaml"
    job.write_text(_FLUX_JOB.replace("{folder}", str(tmp_path / "images")))
    out = tmp_path / "run.toml"
    assert main(["import", "ai-toolkit", str(job), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = tomllib.loads(out.read_text())
    assert doc["model"] == {"family": "flux1", "checkpoint": "black-forest-labs/FLUX.1-dev"}
    assert doc["network"] == {"rank": 16, "alpha": 16.0, "train_text_encoder": False}
    assert doc["training"] == {"batch_size": 1, "max_steps": 2000, "gradient_accumulation": 1,
                               "mixed_precision": "bf16", "ema": True, "ema_decay": 0.99, "device": "cuda:0"}
    assert doc["optimizer"] == {"name": "adamw8bit", "lr": 0.0001}
    assert doc["memory"] == {"gradient_checkpointing": True, "fp8_base": True}
    assert doc["save"] == {"name": "ohwx_flux_v1", "precision": "fp16", "every_n_steps": 250, "keep_last": 4,
                           "dir": "output"}
    assert doc["sample"] == {"every_n_steps": 250, "width": 1024, "height": 1024, "negative_prompt": "", "seed": 42,
                             "steps": 20, "guidance": 4.0,
                             "prompts": ["p3r5on holding a sign that says 'I LOVE PROMPTS!'",
                                         "woman with red hair, playing chess at the park"]}
    ds_path = tmp_path / "run.dataset.toml"
    assert doc["data"] == {"config": str(ds_path), "resolution": 1024, "trigger": "p3r5on"}
    ds = tomllib.loads(ds_path.read_text())
    assert [d["resolution"] for d in ds["datasets"]] == [512, 768, 1024]
    assert all(d["subsets"] == [{"image_dir": str(tmp_path / "images"), "caption_extension": ".txt",
                                 "caption_dropout_rate": 0.05, "shuffle_caption": False, "num_repeats": 3}]
               for d in ds["datasets"])
    cfg = load_config(out)
    assert cfg.data.config == str(ds_path) and cfg.network.alpha == 16.0
    from lorakit.data.kohya_toml import load_dataset_toml

    (tmp_path / "images").mkdir()
    groups, subsets = load_dataset_toml(ds_path, cfg.data)  # lorakit's own reader of the dataset TOML takes it
    assert len(groups) == 3 and [s.repeats for s in subsets] == [3, 3, 3]
    assert "mapped   datasets[0].num_repeats -> run.dataset.toml: num_repeats" in lines
    assert "mapped   sample.guidance_scale -> sample.guidance" in lines
    assert "dropped  train.linear_timesteps: True: no lorakit equivalent" in lines
    assert "dropped  sample.walk_seed: lorakit always walks: preview i without its own seed draws with sample.seed + i" in lines
    assert "dropped  meta: ai-toolkit's own metadata; lorakit writes ss_* and modelspec.* metadata itself" in lines
    assert "dropped  save.push_to_hub: uploads: use `lorakit push RUN --repo user/name` after the run" in lines
    assert any(line.startswith("note: trigger_word 'p3r5on': ai-toolkit adds it to captions") for line in lines)
    assert any(line.startswith("note: train.timestep_type is not set: ai-toolkit then draws FLUX timesteps with "
                               "'sigmoid'") for line in lines)
    assert lines[-1] == f"35 ai-toolkit keys mapped, 12 not carried over; written to {out} and {ds_path}"
    assert main(["import", "ai-toolkit", str(job), "-o", str(tmp_path / "other.toml")]) == 0  # a new name: fine
    (tmp_path / "third.dataset.toml").write_text("# mine\n")
    assert main(["import", "ai-toolkit", str(job), "-o", str(tmp_path / "third.toml")]) == 2  # its dataset TOML
    assert not (tmp_path / "third.toml").exists() and (tmp_path / "third.dataset.toml").read_text() == "# mine\n"


_SDXL_JOB = """\
job: extension
config:
  name: "ohwx_style_xl"
  process:
    - type: 'diffusion_trainer'
      training_folder: "/runs"
      device: cuda
      network:
        type: "lora"
        linear: 32
        conv: 8
      save:
        dtype: bf16
        save_every: 500
        max_step_saves_to_keep: 2
        save_format: 'safetensors'
      datasets:
        - folder_path: "/data/style"
          caption_ext: ".caption"
          resolution: 1024
          flip_x: true
          buckets: true
          default_caption: "ohwx style"
          is_reg: false
      train:
        batch_size: 4
        steps: 3000
        gradient_accumulation: 2
        train_unet: true
        train_text_encoder: true
        text_encoder_lr: 5e-5
        optimizer: "prodigy"
        lr: 1.0
        lr_scheduler: cosine
        optimizer_params:
          weight_decay: 0.01
          betas: [0.9, 0.99]
          d_coef: 2
        noise_offset: 0.05
        min_snr_gamma: 5
        timestep_type: "linear"
        content_or_style: "style"
        loss_type: mae
        dtype: fp16
      model:
        name_or_path: "/m/sd_xl_base_1.0.safetensors"
        arch: "sdxl"
        vae_path: "/m/sdxl_vae_fp16_fix.safetensors"
      sample:
        sample_every: 200
        samples:
          - prompt: "ohwx style, a lighthouse"
            seed: 7
        guidance_scale: 7
        sample_steps: 30
      logging:
        log_every: 10
        use_wandb: false
"""


def test_aitoolkit_sdxl_yaml(tmp_path):
    from lorakit.config.aitoolkit_import import import_aitoolkit

    job = tmp_path / "sdxl.yaml"
    job.write_text(_SDXL_JOB)
    res = import_aitoolkit(job, tmp_path / "run.toml")
    doc = tomllib.loads(res.text)
    assert doc["model"] == {"family": "sdxl", "checkpoint": "/m/sd_xl_base_1.0.safetensors",
                            "vae": "/m/sdxl_vae_fp16_fix.safetensors"}
    # no linear_alpha: ai-toolkit's alpha is 1.0, written as such (lorakit's default 16 would scale 16x)
    assert doc["network"] == {"rank": 32, "alpha": 1.0, "conv_rank": 8, "conv_alpha": 8.0, "train_text_encoder": True,
                              "text_encoder_lr": 5e-05}
    assert doc["optimizer"] == {"name": "prodigy", "scheduler": "cosine", "lr": 1.0, "weight_decay": 0.01,
                                "betas": [0.9, 0.99]}
    assert doc["training"] == {"batch_size": 4, "max_steps": 3000, "gradient_accumulation": 2, "noise_offset": 0.05,
                               "min_snr_gamma": 5.0, "loss": "l1", "mixed_precision": "fp16", "device": "cuda"}
    assert doc["save"] == {"name": "ohwx_style_xl", "precision": "bf16", "every_n_steps": 500, "keep_last": 2,
                           "dir": "/runs"}
    assert doc["sample"] == {"every_n_steps": 200, "steps": 30, "prompts": ["ohwx style, a lighthouse"],
                             "cfg_scale": 7.0}
    assert doc["log"] == {"every_n_steps": 10}
    ds = tomllib.loads(res.files[tmp_path / "run.dataset.toml"])
    assert ds["datasets"] == [{"resolution": 1024, "enable_bucket": True, "subsets": [
        {"image_dir": "/data/style", "caption_extension": ".caption", "flip_aug": True, "class_tokens": "ohwx style",
         "is_reg": False}]}]
    why = dict(res.dropped)
    assert why["train.timestep_type"] == "'linear': lorakit has no such timestep_type (it has sigmoid)"
    assert why["train.optimizer_params.d_coef"] == "2: no lorakit equivalent"
    assert why["train.content_or_style"] == "'style': no lorakit equivalent"
    assert why["save.save_format"].startswith("'safetensors': lorakit has no such save_format")
    assert why["sample.samples[0].seed"].startswith("lorakit has one size / seed / guidance for every preview")
    assert any(n.startswith("network.linear_alpha is not set: ai-toolkit's default alpha 1.0 was written")
               for n in res.notes)
    load_config(tmp_path / "run.toml", data=doc)


@pytest.mark.parametrize("edit, message", [
    (("arch: \"sdxl\"", "arch: \"wan22_14b\""), "model.arch 'wan22_14b' has no lorakit family"),
    (("type: 'diffusion_trainer'", "type: 'extract'"), "config.process[0].type is 'extract', not a LoRA training "
                                                       "process"),
    (("train_unet: true", "train_unet: false"), "train.train_unet is false (text encoder only)"),
    (("type: \"lora\"", "type: \"lorm\""), "network.type 'lorm' has no lorakit equivalent"),
    (("name_or_path: \"/m/sd_xl_base_1.0.safetensors\"", "name_or_path: \"\""), "model.name_or_path is empty"),
    (("- folder_path: \"/data/style\"", "- dataset_path: \"/data/style.json\""), "datasets[0] has no folder_path"),
    (("job: extension", "job: [extension"), "not valid YAML"),
    (("config:", "settings:"), "not an ai-toolkit job config (no config.process list)"),
    (("linear: 32", "linear: thirty-two"), "a value of an unexpected type (invalid literal for int() with base 10: "
                                           "'thirty-two'); fix it in the YAML and import again"),
])
def test_aitoolkit_refusals_name_the_file_and_what_to_do(tmp_path, capsys, edit, message):
    job = tmp_path / "job.yaml"
    job.write_text(_SDXL_JOB.replace(*edit, 1))
    out = tmp_path / "run.toml"
    assert main(["import", "ai-toolkit", str(job), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lorakit: error: {job}: ") and message in err[0]
    assert not out.exists() and not (tmp_path / "run.dataset.toml").exists()


def test_aitoolkit_family_from_model_name_and_file_header(tmp_path):
    from lorakit.config.aitoolkit_import import aitoolkit_family

    assert aitoolkit_family({"name_or_path": "Qwen/Qwen-Image", "arch": "qwen_image"}, tmp_path) == ("qwenimage", [])
    assert aitoolkit_family({"name_or_path": "black-forest-labs/FLUX.2-dev"}, tmp_path)[0] == "flux2"
    assert aitoolkit_family({"name_or_path": "ostris/Flex.1-alpha", "arch": "flex1:tag"}, tmp_path)[0] == "flux1"
    fam, notes = aitoolkit_family({"name_or_path": "runwayml/my-model"}, tmp_path)
    assert fam == "sd15" and "ai-toolkit then trains SD 1.x" in notes[0]


def test_kohya_ss_sd3_box_uses_its_own_encoder_fields(tmp_path):
    """With the SD3 box ticked kohya_ss passes sd3_clip_l / sd3_t5xxl as clip_l / t5xxl (its clip_l / t5xxl fields
    are the FLUX.1 ones) and sd3_cache_text_encoder_outputs as cache_text_encoder_outputs."""
    from lorakit.config.kohya_ss_import import import_kohya_ss_gui

    gui = {"LoRA_type": "Standard", "sd3_checkbox": True, "sdxl": False, "flux1_checkbox": False,
           "pretrained_model_name_or_path": "/m/sd3.5_large.safetensors", "train_data_dir": "/data/img",
           "sd3_clip_l": "/m/clip_l.safetensors", "sd3_t5xxl": "/m/t5xxl_fp16.safetensors",
           "clip_g": "/m/clip_g.safetensors", "clip_l": "/m/flux_clip_l.safetensors", "t5xxl": "",
           "sd3_cache_text_encoder_outputs": True, "flux1_cache_text_encoder_outputs": True, "network_dim": 8,
           "network_alpha": 4, "learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 0, "max_train_steps": 500,
           "epoch": 1}
    res = import_kohya_ss_gui(_write(tmp_path, gui))
    doc = tomllib.loads(res.text)
    assert doc["model"] == {"family": "sd3", "checkpoint": "/m/sd3.5_large.safetensors",
                            "clip_l": "/m/clip_l.safetensors", "t5xxl": "/m/t5xxl_fp16.safetensors",
                            "clip_g": "/m/clip_g.safetensors"}
    assert doc["memory"]["cache_text_encoder_outputs"] is True
    assert ("sd3_clip_l", "model.clip_l") in res.mapped and ("sd3_t5xxl", "model.t5xxl") in res.mapped
    why = dict(res.dropped)
    assert why["clip_l"] == "kohya_ss passes it only for flux1, not for sd3"
    assert why["flux1_cache_text_encoder_outputs"] == "a setting of the flux1 box; this is a sd3 config"
    assert {k for k, _ in res.mapped} | set(why) == set(gui)


def test_the_base_model_files_header_wins_over_the_configs_flags(tmp_path):
    """A local .safetensors base is asked what it is (header only): an SD 1.5 file under kohya_ss's sdxl box or
    ai-toolkit's arch: sdxl is imported as sd15, with a note naming both."""
    import torch
    from safetensors.torch import save_file

    from lorakit.config.aitoolkit_import import aitoolkit_family
    from lorakit.config.kohya_ss_import import import_kohya_ss_gui

    base = tmp_path / "my_model.safetensors"  # the SGM layout with SD1's 768-wide cross-attention context
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 1, 1, dtype=torch.float16),
               "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                   torch.zeros(8, 768, dtype=torch.float16)}, str(base))
    gui = {"LoRA_type": "Standard", "sdxl": True, "pretrained_model_name_or_path": str(base),
           "train_data_dir": "/data/img", "max_train_steps": 100}
    res = import_kohya_ss_gui(_write(tmp_path, gui))
    assert tomllib.loads(res.text)["model"]["family"] == "sd15"
    assert res.notes[0] == f"the model boxes say sdxl, but {base} is a sd15 checkpoint (its header): model.family = " \
                           "'sd15' was written"
    fam, notes = aitoolkit_family({"arch": "sdxl", "name_or_path": str(base)}, tmp_path)
    assert fam == "sd15" and notes[0].startswith("model.arch / flags say sdxl, but")
