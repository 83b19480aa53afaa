"""The Qwen-Image family adapter: rectified flow on 2×2-packed 16-channel latents (checked against diffusers'
QwenImagePipeline in the tests).

Conventions:
* latents: ``AutoencoderKLQwenImage`` posterior mean of the image as a one-frame video, normalised per channel,
  (z − latents_mean) / latents_std, [B, 16, H/8, W/8] (SPEC's scalar scale/shift are 1 and 0: the statistics are the
  VAE's own, applied here); the transformer takes them 2×2-packed ([B, h·w/4, 64], the pipeline's ``_pack_latents``)
  with ``img_shapes`` (1, h/2, w/2).
* x_σ = (1−σ)·x0 + σ·ε, target ε − x0; the transformer gets σ (the pipeline's timestep / 1000).
* σ for training: ``training.timestep_sampling = "flux_shift"`` (default) is Qwen-Image's dynamic shift: a sigmoid
  sample time-shifted with μ on the line through (256 tokens, 0.5) and (8192, 0.9), the scheduler config the
  pipeline ships (musubi-tuner's ``qwen_shift``); ``shift`` / ``sigmoid`` / ``logit_normal`` / ``uniform`` as for
  every flow family.
* sampling: diffusers' FlowMatchEulerDiscreteScheduler with that config (μ from the image's token count, sigmas
  stretched to end at 0.02, then 0), Euler; CFG as ``true_cfg_scale``: neg + s·(cond − neg), rescaled per token to
  the conditional prediction's norm.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.models import common
from lorakit.models.base import LoraModule, ModelSpec, SamplePrompt, to_gpu

from . import configs, planning
from .lora_format import MODULE_TYPES

SPEC = ModelSpec(family="qwenimage", pipeline_classes=("QwenImagePipeline",),
                 latent_channels=16, vae_scale=1.0, vae_shift=0.0, vae_downscale=8, patch_size=2,
                 module_types=MODULE_TYPES,
                 display_name="Qwen-Image",
                 bucket_divisibility=16, prediction="flow", default_resolution=1024, text_encoders=("text_encoder",),
                 max_caption_tokens=configs.MAX_TEXT_TOKENS, default_sample_steps=configs.SAMPLE_STEPS,
                 metadata_base_version="qwen_image", network_module="networks.lora_qwen_image",
                 default_cfg_scale=configs.CFG_SCALE, denoiser_name="transformer", bucket_step=16,
                 config_keys=frozenset({
                     "model.vae", "model.text_encoder", "network.module_ranks", "training.timestep_sampling",
                     "training.sigmoid_scale", "training.logit_mean", "training.logit_std",
                     "training.discrete_flow_shift", "training.text_max_length", "memory.blocks_to_swap",
                     "distributed.shard"}),
                 # measured (RESULTS.md round 14) and estimated numbers: .planning says which
                 activation_gib=planning.RATES["eager"], activation_gib_compiled=planning.RATES["compiled"],
                 measured_steps=planning.steps(),
                 component_gib=planning.components(), vae_tiling=True, cfg_batched=False,
                 variant_spec=lambda spec, model: planning.spec_for(spec, model),
                 planning_model=lambda cfg: planning.planning_model(cfg))

# SwarmUI's model class id ("qwen-image/lora" for LoRAs; T2IModelClassSorter.cs, mcmonkeyprojects/SwarmUI @ 062407c);
# musubi-tuner writes "Qwen-Image/lora" (utils/sai_model_spec.py, kohya-ss/musubi-tuner @ 30c658c), the same id to
# SwarmUI, which lower-cases it. ss_base_model_version "qwen_image" is musubi-tuner's (dataset/architectures.py).
# CivitAI and ComfyUI read neither key (docs/metadata.md).
ARCHITECTURE = "qwen-image"


def dynamic_mu(seq_len: int) -> float:
    """μ of the pipeline's ``calculate_shift`` with Qwen-Image's scheduler config (256 -> 0.5, 8192 -> 0.9)."""
    from lorakit.diffusion.objectives import flux_mu
    s = configs.scheduler_config()
    return flux_mu(seq_len, s["base_image_seq_len"], s["max_image_seq_len"], s["base_shift"], s["max_shift"])


def training_sigmas(batch: int, training: Any, generator: torch.Generator, seq_len: int) -> torch.Tensor:
    """σ per sample for training (float32 [batch]); ``flux_shift`` with Qwen-Image's dynamic μ."""
    from lorakit.diffusion.objectives import flux_time_shift, sample_sigmas
    mode = training.timestep_sampling
    s = sample_sigmas(batch, "sigmoid" if mode == "flux_shift" else mode, generator,
                      sigmoid_scale=training.sigmoid_scale, logit_mean=training.logit_mean,
                      logit_std=training.logit_std, shift=training.discrete_flow_shift)
    return flux_time_shift(dynamic_mu(seq_len), s) if mode == "flux_shift" else s


