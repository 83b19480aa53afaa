"""The one typed configuration schema of lorakit.

Every section is a dataclass; every field carries its documentation and its constraints in
``metadata`` so that the TOML loader, the CLI, the JSON schema (web UI forms) and the LoRA metadata all
read the same source. Field names in DESIGN.md's config contract are fixed: extend, never rename.

Metadata keys understood by :mod:`lorakit.config.load`:

``doc``       one-line description (required on every field)
``choices``   allowed values
``ge``/``gt``/``le``/``lt``  numeric bounds
``family_only`` the field applies only to the families whose ``ModelSpec.config_keys`` list it (the family
              packages say which; none is named here); setting it to a non-default value for another family is an
              error, never a silent no-op.
``kind``      extra parsing hint: ``"path"`` (string path), ``"resolution"`` (int or [w, h]),
              ``"indices"`` (block-index list such as ``"0,2-5"``), ``"table"`` (free string→int table)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


def f(default: Any = None, doc: str = "", *, factory: Any = None, **meta: Any) -> Any:
    """Declare a schema field with its documentation and constraints."""
    md = {"doc": doc, **meta}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


@dataclass
class ModelCfg:
    """The base model to train against."""

    family: str = f(None, "Model family: one of the installed family packages (sdxl, flux1, flux2, ...; variants are "
                    "detected from the weights).", required=True, kind="family")
    checkpoint: Optional[str] = f(None, "Base model: a single .safetensors file, a diffusers folder, or a hub id.",
                                  required=True, kind="path")
    vae: Optional[str] = f(None, "SDXL, SD 1.5, SD3.5, Qwen-Image: optional separate VAE file (e.g. the SDXL fp16-fix VAE).", kind="path",
                           family_only=True)
    clip_l: Optional[str] = f(None, "FLUX.1, SD3.5: CLIP-L text encoder file (clip_l.safetensors).", kind="path",
                              family_only=True)
    t5xxl: Optional[str] = f(None, "FLUX.1, SD3.5: T5-XXL text encoder file (t5xxl_fp16.safetensors or fp8).", kind="path",
                             family_only=True)
    clip_g: Optional[str] = f(None, "SD3.5: CLIP-G text encoder file (clip_g.safetensors).", kind="path",
                              family_only=True)
    ae: Optional[str] = f(None, "FLUX.1, FLUX.2, Z-Image: autoencoder file (each its own ae.safetensors).", kind="path",
                          family_only=True)
    text_encoder: Optional[str] = f(None, "FLUX.2, Qwen-Image, Z-Image: text encoder file, first of its split files, or "
                                    "folder (FLUX.2 Klein 4B: Qwen3-4B, Klein 9B: Qwen3-8B, dev: Mistral Small 3.1).", kind="path",
                                    family_only=True)
    variant: str = f("auto", "FLUX.1, FLUX.2, SD3.5, Z-Image: FLUX.1 'auto' detects dev/schnell from the guidance "
                     "embedding; FLUX.2 Klein, SD3.5 large(-turbo) and Z-Image: base or distilled (their "
                     "weights look alike; auto reads model_index.json, else the file name).",
                     choices=("auto", "dev", "schnell", "base", "distilled"), family_only=True)
    config_dir: Optional[str] = f(None, "Diffusers config folder for single-file loading (default: the one "
                                  "shipped with lorakit for the family).", kind="path")
    tokenizer_dir: Optional[str] = f(None, "Folder with tokenizer files; default: next to a diffusers folder, "
                                     "else built from lorakit's package data.", kind="path")
    allow_pickle: bool = f(False, "Allow loading pickle-based checkpoints (.ckpt/.pt/.bin). Unsafe: they can run "
                           "code. Off by default.")


@dataclass
class DataCfg:
    """Images and captions, buckets and caches."""

    dir: Optional[str] = f(None, "Parent folder of kohya-style 'N_trigger class' subfolders (N = repeats).",
                           kind="path")
    config: Optional[str] = f(None, "A kohya dataset TOML ([general]/[[datasets]]/[[datasets.subsets]]); "
                              "replaces data.dir.", kind="path")
    reg_dir: Optional[str] = f(None, "Parent folder of regularisation 'N_class' subfolders.", kind="path")
    prior_loss_weight: float = f(1.0, "Loss weight of regularisation images.", ge=0.0)
    resolution: Any = f(1024, "Training resolution: one int (square area) or [width, height].",
                        kind="resolution")
    caption_extension: str = f(".txt", "Extension of caption files next to each image.")
    enable_bucket: bool = f(True, "Group images into aspect-ratio buckets instead of square crops.")
    min_bucket_reso: int = f(256, "Smallest bucket side in pixels.", ge=64)
    max_bucket_reso: int = f(2048, "Largest bucket side in pixels (2048 keeps 832x1216-style sizes at 1024²).",
                             ge=64)
    bucket_reso_steps: int = f(64, "Bucket side granularity in pixels (multiple of 32 for SDXL/FLUX).", ge=8)
    bucket_no_upscale: bool = f(False, "Never upscale small images; buckets follow each image's own size.")
    shuffle_caption: bool = f(False, "Shuffle comma-separated tags after the first keep_tokens.")
    caption_separator: str = f(",", "Tag separator for shuffle and tag dropout.")
    keep_tokens: int = f(0, "Number of leading tags never shuffled or dropped.", ge=0)
    caption_prefix: str = f("", "Text put before every caption.")
    caption_suffix: str = f("", "Text put after every caption.")
    caption_dropout_rate: float = f(0.0, "Probability of training a sample with an empty caption.", ge=0.0, le=1.0)
    caption_tag_dropout_rate: float = f(0.0, "Probability of dropping each non-kept tag.", ge=0.0, le=1.0)
    flip_aug: bool = f(False, "Random horizontal flips (a flipped latent is cached too).")
    trigger: Optional[str] = f(None, "Trigger word the data check expects in every caption (default: the "
                               "first word of each folder's class tokens).")
    cache_dir: Optional[str] = f(None, "Folder for latent and text-encoder caches (default: <save.dir>/cache).",
                                 kind="path")
    cache_next_to_images: bool = f(False, "Write caches next to the images instead of cache_dir.")
    follow_symlinks: bool = f(False, "Use symlinked images, captions and folders that lead outside the dataset "
                              "folder (by default data check reports them and they are not used).")
    # validation (issue 23): images held out of training, scored with a fixed-noise loss
    validation_split: float = f(0.0, "Fraction of the training images held out for validation (kohya's key); "
                                "which ones is fixed by training.seed and the file names. 0 = none.", ge=0.0, lt=1.0)
    validation_dir: Optional[str] = f(None, "A folder of validation images (same 'N_trigger class' layout and "
                                      "captions as data.dir; repeats are ignored), never trained on.", kind="path")
    max_token_length: int = f(75, "SDXL: caption tokens the text encoders see (kohya's max_token_length): 150 or 225 "
                              "split longer captions into 75-token chunks, encoded separately and joined.",
                              ge=75, le=225, family_only=True)
    alpha_mask: bool = f(False, "Weight the loss by each image's alpha channel (kohya's alpha_mask): transparent "
                         "pixels are not learned.")
    mask_dir: Optional[str] = f(None, "Folder of loss masks, one per image by file stem (kohya's "
                                "conditioning_data_dir with masked_loss): white is learned, black is not.", kind="path")


@dataclass
class NetworkCfg:
    """The LoRA network."""

    type: str = f("lora", "Network type: lora (with network.conv_rank > 0 on SDXL: LoCon), locon (the same, "
                  "conv_rank required), or on SDXL and SD 1.5 the LyCORIS variants loha, lokr and dora, written in "
                  "the LyCORIS layout ComfyUI, Forge and A1111 load.", choices=("lora", "locon", "loha", "lokr", "dora"))
    rank: int = f(32, "LoRA rank (dim).", ge=1)
    alpha: float = f(16.0, "LoRA alpha; the update is scaled by alpha / rank.", gt=0.0)
    dropout: float = f(0.0, "Dropout on the LoRA path during training.", ge=0.0, lt=1.0)
    conv_rank: int = f(0, "SDXL, SD 1.5: rank of LoRA on 3x3 convolutions (LoCon); 0 = off.", ge=0, family_only=True)
    conv_alpha: float = f(1.0, "SDXL, SD 1.5: alpha of the convolution LoRA.", gt=0.0, family_only=True)
    train_text_encoder: bool = f(False, "Also train LoRA on the CLIP text encoder(s).")
    text_encoder_lr: Optional[float] = f(None, "Learning rate of the text-encoder LoRA (default: optimizer.lr).",
                                         gt=0.0)
    train_blocks: str = f("all", "FLUX.1, FLUX.2: which transformer blocks get LoRA.", choices=("all", "double", "single"),
                          family_only=True)
    double_block_indices: Optional[str] = f(None, "FLUX.1, FLUX.2: double-block indices, e.g. '0,2-5' (default all).",
                                            kind="indices", family_only=True)
    single_block_indices: Optional[str] = f(None, "FLUX.1, FLUX.2: single-block indices, e.g. '0-10' (default all).",
                                            kind="indices", family_only=True)
    module_ranks: dict = f(None, "FLUX.1, FLUX.2, SD3.5, Qwen-Image, Z-Image: per-module-type ranks, named by the family (FLUX.1: img_attn, txt_attn, img_mlp, "
                           "txt_mlp, img_mod, txt_mod, single, single_mod; FLUX.2: the same without the _mod types; "
                           "SD3.5: img/txt_attn, img/txt_mlp, img/txt_mod; Qwen-Image: img/txt_attn, img/txt_mlp; "
                           "Z-Image: attn, ffn); 0 skips the type.", factory=dict, kind="table",
                           family_only=True)
    factor: int = f(-1, "LoKr: the Kronecker factor (LyCORIS' factor): each side of a layer splits into factor x "
                    "side/factor; -1 = as near the square root as the side allows.", ge=-1)
    weights: Optional[str] = f(None, "Continue from an existing LoRA (kohya's network_weights): a LoRA file of this "
                               "family in any layout lorakit reads, loaded before step 0 with a new optimizer state; "
                               "its ranks must equal the run's.", kind="path")


@dataclass
class OptimizerCfg:
    """Optimizer and learning-rate schedule."""

    name: str = f("adamw", "Optimizer (adamw: torch's fused kernel on CUDA; adamw8bit saves ~0.5 GiB but steps "
                           "slower).", choices=("adamw", "adamw8bit", "prodigy", "adafactor", "lion", "came",
                                                "adamw_schedulefree"))
    lr: float = f(1e-4, "Learning rate (Prodigy: 1.0).", gt=0.0)
    weight_decay: float = f(0.01, "Decoupled weight decay.", ge=0.0)
    betas: list = f(None, "Adam betas [beta1, beta2].", factory=lambda: [0.9, 0.999])
    eps: float = f(1e-8, "Adam epsilon.", gt=0.0)
    scheduler: str = f("constant", "Learning-rate schedule (each with warmup).",
                       choices=("constant", "linear", "cosine", "cosine_with_min_lr", "cosine_with_restarts"))
    warmup_steps: int = f(0, "Linear warmup steps.", ge=0)
    min_lr_ratio: float = f(0.1, "cosine_with_min_lr: final lr as a fraction of lr.", ge=0.0, le=1.0)
    num_cycles: int = f(1, "cosine_with_restarts: cosine decays to 0 that many times, each restarting at lr "
                           "(sd-scripts' lr_scheduler_num_cycles; diffusers' hard restarts).", ge=1)
    max_grad_norm: float = f(1.0, "Gradient clipping norm; 0 disables clipping.", ge=0.0)


@dataclass
class TrainingCfg:
    """The training objective and run length."""

    max_steps: int = f(1500, "Optimizer steps to train.", ge=1)
    max_epochs: Optional[int] = f(None, "Train this many epochs instead (kohya's max_train_epochs): max_steps = "
                                  "epochs x ceil(batches per epoch / gradient_accumulation); not with max_steps.",
                                  ge=1)
    ema: bool = f(False, "Keep an exponential moving average of the LoRA weights, saved as <name>-ema.safetensors.")
    ema_decay: float = f(0.999, "With training.ema: ema = decay * ema + (1 - decay) * weights after each step.",
                         gt=0.0, lt=1.0)
    batch_size: int = f(1, "Images per step (one bucket per batch).", ge=1)
    gradient_accumulation: int = f(1, "Micro-batches accumulated per optimizer step.", ge=1)
    seed: int = f(42, "Seed for data order, noise, timesteps and LoRA init.", ge=0)
    mixed_precision: str = f("bf16", "Compute precision; LoRA weights stay fp32.", choices=("bf16", "fp16", "no"))
    device: str = f("auto", "Device: auto (cuda if available), cuda, cuda:N or cpu.")
    prediction: str = f("epsilon", "SDXL, SD 1.5: prediction type of the base model.", choices=("epsilon", "v_prediction"),
                        family_only=True)
    min_timestep: int = f(0, "SDXL, SD 1.5: lowest training timestep.", ge=0, le=1000, family_only=True)
    max_timestep: int = f(1000, "SDXL, SD 1.5: highest training timestep (exclusive).", ge=1, le=1000, family_only=True)
    noise_offset: float = f(0.0, "SDXL, SD 1.5: noise offset (per-channel constant added to the noise).", ge=0.0,
                            family_only=True)
    min_snr_gamma: float = f(0.0, "SDXL, SD 1.5: min-SNR-gamma loss weighting; 0 = off (5 is common).", ge=0.0,
                             family_only=True)
    multires_noise_iterations: int = f(0, "SDXL, SD 1.5: multires (pyramid) noise levels; 0 = off (6-10 is common).", ge=0,
                                       le=64, family_only=True)
    multires_noise_discount: float = f(0.3, "SDXL, SD 1.5: weight discount of each multires noise level.", gt=0.0, le=1.0,
                                       family_only=True)
    ip_noise_gamma: float = f(0.0, "SDXL, SD 1.5: input-perturbation noise: the noisy input is built from noise + gamma * "
                              "extra noise, the target keeps the noise; 0 = off (0.1 is common).", ge=0.0,
                              family_only=True)
    debiased_estimation_loss: bool = f(False, "SDXL, SD 1.5: weight the loss by 1/sqrt(SNR) (epsilon) or 1/(SNR+1) "
                                       "(v-prediction).", family_only=True)
    loss: str = f("l2", "Loss: l2, l1 or huber.", choices=("l2", "l1", "huber"))
    huber_c: float = f(0.1, "Huber loss threshold c.", gt=0.0)
    timestep_sampling: str = f("flux_shift", "FLUX.1, FLUX.2, SD3.5, Qwen-Image, Z-Image: sigma sampling (flux_shift: "
                               "the shift by the image token count).",
                               choices=("uniform", "sigmoid", "logit_normal", "shift", "flux_shift"),
                               family_only=True)
    sigmoid_scale: float = f(1.0, "FLUX.1, FLUX.2, SD3.5, Qwen-Image, Z-Image: scale of the normal sample before the sigmoid.", gt=0.0,
                             family_only=True)
    logit_mean: float = f(0.0, "FLUX.1, FLUX.2, SD3.5, Qwen-Image, Z-Image: logit-normal mean.", family_only=True)
    logit_std: float = f(1.0, "FLUX.1, FLUX.2, SD3.5, Qwen-Image, Z-Image: logit-normal std.", gt=0.0, family_only=True)
    discrete_flow_shift: float = f(3.1582, "FLUX.1, FLUX.2, SD3.5, Qwen-Image, Z-Image: shift for timestep_sampling = 'shift'.", gt=0.0,
                                   family_only=True)
    guidance_scale: float = f(1.0, "FLUX.1-dev / FLUX.2-dev: guidance embedding value during training.", ge=0.0,
                              family_only=True)
    t5_max_length: Optional[int] = f(None, "FLUX.1, SD3.5: T5 tokens (default FLUX.1 dev 512, schnell 256; SD3.5 256).", ge=1, le=512,
                                     family_only=True)
    apply_t5_attn_mask: bool = f(False, "FLUX.1: mask T5 padding tokens in attention.", family_only=True)
    text_max_length: Optional[int] = f(None, "FLUX.2, Qwen-Image, Z-Image: tokens of the prompt embedding (default "
                                       "512, as the pipelines).",
                                       ge=1, le=512, family_only=True)
    nan_policy: str = f("stop", "On a NaN/Inf loss or gradient: stop (default) or skip the step.",
                        choices=("stop", "skip"))
    stall_timeout: float = f(600.0, "Seconds without progress before the watchdog reports a stall; 0 = off.",
                             ge=0.0)


@dataclass
class MemoryCfg:
    """Memory and speed features."""

    gradient_checkpointing: bool = f(True, "Recompute activations in backward to save memory.")
    checkpoint_fraction: float = f(1.0, "With gradient_checkpointing: share of the repeated blocks recomputed in "
                                   "backward (spread evenly); lower is faster and needs more memory.", gt=0.0,
                                   le=1.0)
    activation_budget: Optional[float] = f(None, "With compile and gradient_checkpointing = false: selective "
                                           "recomputation. Each compiled block keeps about this share of its "
                                           "activations and the compiler recomputes the rest, cheapest first "
                                           "(FLUX.1-dev fp8 compute at 0.35: 0.42 s/step, 24.1 GiB on an H200).", gt=0.0,
                                           le=1.0)
    save_attention: Optional[bool] = f(None, "With activation_budget: keep every attention's output for backward "
                                       "instead of recomputing it there (the budget then covers the rest; FLUX.1-dev "
                                       "bf16 at 0.15: 0.455 s/step, 24.6 GiB, against 0.483 s at 0.22 without, on an "
                                       "H200). Default: on, except with fp8_compute (its budgets were measured "
                                       "without); false: never.")
    vram_gb: Optional[float] = f(None, "GPU memory in GiB: picks checkpointing (and its fraction), activation_budget, "
                                 "fp8 storage and compute, block swap, modulation_on_cpu and, when needed, a smaller "
                                 "batch with gradient accumulation (same effective batch) to fit. Each of those you "
                                 "set by hand (file or override, not a preset) is a constraint the plan keeps; "
                                 "plan.json in the run folder records what ran.", gt=0.0)
    auto: bool = f(True, "On a CUDA GPU: plan the fastest settings that fit the card (compile, CUDA graphs, "
                   "checkpointing, fp8, block swap, host modulations) from its free memory, or memory.vram_gb when "
                   "set; every [memory] key you set is kept as a constraint, and one log line says what was chosen. "
                   "false: run the [memory] keys exactly as written.")
    fp8_base: bool = f(False, "Store frozen base weights in float8 (e4m3).")
    fp8_compute: Optional[bool] = f(None, "With fp8_base (or vram_gb): run the frozen Linears' matmuls in float8 on "
                                    "the tensor cores (compute capability 8.9+: RTX 40xx, L4, H100; bf16 runs). "
                                    "Default: on when vram_gb picks fp8 storage under compile (measured faster "
                                    "there); false: never.")
    blocks_to_swap: int = f(0, "FLUX.1, FLUX.2, SD3.5, Qwen-Image, Z-Image: transformer blocks kept in CPU memory and streamed in.", ge=0, le=55,
                            family_only=True)
    modulation_on_cpu: Optional[bool] = f(None, "FLUX.1: keep the 3.2 B frozen modulation weights (6 GiB in bf16, a "
                                         "quarter of the transformer) in CPU memory; their outputs depend only on the "
                                         "timestep, guidance and pooled text, so each step copies the weights in one "
                                         "Linear at a time on a side CUDA stream (on the CPU: computes them there). "
                                         "Their LoRA still trains. Not with block swap or text-encoder training; with "
                                         "cuda_graphs the blocks replay as graphs around the modulation op. Unset: "
                                         "off, unless vram_gb picks it (bf16 weights with activation_budget under "
                                         "compile, or where they would otherwise need fp8 storage without fp8 "
                                         "compute); false: never.", family_only=True)
    cache_latents: bool = f(True, "Latents are always cached on disk, keyed by each image's content (an edited image "
                            "is re-encoded); true is accepted for configs of earlier releases, false is refused.")
    cache_text_encoder_outputs: bool = f(True, "Encode captions once and cache the outputs on disk "
                                         "(not with caption shuffle/dropout or text-encoder training).")
    compile: bool = f(False, "torch.compile the transformer/U-Net blocks (CUDA only; falls back cleanly).")
    cuda_graphs: bool = f(False, "With memory.compile: replay each step as CUDA graphs (SDXL: 2-3x faster steps; "
                          "one graph set per bucket shape).")
    fused_optimizer: Optional[bool] = f(None, "AdamW on CUDA: one fused kernel per step (default: on there; "
                                        "false = multi-tensor kernels). Faster and ~0.7 GiB leaner on SDXL.")
    fused_backward: bool = f(False, "Step each LoRA parameter as soon as its gradient is ready (saves memory).")


@dataclass
class SampleCfg:
    """Preview images during training."""

    every_n_steps: int = f(0, "Sample every N steps; 0 = only before and after training.", ge=0)
    prompts: list = f(None, "Prompts (kohya syntax allowed: '--n neg --w 1024 --h 1024 --s 28 --d 1 --l 7 --g 3.5').",
                      factory=list)
    prompts_file: Optional[str] = f(None, "A kohya prompt file (.txt, one prompt per line) or .toml list.",
                                    kind="path")
    at_start: bool = f(True, "Sample once before training (the 'before' of the before/after grid).")
    steps: Optional[int] = f(None, "Sampling steps (default: SDXL 28, FLUX dev 20, schnell 4).", ge=1)
    cfg_scale: Optional[float] = f(None, "Classifier-free guidance scale (default: SDXL 7.0, FLUX 1.0 = off).",
                                   ge=0.0)
    guidance: float = f(3.5, "FLUX.1-dev / FLUX.2-dev: distilled guidance value for sampling (FLUX.2-dev: 4.0).",
                        ge=0.0, family_only=True)
    sampler: str = f("euler", "SDXL, SD 1.5: preview sampler.", choices=("euler", "dpmpp_2m"), family_only=True)
    negative_prompt: str = f("", "Default negative prompt.")
    width: Optional[int] = f(None, "Sample width (default: training resolution).", ge=64)
    height: Optional[int] = f(None, "Sample height (default: training resolution).", ge=64)
    seed: int = f(0, "Base seed of sample images: prompt i without its own --d draws with seed + i.", ge=0)
    use_ema: bool = f(False, "With training.ema: previews use the EMA weights.")


@dataclass
class SaveCfg:
    """Where and how the LoRA is written."""

    dir: str = f("output", "Parent folder of runs.", kind="path")
    name: str = f("lora", "Run and file name; outputs go to <dir>/<name>/.")
    format: str = f("kohya", "LoRA file format: kohya (ComfyUI/A1111/Forge/kohya) or diffusers.",
                    choices=("kohya", "diffusers"))
    every_n_steps: int = f(500, "Save a checkpoint every N steps; 0 = only at the end.", ge=0)
    every_n_epochs: int = f(0, "Save a checkpoint every N epochs instead (kohya's save_every_n_epochs); 0 = off; "
                            "not with save.every_n_steps.", ge=0)
    keep_last: int = f(3, "Step checkpoints to keep (older ones are deleted).", ge=1)
    precision: str = f("fp16", "dtype of saved LoRA tensors.", choices=("fp16", "bf16", "fp32"))
    comment: str = f("", "Free text stored as ss_training_comment.")
    keep_best: bool = f(False, "Keep the LoRA of the step with the lowest validation loss as <name>-best.safetensors "
                        "(its step in the metadata; never pruned by keep_last). Needs a validation set.")


@dataclass
class ValidationCfg:
    """Validation loss on held-out images (data.validation_split or data.validation_dir)."""

    every_n_steps: int = f(0, "Validation loss every N steps (also before the first step and at the end); 0 = at "
                           "each save (save.every_n_steps) and at the end.", ge=0)
    timesteps: int = f(4, "Timesteps per validation image. Timesteps and noise come from a generator of their own "
                       "seeded from training.seed and each image's file name: the same numbers at every evaluation, "
                       "in every run and resume.", ge=1, le=64)


@dataclass
class LogCfg:
    """Progress and metrics."""

    every_n_steps: int = f(1, "Write metrics every N steps.", ge=1)
    tensorboard: bool = f(True, "Write TensorBoard events under <run>/tensorboard.")
    progress: bool = f(True, "Show a progress bar.")


@dataclass
class DistributedCfg:
    """Several processes (GPUs, machines) training one LoRA data-parallel (``lorakit train --gpus N``; docs/multi-gpu.md).
    training.batch_size is per process: the global batch is processes × training.batch_size."""

    backend: str = f("auto", "Collective backend: auto (nccl on CUDA, else gloo), nccl, or gloo (gloo with "
                     "training.device = \"cpu\" runs CPU processes: tests and debugging).",
                     choices=("auto", "nccl", "gloo"))
    timeout_s: float = f(600.0, "Seconds a process waits for the others at a gradient exchange before the run stops "
                         "naming the missing rank (a hung or dead process); caching waits 10× as long.", ge=1.0)
    num_machines: int = f(1, "Machines in the run (each runs `lorakit train ... --gpus N --machine-rank I`).", ge=1)
    main_process_ip: str = f("127.0.0.1", "Address of machine 0 (where the rendezvous store listens).")
    main_process_port: int = f(29500, "Port of the rendezvous store on machine 0; 0 = any free port (one machine "
                               "only).", ge=0)
    # issue 24: sharded base (FSDP2) and the gradient exchange overlapped with backward (lorakit/train/sharding.py)
    shard: str = f("auto", "FLUX.1, FLUX.2, Qwen-Image: \"base\" shards the frozen base weights over the processes "
                   "(FSDP2, block by block; the LoRA stays whole on every process), for a base one card cannot hold; "
                   "\"none\": every process holds the whole base; \"auto\": the automatic plan shards when no "
                   "single-card setting fits without block swap (docs/multi-gpu.md).", choices=("auto", "none", "base"),
                   family_only=True, off="none")  # off: "never" is accepted for every family
    overlap: bool = f(True, "Several processes: sum the LoRA gradients in buckets while backward still runs (false: "
                      "one exchange after backward; same result).")


@dataclass
class Config:
    """A whole lorakit run."""

    preset: Optional[str] = f(None, "A shipped recipe to start from, e.g. 'sdxl/character'.")
    model: ModelCfg = f(None, "The base model.", factory=ModelCfg)
    data: DataCfg = f(None, "Images, captions, buckets, caches.", factory=DataCfg)
    network: NetworkCfg = f(None, "The LoRA network.", factory=NetworkCfg)
    optimizer: OptimizerCfg = f(None, "Optimizer and schedule.", factory=OptimizerCfg)
    training: TrainingCfg = f(None, "Objective and run length.", factory=TrainingCfg)
    memory: MemoryCfg = f(None, "Memory and speed features.", factory=MemoryCfg)
    sample: SampleCfg = f(None, "Preview images.", factory=SampleCfg)
    save: SaveCfg = f(None, "Outputs.", factory=SaveCfg)
    validation: ValidationCfg = f(None, "Validation loss.", factory=ValidationCfg)
    log: LogCfg = f(None, "Progress and metrics.", factory=LogCfg)
    distributed: DistributedCfg = f(None, "Several GPUs or machines.", factory=DistributedCfg)


SECTIONS = ("model", "data", "network", "optimizer", "training", "memory", "sample", "save", "validation", "log",
            "distributed")
