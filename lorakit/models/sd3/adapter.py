"""The SD3 / SD3.5 family adapter (large, large-turbo, medium; SD3 medium loads too): rectified flow on 16-channel
latents.

Conventions (checked against diffusers' StableDiffusion3Pipeline in the tests):
* latents: (VAE posterior mean − 0.0609) · 1.5305, [B, 16, H/8, W/8]; the transformer patchifies 2×2 itself.
* x_σ = (1−σ)·x0 + σ·ε; the transformer takes t = 1000·σ and returns the velocity ε − x0 (the pipeline's Euler step
  is x + (σ_next − σ)·v), the target of the flow objective.
* text: [CLIP-L | CLIP-G] penultimate states padded to 4096, then T5-XXL along the sequence; pooled = both CLIP
  projections (:mod:`.text`).
* sampling: diffusers' FlowMatchEulerDiscreteScheduler (static shift 3), Euler, CFG as the pipeline
  (neg + s·(pos − neg): lorakit's cfg_scale = diffusers' guidance_scale); large-turbo: 4 steps without CFG.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.models import common
from lorakit.models.base import LoraModule, ModelSpec, SamplePrompt, to_gpu

from . import configs, planning
from .lora_format import MODULE_TYPES

VAE_SCALE, VAE_SHIFT = configs.VAE_SCALE, configs.VAE_SHIFT

SPEC = ModelSpec(family="sd3", pipeline_classes=("StableDiffusion3Pipeline",),
                 latent_channels=16, vae_scale=VAE_SCALE, vae_shift=VAE_SHIFT, vae_downscale=8,
                 module_types=MODULE_TYPES,
                 display_name="SD3.5",
                 patch_size=2, bucket_divisibility=16, prediction="flow", default_resolution=1024,
                 text_encoders=("clip_l", "clip_g", "t5xxl"), max_caption_tokens=configs.CLIP_TOKENS,
                 default_sample_steps=28, metadata_base_version="5-large", network_module="networks.lora_sd3",
                 text_encoder_lora=True,
                 metadata_versions=("5-medium", "medium"),
                 default_cfg_scale=3.5, denoiser_name="transformer", bucket_step=16,
                 compile_blocks=("JointTransformerBlock",),
                 config_keys=frozenset({
                     "model.clip_l", "model.clip_g", "model.t5xxl", "model.vae", "model.variant",
                     "network.module_ranks", "training.timestep_sampling", "training.sigmoid_scale",
                     "training.logit_mean", "training.logit_std", "training.discrete_flow_shift",
                     "training.t5_max_length", "memory.blocks_to_swap"}),
                 # the planning numbers differ per size (.planning: measured, RESULTS.md round 14); the family-wide
                 # ones are Large's (the larger)
                 activation_gib=planning.RATES["large"]["eager"],
                 activation_gib_compiled=planning.RATES["large"]["compiled"],
                 measured_steps=planning.steps("large"),
                 component_gib=planning.components(), vae_tiling=True, cfg_batched=False,
                 variant_spec=lambda spec, model: planning.spec_for(spec, model),
                 planning_model=lambda cfg: planning.planning_model(cfg))

# ss_base_model_version: sd-scripts' MMDiT model_type (library/sd3_utils.py, kohya-ss/sd-scripts @ 48d368f).
# modelspec.architecture: SwarmUI's LoRA class ids (src/Text2Image/T2IModelClassSorter.cs, mcmonkeyprojects/SwarmUI
# @ 062407c; Large Turbo is sorted as Large). sd-scripts writes "stable-diffusion-3-5-large/lora", an id SwarmUI does
# not know; CivitAI and ComfyUI read neither key (docs/metadata.md).
BASE_VERSION = {"large": "5-large", "large-turbo": "5-large", "medium": "5-medium", "sd3-medium": "medium",
                "custom": "5-large"}
ARCHITECTURE = {"large": "stable-diffusion-v3.5-large", "large-turbo": "stable-diffusion-v3.5-large",
                "medium": "stable-diffusion-v3.5-medium", "sd3-medium": "stable-diffusion-v3-medium",
                "custom": "stable-diffusion-v3.5-large"}


def scheduler() -> Any:
    """diffusers' FlowMatchEulerDiscreteScheduler as the SD3.5 repositories ship it (static shift 3)."""
    return common.flow_scheduler(configs.scheduler_config())


