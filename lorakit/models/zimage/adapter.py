"""The Z-Image family adapter (Turbo and base): rectified flow on FLUX.1's 16-channel latents.

Conventions (checked against diffusers' ZImagePipeline in the tests):
* latents: (AE posterior mean − 0.1159) · 0.3611 (FLUX.1's AE and constants), [B, 16, H/8, W/8]; the transformer
  patchifies 2×2 itself.
* x_σ = (1−σ)·x0 + σ·ε. The transformer takes t = 1 − σ (the pipeline's ``(1000 − timestep) / 1000``) and returns
  x0 − ε (the pipeline negates it before the Euler step); ``predict`` returns the velocity ε − x0 (its negation), the
  target of the flow objective.
* caption features: Qwen3's hidden_states[-2] of the unpadded tokens (:mod:`.text`).
* sampling: σ = linspace(1, 1/n, n) shifted with the scheduler's static shift 3 (σ' = 3σ / (1 + 2σ)), then 0; Euler.
  Turbo: 9 steps, no CFG; base: CFG (lorakit's scale s = diffusers' guidance_scale + 1).
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit.errors import ConfigError
from lorakit.models import common, estimates
from lorakit.models.base import LoraModule, ModelSpec, SamplePrompt, to_gpu

from . import configs, planning
from .lora_format import MODULE_TYPES

VAE_SCALE, VAE_SHIFT = 0.3611, 0.1159          # FLUX.1's AE constants (Z-Image's vae/config.json has the same)

SPEC = ModelSpec(family="zimage", pipeline_classes=("ZImagePipeline",),
                 latent_channels=16, vae_scale=VAE_SCALE, vae_shift=VAE_SHIFT, vae_downscale=8,
                 module_types=MODULE_TYPES,
                 display_name="Z-Image",
                 patch_size=2, bucket_divisibility=16, prediction="flow", default_resolution=1024,
                 text_encoders=("text_encoder",), max_caption_tokens=configs.MAX_TEXT_TOKENS, default_sample_steps=9,
                 metadata_base_version="z_image", network_module="networks.lora_zimage", default_cfg_scale=1.0,
                 denoiser_name="transformer", bucket_step=16,
                 config_keys=frozenset({
                     "model.ae", "model.text_encoder", "model.variant", "network.module_ranks",
                     "training.timestep_sampling", "training.sigmoid_scale", "training.logit_mean",
                     "training.logit_std",
                     "training.discrete_flow_shift", "training.text_max_length", "memory.blocks_to_swap"}),
                 # estimates until GPU rows replace them (.planning)
                 activation_gib=planning.RATES["eager"], activation_gib_compiled=planning.RATES["compiled"],
                 measured_steps=estimates.scaled_rows("zimage", planning.REFERENCE, planning.STEP_SCALE,
                                                      swap_blocks=planning.BLOCKS),
                 planning_estimate=estimates.note("Z-Image", planning.REFERENCE),
                 component_gib=planning.components(), vae_tiling=True, cfg_batched=False,
                 variant_spec=lambda spec, model: planning.spec_for(spec, model),
                 lora_input_gib=planning.lora_input_gib,
                 planning_model=lambda cfg: planning.planning_model(cfg))

# SwarmUI's model class id ("z-image/lora" for LoRAs, Turbo and base alike; T2IModelClassSorter.cs,
# mcmonkeyprojects/SwarmUI @ 062407c); musubi-tuner writes "Z-Image/lora" (utils/sai_model_spec.py, kohya-ss/
# musubi-tuner @ 30c658c), the same id to SwarmUI, which lower-cases it. ss_base_model_version "z_image" is
# musubi-tuner's (dataset/architectures.py). CivitAI and ComfyUI read neither key (docs/metadata.md).
ARCHITECTURE = "z-image"


def time_shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The scheduler's static shift: σ' = shift·σ / (1 + (shift − 1)·σ)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_schedule(num_steps: int, shift: float = configs.SHIFT) -> torch.Tensor:
    """``num_steps + 1`` descending sigmas (float32) of ZImagePipeline, ending at 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    return torch.cat([time_shift(base, shift), torch.zeros(1, dtype=torch.float64)]).to(torch.float32)


