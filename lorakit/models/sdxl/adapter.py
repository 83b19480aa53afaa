"""The SDXL family: conditioning, objective, sampling, LoRA targets and export names.

Conditioning as SDXL was trained: the penultimate hidden states of CLIP-L (768) and OpenCLIP bigG (1280)
concatenated into the cross-attention context, bigG's projected pooled output at the EOS token, and
six micro-conditioning ids (original h, w; crop top, left; target h, w) from each image's real bucket.

LoRA targets follow kohya's ``networks/lora.py``: every Linear in a Transformer2DModel (722 modules on the
full-size UNet), optionally the resnet/resampler convolutions (LoCon), optionally CLIP attention and MLP
linears. Module paths are diffusers paths; export renames them to kohya's SGM-based names.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from lorakit.lora.metadata import MODELSPEC_VERSION
from lorakit.lora.variants import kohya_entries, refuse_in_diffusers
from lorakit.models.base import Batch, LoraModule, ModelSpec, NoisedInput, SamplePrompt, to_gpu
from lorakit.models.clip_t5 import text_encoder_lora_targets
from lorakit.models.sdxl import configs
from lorakit.models.unet import UNetAdapter, _OnFirstUse
from lorakit.models.unet_parts import export_diffusers, unet_lora_targets, unet_module_to_sgm

SPEC = ModelSpec(family="sdxl", pipeline_classes=("StableDiffusionXLPipeline",),
                 latent_channels=4, vae_scale=0.13025, vae_shift=0.0, vae_downscale=8, patch_size=1,
                 display_name="SDXL",
                 bucket_divisibility=64, prediction="epsilon", default_resolution=1024,
                 text_encoders=("clip_l", "clip_g"), max_caption_tokens=77, default_sample_steps=28,
                 metadata_base_version="sdxl_base_v1-0", network_module="networks.lora",
                 text_encoder_lora=True, sample_multiple=32,
                 activation_gib=(0.9, 7.5), activation_gib_compiled=(0.9, 6.2),
                 # VAE 83.7 M parameters in fp32 (it encodes in fp32), CLIP-L + CLIP-G 0.82 B in bf16
                 component_gib=(("vae", 0.31), ("text encoders", 1.52)), vae_tiling=True,
                 denoiser_name="unet",
                 compile_blocks=("ResnetBlock2D",),  # diffusers' list names only the transformer block; the resnets
                 #                                     carry most of the remaining element-wise kernels
                 config_keys=frozenset({"model.vae", "network.conv_rank", "network.conv_alpha", "training.prediction",
                                        "training.min_timestep", "training.max_timestep", "training.noise_offset",
                                        "training.min_snr_gamma", "sample.sampler",
                                        # issue 23: noise and loss options (lorakit.diffusion.noise_options)
                                        "training.multires_noise_iterations", "training.multires_noise_discount",
                                        "training.ip_noise_gamma", "training.debiased_estimation_loss",
                                        "data.max_token_length"}),
                 planning_model=lambda cfg: planning_model(cfg))



def planning_model(cfg: Any) -> tuple[nn.Module, dict[str, int]]:
    """The full-size SDXL U-Net (on the current default device) and its LoRA targets, for ``lorakit plan``."""
    from diffusers import UNet2DConditionModel

    from lorakit.models.base import init_kwargs

    unet = UNet2DConditionModel(**init_kwargs(configs.UNET))
    return unet, unet_lora_targets(unet, int(cfg.network.rank), int(getattr(cfg.network, "conv_rank", 0) or 0))



# ---------------------------------------------------------------------------------------- LoRA targets

# -------------------------------------------------------------------------------------------- export

def kohya_name(component: str, path: str, unet_config: Any) -> str:
    """kohya's module name: ``lora_unet_<SGM path>``, ``lora_te1_text_model_…``, ``lora_te2_text_model_…``."""
    if component in ("unet", "denoiser"):
        return "lora_unet_" + unet_module_to_sgm(path, unet_config).replace(".", "_")
    if component in ("te1", "te2"):
        # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.``); ComfyUI/A1111 need it back
        full = path if path.startswith("text_model.") else "text_model." + path
        return f"lora_{component}_" + full.replace(".", "_")
    raise ValueError(f"SDXL LoRA export: unknown component {component!r} (expected unet, te1, te2)")