def sample_schedule(num_steps: int) -> torch.Tensor:
    """``num_steps + 1`` descending sigmas (float32) of StableDiffusion3Pipeline's scheduler, ending at 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    s = scheduler()
    s.set_timesteps(num_steps, device="cpu")
    return s.sigmas.to(torch.float32)


class Adapter(common.ComponentsAdapter):
    """ModelAdapter for SD3 / SD3.5; one instance per run, made with the whole Config."""

    spec = SPEC
    family = "sd3"
    encoders = ("clip_l", "clip_g", "t5", "vae")
    vae_role = "vae"
    sample_defaults = configs.SAMPLE_DEFAULTS
    no_cfg_variant = "large-turbo"
    no_cfg_refusal = ("sample.cfg_scale: SD3.5 Large Turbo is step-distilled and samples without CFG (as its model "
                      "card: 4 steps, guidance 0); remove it",
                      "sample.cfg_scale: SD3.5 Large Turbo samples without CFG; set it to 1")

    # ------------------------------------------------------------------------------------------ loading
    def _load_components(self, model: Any, dtype: torch.dtype) -> Any:
        from .load import load_components
        return load_components(model, dtype)

    @staticmethod
    def check_config(cfg: Any, device: torch.device) -> None:
        """What SD3 refuses before anything is read."""
        common.refuse_flux1_variant(cfg.model, "SD3.5 takes auto, distilled (large-turbo) or base")

    def t5_length(self) -> int:
        return int(getattr(self.cfg.training, "t5_max_length", None) or configs.T5_TOKENS)

    def identity(self) -> dict[str, str]:
        """Cache keys from file identities (size, mtime, header hash) and the encoding settings."""
        from pathlib import Path

        from lorakit.fsutil import path_identity
        files = self._c().files
        other = [path_identity(Path(files[r])) if files.get(r) else "none" for r in ("clip_g", "t5xxl")]
        tok = str(getattr(self.cfg.model, "tokenizer_dir", None) or "package")
        return {"vae": self.cache_key("vae", "vae", f"mean;{VAE_SCALE};{VAE_SHIFT}"),
                "text": self.cache_key("text", "clip_l", *other, tok, f"t5len={self.t5_length()}", "hidden[-2]"),
                "model": self.cache_key("model", "checkpoint")}

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """{"prompt_embeds": [B, 77 + t5_max_length, 4096], "pooled": [B, 2048]} (the pipeline's encode_prompt); on
        the CPU without gradients, or on the device with gradients while a CLIP trains (network.train_text_encoder)."""
        from .text import encode
        c = self._c()
        mods = [m for m in (c.clip_l, c.clip_g, c.t5) if m is not None]
        for m in mods:
            m.to(self.device)
        trains = torch.is_grad_enabled() and any(p.requires_grad for m in (c.clip_l, c.clip_g) for p in m.parameters())
        with torch.set_grad_enabled(trains):
            out = encode(c.clip_l, c.clip_g, c.t5, c.tokenizers, captions, self.t5_length(),
                         int(c.transformer.config.joint_attention_dim))
        if trains:
            return {"prompt_embeds": out["prompt_embeds"].float(), "pooled": out["pooled"].float()}
        return {"prompt_embeds": out["prompt_embeds"].float().cpu().detach(), "pooled": out["pooled"].float().cpu()
                .detach()}

    def text_encoder_modules(self) -> dict[str, nn.Module]:
        """{"te1": CLIP-L, "te2": CLIP-G} while network.train_text_encoder is on (as sd-scripts' lora_te1_ /
        lora_te2_; T5 is not trained), else {}."""
        if not getattr(self.cfg.network, "train_text_encoder", False):
            return {}
        c = self._c()
        return {"te1": c.clip_l, "te2": c.clip_g}

    # ------------------------------------------------------------------------------------------ objective
    def _forward(self, x: torch.Tensor, sigmas: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transformer on [B,16,h,w] at σ; returns the velocity ε − x0 in float32."""
        tr = self._c().transformer
        p = next(tr.parameters())
        dev, dt = p.device, p.dtype
        b = x.shape[0]
        t = to_gpu(sigmas, dev, torch.float32).reshape(-1).expand(b) * 1000.0
        out = tr(hidden_states=to_gpu(x, dev, dt), timestep=t, encoder_hidden_states=to_gpu(text["prompt_embeds"],
                                                                                             dev, dt),
                 pooled_projections=to_gpu(text["pooled"], dev, dt), return_dict=False)[0]
        return out.float()

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, prompt: SamplePrompt, generator: torch.Generator) -> Any:
        """Flow-match Euler along the pipeline's scheduler; CFG (negative: the prompt's, else empty)."""
        return self.flow_sample(prompt, generator, SPEC.latent_channels, sample_schedule)

    # ------------------------------------------------------------------------------------------ LoRA
    def _depths(self) -> tuple[int, tuple[int, ...]]:
        s = self._c().shape
        return s.depth, s.dual_layers

    def lora_targets(self, network: Any) -> dict[str, dict[str, int]]:
        from lorakit.models.clip_t5 import text_encoder_lora_targets  # CLIP q/k/v/out and fc1/fc2 of each layer

        from .lora_format import transformer_targets
        out = {"transformer": transformer_targets(network, *self._depths())}
        if not out["transformer"]:
            raise ConfigError("network.module_ranks: leaves no SD3 module to train")
        if getattr(network, "train_text_encoder", False):
            for name, te in self.text_encoder_modules().items():
                out[name] = text_encoder_lora_targets(te, network.rank)
        return out

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        """kohya / ComfyUI names (original paths, fused qkv; save.format = "kohya") or diffusers lora_A/lora_B."""
        from .lora_format import text_encoder_names, to_comfy, to_diffusers
        if fmt not in ("kohya", "diffusers"):
            raise ConfigError(f"save.format: {fmt!r} is not supported for sd3; use kohya or diffusers")
        tes = {k: v for k, v in lora.items() if k in ("te1", "te2")}
        rest = {k: v for k, v in lora.items() if k not in tes}
        out = to_diffusers(rest) if fmt == "diffusers" else \
            to_comfy(rest, common.linear_widths(self._c().transformer), *self._depths())
        out.update(text_encoder_names(tes, fmt))
        return out

    def metadata(self, config: Any) -> dict[str, str]:
        """sd-scripts' ss_* keys for SD3 (``ss_base_model_version`` = its MMDiT model type: 5-large / 5-medium /
        medium) and SwarmUI's model class (``stable-diffusion-v3.5-large/lora`` ...)."""
        t = config.training
        variant = self._c().variant
        return {
            "ss_base_model_version": BASE_VERSION[variant],
            "ss_network_module": SPEC.network_module,
            **common.flow_metadata(t),
            "ss_t5xxl_max_token_length": str(self.t5_length()),
            "ss_model_prediction_type": "raw",
            "lorakit_sd3_variant": variant,
            "modelspec.architecture": f"{ARCHITECTURE[variant]}/lora",
            "modelspec.implementation": "https://github.com/Stability-AI/sd3.5",
            "modelspec.prediction_type": "flow",
        }
