"""The FLUX.2 family adapter (Klein 4B / 9B, base and distilled, and dev): rectified flow on 128-channel latents.

Conventions (checked against diffusers' Flux2KleinPipeline in the tests):
* latents: the AE posterior mean, patchified 2×2 (32 -> 128 channels) and normalised per channel with the AE's
  batch-norm statistics; [B, 128, H/16, W/16]; one token per latent pixel, position ids (0, row, col, 0).
* x_σ = (1−σ)·x0 + σ·ε, target ε − x0; the transformer gets σ (it multiplies by 1000 itself).
* guidance: Klein has no guidance input (base: true CFG when sampling; distilled: 4 steps, no CFG); dev takes the
  guidance value through its guidance embedder (``training.guidance_scale`` while training, ``sample.guidance``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.models.base import Batch, LoraModule, ModelSpec, NoisedInput, SamplePrompt, to_gpu
from lorakit.models import common

from . import configs, maths, planning
from .lora_format import MODULE_TYPES

SPEC = ModelSpec(family="flux2", pipeline_classes=("Flux2KleinPipeline", "Flux2Pipeline"),
                 latent_channels=128, vae_scale=1.0, vae_shift=0.0, vae_downscale=16, patch_size=1,
                 module_types=MODULE_TYPES,
                 display_name="FLUX.2",
                 bucket_divisibility=16, prediction="flow", default_resolution=1024, text_encoders=("text_encoder",),
                 max_caption_tokens=configs.MAX_TEXT_TOKENS, default_sample_steps=4,
                 metadata_base_version="flux_2", network_module="networks.lora_flux_2", default_cfg_scale=1.0,
                 denoiser_name="transformer", bucket_step=16,
                 config_keys=frozenset({
                     "model.ae", "model.text_encoder", "model.variant", "network.train_blocks",
                     "network.double_block_indices", "network.single_block_indices", "network.module_ranks",
                     "training.timestep_sampling", "training.sigmoid_scale", "training.logit_mean", "training.logit_std",
                     "training.discrete_flow_shift", "training.guidance_scale", "training.text_max_length",
                     "memory.blocks_to_swap", "distributed.shard", "sample.guidance"}),
                 # the planning numbers differ per size: .planning (measured on an H100 for Klein 4B / 9B, RESULTS.md
                 # round 12; dev scaled, said to be an estimate). The family-wide rates are Klein 9B's (the larger)
                 activation_gib=planning.RATES["klein-9b"]["eager"],
                 activation_gib_compiled=planning.RATES["klein-9b"]["compiled"],
                 measured_steps=planning.ALL_ROWS, component_gib=planning.components("klein-9b"), vae_tiling=True, variant_spec=lambda spec, model: planning.spec_for(spec, model),
                 lora_input_gib=planning.lora_input_gib,
                 planning_model=lambda cfg: planning.planning_model(cfg))

# musubi-tuner's values (src/musubi_tuner/utils/sai_model_spec.py ARCH_FLUX_2_*, dataset/architectures.py
# ARCHITECTURE_FLUX_2_*_FULL; kohya-ss/musubi-tuner @ 30c658c), one per size for base and distilled alike. SwarmUI
# (T2IModelClassSorter.cs, mcmonkeyprojects/SwarmUI @ 062407c) lower-cases the architecture and sorts these into its
# "Flux.2 Klein 4B / Klein 9B / Dev LoRA" classes; CivitAI and ComfyUI read neither key (docs/metadata.md).
ARCHITECTURE = {"klein-4b": "Flux.2-klein-4b", "klein-9b": "Flux.2-klein-9b", "dev": "Flux.2-dev"}
BASE_VERSION = {"klein-4b": "flux_2_klein_4b", "klein-9b": "flux_2_klein_9b", "dev": "flux_2_dev"}


def preview_settings(variant: str, prompt: SamplePrompt, sample: Any, distilled: Optional[bool] = None,
                     dev: Optional[bool] = None) -> tuple[int, float, Optional[float]]:
    """(steps, CFG scale, guidance) that ``variant`` ("klein-4b", "klein-base-9b", "dev", ... as
    ``lorakit_flux2_variant`` records it) draws ``prompt`` with under the ``[sample]`` section ``sample``: Klein has
    no guidance input (None), dev takes the prompt's or sample.guidance. The adapter's previews and ``lorakit package``
    both read it. ``distilled`` / ``dev``: the loaded model's (None: from the variant's name)."""
    dev = variant == "dev" if dev is None else dev
    distilled = (not dev and not variant.startswith("klein-base")) if distilled is None else distilled
    steps_default, value = configs.SAMPLE_DEFAULTS.get(variant, (28, 4.0) if not distilled else (4, 1.0))
    steps = prompt.steps or getattr(sample, "steps", None) or steps_default
    cfg_set = getattr(sample, "cfg_scale", None) is not None or prompt.cfg_scale != SPEC.default_cfg_scale
    if dev:
        guidance = prompt.guidance if prompt.guidance is not None else float(sample.guidance)
        return steps, (prompt.cfg_scale if cfg_set else 1.0), guidance
    if distilled:
        if cfg_set and prompt.cfg_scale != 1.0:
            raise ConfigError(f"sample.cfg_scale: {variant} is step-distilled and runs without CFG; set it to 1 "
                              "(or train/sample a base model)")
        return steps, 1.0, None
    return steps, (prompt.cfg_scale if cfg_set else value), None


class Adapter(common.ComponentsAdapter):
    """ModelAdapter for FLUX.2; one instance per run, made with the whole Config."""

    spec = SPEC
    family = "flux2"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._ids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------ loading
    def _load_components(self, model: Any, dtype: torch.dtype) -> Any:
        from .load import load_components
        return load_components(model, dtype)

    @staticmethod
    def check_config(cfg: Any, device: torch.device) -> None:
        """What FLUX.2 refuses before anything is read (the checks that need the variant run at load)."""
        common.refuse_text_encoder_lora(cfg.network, "FLUX.2 yet")

    def _check_loaded(self) -> None:
        t = self.cfg.training
        if not self._c().shape.guidance and float(t.guidance_scale) != 1.0:
            raise ConfigError(f"training.guidance_scale: FLUX.2 {self._c().variant} has no guidance input (only dev "
                              "has); remove it")
        common.refuse_text_encoder_lora(self.cfg.network, "FLUX.2 yet")
        from lorakit.config.load import field_specs
        sample = self.cfg.sample
        if not self._c().shape.guidance and sample.guidance != field_specs()["sample"]["guidance"].default:
            raise ConfigError(f"sample.guidance: FLUX.2 {self._c().variant} has no guidance input (only dev has); "
                              "base Klein previews use sample.cfg_scale; remove it")
        if self._c().distilled and self._c().shape.klein and sample.cfg_scale not in (None, 1.0):
            raise ConfigError(f"sample.cfg_scale: {self._c().variant} is step-distilled and runs without CFG; remove "
                              "it (or train on the base model, as recommended)")
        if self._c().distilled and self._c().shape.klein:
            common.refuse_unused_negative(sample, f"FLUX.2 {self._c().variant}")

    def text_length(self) -> int:
        return int(getattr(self.cfg.training, "text_max_length", None) or configs.MAX_TEXT_TOKENS)

    def identity(self) -> dict[str, str]:
        """Cache keys from file identities (size, mtime, header hash) and the encoding settings."""
        tok = str(getattr(self.cfg.model, "tokenizer_dir", None) or "folder")
        layers = configs.MISTRAL_LAYERS if self._c().shape.size == "dev" else configs.QWEN3_LAYERS
        return {"vae": self.cache_key("vae", "ae", "mean+patchify+bn"),
                "text": self.cache_key("text", "text_encoder", tok, f"len={self.text_length()}", str(layers)),
                "model": self.cache_key("model", "checkpoint")}

    @contextlib.contextmanager
    def _on_device(self, module: nn.Module) -> Iterator[torch.device]:
        """Run an encoder on the training device, or on the CPU when it does not fit beside training: the memory free
        on the card (within memory.vram_gb when set), lorakit.device.device_for's rule, which the automatic plan's
        phases count with (Qwen3-8B's 15.3 GiB does not go on a 16 GB card)."""
        from lorakit.device import device_for

        where = device_for(module, self.device, getattr(self.cfg.memory, "vram_gb", None), log=print)
        module.to(where)
        yield where

    # ------------------------------------------------------------------------------------------ encoding
    def _bn(self, ae: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = ae.bn.running_mean.view(1, -1, 1, 1).to(like.device, torch.float32)
        std = torch.sqrt(ae.bn.running_var.view(1, -1, 1, 1).to(like.device, torch.float32) + ae.config.batch_norm_eps)
        return mean, std

    def _factor(self) -> int:
        return 2 ** (len(self._c().ae.config.block_out_channels) - 1) * 2

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> normalised 128-channel latents (the pipelines' ``_encode_vae_image``)."""
        ae = self._c().ae
        f = self._factor()
        if pixels.shape[-1] % f or pixels.shape[-2] % f:
            raise ValueError(f"flux2: image size {pixels.shape[-1]}x{pixels.shape[-2]} must be a multiple of {f}")
        with self._on_device(ae) as where:
            dt = next(ae.parameters()).dtype
            z = maths.patchify(ae.encode(pixels.to(where, dt)).latent_dist.mode().float())
            mean, std = self._bn(ae, z)
        return ((z - mean) / std).cpu()

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """{"prompt_embeds": [B, L, 3H]}: three hidden layers of Qwen3 (Klein) or Mistral (dev), L = 512."""
        from .text import encode_mistral, encode_qwen3
        c = self._c()
        fn = encode_mistral if c.shape.size == "dev" else encode_qwen3
        encoder, tokenizer = self._text_parts()
        with self._on_device(encoder):
            emb, _ids, _mask = fn(encoder, tokenizer, captions, max_length=self.text_length())
        return {"prompt_embeds": emb.cpu()}

    # ------------------------------------------------------------------------------------------ objective
    # noise: the shared rectified-flow noising (ComponentsAdapter.noise; flux_shift with the image token count h·w)
    def _forward(self, x: torch.Tensor, sigmas: torch.Tensor, text: dict[str, torch.Tensor],
                 guidance: Optional[float]) -> torch.Tensor:
        """Pack, run the transformer (σ as timestep), unpack; the raw velocity, float32."""
        tr = self._c().transformer
        p = next(tr.parameters())
        dev, dt = p.device, p.dtype
        b, _, h, w = x.shape
        emb = to_gpu(text["prompt_embeds"], dev, dt)
        key = (h, w, emb.shape[1], dev)
        if key not in self._ids:
            from .text import text_position_ids
            self._ids[key] = (maths.image_position_ids(h, w).to(dev), text_position_ids(emb.shape[1]).to(dev))
        img_ids, txt_ids = self._ids[key]
        g = None
        if self._c().shape.guidance:
            g = torch.full((b,), float(1.0 if guidance is None else guidance), device=dev, dtype=torch.float32)
        out = tr(hidden_states=to_gpu(maths.pack(x), dev, dt), encoder_hidden_states=emb,
                 timestep=to_gpu(sigmas, dev, torch.float32).reshape(-1).expand(b), img_ids=img_ids,
                 txt_ids=txt_ids, guidance=g, return_dict=False)[0]
        return maths.unpack(out, h, w).float()

    def predict(self, noised: NoisedInput, batch: Batch) -> torch.Tensor:
        return self._forward(noised.model_input, noised.timesteps, batch.text, self.cfg.training.guidance_scale)

    # ------------------------------------------------------------------------------------------ sampling
    def sample_settings(self, prompt: SamplePrompt) -> tuple[int, float, Optional[float]]:
        """(steps, CFG scale, guidance) for a preview: the variant's defaults where neither the prompt nor
        ``sample.*`` set them (distilled Klein 4 steps without CFG, base 50 steps with CFG 4, dev 50 steps with
        guidance 4; CFG on a distilled model is refused, as the pipelines ignore it)."""
        c = self._c()
        return preview_settings(c.variant, prompt, self.cfg.sample, c.distilled, c.shape.size == "dev")

    @torch.no_grad()
    def sample(self, prompt: SamplePrompt, generator: torch.Generator) -> Any:
        """Flow-match Euler along the FLUX.2 pipelines' schedule; CFG for base Klein (negative prompt: the
        prompt's, else empty, as the pipeline)."""
        steps, cfg_scale, guidance = self.sample_settings(prompt)
        f = self._factor()
        h, w = prompt.height // f, prompt.width // f   # sizes are multiples of SPEC.sample_multiple (checked)
        x = torch.randn((1, SPEC.latent_channels, h, w), generator=generator, device=generator.device,
                        dtype=torch.float32).to(self.device)
        sigmas = maths.sample_schedule(steps, h * w)
        cond = self.encode_text([prompt.prompt])
        neg = self.encode_text([prompt.negative]) if cfg_scale != 1.0 else None
        return self.decode(self.euler_cfg(x, sigmas, steps, cond, neg, cfg_scale,
                                          forward=lambda x, s, text: self._forward(x, s, text, guidance)))

    def decode(self, x: torch.Tensor) -> Any:
        """Normalised latents [1,128,h,w] -> PIL image (batch-norm undone, unpatchified, AE decode)."""
        ae = self._c().ae
        with self._on_device(ae) as where:
            mean, std = self._bn(ae, x)
            z = maths.unpatchify(x.float().to(mean.device) * std + mean)
            img = ae.decode(z.to(where, next(ae.parameters()).dtype)).sample
        from lorakit.data.images import to_images
        return to_images(img[0])[0]

    # ------------------------------------------------------------------------------------------ LoRA
    def _depths(self) -> tuple[int, int]:
        s = self._c().shape
        return s.num_double, s.num_single

    def lora_targets(self, network: Any) -> dict[str, dict[str, int]]:
        from .lora_format import transformer_targets
        common.refuse_text_encoder_lora(network, "FLUX.2 yet")
        out = {"transformer": transformer_targets(network, *self._depths())}
        if not out["transformer"]:
            raise ConfigError("network: the block selection and module_ranks leave no FLUX.2 module to train")
        return out

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        """ComfyUI/kohya names (BFL paths, fused qkv; save.format = "kohya") or diffusers lora_A/lora_B names."""
        from .lora_format import to_comfy, to_diffusers
        if fmt == "diffusers":
            return to_diffusers(lora)
        if fmt != "kohya":
            raise ConfigError(f"save.format: {fmt!r} is not supported for flux2; use kohya or diffusers")
        tr = self._c().transformer
        outs = common.linear_widths(tr)
        return to_comfy(lora, outs, *self._depths())

    def metadata(self, config: Any) -> dict[str, str]:
        """The ss_* keys musubi-tuner writes for FLUX.2 and the modelspec architecture SwarmUI sorts by
        (``Flux.2-klein-4b/lora``, ``Flux.2-klein-9b/lora``, ``Flux.2-dev/lora``; base and distilled Klein share
        theirs: one LoRA serves both)."""
        t = config.training
        c = self._c()
        size = c.shape.size if c.shape.size in ARCHITECTURE else "klein-4b"
        return {
            "ss_base_model_version": BASE_VERSION[size],
            "ss_network_module": SPEC.network_module,
            "ss_model_type": "flux2",
            "ss_guidance_scale": str(float(t.guidance_scale)),
            **common.flow_metadata(t),
            "ss_model_prediction_type": "raw",
            "lorakit_flux2_variant": c.variant,
            "modelspec.architecture": f"{ARCHITECTURE[size]}/lora",
            "modelspec.implementation": "https://github.com/black-forest-labs/flux2",
        }
