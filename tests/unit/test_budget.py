"""memory.vram_gb (lorakit/train/budget.py): byte counts against an independent count, and the settings it
picks for the full-size models (built on the meta device: no memory used). The GPU benchmark runs each tier
under torch.cuda.set_per_process_memory_fraction (benchmarks/bench.py, RESULTS.md)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.train import budget, fp8, speed, swap
from tests.unit.test_swap import flux_with_blocks, with_lora


def frozen_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers()) if not t.requires_grad}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_sizes_match_the_bytes_after_placing_with_and_without_fp8():
    base, _ = flux_with_blocks(2, 3)
    params = with_lora(base)
    sizes = budget.Sizes.of(base, speed.repeated_blocks(base), params)
    assert sizes.lora_params == sum(p.numel() for p in params)
    assert sizes.outside[0] + sum(b[0] for b in sizes.blocks) == frozen_bytes(base)
    model = copy.deepcopy(base)
    swap.place_denoiser(model, speed.repeated_blocks(model), torch.device("cpu"), fp8_base=True, log=lambda _: None)
    assert sizes.outside[1] + sum(b[1] for b in sizes.blocks) == frozen_bytes(model)
    assert any(p.dtype == fp8.FP8 for p in model.parameters())


@pytest.fixture(scope="module")
def flux_sizes() -> budget.Sizes:
    return full_flux_sizes()


def full_flux_sizes(host_linears: tuple[str, ...] = ()) -> budget.Sizes:
    from diffusers import FluxTransformer2DModel

    from lorakit.models.flux1 import configs
    from lorakit.models.flux1.lora_format import transformer_targets

    conf = {k: v for k, v in configs.transformer_config("dev").items() if not k.startswith("_")}
    with torch.device("meta"):
        tr = FluxTransformer2DModel(**conf).to(torch.bfloat16).requires_grad_(False)
    network = SimpleNamespace(rank=16, module_ranks={}, train_blocks="all", block_ranks=None)
    targets = transformer_targets(network, 19, 38)
    lora = [torch.empty(r * (tr.get_submodule(p).in_features + tr.get_submodule(p).out_features), device="meta")
            for p, r in targets.items()]
    return budget.Sizes.of(tr, speed.repeated_blocks(tr), lora, host_linears)


@pytest.fixture(scope="module")
def flux_host_sizes() -> budget.Sizes:
    from lorakit.models.registry import get_family

    return full_flux_sizes(get_family("flux1").SPEC.host_linears)


@pytest.fixture(scope="module")
def sdxl_sizes() -> budget.Sizes:
    from diffusers import UNet2DConditionModel

    from lorakit.models.registry import get_family

    from lorakit.models.sdxl import configs
    from lorakit.models.unet_parts import unet_lora_targets

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in configs.UNET.items() if not k.startswith("_")})
    unet.to(torch.bfloat16).requires_grad_(False)
    targets = unet_lora_targets(unet, 32)
    lora = []
    for p, r in targets.items():
        w = unet.get_submodule(p).weight
        lora.append(torch.empty(r * (w[0].numel() + w.shape[0]), device="meta"))
    return budget.Sizes.of(unet, speed.repeated_blocks(unet, get_family("sdxl").SPEC.compile_blocks), lora)


def plan(sizes, gib, family, batch=1, optimizer="adamw"):
    from lorakit.models.registry import get_family

    spec = get_family(family).SPEC
    return budget.plan_memory(gib, sizes, activation_gib=spec.activation_gib, images=batch, optimizer=optimizer,
                              batch_size=batch, can_swap=family == "flux1", lookahead=swap.LOOKAHEAD)


def test_full_size_counts(flux_sizes, sdxl_sizes):
    gib = 2**30
    # FLUX.1-dev: 11.9 B parameters, bf16 22.2 GiB -> fp8 storage about half; 57 blocks; rank-16 LoRA 85.9 M
    assert len(flux_sizes.blocks) == 57
    total = (flux_sizes.outside[0] + sum(b[0] for b in flux_sizes.blocks)) / gib
    total8 = (flux_sizes.outside[1] + sum(b[1] for b in flux_sizes.blocks)) / gib
    assert 22.0 < total < 22.4 and 11.0 < total8 < 11.4
    assert flux_sizes.lora_params == pytest.approx(85.9e6, rel=0.01)
    sd = (sdxl_sizes.outside[0] + sum(b[0] for b in sdxl_sizes.blocks)) / gib
    assert 4.7 < sd < 4.9 and sdxl_sizes.lora_params == pytest.approx(85.1e6, rel=0.01)


def test_flux_tiers_get_leaner_as_the_budget_shrinks(flux_sizes):
    plans = {gib: plan(flux_sizes, gib, "flux1") for gib in (80, 48, 24, 16, 12, 8)}
    for gib, p in plans.items():
        assert p.estimate_gib <= gib, (gib, p.describe())
    assert not plans[80].gradient_checkpointing and not plans[80].fp8_base   # the fastest setting fits
    assert plans[48].gradient_checkpointing and not plans[48].fp8_base and plans[48].blocks_to_swap == 0
    assert plans[24].fp8_base and plans[24].blocks_to_swap == 0
    assert plans[12].fp8_base and 0 < plans[12].blocks_to_swap < plans[8].blocks_to_swap < 57
    # each tier is the first that fits: one block fewer swapped would not
    for gib in (12, 8):
        p = plans[gib]
        fewer = budget.estimate(flux_sizes, activation_gib=p.parts["activations"], optimizer="adamw",
                                checkpointing=True, fp8_base=True, swapped=swap.spread(57, p.blocks_to_swap - 1),
                                lookahead=swap.LOOKAHEAD)
        assert sum(fewer.values()) + budget.RESERVE_GIB + budget.MARGIN * fewer["activations"] > gib


def test_sdxl_tiers_never_swap(sdxl_sizes):
    plans = {gib: plan(sdxl_sizes, gib, "sdxl") for gib in (24, 12, 8, 6)}
    assert not plans[24].gradient_checkpointing
    assert plans[12].gradient_checkpointing and not plans[12].fp8_base
    assert plans[6].fp8_base
    assert all(p.blocks_to_swap == 0 and p.estimate_gib <= gib for gib, p in plans.items())


def test_too_small_a_budget_names_the_batch_size_that_fits(flux_sizes):
    with pytest.raises(ConfigError, match=r"memory.vram_gb = 8: .*training.batch_size = [1-3] fits"):
        plan(flux_sizes, 8, "flux1", batch=4)
    with pytest.raises(ConfigError, match="memory.vram_gb = 2: .*lower data.resolution"):
        plan(flux_sizes, 2, "flux1")


def test_apply_budget_returns_the_choice_and_leaves_the_config_as_loaded(flux_sizes, monkeypatch):
    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family

    cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                  "memory": {"vram_gb": 12}})
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, *a, **k: flux_sizes))
    lines: list[str] = []
    loaded = copy.deepcopy(cfg)
    p = budget.apply_budget(cfg, get_family("flux1").SPEC, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lines.append)
    assert cfg == loaded  # the plan is a copy: config.toml and the loaded config stay what the user asked
    cfg = p.applied
    assert (cfg.memory.fp8_base, cfg.memory.blocks_to_swap, cfg.memory.gradient_checkpointing) == \
        (True, p.blocks_to_swap, True) and p.blocks_to_swap > 0
    assert lines and lines[0].startswith("vram_gb = 12: gradient_checkpointing = true, fp8_base = true")


def test_cuda_graphs_count_their_pool_and_never_swap(sdxl_sizes, flux_sizes):
    from lorakit.models.registry import get_family

    def with_graphs(sizes, gib, family):
        spec = get_family(family).SPEC
        return budget.plan_memory(gib, sizes, activation_gib=spec.activation_gib, images=1, optimizer="adamw",
                                  batch_size=1, can_swap=family == "flux1", lookahead=swap.LOOKAHEAD, cuda_graphs=True)

    plain, graphs = plan(sdxl_sizes, 8, "sdxl"), with_graphs(sdxl_sizes, 8, "sdxl")
    assert not plain.fp8_base and graphs.fp8_base  # the ~1 GiB graph pool pushes SDXL at 8 GiB to fp8 storage
    # the pool is counted from the fully checkpointed rate (0.9 GiB per 1024² image), whatever the fraction
    assert graphs.parts["CUDA graph pool"] == pytest.approx(budget.GRAPH_POOL * 0.9)
    with pytest.raises(ConfigError, match="memory.cuda_graphs = false"):
        with_graphs(flux_sizes, 12, "flux1")


def test_a_lower_checkpoint_fraction_is_counted(flux_sizes):
    from lorakit.models.registry import get_family

    spec = get_family("flux1").SPEC
    full = plan(flux_sizes, 40, "flux1")
    half = budget.plan_memory(40, flux_sizes, activation_gib=spec.activation_gib, images=1, optimizer="adamw",
                              batch_size=1, can_swap=True, lookahead=swap.LOOKAHEAD, checkpoint_fraction=0.5)
    ckpt, none = spec.activation_gib
    assert half.parts["activations"] == pytest.approx(0.5 * ckpt + 0.5 * none)
    assert half.fp8_base and not full.fp8_base  # half the blocks' activations push bf16 over 40 GiB


def _fits(sizes, gib, family, share, fp8_base):
    from lorakit.models.registry import get_family

    ckpt, none = get_family(family).SPEC.activation_gib
    parts = budget.estimate(sizes, activation_gib=share * ckpt + (1 - share) * none, optimizer="adamw",
                            checkpointing=share > 0, fp8_base=fp8_base, swapped=[], lookahead=swap.LOOKAHEAD)
    return sum(parts.values()) + budget.RESERVE_GIB + budget.MARGIN * parts["activations"] <= gib


@pytest.mark.parametrize("family,gib", [("flux1", 30), ("flux1", 24), ("sdxl", 10), ("sdxl", 7)])
def test_the_budget_checkpoints_the_fewest_blocks_that_fit(flux_sizes, sdxl_sizes, family, gib):
    """Between no checkpointing and full checkpointing: the smallest share j/n of blocks whose activations
    fit; one block fewer would not (checked against the parts formula, not the planner's own loop)."""
    sizes = flux_sizes if family == "flux1" else sdxl_sizes
    n = len(sizes.blocks)
    p = plan(sizes, gib, family)
    assert p.gradient_checkpointing and 0 < p.checkpoint_fraction < 1 and p.blocks_to_swap == 0, p.describe()
    j = round(p.checkpoint_fraction * n)
    assert p.checkpoint_fraction == pytest.approx(j / n)
    assert _fits(sizes, gib, family, j / n, p.fp8_base) and not _fits(sizes, gib, family, (j - 1) / n, p.fp8_base)
    if p.fp8_base:  # bf16 did not fit even with every block checkpointed
        assert not _fits(sizes, gib, family, 1.0, False)
    assert f"checkpoint_fraction = {p.checkpoint_fraction:.3g}" in p.describe()


def test_fp8_compute_budgets_only_float8_settings(flux_sizes):
    from lorakit.models.registry import get_family

    spec = get_family("flux1").SPEC

    def with_fp8c(gib, **kw):
        return budget.plan_memory(gib, flux_sizes, activation_gib=spec.activation_gib, images=1, optimizer="adamw",
                                  batch_size=1, can_swap=True, lookahead=swap.LOOKAHEAD, fp8_only=True, **kw)

    roomy = with_fp8c(80)
    assert roomy.fp8_base and not roomy.gradient_checkpointing  # bf16 would fit too, but fp8 compute needs fp8
    assert with_fp8c(12).fp8_base and with_fp8c(12).blocks_to_swap == plan(flux_sizes, 12, "flux1").blocks_to_swap
    kept = with_fp8c(30, checkpoint_fraction=0.5)  # a fraction the user set is kept, not searched
    assert kept.checkpoint_fraction == 0.5 and kept.gradient_checkpointing


def test_apply_budget_splits_a_batch_that_does_not_fit(flux_sizes, monkeypatch):
    """vram_gb picks the batch size too: a batch of 4 that fits at no setting becomes the largest divisor that
    does, with gradient accumulation raised to keep the effective batch; no divisor fitting is an error."""
    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family

    spec = get_family("flux1").SPEC
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, *a, **k: flux_sizes))

    def cfg_for(vram, batch, accumulation=1):
        return load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"},
                                       "data": {"dir": "."}, "memory": {"vram_gb": vram},
                                       "training": {"batch_size": batch, "gradient_accumulation": accumulation}})

    with pytest.raises(ConfigError):
        plan(flux_sizes, 8, "flux1", batch=4)  # as asked, batch 4 does not fit in 8 GiB
    cfg = cfg_for(8, 4, 2)
    lines: list[str] = []
    p = budget.apply_budget(cfg, spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lines.append)
    cfg = p.applied
    b = cfg.training.batch_size
    assert b in (1, 2) and cfg.training.gradient_accumulation == 2 * 4 // b  # effective batch 8 kept
    assert p.estimate_gib <= 8 and "does not fit; using batch_size" in lines[0]
    with pytest.raises(ConfigError, match="memory.vram_gb = 2"):
        budget.apply_budget(cfg_for(2, 4), spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lines.append)
    cfg = cfg_for(24, 1)
    cfg = budget.apply_budget(cfg, spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lines.append).applied
    assert (cfg.training.batch_size, cfg.training.gradient_accumulation) == (1, 1)  # untouched when it fits