def sample_schedule(num_steps: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas [n+1] ending at 0, timesteps [n]) of QwenImagePipeline for ``seq_len`` packed image tokens, from
    diffusers' scheduler with the shipped config."""
    import numpy as np
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sched = common.flow_scheduler(configs.scheduler_config())
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=dynamic_mu(seq_len), device="cpu")
    return sched.sigmas.float(), sched.timesteps.float()


def true_cfg(cond: torch.Tensor, neg: torch.Tensor, scale: float) -> torch.Tensor:
    """The pipeline's guidance: neg + s·(cond − neg), rescaled per token (last dim) to the norm of ``cond``."""
    comb = neg + scale * (cond - neg)
    return comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))


class Adapter(common.ComponentsAdapter):
    """ModelAdapter for Qwen-Image; one instance per run, made with the whole Config."""

    spec = SPEC
    family = "qwenimage"
    encoders = ("text_encoder", "vae")
    vae_role = "vae"

    # ------------------------------------------------------------------------------------------ loading
    def _load_components(self, model: Any, dtype: torch.dtype) -> Any:
        from .load import load_components
        return load_components(model, dtype)

    @staticmethod
    def check_config(cfg: Any, device: torch.device) -> None:
        """What Qwen-Image refuses before anything is read."""
        common.refuse_text_encoder_lora(cfg.network, "Qwen-Image")
        if getattr(cfg.model, "variant", "auto") not in ("auto", "", None):
            raise ConfigError(f"model.variant: {cfg.model.variant!r}; Qwen-Image has one variant, remove it")

    def text_length(self) -> int:
        n = int(getattr(self.cfg.training, "text_max_length", None) or configs.MAX_TEXT_TOKENS)
        if n > configs.TOKENIZER_MAX_LENGTH:
            raise ConfigError(f"training.text_max_length: {n}; Qwen-Image reads at most "
                              f"{configs.TOKENIZER_MAX_LENGTH} prompt tokens")
        return n

    def identity(self) -> dict[str, str]:
        """Cache keys from file identities (size, mtime, header hash) and the encoding settings."""
        tok = str(getattr(self.cfg.model, "tokenizer_dir", None) or "folder")
        return {"vae": self.cache_key("vae", "vae", "mode;latents_mean/std"),
                "text": self.cache_key("text", "text_encoder", tok, f"len={self.text_length()}", "hidden[-1]",
                                       f"drop={configs.DROP_IDX}"),
                "model": self.cache_key("model", "checkpoint")}

    # ------------------------------------------------------------------------------------------ encoding
    def _stats(self, vae: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = vae.config
        mean = torch.tensor(c.latents_mean, dtype=torch.float32).view(1, c.z_dim, 1, 1).to(like.device)
        std = torch.tensor(c.latents_std, dtype=torch.float32).view(1, c.z_dim, 1, 1).to(like.device)
        return mean, std

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> (mean − latents_mean) / latents_std, [B,16,H/8,W/8]; sides multiples of 16."""
        vae = self._c().vae
        if pixels.shape[-1] % 16 or pixels.shape[-2] % 16:
            raise ValueError(f"qwenimage: image size {pixels.shape[-1]}x{pixels.shape[-2]} must be a multiple of 16")
        with self._on_device(vae) as where:
            x = pixels.to(where, next(vae.parameters()).dtype).unsqueeze(2)
            z = vae.encode(x).latent_dist.mode()[:, :, 0].float()
        mean, std = self._stats(vae, z)
        return ((z - mean) / std).cpu()

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """{"prompt_embeds": [B, L, 3584], "prompt_mask": [B, L]}, L = training.text_max_length (512)."""
        from .text import encode
        encoder, tokenizer = self._text_parts()
        with self._on_device(encoder):
            emb, mask = encode(encoder, tokenizer, captions, max_length=self.text_length())
        return {"prompt_embeds": emb.float().cpu(), "prompt_mask": mask.cpu()}

    # ------------------------------------------------------------------------------------------ objective
    def _sigmas(self, b: int, training: Any, generator: torch.Generator, seq_len: int) -> torch.Tensor:
        """σ from training.timestep_sampling (flux_shift: Qwen-Image's dynamic shift for h·w/4 tokens)."""
        return training_sigmas(b, training, generator, seq_len)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transformer on [B,16,h,w] at t (= σ) with the batch's prompt features; the velocity, float32."""
        from lorakit.diffusion.packing import pack_latents, unpack_latents

        from .text import trim
        tr = self._c().transformer
        p = next(tr.parameters())
        dev, dt = p.device, p.dtype
        b, _, h, w = x.shape
        emb, mask = trim(text["prompt_embeds"], text["prompt_mask"])
        out = tr(hidden_states=pack_latents(to_gpu(x, dev, dt)), timestep=to_gpu(t, dev, dt).reshape(-1).expand(b),
                 encoder_hidden_states=to_gpu(emb, dev, dt),
                 encoder_hidden_states_mask=None if mask is None else to_gpu(mask, dev),
                 img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
        return unpack_latents(out.float(), h, w)

    # ------------------------------------------------------------------------------------------ sampling
    def sample_settings(self, prompt: SamplePrompt) -> tuple[int, float]:
        steps = prompt.steps or getattr(self.cfg.sample, "steps", None) or configs.SAMPLE_STEPS
        return int(steps), float(prompt.cfg_scale)

    @torch.no_grad()
    def sample(self, prompt: SamplePrompt, generator: torch.Generator) -> Any:
        """QwenImagePipeline's sampler: its schedule, Euler steps, true CFG (negative: the prompt's, else empty)
        when cfg_scale > 1."""
        steps, cfg_scale = self.sample_settings(prompt)
        x = self.preview_noise(prompt, generator, SPEC.latent_channels)
        return self.decode(self.denoise(x, prompt.prompt, prompt.negative if cfg_scale > 1.0 else None, steps,
                                        cfg_scale))

    def denoise(self, x: torch.Tensor, prompt: str, negative: Optional[str], steps: int, cfg_scale: float
                ) -> torch.Tensor:
        """Euler from noise ``x`` [1,16,h,w] along the pipeline's schedule; returns the final latents."""
        sigmas, timesteps = sample_schedule(steps, (x.shape[-2] // 2) * (x.shape[-1] // 2))
        cond = self.encode_text([prompt])
        neg = self.encode_text([negative]) if negative is not None else None
        return self.euler_cfg(x, sigmas, steps, cond, neg, cfg_scale, times=timesteps / 1000)

    def _guide(self, v: torch.Tensor, v_neg: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """The pipeline's true CFG on the packed tokens (rescaled per token to the conditional norm)."""
        from lorakit.diffusion.packing import pack_latents, unpack_latents
        h, w = v.shape[-2:]
        return unpack_latents(true_cfg(pack_latents(v), pack_latents(v_neg), cfg_scale), h, w)

    def decode(self, x: torch.Tensor) -> Any:
        vae = self._c().vae
        with self._on_device(vae) as where:
            mean, std = self._stats(vae, x.to(where))
            z = x.float().to(where) * std + mean
            img = vae.decode(z.to(next(vae.parameters()).dtype).unsqueeze(2)).sample[:, :, 0]
        from lorakit.data.images import to_images
        return to_images(img[0])[0]

    # ------------------------------------------------------------------------------------------ LoRA
    def lora_targets(self, network: Any) -> dict[str, dict[str, int]]:
        from .lora_format import transformer_targets
        common.refuse_text_encoder_lora(network, "Qwen-Image")
        out = {"transformer": transformer_targets(network, self._c().shape.num_layers)}
        if not out["transformer"]:
            raise ConfigError("network.module_ranks: leaves no Qwen-Image module to train")
        return out

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        """ComfyUI / musubi names (``lora_unet_transformer_blocks_N_...``; save.format = "kohya") or diffusers
        ``transformer.<path>.lora_A/lora_B`` names."""
        from .lora_format import to_comfy, to_diffusers
        if fmt == "diffusers":
            return to_diffusers(lora)
        if fmt != "kohya":
            raise ConfigError(f"save.format: {fmt!r} is not supported for qwenimage; use kohya or diffusers")
        return to_comfy(lora, self._c().shape.num_layers)

    def metadata(self, config: Any) -> dict[str, str]:
        """musubi-tuner's ss_* values for Qwen-Image (``networks.lora_qwen_image``) and the modelspec architecture
        SwarmUI sorts Qwen-Image LoRAs by (``qwen-image/lora``)."""
        t = config.training
        return {
            "ss_base_model_version": SPEC.metadata_base_version,
            "ss_network_module": SPEC.network_module,
            **common.flow_metadata(t, "qwen_shift" if t.timestep_sampling == "flux_shift" else None),
            "ss_model_prediction_type": "raw",
            "modelspec.architecture": f"{ARCHITECTURE}/lora",
            "modelspec.implementation": "https://github.com/QwenLM/Qwen-Image",
        }
