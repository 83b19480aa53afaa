"""Speed features (lorakit.train.speed) against the plain eager path on a tiny FLUX transformer with LoRA.

torch.compile runs with the ``aot_eager`` backend here (dynamo tracing + AOT autograd, no code generation):
on a CPU without a C compiler that is the part of the compile path lorakit's code can get wrong (tracing
through peft's LoRA layers and the checkpoint wrapper, the eager fallback). The inductor backend itself is
exercised on the GPU by benchmarks/bench.py, which checks the loss against the eager rows.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ConfigError
from lorakit.lora.inject import inject_lora
from lorakit.train import memory, speed

diffusers = pytest.importorskip("diffusers")


def tiny_flux() -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """A 1+1-block FLUX transformer with rank-4 LoRA on its block Linears; LoRA weights non-zero."""
    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=8, guidance_embeds=False,
        axes_dims_rope=[4, 6, 6])
    targets = {n: 4 for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "transformer_blocks" in n}
    params = inject_lora(model, targets, 4.0, 0.0, seed=1)
    with torch.no_grad():
        for p in params:  # lora_B starts at 0: make both factors matter for the gradients
            p.normal_(0.0, 0.1)
    return model, params


def step(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> tuple[float, list[torch.Tensor]]:
    """One loss + backward on fixed inputs; returns the loss and the LoRA gradients."""
    g = torch.Generator().manual_seed(2)
    out = model(hidden_states=torch.randn(1, 16, 16, generator=g),
                encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                pooled_projections=torch.randn(1, 8, generator=g), timestep=torch.tensor([0.5]),
                img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), return_dict=False)[0]
    loss = out.float().pow(2).mean()
    loss.backward()
    grads = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return float(loss.detach()), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def reference() -> tuple[float, list[torch.Tensor]]:
    model, params = tiny_flux()
    return step(model, params)


def test_reference_gradients_are_not_trivial(reference):
    loss, grads = reference
    assert loss > 0 and all(g.abs().sum() > 0 for g in grads)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(reference):
    model, params = tiny_flux()
    assert speed.set_gradient_checkpointing(model, True, log=lambda s: None) is True
    assert model.is_gradient_checkpointing
    loss, grads = step(model, params)
    assert loss == pytest.approx(reference[0], rel=1e-6)
    assert max(rel(a, b) for a, b in zip(grads, reference[1])) < 1e-5
    assert speed.set_gradient_checkpointing(model, False, log=lambda s: None) is False
    assert not model.is_gradient_checkpointing


def test_regional_compile_with_checkpoint_inside_matches_eager(reference):
    import torch._dynamo

    torch._dynamo.reset()
    model, params = tiny_flux()
    n = speed.compile_regions(model, backend="aot_eager", checkpoint=True, log=lambda s: None)
    assert n == 2  # one double and one single block: FLUX's _repeated_blocks
    blocks = [m for m in model.modules() if type(m).__name__ in speed.region_names(model)]
    assert all(m._compiled_call_impl is not None and m._lorakit_checkpointed for m in blocks)
    for _ in range(2):  # the second call runs the cached graphs
        loss, grads = step(model, params)
        assert loss == pytest.approx(reference[0], rel=1e-5)
        assert max(rel(a, b) for a, b in zip(grads, reference[1])) < 1e-4
    with torch.no_grad():  # inference (sampling) still works: no checkpoint without gradients
        out = model(hidden_states=torch.randn(1, 16, 16), encoder_hidden_states=torch.randn(1, 8, 32),
                    pooled_projections=torch.randn(1, 8), timestep=torch.tensor([0.5]),
                    img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), return_dict=False)[0]
    assert torch.isfinite(out).all()
    assert speed.uncompile_regions(model) == 2
    assert all(m._compiled_call_impl is None for m in blocks)


def test_a_backend_that_fails_falls_back_to_eager(reference):
    import torch._dynamo

    torch._dynamo.reset()
    calls = []

    def broken_backend(gm, example_inputs):
        calls.append(1)
        raise RuntimeError("simulated compiler failure")

    model, params = tiny_flux()
    speed.compile_regions(model, backend=broken_backend, log=lambda s: None)
    loss, grads = step(model, params)
    assert calls, "the backend was never asked to compile: the test would prove nothing"
    assert loss == pytest.approx(reference[0], rel=1e-6)
    assert max(rel(a, b) for a, b in zip(grads, reference[1])) < 1e-5


def test_checkpoint_forward_is_idempotent_and_skipped_without_grad():
    lin = torch.nn.Linear(3, 3)
    speed.checkpoint_forward(lin)
    wrapped = lin.forward
    speed.checkpoint_forward(lin)
    assert lin.forward is wrapped
    x = torch.randn(2, 3, requires_grad=True)
    y = lin(x)
    assert y.grad_fn is not None and torch.allclose(y, torch.nn.functional.linear(x, lin.weight, lin.bias))
    with torch.no_grad():
        assert lin(x).grad_fn is None


def test_compile_refuses_models_without_known_blocks():
    with pytest.raises(ConfigError, match="memory.compile"):
        speed.compile_regions(torch.nn.Sequential(torch.nn.Linear(2, 2)), log=lambda s: None)
    with pytest.raises(ConfigError, match="memory.compile"):
        speed.compile_regions(torch.nn.Sequential(torch.nn.Linear(2, 2)), names=["NoSuchBlock"], log=lambda s: None)


def test_sdxl_regions_include_resnets():
    """The blocks compiled besides diffusers' ``_repeated_blocks`` come from the family's spec (SDXL: the resnets),
    never from a class name the engine knows."""
    from lorakit.models.registry import get_family

    unet = SimpleNamespace()
    assert speed.region_names(unet) == ()
    cls = type("UNet2DConditionModel", (), {"_repeated_blocks": ["BasicTransformerBlock"]})
    assert speed.region_names(cls()) == ("BasicTransformerBlock",)
    extra = get_family("sdxl").SPEC.compile_blocks
    assert speed.region_names(cls(), extra) == ("BasicTransformerBlock", "ResnetBlock2D")
    assert speed.region_names(cls(), ("BasicTransformerBlock",)) == ("BasicTransformerBlock",)  # no repeats


def cfg(**mem):
    base = dict(gradient_checkpointing=True, compile=False, fp8_base=False, fp8_compute=False, fused_backward=False,
                vram_gb=None, blocks_to_swap=0, cuda_graphs=False, fused_optimizer=False, checkpoint_fraction=1.0,
                activation_budget=None)
    base.update(mem)
    return SimpleNamespace(memory=SimpleNamespace(**base), training=SimpleNamespace(mixed_precision="bf16"),
                           optimizer=SimpleNamespace(name="adamw"), network=SimpleNamespace(type="lora"))


def test_prepare_denoiser_compile_needs_cuda():
    model, _ = tiny_flux()
    with pytest.raises(ConfigError, match="memory.compile"):
        speed.prepare_denoiser(model, cfg(compile=True).memory, torch.device("cpu"), log=lambda s: None)
    report = speed.prepare_denoiser(model, cfg().memory, torch.device("cpu"), log=lambda s: None)
    assert report == {"gradient_checkpointing": True, "compiled_blocks": 0, "scope": None, "cuda_graphs": False}
    with pytest.raises(ConfigError, match="compile scope"):
        speed.prepare_denoiser(model, cfg().memory, torch.device("cpu"), log=lambda s: None, scope="everything")


def test_memory_check_accepts_cuda_options_on_cuda_and_rejects_them_on_the_cpu():
    for key, value in (("compile", True), ("vram_gb", 12.0), ("blocks_to_swap", 4)):
        memory.check_supported(cfg(**{key: value}), torch.device("cuda"))  # no error
        with pytest.raises(ConfigError, match=f"memory.{key}"):
            memory.check_supported(cfg(**{key: value}), torch.device("cpu"))
    for extra in ({"fp8_base": True}, {"blocks_to_swap": 3}):  # with vram_gb: constraints the plan keeps
        memory.check_supported(cfg(vram_gb=12.0, **extra), torch.device("cuda"))
    # how the planned knobs combine is checked on the plan's config, not the loaded one (checkpointing is off there)
    memory.check_supported(cfg(vram_gb=12.0, blocks_to_swap=3, gradient_checkpointing=False), torch.device("cuda"))
    with pytest.raises(ConfigError, match="memory.blocks_to_swap: needs memory.gradient_checkpointing"):
        memory.check_supported(cfg(vram_gb=12.0, blocks_to_swap=3, gradient_checkpointing=False),
                               torch.device("cuda"), planned=True)


def test_whole_denoiser_compile_with_traced_checkpoints_matches_eager(reference):
    """scope="whole": one graph for the forward; diffusers' checkpoints are traced into it (no graph break)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, params = tiny_flux()
    # device "cuda" only passes the CUDA-only check: the model stays on the CPU, aot_eager generates no code
    report = speed.prepare_denoiser(model, cfg(compile=True).memory, torch.device("cuda"), log=lambda s: None,
                                    scope="whole", cuda_graphs=False, backend="aot_eager")
    assert report == {"gradient_checkpointing": True, "compiled_blocks": 1, "scope": "whole", "cuda_graphs": False}
    assert model._compiled_call_impl is not None and model.is_gradient_checkpointing
    for _ in range(2):
        loss, grads = step(model, params)
        assert loss == pytest.approx(reference[0], rel=1e-5)
        assert max(rel(a, b) for a, b in zip(grads, reference[1])) < 1e-4
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["graph_break"])
    assert speed.uncompile_regions(model) == 1


