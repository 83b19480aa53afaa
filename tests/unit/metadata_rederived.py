"""What the tools that read or write a LoRA's ``ss_base_model_version`` / ``modelspec.architecture`` do with them,
re-derived as data from their sources for tests (none of them is a package CI could install). Read, not copied:

* SwarmUI, src/Text2Image/T2IModelClassSorter.cs @ 062407c7bb488fc76ac61044cb929f0d0a30e60f (mcmonkeyprojects/
  SwarmUI): ``IdentifyClassFor`` takes ``modelspec.architecture`` from the header's ``__metadata__``, lower-cases it,
  applies ``Remaps`` (keys already lower-case) and looks it up among the registered classes (their ids lower-cased by
  ``Register``); a hit sorts the LoRA into that class without reading its tensors. The LoRA classes of lorakit's
  families and the remaps that lead to them are below (name = the class's ``Name``).
* musubi-tuner @ 30c658c4f4b0bf05038b3346eff9670259b10fc7 (kohya-ss/musubi-tuner): ``ss_base_model_version`` is the
  trainer's ``architecture_full_name`` (src/musubi_tuner/dataset/architectures.py: flux_2_klein_4b / flux_2_klein_9b /
  flux_2_dev, the same for base and distilled Klein (flux_2/flux2_utils.py FLUX2_MODEL_INFO); qwen_image; z_image,
  one for Turbo and base), ``modelspec.architecture`` is utils/sai_model_spec.py's ARCH_* + "/lora".
* sd-scripts @ 48d368fa557731ad0488c07304dfeba8c07910eb (kohya-ss/sd-scripts): SD 1.x ``ss_base_model_version`` from
  library/model_util.py get_model_version_str_for_sd1_sd2 ("sd_v1", "sd_v1_v" with v-parameterization); SD3 from
  library/sd3_utils.py (the MMDiT model_type: "5-large" with qk-norm and no x-attention blocks, "5-medium" with
  them, "medium" for SD3 medium); library/sai_model_spec.py writes "stable-diffusion-v1/lora" for SD 1.x and
  "stable-diffusion-3-" + model_type + "/lora" for SD3 (the latter is no SwarmUI class: see SWARMUI below).
* CivitAI, civitai/civitai @ ebed661630d3407a6d853981d89c97c31a2a4be0: neither key is read anywhere in the site's
  source (the upload form reads a safetensors header only for the weights' precision, src/utils/file-helpers.ts
  inferSafetensorsPrecision; the scan stores the header as ``headerData`` and parses only ss_tag_frequency,
  src/server/services/model-file-scan.service.ts). The base model is the uploader's choice among the names of
  packages/civitai-shared/src/basemodel.constants.ts; those of lorakit's families are CIVITAI_BASE_MODELS.
* ComfyUI: LoraLoader reads tensors only (comfy.utils.load_torch_file + comfy.sd.load_lora_for_models; nodes.py @
  e60e19b175f93f2c8fac037063de9f13259be9d4, see comfyui_rederived.py); it writes modelspec.architecture only when
  saving a checkpoint (comfy_extras/nodes_model_merging.py) and reads neither key of a LoRA.
"""

from __future__ import annotations

from typing import Optional

SWARMUI_COMMIT = "062407c7bb488fc76ac61044cb929f0d0a30e60f"
MUSUBI_COMMIT = "30c658c4f4b0bf05038b3346eff9670259b10fc7"
SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
CIVITAI_COMMIT = "ebed661630d3407a6d853981d89c97c31a2a4be0"

