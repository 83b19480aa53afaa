"""What the U-Net families (SDXL, SD 1.5) share; each keeps its own conditioning, names and numbers.

* :class:`_OnFirstUse`: an adapter attribute (VAE, text encoder, tokenizer) read from disk the first time it is used.
* :func:`_source_fingerprint`: the file identity of a checkpoint, a diffusers folder's component or a hub id.
* :class:`UNetAdapter`: the behaviour both adapters share: the parts read on first use, cache identities, VAE
  posterior sampling seeded per image, the DDPM objective, the samplers and the preview loop with CFG. A family
  sets ``label`` (its name in messages), ``text_folders`` (a diffusers folder's text encoders) and
  ``encoder_slots``, and provides ``_text_settings``, ``_prediction``, ``_sample_prediction``, ``_unet_call`` and
  ``_preview_call``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from lorakit.fsutil import path_identity
from lorakit.models.base import Batch, NoisedInput, SamplePrompt


def _source_fingerprint(source: Optional[str], sub: str = "") -> str:
    """:func:`lorakit.fsutil.path_identity` of a file or a diffusers folder's component, or a hub id as text."""
    if not source:
        return "none"
    path = Path(source).expanduser()
    if path.is_file() or (path / sub).is_dir():
        return path_identity(path, sub)
    return hashlib.sha256(f"hub:{source}".encode()).hexdigest()