def test_encoders_run_on_the_cpu_when_they_do_not_fit_next_to_training(monkeypatch):
    """memory.device_for: T5-XXL (8.9 GiB) must not be moved onto a card it does not fit; the decision uses the
    driver's free memory plus PyTorch's unused reserve, capped by vram_gb. (CUDA queries faked on the CPU.)"""
    from lorakit.train import memory

    gib = 2**30
    with torch.device("meta"):
        t5_like = nn.Linear(1, 1)
    t5_like.weight = nn.Parameter(torch.empty(int(8.9 * gib / 2), dtype=torch.bfloat16), requires_grad=False)
    state = {"free": 40 * gib, "reserved": 2 * gib, "allocated": 1 * gib}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (state["free"], 141 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: state["allocated"])
    cuda = torch.device("cuda")
    assert memory.device_for(t5_like, cuda) == cuda                        # a big card: on the GPU
    assert memory.device_for(t5_like, cuda, vram_gb=12) == cuda             # 12 GiB budget, 1 GiB in use
    notes: list[str] = []
    state.update(allocated=6 * gib)                                          # the training state is on the card
    assert memory.device_for(t5_like, cuda, vram_gb=12, log=notes.append).type == "cpu"
    assert "runs on the CPU" in notes[0]
    state.update(free=int(8.5 * gib), reserved=7 * gib)                      # 9.5 GiB usable < 8.9 + 1 margin
    assert memory.device_for(t5_like, cuda) == torch.device("cpu")
    state.update(free=9 * gib)                                               # 10 GiB usable: fits
    assert memory.device_for(t5_like, cuda) == cuda
    assert memory.device_for(t5_like, torch.device("cpu")) == torch.device("cpu")



