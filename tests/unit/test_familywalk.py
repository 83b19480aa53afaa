"""Family walk (ninth session): lifecycle keys on FLUX.2, SD3.5, Qwen-Image, Z-Image and SD 1.5 are honoured or
refused in one line at load (no training)."""

from __future__ import annotations

import pytest
import torch

from lorakit.config.load import load_config
from lorakit.config.schema import TrainingCfg
from lorakit.diffusion import noise_options as nopt
from lorakit.diffusion.objectives import ddpm_alphas_cumprod
from lorakit.errors import ConfigError

FLOW = ("flux1", "flux2", "sd3", "qwenimage", "zimage")


def _load(family: str, **sections):
    data = {"model": {"family": family, "checkpoint": "/models/base.safetensors"}, "data": {"dir": "/data/ohwx"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_config(data=data)


def _refused(family: str, **sections) -> str:
    with pytest.raises(ConfigError) as info:
        _load(family, **sections)
    return str(info.value)


def test_sd15_takes_the_noise_and_loss_options_its_u_net_objective_honours():
    """SD 1.5 shares SDXL's DDPM objective (unet.py): multires noise, ip_noise_gamma and the debiased loss were
    refused at load as 'sdxl only' although the objective applies them."""
    cfg = _load("sd15", training={"multires_noise_iterations": 2, "multires_noise_discount": 0.4,
                                  "ip_noise_gamma": 0.1, "debiased_estimation_loss": True})
    assert (cfg.training.multires_noise_iterations, cfg.training.ip_noise_gamma) == (2, 0.1)
    from lorakit.models.sd15.adapter import Adapter

    ad = Adapter.__new__(Adapter)  # the objective needs only the schedule and the prediction type
    ad._alphas_cumprod, ad.prediction = ddpm_alphas_cumprod(1000, 0.00085, 0.012), "epsilon"
    tr = TrainingCfg()
    tr.multires_noise_iterations, tr.ip_noise_gamma, tr.debiased_estimation_loss = 2, 0.2, True
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    got = ad.noise(latents, noise, None, tr, torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)
    n = nopt.multires_noise(noise, 2, 0.3, g)
    t = torch.randint(0, 1000, (2,), generator=g)
    xi = torch.randn(2, 4, 8, 8, generator=g)
    a = ad._alphas_cumprod[t].view(2, 1, 1, 1).float()
    torch.testing.assert_close(got.model_input, a.sqrt() * latents + (1 - a).sqrt() * (n + 0.2 * xi))
    torch.testing.assert_close(got.weight, nopt.debiased_weight(t, ad._alphas_cumprod, "epsilon"))


@pytest.mark.parametrize("family", FLOW)
@pytest.mark.parametrize("key,value", [("min_snr_gamma", 5.0), ("debiased_estimation_loss", True),
                                       ("multires_noise_iterations", 6), ("ip_noise_gamma", 0.1),
                                       ("noise_offset", 0.05), ("prediction", "v_prediction")])
def test_ddpm_only_options_are_refused_on_flow_matching_families(family, key, value):
    msg = _refused(family, training={key: value})
    assert f"training.{key}" in msg and "remove it" in msg and family in msg


@pytest.mark.parametrize("family", FLOW)
def test_locon_on_a_transformer_family_says_it_has_no_convolutions(family):
    """Was "set network.conv_rank (SDXL)", and conv_rank is then refused for the family: a loop of advice."""
    msg = _refused(family, network={"type": "locon"})
    assert msg.startswith("network.type:") and f"which {family} has none of" in msg and "sd15, sdxl" in msg
    assert "conv_rank" not in msg and msg.endswith('use "lora"')


def test_locon_without_conv_rank_on_sd15_asks_for_conv_rank():
    assert _refused("sd15", network={"type": "locon"}) == ('network.type: "locon" trains the 3x3 convolutions too: set '
                                                           'network.conv_rank, or use "lora"')
    assert _load("sd15", network={"type": "locon", "conv_rank": 4}).network.conv_rank == 4


LABELS = {"sdxl": "SDXL", "sd15": "SD 1.5", "flux1": "FLUX.1", "flux2": "FLUX.2", "sd3": "SD3.5",
          "qwenimage": "Qwen-Image", "zimage": "Z-Image"}


def test_each_family_only_key_s_help_names_every_family_that_honours_it():
    """The help text (web UI form, JSON schema, `lorakit train --help-keys`) begins with the families a family-only key
    applies to; it said "FLUX.1/2:" for keys SD3.5, Qwen-Image and Z-Image honour, "SDXL:" for SD 1.5's."""
    from lorakit.config import families
    from lorakit.config.fields import field_specs

    wrong = []
    for specs in field_specs().values():
        for spec in specs.values():
            if spec.meta.get("family_only"):
                prefix = str(spec.meta.get("doc") or spec.meta.get("help") or "").split(":")[0]
                missing = [f for f in families.applies_to(spec.key) if f in LABELS and LABELS[f] not in prefix]
                if missing:
                    wrong.append(f"{spec.key}: {missing}")
    assert not wrong


def test_network_weights_of_another_family_whose_names_partly_fit_says_what_the_file_is():
    """An SD3.5 LoRA in a Qwen-Image run: both name blocks transformer_blocks.N.attn.to_q, so the layout check
    passes and the stray keys are refused; the refusal now says what the file's metadata says it is."""
    from lorakit.lora.formats.fused import Pair
    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys
    from lorakit.lora.formats.layouts import LoraState
    from lorakit.lora.warmstart import match

    keys = FamilyKeys("qwenimage", (BaseModule("denoiser", "blk.q", ("blk.to_q",), 4, 4),),
                      {"denoiser": "lora_unet_"}, {"denoiser": "transformer."}, {"denoiser": "diffusion_model."})
    pair = Pair(torch.zeros(2, 4), torch.zeros(4, 2), 2.0)
    state = LoraState({"lora_unet_blk_q": pair}, {"ss_base_model_version": "sd3"}, "diffusers", "qwenimage",
                      unmatched=["text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight"])
    with pytest.raises(ConfigError) as info:
        match(state, keys, {"transformer": {"blk.to_q": 2}}, {"transformer": {"blk.to_q": 2.0}},
              {"denoiser": "transformer"}, "sd3.safetensors", log=lambda s: None)
    assert str(info.value) == ("network.weights: sd3.safetensors: 1 keys fit no qwenimage module of this model (e.g. "
                               "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight); the file says it is a "
                               "LoRA of sd3 (ss_base_model_version)")


def _one_module_keys(family: str):
    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys

    return FamilyKeys(family, (BaseModule("denoiser", "blk.q", ("blk.to_q",), 4, 4),
                               BaseModule("denoiser", "blk.k", ("blk.to_k",), 4, 4)),
                      {"denoiser": "lora_unet_"}, {"denoiser": "transformer."}, {"denoiser": "diffusion_model."})


@pytest.mark.parametrize("family,blocks,ranks", [
    ("zimage", "network.module_ranks", "network.module_ranks"),
    ("qwenimage", "network.module_ranks", "network.module_ranks"),
    ("flux2", "network.train_blocks, network.double_block_indices, network.single_block_indices, "
              "network.module_ranks", "network.module_ranks"),
    ("sd15", "network.conv_rank", "network.conv_rank")])
def test_network_weights_hints_name_only_keys_the_family_honours(family, blocks, ranks):
    """The hints named train_blocks, *_block_indices and conv_rank to Z-Image / Qwen-Image / SD3.5 runs, which refuse
    those keys."""
    from lorakit.lora.formats.fused import Pair
    from lorakit.lora.formats.layouts import LoraState
    from lorakit.lora.warmstart import match

    pair = Pair(torch.zeros(2, 4), torch.zeros(4, 2), 2.0)
    state = LoraState({"lora_unet_blk_q": pair, "lora_unet_blk_k": pair}, {}, "kohya", family)
    alphas = {"transformer": {"blk.to_q": 2.0, "blk.to_k": 2.0}}
    with pytest.raises(ConfigError) as info:
        match(state, _one_module_keys(family), {"transformer": {"blk.to_q": 2}}, alphas, {"denoiser": "transformer"},
              "f.safetensors", log=lambda s: None)
    assert str(info.value).endswith(f"which this run does not train; train the same blocks ({blocks})")
    with pytest.raises(ConfigError) as info:
        match(state, _one_module_keys(family), {"transformer": {"blk.to_q": 2, "blk.to_k": 4}}, alphas,
              {"denoiser": "transformer"}, "f.safetensors", log=lambda s: None)
    assert str(info.value).endswith(f"this run injects rank 4; set network.rank (or {ranks}) to the file's ranks")


def test_resume_with_other_validation_timesteps_is_refused_and_older_states_still_resume(monkeypatch):
    """validation.timesteps draws other noise per image: a resume that changed it compared the new losses with the
    old ones (keep_best kept a step by another measure). It is part of the run's fingerprint now."""
    from lorakit.train import resume

    monkeypatch.setattr(resume, "dataset_fingerprint", lambda dataset: "d")
    before = resume.run_fingerprint(_load("zimage", data={"validation_split": 0.25}), None)
    after = resume.run_fingerprint(_load("zimage", data={"validation_split": 0.25},
                                         validation={"timesteps": 8, "every_n_steps": 5}), None)
    assert resume._changed(before, after) == ["validation.timesteps: 4 → 8"]
    assert resume._changed(before, resume.run_fingerprint(_load("zimage", data={"validation_split": 0.25},
                                                                validation={"every_n_steps": 5}), None)) == []
    old = {k: v for k, v in before.items() if k != "validation"}  # a state written before the key was recorded
    assert resume._changed(old, after) == []
    assert "validation" not in resume.run_fingerprint(_load("zimage"), None)


@pytest.mark.parametrize("family", ("flux2", "qwenimage", "zimage"))
def test_text_encoder_lora_is_refused_at_load_for_a_family_without_it(family):
    """It was refused only when a run started (the adapter's check), so the web UI form, plan and sweeps passed it."""
    assert _refused(family, network={"train_text_encoder": True}) == (
        f"network.train_text_encoder: text-encoder LoRA is not offered for {family} (it trains its denoiser only); "
        "set it to false")
    assert _load("sd3", network={"train_text_encoder": True}).network.train_text_encoder


@pytest.mark.parametrize("family,variant,label", [("zimage", "turbo", "Z-Image turbo"),
                                                  ("sd3", "large-turbo", "SD3.5 large-turbo")])
def test_negative_prompt_is_refused_where_the_loaded_variant_samples_without_cfg(family, variant, label):
    """Step-distilled variants sample without CFG (a sample.cfg_scale is refused): sample.negative_prompt was
    accepted and never read. Base variants keep it."""
    from types import SimpleNamespace

    from lorakit.models.registry import get_family

    cls = get_family(family).Adapter
    ad = cls.__new__(cls)
    ad.cfg = _load(family, sample={"negative_prompt": "blurry"})
    ad._c = lambda: SimpleNamespace(variant=variant)
    with pytest.raises(ConfigError) as info:
        ad._check_loaded()
    assert str(info.value) == (f"sample.negative_prompt: {label} samples without CFG, so a negative prompt is never "
                               "used; remove it")
    ad._c = lambda: SimpleNamespace(variant="base" if family == "zimage" else "large")
    ad._check_loaded()
    ad.cfg, ad._c = _load(family), (lambda: SimpleNamespace(variant=variant))
    ad._check_loaded()


def test_negative_prompt_is_refused_for_step_distilled_flux2_klein():
    from types import SimpleNamespace

    from lorakit.models.flux2.adapter import Adapter

    ad = Adapter.__new__(Adapter)
    ad.cfg = _load("flux2", sample={"negative_prompt": "blurry"})
    ad._c = lambda: SimpleNamespace(variant="klein-4b", distilled=True, shape=SimpleNamespace(guidance=False, klein=True))
    with pytest.raises(ConfigError, match=r"^sample\.negative_prompt: FLUX\.2 klein-4b samples without CFG"):
        ad._check_loaded()
    ad._c = lambda: SimpleNamespace(variant="klein-base-4b", distilled=False,
                                    shape=SimpleNamespace(guidance=False, klein=True))
    ad._check_loaded()


@pytest.mark.parametrize("family", FLOW)
def test_lokr_factor_on_a_family_without_lokr_says_so(family):
    """Was "only has an effect with network.type = lokr", and lokr is then refused for the family."""
    assert _refused(family, network={"factor": 4}) == (f'network.factor: is LoKr\'s factor, and network.type = "lokr" '
                                                       f"is built for sdxl and sd15, not {family}; remove it")
    assert _load("sd15", network={"type": "lokr", "factor": 4}).network.factor == 4
    assert "only has an effect with" in _refused("sd15", network={"factor": 4})


@pytest.mark.parametrize("family", ("flux2", "qwenimage", "zimage"))
def test_text_encoder_lr_for_a_family_without_text_encoder_lora_says_so(family):
    """Was "only has an effect with network.train_text_encoder = true", which the family then refuses."""
    assert _refused(family, network={"text_encoder_lr": 1e-5}) == (
        f"network.text_encoder_lr: text-encoder LoRA is not offered for {family} (it trains its denoiser only); "
        "remove it")
    assert "only has an effect with" in _refused("sd3", network={"text_encoder_lr": 1e-5})