def test_mark_step_marks_cuda_graph_steps_only_when_they_are_on(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    monkeypatch.setattr(speed, "_cuda_graphs_active", False)
    speed.mark_step()
    assert calls == []
    monkeypatch.setattr(speed, "_cuda_graphs_active", True)
    speed.mark_step()
    assert calls == [1]


def test_compile_makes_room_for_every_bucket_shape(monkeypatch):
    """Each bucket shape compiles each block class again (SDXL's resnet block ~12 shapes per bucket): the dynamo
    recompile limit grows with the dataset's bucket count so no bucket silently falls back to eager, and the log
    says that each shape compiles (and records CUDA graphs) once."""
    import torch._dynamo

    monkeypatch.setattr(speed, "compile_regions", lambda model, *names, **kw: 3)
    with torch._dynamo.config.patch(recompile_limit=8):  # (monkeypatch cannot restore a config module's entry)
        model, _ = tiny_flux()
        lines: list[str] = []
        speed.prepare_denoiser(model, cfg(compile=True).memory, torch.device("cuda"), log=lines.append,
                               cuda_graphs=True, buckets=11)
        assert torch._dynamo.config.recompile_limit == speed.PER_BUCKET * 11 > speed.RECOMPILE_LIMIT
        assert any(line.startswith("compile: 11 bucket shapes; each compiles its blocks and records CUDA graphs once")
                   for line in lines)
        lines.clear()
        speed.prepare_denoiser(model, cfg(compile=True).memory, torch.device("cuda"), log=lines.append, buckets=1)
        assert not any("bucket shapes" in line for line in lines)


def test_prepare_denoiser_turns_cuda_graphs_on_only_with_compile(monkeypatch):
    seen = {}

    def fake_compile_regions(model, names=None, *, backend, mode, checkpoint, log, selected=None):
        seen.update(mode=mode, checkpoint=checkpoint)
        return 3

    monkeypatch.setattr(speed, "compile_regions", fake_compile_regions)
    model, _ = tiny_flux()
    report = speed.prepare_denoiser(model, cfg(compile=True).memory, torch.device("cuda"), log=lambda s: None,
                                    cuda_graphs=True)
    assert seen == {"mode": "reduce-overhead", "checkpoint": True} and report["cuda_graphs"] is True
    assert speed._cuda_graphs_active
    report = speed.prepare_denoiser(model, cfg().memory, torch.device("cpu"), log=lambda s: None, cuda_graphs=True)
    assert report["cuda_graphs"] is False and not speed._cuda_graphs_active


def test_fused_adamw_is_asked_for_only_where_it_exists():
    from lorakit.train.optim import build_optimizer

    p = torch.nn.Parameter(torch.zeros(3))
    for fused in (None, True, False):  # CPU parameters: never fused (torch has no fused CPU AdamW path here)
        opt = build_optimizer([{"params": [p]}], "adamw", 1e-3, 0.0, (0.9, 0.999), 1e-8, fused=fused)
        assert not opt.defaults["fused"]


def test_cuda_graphs_and_fused_optimizer_rules():
    with pytest.raises(ConfigError, match="memory.cuda_graphs: CUDA graphs replay the compiled blocks"):
        memory.check_supported(cfg(cuda_graphs=True), torch.device("cuda"))
    memory.check_supported(cfg(compile=True, cuda_graphs=True), torch.device("cuda"))
    with pytest.raises(ConfigError, match="memory.cuda_graphs: needs a CUDA GPU|memory.compile"):
        memory.check_supported(cfg(compile=True, cuda_graphs=True), torch.device("cpu"))
    memory.check_supported(cfg(fused_optimizer=True), torch.device("cuda"))
    with pytest.raises(ConfigError, match="memory.fused_optimizer"):
        memory.check_supported(cfg(fused_optimizer=True), torch.device("cpu"))


def test_fp8_under_compile_takes_the_outer_checkpoint_layout_unless_cuda_graphs(reference):
    """memory.fp8_base + compile: without CUDA graphs each compiled block runs inside lorakit's own checkpoint
    (what a compiled block saves then lives only while it runs) and gives the unquantised reference's loss and
    gradients to fp8 precision (aot_eager on the CPU: traced, no code generated); with CUDA graphs (GPU only)
    the checkpoint stays inside the compiled blocks and fp8 matmuls become opaque ops."""
    import torch._dynamo

    from lorakit.train import fp8

    assert speed.wrapped_layout(None, compile_=True, fp8_on=True, checkpointing=True, graphs=False)
    assert not speed.wrapped_layout(None, compile_=True, fp8_on=True, checkpointing=True, graphs=True)
    assert not speed.wrapped_layout(None, compile_=True, fp8_on=False, checkpointing=True, graphs=False)
    assert speed.wrapped_layout(object(), compile_=False, fp8_on=False, checkpointing=True, graphs=False)
    ref_loss, ref_grads = reference
    torch._dynamo.reset()
    model, params = tiny_flux()
    fp8.apply_fp8_base(model)
    report = speed.prepare_denoiser(model, cfg(compile=True, fp8_base=True).memory, torch.device("cuda"),
                                    log=lambda s: None, cuda_graphs=False, backend="aot_eager")
    wrapped = [b for b in speed.repeated_blocks(model) if getattr(b, "_lorakit_swap_wrapped", False)]
    assert report["compiled_blocks"] == 2 and len(wrapped) == 2 and not fp8.OPAQUE_UNDER_COMPILE
    loss, grads = step(model, params)
    assert loss == pytest.approx(ref_loss, rel=0.05)
    assert all(rel(g, r) < 0.1 for g, r in zip(grads, ref_grads))
    assert sum(1 for p in model.parameters() if p.dtype == fp8.FP8) > 0


def test_fp8_compute_under_compile_keeps_the_checkpoint_inside_the_compiled_blocks(reference):
    """memory.fp8_compute + compile: the float8 layers are traced into the compiled blocks and recomputed inside
    their checkpoint (no lorakit wrapper), inductor gets the joint-graph pass that tags their matmuls for
    recomputation, the storage-path fallback stays opaque, and the loss/gradients match the unquantised reference to
    fp8 precision (aot_eager on the CPU)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    from lorakit.train import fp8

    ref_loss, ref_grads = reference
    torch._dynamo.reset()
    with inductor_config.patch(joint_custom_pre_pass=None):  # restores the global after the test
        model, params = tiny_flux()
        report = fp8.apply_fp8_base(model, compute=True)
        assert report["computed"] > 0
        out = speed.prepare_denoiser(model, cfg(compile=True, fp8_base=True, fp8_compute=True).memory,
                                     torch.device("cuda"), log=lambda _: None, cuda_graphs=False, backend="aot_eager")
        assert not [b for b in speed.repeated_blocks(model) if getattr(b, "_lorakit_swap_wrapped", False)]
        assert out["compiled_blocks"] == 2 and "swapped_blocks" not in out and fp8.OPAQUE_UNDER_COMPILE
        assert isinstance(inductor_config.joint_custom_pre_pass, fp8.RecomputeInCheckpoint)
        with torch.autocast("cpu", torch.bfloat16):
            loss, grads = step(model, params)
    assert loss == pytest.approx(ref_loss, rel=0.05)
    assert all(rel(g, r) < 0.15 for g, r in zip(grads, ref_grads))
    fp8.OPAQUE_UNDER_COMPILE = False


def test_fused_adamw_is_the_cuda_default_and_can_be_turned_off():
    from lorakit.train.optim import fused_adamw

    c = cfg(fused_optimizer=None)
    assert fused_adamw(c, torch.device("cuda")) is True and fused_adamw(c, torch.device("cpu")) is None
    c.optimizer.name = "adafactor"
    assert fused_adamw(c, torch.device("cuda")) is None
    c = cfg(fused_optimizer=False)
    assert fused_adamw(c, torch.device("cuda")) is False
    memory.check_supported(cfg(fused_optimizer=None), torch.device("cpu"))  # unset: no error on the CPU
    memory.check_supported(cfg(fused_optimizer=False), torch.device("cpu"))


def test_activation_budget_needs_compile_and_replaces_block_checkpointing():
    from lorakit.config.load import load_config

    def check(planned=False, **mem):
        c = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                    "memory": {"auto": False, **mem}})
        memory.check_supported(c, torch.device("cuda"), planned=planned)

    # under the automatic plan (memory.auto, CUDA) compile and checkpointing are the plan's: checked on what it chose
    check(activation_budget=0.35, auto=True)
    with pytest.raises(ConfigError, match=r"memory.activation_budget: the compiler chooses .* memory.compile = true"):
        check(activation_budget=0.35, auto=True, compile=False, planned=True)
    check(activation_budget=0.35, compile=True, gradient_checkpointing=False)  # the supported combination
    with pytest.raises(ConfigError, match=r"memory.activation_budget: the compiler chooses .* memory.compile = true"):
        check(activation_budget=0.35, gradient_checkpointing=False)
    with pytest.raises(ConfigError, match="memory.activation_budget: replaces block checkpointing"):
        check(activation_budget=0.35, compile=True)
    # with vram_gb a hand-set budget is a constraint the plan keeps (checked on the plan's config)
    check(activation_budget=0.35, compile=True, vram_gb=24)
    with pytest.raises(ConfigError, match="activation_budget"):
        check(activation_budget=1.5, compile=True, gradient_checkpointing=False)  # outside (0, 1]


def test_prepare_denoiser_sets_the_partitioners_activation_budget(monkeypatch):
    """memory.activation_budget reaches torch's partitioner setting when the denoiser is compiled, and a later run in
    the same process without it gets the default (1.0) back."""
    import torch._dynamo
    import torch._functorch.config as functorch_config

    torch._dynamo.reset()
    model, _ = tiny_flux()
    lines: list[str] = []
    with functorch_config.patch(activation_memory_budget=1.0):
        speed.prepare_denoiser(model, cfg(compile=True, gradient_checkpointing=False, activation_budget=0.35).memory,
                               torch.device("cuda"), log=lines.append, cuda_graphs=False, backend="aot_eager")
        assert functorch_config.activation_memory_budget == 0.35
        assert any(line.startswith("activation_budget: each compiled block keeps about 35%") for line in lines)
        model, _ = tiny_flux()
        speed.prepare_denoiser(model, cfg(compile=True).memory, torch.device("cuda"), log=lambda s: None,
                               cuda_graphs=False, backend="aot_eager")
        assert functorch_config.activation_memory_budget == 1.0


def test_a_lower_activation_budget_saves_less_for_backward_with_the_same_gradients():
    """The mechanism behind memory.activation_budget, on the CPU with inductor's min-cut partitioner: a compiled
    MLP block without checkpointing saves fewer bytes for backward at budget 0.3 than at 1.0 (it recomputes some),
    and the gradients are identical."""
    import torch._dynamo
    import torch._functorch.config as functorch_config
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.SiLU(), nn.LayerNorm(256),
                          nn.Linear(256, 64))
    x = torch.randn(128, 64, requires_grad=True)
    results = {}
    for budget in (1.0, 0.3):
        torch._dynamo.reset()
        saved: list[int] = []

        def fw(gm, example_inputs):
            out = [n for n in gm.graph.nodes if n.op == "output"][0]
            saved.append(sum(a.meta["val"].numel() * a.meta["val"].element_size() for a in out.args[0]
                             if hasattr(a, "meta") and isinstance(a.meta.get("val"), torch.Tensor)
                             and a.op != "placeholder"))
            return make_boxed_func(gm.forward)

        backend = aot_autograd(fw_compiler=fw, bw_compiler=lambda gm, ex: make_boxed_func(gm.forward),
                               partition_fn=min_cut_rematerialization_partition)
        with functorch_config.patch(activation_memory_budget=budget):
            y = torch.compile(block, backend=backend, fullgraph=True)(x)
        block.zero_grad(set_to_none=True)
        x.grad = None
        (y * torch.linspace(-1, 1, 64)).sum().backward()
        results[budget] = (saved[0], x.grad.clone(), block[0].weight.grad.clone())
    assert results[0.3][0] < 0.8 * results[1.0][0], (results[0.3][0], results[1.0][0])
    assert torch.allclose(results[0.3][1], results[1.0][1], atol=1e-6)
    assert torch.allclose(results[0.3][2], results[1.0][2], atol=1e-6)


class _AttentionBlock(nn.Module):
    """Attention then an MLP, as a transformer block has them (for the save_attention tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(64, 192), nn.Linear(64, 64)
        self.mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, -1, 3, 4, 16).permute(2, 0, 3, 1, 4)
        h = x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, -1, 64))
        return h + self.mlp(h)