def test_compiled_blocks_are_budgeted_with_their_own_activation_rate(flux_sizes, monkeypatch):
    """memory.compile: compiled blocks keep fewer intermediates (measured, ModelSpec.activation_gib_compiled), so at
    the same budget fewer blocks need checkpointing; the activations part follows the compiled rate exactly."""
    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family

    spec = get_family("flux1").SPEC
    assert spec.activation_gib_compiled[1] < spec.activation_gib[1]
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, *a, **k: flux_sizes))
    plans = {}
    for compile_ in (False, True):
        cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"},
                                      "data": {"dir": "."},
                                      "memory": {"vram_gb": 34, "compile": compile_, "modulation_on_cpu": False}})
        plans[compile_] = budget.apply_budget(cfg, spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lambda _: None)
        cfg = plans[compile_].applied
        assert cfg.memory.checkpoint_fraction == plans[compile_].checkpoint_fraction < 1
    eager, compiled = plans[False], plans[True]
    assert not eager.fp8_base and not compiled.fp8_base
    assert compiled.checkpoint_fraction < eager.checkpoint_fraction
    ckpt, none = spec.activation_gib_compiled
    share = compiled.checkpoint_fraction
    assert compiled.parts["activations"] == pytest.approx(share * ckpt + (1 - share) * none)


