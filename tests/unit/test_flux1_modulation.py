"""memory.modulation_on_cpu (lorakit/models/flux1/modulation.py): FLUX.1's modulation Linears leave the model and
their outputs come from the host; checked against the unchanged transformer, with LoRA on the modulation Linears
and the rest, outputs and LoRA gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.lora.inject import inject_lora
from lorakit.models.flux1.modulation import DOUBLE, SINGLE, HostModulation, HostModulations
from tests.unit.test_swap import flux_with_blocks


def modulation_paths(model: nn.Module) -> list[str]:
    return ([f"transformer_blocks.{i}.{p}" for i in range(len(model.transformer_blocks)) for p in DOUBLE]
            + [f"single_transformer_blocks.{i}.{p}" for i in range(len(model.single_transformer_blocks)) for p in SINGLE])


def lora_everywhere(model: nn.Module) -> list[nn.Parameter]:
    targets = {n: 4 for n, m in model.named_modules() if isinstance(m, nn.Linear) and "transformer_blocks" in n}
    params = inject_lora(model, targets, 4.0, 0.0, seed=1)
    with torch.no_grad():  # non-zero ups: the LoRA changes every output and every LoRA gets a gradient
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return params


def test_host_modulations_give_the_same_outputs_and_gradients_without_the_weights():
    plain, kwargs = flux_with_blocks(2, 3)
    paths = modulation_paths(plain)
    weights = sum(plain.get_submodule(p).weight.numel() + plain.get_submodule(p).bias.numel() for p in paths)
    host = copy.deepcopy(plain)
    params = {"plain": lora_everywhere(plain), "host": lora_everywhere(host)}
    before = sum(p.numel() for p in host.parameters())
    lines: list[str] = []
    mods = HostModulations.install(host, lines.append)
    assert sum(p.numel() for p in host.parameters()) == before - weights  # the weights left the model
    assert len(mods.modules) == len(paths) and all(isinstance(host.get_submodule(p).base_layer, HostModulation)
                                                   for p in paths)
    assert lines and lines[0].startswith(f"modulation_on_cpu: {len(paths)} modulation Linears")
    host.to(torch.float64)  # moving the model leaves the host weights where and as they are
    host.to(torch.float32)
    assert all(m.host["weight"].dtype == torch.float32 and m.host["weight"].device.type == "cpu" for m in mods.modules)

    results = {}
    for name, model in (("plain", plain), ("host", host)):
        if name == "host":
            mods.prepare(kwargs["timestep"], kwargs["guidance"], kwargs["pooled_projections"], torch.device("cpu"))
        out = model(**kwargs)[0]
        grads = torch.autograd.grad(out.square().mean(), params[name])
        results[name] = (out, grads)
    torch.testing.assert_close(results["host"][0], results["plain"][0], rtol=1e-5, atol=1e-6)
    for g_host, g_plain in zip(results["host"][1], results["plain"][1]):
        torch.testing.assert_close(g_host, g_plain, rtol=1e-4, atol=1e-7)
    assert all(g.abs().sum() > 0 for g in results["host"][1])


def test_a_call_without_prepared_outputs_is_refused():
    model, kwargs = flux_with_blocks(1, 1)
    mods = HostModulations.install(model, lambda _: None)
    with pytest.raises(RuntimeError, match="modulation_on_cpu: transformer_blocks.0.norm1.linear was called without"):
        model(**kwargs)
    mods.prepare(kwargs["timestep"][:1], kwargs["guidance"][:1], kwargs["pooled_projections"][:1], torch.device("cpu"))
    with pytest.raises(RuntimeError, match="for a batch of 2"):  # prepared for another batch size
        model(**kwargs)


def test_calls_in_a_row_checkpointed_and_compiled_each_get_their_own_modulations():
    """The worker pipeline across calls: two calls with different timesteps (the host buffers alternate) each match
    the unchanged model, with every block checkpointed (the recomputation in backward reads the buffer again, no
    second copy) and with every block compiled (the custom op runs inside the compiled blocks, and the blocks of a
    class share one graph: the stand-in's key is a tensor input, not a constant)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from lorakit.train import speed

    plain, kwargs = flux_with_blocks(2, 3)
    host = copy.deepcopy(plain)
    params = {"plain": lora_everywhere(plain), "host": lora_everywhere(host)}
    mods = HostModulations.install(host, lambda _: None)
    assert [len(g) for g in mods.groups] == [2, 2, 1, 1, 1]  # per block, in the order the blocks run
    copies = []
    original = mods.ensure

    def counting(group: int) -> None:
        if not mods._copied[group]:
            copies.append(group)
        original(group)

    mods.ensure = counting  # type: ignore[method-assign]
    calls = [dict(kwargs, timestep=kwargs["timestep"] * f, guidance=kwargs["guidance"] + f) for f in (1.0, 0.3)]

    def run(model: nn.Module, name: str, call: dict) -> tuple:
        if name == "host":
            mods.prepare(call["timestep"], call["guidance"], call["pooled_projections"], torch.device("cpu"))
        out = model(**call)[0]
        return (out, *torch.autograd.grad(out.square().mean(), params[name]))

    for setup in ("checkpointed", "compiled"):
        for model in (plain, host):
            for block in [*model.transformer_blocks, *model.single_transformer_blocks]:
                if setup == "checkpointed":
                    speed.checkpoint_forward(block)
                else:
                    block.compile(backend="aot_eager", dynamic=False)
        torch._dynamo.reset()
        counters.clear()
        copies.clear()
        graphs = []
        for call in calls:
            want = run(plain, "plain", call)
            graphs.append(counters["stats"]["unique_graphs"])
            got = run(host, "host", call)
            graphs.append(counters["stats"]["unique_graphs"])
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
        assert copies == [0, 1, 2, 3, 4] * 2  # each block's outputs copied once per call, in block order
        if setup == "compiled":  # the stand-ins add no graph per block: as many graphs as the plain model's, once
            assert graphs[0] > 0 and graphs[1] == 2 * graphs[0] and graphs[3] == graphs[1], graphs


def test_each_block_copies_one_contiguous_slab_and_a_call_without_prepare_is_refused():
    """At batch 2 each block's outputs are one contiguous [B, width] slab on both sides (one page-locked transfer per
    block, not a strided copy staged through pageable memory); a second transformer call that nobody prepared is an
    error rather than a silent reuse of the previous call's modulations."""
    model, kwargs = flux_with_blocks(1, 2)
    mods = HostModulations.install(model, lambda _: None)
    mods.prepare(kwargs["timestep"], kwargs["guidance"], kwargs["pooled_projections"], torch.device("cpu"))
    assert kwargs["timestep"].shape[0] == 2
    for g in range(len(mods.groups)):
        assert mods.block(mods.out, g).is_contiguous() and mods.block(mods._host[mods._turn], g).is_contiguous()
        assert mods.block(mods.out, g).numel() == 2 * sum(m.out_features for m in mods.groups[g])
        assert all(mods.slice(mods.out, m).is_contiguous() and mods.slice(mods.out, m).shape == (2, m.out_features)
                   for m in mods.groups[g])
    with torch.no_grad():
        model(**kwargs)
        with pytest.raises(RuntimeError, match="modulation_on_cpu: transformer_blocks.0.norm1.linear ran again "
                                               "outside backward"):
            model(**kwargs)
        mods.prepare(kwargs["timestep"], kwargs["guidance"], kwargs["pooled_projections"], torch.device("cpu"))
        model(**kwargs)  # prepared again: fine


def test_streamed_linears_are_applied_on_the_device_side_and_match_the_plain_model():
    """Streamed Linears (on a GPU: all of them, STREAMED) are applied from weights copied to the device instead of
    by the host worker, which never touches them. A split (here the double blocks' image-stream Linears streamed, the
    rest on the host) keeps each block's host outputs one contiguous range, its streamed ones after it. Forced on the
    CPU (``stream_anywhere``), at batch 2, against the unchanged model."""
    from lorakit.models.flux1 import modulation

    plain, kwargs = flux_with_blocks(2, 2)
    host = copy.deepcopy(plain)
    params = {"plain": lora_everywhere(plain), "host": lora_everywhere(host)}
    installed = HostModulations.install(host, lambda _: None)
    mods = HostModulations(installed.modules, installed.embed, streamed=("norm1.linear",), stream_anywhere=True)
    assert modulation.STREAMED == DOUBLE + SINGLE
    worker_saw: list[str] = []
    original = torch.nn.functional.linear

    def spying(x, weight, bias=None):
        worker_saw.extend(m.name for m in mods.modules if m.host["weight"] is weight)
        return original(x, weight, bias)

    modulation.F.linear = spying  # the worker's calls only: the model's own Linears are nn.Linear modules
    try:
        mods.prepare(kwargs["timestep"], kwargs["guidance"], kwargs["pooled_projections"], torch.device("cpu"))
        mods.wait()
    finally:
        modulation.F.linear = original
    streamed = [m.name for m in mods.modules if m.streamed]
    assert streamed == ["transformer_blocks.0.norm1.linear", "transformer_blocks.1.norm1.linear"]
    assert sorted(worker_saw) == sorted(m.name for m in mods.modules if not m.streamed)
    for g, members in enumerate(mods.groups):
        a, b = mods.host_spans[g]
        assert b - a == sum(m.out_features for m in members if not m.streamed)
        assert all(m.columns[0] >= b for m in members if m.streamed)  # after the host range
    results = {}
    for name, model in (("plain", plain), ("host", host)):
        out = model(**kwargs)[0]
        results[name] = (out, *torch.autograd.grad(out.square().mean(), params[name]))
    for got, want in zip(results["host"], results["plain"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_failure_on_the_host_is_raised_where_the_block_asks():
    model, kwargs = flux_with_blocks(1, 1)
    mods = HostModulations.install(model, lambda _: None)
    mods.modules[-1].host["weight"] = mods.modules[-1].host["weight"][:, :-1]  # a wrong shape for the worker
    mods.prepare(kwargs["timestep"], kwargs["guidance"], kwargs["pooled_projections"], torch.device("cpu"))
    with pytest.raises(RuntimeError, match="modulation_on_cpu: computing the modulations on the host failed"):
        model(**kwargs)
    with pytest.raises(RuntimeError, match="modulation_on_cpu: computing the modulations on the host failed"):
        mods.prepare(kwargs["timestep"], kwargs["guidance"], kwargs["pooled_projections"], torch.device("cpu"))


def test_modulation_on_cpu_settings_are_checked(monkeypatch):
    from lorakit.config.load import load_config
    from lorakit.train import memory

    from lorakit.models.flux1 import Adapter

    def check(c, device):  # the shared checks, then FLUX.1's own (the loop runs both before loading)
        memory.check_supported(c, device)
        Adapter.check_config(c, device)

    def cfg(family="flux1", network=None, **mem):
        return load_config(None, data={"model": {"family": family, "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                       "network": network or {}, "memory": {"modulation_on_cpu": True, **mem}})

    check(cfg(), torch.device("cpu"))  # accepted
    with pytest.raises(ConfigError, match="memory.modulation_on_cpu: not with memory.blocks_to_swap"):
        check(cfg(blocks_to_swap=4), torch.device("cuda"))
    # with CUDA graphs: accepted where the modulation op can stay out of the graphs, an error naming torch elsewhere
    from lorakit.models.flux1 import modulation

    assert modulation.GRAPH_SAFE  # the pinned torch has the tag
    check(cfg(compile=True, cuda_graphs=True), torch.device("cuda"))
    assert torch.Tag.cudagraph_unsafe in torch.ops.lorakit.host_modulation.default.tags
    monkeypatch.setattr(modulation, "GRAPH_SAFE", False)
    with pytest.raises(ConfigError, match=r"memory.modulation_on_cpu: this PyTorch \(.*\) cannot keep the modulation op "
                                          "out of CUDA graphs"):
        check(cfg(compile=True, cuda_graphs=True), torch.device("cuda"))
    with pytest.raises(ConfigError, match="memory.modulation_on_cpu: .*network.train_text_encoder"):
        check(cfg(network={"train_text_encoder": True}), torch.device("cpu"))
    with pytest.raises(ConfigError, match="modulation_on_cpu"):
        cfg(family="sdxl")
    # false (never let vram_gb pick it) is harmless on another family, as in a config shared between families
    assert load_config(None, data={"model": {"family": "sdxl", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                   "memory": {"modulation_on_cpu": False}}).memory.modulation_on_cpu is False


def test_the_budget_never_plans_block_swap_with_modulation_on_cpu(monkeypatch):
    """vram_gb with modulation_on_cpu: the two are not combined, so a budget that would need swapped blocks is
    refused with the leanest unswapped setting's estimate instead of planning a swap the checks refuse."""
    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family
    from lorakit.train import budget, swap
    from tests.unit.test_budget import flux_sizes

    sizes = flux_sizes.__wrapped__()
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, *a, **k: sizes))

    def plan(**memory):
        cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                      "memory": {"vram_gb": 12, **memory}})
        return budget.apply_budget(cfg, get_family("flux1").SPEC, nn.Linear(1, 1), [], [], swap.LOOKAHEAD,
                                   log=lambda _: None)

    assert plan().blocks_to_swap > 0
    with pytest.raises(ConfigError, match=r"memory.vram_gb = 12: even the leanest setting .* 0 swapped blocks"):
        plan(modulation_on_cpu=True)