def test_saved_attention_is_not_run_again_in_backward_and_gives_the_same_gradients():
    """memory.save_attention's graph pass, with torch's min-cut partitioner on the CPU: at activation budget 0.3 an
    untagged block runs its attention forward again inside backward; tagged by tag_attention_saved, backward holds
    only the attention's backward op, and the gradients are the same."""
    import torch._dynamo
    import torch._functorch.config as functorch_config
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    torch.manual_seed(0)
    block, x = _AttentionBlock(), torch.randn(1, 256, 64, requires_grad=True)
    found = {}
    for tag in (False, True):
        torch._dynamo.reset()
        backward_ops: list[str] = []
        tagged: list[int] = []

        def partition(joint, inputs, **kwargs):
            if tag:
                tagged.append(speed.tag_attention_saved(joint.graph))
            return min_cut_rematerialization_partition(joint, inputs, **kwargs)

        def bw(gm, example_inputs):
            backward_ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
            return make_boxed_func(gm.forward)

        backend = aot_autograd(fw_compiler=lambda gm, ex: make_boxed_func(gm.forward), bw_compiler=bw,
                               partition_fn=partition)
        with functorch_config.patch(activation_memory_budget=0.3):
            y = torch.compile(block, backend=backend, fullgraph=True)(x)
        block.zero_grad(set_to_none=True)
        x.grad = None
        (y * torch.linspace(-1, 1, 64)).sum().backward()
        attention = [op for op in backward_ops if "scaled_dot_product" in op]
        found[tag] = (attention, tagged, x.grad.clone(), block.qkv.weight.grad.clone())
    assert sorted(found[False][0]) == ["aten._scaled_dot_product_flash_attention_for_cpu.default",
                                       "aten._scaled_dot_product_flash_attention_for_cpu_backward.default"]
    assert found[True][0] == ["aten._scaled_dot_product_flash_attention_for_cpu_backward.default"]
    assert found[True][1] == [1]
    assert torch.allclose(found[True][2], found[False][2], atol=1e-6)
    assert torch.allclose(found[True][3], found[False][3], atol=1e-6)


