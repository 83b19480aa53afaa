"""ss_* and modelspec.* metadata: keys present, strings only, JSON values parse, values follow the config."""

import json

import pytest

from lorakit.config.schema import Config
from lorakit.lora.metadata import common_metadata, modelspec_metadata
from lorakit.models.base import ModelSpec

SPEC = ModelSpec(family="sdxl", latent_channels=4, vae_scale=0.13025, vae_shift=0.0, vae_downscale=8, patch_size=1,
                 bucket_divisibility=64, prediction="epsilon", default_resolution=1024,
                 text_encoders=("clip_l", "clip_g"), max_caption_tokens=77, default_sample_steps=28,
                 metadata_base_version="sdxl_base_v1-0", network_module="networks.lora")

REQUIRED = """ss_network_module ss_network_dim ss_network_alpha ss_network_dropout ss_network_args
ss_base_model_version ss_output_name ss_tag_frequency ss_dataset_dirs ss_resolution ss_steps ss_epoch
ss_max_train_steps ss_num_epochs ss_optimizer ss_learning_rate ss_unet_lr ss_text_encoder_lr ss_lr_scheduler
ss_lr_warmup_steps ss_seed ss_mixed_precision ss_gradient_checkpointing ss_gradient_accumulation_steps
ss_max_grad_norm ss_batch_size_per_device ss_training_started_at ss_training_finished_at ss_session_id
ss_training_comment ss_sd_model_name ss_num_train_images ss_num_reg_images ss_caption_dropout_rate
ss_noise_offset ss_min_snr_gamma ss_v2 lorakit_version""".split()


def _cfg():
    cfg = Config()
    cfg.model.family = "sdxl"
    cfg.model.checkpoint = "/models/sd_xl_base_1.0.safetensors"
    cfg.network.rank, cfg.network.alpha, cfg.network.conv_rank, cfg.network.conv_alpha = 16, 8.0, 4, 1.0
    cfg.data.resolution = [832, 1216]
    cfg.save.name, cfg.save.comment = "ohwx", "trigger: ohwx"
    cfg.optimizer.name = "adamw8bit"
    return cfg


def _md(**over):
    info = {"tag_frequency": {"10_ohwx woman": {"ohwx": 12, "smile": 3}},
            "dataset_dirs": {"10_ohwx woman": {"n_repeats": 10, "img_count": 12}},
            "num_train_images": 120, "num_reg_images": 0}
    kw = dict(cfg=_cfg(), spec=SPEC, dataset_info=info, steps=500, epochs=3, started_at=1700000000.5,
              finished_at=1700003600.25, base_model_file=None, session_id="12345")
    kw.update(over)
    return common_metadata(**kw)


def test_common_keys_present_and_all_str():
    md = _md()
    missing = [k for k in REQUIRED if k not in md]
    assert not missing
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in md.items())


def test_values_follow_config():
    md = _md()
    assert md["ss_network_module"] == "networks.lora"
    assert md["ss_base_model_version"] == "sdxl_base_v1-0"
    assert md["ss_network_dim"] == "16" and md["ss_network_alpha"] == "8.0"
    assert md["ss_resolution"] == "(832, 1216)"
    assert md["ss_v2"] == "False"
    assert md["ss_sd_model_name"] == "sd_xl_base_1.0.safetensors"
    assert md["ss_output_name"] == "ohwx" and md["ss_training_comment"] == "trigger: ohwx"
    assert md["ss_steps"] == "500" and md["ss_epoch"] == "3"
    assert md["ss_optimizer"].startswith("bitsandbytes.optim.adamw.AdamW8bit(")
    assert md["ss_text_encoder_lr"] == "None"  # text encoder not trained
    assert md["ss_training_started_at"] == "1700000000.5"
    assert md["ss_gradient_checkpointing"] == "True"


def test_json_values_parse():
    md = _md()
    assert json.loads(md["ss_tag_frequency"]) == {"10_ohwx woman": {"ohwx": 12, "smile": 3}}
    assert json.loads(md["ss_dataset_dirs"])["10_ohwx woman"] == {"n_repeats": 10, "img_count": 12}
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1.0"}


def test_intermediate_checkpoint_has_no_finish_time_and_te_lr_when_training_te():
    cfg = _cfg()
    cfg.network.train_text_encoder = True
    md = _md(cfg=cfg, finished_at=None, base_model_file="/x/other.safetensors")
    assert "ss_training_finished_at" not in md
    assert md["ss_text_encoder_lr"] == str(cfg.optimizer.lr)
    assert md["ss_sd_model_name"] == "other.safetensors"


def test_modelspec():
    md = modelspec_metadata(architecture="stable-diffusion-xl-v1-base/lora", title="ohwx", resolution="1024x1024",
                            date="2026-01-01T00:00:00", prediction_type="epsilon",
                            implementation="https://github.com/Stability-AI/generative-models",
                            extra={"trigger_phrase": "ohwx", "author": ""})
    assert md["modelspec.sai_model_spec"] in ("1.0.0", "1.0.1")
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert md["modelspec.resolution"] == "1024x1024" and md["modelspec.prediction_type"] == "epsilon"
    assert md["modelspec.trigger_phrase"] == "ohwx" and "modelspec.author" not in md
    assert all(isinstance(v, str) for v in md.values())
    flux = modelspec_metadata(architecture="flux-1-dev/lora", title="t", resolution="1024x1024", date="d",
                              prediction_type=None, implementation="https://github.com/black-forest-labs/flux")
    assert "modelspec.prediction_type" not in flux


def test_bucket_info_kohya_structure_and_lower_tags():
    from lorakit.lora.metadata import kohya_bucket_info, lower_tags

    flat = {"buckets": {"1024x1024": 30, "832x1216": 12}}
    got = kohya_bucket_info(flat)
    assert got == {"buckets": {"0": {"resolution": [832, 1216], "count": 12},
                               "1": {"resolution": [1024, 1024], "count": 30}}, "mean_img_ar_error": 0.0}
    nested = {"buckets": {0: {"resolution": [1024, 1024], "count": 20}}, "mean_img_ar_error": 0.25}
    assert kohya_bucket_info(nested)["buckets"]["0"]["count"] == 20
    assert lower_tags({"10_x": {"Smile": 2, "smile": 1, "OHWX": 3}}) == {"10_x": {"smile": 3, "ohwx": 3}}


@pytest.mark.parametrize("family_md", [
    {"modelspec.architecture": "flux-1-dev/lora", "modelspec.implementation": "https://github.com/black-forest-labs/flux"},
    {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora", "modelspec.prediction_type": "epsilon",
     "modelspec.implementation": "https://github.com/Stability-AI/generative-models"}])
def test_run_modelspec_complete_for_every_family(family_md):
    from lorakit.lora.metadata import run_modelspec

    cfg = Config()
    cfg.save.name = "ohwx"
    md = run_modelspec(cfg=cfg, family_md=family_md, trigger_words=["ohwx"], date="2026-01-01T00:00:00+00:00")
    for key in ("sai_model_spec", "architecture", "implementation", "implementation_version", "title", "resolution",
                "date", "trigger_phrase"):
        assert md[f"modelspec.{key}"], key
    assert md["modelspec.sai_model_spec"] == "1.0.1" and md["modelspec.trigger_phrase"] == "ohwx"
    assert md["modelspec.resolution"] == "1024x1024" and md["modelspec.title"] == "ohwx"
