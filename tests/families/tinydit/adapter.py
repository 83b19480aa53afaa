"""tinydit behind lorakit's ModelAdapter protocol: rectified flow on a PixArt-architecture transformer.

* latents = (z − shift) · scale (the VAE config's ``shift_factor`` / ``scaling_factor``);
* x_σ = (1 − σ)·x0 + σ·ε, target ε − x0, σ drawn by ``training.timestep_sampling`` (lorakit.diffusion);
  the transformer gets t = 1000·σ (PixArt's timestep embedding was trained on 0..1000);
* text: the penultimate hidden states of a CLIP text encoder, tokenized by lorakit's offline CLIP tokenizer;
* LoRA on the attention and feed-forward Linears of every transformer block (and CLIP's, with
  ``network.train_text_encoder``); kohya names ``lora_unet_<path>`` / ``lora_te1_text_model_<path>``,
  diffusers names ``transformer.<path>`` / ``text_encoder.<path>``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import torch
from torch import nn

from lorakit.diffusion import objectives as obj
from lorakit.errors import ConfigError
from lorakit.fsutil import path_identity
from lorakit.models.base import Batch, LoraModule, ModelSpec, NoisedInput, SamplePrompt, to_gpu

SPEC = ModelSpec(family="tinydit", latent_channels=4, vae_scale=0.5, vae_shift=0.1, vae_downscale=8, patch_size=2,
                 bucket_divisibility=16, prediction="flow", default_resolution=64, text_encoders=("clip",),
                 max_caption_tokens=77, default_sample_steps=4, metadata_base_version="tinydit",
                 network_module="networks.lora", default_cfg_scale=3.0, activation_gib=(0.01, 0.02),
                 denoiser_name="transformer", text_encoder_lora=True,  # network.train_text_encoder (LoRA on its CLIP)
                 compile_blocks=("BasicTransformerBlock",),  # PixArt lists no _repeated_blocks of its own
                 config_keys=frozenset({"training.timestep_sampling", "training.sigmoid_scale", "training.logit_mean",
                                        "training.logit_std", "training.discrete_flow_shift"}))

_BLOCK_SUFFIXES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                   "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
_TE_SUFFIXES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                "mlp.fc2")
_COMPONENTS = {"transformer": ("lora_unet_", "transformer."), "te1": ("lora_te1_", "text_encoder.")}


# ---------------------------------------------------------------------------------------- LoRA targets and names

def lora_targets(transformer: nn.Module, te: Optional[nn.Module], rank: int,
                 text_encoder: bool = False) -> dict[str, dict[str, int]]:
    """{"transformer": {path: rank}} over every block's attention/FF Linears (+ "te1": CLIP's layers)."""
    out = {"transformer": {name: rank for name, m in transformer.named_modules()
                           if isinstance(m, nn.Linear) and name.startswith("transformer_blocks.")
                           and name.endswith(_BLOCK_SUFFIXES)}}
    if text_encoder and te is not None:
        out["te1"] = {name: rank for name, m in te.named_modules()
                      if isinstance(m, nn.Linear) and "encoder.layers." in name and name.endswith(_TE_SUFFIXES)}
    return out


def _full_path(component: str, path: str) -> str:
    # transformers 5 flattened CLIPTextModel; the names other tools know keep ``text_model.``
    return "text_model." + path if component == "te1" and not path.startswith("text_model.") else path


def module_name(component: str, path: str, fmt: str) -> str:
    """The name of one LoRA module in ``fmt``: kohya ``lora_unet_transformer_blocks_0_attn1_to_q`` or diffusers
    ``transformer.transformer_blocks.0.attn1.to_q``."""
    if component not in _COMPONENTS:
        raise ValueError(f"tinydit LoRA export: unknown component {component!r} (expected transformer, te1)")
    kohya, diffusers = _COMPONENTS[component]
    full = _full_path(component, path)
    if fmt == "kohya":
        return kohya + full.replace(".", "_")
    if fmt == "diffusers":
        return diffusers + full
    raise ValueError(f"save.format: {fmt!r} is not a LoRA format for tinydit; use 'kohya' or 'diffusers'")


def export_names(targets: dict[str, dict[str, Any]], fmt: str) -> list[str]:
    return [module_name(component, path, fmt) for component, paths in targets.items() for path in paths]


def export(lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
    """kohya: ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; diffusers (PEFT): ``.lora_A.weight`` /
    ``.lora_B.weight`` with alpha/rank folded into B (a PEFT file has no alpha, loaders use scale 1)."""
    out: dict[str, torch.Tensor] = {}
    for component, modules in lora.items():
        for path, m in modules.items():
            name = module_name(component, path, fmt)
            if fmt == "kohya":
                out[name + ".lora_down.weight"] = m.down
                out[name + ".lora_up.weight"] = m.up
                out[name + ".alpha"] = torch.tensor(float(m.alpha), dtype=torch.float32)
            else:
                out[name + ".lora_A.weight"] = m.down
                out[name + ".lora_B.weight"] = m.up * (float(m.alpha) / m.down.shape[0])
    return out


# -------------------------------------------------------------------------------------------------- adapter

class Adapter:
    """tinydit behind the ModelAdapter protocol; one instance per run, made with the whole Config."""

    spec = SPEC

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.transformer: Any = None
        self.vae: Any = None
        self.text_encoder: Any = None
        self.tokenizer: Any = None

    # ---- config and loading
    @staticmethod
    def check_config(cfg: Any, device: torch.device) -> None:
        """The shared keys tinydit cannot honour, refused by name."""
        if cfg.model.config_dir:
            raise ConfigError("model.config_dir: tinydit reads its component configs from the checkpoint's metadata; "
                              "remove model.config_dir")
        if cfg.model.allow_pickle:
            raise ConfigError("model.allow_pickle: tinydit loads .safetensors files only; remove it")

    def load(self, model: Any, memory: Any, device: torch.device, dtype: torch.dtype) -> None:
        """The frozen components from one file; the transformer in ``dtype`` on ``device``, the VAE in fp32."""
        from lorakit.models.tokenizers import clip_tokenizer

        from .checkpoint import read_checkpoint

        models, _ = read_checkpoint(model.checkpoint)
        self.device, self.dtype = torch.device(device), dtype
        self.transformer = models["transformer"].to(self.device, dtype)
        self.vae = models["vae"].to(self.device, torch.float32)
        self.text_encoder = models["text_encoder"].to(self.device, dtype)
        self.tokenizer = clip_tokenizer(folder=model.tokenizer_dir)
        self.model_cfg = model

    def _need(self) -> None:
        if self.transformer is None:
            raise RuntimeError("tinydit adapter: call load() first")

    def identity(self) -> dict[str, str]:
        """Cache keys from the checkpoint file's identity (one file holds every component)."""
        base = path_identity(self.cfg.model.checkpoint)
        tok = str(self.cfg.model.tokenizer_dir or "builtin")

        def digest(*parts: str) -> str:
            return "tinydit-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

        return {"vae": digest("vae", base), "text": digest("text", base, tok, "penultimate"),
                "model": digest("model", base)}

    # ---- encoders
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] → (z − shift)·scale with z the posterior's mean, float32 on the CPU. The mean, not a
        sample: a sample draws from torch's global generator, which lorakit does not seed before caching, so two runs
        with their own caches would train on different latents."""
        self._need()
        z = self.vae.encode(pixels.to(self.vae.device, torch.float32)).latent_dist.mode()
        return ((z - self.vae.config.shift_factor) * self.vae.config.scaling_factor).float().cpu()

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Captions → ``context`` [B,77,hidden]: CLIP's penultimate hidden states, float32 on the CPU (with gradients
        only while the encoder is being trained)."""
        self._need()
        ids = self.tokenizer(captions, padding="max_length", max_length=SPEC.max_caption_tokens, truncation=True,
                             return_tensors="pt").input_ids.to(self.text_encoder.device)
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.text_encoder.parameters())
        with torch.set_grad_enabled(trains):
            out = self.text_encoder(ids, output_hidden_states=True)
        return {"context": out.hidden_states[-2].float().cpu()}

    def offload_encoders(self) -> None:
        for m in (self.text_encoder, self.vae):
            if m is not None:
                m.to("cpu")

    def before_placement(self, memory: Any, log: Any) -> None:
        """Nothing tinydit-specific to apply before placement."""

    def denoiser(self) -> nn.Module:
        self._need()
        return self.transformer

    def text_encoder_modules(self) -> dict[str, nn.Module]:
        self._need()
        return {"te1": self.text_encoder} if self.cfg.network.train_text_encoder else {}

    # ---- LoRA, export, metadata
    def lora_targets(self, network: Any) -> dict[str, dict[str, int]]:
        self._need()
        return lora_targets(self.transformer, self.text_encoder, network.rank, network.train_text_encoder)

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        return export(lora, fmt)

    def metadata(self, config: Any) -> dict[str, str]:
        return {"ss_base_model_version": SPEC.metadata_base_version, "ss_network_module": SPEC.network_module,
                "modelspec.architecture": "tinydit/lora", "modelspec.prediction_type": "flow",
                "modelspec.implementation": "https://github.com/huggingface/diffusers",
                "lorakit_timestep_sampling": str(config.training.timestep_sampling)}

    # ---- objective
    def noise(self, latents: torch.Tensor, noise: torch.Tensor, batch: Batch, training: Any,
              generator: torch.Generator) -> NoisedInput:
        """σ by ``training.timestep_sampling`` (``flux_shift`` uses the packed token count), straight-path noising,
        velocity target; no loss weighting."""
        h, w = latents.shape[-2:]
        sigma = obj.sample_sigmas(latents.shape[0], training.timestep_sampling, generator,
                                  sigmoid_scale=training.sigmoid_scale, logit_mean=training.logit_mean,
                                  logit_std=training.logit_std, shift=training.discrete_flow_shift,
                                  seq_len=(h // SPEC.patch_size) * (w // SPEC.patch_size))
        sigma = to_gpu(sigma, latents.device)
        return NoisedInput(model_input=obj.flow_noise(latents, noise, sigma), timesteps=sigma * 1000.0,
                           target=obj.flow_target(latents, noise), weight=torch.ones_like(sigma))

    def _call(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        p = next(self.transformer.parameters())
        return self.transformer(to_gpu(x, p.device, p.dtype), encoder_hidden_states=to_gpu(context, p.device, p.dtype),
                                timestep=to_gpu(t, p.device), added_cond_kwargs={"resolution": None,
                                                                                  "aspect_ratio": None},
                                return_dict=False)[0]

    def predict(self, noised: NoisedInput, batch: Batch) -> torch.Tensor:
        self._need()
        return self._call(noised.model_input, noised.timesteps, batch.text["context"])

    # ---- sampling
    @torch.no_grad()
    def sample(self, prompt: SamplePrompt, generator: torch.Generator) -> Any:
        """Euler steps along the straight path σ = 1 → 0 with classifier-free guidance; one PIL image."""
        from lorakit.data.images import to_images

        self._need()
        steps = prompt.steps or self.cfg.sample.steps or SPEC.default_sample_steps
        unit = SPEC.vae_downscale * SPEC.patch_size
        height, width = (max(unit, round(v / unit) * unit) for v in (prompt.height, prompt.width))
        cond = self.encode_text([prompt.prompt])["context"]
        use_cfg = float(prompt.cfg_scale) > 1.0
        context = torch.cat([self.encode_text([prompt.negative])["context"], cond]) if use_cfg else cond
        x = torch.randn((1, SPEC.latent_channels, height // SPEC.vae_downscale, width // SPEC.vae_downscale),
                        generator=generator, device=generator.device, dtype=torch.float32)
        sigmas = obj.flow_schedule(steps)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            inp = torch.cat([x, x]) if use_cfg else x
            v = self._call(inp, (s * 1000.0).expand(inp.shape[0]), context).float().cpu()
            if use_cfg:
                u, c = v.chunk(2)
                v = u + float(prompt.cfg_scale) * (c - u)
            x = x + (s_next - s) * v
        z = x / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return to_images(self.vae.decode(z.to(self.vae.device)).sample[0])[0]
