"""What every model family provides: a frozen ModelSpec (facts as data) and a ModelAdapter (behaviour).

Shared code (the loop, the data pipeline, the CLI) talks to a family only through these two types and
never asks "is this FLUX?". A family is one package under ``lorakit/models/<family>/`` that exposes
``SPEC`` and ``Adapter`` in its ``__init__``; :mod:`lorakit.models.registry` finds it by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import torch
from torch import nn


# page-locked staging buffers of to_gpu: (shape, dtype) -> [(buffer, event of its last copy)]
_STAGING: dict[tuple, list[tuple[torch.Tensor, Any]]] = {}
_SLOTS = 4  # per shape: a step queued ahead of the GPU holds at most a few copies of each in flight


def to_gpu(t: torch.Tensor, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``t.to(device, dtype)`` for the training step, without making the host wait for the GPU.

    A copy from ordinary (pageable) host memory to a CUDA device may first wait for everything queued on the stream
    (the driver stages pageable memory), and pinning each tensor anew (``pin_memory()``) allocates page-locked memory,
    which is slower still (8 ms per copy on an H200 host, RESULTS.md round 7). So the data goes through a few
    page-locked buffers per shape, kept for the run: the host copies into one whose last transfer has finished and
    queues the transfer like a kernel, with an event that says when the buffer is free again. A dtype change
    happens on the device after the copy."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu" or t.requires_grad:  # (a staging copy would cut the graph)
        return t.to(device, dtype)
    buffer, done = staging_slot(_STAGING.setdefault((tuple(t.shape), t.dtype), []),
                                lambda: (torch.empty(t.shape, dtype=t.dtype, pin_memory=True), torch.cuda.Event()))
    buffer.copy_(t)
    out = torch.empty(t.shape, dtype=t.dtype, device=device)
    out.copy_(buffer, non_blocking=True)
    done.record(torch.cuda.current_stream(device))
    return out.to(dtype)


def staging_slot(slots: list, make) -> tuple[torch.Tensor, Any]:
    """A (buffer, event) of ``slots`` whose last copy has finished: the first free one, else a new one from
    ``make()`` while there are fewer than :data:`_SLOTS`, else the oldest after waiting for its copy (the slot used
    last moves to the end, so the front is always the least recently used)."""
    free = next((i for i, slot in enumerate(slots) if slot[1].query()), None)
    if free is None and len(slots) < _SLOTS:
        slots.append(make())
    else:
        slots.append(slots.pop(free or 0))
        slots[-1][1].synchronize()  # returns at once for a free slot
    return slots[-1]


@dataclass(frozen=True)
class ModelSpec:
    """Facts about a model family, as data."""

    family: str                       # "sdxl", "flux1"
    latent_channels: int              # 4 (SDXL), 16 (FLUX)
    vae_scale: float                  # latents = (z - vae_shift) * vae_scale
    vae_shift: float
    vae_downscale: int                # pixels per latent pixel (8)
    patch_size: int                   # latent patching of the denoiser (1 SDXL, 2 FLUX)
    bucket_divisibility: int          # bucket sides must be multiples of this (pixels)
    prediction: str                   # "epsilon" | "v_prediction" | "flow"
    default_resolution: int           # 1024
    text_encoders: tuple[str, ...]    # ("clip_l", "clip_g") / ("clip_l", "t5xxl")
    max_caption_tokens: int           # the limit the data check warns about (77 for CLIP incl. bos/eos)
    default_sample_steps: int
    metadata_base_version: str        # ss_base_model_version: "sdxl_base_v1-0" / "flux1"
    network_module: str               # ss_network_module: "networks.lora" / "networks.lora_flux"
    default_cfg_scale: float = 7.0    # preview CFG when sample.cfg_scale is unset (FLUX: 1.0 = off)
    # GiB of activations (and workspaces) per 1024x1024 image in a bf16 LoRA step: (with gradient
    # checkpointing, without); used by memory.vram_gb (lorakit/train/budget.py); measured, see RESULTS.md
    activation_gib: tuple[float, float] = (1.0, 8.0)
    # the same with memory.compile (compiled blocks keep fewer intermediates); None = as activation_gib
    activation_gib_compiled: Optional[tuple[float, float]] = None
    # memory.activation_budget points measured with compile + fp8 compute, no block checkpointing: (budget, GiB of
    # activations per 1024² image), fastest first. memory.vram_gb plans them before partial block checkpointing
    activation_budget_gib: tuple[tuple[float, float], ...] = ()
    # names, inside a repeated block, of the frozen Linears memory.modulation_on_cpu keeps on the host (FLUX.1's
    # modulation Linears); memory.vram_gb counts their bytes when it considers that setting. () = not offered
    host_linears: tuple[str, ...] = ()
    # memory.activation_budget points measured with compile, bf16 weights and memory.modulation_on_cpu: (budget, GiB
    # of activations per 1024² image), fastest first; planned before bf16 partial block checkpointing
    host_activation_budget_gib: tuple[tuple[float, float], ...] = ()


@dataclass
class Batch:
    """One training batch as the loop hands it to an adapter. All images of a batch share one bucket."""

    latents: torch.Tensor                     # [B, C, h, w], already shifted/scaled (spec.vae_*)
    text: dict[str, torch.Tensor]             # encoded captions, batched on dim 0 (family-defined keys)
    original_sizes: list[tuple[int, int]]     # (height, width) of each source image before resizing
    crop_top_lefts: list[tuple[int, int]]     # (top, left) of the crop inside the resized image
    target_sizes: list[tuple[int, int]]       # (height, width) of the bucket
    loss_weight: torch.Tensor                 # [B] per-sample weight (prior_loss_weight on reg images)
    captions: list[str] = field(default_factory=list)
    host_text: dict[str, torch.Tensor] = field(default_factory=dict)  # ``text`` as it was on the host (to_device)


@dataclass
class NoisedInput:
    """What a family's noising returns: the denoiser input, its timestep and the regression target."""

    model_input: torch.Tensor                 # noisy latents
    timesteps: torch.Tensor                   # [B], in the family's own convention
    target: torch.Tensor                      # same shape as the prediction
    weight: torch.Tensor                      # [B] loss weights from the objective (min-SNR etc.), 1 if none
    host_timesteps: Optional[torch.Tensor] = None  # ``timesteps`` as drawn on the host, where a family keeps them