def test_fp8_storage_under_compile_is_planned_with_every_block_checkpointed(flux_sizes, monkeypatch):
    """fp8 storage + compile without CUDA graphs runs in lorakit's wrapped layout, where a block left out of
    checkpointing keeps upcast weights: the budget then plans fp8 storage only with full checkpointing (and swap
    when that does not fit), while fp8 compute may leave blocks out (or, with room, use selective recomputation)."""
    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family

    spec = get_family("flux1").SPEC
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, *a, **k: flux_sizes))

    def planned(vram_gb=24, **memory):
        cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"},
                                      "data": {"dir": "."}, "memory": {"vram_gb": vram_gb, **memory}})
        return budget.apply_budget(cfg, spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lambda _: None)

    storage, compute, eager = planned(compile=True), planned(20, compile=True, fp8_compute=True), planned()
    assert storage.fp8_base and storage.checkpoint_fraction == 1.0 and storage.gradient_checkpointing
    # a fraction the user set is a constraint: fp8 storage under compile cannot keep it, so that setting is not
    # planned (never silently changed to 1), and a budget only it would fit says which key was fixed
    from lorakit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"you fixed memory.checkpoint_fraction = 0.5"):
        planned(compile=True, checkpoint_fraction=0.5)
    kept = planned(48, compile=True, checkpoint_fraction=0.5)
    assert kept.checkpoint_fraction == 0.5 and not kept.fp8_base and kept.applied.memory.checkpoint_fraction == 0.5
    assert compute.fp8_base and compute.checkpoint_fraction < 1.0
    assert eager.fp8_base and eager.checkpoint_fraction < 1.0  # eager fp8 layers save only the fp8 weight


