"""Memory and speed features: which apply where, and a clear error for the ones that do not.

A flag that does nothing is a bug: every option of ``[memory]`` either takes effect for the chosen
family and device or stops the run before any work with a message saying why.
"""

from __future__ import annotations

import torch

from lorakit.config.schema import Config
from lorakit.device import ENCODER_MARGIN_GIB, device_for  # noqa: F401  (re-exported)
from lorakit.errors import ConfigError


def check_supported(cfg: Config, device: torch.device, planned: bool = False) -> None:
    """Raise ConfigError for options this build cannot honour on ``device``.

    With ``memory.vram_gb`` the planner chooses checkpointing, its fraction, the activation budget, fp8 storage and
    the swap depth (keeping any of them the user set as a constraint), so how those combine is checked on the plan's
    config (``planned``), not on the one loaded."""
    mem = cfg.memory
    # the automatic plan (CUDA, memory.auto) chooses compile and the memory knobs: combinations are checked on its plan
    auto = device.type == "cuda" and bool(getattr(mem, "auto", False)) and not planned
    combos = planned or not (mem.vram_gb or auto)
    if mem.fp8_base and getattr(torch, "float8_e4m3fn", None) is None:
        raise ConfigError("memory.fp8_base: this PyTorch has no float8_e4m3fn; upgrade torch or set it to false")
    if mem.fp8_compute:
        check_fp8_compute(cfg, device)
    if cfg.network.type in ("loha", "lokr", "dora"):  # issue 23: what a plan may choose that these layers lack
        for key in ("fp8_base", "compile", "cuda_graphs"):
            if getattr(mem, key):
                raise ConfigError(f"memory.{key}: not built for network.type = \"{cfg.network.type}\"; set it to "
                                  "false (or give memory.vram_gb room for bf16 weights)")
    if mem.compile and device.type != "cuda":
        raise ConfigError("memory.compile: torch.compile of the denoiser is offered on CUDA only; set it to false")
    if mem.blocks_to_swap and device.type != "cuda":
        raise ConfigError("memory.blocks_to_swap: block swap streams blocks to a GPU; set it to 0 on the CPU")
    if mem.cuda_graphs and not mem.compile and not auto:
        raise ConfigError("memory.cuda_graphs: CUDA graphs replay the compiled blocks; set memory.compile = true too")
    if mem.cuda_graphs and device.type != "cuda":
        raise ConfigError("memory.cuda_graphs: needs a CUDA GPU; set it to false on the CPU")
    if mem.fused_optimizer is True and (device.type != "cuda" or cfg.optimizer.name != "adamw"):
        raise ConfigError("memory.fused_optimizer: the fused kernel is torch's AdamW on CUDA; it needs "
                          "optimizer.name = \"adamw\" and a GPU")
    if cfg.training.mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError("training.mixed_precision: fp16 needs a CUDA GPU; use \"bf16\" or \"no\" on the CPU")
    if mem.vram_gb and device.type != "cuda":
        raise ConfigError("memory.vram_gb: a GPU memory budget; remove it when training on the CPU")
    if combos and mem.checkpoint_fraction < 1.0 and not mem.gradient_checkpointing:
        raise ConfigError("memory.checkpoint_fraction: only has an effect with memory.gradient_checkpointing = true; "
                          "remove it or turn checkpointing on")
    if combos and mem.checkpoint_fraction < 1.0 and mem.fp8_base and mem.compile and \
            not (mem.fp8_compute or mem.cuda_graphs):
        raise ConfigError("memory.checkpoint_fraction: with fp8_base under compile (no cuda_graphs) every block runs "
                          "inside lorakit's own checkpoint; a block left out would keep bf16 copies of its float8 "
                          "weights. Set checkpoint_fraction = 1, or add memory.fp8_compute or memory.cuda_graphs")
    if mem.activation_budget is not None and not auto:
        check_activation_budget(cfg, combos)
    if getattr(mem, "save_attention", None) and mem.activation_budget is None and not mem.vram_gb:
        raise ConfigError("memory.save_attention: applies to the compiler's selective recomputation only; set "
                          "memory.activation_budget (with memory.compile = true) or remove it")
    if mem.blocks_to_swap and combos:
        check_block_swap(mem.gradient_checkpointing, mem.cuda_graphs)
    if mem.fused_backward:
        check_fused_backward(cfg)


