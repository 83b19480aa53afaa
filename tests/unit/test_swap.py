"""memory.blocks_to_swap (lorakit/train/swap.py): the schedule, the packing, and that training through the
swapper gives exactly the plain checkpointed run's losses and LoRA gradients. On the CPU the swapper copies
instead of streaming; the GPU path is measured by benchmarks/bench.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ConfigError
from lorakit.lora.inject import inject_lora
from lorakit.train import fp8, speed, swap
from tests.unit.tiny_inputs import flux_forward_kwargs


def flux_with_blocks(double: int = 2, single: int = 4) -> tuple[nn.Module, dict]:
    from diffusers import FluxTransformer2DModel

    from lorakit.models.flux1.load import TINY_TRANSFORMER

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tr = FluxTransformer2DModel(**{**TINY_TRANSFORMER, "num_layers": double, "num_single_layers": single},
                                    guidance_embeds=True).eval().requires_grad_(False)
    kwargs = flux_forward_kwargs(tr.config, images=16, texts=5)
    return tr, kwargs


def with_lora(model: nn.Module) -> list[torch.nn.Parameter]:
    targets = {n: 4 for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and ("transformer_blocks" in n) and ("attn" in n or "proj" in n)}
    params = inject_lora(model, targets, 4.0, 0.0, seed=1)
    with torch.no_grad():  # non-zero ups, so that every LoRA gradient (down included) is non-trivial
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return params


# ---------------------------------------------------------------------------------------------- schedule


def test_spread_picks_distinct_blocks_after_the_first():
    for n, k in [(57, 1), (57, 18), (57, 40), (57, 56), (6, 3), (4, 3)]:
        picked = swap.spread(n, k)
        assert len(picked) == len(set(picked)) == k, (n, k, picked)
        assert all(1 <= i < n for i in picked)
    assert swap.spread(57, 0) == []
    gaps = [b - a for a, b in zip(swap.spread(57, 19), swap.spread(57, 19)[1:])]
    assert set(gaps) <= {2, 3, 4}  # evenly spread, not bunched at the end
    with pytest.raises(ConfigError, match="memory.blocks_to_swap"):
        swap.spread(57, 57)


def test_plan_follows_forward_then_backward_then_next_forward():
    blocks = [nn.Linear(2, 2) for _ in range(6)]
    s = swap.BlockSwapper(blocks, [2, 4], torch.device("cpu"), lookahead=1)
    train, infer = 12, 6
    # forward of block 0: next swapped uses are block 2 (pos 2) then block 4 (pos 4)
    assert s.plan(0, train) == (2, 4)
    # forward of block 3: block 4 (pos 4), then backward reaches 4 again (pos 7) and then 2 (pos 9)
    assert s.plan(3, train) == (4, 2)
    # backward of block 3 (pos 8): block 2 (pos 9), then the next step's forward: 2 again, then 4
    assert s.plan(8, train) == (2, 4)
    # inference wraps forward to forward: after block 5 comes block 0 … 2
    assert s.plan(5, infer) == (2, 4)
    s0 = swap.BlockSwapper(blocks, [1, 2, 4], torch.device("cpu"), lookahead=0)
    assert s0.plan(1, train) == (1,) and s0.plan(3, train) == (4,)


def test_one_training_step_enters_blocks_forward_then_backward():
    """The recomputation in backward is told apart from the forward (positions 2n-1-i)."""
    model, kwargs = flux_with_blocks(2, 3)
    params = with_lora(model)
    blocks = speed.repeated_blocks(model)
    assert len(blocks) == 5 and blocks[0] is model.transformer_blocks[0] and blocks[2] is model.single_transformer_blocks[0]
    swapper = swap.place_denoiser(model, blocks, torch.device("cpu"), blocks_to_swap=2, log=lambda _: None)
    seen: list[tuple[int, bool]] = []
    real_enter = swapper.enter

    def enter(i: int) -> None:
        seen.append((i, torch._C._current_graph_task_id() != -1))
        real_enter(i)

    swapper.enter = enter
    speed.prepare_denoiser(model, type("M", (), {"gradient_checkpointing": True, "compile": False})(),
                           torch.device("cpu"), log=lambda _: None, swapper=swapper)
    model(**kwargs)[0].square().mean().backward()
    assert seen == [(i, False) for i in range(5)] + [(i, True) for i in reversed(range(5))]
    assert all(p.grad is not None for p in params)


# ---------------------------------------------------------------------------------------------- results


def run_steps(model: nn.Module, kwargs: dict, params: list, steps: int = 3) -> tuple[list[float], list]:
    target = torch.randn(kwargs["hidden_states"].shape, generator=torch.Generator().manual_seed(9))
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses, grads = [], []
    for _ in range(steps):
        loss = F.mse_loss(model(**kwargs)[0], target)
        loss.backward()
        grads.append([p.grad.clone() for p in params])
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, grads


def expected_loads(swapped: list[int], n_blocks: int, steps: int) -> int:
    """Loads with lookahead 0: one per change of block along the sequence of swapped-block uses
    (forward 0..n-1, backward n-1..0, per step)."""
    uses = [b for _ in range(steps) for b in list(range(n_blocks)) + list(reversed(range(n_blocks)))
            if b in swapped]
    return sum(1 for k, b in enumerate(uses) if k == 0 or uses[k - 1] != b)


@pytest.mark.parametrize("use_fp8,lookahead", [(False, 0), (True, 1)])
def test_swapped_training_equals_plain_checkpointed_training(use_fp8, lookahead):
    base, kwargs = flux_with_blocks(2, 4)
    runs = {}
    for n_swap in (0, 3):
        model = copy.deepcopy(base)
        params = with_lora(model)
        blocks = speed.repeated_blocks(model)
        swapper = swap.place_denoiser(model, blocks, torch.device("cpu"), fp8_base=use_fp8, blocks_to_swap=n_swap,
                                      lookahead=lookahead, log=lambda _: None)
        assert (swapper is None) == (n_swap == 0)
        memory = type("M", (), {"gradient_checkpointing": True, "compile": False})()
        speed.prepare_denoiser(model, memory, torch.device("cpu"), log=lambda _: None, swapper=swapper)
        runs[n_swap] = run_steps(model, kwargs, params)
        if swapper is not None:
            assert sorted(swapper.packs) == swap.spread(6, 3)
            assert swapper.max_resident <= 1 + lookahead
            if lookahead == 0:
                assert swapper.loads == expected_loads(swap.spread(6, 3), 6, 3) == 13
            if use_fp8:
                assert any(s.dtype == fp8.FP8 for p in swapper.packs.values() for s in p.slots)
    assert runs[3][0] == runs[0][0]  # bit-identical losses
    for ga, gb in zip(runs[3][1], runs[0][1]):
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))
    assert runs[3][0][-1] < runs[3][0][0]


def test_evicted_blocks_point_at_their_cpu_pack_and_lora_stays():
    model, kwargs = flux_with_blocks(2, 4)
    params = with_lora(model)
    blocks = speed.repeated_blocks(model)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    swapper = swap.place_denoiser(model, blocks, torch.device("cpu"), blocks_to_swap=3, lookahead=1,
                                  log=lambda _: None)
    speed.prepare_denoiser(model, type("M", (), {"gradient_checkpointing": True, "compile": False})(),
                           torch.device("cpu"), log=lambda _: None, swapper=swapper)
    # packed, not changed: every tensor keeps its value, and trainable LoRA parameters are not packed
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    packed = {id(s.module._parameters[s.name]) for p in swapper.packs.values() for s in p.slots if s.is_param}
    assert not packed & {id(p) for p in params}
    for i, pack in swapper.packs.items():
        host = pack.host.data_ptr()
        for slot in pack.slots:
            t = slot.module._parameters[slot.name] if slot.is_param else slot.module._buffers[slot.name]
            assert host <= t.data_ptr() < host + pack.nbytes
    with torch.no_grad():
        model(**kwargs)
    # after an inference pass, only the window of the next pass is resident; the rest point at their packs
    assert len(swapper.resident) <= 2
    for i, pack in swapper.packs.items():
        t = pack.slots[0].module._parameters[pack.slots[0].name]
        inside = pack.host.data_ptr() <= t.data_ptr() < pack.host.data_ptr() + pack.nbytes
        assert inside == (i not in swapper.active)
    swapper.evict_all()
    assert not swapper.resident and not swapper.active


def test_swap_settings_are_checked():
    from lorakit.config.load import load_config
    from lorakit.train import memory

    def cfg(**mem):  # memory.auto = false: the keys run as written, so the start-up check is the one that refuses
        return load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                       "memory": {"auto": False, **mem}})

    with pytest.raises(ConfigError, match="memory.blocks_to_swap: block swap streams"):
        memory.check_supported(cfg(blocks_to_swap=4), torch.device("cpu"))
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        memory.check_supported(cfg(blocks_to_swap=4, gradient_checkpointing=False), torch.device("cuda"))
    with pytest.raises(ConfigError, match="memory.cuda_graphs"):
        memory.check_supported(cfg(blocks_to_swap=4, compile=True, cuda_graphs=True), torch.device("cuda"))
    memory.check_supported(cfg(blocks_to_swap=4, compile=True), torch.device("cuda"))  # accepted
    with pytest.raises(ConfigError, match="blocks_to_swap"):
        load_config(None, data={"model": {"family": "sdxl", "checkpoint": "f.safetensors"}, "data": {"dir": "."}, "memory": {"blocks_to_swap": 2}})


# ---------------------------------------------------------------------------------------------- selective


def counting_checkpoint(monkeypatch) -> list[int]:
    import torch.utils.checkpoint as tuc

    calls: list[int] = []
    real = tuc.checkpoint

    def counted(fn, *args, **kwargs):
        calls.append(1)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(tuc, "checkpoint", counted)
    return calls


@pytest.mark.parametrize("layout", ["diffusers", "wrapped", "compiled-inside"])
def test_checkpoint_fraction_recomputes_only_the_chosen_blocks_with_the_same_gradients(layout, monkeypatch):
    """memory.checkpoint_fraction = 0.5 on 6 blocks: 3 are checkpointed (spread evenly), 3 keep their activations;
    losses and LoRA gradients equal the fully checkpointed run (recomputation is exact on the CPU). In the
    swap layout, swapped blocks are always checkpointed."""
    import torch._dynamo

    base, kwargs = flux_with_blocks(2, 4)
    results = {}
    for fraction in (1.0, 0.5):
        torch._dynamo.reset()
        model = copy.deepcopy(base)
        params = with_lora(model)
        memory = type("M", (), {"gradient_checkpointing": True, "compile": layout == "compiled-inside",
                                "checkpoint_fraction": fraction})()
        swapper = None
        if layout == "wrapped":
            swapper = swap.place_denoiser(model, speed.repeated_blocks(model), torch.device("cpu"), blocks_to_swap=2,
                                          log=lambda _: None)
        calls = counting_checkpoint(monkeypatch)
        report = speed.prepare_denoiser(model, memory, torch.device("cuda" if memory.compile else "cpu"),
                                        log=lambda _: None, swapper=swapper, cuda_graphs=False, backend="aot_eager")
        if layout == "compiled-inside":
            marked = [b for b in speed.repeated_blocks(model) if getattr(b, "_lorakit_checkpointed", False)]
            assert len(marked) == (6 if fraction == 1.0 else 3)
        results[fraction] = run_steps(model, kwargs, params, steps=2)
        if layout != "compiled-inside":  # traced checkpoints are not Python calls at run time
            blocks = speed.repeated_blocks(model)
            chosen = {i for i, b in enumerate(blocks) if fraction == 1.0 or id(b) in speed.checkpoint_selection(model, 0.5)}
            if swapper is not None:
                chosen |= set(swapper.packs)
            assert len(chosen) == (6 if fraction == 1.0 else 3 if layout == "diffusers" else len(chosen))
            assert len(calls) == 2 * len(chosen), (layout, fraction, len(calls))  # 2 steps
        if fraction < 1.0:
            assert report["checkpointed_blocks"] >= 3
    assert results[0.5][0] == pytest.approx(results[1.0][0], rel=1e-6)
    for ga, gb in zip(results[0.5][1], results[1.0][1]):
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(ga, gb))


def test_checkpoint_fraction_needs_checkpointing():
    from lorakit.config.load import load_config
    from lorakit.train import memory

    cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                  "memory": {"gradient_checkpointing": False, "checkpoint_fraction": 0.5}})
    with pytest.raises(ConfigError, match="memory.checkpoint_fraction: only has an effect"):
        memory.check_supported(cfg, torch.device("cpu"))
    with pytest.raises(ConfigError, match="checkpoint_fraction"):
        load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                "memory": {"checkpoint_fraction": 0.0}})