def test_the_budget_turns_fp8_compute_on_under_compile_where_the_gpu_has_it(sdxl_sizes, monkeypatch):
    """memory.fp8_compute unset: when vram_gb picks fp8 storage under compile, with CUDA graphs (SDXL at 8 GiB) or
    without (at 6 GiB), the float8 matmuls come on, measured faster at about the same memory, if the device passes
    fp8.check_compute; an explicit false, a CPU run, a GPU without them, or no compile leave them off."""
    from lorakit.config.load import load_config
    from lorakit.errors import ConfigError
    from lorakit.models.registry import get_family
    from lorakit.train import fp8

    spec = get_family("sdxl").SPEC
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, *a, **k: sdxl_sizes))
    have = {"ok": True}

    def check(device):
        if not have["ok"]:
            raise ConfigError("memory.fp8_compute: NVIDIA GeForce RTX 3090 has no float8 tensor cores")

    monkeypatch.setattr(fp8, "check_compute", check)
    cuda = torch.device("cuda")

    def chosen(device=cuda, vram_gb=8, **memory):
        memory = {"compile": True, "cuda_graphs": True, **memory}
        cfg = load_config(None, data={"model": {"family": "sdxl", "checkpoint": "s.safetensors"}, "data": {"dir": "."},
                                      "memory": {"vram_gb": vram_gb, **memory}})
        lines: list[str] = []
        plan = budget.apply_budget(cfg, spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lines.append, device=device)
        cfg = plan.applied
        assert plan.fp8_base
        return cfg.memory.fp8_compute, lines

    on, lines = chosen()
    assert on is True and any("fp8_compute = true" in line for line in lines)
    on, lines = chosen(vram_gb=6, cuda_graphs=False)  # compile without CUDA graphs: on too
    assert on is True and any("fp8_compute = true" in line for line in lines)
    assert chosen(fp8_compute=False)[0] is False
    assert chosen(vram_gb=6, cuda_graphs=False, fp8_compute=False)[0] is False
    assert chosen(device=torch.device("cpu"))[0] is False
    have["ok"] = False
    off, lines = chosen()
    assert off is False and any("RTX 3090 has no float8 tensor cores" in line for line in lines)
    have["ok"] = True
    off, lines = chosen(vram_gb=6, compile=False, cuda_graphs=False)
    assert off is None and not any("fp8_compute" in line for line in lines)  # no compile: left off


def test_unset_fp8_compute_lets_the_budget_plan_partial_checkpointing(flux_sizes, monkeypatch):
    """FLUX.1-dev, vram_gb = 26 under compile without CUDA graphs: where float8 matmuls are available the budget plans
    fp8 compute with only some blocks checkpointed (faster than checkpointing all of them; measured at fraction 0.6:
    0.467 s/step at 25.7 GiB vs 0.519 at 14.6, RESULTS.md round 5); with fp8_compute = false it plans fp8 storage with
    every block checkpointed (a block left out would keep bf16 upcasts of its weights)."""
    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family
    from lorakit.train import fp8

    spec = get_family("flux1").SPEC
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, *a, **k: flux_sizes))
    monkeypatch.setattr(fp8, "check_compute", lambda device: None)

    def chosen(vram_gb=26, **memory):
        cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                      "memory": {"vram_gb": vram_gb, "compile": True, **memory}})
        plan = budget.apply_budget(cfg, spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lambda line: None,
                                   device=torch.device("cuda"))
        cfg = plan.applied
        return plan, cfg.memory

    plan, mem = chosen(vram_gb=20)
    assert plan.fp8_base and mem.fp8_compute is True and 0.3 < mem.checkpoint_fraction < 1.0
    assert plan.estimate_gib <= 20 and mem.activation_budget is None
    plan, mem = chosen(fp8_compute=False)
    assert plan.fp8_base and mem.fp8_compute is False and mem.checkpoint_fraction == 1.0
    plan, mem = chosen(vram_gb=12)  # swapped blocks: fp8 storage (measured faster there than fp8 compute)
    assert plan.blocks_to_swap > 0 and mem.fp8_compute is False and mem.checkpoint_fraction == 1.0


