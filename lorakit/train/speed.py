"""Generic speed features of the denoiser: gradient checkpointing and regional ``torch.compile``.

Why regional: a diffusion denoiser is a stack of a few block classes repeated many times (SDXL: 70
``BasicTransformerBlock`` and 22 ``ResnetBlock2D``; FLUX.1: 19 double + 38 single blocks). Compiling each
block class once fuses its element-wise work (norms, modulation, GELU, RoPE) and cuts kernel launches, at a
fraction of the compile time of the whole model, and leaves diffusers' per-block gradient checkpointing
outside the compiled graphs. Blocks are compiled with static shapes (``dynamic=False``): training sees one
bucket shape per block most of the time, and a new shape just compiles once more.

Fallback: ``torch._dynamo.config.suppress_errors`` is switched on, so a block that fails to compile (no
Triton, an unsupported op, a compiler bug) runs eagerly with a logged warning instead of stopping the run.
A fault *inside* a compiled kernel at run time cannot be caught in-process; ``benchmarks/bench.py`` runs
compiled training after an eager forward in the same process to check that path on the card.

Two further settings (module constants until the config has fields for them; ``prepare_denoiser`` also takes
them as arguments): :data:`COMPILE_SCOPE` ``"whole"`` compiles the denoiser's whole forward as one graph, with
diffusers' per-block checkpoints traced into it (AOTAutograd then recomputes the tagged regions in the
compiled backward), so no Python runs between blocks; :data:`CUDA_GRAPHS` compiles with
``mode="reduce-overhead"`` (CUDA graph trees) and needs :func:`mark_step` at the start of every training
step, which ``lorakit.train.loop.train_step`` calls.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import torch._functorch.config
import torch.utils.checkpoint
from torch import nn

from lorakit.errors import ConfigError
from lorakit.train.graph_pass import ChainedPass

# Block classes compiled in addition to a model's own ``_repeated_blocks`` (diffusers' list) come from the family's
# ``ModelSpec.compile_blocks`` (the loop passes them as ``extra``/``extra_regions``).

# With compile and checkpointing both on, checkpoint *inside* each compiled block (torch.utils.checkpoint
# traced by dynamo) instead of diffusers' checkpoint around it: the recomputation is then compiled too.
CHECKPOINT_INSIDE_COMPILE = True

# SDPA's cuDNN backend: eager FLUX.1 training hit "CUDA error: an illegal memory access" in its first
# backward on H100/H200 (benchmarks/RESULTS.md, runs 1-2), while compiled training with it on ran clean and
# 12 % faster (run 4). "eager": off unless memory.compile is on; True: always off; False: never touched.
DISABLE_CUDNN_SDPA: "bool | str" = "eager"

# "regions": compile each repeated block (fast to compile, a new bucket shape recompiles only small graphs);
# "whole": one graph for the denoiser's forward (no Python between blocks; long compile per bucket shape).
COMPILE_SCOPE = "regions"
SCOPES = ("regions", "whole")

# Replay the compiled graphs as CUDA graphs (torch.compile mode="reduce-overhead"): removes the per-kernel
# launch cost that bounds SDXL's step. Needs :func:`mark_step` at every step start.
CUDA_GRAPHS = False
_cuda_graphs_active = False

# Enough compiled variants for every (block class, shape) pair of SDXL/FLUX plus a few buckets; raised to
# PER_BUCKET per bucket shape of the dataset (SDXL's resnet block alone sees ~12 shapes per bucket), so that no
# bucket falls back to eager because dynamo's limit was reached.
RECOMPILE_LIMIT = 64
PER_BUCKET = 16

# Experiment (benchmarks only, no config key yet): with memory.activation_budget under regional compile, the share of
# the repeated blocks (spread evenly, as checkpoint_fraction's) that recompute under the budget; the others keep every
# activation (compiled with the partitioner's budget at 1.0). None: every block under the budget. Round 20 (Klein 4B):
# the partitioner jumps from 6.9 GiB at budget 0.5 to 11.3 GiB at 0.6 with nothing between; per block, the memory and
# the time move in steps of one block.
BUDGET_SHARE: Optional[float] = None


def prepare_denoiser(model: nn.Module, memory: Any, device: torch.device,
                     log: Callable[[str], None] = print, *, scope: Optional[str] = None,
                     cuda_graphs: Optional[bool] = None, backend: Any = "inductor",
                     swapper: Any = None, buckets: int = 1, extra_regions: tuple[str, ...] = ()) -> dict[str, Any]:
    """Apply ``memory.gradient_checkpointing`` and ``memory.compile`` to the (LoRA-injected) denoiser.

    Call after LoRA injection (peft replaces the Linears that the compiled blocks contain) and before the
    first step. ``scope`` / ``cuda_graphs`` default to :data:`COMPILE_SCOPE` / :data:`CUDA_GRAPHS`. With a
    ``swapper`` (:func:`lorakit.train.swap.place_denoiser`), every block runs through it, with lorakit's own
    checkpoint around the (compiled) block so that the swap happens in eager code in forward and in the
    recomputation. ``buckets``: how many bucket shapes the dataset has (each compiles, and with CUDA graphs records,
    once when first seen). ``extra_regions``: block classes compiled besides the model's own ``_repeated_blocks``
    (the family's ``ModelSpec.compile_blocks``). Returns what was done, for logs and the benchmark.
    """
    global _cuda_graphs_active
    checkpointing = bool(getattr(memory, "gradient_checkpointing", False))
    compile_ = bool(getattr(memory, "compile", False))
    scope = COMPILE_SCOPE if scope is None else scope
    graphs = CUDA_GRAPHS if cuda_graphs is None else bool(cuda_graphs)
    if scope not in SCOPES:
        raise ConfigError(f"memory.compile: unknown compile scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if compile_ and device.type != "cuda":
        raise ConfigError("memory.compile: torch.compile of the denoiser is offered on CUDA only; set it to false")
    if device.type == "cuda":
        configure_attention(compiled=compile_)
    budget = getattr(memory, "activation_budget", None)
    # process-wide, read by the partitioner when each block compiles; 1.0 (torch's default) when unset
    torch._functorch.config.activation_memory_budget = float(budget) if compile_ and budget else 1.0
    keep_attention = compile_ and bool(budget) and saves_attention(memory)
    set_save_attention(keep_attention)
    if compile_ and budget:
        log(f"activation_budget: each compiled block keeps about {budget:.0%} of its activations; the compiler "
            "recomputes the rest in backward, cheapest first" +
            ("; every attention output is kept (memory.save_attention)" if keep_attention else ""))
    if compile_:
        _configure_dynamo(buckets)
        configure_compile_cache(log)
        if buckets > 1:
            log(f"compile: {buckets} bucket shapes; each compiles its blocks{' and records CUDA graphs' if graphs else ''}"
                " once, the first time a batch of that shape comes (later runs reuse inductor's on-disk cache)")
    from lorakit.train import fp8

    # fp8 compute never upcasts a weight, so only fp8 *storage* needs the guarded layouts below
    fp8_on = bool(getattr(memory, "fp8_base", False)) and not bool(getattr(memory, "fp8_compute", False))
    selected = checkpoint_selection(model, float(getattr(memory, "checkpoint_fraction", 1.0)), extra_regions) \
        if checkpointing else None
    if selected is not None:
        log(f"checkpointing: {len(selected)} of {len(repeated_blocks(model, extra_regions))} blocks recompute their "
            "activations "
            f"(memory.checkpoint_fraction = {getattr(memory, 'checkpoint_fraction')}; swapped blocks always do)")
    if wrapped_layout(swapper, compile_=compile_, fp8_on=fp8_on, checkpointing=checkpointing, graphs=graphs):
        fp8.OPAQUE_UNDER_COMPILE = False  # the outer checkpoint bounds what a compiled block saves
        return _prepare_wrapped(model, swapper, checkpointing, compile_, graphs, backend, log, selected, extra_regions)
    # see lorakit/train/fp8.py; with fp8 compute it still guards the few layers that fall back to upcasting
    fp8.OPAQUE_UNDER_COMPILE = compile_ and bool(getattr(memory, "fp8_base", False))
    if getattr(memory, "fp8_compute", False) and compile_:
        fp8.install_recompute_pass()  # the float8 matmuls are recomputed inside checkpointed blocks
    mode = "reduce-overhead" if compile_ and graphs else None
    if compile_ and scope == "whole":
        on = set_gradient_checkpointing(model, checkpointing, log, selected, extra_regions)
        report: dict[str, Any] = {"gradient_checkpointing": on,
                                  "compiled_blocks": compile_whole(model, backend=backend, mode=mode, log=log)}
    else:
        inside = compile_ and checkpointing and CHECKPOINT_INSIDE_COMPILE
        report = {"gradient_checkpointing": set_gradient_checkpointing(model, checkpointing and not inside, log,
                                                                       selected, extra_regions) or inside}
        keep_all = budget_exempt(model, extra_regions) if compile_ and budget else None
        report["compiled_blocks"] = compile_regions(model, region_names(model, extra_regions), backend=backend,
                                                    mode=mode, checkpoint=inside, log=log,
                                                    selected=selected,
                                                    **({"keep_all": keep_all} if keep_all else {})) if compile_ else 0
        if keep_all:
            log(f"activation_budget: {len(keep_all)} of {len(repeated_blocks(model, extra_regions))} blocks keep every "
                f"activation (BUDGET_SHARE {BUDGET_SHARE})")
    _cuda_graphs_active = mode == "reduce-overhead"
    report["scope"], report["cuda_graphs"] = (scope if compile_ else None), _cuda_graphs_active
    if selected is not None:
        report["checkpointed_blocks"] = len(selected)
    return report


def saves_attention(memory: Any) -> bool:
    """``memory.save_attention`` resolved: unset means on, except with fp8 compute (whose activation budgets in the
    model specs were measured with attention recomputed)."""
    wanted = getattr(memory, "save_attention", None)
    return bool(wanted) if wanted is not None else not getattr(memory, "fp8_compute", False)


# the attention ops of the joint graphs inductor partitions (the backends SDPA dispatches to; the last on the CPU)
_ATTENTION_OPS = ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
                  "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu")


def tag_attention_saved(graph: torch.fx.Graph) -> int:
    """Mark every forward attention of a joint graph MUST_SAVE: the partitioner then keeps its output (and its
    log-sum-exp) for backward instead of running the attention again there. Under ``activation_budget`` it otherwise
    recomputed all 57 attentions of a FLUX.1-dev step (24 ms on an H200, RESULTS.md round 9), since their outputs
    are large for one op. Returns how many nodes were tagged."""
    from torch.utils.checkpoint import CheckpointPolicy

    ops = {getattr(torch.ops.aten, name).default for name in _ATTENTION_OPS if hasattr(torch.ops.aten, name)}
    tagged = 0
    for node in graph.nodes:
        if node.op == "call_function" and node.target in ops:
            node.meta["recompute"] = CheckpointPolicy.MUST_SAVE
            tagged += 1
    return tagged


class SaveAttention(ChainedPass):
    """Inductor joint-graph pre-pass running :func:`tag_attention_saved`, then any pass installed before it."""

    key = "lorakit-save-attention-1"

    def edit(self, graph: torch.fx.Graph) -> None:
        tag_attention_saved(graph)


def set_save_attention(on: bool) -> None:
    """Install (``on``) or remove :class:`SaveAttention` from inductor's joint-graph pre-pass chain; process-wide,
    read when each block compiles (and part of inductor's cache key through ``uuid``)."""
    import torch._inductor.config as inductor_config

    chain, link = [], inductor_config.joint_custom_pre_pass  # the passes above a SaveAttention, if one is installed
    while link is not None and not isinstance(link, SaveAttention) and hasattr(link, "previous"):
        chain.append(link)
        link = link.previous
    if isinstance(link, SaveAttention) and not on:  # unlink it, keeping the passes above and below
        if chain:
            chain[-1].previous = link.previous
        else:
            inductor_config.joint_custom_pre_pass = link.previous
    elif on and not isinstance(link, SaveAttention):
        inductor_config.joint_custom_pre_pass = SaveAttention(inductor_config.joint_custom_pre_pass)


def wrapped_layout(swapper: Any, *, compile_: bool, fp8_on: bool, checkpointing: bool, graphs: bool) -> bool:
    """Whether the blocks run inside lorakit's own checkpoint (:func:`_prepare_wrapped`): with block swap, and
    for fp8 storage under compile without CUDA graphs (see lorakit/train/fp8.py for why)."""
    return swapper is not None or (compile_ and fp8_on and checkpointing and not graphs)


def _prepare_wrapped(model: nn.Module, swapper: Any, checkpointing: bool, compile_: bool, graphs: bool,
                     backend: Any, log: Callable[[str], None], selected: Optional[set[int]] = None,
                     extra_regions: tuple[str, ...] = ()) -> dict[str, Any]:
    """lorakit's checkpoint around each (compiled) block, with the block swap inside it when ``swapper``:
    the layout for block swap, and for fp8 storage under compile without CUDA graphs."""
    from lorakit.train import memory, swap

    global _cuda_graphs_active
    memory.check_block_swap(checkpointing, graphs)  # the fp8 route only comes here with both fine
    set_gradient_checkpointing(model, False, log)  # lorakit's checkpoint wraps each block instead
    compile_fn = None
    if compile_:
        _configure_dynamo()

        failed: list[BaseException] = []

        def compile_fn(fn: Callable) -> Callable:
            if failed:
                return fn
            try:
                return torch.compile(fn, backend=backend, dynamic=False)
            except Exception as why:  # noqa: BLE001  (eager is always correct)
                failed.append(why)
                _compile_failed(model, why, log)
                return fn

    blocks = swapper.blocks if swapper is not None else repeated_blocks(model, extra_regions)
    if not blocks:
        raise ConfigError(f"memory.compile: {type(model).__name__} has no repeated blocks lorakit knows how to "
                          "compile; set memory.compile = false")
    # swapped blocks are always checkpointed (their weights must not be saved for backward)
    keep = set() if selected is None else {i for i, b in enumerate(blocks) if id(b) not in selected
                                           and (swapper is None or i not in swapper.packs)}
    swap.install(swapper, blocks, checkpoint=True, compile_fn=compile_fn, no_checkpoint=keep)
    if compile_:
        log(f"compile: {len(blocks)} blocks compiled, each inside lorakit's checkpoint (first steps include "
            "compilation)")
    _cuda_graphs_active = False
    return {"gradient_checkpointing": True, "compiled_blocks": len(blocks) if compile_ else 0,
            "scope": "regions" if compile_ else None, "cuda_graphs": False,
            "swapped_blocks": len(swapper.packs) if swapper is not None else 0,
            "checkpointed_blocks": len(blocks) - len(keep)}


def repeated_blocks(model: nn.Module, extra: tuple[str, ...] = ()) -> list[nn.Module]:
    """The model's repeated blocks (:func:`region_names`) in module order, outermost only: for FLUX.1 the 19
    double then 38 single blocks, the order the forward runs them."""
    wanted = set(region_names(model, extra))
    out: list[nn.Module] = []
    inside: set[int] = set()
    for sub in model.modules():
        if id(sub) in inside:
            continue
        if type(sub).__name__ in wanted:
            out.append(sub)
            inside.update(id(m) for m in sub.modules())
    return out


def mark_step() -> None:
    """Tell CUDA graph trees that a new training step starts (no-op unless CUDA graphs are on).

    Without it the trees cannot tell a step's forward from the previous step's, and outputs that are still
    needed get overwritten by the next replay."""
    if _cuda_graphs_active:
        torch.compiler.cudagraph_mark_step_begin()


CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_cache_dir() -> Path:
    """lorakit's compile cache: ``$XDG_CACHE_HOME/lorakit/inductor`` (``~/.cache/lorakit/inductor``). Inductor's own
    default lies under /tmp, which a reboot empties: a cold compile of FLUX.1-dev costs a minute or more."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lorakit" / "inductor"


def configure_compile_cache(log: Callable[[str], None] = print) -> Path:
    """Point inductor (and Triton under it) at :func:`compile_cache_dir`, unless ``TORCHINDUCTOR_CACHE_DIR`` was set
    (by the user, the test suite or the toy world, which keep their own). Returns the directory in use."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    given = os.environ.get(CACHE_ENV)
    if given and os.path.abspath(given) != os.path.abspath(default_cache_dir()):
        return Path(given)
    where = compile_cache_dir()
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as why:  # a read-only home: inductor's default stays
        log(f"compile: cannot create the cache folder {where} ({why}); compiled blocks are cached under /tmp")
        return Path(default_cache_dir())
    os.environ[CACHE_ENV] = str(where)
    return where


def _compile_failed(model: nn.Module, why: BaseException, log: Callable[[str], None]) -> int:
    """A compile that raised while being set up: everything runs eagerly again, said in one line."""
    uncompile_regions(model)
    first = (str(why).strip().splitlines() or [""])[0][:200]
    log(f"compile: failed ({type(why).__name__}: {first}); training runs eagerly (memory.compile = false skips it)")
    return 0


def _configure_dynamo(buckets: int = 1) -> None:
    """Eager fallback on compile errors, and room for every block/bucket variant."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    limit = max(RECOMPILE_LIMIT, PER_BUCKET * buckets)
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), limit))


def compile_whole(model: nn.Module, *, backend: Any = "inductor", mode: Optional[str] = None,
                  dynamic: Optional[bool] = False, log: Callable[[str], None] = print) -> int:
    """``torch.compile`` the whole denoiser in place (one graph when nothing breaks it); returns 1.

    Checkpointing, if wanted, must be switched on before (diffusers' non-reentrant per-block checkpoint is
    traced as a region AOTAutograd recomputes in backward). A failure to compile falls back to eager."""
    _configure_dynamo()
    try:
        model.compile(backend=backend, mode=mode, dynamic=dynamic)
    except Exception as why:  # noqa: BLE001  (any failure of the compiler: eager is always correct)
        return _compile_failed(model, why, log)
    log(f"compile: the whole {type(model).__name__} compiled as one graph (the first step includes compilation; "
        "a new bucket shape compiles again)")
    return 1


def configure_attention(compiled: bool = False) -> None:
    """Switch SDPA's cuDNN backend per :data:`DISABLE_CUDNN_SDPA` (see there for why)."""
    if not hasattr(torch.backends.cuda, "enable_cudnn_sdp") or DISABLE_CUDNN_SDPA is False:
        return
    off = DISABLE_CUDNN_SDPA is True or (DISABLE_CUDNN_SDPA == "eager" and not compiled)
    torch.backends.cuda.enable_cudnn_sdp(not off)


def checkpoint_selection(model: nn.Module, fraction: float,
                         extra_regions: tuple[str, ...] = ()) -> Optional[set[int]]:
    """ids of the repeated blocks to checkpoint for ``memory.checkpoint_fraction`` (spread evenly over the
    stack); None when all are (fraction 1)."""
    if fraction >= 1.0:
        return None
    blocks = repeated_blocks(model, extra_regions)
    return {id(blocks[i]) for i in checkpoint_indices(len(blocks), fraction)}


def checkpoint_indices(n: int, fraction: float) -> set[int]:
    """Indices of the ``n`` repeated blocks checkpointed at ``fraction`` (spread evenly; the planner counts the others'
    activations: lorakit/train/budget.py)."""
    k = round(fraction * n)
    return {min(n - 1, int((j + 0.5) * n / k)) for j in range(k)} if k else set()


def set_gradient_checkpointing(model: nn.Module, enabled: bool, log: Callable[[str], None] = print,
                               selected: Optional[set[int]] = None, extra_regions: tuple[str, ...] = ()) -> bool:
    """Switch diffusers' per-block checkpointing on or off; returns whether it is on afterwards. With
    ``selected`` (:func:`checkpoint_selection`), the repeated blocks outside it run without checkpointing."""
    if not getattr(model, "_supports_gradient_checkpointing", False) or \
            not hasattr(model, "enable_gradient_checkpointing"):
        if enabled:
            log(f"note: memory.gradient_checkpointing: {type(model).__name__} has no checkpointing; running without")
        return False
    if enabled and selected is not None:
        skipped = {id(b) for b in repeated_blocks(model, extra_regions)} - selected

        def checkpoint_some(module: nn.Module, *args: Any) -> Any:
            if id(module) in skipped:
                return module(*args)
            return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

        model.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_some)
    elif enabled:
        model.enable_gradient_checkpointing()
    elif getattr(model, "is_gradient_checkpointing", False):
        model.disable_gradient_checkpointing()
    return enabled


def region_names(model: nn.Module, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Class names of the blocks to compile: the model's ``_repeated_blocks`` plus ``extra`` (the family's
    ``ModelSpec.compile_blocks``)."""
    names = tuple(getattr(model, "_repeated_blocks", None) or ())
    return names + tuple(n for n in extra if n not in names)


def budget_exempt(model: nn.Module, extra_regions: tuple[str, ...] = ()) -> Optional[set[int]]:
    """ids of the repeated blocks that keep every activation under :data:`BUDGET_SHARE` (None: none do)."""
    if BUDGET_SHARE is None or BUDGET_SHARE >= 1.0:
        return None
    blocks = repeated_blocks(model, extra_regions)
    under = checkpoint_indices(len(blocks), BUDGET_SHARE)
    return {id(b) for i, b in enumerate(blocks) if i not in under}


def keeping_every_activation(backend: Any, mode: Optional[str] = None, dynamic: Optional[bool] = False) -> Callable:
    """A compile backend that partitions with ``activation_memory_budget`` 1.0 (every activation kept), whatever the
    process-wide budget; ``backend`` as ``torch.compile`` takes it ("inductor" with ``mode``, or a callable).

    The partitioner reads the budget when a graph compiles (inside the backend call), and dynamo keeps one cache entry
    per backend, so blocks of one class compiled with this and with the plain backend get two graphs."""
    if backend == "inductor":
        inner = torch._TorchCompileInductorWrapper(mode, None, dynamic)
    elif isinstance(backend, str):
        from torch._dynamo.backends.registry import lookup_backend

        inner = lookup_backend(backend)
    else:
        inner = backend

    def keep_all(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
        with torch._functorch.config.patch(activation_memory_budget=1.0):
            return inner(gm, example_inputs, **kwargs)

    return keep_all


def compile_regions(model: nn.Module, names: Optional[Iterable[str]] = None, *, backend: Any = "inductor",
                    mode: Optional[str] = None, dynamic: Optional[bool] = False, checkpoint: bool = False,
                    log: Callable[[str], None] = print, selected: Optional[set[int]] = None,
                    keep_all: Optional[set[int]] = None) -> int:
    """``torch.compile`` every submodule whose class name is in ``names`` (default :func:`region_names`),
    in place (``nn.Module.compile``); returns how many were compiled. Compilation itself happens lazily
    at each block's first call; a block that fails to compile falls back to eager (see the module doc).
    With ``checkpoint`` each block's forward is wrapped in non-reentrant ``torch.utils.checkpoint`` (only
    while gradients are on) before compiling, so the compiled backward recomputes the block itself. Blocks in
    ``keep_all`` (ids) compile with :func:`keeping_every_activation` (:data:`BUDGET_SHARE`)."""
    wanted = set(region_names(model) if names is None else names)
    if not wanted:
        raise ConfigError(f"memory.compile: {type(model).__name__} has no repeated blocks lorakit knows how to "
                          "compile; set memory.compile = false")
    _configure_dynamo()
    count = 0
    kept: Optional[Callable] = None
    for sub in model.modules():
        if type(sub).__name__ in wanted:
            if checkpoint and (selected is None or id(sub) in selected):
                checkpoint_forward(sub)
            try:
                if keep_all and id(sub) in keep_all:  # one backend for all of them: one graph per shape
                    kept = kept or keeping_every_activation(backend, mode, dynamic)
                    sub.compile(backend=kept, dynamic=dynamic)
                else:
                    sub.compile(backend=backend, mode=mode, dynamic=dynamic)
            except Exception as why:  # noqa: BLE001  (any failure of the compiler: eager is always correct)
                return _compile_failed(model, why, log)
            count += 1
    if count == 0:
        raise ConfigError(f"memory.compile: none of {sorted(wanted)} found in {type(model).__name__}; "
                          "set memory.compile = false")
    log(f"compile: {count} blocks of {sorted(wanted)} compiled (first steps include compilation)")
    return count


def checkpoint_forward(block: nn.Module) -> None:
    """Make ``block`` recompute its activations in backward (instance-level forward wrapper, idempotent)."""
    if getattr(block, "_lorakit_checkpointed", False):
        return
    inner = block.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    block.forward = forward
    block._lorakit_checkpointed = True


def uncompile_regions(model: nn.Module) -> int:
    """Undo :func:`compile_regions` / :func:`compile_whole` (everything runs eagerly again); returns how
    many modules were reset."""
    count = 0
    for sub in model.modules():
        if getattr(sub, "_compiled_call_impl", None) is not None:
            sub._compiled_call_impl = None
            count += 1
    return count