# SwarmUI's LoRA classes of lorakit's families: Register(new() { ID = ..., Name = ... })
SWARMUI_LORA_CLASSES = {
    "stable-diffusion-v1/lora": "Stable Diffusion v1 LoRA",
    "stable-diffusion-xl-v1-base/lora": "Stable Diffusion XL 1.0-Base LoRA",
    "stable-diffusion-v3-medium/lora": "Stable Diffusion 3 Medium LoRA",
    "stable-diffusion-v3.5-large/lora": "Stable Diffusion 3.5 Large LoRA",
    "stable-diffusion-v3.5-medium/lora": "Stable Diffusion 3.5 Medium LoRA",
    "Flux.1-dev/lora": "Flux.1 LoRA",
    "flux.2-dev/lora": "Flux.2 Dev LoRA",
    "flux.2-klein-4b/lora": "Flux.2 Klein 4B LoRA",
    "flux.2-klein-9b/lora": "Flux.2 Klein 9B LoRA",
    "z-image/lora": "Z-Image LoRA",
    "qwen-image/lora": "Qwen Image LoRA",
}
# its Remaps that end in one of those classes ("General correction remaps")
SWARMUI_REMAPS = {
    "flux-1-dev/lora": "Flux.1-dev/lora",
    "flux-dev/lora": "Flux.1-dev/lora",
    "flux-1-schnell/lora": "Flux.1-dev/lora",
    "flux.1-schnell/lora": "Flux.1-dev/lora",
    "stable-diffusion-3-3-5-large/lora": "stable-diffusion-v3.5-large/lora",
    "stable-diffusion-3-3-5-medium/lora": "stable-diffusion-v3.5-medium/lora",
}


def swarmui_lora_class(architecture: str) -> Optional[str]:
    """The Name of the SwarmUI class a LoRA with this ``modelspec.architecture`` is sorted into (IdentifyClassFor's
    lookup by architecture id), None where SwarmUI does not know the id (it then guesses from the tensor names)."""
    arch = architecture.strip().lower()
    if not arch:
        return None
    arch = SWARMUI_REMAPS.get(arch, arch).lower()
    classes = {k.lower(): v for k, v in SWARMUI_LORA_CLASSES.items()}
    return classes.get(arch)


# (ss_base_model_version, modelspec.architecture) the reference trainer writes for a LoRA of each lorakit
# family / variant; None where no trainer of the two writes that family
TRAINERS = {
    ("flux2", "klein-4b"): ("musubi-tuner", "flux_2_klein_4b", "Flux.2-klein-4b/lora"),
    ("flux2", "klein-9b"): ("musubi-tuner", "flux_2_klein_9b", "Flux.2-klein-9b/lora"),
    ("flux2", "dev"): ("musubi-tuner", "flux_2_dev", "Flux.2-dev/lora"),
    ("qwenimage", ""): ("musubi-tuner", "qwen_image", "Qwen-Image/lora"),
    ("zimage", ""): ("musubi-tuner", "z_image", "Z-Image/lora"),
    ("sd15", "epsilon"): ("sd-scripts", "sd_v1", "stable-diffusion-v1/lora"),
    ("sd15", "v_prediction"): ("sd-scripts", "sd_v1_v", "stable-diffusion-v1/lora"),
    ("sd3", "large"): ("sd-scripts", "5-large", "stable-diffusion-3-5-large/lora"),
    ("sd3", "large-turbo"): ("sd-scripts", "5-large", "stable-diffusion-3-5-large/lora"),
    ("sd3", "medium"): ("sd-scripts", "5-medium", "stable-diffusion-3-5-medium/lora"),
    ("sd3", "sd3-medium"): ("sd-scripts", "medium", "stable-diffusion-3-medium/lora"),
}

# CivitAI's base models of lorakit's families / variants (basemodel.constants.ts BASE_MODELS: ``name`` -> the
# ``name`` of its ``licenseId`` in LICENSES); the SD 3 / 3.5 entries are hidden and disabled there
CIVITAI_BASE_MODELS = {
    "SD 1.5": "CreativeML Open RAIL-M",
    "SDXL 1.0": "CreativeML Open RAIL++-M",
    "Flux.1 D": "FLUX.1 [dev] Non-Commercial License",
    "Flux.1 S": "Apache 2.0",
    "Flux.2 D": "FLUX.2 [dev] Non-Commercial License",
    "Flux.2 Klein 9B": "FLUX.2 Klein 9B Non-Commercial License",
    "Flux.2 Klein 9B-base": "FLUX.2 Klein 9B Non-Commercial License",
    "Flux.2 Klein 4B": "Apache 2.0",
    "Flux.2 Klein 4B-base": "Apache 2.0",
    "SD 3": "Stability AI Community License Agreement",
    "SD 3.5": "Stability AI Community License Agreement",
    "SD 3.5 Large": "Stability AI Community License Agreement",
    "SD 3.5 Large Turbo": "Stability AI Community License Agreement",
    "SD 3.5 Medium": "Stability AI Community License Agreement",
    "Qwen": "Apache 2.0",
    "ZImageTurbo": "Apache 2.0",
    "ZImageBase": "Apache 2.0",
}
