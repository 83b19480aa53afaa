"""The SD 1.5 family: CLIP-L conditioning, the DDPM ε / v objective, sampling, LoRA targets and export names.

Conditioning as SD 1.x was trained: CLIP ViT-L/14's last hidden states (after the final layer norm), 77 tokens, as the
cross-attention context; no pooled vector, no micro-conditioning. LoRA targets are kohya's (``networks/lora.py``):
every Linear / 1×1 conv of a Transformer2DModel (proj_in/out are 1×1 convs in SD 1.5), optionally resnet and
sampler convolutions (LoCon), optionally CLIP attention and MLP Linears. sd-scripts names SD 1.x modules by their
diffusers paths (``lora_unet_down_blocks_0_attentions_0_proj_in``, ``lora_te_text_model_encoder_layers_0_mlp_fc1``),
which ComfyUI and Forge map back to the LDM weights (``comfy/lora.py``: ``unet_to_diffusers``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from lorakit.lora.metadata import MODELSPEC_VERSION
from lorakit.lora.variants import kohya_entries, refuse_in_diffusers
from lorakit.models.base import Batch, LoraModule, ModelSpec, NoisedInput, SamplePrompt, to_gpu
from lorakit.models import estimates
from lorakit.models.sd15 import configs, planning
from lorakit.models.clip_t5 import text_encoder_lora_targets
from lorakit.models.unet import UNetAdapter, _OnFirstUse
from lorakit.models.unet_parts import export_diffusers, unet_lora_targets

SPEC = ModelSpec(family="sd15", pipeline_classes=("StableDiffusionPipeline",),
                 latent_channels=4, vae_scale=0.18215, vae_shift=0.0, vae_downscale=8, patch_size=1,
                 display_name="SD 1.5",
                 bucket_divisibility=64, prediction="epsilon", default_resolution=512,
                 text_encoders=("clip_l",), max_caption_tokens=77, default_sample_steps=25,
                 metadata_base_version="sd_v1", network_module="networks.lora", default_cfg_scale=7.0,
                 text_encoder_lora=True, sample_multiple=64,
                 denoiser_name="unet",
                 # 3 UNet downsamplings (×8) on top of the VAE's ×8: bucket sides in steps of 64 px, as kohya's SD 1.x
                 bucket_step=64,
                 compile_blocks=("ResnetBlock2D",),  # as SDXL: the resnets carry most element-wise kernels
                 # fp8 storage of the resnet convs too: 2/3 of the U-Net's weights are convolutions (sd-scripts' fp8_base
                 # casts the whole U-Net; with Linears only lorakit stayed above its memory, RESULTS.md round 19)
                 fp8_convs=True,
                 config_keys=frozenset({"model.vae", "network.conv_rank", "network.conv_alpha", "training.prediction",
                                        "training.min_timestep", "training.max_timestep", "training.noise_offset",
                                        "training.min_snr_gamma", "sample.sampler",
                                        # the shared U-Net objective (unet.py: ddpm_noised) honours these as for SDXL
                                        "training.multires_noise_iterations", "training.multires_noise_discount",
                                        "training.ip_noise_gamma", "training.debiased_estimation_loss"}),
                 # estimates until GPU rows replace them (.planning)
                 activation_gib=planning.RATES["eager"], activation_gib_compiled=planning.RATES["compiled"],
                 measured_steps=estimates.scaled_rows("sd15", planning.REFERENCE, planning.STEP_SCALE),
                 planning_estimate=estimates.note("SD 1.5", planning.REFERENCE),
                 component_gib=planning.components(),
                 variant_spec=lambda spec, model: planning.spec_for(spec, model),
                 planning_model=lambda cfg: planning.planning_model(cfg))


def kohya_name(component: str, path: str) -> str:
    """sd-scripts' SD 1.x module name: ``lora_unet_<diffusers path>`` / ``lora_te_text_model_<path>``, dots → ``_``."""
    if component in ("unet", "denoiser"):
        return "lora_unet_" + path.replace(".", "_")
    if component == "te1":
        full = path if path.startswith("text_model.") else "text_model." + path
        return "lora_te_" + full.replace(".", "_")
    raise ValueError(f"SD 1.5 LoRA export: unknown component {component!r} (expected unet, te1)")


