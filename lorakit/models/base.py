"""What every model family provides: a frozen ModelSpec (facts as data) and a ModelAdapter (behaviour).

Shared code (the loop, the data pipeline, the CLI) talks to a family only through these two types and
never asks "is this FLUX?". A family is one package that exposes ``SPEC`` and ``Adapter`` in its ``__init__``: under
``lorakit/models/<family>/``, or anywhere importable and named in ``LORAKIT_FAMILIES`` or a ``lorakit.families`` entry
point; :mod:`lorakit.models.registry` finds it by ``SPEC.family``. Optional module-level functions of the package:
``lora_key_universe() -> frozenset[str]`` (every LoRA module name, in the layouts ``export`` writes, that a full-size
base accepts; `lorakit inspect` matches files against it) and ``write_tiny_checkpoint(folder) -> dict`` (a tiny random
base model and the ModelCfg roles that load it; the contract tests run over it) and ``identify(header) -> FileKind | None``
(what a file of the family's layout is, from its header: :func:`lorakit.models.registry.identify`). docs/families.md
walks through it all. It may also expose
``TOY`` (a :class:`ToyRecipe`): tiny components for the toy world (docs/toy.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

import torch
from torch import nn


from lorakit.device import _SLOTS, _STAGING, staging_slot, to_gpu  # noqa: F401  (shared by families)


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
    # other ss_base_model_version values the family writes for its variants, when they do not start with
    # metadata_base_version (SD3: "5-medium", "medium"); `inspect` reads a file as this family's by either
    metadata_versions: tuple[str, ...] = ()
    # the diffusers pipeline classes (a folder's model_index.json ``_class_name``) of this family's base models: a
    # folder of another family given as model.checkpoint names the family to set (registry.require_base_folder)
    pipeline_classes: tuple[str, ...] = ()
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
    # whether the host Linears' op stays out of CUDA graphs in this PyTorch (read at plan time; tests switch it off)
    host_linears_graph_safe: Callable[[], bool] = lambda: True
    # the denoiser's component name: in lora_targets() / the LoRA dict handed to export() ("unet", "transformer")
    denoiser_name: str = "transformer"
    # data.bucket_reso_steps must be a multiple of this (through the VAE's and the denoiser's down-sampling)
    bucket_step: int = 32
    # block classes compiled (memory.compile) besides the denoiser's own ``_repeated_blocks`` (diffusers' list)
    compile_blocks: tuple[str, ...] = ()
    # the family-only config keys this family honours ("training.guidance_scale", "memory.blocks_to_swap", ...): the
    # schema marks such keys ``family_only``; setting one for a family that does not list it is an error naming both
    config_keys: frozenset[str] = frozenset()
    # ``lorakit plan`` (lorakit/train/planview.py): the full-size denoiser for a config, built on the current default
    # device (the meta device there: nothing allocated, nothing read), and its LoRA targets {path: rank}. None: the
    # family cannot be planned without its files
    planning_model: Optional[Callable[[Any], tuple[nn.Module, dict[str, int]]]] = None
    # a family whose sizes differ in their planning numbers (FLUX.2: Klein 4B / 9B / dev): (spec, denoiser) -> the spec
    # with the activation rates, measured steps and estimate note of that denoiser's size (loaded or on the meta
    # device); the planner asks it first (lorakit/train/budget.py: for_model). None = these fields hold for every size
    variant_spec: Optional[Callable[["ModelSpec", nn.Module], "ModelSpec"]] = None
    # the s/step model's measured rows of the family kept by the family package, in lorakit/train/cards.toml's
    # [[measured]] form (family, card, s_step, peak_gib, the settings, source; "estimated": why a row is not a
    # measurement), used besides the table's rows of the family
    measured_steps: tuple[Mapping[str, Any], ...] = ()
    # non-empty: the planning numbers of this (variant) spec are estimates, not measurements; the plan says so
    planning_estimate: str = ""
    # GiB of the frozen components besides the denoiser as loaded for training ("vae", "text encoders"), from their
    # parameter counts: the whole-run plan counts them while the caches fill and during previews (train/autoplan.py)
    component_gib: tuple[tuple[str, float], ...] = ()
    # GiB of CUDA graph pool per GiB of fully checkpointed activations (memory.cuda_graphs); None: the planner's
    # default, SDXL's measured 1.2 (lorakit/train/budget.py: GRAPH_POOL)
    graph_pool: Optional[float] = None
    # (denoiser, paths of its LoRA-targeted Linears) -> {repeated block's path: GiB per 1024² image} that those targets
    # add to the activation rates (measured with the family's default targets; negative for fewer targets) where the
    # base Linears keep no input of their own (fp8 storage / compute save only their fp8 weight, so a LoRA'd Linear's
    # input is kept for the LoRA alone); lorakit/train/budget.py counts it for the blocks left out of checkpointing and
    # the one recomputed. None: the rates are taken for any targets
    lora_input_gib: Optional[Callable[[nn.Module, frozenset], Mapping[str, float]]] = None
    # the VAE is a diffusers autoencoder with enable_tiling (the adapter's ``vae_module()``): the plan may tile it
    vae_tiling: bool = False
    # the preview sampler runs CFG's two predictions as one batch of 2 (SDXL, SD 1.5); False: one after the other, each
    # a batch of 1 (the flow families' samplers: models/common.py's euler_cfg, Qwen-Image's true CFG)
    cfg_batched: bool = True
    # the family's name as people write it ("SDXL", "FLUX.2", "SD 1.5"): labels in the web UI; "" = ``family``
    display_name: str = ""
    # network.train_text_encoder is offered (a LoRA on the text encoder(s), kohya's lora_te*_ keys); False: the family
    # trains its denoiser only (and refuses the key). `lorakit import kohya` reads it to follow sd-scripts' default
    text_encoder_lora: bool = False
    # preview sizes (sample.width / sample.height, a prompt's --w / --h) must be multiples of this: the VAE's down-
    # sampling times the denoiser's (patch size, or the U-Net's levels: SDXL 32, SD 1.5 64). Checked once, by the config
    # validation and the prompt parser; a default size from data.resolution is rounded down to it with a note
    sample_multiple: int = 16
    # the names ``network.module_ranks`` takes for this family (FLUX.1: "img_attn", ..., Z-Image: "attn", "ffn"); the
    # config layer checks a run's table against its family's names (lorakit/config/families.py); () = none
    module_types: tuple[str, ...] = ()
    # memory.fp8_base stores the frozen convolutions in float8 too, not only the Linears (SD 1.5: its U-Net holds 589 M
    # conv parameters against 270 M Linear ones; lorakit/train/fp8.py). False: Linears only (the transformers, SDXL)
    fp8_convs: bool = False


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
    mask: Optional[torch.Tensor] = None       # [B, 1, h, w] loss mask in [0, 1] (data.alpha_mask / data.mask_dir)


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

    down: torch.Tensor      # [rank, in] (or [rank, in, kh, kw]); empty for loha/lokr
    up: torch.Tensor        # [out, rank] (or [out, rank, 1, 1]); empty for loha/lokr
    alpha: float
    # issue 23, LoRA variants (lorakit.lora.variants): "lora" (LoRA/LoCon), "loha", "lokr" or "dora"; the variant's
    # tensors under their LyCORIS names (hada_w1_a…, lokr_w1…, dora_scale); the configured rank where no tensor shows it
    algo: str = "lora"
    extra: dict = field(default_factory=dict)
    rank: int = 0


class ModelAdapter(Protocol):
    """The behaviour of a model family. An instance is made per run with the config sections it needs."""

    spec: ModelSpec

    @staticmethod
    def check_config(cfg: Any, device: torch.device) -> None:
        """Raise ConfigError (naming the key) for a combination of settings this family cannot honour; called before
        any loading."""

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
        """Pick timesteps and noise the latents (pure maths from lorakit/diffusion/)."""

    def predict(self, noised: NoisedInput, batch: Batch) -> torch.Tensor:
        """Run the denoiser (with LoRA) on a noised batch; returns the prediction compared with the target."""

    def sample(self, prompt: SamplePrompt, generator: torch.Generator) -> Any:
        """Draw one preview image (PIL.Image) with the current weights (LoRA active)."""

    def export(self, lora: dict[str, dict[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
        """Trained LoRA (component → module path → LoraModule) → a state dict in ``fmt`` (kohya|diffusers)."""

    def metadata(self, config: Any) -> dict[str, str]:
        """Family-specific ss_*/modelspec.* metadata entries (strings)."""


@dataclass(frozen=True)
class ToyDemo:
    """How ``lorakit demo`` / ``lorakit toy eval`` train and sample a LoRA on a family's toy (a CPU run of minutes)."""

    steps: int = 400                  # LoRA training steps
    lr: float = 1e-3
    rank: int = 8
    sample_steps: int = 20            # sampling steps of previews and of the learning benchmark
    cfg_scale: float = 4.0            # classifier-free guidance when sampling (1.0 = off, e.g. guidance-distilled)