def chunk_ids(ids: torch.Tensor, n: int, eos: int, pad: int) -> torch.Tensor:
    """kohya's ``max_token_length`` chunking: [B, 75·n + 2] ids (BOS, text, EOS, padding) → [B·n, 77], chunk k =
    BOS, tokens 1 + 75k … 75(k+1), the last id. Where padding is not EOS (bigG): a chunk whose text runs to its end
    gets an EOS last, and an empty chunk starts BOS, EOS (sd-scripts' ``get_input_ids``)."""
    chunks = []
    for k in range(n):
        chunk = torch.cat([ids[:, :1], ids[:, 1 + 75 * k:1 + 75 * (k + 1)], ids[:, -1:]], dim=1).clone()
        if pad != eos:
            full = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
            chunk[full, -1] = eos
            chunk[chunk[:, 1] == pad, 1] = eos
        chunks.append(chunk)
    return torch.stack(chunks, dim=1).reshape(-1, ids.shape[1] - 75 * (n - 1))


def join_chunks(states: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """[B·n, 77, d] per-chunk states → [B, 75·n + 2, d]: the first chunk's BOS state, the 75 text states of each
    chunk, the last chunk's final state (sd-scripts' ``get_hidden_states_sdxl``). n = 1: unchanged."""
    if n == 1:
        return states
    s = states.reshape(batch, n, states.shape[1], states.shape[2])
    return torch.cat([s[:, 0, :1]] + [s[:, k, 1:76] for k in range(n)] + [s[:, -1, -1:]], dim=1)


def export_kohya(lora: dict[str, dict[str, LoraModule]], unet_config: Any) -> dict[str, torch.Tensor]:
    """kohya/ComfyUI/A1111 layout: ``<name>.lora_down.weight``, ``.lora_up.weight`` and a real ``.alpha``."""
    out: dict[str, torch.Tensor] = {}
    for component, modules in lora.items():
        for path, m in modules.items():
            name = kohya_name(component, path, unet_config)
            if name + ".alpha" in out:
                raise ValueError(f"SDXL LoRA export: two modules map to {name}")
            out.update(kohya_entries(name, m))  # LoRA, or a LoHa/LoKr/DoRA module in LyCORIS names (issue 23)
    return out


class Adapter(UNetAdapter):
    """SDXL behind the ModelAdapter protocol; made per run with the config sections it needs."""

    spec = SPEC
    label = "SDXL"
    text_folders = ("text_encoder", "text_encoder_2")
    encoder_slots = ("_te1", "_te2", "_vae")
    vae = _OnFirstUse("vae")
    te1 = _OnFirstUse("text")
    te2 = _OnFirstUse("text")
    tokenizer1 = _OnFirstUse("text")
    tokenizer2 = _OnFirstUse("text")

    def __init__(self, cfg: Any) -> None:
        self.model_cfg = cfg.model
        self.training = cfg.training
        self.network = cfg.network
        self.sample_cfg = cfg.sample
        self.max_token_length = int(getattr(cfg.data, "max_token_length", 75))  # 75, 150 or 225 (issue 23)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self._parts: Any = None               # lorakit.models.sdxl.load.SDXLParts: what is still to be read
        self.unet: Any = None
        self.vae: Any = None
        self.te1: Any = None
        self.te2: Any = None
        self.tokenizer1: Any = None
        self.tokenizer2: Any = None
        self.scheduler_config: dict = dict(configs.SCHEDULER)
        self.force_zeros_for_empty_prompt = True
        self._alphas_cumprod: Optional[torch.Tensor] = None

    # ---- loading
    @staticmethod
    def check_config(cfg: Any, device: torch.device) -> None:
        """SDXL adds no checks beyond the shared ones."""

    def load(self, model: Any, memory: Any, device: torch.device, dtype: torch.dtype) -> None:
        """Load the frozen base model; UNet and text encoders in ``dtype``, the VAE in fp32.

        Only the UNet is read now; the VAE and the text encoders (with their tokenizers) are read on first
        use (``encode_images``, ``encode_text``, ``sample``, or ``text_encoder_modules`` when the text
        encoders are trained), to the same modules an eager load gives. ``identity`` reads no weights.
        """
        from lorakit.models.sdxl.load import open_components

        parts = open_components(model, dtype=dtype, device=torch.device(device))
        self._parts = None
        self.device, self.dtype = torch.device(device), dtype
        self.unet = parts.unet.to(self.device, dtype)
        self.unet.requires_grad_(False)
        self.unet.eval()
        self.vae = self.te1 = self.te2 = self.tokenizer1 = self.tokenizer2 = None
        self.scheduler_config = {k: v for k, v in dict(parts.scheduler_config).items() if not k.startswith("_")}
        self.force_zeros_for_empty_prompt = parts.force_zeros_for_empty_prompt
        self.model_cfg = model
        self._parts = parts
        if memory is not None and getattr(memory, "gradient_checkpointing", False):
            self.unet.enable_gradient_checkpointing()

    def _read_part(self, part: str) -> None:
        """Read the VAE ("vae") or both text encoders and tokenizers ("text") and put them where ``attach``
        would: the VAE in fp32 and the encoders in the load dtype, on the adapter's device, frozen."""
        if part == "vae":
            self.vae = self._parts.load_vae().to(self.device, torch.float32)
        else:
            te1, te2, self.tokenizer1, self.tokenizer2 = self._parts.load_text()
            self.te1, self.te2 = te1.to(self.device, self.dtype), te2.to(self.device, self.dtype)

    def attach(self, unet: Any, vae: Any, te1: Any, te2: Any, tokenizer1: Any, tokenizer2: Any,
               scheduler_config: Optional[dict] = None, *, device: torch.device = torch.device("cpu"),
               dtype: torch.dtype = torch.float32, force_zeros_for_empty_prompt: Optional[bool] = None) -> None:
        """Use already built modules (tests, the toy world): the same state ``load`` leaves.
        ``force_zeros_for_empty_prompt``: what the model's ``model_index.json`` would say (None keeps the current)."""
        self._parts = None
        self.device, self.dtype = torch.device(device), dtype
        self.unet = unet.to(self.device, dtype)
        self.vae = vae.to(self.device, torch.float32)
        self.te1 = te1.to(self.device, dtype)
        self.te2 = te2.to(self.device, dtype)
        for m in (self.unet, self.vae, self.te1, self.te2):
            m.requires_grad_(False)
            m.eval()
        self.tokenizer1, self.tokenizer2 = tokenizer1, tokenizer2
        if scheduler_config:
            self.scheduler_config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
        if force_zeros_for_empty_prompt is not None:
            self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)

    def _text_settings(self) -> list[str]:
        return ["penultimate+pooled", *([f"chunks{self.max_token_length}"] if self.max_token_length != 75 else [])]

    # ---- encoders
    def _vae_shift(self) -> float:
        return getattr(self.vae.config, "shift_factor", None) or SPEC.vae_shift

    def _tokens(self, tokenizer: Any, captions: list[str]) -> torch.Tensor:
        """[B·n, 77] token ids: n = max_token_length / 75 chunks per caption (n = 1: the plain 77 tokens)."""
        if self.max_token_length == 75:
            return tokenizer(captions, padding="max_length", max_length=SPEC.max_caption_tokens, truncation=True,
                             return_tensors="pt").input_ids
        return chunk_ids(tokenizer(captions, padding="max_length", max_length=self.max_token_length + 2,
                                   truncation=True, return_tensors="pt").input_ids,
                         self.max_token_length // 75, tokenizer.eos_token_id, tokenizer.pad_token_id)

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Captions → ``context`` [B,77,768+1280] (penultimate states of both encoders, concatenated) and
        ``pooled`` [B,1280] (bigG's projection at the EOS token); float32 on the CPU. Gradients flow only while
        an encoder has trainable (LoRA) parameters and the caller has gradients on (text-encoder training)."""
        self._need()
        ids1 = self._tokens(self.tokenizer1, captions).to(self.te1.device)
        ids2 = self._tokens(self.tokenizer2, captions).to(self.te2.device)
        trains = torch.is_grad_enabled() and any(p.requires_grad for m in (self.te1, self.te2)
                                                 for p in m.parameters())
        with torch.set_grad_enabled(trains):
            out1 = self.te1(ids1, output_hidden_states=True)
            out2 = self.te2(ids2, output_hidden_states=True)
        n = self.max_token_length // 75
        h1, h2 = (join_chunks(h.float().cpu(), len(captions), n) for h in (out1.hidden_states[-2], out2.hidden_states[-2]))
        pooled = out2.text_embeds.float().cpu().reshape(len(captions), n, -1)[:, 0]  # the first chunk's
        return {"context": torch.cat([h1, h2], dim=-1), "pooled": pooled}

    def text_encoder_modules(self) -> dict[str, nn.Module]:
        """{"te1", "te2"}: read from disk if needed when ``network.train_text_encoder`` is on; otherwise only
        when they are in memory already ({} when caches made reading them unnecessary)."""
        self._need()
        if not getattr(self.network, "train_text_encoder", False) and self.__dict__.get("_te1") is None:
            return {}
        return {"te1": self.te1, "te2": self.te2}

    # ---- LoRA
    def lora_targets(self, network: Any) -> dict[str, dict[str, int]]:
        """{"unet": {path: rank}} (+ "te1"/"te2" when network.train_text_encoder)."""
        self._need()
        targets = {"unet": unet_lora_targets(self.unet, network.rank, getattr(network, "conv_rank", 0))}
        if getattr(network, "train_text_encoder", False):
            targets["te1"] = text_encoder_lora_targets(self.te1, network.rank)
            targets["te2"] = text_encoder_lora_targets(self.te2, network.rank)
        return targets

    def _unet_config(self) -> Any:
        return self.unet.config if self.unet is not None else configs.UNET

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        """kohya (default; ComfyUI/A1111/Forge/kohya) or diffusers (PEFT keys, scale folded into lora_B)."""
        if fmt == "kohya":
            return export_kohya(lora, self._unet_config())
        if fmt == "diffusers":
            refuse_in_diffusers(lora)
            return export_diffusers(lora)
        raise ValueError(f"save.format: {fmt!r} is not a LoRA format for SDXL; use 'kohya' or 'diffusers'")

    def metadata(self, config: Any) -> dict[str, str]:
        """SDXL's entries of the ss_*/modelspec.* metadata."""
        prediction = getattr(getattr(config, "training", None), "prediction", SPEC.prediction)
        return {
            "ss_base_model_version": SPEC.metadata_base_version,
            "ss_network_module": SPEC.network_module,
            "ss_v2": "False",
            "modelspec.sai_model_spec": MODELSPEC_VERSION,
            "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
            "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
        }

    # ---- objective
    def _prediction(self, training: Any) -> str:
        return getattr(training, "prediction", SPEC.prediction)

    @staticmethod
    def time_ids(batch: Batch) -> torch.Tensor:
        """[B,6] micro-conditioning: original (h, w), crop (top, left), target (h, w) in pixels."""
        rows = [[*o, *c, *t] for o, c, t in zip(batch.original_sizes, batch.crop_top_lefts, batch.target_sizes)]
        return torch.tensor(rows, dtype=torch.float32)

    def _unet_call(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
                   time_ids: torch.Tensor) -> torch.Tensor:
        dev, dt = self._unet_place()
        return self.unet(to_gpu(x, dev, dt), to_gpu(t, dev), encoder_hidden_states=to_gpu(context, dev, dt),
                         added_cond_kwargs={"text_embeds": to_gpu(pooled, dev, dt),
                                            "time_ids": to_gpu(time_ids, dev, dt)},
                         return_dict=False)[0]

    def predict(self, noised: NoisedInput, batch: Batch) -> torch.Tensor:
        """The UNet (with LoRA) on a noised batch, conditioned on the batch's text and real sizes."""
        self._need()
        return self._unet_call(noised.model_input, noised.timesteps, batch.text["context"], batch.text["pooled"],
                               self.time_ids(batch))

    # ---- sampling
    def _sample_prediction(self, scheduler_config: dict) -> str:
        return getattr(self.training, "prediction", scheduler_config.get("prediction_type", "epsilon"))

    def _preview_call(self, prompt: SamplePrompt, height: int, width: int, use_cfg: bool) -> Any:
        """An empty negative prompt gives zero embeddings when the model's pipeline config says so
        (``force_zeros_for_empty_prompt``, true for SDXL base), else the encoding of "".
        """
        cond = self.encode_text([prompt.prompt])
        uncond = (self.encode_text([prompt.negative]) if prompt.negative or not self.force_zeros_for_empty_prompt
                  else {k: torch.zeros_like(v) for k, v in cond.items()})
        context = torch.cat([uncond["context"], cond["context"]]) if use_cfg else cond["context"]
        pooled = torch.cat([uncond["pooled"], cond["pooled"]]) if use_cfg else cond["pooled"]
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * context.shape[0], dtype=torch.float32)
        return lambda x, t: self._unet_call(x, t, context, pooled, time_ids)
