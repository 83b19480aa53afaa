"""ss_base_model_version / modelspec.architecture of every family and variant against what SwarmUI, the reference
trainers (musubi-tuner, sd-scripts) and CivitAI do with them, re-derived in tests/unit/metadata_rederived.py. The
exported files' headers are checked in each family's own tests (test_metadata_in_the_exported_header)."""

from __future__ import annotations

import pytest

from tests.unit.metadata_rederived import TRAINERS, swarmui_lora_class


def test_the_swarmui_lookup_is_sorters():
    # lower-cased, remapped, then looked up; an unknown id sorts by tensors (None here)
    assert swarmui_lora_class("FLUX.2-Klein-4B/LoRA") == "Flux.2 Klein 4B LoRA"
    assert swarmui_lora_class("flux-1-schnell/lora") == "Flux.1 LoRA"
    assert swarmui_lora_class("stable-diffusion-3-5-large/lora") is None
    assert swarmui_lora_class("") is None and swarmui_lora_class("qwen-image") is None   # a model, not a LoRA


@pytest.mark.parametrize("size,swarm", [("klein-4b", "Flux.2 Klein 4B LoRA"), ("klein-9b", "Flux.2 Klein 9B LoRA"),
                                        ("dev", "Flux.2 Dev LoRA")])
def test_flux2_is_musubi_tuners_and_swarmui_sorts_it(size, swarm):
    from lorakit.models.flux2.adapter import ARCHITECTURE, BASE_VERSION
    arch = f"{ARCHITECTURE[size]}/lora"
    _, version, musubi_arch = TRAINERS[("flux2", size)]
    assert BASE_VERSION[size] == version and arch == musubi_arch
    assert swarmui_lora_class(arch) == swarm


@pytest.mark.parametrize("variant,swarm", [("large", "Stable Diffusion 3.5 Large LoRA"),
                                           ("large-turbo", "Stable Diffusion 3.5 Large LoRA"),
                                           ("medium", "Stable Diffusion 3.5 Medium LoRA"),
                                           ("sd3-medium", "Stable Diffusion 3 Medium LoRA")])
def test_sd3_version_is_sd_scripts_and_architecture_swarmuis(variant, swarm):
    from lorakit.models.sd3.adapter import ARCHITECTURE, BASE_VERSION
    _, version, sd_scripts_arch = TRAINERS[("sd3", variant)]
    assert BASE_VERSION[variant] == version
    assert swarmui_lora_class(f"{ARCHITECTURE[variant]}/lora") == swarm
    assert swarmui_lora_class(sd_scripts_arch) is None     # why lorakit writes SwarmUI's id, not sd-scripts'


@pytest.mark.parametrize("family,swarm", [("qwenimage", "Qwen Image LoRA"), ("zimage", "Z-Image LoRA")])
def test_qwen_image_and_z_image_are_musubi_tuners_version_and_one_swarmui_class(family, swarm):
    from lorakit.models.registry import get_family
    mod = __import__(f"lorakit.models.{family}.adapter", fromlist=["ARCHITECTURE"])
    _, version, musubi_arch = TRAINERS[(family, "")]
    assert get_family(family).SPEC.metadata_base_version == version
    assert swarmui_lora_class(f"{mod.ARCHITECTURE}/lora") == swarm == swarmui_lora_class(musubi_arch)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_sd15_is_sd_scripts_for_eps_and_v(prediction):
    from lorakit.config.schema import Config
    from lorakit.models.sd15.adapter import Adapter
    a = Adapter(Config())
    a.prediction = prediction
    md = a.metadata(None)
    _, version, arch = TRAINERS[("sd15", prediction)]
    assert md["ss_base_model_version"] == version and md["modelspec.architecture"] == arch
    assert swarmui_lora_class(md["modelspec.architecture"]) == "Stable Diffusion v1 LoRA"


def test_sdxl_and_flux1_sort_into_their_swarmui_classes():
    assert swarmui_lora_class("stable-diffusion-xl-v1-base/lora") == "Stable Diffusion XL 1.0-Base LoRA"
    assert swarmui_lora_class("flux-1-dev/lora") == swarmui_lora_class("flux-1-schnell/lora") == "Flux.1 LoRA"


def test_the_inspector_still_claims_each_family_by_its_version():
    # `lorakit inspect` reads ss_base_model_version by the family's prefix: every value written must keep it
    from lorakit.lora.inspect import _claims
    from lorakit.models.flux2.adapter import BASE_VERSION
    assert all(_claims("flux2", v) for v in BASE_VERSION.values())
    assert _claims("sd15", "sd_v1_v") and _claims("sd15", "sd_v1") and not _claims("sdxl", "sd_v1_v")