class _OnFirstUse:
    """An adapter attribute (VAE, text encoder, tokenizer) read from disk the first time it is used.

    ``load()`` reads only the UNet; a run whose latent and text caches are complete never touches the VAE
    or the text encoders, so they are loaded here, on first access, and moved to the adapter's device.
    Setting the attribute (``attach``) stores the module as given.
    """

    def __init__(self, part: str) -> None:
        self.part = part                      # "vae" or "text": what is read together

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        if obj.__dict__.get(self.slot) is None and obj.__dict__.get("_parts") is not None:
            obj._read_part(self.part)
        return obj.__dict__.get(self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = value


class UNetAdapter:
    """The behaviour the SDXL and SD 1.5 adapters share (see the module's docstring for what a family provides)."""

    spec: Any = None
    label = "?"                                        # the family's name in messages ("SDXL", "SD 1.5")
    text_folders: tuple[str, ...] = ("text_encoder",)  # a diffusers folder's text-encoder components
    encoder_slots: tuple[str, ...] = ("_te1", "_vae")  # the parts offload_encoders moves to the CPU

    def loaded_parts(self) -> list[str]:
        """Which of the parts read on first use are in memory ("vae", "text"); for tests and benchmarks."""
        return [name for name, slot in (("vae", "_vae"), ("text", "_te1")) if self.__dict__.get(slot) is not None]

    def _need(self) -> None:
        if self.unet is None:
            raise RuntimeError(f"{self.label} adapter: call load() first")

    def _unet_place(self) -> tuple[torch.device, torch.dtype]:
        """The U-Net's device and compute dtype, read from its first parameter (``conv_in``, never swapped or
        stored in fp8). diffusers' ``unet.device`` / ``unet.dtype`` first walk every submodule looking for
        casting hooks: with the LoRA layers injected that is about 7,700 modules and 15 ms each (run 21 showed
        the GPU idle about 40 ms per SDXL step at that spot)."""
        p = next(self.unet.parameters())
        return p.device, p.dtype

    def _text_settings(self) -> list[str]:
        """The text-encoding settings in the text cache key."""
        raise NotImplementedError

    def identity(self) -> dict[str, str]:
        """Cache keys: ``vae`` (VAE weights + scaling), ``text`` (the encoders + tokenizers, the encoding settings),
        ``model``.

        Reads file fingerprints and configs only: it never makes the VAE or the text encoders load."""
        ckpt = getattr(self.model_cfg, "checkpoint", None)
        base = _source_fingerprint(ckpt)
        vae_file = getattr(self.model_cfg, "vae", None)
        vae_fp = _source_fingerprint(vae_file) if vae_file else _source_fingerprint(ckpt, "vae")
        if self.__dict__.get("_vae") is None and self._parts is not None:
            scaling = self._parts.vae_scaling_factor
        else:
            scaling = getattr(getattr(self.vae, "config", None), "scaling_factor", self.spec.vae_scale)
        tok = getattr(self.model_cfg, "tokenizer_dir", None) or "builtin"
        text_fp = base if not Path(str(ckpt)).is_dir() else "".join(_source_fingerprint(ckpt, sub)
                                                                   for sub in self.text_folders)

        def digest(*parts: str) -> str:
            return f"{self.spec.family}-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

        return {"vae": digest("vae", vae_fp, str(scaling), str(self.spec.vae_shift)),
                "text": digest("text", text_fp, str(tok), *self._text_settings()),
                "model": digest("model", base)}

    # ---- encoders
    def vae_downscale(self) -> int:
        """Pixels per latent pixel of the loaded VAE (8 for the full-size models; tiny test VAEs may differ)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _vae_shift(self) -> float:
        """What is subtracted from the VAE's latents before scaling (the SPEC's shift)."""
        return self.spec.vae_shift

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] → a sample of the VAE posterior, shifted and scaled; float32 on the CPU."""
        self._need()
        ds = self.vae_downscale()
        if pixels.shape[-1] % ds or pixels.shape[-2] % ds:
            raise ValueError(f"image size {tuple(pixels.shape[-2:])} is not a multiple of the VAE's {ds}")
        dist = self.vae.encode(pixels.to(self.vae.device, torch.float32)).latent_dist
        # the posterior sample (as kohya caches SD latents), with noise drawn from a generator derived from the run's
        # seed and each image's own pixels: the same config and data give the same latents, batch or no batch
        eps = torch.stack([torch.randn(tuple(dist.mean.shape[1:]), generator=self._item_generator(p))
                           for p in pixels])
        z = dist.mean + dist.std * eps.to(dist.mean.device, dist.mean.dtype)
        return ((z - self._vae_shift()) * self.vae.config.scaling_factor).float().cpu()

    def _item_generator(self, pixels: torch.Tensor) -> torch.Generator:
        seed = int(getattr(self.training, "seed", 0) or 0)
        digest = hashlib.sha256(f"{seed}:".encode() + pixels.detach().float().cpu().numpy().tobytes()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    def before_placement(self, memory: Any, log: Any) -> None:
        """Nothing U-Net-specific to apply before placement."""

    def offload_encoders(self) -> None:
        """Text encoders and VAE go to the CPU (after caching) to free accelerator memory; parts never read
        stay unread."""
        for m in (self.__dict__.get(slot) for slot in self.encoder_slots):
            if m is not None:
                m.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def vae_module(self) -> nn.Module:
        """The VAE (read on first use): the planner may switch it to tiled encode / decode (train/autoplan.py)."""
        return self.vae

    def denoiser(self) -> nn.Module:
        self._need()
        return self.unet

    # ---- objective
    def alphas_cumprod(self) -> torch.Tensor:
        if self._alphas_cumprod is None:
            from lorakit.diffusion.noise_options import scheduler_alphas

            self._alphas_cumprod = scheduler_alphas(self.scheduler_config)
        return self._alphas_cumprod

    def _prediction(self, training: Any) -> str:
        """The prediction type trained ("epsilon" | "v_prediction")."""
        raise NotImplementedError

    def noise(self, latents: torch.Tensor, noise: torch.Tensor, batch: Batch, training: Any,
              generator: torch.Generator) -> NoisedInput:
        """DDPM: t ~ U[min_timestep, max_timestep), noise offset, multires noise, x_t (from ε + γ·ξ with
        ip_noise_gamma), ε or v target, min-SNR-γ and debiased-estimation weights."""
        from lorakit.diffusion.noise_options import ddpm_noised

        x_t, t, target, weight = ddpm_noised(latents, noise, training, generator, self.alphas_cumprod(),
                                             self._prediction(training))
        return NoisedInput(model_input=x_t, timesteps=t, target=target, weight=weight)

    # ---- sampling
    def _sample_prediction(self, scheduler_config: dict) -> str:
        """The prediction type the preview sampler is set to."""
        raise NotImplementedError

    def _scheduler(self, name: str) -> Any:
        from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

        cfg = dict(self.scheduler_config)
        cfg["prediction_type"] = self._sample_prediction(cfg)
        if name == "euler":
            return EulerDiscreteScheduler.from_config(cfg)
        if name == "dpmpp_2m":
            return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                           use_karras_sigmas=True)
        raise ValueError(f"sample.sampler: {name!r} is not an {self.label} sampler; use 'euler' or 'dpmpp_2m'")

    def _preview_call(self, prompt: SamplePrompt, height: int, width: int, use_cfg: bool
                      ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The prompt (and, with CFG, its negative first) encoded once; returns (latents, t) -> the U-Net's
        prediction for that batch."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, prompt: SamplePrompt, generator: torch.Generator) -> Any:
        """One preview image (PIL) with CFG against the negative prompt (``_preview_call``), drawn with the current
        (LoRA) weights as the family's diffusers pipeline draws it."""
        from lorakit.data.images import to_images

        self._need()
        steps = prompt.steps or getattr(self.sample_cfg, "steps", None) or self.spec.default_sample_steps
        sched = self._scheduler(prompt.sampler or getattr(self.sample_cfg, "sampler", "euler"))
        height, width = prompt.height, prompt.width   # multiples of the spec's sample_multiple (checked once)
        cfg_scale = float(prompt.cfg_scale)
        use_cfg = cfg_scale > 1.0
        call = self._preview_call(prompt, height, width, use_cfg)
        ds = self.vae_downscale()
        shape = (1, self.unet.config.in_channels, height // ds, width // ds)
        latents = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        sched.set_timesteps(steps)
        latents = latents.to(self._unet_place()[0]) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = torch.cat([latents] * 2) if use_cfg else latents
            inp = sched.scale_model_input(inp, t)
            pred = call(inp, t.expand(inp.shape[0])).float()
            if use_cfg:
                u, c = pred.chunk(2)
                pred = u + cfg_scale * (c - u)
            latents = sched.step(pred, t, latents, return_dict=False)[0]
        z = latents.to(self.vae.device, torch.float32) / self.vae.config.scaling_factor + self._vae_shift()
        return to_images(self.vae.decode(z).sample[0])[0]