def export_kohya(lora: dict[str, dict[str, LoraModule]]) -> dict[str, torch.Tensor]:
    """kohya / ComfyUI / A1111 / Forge layout: ``<name>.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``."""
    out: dict[str, torch.Tensor] = {}
    for component, modules in lora.items():
        for path, m in modules.items():
            name = kohya_name(component, path)
            if name + ".alpha" in out:
                raise ValueError(f"SD 1.5 LoRA export: two modules map to {name}")
            out.update(kohya_entries(name, m))  # LoRA, or a LoHa/LoKr/DoRA module in LyCORIS names (issue 23)
    return out


def resolve_prediction(cfg: Any, detected: Optional[str]) -> str:
    """``training.prediction`` when the user set it, else what the weights say (else the config's value)."""
    from lorakit.config.load import explicit_keys

    chosen = getattr(getattr(cfg, "training", None), "prediction", SPEC.prediction)
    if detected is None or "training.prediction" in explicit_keys(cfg):
        return chosen
    return detected


class Adapter(UNetAdapter):
    """SD 1.5 behind the ModelAdapter protocol; made per run with the whole config."""

    spec = SPEC
    label = "SD 1.5"
    vae = _OnFirstUse("vae")
    te1 = _OnFirstUse("text")
    tokenizer = _OnFirstUse("text")

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.model_cfg = cfg.model
        self.training = cfg.training
        self.network = cfg.network
        self.sample_cfg = cfg.sample
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self._parts: Any = None
        self.unet: Any = None
        self.vae: Any = None
        self.te1: Any = None
        self.tokenizer: Any = None
        self.scheduler_config: dict = {k: v for k, v in configs.SCHEDULER.items() if not k.startswith("_")}
        self.prediction = getattr(cfg.training, "prediction", SPEC.prediction)
        self.variant_reason = "the config"
        self._alphas_cumprod: Optional[torch.Tensor] = None

    # ---- loading
    @staticmethod
    def check_config(cfg: Any, device: torch.device) -> None:
        """SD 1.5 adds no checks beyond the shared ones."""

    def load(self, model: Any, memory: Any, device: torch.device, dtype: torch.dtype) -> None:
        """The frozen UNet now (in ``dtype`` on ``device``); VAE (fp32) and CLIP-L on first use. The prediction type
        is ``training.prediction`` when set, else the variant detected from the weights."""
        from lorakit.models.sd15.load import open_components

        parts = open_components(model, dtype=dtype, device=torch.device(device))
        self._parts = None
        self.device, self.dtype = torch.device(device), dtype
        self.unet = parts.unet.to(self.device, dtype)
        self.unet.requires_grad_(False)
        self.unet.eval()
        self.vae = self.te1 = self.tokenizer = None
        self.scheduler_config = dict(parts.scheduler_config)
        self.prediction = resolve_prediction(self.cfg, parts.variant.prediction)
        self.variant_reason = parts.variant.reason
        self.model_cfg = model
        self._parts = parts
        self._alphas_cumprod = None
        if memory is not None and getattr(memory, "gradient_checkpointing", False):
            self.unet.enable_gradient_checkpointing()

    def _read_part(self, part: str) -> None:
        if part == "vae":
            self.vae = self._parts.load_vae().to(self.device, torch.float32)
        else:
            te, self.tokenizer = self._parts.load_text()
            self.te1 = te.to(self.device, self.dtype)

    def attach(self, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler_config: Optional[dict] = None,
               *, device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> None:
        """Use already built modules (tests, the toy world): the state ``load`` leaves."""
        self._parts = None
        self.device, self.dtype = torch.device(device), dtype
        self.unet = unet.to(self.device, dtype)
        self.vae = vae.to(self.device, torch.float32)
        self.te1 = text_encoder.to(self.device, dtype)
        for m in (self.unet, self.vae, self.te1):
            m.requires_grad_(False)
            m.eval()
        self.tokenizer = tokenizer
        if scheduler_config:
            self.scheduler_config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
        self._alphas_cumprod = None

    def _text_settings(self) -> list[str]:
        return ["last_hidden_state"]

    # ---- encoders
    def token_ids(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(captions, padding="max_length", max_length=SPEC.max_caption_tokens, truncation=True,
                              return_tensors="pt").input_ids

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Captions → ``context`` [B,77,768]: CLIP-L's last hidden states, as StableDiffusionPipeline encodes them."""
        self._need()
        ids = self.token_ids(captions).to(self.te1.device)
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.te1.parameters())
        with torch.set_grad_enabled(trains):
            out = self.te1(ids)
        return {"context": out.last_hidden_state.float().cpu()}

    def text_encoder_modules(self) -> dict[str, nn.Module]:
        self._need()
        if not getattr(self.network, "train_text_encoder", False) and self.__dict__.get("_te1") is None:
            return {}
        return {"te1": self.te1}

    # ---- LoRA
    def lora_targets(self, network: Any) -> dict[str, dict[str, int]]:
        """{"unet": {path: rank}} (+ "te1" when network.train_text_encoder), kohya's SD 1.x targets."""
        self._need()
        targets = {"unet": unet_lora_targets(self.unet, network.rank, getattr(network, "conv_rank", 0))}
        if getattr(network, "train_text_encoder", False):
            targets["te1"] = text_encoder_lora_targets(self.te1, network.rank)
        return targets

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        """kohya (default; ComfyUI, A1111, Forge, sd-scripts) or diffusers (PEFT keys, alpha/rank folded into B)."""
        if fmt == "kohya":
            return export_kohya(lora)
        if fmt == "diffusers":
            refuse_in_diffusers(lora)
            return export_diffusers(lora)
        raise ValueError(f"save.format: {fmt!r} is not a LoRA format for SD 1.5; use 'kohya' or 'diffusers'")

    def metadata(self, config: Any) -> dict[str, str]:
        """The values sd-scripts writes for SD 1.x: ss_base_model_version "sd_v1", "sd_v1_v" with v-prediction
        (library/model_util.py get_model_version_str_for_sd1_sd2, kohya-ss/sd-scripts @ 48d368f); modelspec
        architecture "stable-diffusion-v1/lora", SwarmUI's SD v1 LoRA class for both (T2IModelClassSorter.cs,
        mcmonkeyprojects/SwarmUI @ 062407c). CivitAI and ComfyUI read neither (docs/metadata.md)."""
        v = self.prediction == "v_prediction"
        return {
            "ss_base_model_version": SPEC.metadata_base_version + ("_v" if v else ""),
            "ss_network_module": SPEC.network_module,
            "ss_v2": "False",
            "ss_v_parameterization": str(v),
            "modelspec.sai_model_spec": MODELSPEC_VERSION,
            "modelspec.architecture": "stable-diffusion-v1/lora",
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
            "modelspec.prediction_type": "v" if v else "epsilon",
        }

    # ---- objective
    def _prediction(self, training: Any) -> str:
        return self.prediction

    def _unet_call(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dev, dt = self._unet_place()
        return self.unet(to_gpu(x, dev, dt), to_gpu(t, dev), encoder_hidden_states=to_gpu(context, dev, dt),
                         return_dict=False)[0]

    def predict(self, noised: NoisedInput, batch: Batch) -> torch.Tensor:
        self._need()
        return self._unet_call(noised.model_input, noised.timesteps, batch.text["context"])

    # ---- sampling
    def _sample_prediction(self, scheduler_config: dict) -> str:
        return self.prediction

    def _preview_call(self, prompt: SamplePrompt, height: int, width: int, use_cfg: bool) -> Any:
        """The negative prompt's encoding ("" when none) first, as StableDiffusionPipeline draws it."""
        cond = self.encode_text([prompt.prompt])["context"]
        context = torch.cat([self.encode_text([prompt.negative])["context"], cond]) if use_cfg else cond
        return lambda x, t: self._unet_call(x, t, context)