def test_the_budget_plans_selective_recomputation_where_it_was_measured_fastest(flux_sizes, monkeypatch):
    """FLUX.1-dev under compile with fp8 compute: with room for them, vram_gb picks memory.activation_budget (no block
    checkpointing; the compiler keeps that share of each block's activations) before partial checkpointing, the
    largest measured budget that fits (H200: 0.35 → 0.416 s/step at 24.1 GiB, against 0.50 s for the partial
    checkpointing vram_gb = 26 chose before; RESULTS.md); the activations part is that setting's measured rate
    times the images. Not with CUDA graphs, fp8 storage only, a checkpoint_fraction the user set, or a bigger batch
    that does not fit it."""
    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family
    from lorakit.train import fp8

    spec = get_family("flux1").SPEC
    rates = dict(spec.activation_budget_gib)
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, *a, **k: flux_sizes))
    monkeypatch.setattr(fp8, "check_compute", lambda device: None)

    def chosen(vram_gb, batch=1, **memory):
        cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                      "training": {"batch_size": batch},
                                      "memory": {"vram_gb": vram_gb, "compile": True, **memory}})
        lines: list[str] = []
        plan = budget.apply_budget(cfg, spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lines.append,
                                   device=torch.device("cuda"))
        cfg = plan.applied
        return plan, cfg, lines

    plan, cfg, lines = chosen(26.5)  # 0.35: 24.9 GiB + budget.MARGIN's 1.2 (26 fit it before the margin; 27 fits bf16)
    assert (cfg.memory.activation_budget, cfg.memory.gradient_checkpointing, cfg.memory.fp8_base,
            cfg.memory.fp8_compute, cfg.memory.blocks_to_swap) == (0.35, False, True, True, 0)
    assert plan.parts["activations"] == pytest.approx(rates[0.35]) and plan.needs_gib <= 26.5
    assert lines[0].startswith("vram_gb = 26.5: gradient_checkpointing = false, activation_budget = 0.35, fp8_base = true")
    plan, cfg, _ = chosen(24)  # 0.35 does not fit: the next measured setting
    assert cfg.memory.activation_budget == 0.25 and plan.estimate_gib <= 24
    assert plan.estimate_gib - plan.parts["activations"] + rates[0.35] > 24
    plan, cfg, _ = chosen(20)  # neither fits: partial block checkpointing, as before
    assert cfg.memory.activation_budget is None and cfg.memory.gradient_checkpointing and plan.checkpoint_fraction < 1
    for memory in ({"fp8_compute": False}, {"checkpoint_fraction": 0.5}, {"cuda_graphs": True}):
        _, cfg, _ = chosen(26.5, **memory)
        assert cfg.memory.activation_budget is None and cfg.memory.gradient_checkpointing, memory
    plan, cfg, _ = chosen(26.5, batch=2)  # twice the activations: 0.35 and 0.25 no longer fit
    assert cfg.memory.activation_budget is None and plan.needs_gib <= 26.5


def test_modulation_on_cpu_is_planned_before_fp8_storage(flux_host_sizes):
    """FLUX.1-dev: with the modulation Linears offered (ModelSpec.host_linears), a budget that bf16 fits only without
    them gets bf16 + modulation_on_cpu instead of fp8 storage; one that needs fp8 either way gets fp8; one that fits
    bf16 as it is does not move anything to the host."""
    gib = 2**30
    # FLUX.1-dev's modulation Linears: 19 double blocks x 2 and 38 single blocks, 3072 -> 6 x 3072 / 3 x 3072, bf16
    expected = 2 * (19 * 2 * (3072 * 18432 + 18432) + 38 * (3072 * 9216 + 9216))
    assert flux_host_sizes.host_linears == expected and abs(expected / gib - 6.01) < 0.01

    def host_plan(vram):
        spec = get_family_spec("flux1")
        return budget.plan_memory(vram, flux_host_sizes, activation_gib=spec.activation_gib, images=1,
                                  optimizer="adamw", batch_size=1, can_swap=True, lookahead=swap.LOOKAHEAD,
                                  host_linears=True)

    p24 = host_plan(24)
    assert p24.modulation_on_cpu and not p24.fp8_base and p24.blocks_to_swap == 0 and p24.estimate_gib <= 24
    bf16 = flux_host_sizes.outside[0] + sum(b[0] for b in flux_host_sizes.blocks)
    assert p24.parts["weights"] == pytest.approx((bf16 - expected) / gib)
    assert "modulation_on_cpu = true" in p24.describe()
    assert plan(flux_host_sizes, 24, "flux1").fp8_base  # not offered: fp8 storage, as before
    p16 = host_plan(16)  # 16.2 GiB of bf16 weights even without the modulations: fp8 storage
    assert p16.fp8_base and not p16.modulation_on_cpu
    p48 = host_plan(48)  # bf16 fits with the weights where they are
    assert not p48.fp8_base and not p48.modulation_on_cpu