class Adapter(common.ComponentsAdapter):
    """ModelAdapter for Z-Image; one instance per run, made with the whole Config."""

    spec = SPEC
    family = "zimage"
    sample_defaults = configs.SAMPLE_DEFAULTS
    no_cfg_variant = "turbo"
    no_cfg_refusal = ("sample.cfg_scale: Z-Image Turbo is step-distilled and samples without CFG (as its pipeline, "
                      "guidance 0); remove it",
                      "sample.cfg_scale: Z-Image Turbo samples without CFG; set it to 1 (or use base)")

    # ------------------------------------------------------------------------------------------ loading
    def _load_components(self, model: Any, dtype: torch.dtype) -> Any:
        from .load import load_components
        return load_components(model, dtype)

    @staticmethod
    def check_config(cfg: Any, device: torch.device) -> None:
        """What Z-Image refuses before anything is read."""
        common.refuse_text_encoder_lora(cfg.network, "Z-Image")
        common.refuse_flux1_variant(cfg.model, "Z-Image takes auto, distilled (Turbo) or base")

    def text_length(self) -> int:
        return int(getattr(self.cfg.training, "text_max_length", None) or configs.MAX_TEXT_TOKENS)

    def identity(self) -> dict[str, str]:
        """Cache keys from file identities (size, mtime, header hash) and the encoding settings."""
        tok = str(getattr(self.cfg.model, "tokenizer_dir", None) or "folder")
        return {"vae": self.cache_key("vae", "ae", f"mean;{VAE_SCALE};{VAE_SHIFT}"),
                "text": self.cache_key("text", "text_encoder", tok, f"len={self.text_length()}", "hidden[-2]"),
                "model": self.cache_key("model", "checkpoint")}

    # ------------------------------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """{"prompt_embeds": [B, L, 2560] (Qwen3 hidden_states[-2]), "prompt_mask": [B, L]}, L = text_max_length."""
        from .text import encode
        encoder, tokenizer = self._text_parts()
        with self._on_device(encoder):
            emb, _ids, mask = encode(encoder, tokenizer, captions, max_length=self.text_length())
        return {"prompt_embeds": emb.float().cpu(), "prompt_mask": mask.cpu()}

    # ------------------------------------------------------------------------------------------ objective
    def _forward(self, x: torch.Tensor, sigmas: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transformer on [B,16,h,w] at σ with the captions' real tokens; returns the velocity ε − x0, float32."""
        from .text import unpad
        tr = self._c().transformer
        p = next(tr.parameters())
        dev, dt = p.device, p.dtype
        b = x.shape[0]
        caps = unpad(to_gpu(text["prompt_embeds"], dev, dt), to_gpu(text["prompt_mask"], dev))
        t = 1.0 - to_gpu(sigmas, dev, torch.float32).reshape(-1).expand(b)
        xs = list(to_gpu(x, dev, dt).unsqueeze(2).unbind(0))
        out = tr(xs, t, caps, return_dict=False)[0]
        return -torch.stack([o.float() for o in out]).squeeze(2)

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, prompt: SamplePrompt, generator: torch.Generator) -> Any:
        """Flow-match Euler along ZImagePipeline's schedule; CFG on base (negative: the prompt's, else empty)."""
        return self.flow_sample(prompt, generator, SPEC.latent_channels, sample_schedule)

    # ------------------------------------------------------------------------------------------ LoRA
    def _depths(self) -> tuple[int, int]:
        s = self._c().shape
        return s.n_layers, s.n_refiner

    def lora_targets(self, network: Any) -> dict[str, dict[str, int]]:
        from .lora_format import transformer_targets
        common.refuse_text_encoder_lora(network, "Z-Image")
        out = {"transformer": transformer_targets(network, *self._depths())}
        if not out["transformer"]:
            raise ConfigError("network.module_ranks: leaves no Z-Image module to train")
        return out

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        """ComfyUI names (original paths, fused qkv; save.format = "kohya") or diffusers lora_A/lora_B names."""
        from .lora_format import to_comfy, to_diffusers
        if fmt == "diffusers":
            return to_diffusers(lora)
        if fmt != "kohya":
            raise ConfigError(f"save.format: {fmt!r} is not supported for zimage; use kohya or diffusers")
        tr = self._c().transformer
        outs = common.linear_widths(tr)
        return to_comfy(lora, outs, *self._depths())

    def metadata(self, config: Any) -> dict[str, str]:
        """The ss_* keys musubi-tuner writes for Z-Image (``ss_base_model_version = z_image``) and the modelspec
        architecture SwarmUI sorts by (``z-image/lora``; Turbo and base share it: one LoRA serves both)."""
        t = config.training
        return {
            "ss_base_model_version": SPEC.metadata_base_version,
            "ss_network_module": SPEC.network_module,
            **common.flow_metadata(t),
            "ss_model_prediction_type": "raw",
            "lorakit_zimage_variant": self._c().variant,
            "modelspec.architecture": f"{ARCHITECTURE}/lora",
            "modelspec.implementation": "https://github.com/Tongyi-MAI/Z-Image",
        }