def test_save_attention_pass_is_installed_once_and_removed_keeping_other_passes():
    """set_save_attention puts SaveAttention in inductor's joint-graph pre-pass chain once, and takes it out again
    without dropping a pass installed below or above it (fp8's recompute pass)."""
    import torch._inductor.config as inductor_config

    def below(graph):
        return None

    with inductor_config.patch(joint_custom_pre_pass=below):
        _install_and_remove(below)


def _install_and_remove(below) -> None:
    import torch._inductor.config as inductor_config

    from lorakit.train import fp8

    speed.set_save_attention(True)
    speed.set_save_attention(True)
    top = inductor_config.joint_custom_pre_pass
    assert isinstance(top, speed.SaveAttention) and top.previous is below
    assert top.uuid().startswith("lorakit-save-attention-1:")
    fp8.install_recompute_pass()  # a pass on top of it
    above = inductor_config.joint_custom_pre_pass
    assert isinstance(above, fp8.RecomputeInCheckpoint) and above.previous is top
    speed.set_save_attention(False)
    assert inductor_config.joint_custom_pre_pass is above and above.previous is below
    speed.set_save_attention(False)  # nothing to remove
    assert inductor_config.joint_custom_pre_pass is above


def test_save_attention_default_and_where_it_applies():
    """Unset, attention is saved under an activation budget except with fp8 compute; prepare_denoiser installs the
    pass only under compile with a budget and says so; set without an activation budget (or vram_gb) it is an
    error that names the key."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    assert speed.saves_attention(cfg().memory) is True
    assert speed.saves_attention(cfg(fp8_base=True, fp8_compute=True).memory) is False
    assert speed.saves_attention(cfg(fp8_base=True, fp8_compute=True, save_attention=True).memory) is True
    assert speed.saves_attention(cfg(save_attention=False).memory) is False
    torch._dynamo.reset()
    with inductor_config.patch(joint_custom_pre_pass=None):
        _prepare_with_and_without()
    from lorakit.config.load import load_config

    c = load_config(None, data={"model": {"family": "flux1", "checkpoint": "f.safetensors"}, "data": {"dir": "."},
                                "memory": {"save_attention": True, "compile": True}})
    with pytest.raises(ConfigError, match="memory.save_attention: applies to the compiler's selective recomputation"):
        memory.check_supported(c, torch.device("cuda"))


def _prepare_with_and_without() -> None:
    import torch._inductor.config as inductor_config

    for mem, installed in ((dict(activation_budget=0.3), True), (dict(activation_budget=0.3, save_attention=False),
                                                                  False), ({}, False)):
        model, _ = tiny_flux()
        lines: list[str] = []
        speed.prepare_denoiser(model, cfg(compile=True, gradient_checkpointing=False, **mem).memory,
                               torch.device("cuda"), log=lines.append, cuda_graphs=False, backend="aot_eager")
        assert isinstance(inductor_config.joint_custom_pre_pass, speed.SaveAttention) is installed, mem
        assert any("every attention output is kept" in line for line in lines) is installed, lines


def test_budget_share_compiles_the_exempt_blocks_with_every_activation_kept(monkeypatch):
    """speed.BUDGET_SHARE (benchmark experiment, RESULTS.md round 20): under a process-wide activation budget, the
    blocks outside the share compile through a backend that partitions at budget 1.0. The budget each graph was
    compiled under is read inside the backend; one graph per backend (the blocks of one class share it), and the
    outputs equal the eager model's."""
    import torch._functorch.config as fconfig
    from torch import nn

    from lorakit.train import speed

    class Blk(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return torch.tanh(self.lin(x)) * x

    class Net(nn.Module):
        _repeated_blocks = ("Blk",)

        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Blk() for _ in range(4))

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 8, requires_grad=True)  # every block's input needs grad (else the first block guards apart)
    want = net(x)
    seen: list[float] = []

    def recorder(gm, example_inputs):
        seen.append(fconfig.activation_memory_budget)
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setattr(fconfig, "activation_memory_budget", 0.5)
    monkeypatch.setattr(speed, "BUDGET_SHARE", 0.5)
    exempt = speed.budget_exempt(net)
    blocks = speed.repeated_blocks(net)
    assert exempt == {id(blocks[i]) for i in range(4)} - {id(blocks[i]) for i in speed.checkpoint_indices(4, 0.5)}
    assert len(exempt) == 2
    assert speed.compile_regions(net, backend=recorder, keep_all=exempt, log=lambda _: None) == 4
    got = net(x)
    torch._dynamo.reset()
    assert torch.allclose(got, want)
    assert sorted(seen) == [0.5, 1.0]  # one graph under the budget, one keeping everything
    monkeypatch.setattr(speed, "BUDGET_SHARE", None)
    assert speed.budget_exempt(net) is None