def get_family_spec(family: str):
    from lorakit.models.registry import get_family

    return get_family(family).SPEC


def test_apply_budget_offers_modulation_on_cpu_only_where_fp8_would_be_storage(flux_host_sizes, flux_sizes,
                                                                                  monkeypatch):
    """vram_gb = 24 on FLUX.1-dev: modulation_on_cpu is chosen and written into the config when it is unset and the
    fp8 settings would be fp8 storage; an explicit false, fp8 compute or CLIP-L training keep fp8 (CUDA graphs only
    where torch cannot keep the modulation op out of the graphs)."""
    from lorakit.config.load import load_config

    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, model, blocks, trainable, host=(), **k: (
        flux_host_sizes if host else flux_sizes)))

    def apply(memory=None, network=None):
        cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"},
                                      "data": {"dir": "."}, "network": network or {},
                                      "memory": {"vram_gb": 24, **(memory or {})}})
        lines: list[str] = []
        cfg = budget.apply_budget(cfg, get_family_spec("flux1"), nn.Linear(1, 1), [], [], swap.LOOKAHEAD,
                                  log=lines.append).applied
        return cfg, lines

    cfg, lines = apply()
    assert cfg.memory.modulation_on_cpu is True and cfg.memory.fp8_base is False and cfg.memory.blocks_to_swap == 0
    assert any("modulation_on_cpu = true" in line for line in lines), lines
    for memory, network in (({"modulation_on_cpu": False}, None), ({"fp8_compute": True}, None),
                            (None, {"train_text_encoder": True})):
        cfg, lines = apply(memory, network)
        assert not cfg.memory.modulation_on_cpu and cfg.memory.fp8_base, (memory, network, lines)
    # CUDA graphs replay the blocks around the modulation op (modulation.GRAPH_SAFE): offered there too, unless this
    # torch could not keep the op out of the graphs
    cfg, lines = apply({"compile": True, "cuda_graphs": True})
    assert cfg.memory.modulation_on_cpu is True and cfg.memory.fp8_base is False, lines
    from lorakit.models.flux1 import modulation

    monkeypatch.setattr(modulation, "GRAPH_SAFE", False)
    cfg, lines = apply({"compile": True, "cuda_graphs": True})
    assert not cfg.memory.modulation_on_cpu and cfg.memory.fp8_base, lines