@dataclass
class SamplePrompt:
    """One preview image to draw (kohya prompt syntax maps onto these fields)."""

    prompt: str
    negative: str = ""
    width: int = 1024
    height: int = 1024
    steps: Optional[int] = None
    seed: int = 0
    cfg_scale: float = 7.0
    guidance: Optional[float] = None
    sampler: Optional[str] = None


@dataclass
class LoraModule:
    """One trained LoRA pair in peft's orientation: delta W = (alpha / rank) * up @ down."""

    down: torch.Tensor      # [rank, in] (or [rank, in, kh, kw])
    up: torch.Tensor        # [out, rank] (or [out, rank, 1, 1])
    alpha: float


class ModelAdapter(Protocol):
    """The behaviour of a model family. An instance is made per run with the config sections it needs."""

    spec: ModelSpec

    def load(self, model: Any, memory: Any, device: torch.device, dtype: torch.dtype) -> None:
        """Load the base model (frozen) from ``ModelCfg``; encoders may stay on the CPU until needed."""

    def identity(self) -> dict[str, str]:
        """Stable strings that identify the loaded VAE and text encoders (cache keys), e.g. file hashes."""

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] → latents [B,C,h,w], shifted and scaled as the denoiser expects."""

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Captions → family-defined tensors, batched on dim 0, on the CPU (cacheable per caption)."""

    def offload_encoders(self) -> None:
        """Move VAE and text encoders off the accelerator (after caching)."""

    def before_placement(self, memory: Any, log: Any) -> None:
        """Family-specific memory settings applied after LoRA injection, before the denoiser is placed on the
        device (e.g. FLUX.1's ``memory.modulation_on_cpu``). Called before ``memory.vram_gb`` is planned and again
        after it (the budget may switch such a setting on), so it must do nothing for what is already applied."""

    def denoiser(self) -> nn.Module:
        """The U-Net / transformer that gets the LoRA."""

    def text_encoder_modules(self) -> dict[str, nn.Module]:
        """Trainable-with-LoRA text encoders by component name ("te1", "te2")."""

    def lora_targets(self, network: Any) -> dict[str, dict[str, int]]:
        """component name → {module path: rank} for the LoRA, from ``NetworkCfg``."""

    def noise(self, latents: torch.Tensor, noise: torch.Tensor, batch: Batch, training: Any,
              generator: torch.Generator) -> NoisedInput:
        """Pick timesteps and noise the latents (pure maths from train/objectives.py)."""

    def predict(self, noised: NoisedInput, batch: Batch) -> torch.Tensor:
        """Run the denoiser (with LoRA) on a noised batch; returns the prediction compared with the target."""

    def sample(self, prompt: SamplePrompt, generator: torch.Generator) -> Any:
        """Draw one preview image (PIL.Image) with the current weights (LoRA active)."""

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        """Trained LoRA (component → module path → LoraModule) → a state dict in ``fmt`` (kohya|diffusers)."""

    def metadata(self, config: Any) -> dict[str, str]:
        """Family-specific ss_*/modelspec.* metadata entries (strings)."""
