"""The FLUX.1 (dev / schnell) family adapter: rectified flow on 2x2-packed 16-channel latents.

Conventions (checked against diffusers' FluxPipeline in the tests):
* latents = (z − 0.1159) · 0.3611; x_σ = (1−σ)·x0 + σ·ε; target ε − x0; the raw prediction is compared.
* diffusers' FluxTransformer2DModel multiplies ``timestep`` and ``guidance`` by 1000 itself, so it gets
  σ ∈ [0, 1] directly (FluxPipeline passes t/1000) and the guidance value as is (e.g. 3.5).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.fsutil import path_identity
from lorakit.models.base import Batch, LoraModule, ModelSpec, NoisedInput, SamplePrompt, to_gpu
from lorakit.models import common
from lorakit.safetensors_header import read_safetensors_header

from .modulation import DOUBLE, SINGLE
from .lora_format import MODULE_TYPES

SPEC = ModelSpec(family="flux1", pipeline_classes=("FluxPipeline",),
                 latent_channels=16, vae_scale=0.3611, vae_shift=0.1159, vae_downscale=8,
                 module_types=MODULE_TYPES,
                 display_name="FLUX.1",
                 patch_size=2, bucket_divisibility=64, prediction="flow", default_resolution=1024,
                 text_encoders=("clip_l", "t5xxl"), max_caption_tokens=512, default_sample_steps=20,
                 metadata_base_version="flux1", network_module="networks.lora_flux", text_encoder_lora=True,
                 default_cfg_scale=1.0, activation_gib=(2.3, 38.0),
                 # AE 83.8 M parameters, T5-XXL encoder 4.76 B + CLIP-L 0.12 B, all bf16 (CLIP-L alone is trained)
                 component_gib=(("vae", 0.16), ("text encoders", 9.09), ("trained text encoders", 0.23)),
                 vae_tiling=True,
                 # compiled, without checkpointing: 29.9 GiB per 1024² image, from fp8 compute's 0.483 GiB per block
                 # left out of checkpointing (H200, RESULTS.md round 5; bf16 gave 0.46); the larger of the two so that a
                 # partial-checkpointing plan errs towards fitting
                 activation_gib_compiled=(2.3, 29.9),
                 # fp8 compute + compile, activation_budget 0.35 / 0.25: peak 24.12 / 20.56 GiB (H200, RESULTS.md rounds
                 # 5-7) less the 12.43 GiB of fp8 weights, LoRA and AdamW state those runs held; 0.35 was the fastest
                 # setting measured within 25.7 GiB (0.416 s/step), 0.25 0.466 s, both faster than partial checkpointing
                 activation_budget_gib=((0.35, 11.7), (0.25, 8.2)),
                 host_linears=DOUBLE + SINGLE,  # the modulation Linears (memory.modulation_on_cpu)
                 # bf16 + modulation_on_cpu + compile, attention saved (memory.save_attention's default), activation
                 # budget 0.15 / 0.12: peak *reserved* 25.68 / 25.14 GiB (H200, RESULTS.md round 10; allocated 24.56 /
                 # 24.29; a cap on the allocated figure ran out of memory in round 9) less the 16.16 GiB of bf16
                 # weights left on the GPU and 1.28 GiB of LoRA + AdamW. Both ran within noise of each other and
                 # 6-10 % faster than budget 0.22 with attention recomputed (round 9's setting)
                 host_activation_budget_gib=((0.15, 8.24), (0.12, 7.70)),
                 host_linears_graph_safe=lambda: _graph_safe(),
                 denoiser_name="transformer",
                 config_keys=frozenset({
                     "model.clip_l", "model.t5xxl", "model.ae", "model.variant", "network.train_blocks",
                     "network.double_block_indices", "network.single_block_indices", "network.module_ranks",
                     "training.timestep_sampling", "training.sigmoid_scale", "training.logit_mean", "training.logit_std",
                     "training.discrete_flow_shift", "training.guidance_scale", "training.t5_max_length",
                     "training.apply_t5_attn_mask", "memory.blocks_to_swap", "memory.modulation_on_cpu",
                     "distributed.shard",
                     "sample.guidance"}),
                 planning_model=lambda cfg: planning_model(cfg))


def planning_model(cfg: Any) -> tuple[nn.Module, dict[str, int]]:
    """The full-size FLUX.1 transformer (dev unless model.variant says schnell; on the current default device) and its
    LoRA targets, for ``lorakit plan``."""
    from diffusers import FluxTransformer2DModel

    from lorakit.models.base import init_kwargs

    from . import configs
    from .lora_format import transformer_targets

    variant = cfg.model.variant if cfg.model.variant in configs.VARIANTS else "dev"
    tr = FluxTransformer2DModel(**init_kwargs(configs.transformer_config(variant)))
    return tr, transformer_targets(cfg.network, int(tr.config.num_layers), int(tr.config.num_single_layers))


T5_DEFAULT_LENGTH = {"dev": 512, "schnell": 256}
SAMPLE_STEPS = {"dev": 20, "schnell": 4}
CLIP_LENGTH = 77


def variant_from_header(path: Path) -> Optional[str]:
    """dev/schnell from a validated safetensors header alone (no tensor read); None if unreadable."""
    try:
        header, _meta = read_safetensors_header(path)
    except ModelLoadError:
        return None
    return "dev" if any("guidance_in." in k for k in header) else "schnell"


def _graph_safe() -> bool:
    """Whether the modulation op runs eagerly between CUDA-graph pieces (read live: tests switch it off)."""
    from . import modulation

    return modulation.GRAPH_SAFE


def deferred_placement(memory: Any) -> bool:
    """Whether the transformer stays on the CPU after load() (the loop places it block by block)."""
    return common.deferred_placement(memory, "modulation_on_cpu")


class Adapter:
    """ModelAdapter for FLUX.1; one instance per run, made with the whole Config."""

    spec = SPEC

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.comps: Any = None
        self.device = torch.device("cpu")
        self.dtype = torch.bfloat16
        self.host_modulation: Any = None  # memory.modulation_on_cpu (modulation.HostModulations)
        # position ids on the device per (latent h, w, T5 length, device): the same every step of a bucket, so
        # built and copied once instead of each call
        self._ids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def check_config(cfg: Any, device: torch.device) -> None:
        """FLUX.1's own memory options that cannot apply with the rest of the config (ConfigError naming the key)."""
        mem = cfg.memory
        on_cpu = getattr(mem, "modulation_on_cpu", False)
        if on_cpu and mem.blocks_to_swap:
            raise ConfigError("memory.modulation_on_cpu: not with memory.blocks_to_swap (swapped blocks stream all their "
                              "weights anyway); remove one of the two")
        if on_cpu and mem.cuda_graphs and not _graph_safe():
            raise ConfigError(f"memory.modulation_on_cpu: this PyTorch ({torch.__version__}) cannot keep the modulation "
                              "op out of CUDA graphs, which would replay one step's modulations every step; set "
                              "memory.cuda_graphs = false or memory.modulation_on_cpu = false")
        if on_cpu and cfg.network.train_text_encoder:
            raise ConfigError("memory.modulation_on_cpu: the modulation outputs are computed on the CPU without "
                              "gradients, so CLIP-L cannot be trained through them; set network.train_text_encoder = "
                              "false or memory.modulation_on_cpu = false")

    # ------------------------------------------------------------------------------------------ loading
    def load(self, model: Any, memory: Any, device: torch.device, dtype: torch.dtype) -> None:
        """Load the frozen base; the transformer goes to ``device`` (block by block later, by
        ``lorakit.train.swap.place_denoiser``, when fp8 storage, block swap or a VRAM budget is asked for, so
        that the bf16 model never has to fit on the GPU at once); encoders stay on the CPU until used.

        fp8 files are upcast to ``dtype`` here; fp8 *storage* (memory.fp8_base) is applied by train/memory.
        Only the transformer is read now: CLIP-L, T5, the AE and the tokenizers are read on first use
        (encoding, sampling, or ``text_encoder_modules`` when CLIP-L is trained), so a run whose caches are
        complete never reads them; ``identity`` reads file headers only.
        """
        from .load import load_components
        self.comps = load_components(model, dtype, lazy=True)
        self.device, self.dtype = torch.device(device), dtype
        if not deferred_placement(memory):
            self.comps.transformer.to(self.device)

    def attach(self, transformer: nn.Module, clip_l: nn.Module, t5: nn.Module, ae: nn.Module, clip_tokenizer: Any,
               t5_tokenizer: Any, variant: str = "dev", *, device: torch.device = torch.device("cpu"),
               dtype: torch.dtype = torch.float32) -> None:
        """Use already built modules (tests, the toy world) instead of ``load``: the same state it leaves (frozen,
        eval mode, the transformer on ``device`` in ``dtype``, the encoders on the CPU)."""
        from .load import FluxComponents

        if variant not in T5_DEFAULT_LENGTH:
            raise ValueError(f"flux1 adapter: variant {variant!r} is not one of {sorted(T5_DEFAULT_LENGTH)}")
        self.device, self.dtype = torch.device(device), dtype
        def to(m: nn.Module, where: torch.device) -> nn.Module:   # (diffusers warns about a cast that changes nothing)
            p = next(m.parameters())
            return m if (p.device, p.dtype) == (where, dtype) else m.to(where, dtype)

        parts = {"transformer": to(transformer, self.device), "clip_l": to(clip_l, torch.device("cpu")),
                 "t5": to(t5, torch.device("cpu")), "ae": ae}
        for m in parts.values():
            m.requires_grad_(False)
            m.eval()
        self.comps = FluxComponents(**parts, variant=variant, clip_tokenizer=clip_tokenizer, t5_tokenizer=t5_tokenizer)
        self._ids.clear()

    def before_placement(self, memory: Any, log: Any) -> None:
        """memory.modulation_on_cpu: the modulation Linears' weights stay on the CPU (modulation.py)."""
        if getattr(memory, "modulation_on_cpu", False) and self.host_modulation is None:
            from .modulation import HostModulations
            self.host_modulation = HostModulations.install(self._c().transformer, log)

    def _c(self) -> Any:
        if self.comps is None:
            raise RuntimeError("flux1 adapter: load() must be called first")
        return self.comps

    @property
    def variant(self) -> str:
        if self.comps is not None:
            return self.comps.variant
        v = getattr(self.cfg.model, "variant", "auto")
        if v in ("dev", "schnell"):
            return v
        ckpt = getattr(self.cfg.model, "checkpoint", None)
        found = variant_from_header(Path(ckpt)) if ckpt and Path(ckpt).is_file() else None
        return found or "dev"

    def t5_length(self) -> int:
        return int(self.cfg.training.t5_max_length or T5_DEFAULT_LENGTH[self.variant])

    def identity(self) -> dict[str, str]:
        """Cache keys: ``vae`` (AE weights + scale/shift), ``text`` (CLIP-L + T5 + tokenizers + T5 settings),
        ``model`` (the transformer). Cheap: sizes, mtimes and safetensors headers, never a 24 GB hash."""
        c = self._c()
        src = c.files.get("checkpoint")
        folder = src is not None and src.is_dir()

        def ident(role: str, sub: str) -> str:
            if role in c.files:
                return path_identity(c.files[role])
            if folder and (src / sub).exists():
                return path_identity(src / sub)
            return str(src)                                   # a hub id: its name is its identity

        def digest(*parts: str) -> str:
            return "flux1-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

        tok = str(getattr(self.cfg.model, "tokenizer_dir", None) or ("folder" if folder else "builtin"))
        settings = f"t5_len={self.t5_length()};t5_mask={int(bool(self.cfg.training.apply_t5_attn_mask))}"
        return {"vae": digest("vae", ident("ae", "vae"), str(SPEC.vae_scale), str(SPEC.vae_shift), "mean"),
                "text": digest("text", ident("clip_l", "text_encoder"), ident("t5xxl", "text_encoder_2"), tok,
                               settings, "clip_pooled+t5_last"),
                "model": digest("model", ident("checkpoint", "transformer"))}

    @contextlib.contextmanager
    def _on_device(self, module: nn.Module) -> Iterator[torch.device]:
        """Move an encoder to where it runs and yield that device: the training device, or the CPU when it
        does not fit there (T5-XXL on small cards). Encoders live on the CPU between uses; offload_encoders()
        sends them back after caching."""
        from lorakit.device import device_for

        where = device_for(module, self.device, getattr(self.cfg.memory, "vram_gb", None), log=print)
        module.to(where)
        yield where

    def _loaded(self, name: str) -> bool:
        """Whether an encoder is in memory (asking never reads it)."""
        loaded = getattr(self._c(), "loaded", None)
        return True if loaded is None else bool(loaded(name))

    def offload_encoders(self) -> None:
        """Encoders in memory go to the CPU; encoders never read stay unread."""
        c = self._c()
        for name in ("clip_l", "t5", "ae"):
            if self._loaded(name):
                getattr(c, name).to("cpu")

    def vae_module(self) -> nn.Module:
        """The autoencoder: the planner may switch it to tiled encode / decode (train/autoplan.py)."""
        return self._c().ae

    def denoiser(self) -> nn.Module:
        return self._c().transformer

    def text_encoder_modules(self) -> dict[str, nn.Module]:
        """{"te1": CLIP-L}: read from disk if needed when ``network.train_text_encoder`` is on; otherwise only
        when it is in memory already ({} when caches made reading it unnecessary)."""
        if not getattr(self.cfg.network, "train_text_encoder", False) and not self._loaded("clip_l"):
            return {}
        return {"te1": self._c().clip_l}

    # ------------------------------------------------------------------------------------------ encoding
    def _downscale(self) -> int:
        return 2 ** (len(self._c().ae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> (z − shift)·scale, z the AE posterior mean (deterministic, cache-stable)."""
        ae = self._c().ae
        f = self._downscale() * 2                          # AE downscale x the 2x2 packing
        if pixels.shape[-1] % f or pixels.shape[-2] % f:
            raise ValueError(f"flux1: image size {pixels.shape[-1]}x{pixels.shape[-2]} must be a multiple of {f}")
        with self._on_device(ae) as where:
            dt = next(ae.parameters()).dtype
            z = ae.encode(pixels.to(where, dt)).latent_dist.mode()
        return ((z.float() - SPEC.vae_shift) * SPEC.vae_scale).cpu()

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """{"pooled": CLIP-L pooled [B,768] (77 tokens), "t5": T5 last hidden [B,L,4096], "t5_mask": [B,L]}.

        Gradients flow through CLIP-L only while it has trainable (LoRA) parameters; T5 is always frozen.
        """
        c = self._c()
        clip_ids = c.clip_tokenizer(captions, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                                    return_tensors="pt").input_ids
        t5_tok = c.t5_tokenizer(captions, padding="max_length", max_length=self.t5_length(), truncation=True,
                                return_tensors="pt")
        trains_clip = torch.is_grad_enabled() and any(p.requires_grad for p in c.clip_l.parameters())
        with self._on_device(c.clip_l) as where, torch.set_grad_enabled(trains_clip):
            pooled = c.clip_l(clip_ids.to(where)).pooler_output
        mask = t5_tok.attention_mask
        with self._on_device(c.t5) as where, torch.no_grad():
            kw = {"attention_mask": mask.to(where)} if self.cfg.training.apply_t5_attn_mask else {}
            hidden = c.t5(t5_tok.input_ids.to(where), **kw).last_hidden_state
        return {"pooled": pooled.cpu(), "t5": hidden.cpu(), "t5_mask": mask.to(torch.int64)}

    # ------------------------------------------------------------------------------------------ objective
    def noise(self, latents: torch.Tensor, noise: torch.Tensor, batch: Batch, training: Any,
              generator: torch.Generator) -> NoisedInput:
        """σ from training.timestep_sampling (flux_shift uses the packed token count); rectified-flow noising."""
        from lorakit.diffusion.objectives import flow_noise, flow_target, sample_sigmas
        b, _, h, w = latents.shape
        sigmas = sample_sigmas(b, training.timestep_sampling, generator, sigmoid_scale=training.sigmoid_scale,
                               logit_mean=training.logit_mean, logit_std=training.logit_std,
                               shift=training.discrete_flow_shift, seq_len=(h // 2) * (w // 2))
        host = sigmas
        sigmas = to_gpu(sigmas, latents.device)
        return NoisedInput(model_input=flow_noise(latents, noise, sigmas), timesteps=sigmas,
                           target=flow_target(latents, noise),
                           weight=torch.ones(b, device=latents.device, dtype=torch.float32), host_timesteps=host)

    def _forward(self, x: torch.Tensor, sigmas: torch.Tensor, text: dict[str, torch.Tensor],
                 guidance: Optional[float | torch.Tensor], host_sigmas: Optional[torch.Tensor] = None,
                 host_text: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Pack, run the transformer (σ as timestep; it scales by 1000 itself), unpack. Raw velocity out.
        ``host_sigmas`` / ``host_text``: the same values still on the host, if the caller has them (for
        memory.modulation_on_cpu, which would otherwise read them back from the device). ``guidance``: one value,
        or one per sample (a [B] tensor on the host)."""
        from lorakit.diffusion.packing import image_position_ids, pack_latents, unpack_latents
        tr = self._c().transformer
        p = next(tr.parameters())
        dev, dt = p.device, p.dtype
        b, _, h, w = x.shape
        t5 = to_gpu(text["t5"], dev, dt)
        kwargs: dict[str, Any] = {}
        if self.cfg.training.apply_t5_attn_mask and "t5_mask" in text:
            img = torch.ones(b, (h // 2) * (w // 2), dtype=torch.bool, device=dev)
            joint = torch.cat([to_gpu(text["t5_mask"], dev).bool(), img], dim=1)
            kwargs["joint_attention_kwargs"] = {"attention_mask": joint[:, None, None, :]}
        g = None
        per_sample = isinstance(guidance, torch.Tensor)
        value = 1.0 if per_sample or guidance is None else float(guidance)
        if self.variant == "dev":
            g = (to_gpu(guidance.float().reshape(-1).expand(b), dev) if per_sample
                 else torch.full((b,), value, device=dev, dtype=torch.float32))
        if self.host_modulation is not None:  # the modulation outputs of this call, computed from host tensors
            host_g = guidance.detach().float().cpu().reshape(-1).expand(b) if per_sample else torch.full((b,), value)
            self.host_modulation.prepare((sigmas if host_sigmas is None else host_sigmas).reshape(-1).expand(b),
                                         None if g is None else host_g,
                                         (host_text or text)["pooled"], dev)
        key = (h, w, t5.shape[1], dev)
        if key not in self._ids:  # (the transformer only reads them)
            self._ids[key] = (to_gpu(image_position_ids(h, w), dev), torch.zeros(t5.shape[1], 3, device=dev))
        img_ids, txt_ids = self._ids[key]
        out = tr(hidden_states=to_gpu(pack_latents(x), dev, dt), encoder_hidden_states=t5,
                 pooled_projections=to_gpu(text["pooled"], dev, dt),
                 timestep=to_gpu(sigmas, dev, torch.float32).expand(b),
                 img_ids=img_ids, txt_ids=txt_ids, guidance=g, return_dict=False, **kwargs)[0]
        return unpack_latents(out, h, w).float()

    def predict(self, noised: NoisedInput, batch: Batch, guidance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The transformer's raw velocity prediction for a noised batch (guidance = training.guidance_scale, or
        ``guidance``: one value per sample, as the toy's pretraining draws them)."""
        g = self.cfg.training.guidance_scale if guidance is None else guidance
        return self._forward(noised.model_input, noised.timesteps, batch.text, g, noised.host_timesteps,
                             batch.host_text or None)

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, prompt: SamplePrompt, generator: torch.Generator) -> Any:
        """Flow-match Euler from σ=1 to 0: FLUX resolution shift (dev) / linear schedule (schnell), dev guidance,
        CFG only when cfg_scale != 1 and a negative prompt is given (as kohya)."""
        from lorakit.data.images import to_images

        from lorakit.diffusion.objectives import flow_schedule
        c = self._c()
        down = self._downscale()
        h, w = prompt.height // down, prompt.width // down   # sizes are multiples of SPEC.sample_multiple (checked)
        steps = prompt.steps or getattr(self.cfg.sample, "steps", None) or SAMPLE_STEPS[self.variant]
        guidance = prompt.guidance if prompt.guidance is not None else getattr(self.cfg.sample, "guidance", 3.5)
        x = torch.randn((1, SPEC.latent_channels, h, w), generator=generator, device=generator.device,
                        dtype=torch.float32).to(self.device)
        seq = (h // 2) * (w // 2)
        sigmas = flow_schedule(steps, seq_len=seq) if self.variant == "dev" else flow_schedule(steps)
        cond = self.encode_text([prompt.prompt])
        use_cfg = prompt.cfg_scale != 1.0 and bool(prompt.negative)
        neg = self.encode_text([prompt.negative]) if use_cfg else None
        tr = c.transformer
        was_training = tr.training
        tr.eval()
        try:
            for i in range(steps):
                s = sigmas[i].reshape(1)
                v = self._forward(x, s, cond, guidance)
                if neg is not None:
                    v_neg = self._forward(x, s, neg, guidance)
                    v = v_neg + prompt.cfg_scale * (v - v_neg)
                x = x + (sigmas[i + 1] - sigmas[i]).item() * v
        finally:
            tr.train(was_training)
        with self._on_device(c.ae) as where:
            dt = next(c.ae.parameters()).dtype
            img = c.ae.decode((x / SPEC.vae_scale + SPEC.vae_shift).to(where, dt)).sample
        return to_images(img[0])[0]

    # ------------------------------------------------------------------------------------------ LoRA
    def _depths(self) -> tuple[int, int]:
        if self.comps is not None:
            cfg = self.comps.transformer.config
            return int(cfg.num_layers), int(cfg.num_single_layers)
        return 19, 38

    def lora_targets(self, network: Any) -> dict[str, dict[str, int]]:
        """{"transformer": {diffusers path: rank}} over the double/single block Linears; "te1" for CLIP-L."""
        from .lora_format import clip_targets, transformer_targets
        nd, ns = self._depths()
        out = {"transformer": transformer_targets(network, nd, ns)}
        if not out["transformer"]:
            raise ConfigError("network: the block selection and module_ranks leave no FLUX.1 module to train")
        if getattr(network, "train_text_encoder", False):
            out["te1"] = clip_targets(self._c().clip_l, int(network.rank))
        return out

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        """kohya FLUX names (fused qkv/linear1, exact alphas) or diffusers lora_A/lora_B names."""
        from .lora_format import to_diffusers, to_kohya
        if fmt == "diffusers":
            return to_diffusers(lora)
        if fmt != "kohya":
            raise ConfigError(f"save.format: {fmt!r} is not supported for flux1; use kohya or diffusers")
        tr = self._c().transformer
        # after peft injection a target is a wrapper whose original Linear sits at "<path>.base_layer"
        outs = common.linear_widths(tr)
        nd, ns = self._depths()
        return to_kohya(lora, outs, nd, ns)

    def metadata(self, config: Any) -> dict[str, str]:
        """The FLUX ss_* keys kohya writes (no invented ones), and modelspec architecture/implementation.

        ``ss_model_prediction_type`` is always "raw": the only choice consistent with the ε − x0 target."""
        t = config.training
        variant = self.variant
        return {
            "ss_base_model_version": SPEC.metadata_base_version,
            "ss_network_module": SPEC.network_module,
            "ss_model_type": "flux",
            "ss_guidance_scale": str(float(t.guidance_scale)),
            **common.flow_metadata(t),
            "ss_model_prediction_type": "raw",
            "ss_apply_t5_attn_mask": str(bool(t.apply_t5_attn_mask)),
            "modelspec.architecture": f"flux-1-{variant}/lora",
            "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        }