@dataclass(frozen=True)
class ToyRecipe:
    """A family's toy base model: tiny modules of its real classes, pretrained on lorakit's toy world.

    A family package exposes one as ``TOY`` in its ``__init__`` (optional: a family without ``TOY`` has no toy).
    The toy world (:mod:`lorakit.toy`) builds, trains, samples and ships it only through this recipe and the family's
    own Adapter; it never names a family. Roles are the keys of ``make()``'s dict (the family's own names).
    """

    # role -> file (or folder) name under ``lorakit/toy/assets/<family>/``. Roles other than "config" are ``[model]``
    # keys of the config (``checkpoint``, ``clip_l``, ...); "config" is the diffusers config folder (``model.config_dir``)
    files: Mapping[str, str]
    # the tiny component configs by role (diffusers / transformers kwargs, with ``_class_name`` etc.)
    configs: Callable[[], dict[str, dict[str, Any]]]
    # fresh, seeded modules of the real classes by role (text encoders in eval mode)
    make: Callable[[int], dict[str, nn.Module]]
    # the role of the AutoencoderKL in ``make()``'s dict (pretrained first, then re-targeted to the SPEC's vae_scale and
    # vae_shift by lorakit.toy.build)
    vae: str
    # (modules, Config) -> the family's Adapter bound to these in-memory modules (frozen, eval mode, on the CPU), in the
    # state ``Adapter.load`` leaves; the toy build trains ``adapter.denoiser()`` through ``noise`` and ``predict``
    adapter: Callable[[dict[str, nn.Module], Any], "ModelAdapter"]
    # (modules, facts, out folder) -> role -> path: the real single-file layouts written with the family's converters,
    # plus the diffusers config folder (role "config"). ``facts`` has ``scaling_factor`` / ``shift_factor`` (the SPEC's)
    save: Callable[[dict[str, nn.Module], dict[str, Any], Any], dict[str, Any]]
    demo: ToyDemo = ToyDemo()
    # [training] keys every toy run sets: pretraining, the demo, the learning benchmark (FLUX.1: t5_max_length = 64)
    training: Mapping[str, Any] = field(default_factory=dict)
    # [training] keys of the pretraining only (e.g. SDXL's noise_offset), applied over ``training``
    pretrain: Mapping[str, Any] = field(default_factory=dict)
    # (adapter, noised, batch, generator) -> prediction: how pretraining calls the denoiser when it needs more than
    # ``adapter.predict`` (FLUX.1-dev draws a random guidance value per sample); None = ``adapter.predict``
    pretrain_predict: Optional[Callable[[Any, NoisedInput, Batch, torch.Generator], torch.Tensor]] = None
    # the family ``lorakit demo`` trains when no --family is given (the first toy family that says so)
    default_demo: bool = False
    # (kit, plan name, seed, t0) -> (modules, facts): a family whose latents need more than the shared recipe's scale
    # and shift (FLUX.2's batch-norm statistics) pretrains itself. ``kit`` carries the toy world's shared pieces (the
    # scenes, the VAE trainer, the plans, the log), so the family imports nothing from lorakit.toy; its ``save`` then
    # writes the modules as they are (no re-targeting). None = the shared recipe (lorakit.toy.build.pretrain)
    build: Optional[Callable[[Any, str, int, float], tuple[dict, dict]]] = None
    # the toy family whose shipped, already trained VAE this toy starts from instead of training its own (the same
    # class and config: SD3.5's 16-channel AutoencoderKL is Z-Image's with other latent constants), and how this
    # family reads that file (path -> the VAE module, through its own loader); None = the shared recipe trains one
    vae_from: Optional[str] = None
    read_vae: Optional[Callable[[Any], nn.Module]] = None
    # issue 23, the quality bar: config overrides (``section.key=value``, ``training.max_steps`` included) of the best
    # setting measured on this toy's learning benchmark, with the evidence in a comment beside them
    # (benchmarks/RESULTS.md); ``lorakit toy eval --quality`` runs it. () = none measured beyond the demo's
    quality: tuple[str, ...] = ()


def init_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers / transformers config dict (as ``config.json`` holds it) → constructor keyword arguments."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "model_type")}


@dataclass(frozen=True)
class FileKind:
    """What a weights file is, read from its header's key names and shapes (no tensor data).

    A family package may expose ``identify(header) -> FileKind | None`` (header: tensor name -> {"shape", "dtype"});
    it returns None for a layout it does not know. :func:`lorakit.models.registry.identify` asks every family, then
    knows the generic cases (a LoRA, a text encoder, a VAE) itself. Loading and ``lorakit inspect`` both use it."""

    what: str                       # for people, after "this is": "an SD1.5 checkpoint (U-Net context width 768)"
    family: Optional[str] = None    # the family that trains on it as its base model as it is; None: no family does
    role: str = "checkpoint"        # "checkpoint" (a base model or its denoiser), "lora", "component", "unknown"
    standard: bool = True           # sizes of the family's full-size model (False: a custom / tiny size)