def test_bf16_with_the_modulations_on_the_host_plans_selective_recomputation_under_compile(flux_host_sizes,
                                                                                           flux_sizes, monkeypatch):
    """Under compile (no fp8 compute), bf16 + modulation_on_cpu + activation_budget (measured:
    ModelSpec.host_activation_budget_gib) comes right after bf16 without checkpointing: a budget that holds the 0.15
    setting's estimate gets 0.15, one just below it 0.12, one just below that neither (block checkpointing with the
    modulations on the host); without compile, or with modulation_on_cpu = false, no activation budget is planned.
    With CUDA graphs the same settings are planned, with the graph pool counted on top."""
    from lorakit.config.load import load_config

    spec = get_family_spec("flux1")
    assert [amb for amb, _ in spec.host_activation_budget_gib] == [0.15, 0.12]
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, model, blocks, trainable, host=(), **k: (
        flux_host_sizes if host else flux_sizes)))

    def apply(vram, **memory):
        cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"},
                                      "data": {"dir": "."}, "memory": {"vram_gb": vram, "compile": True, **memory}})
        plan = budget.apply_budget(cfg, spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lambda _: None)
        cfg = plan.applied
        return plan, cfg

    weights = (flux_host_sizes.outside[0] + sum(b[0] for b in flux_host_sizes.blocks)
               - flux_host_sizes.host_linears) / 2**30
    optimizer = apply(100)[1].optimizer.name  # the default one (its state bytes per parameter differ)
    lora = flux_host_sizes.lora_params * (4 + 4 + budget.STATE_BYTES[optimizer]) / 2**30  # fp32 weights, gradients
    peak = {amb: weights + lora + gib + budget.RESERVE_GIB for amb, gib in spec.host_activation_budget_gib}
    # what must fit: the peak and budget.MARGIN of the activations (and of the CUDA graph pool) kept free
    need = {amb: peak[amb] + budget.MARGIN * gib for amb, gib in spec.host_activation_budget_gib}
    assert need[0.15] > need[0.12] > weights + lora + spec.activation_gib_compiled[0] * (1 + budget.MARGIN) + \
        budget.RESERVE_GIB
    for vram, amb in ((need[0.15] + 0.01, 0.15), (need[0.15] - 0.01, 0.12)):
        plan, cfg = apply(vram)
        assert (cfg.memory.activation_budget, cfg.memory.modulation_on_cpu) == (amb, True), vram
        assert not cfg.memory.gradient_checkpointing and not cfg.memory.fp8_base
        assert plan.parts["weights"] == pytest.approx(weights)
        assert plan.parts["activations"] == pytest.approx(dict(spec.host_activation_budget_gib)[amb])
        assert plan.estimate_gib == pytest.approx(peak[amb])
    plan, cfg = apply(need[0.12] - 0.01)
    assert cfg.memory.activation_budget is None and cfg.memory.modulation_on_cpu and cfg.memory.gradient_checkpointing
    plan, cfg = apply(need[0.15] + 0.01, modulation_on_cpu=False)
    assert cfg.memory.activation_budget is None and not cfg.memory.modulation_on_cpu
    plan, cfg = apply(need[0.15] + 0.01, compile=False)
    assert cfg.memory.activation_budget is None
    # CUDA graphs: the pool (GRAPH_POOL per GiB of fully checkpointed activations) comes on top of the same rates
    pool = budget.GRAPH_POOL * spec.activation_gib_compiled[0]
    with_pool = need[0.12] + pool * (1 + budget.MARGIN)
    plan, cfg = apply(with_pool + 0.01, cuda_graphs=True)
    assert (cfg.memory.activation_budget, cfg.memory.modulation_on_cpu) == (0.12, True)
    assert plan.parts["CUDA graph pool"] == pytest.approx(pool)
    assert plan.estimate_gib == pytest.approx(peak[0.12] + pool)
    plan, cfg = apply(with_pool - 0.01, cuda_graphs=True)
    assert cfg.memory.activation_budget is None


def test_hand_set_knobs_are_constraints_the_plan_keeps(flux_sizes, monkeypatch):
    """With memory.vram_gb, every knob in budget.CONSTRAINTS the user set by hand is kept by the plan (one rule, stated
    in the schema's help): gradient_checkpointing, fp8_base, blocks_to_swap, checkpoint_fraction and
    activation_budget; a preset's value is not a constraint; nothing fits → one line naming the fixed keys."""
    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family

    spec = get_family("flux1").SPEC
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, *a, **k: flux_sizes))

    def plan(vram_gb, **memory):
        cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"},
                                      "data": {"dir": "."}, "memory": {"vram_gb": vram_gb, "modulation_on_cpu": False,
                                                                       **memory}})
        return budget.apply_budget(cfg, spec, nn.Linear(1, 1), [], [], swap.LOOKAHEAD, log=lambda _: None)

    free = plan(40)
    assert free.gradient_checkpointing and not free.fp8_base  # 40 GiB: bf16 with some checkpointing
    bf16_full = plan(40, fp8_base=True)
    assert bf16_full.fp8_base and bf16_full.applied.memory.fp8_base
    swapped = plan(40, blocks_to_swap=5)
    assert swapped.blocks_to_swap == 5 and swapped.fp8_base and swapped.applied.memory.blocks_to_swap == 5
    half = plan(60, checkpoint_fraction=0.5)
    assert half.checkpoint_fraction == 0.5 and half.gradient_checkpointing
    with pytest.raises(ConfigError, match=r"you fixed memory.gradient_checkpointing = false"):
        plan(16, gradient_checkpointing=False)  # no setting without checkpointing fits 16 GiB
    assert not plan(80, gradient_checkpointing=False).gradient_checkpointing