def check_activation_budget(cfg: Config, combos: bool = True) -> None:
    """memory.activation_budget: the compiler's selective recomputation inside each compiled block, in place of
    block checkpointing (lorakit/train/speed.py)."""
    mem = cfg.memory
    if not mem.compile:
        raise ConfigError("memory.activation_budget: the compiler chooses what to recompute; set memory.compile = true "
                          "or remove it")
    if combos and mem.gradient_checkpointing:
        raise ConfigError("memory.activation_budget: replaces block checkpointing; set memory.gradient_checkpointing = "
                          "false, or remove it and use memory.checkpoint_fraction")


def check_fp8_compute(cfg: Config, device: torch.device) -> None:
    """memory.fp8_compute multiplies the float8-stored weights directly, in bf16 runs on fp8 tensor cores."""
    from lorakit.train import fp8

    if not (cfg.memory.fp8_base or cfg.memory.vram_gb):
        raise ConfigError("memory.fp8_compute: multiplies the float8-stored base weights; set memory.fp8_base = true "
                          "(or memory.vram_gb) too")
    if cfg.training.mixed_precision != "bf16":
        raise ConfigError(f'memory.fp8_compute: float8 matmuls produce bf16; set training.mixed_precision = "bf16" '
                          f'(it is "{cfg.training.mixed_precision}") or memory.fp8_compute = false')
    fp8.check_compute(device)


def check_block_swap(checkpointing: bool, cuda_graphs: bool) -> None:
    """What block swap cannot be combined with (checked before loading, and again where it is installed,
    since memory.vram_gb may turn swap on after loading)."""
    if not checkpointing:
        raise ConfigError("memory.blocks_to_swap: needs memory.gradient_checkpointing = true (without it every "
                          "block's weights stay alive until backward, so swapping frees nothing)")
    if cuda_graphs:
        raise ConfigError("memory.cuda_graphs: CUDA graphs replay fixed weight addresses, which block swap changes "
                          "every step; set memory.cuda_graphs = false or memory.blocks_to_swap = 0")


def check_fused_backward(cfg: Config) -> None:
    """memory.fused_backward steps each parameter inside backward (lorakit/train/fused.py): what needs every
    gradient of the step at once cannot be combined with it, and is refused rather than silently changed."""
    from lorakit.train.fused import PER_TENSOR_OPTIMIZERS

    if cfg.optimizer.max_grad_norm > 0:
        raise ConfigError(f"optimizer.max_grad_norm: clipping by the global gradient norm "
                          f"({cfg.optimizer.max_grad_norm}) needs every gradient before the first step, which "
                          "memory.fused_backward never holds; set optimizer.max_grad_norm = 0 or "
                          "memory.fused_backward = false")
    if cfg.optimizer.name not in PER_TENSOR_OPTIMIZERS:
        raise ConfigError(f'memory.fused_backward: optimizer.name = "{cfg.optimizer.name}" needs every gradient '
                          f"of the step at once; choose one of {', '.join(PER_TENSOR_OPTIMIZERS)}")
    if cfg.training.mixed_precision == "fp16":
        raise ConfigError("memory.fused_backward: fp16 loss scaling must unscale and check all gradients before "
                          "any step; use training.mixed_precision = \"bf16\"")


def configure_allocator(cfg: Config, device: torch.device) -> bool:
    """Under a memory budget (``memory.vram_gb``, or the automatic plan) or block swap, let PyTorch's CUDA allocator grow segments in place
    (``expandable_segments``) instead of caching fixed-size ones: near a cap, fragmentation otherwise wastes
    most of a GiB (FLUX.1-dev at vram_gb = 8 failed with 0.7 GiB reserved but unusable, RESULTS.md run 5).
    Left alone when the user set ``PYTORCH_CUDA_ALLOC_CONF``. Returns whether it was switched on."""
    import os

    if device.type != "cuda" or not (cfg.memory.vram_gb or cfg.memory.blocks_to_swap or getattr(cfg.memory, "auto", 0)):
        return False
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF"):
        return False
    import warnings

    with warnings.catch_warnings():  # renamed in newer torch; the old name still works and warns
        warnings.simplefilter("ignore", FutureWarning)
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    return True
