"""memory.fp8_base (lorakit/train/fp8.py): frozen weights stored as float8_e4m3fn with per-row power-of-two
scales, upcast per layer for compute. Checked against the unquantised models (output error, training losses),
against autograd through an explicitly dequantised weight (gradients), and for memory, exports and compile."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.lora.inject import enable_lora, extract_lora, inject_lora
from lorakit.train import fp8
from tests.unit.tiny_inputs import flux_forward_kwargs

E4M3 = torch.float8_e4m3fn


# ------------------------------------------------------------------------------------------------ models


def tiny_sdxl() -> tuple[nn.Module, tuple, dict]:
    from lorakit.models.sdxl.load import build_models, tiny_configs

    unet = build_models(tiny_configs())["unet"]
    g = torch.Generator().manual_seed(3)
    add = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    args = (torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 500]),
            torch.randn(2, 5, unet.config.cross_attention_dim, generator=g))
    kwargs = {"added_cond_kwargs": {"text_embeds": torch.randn(2, add, generator=g),
                                    "time_ids": torch.randn(2, 6, generator=g)}, "return_dict": False}
    return unet, args, kwargs


def tiny_flux() -> tuple[nn.Module, tuple, dict]:
    from lorakit.models.flux1.load import tiny_models

    tr = tiny_models("dev")["transformer"]
    kwargs = flux_forward_kwargs(tr.config, images=64, texts=7)
    return tr, (), kwargs


MODELS = {"sdxl": tiny_sdxl, "flux1": tiny_flux}


def lora_targets(model: nn.Module) -> dict[str, int]:
    """LoRA on the attention/FF Linears of the blocks (what the adapters target), rank 4."""
    return {n: 4 for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and ("attn" in n or ".ff." in n or "single_transformer" in n)
            and not fp8.keep_full_precision(n)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


def frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ------------------------------------------------------------------------------------------------ quantize


def worst_row_errors(decades: float) -> dict[str, float]:
    """Worst per-row relative error of each scaling, rows of RMS 0.02 · 10**-U(0, decades)."""
    g = torch.Generator().manual_seed(0)
    w = 0.02 * torch.randn(64, 256, generator=g) * 10 ** (-decades * torch.rand(64, 1, generator=g))
    errs = {}
    for scaling in fp8.SCALINGS:
        w8, scale = fp8.quantize(w, scaling)
        assert w8.dtype == E4M3 and w8.shape == w.shape and scale.shape == (64,)
        assert torch.equal(scale, torch.exp2(torch.round(torch.log2(scale))))  # powers of two
        back = fp8.dequantize(w8, scale)
        errs[scaling] = max(rel(back[i], w[i]) for i in range(64))
    return errs


def test_quantize_scaling_beats_plain_casting():
    """Checkpoint-like rows (RMS 2e-5 … 2e-2): any scale keeps every row within ~3 % (e4m3: 3 mantissa bits,
    half-ulp <= 6.25 %); plain e4m3 casting (kohya's fp8_base) flushes the small rows into subnormals/zero.
    Per-tensor is as good as per-row here: e4m3 spans 2**15, wider than the rows' spread."""
    errs = worst_row_errors(3)
    assert errs["row"] < 0.035 and errs["tensor"] < 0.035
    assert errs["none"] > 0.5
    # rows spread over 6 decades exceed e4m3's range: only per-row scales keep the smallest rows
    errs = worst_row_errors(6)
    assert errs["row"] < 0.035 < 0.2 < errs["tensor"] <= errs["none"]


def test_quantize_edge_cases():
    w = torch.zeros(3, 5)
    w[1] = 1000.0  # above e4m3's 448: scaled, never NaN
    w[2, 0] = -1e-7
    w8, scale = fp8.quantize(w)
    back = fp8.dequantize(w8, scale)
    assert torch.isfinite(back).all()
    assert torch.equal(back[0], w[0]) and torch.equal(scale[0], torch.tensor(1.0))  # zero row: scale 1
    assert torch.allclose(back[1], w[1], rtol=0.0625) and back[2, 0] == pytest.approx(-1e-7, rel=0.07)
    with pytest.raises(ValueError, match="scaling"):
        fp8.quantize(w, "block")


# ------------------------------------------------------------------------------------------------ layers


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_layer_forward_and_input_gradient_match_the_dequantised_weight(kind):
    """The custom autograd function gives the same output and input gradient as autograd through
    ``F.linear``/``F.conv2d`` with the dequantised weight (an independent path), and no weight gradient."""
    torch.manual_seed(0)
    layer = nn.Linear(48, 32) if kind == "linear" else nn.Conv2d(6, 8, 3, stride=2, padding=1)
    frozen(layer)
    x = torch.randn(4, 48) if kind == "linear" else torch.randn(2, 6, 9, 9)
    holder = nn.Sequential(layer)  # apply_fp8_base converts submodules; keep_full_precision sees path "0"
    report = fp8.apply_fp8_base(holder, convs=True)
    assert report["layers"] == 1 and fp8.is_fp8(layer) and layer.weight.dtype == E4M3
    w = fp8.dequantize(layer.weight, layer.weight_scale)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya = layer(xa)
    yb = F.linear(xb, w, layer.bias) if kind == "linear" else F.conv2d(xb, w, layer.bias, 2, 1)
    assert torch.allclose(ya, yb, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    assert layer.weight.grad is None and not layer.weight.requires_grad
    with torch.autocast("cpu", torch.bfloat16):
        yc = layer(x)
    assert yc.dtype == torch.bfloat16 and rel(yc, yb) < 0.02


def test_backward_keeps_only_the_fp8_weight():
    """What autograd saves for backward is the 1-byte weight, not an upcast copy (the memory point of fp8)."""
    holder = frozen(nn.Sequential(nn.Linear(64, 64)))
    fp8.apply_fp8_base(holder)
    saved = []
    x = torch.randn(2, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        holder(x)
    big = [t for t in saved if t.numel() == 64 * 64]
    assert big and all(t.dtype == E4M3 for t in big)


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("family", ["sdxl", "flux1"])
def test_model_conversion_error_and_bytes(family):
    """Frozen Linears (peft's base_layer included) become e4m3 (half of bf16's bytes); LoRA, embeddings and
    norms stay; the output stays within 4 % of the unquantised model's (fp32 and bf16 autocast)."""
    model, args, kwargs = MODELS[family]()
    inject_lora(model, lora_targets(model), 4.0, 0.0, seed=1)
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        ref = ref_model(*args, **kwargs)[0]
    bf16_bytes = {n: p.numel() * 2 for n, p in model.named_parameters()}
    report = fp8.apply_fp8_base(model)
    assert report["layers"] > 10 and report["bytes_after"] < report["bytes_before"]
    converted = 0
    for name, sub in model.named_modules():
        if isinstance(sub, nn.Linear) and not fp8.keep_full_precision(name) and ".lora_" not in name:
            assert isinstance(sub, fp8.Fp8Linear), name
            assert sub.weight.dtype == E4M3 and sub.weight.untyped_storage().nbytes() * 2 == bf16_bytes[name + ".weight"]
            converted += 1
    assert converted == report["layers"]
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert p.dtype == torch.float32 and p.requires_grad, name
        elif "norm" in name and "linear" not in name or fp8.keep_full_precision(name):
            assert p.dtype == torch.float32, name
    # the LoRA is unchanged and still switches off
    assert extract_lora(model).keys() == extract_lora(ref_model).keys()
    with torch.no_grad():
        out = model(*args, **kwargs)[0]
        with torch.autocast("cpu", torch.bfloat16):
            out_bf16 = model(*args, **kwargs)[0]
            ref_bf16 = ref_model(*args, **kwargs)[0]
    assert rel(out, ref) < 0.04  # measured: sdxl 1.7 %, flux1 see report
    assert rel(out_bf16, ref) < rel(ref_bf16, ref) + 0.04
    assert rel(out, ref) > 1e-4  # it really is quantised


def test_row_scaling_beats_plain_casting_on_checkpoint_like_weights():
    """With checkpoint-like weights (|w| ~ 2e-2 … 2e-3, row norms spread over a decade: the tiny models' own
    weights are ~10x larger) every converted layer's output is closer to the original with per-row scales
    than with plain e4m3 casting (kohya's fp8_base)."""
    model, _, _ = tiny_flux()
    frozen(model)
    g = torch.Generator().manual_seed(5)
    errs: dict[str, list[float]] = {"row": [], "none": []}
    with torch.no_grad():
        for name, sub in list(model.named_modules()):
            if type(sub) is not nn.Linear or fp8.keep_full_precision(name):
                continue
            sub.weight.copy_(0.02 * torch.randn(sub.weight.shape, generator=g)
                             * 10 ** (-torch.rand(sub.weight.shape[0], 1, generator=g)))
            x = torch.randn(8, sub.in_features, generator=g)
            ref = sub(x)
            for scaling in errs:
                layer = copy.deepcopy(nn.Sequential(sub))
                fp8.apply_fp8_base(layer, scaling=scaling)
                errs[scaling].append(rel(layer(x), ref))
    assert len(errs["row"]) > 10
    assert max(errs["row"]) < 0.04  # measured ~2.5 %
    assert all(r < n / 1.5 for r, n in zip(errs["row"], errs["none"])), errs


def test_training_steps_match_the_unquantised_run():
    """Five AdamW steps of LoRA on the tiny FLUX transformer: gradients only reach LoRA, the frozen fp8 weights
    are bit-for-bit unchanged, the LoRA moves, and the losses stay within 3 % of the unquantised run."""
    base, _, kwargs = tiny_flux()
    target = torch.randn_like(kwargs["hidden_states"], generator=torch.Generator().manual_seed(9))
    losses = {}
    for use_fp8 in (False, True):
        model = copy.deepcopy(base)
        params = inject_lora(model, lora_targets(model), 4.0, 0.0, seed=1)
        if use_fp8:
            fp8.apply_fp8_base(model)
            before = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == E4M3}
        opt = torch.optim.AdamW(params, lr=1e-2)
        losses[use_fp8] = []
        for _ in range(5):
            loss = F.mse_loss(model(**kwargs)[0], target)
            loss.backward()
            assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
            assert all(p.grad is not None for p in params)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[use_fp8].append(float(loss))
    assert losses[True][-1] < losses[True][0]  # it learns
    for a, b in zip(losses[True], losses[False]):
        assert a == pytest.approx(b, rel=0.03)
    after = {n: p for n, p in model.named_parameters() if p.dtype == E4M3}
    assert before.keys() == after.keys() and all(torch.equal(before[n].view(torch.uint8), after[n].view(torch.uint8))
                                                  for n in before)
    assert any(extract_lora(model)[k].up.abs().sum() > 0 for k in extract_lora(model))
    enable_lora(model, False)  # sampling "before": the base alone, still fp8
    with torch.no_grad():
        assert torch.isfinite(model(**kwargs)[0]).all()
    enable_lora(model, True)


def test_compiles_in_one_graph_and_matches_eager():
    """torch.compile traces the fp8 layers and their custom backward without a graph break (aot_eager: no
    code generation on the CPU)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    inject_lora(net, {"0": 4, "2": 4}, 4.0, 0.0, seed=1)
    for name, p in net.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, 0, 0.1)
    fp8.apply_fp8_base(net)
    x = torch.randn(3, 16)
    eager = net(x)
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    net.zero_grad(set_to_none=True)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, eager, atol=1e-6)
    for n, p in net.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, grads[n], atol=1e-6), n


def test_full_size_parameter_bytes_on_meta():
    """The real SDXL UNet (bf16, on the meta device: no memory used): Linear weights go from 2 to 1 byte
    (plus a 4-byte scale per row); counted independently from the unconverted model."""
    from diffusers import UNet2DConditionModel

    from lorakit.models.sdxl import configs

    cfg = {k: v for k, v in configs.UNET.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = frozen(UNet2DConditionModel(**cfg)).to(torch.bfloat16)
    lin = [(n, m) for n, m in unet.named_modules() if type(m) is nn.Linear and not fp8.keep_full_precision(n)]
    before = sum(p.numel() * 2 for p in unet.parameters())
    expected = before - sum(m.weight.numel() for _, m in lin) + sum(m.out_features * 4 for _, m in lin)
    report = fp8.apply_fp8_base(unet)
    assert report["bytes_before"] == before and report["bytes_after"] == expected
    assert 2.5 * 2**30 < expected < 2.8 * 2**30 and 4.7 * 2**30 < before < 4.9 * 2**30  # 4.78 -> 2.72 GiB


def test_memory_check_allows_fp8_base_on_cpu_and_cuda():
    from lorakit.config.schema import Config
    from lorakit.train import memory

    cfg = Config()
    cfg.memory.fp8_base = True
    for device in ("cpu", "cuda"):
        memory.check_supported(cfg, torch.device(device))


@pytest.mark.parametrize("compute", [False, True])
def test_cli_run_with_fp8_base_exports_the_lora(tmp_path, capsys, compute):
    """`lorakit train ... memory.fp8_base=true` (and `memory.fp8_compute=true`) on the tiny SDXL checkpoint
    finishes and exports a LoRA that changes the model; the log says what was converted."""
    from safetensors.torch import load_file

    from lorakit.cli import main
    from tests.integration.test_train_e2e import tiny_model, write_run_toml

    paths = tiny_model("sdxl", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "sdxl", paths)
    assert main(["train", str(run_toml), "memory.fp8_base=true", "sample.prompts=[]", "training.max_steps=3",
                 "training.mixed_precision=\"bf16\"", f"memory.fp8_compute={str(compute).lower()}"]) == 0
    out = capsys.readouterr().out
    assert "fp8_base: 209 frozen layers stored as float8_e4m3fn" in out
    assert ("fp8_compute: 209 of them multiply in float8" in out) == compute
    run = tmp_path / "out" / "tiny"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["export_problems"] == [] and status["lora_effect"] > 0
    tensors = load_file(run / "tiny.safetensors")
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    assert all(torch.isfinite(v.float()).all() for v in tensors.values())


@pytest.mark.parametrize("opaque", [False, True])
def test_compiled_forward_saves_the_fp8_weight_not_an_upcast_copy(opaque, monkeypatch):
    """Under torch.compile the partitioner decides what forward saves for backward (inductor's min-cut one here);
    it must save the fp8 weights, never an upcast copy per layer, which would undo the memory saving (FLUX.1-dev
    peaked at 45 GiB that way). Checked on the forward graph's outputs (= result + saved tensors)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    monkeypatch.setattr(fp8, "OPAQUE_UNDER_COMPILE", opaque)
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 64, 3, padding=1), nn.Flatten(2), nn.GELU(), nn.Linear(64, 96), nn.GELU(),
                        nn.Linear(96, 8))
    frozen(net)
    inject_lora(net, {"3": 4, "5": 4}, 4.0, 0.0, seed=1)
    fp8.apply_fp8_base(net, convs=True)
    saved: list[torch.Size] = []

    graphs = []

    def fw(gm, example_inputs):
        graphs.append(gm)
        out = [n for n in gm.graph.nodes if n.op == "output"][0]
        saved.extend(tuple(a.meta["val"].shape) + (a.meta["val"].dtype,) for a in out.args[0]
                     if hasattr(a, "meta") and "val" in a.meta)
        return make_boxed_func(gm.forward)

    x = torch.randn(2, 4, 8, 8, requires_grad=False).transpose(2, 3)
    eager = net(x)
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    net.zero_grad(set_to_none=True)
    backend = aot_autograd(fw_compiler=fw, bw_compiler=lambda gm, _: make_boxed_func(gm.forward),
                           partition_fn=min_cut_rematerialization_partition)  # inductor's partitioner
    compiled = torch.compile(net, backend=backend, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, eager, atol=1e-5)
    assert all(torch.allclose(p.grad, grads[n], atol=1e-5) for n, p in net.named_parameters() if p.requires_grad)
    weights = {tuple(m.weight.shape) for m in net.modules() if fp8.is_fp8(m)}
    assert len(weights) == 3 and saved
    weights |= {(w[1], w[0]) + w[2:] for w in weights}  # either orientation
    upcast = [s for s in saved if s[:-1] in weights and s[-1] != fp8.FP8]
    assert not upcast, upcast
    ops = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert any("lorakit.fp8_matmul" in o for o in ops) == opaque, ops


# ------------------------------------------------------------------------------------------------ fp8 compute


def e4m3_rows(t: torch.Tensor) -> torch.Tensor:
    """Reference per-row quantisation, written out row by row in float64: each row scaled so that its largest
    magnitude is 448, rounded to e4m3 and scaled back."""
    out = torch.zeros_like(t, dtype=torch.float64)
    for i, row in enumerate(t.double()):
        peak = row.abs().max()
        if peak == 0:
            continue
        s = peak / 448.0
        out[i] = (row / s).clamp(-448, 448).to(E4M3).double() * s
    return out


def computed_layer(in_features: int = 64, out_features: int = 48, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    holder = frozen(nn.Sequential(nn.Linear(in_features, out_features, bias=bias)))
    report = fp8.apply_fp8_base(holder, compute=True)
    assert report["computed"] == (1 if fp8.can_compute(holder[0].weight) else 0)
    return holder[0]


def test_fp8_compute_forward_and_input_gradient_match_a_quantised_reference():
    """Under bf16 autocast the layer multiplies per-token-quantised inputs with the fp8 weight: the output equals
    the float64 product of the independently quantised input and the dequantised weight (to bf16 rounding),
    and the input gradient equals the (unquantised) bf16 gradient times the dequantised weight.
    21 rows (not a multiple of 16: padded inside), one all-zero row."""
    layer = computed_layer()
    assert layer.fp8_compute
    x = torch.randn(3, 7, 64)
    x[1, 2] = 0.0
    x.requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 7, 48)
    w = fp8.dequantize(layer.weight, layer.weight_scale, torch.float64)
    flat = x.detach().reshape(-1, 64)
    expected = e4m3_rows(flat) @ w.t() + layer.bias.double()
    assert rel(y.reshape(-1, 48), expected) < 0.006  # bf16 output rounding only
    assert torch.equal(y[1, 2].float(), layer.bias.to(torch.bfloat16).float())  # the zero row gives the bias
    exact = flat.double() @ w.t() + layer.bias.double()
    assert 0.005 < rel(y.reshape(-1, 48), exact) < 0.05  # the input's quantisation error, bounded (e4m3)

    g = torch.randn(3, 7, 48)
    y.backward(g.to(torch.bfloat16))
    scaled = g.to(torch.bfloat16).reshape(-1, 48).double() * layer.weight_scale.double()
    expected_gx = scaled @ layer.weight.double()  # the gradient is not quantised: a bf16 product
    assert x.grad.dtype == torch.float32 and rel(x.grad.reshape(-1, 64), expected_gx) < 0.006
    assert layer.weight.grad is None


def test_fp8_compute_falls_back_where_it_cannot_apply():
    """Shapes _scaled_mm cannot take (a dimension not a multiple of 16) keep the storage path; so does a run
    without bf16 autocast (fp32 compute): then the output is the exact dequantised product."""
    odd = computed_layer(50, 48)
    assert not odd.fp8_compute and fp8.is_fp8(odd)
    x = torch.randn(5, 50)
    with torch.autocast("cpu", torch.bfloat16):
        y = odd(x)
    w = fp8.dequantize(odd.weight, odd.weight_scale, torch.bfloat16)
    assert torch.equal(y, F.linear(x.to(torch.bfloat16), w) + odd.bias.to(torch.bfloat16))  # the storage path exactly
    layer = computed_layer()
    x = torch.randn(5, 64)
    w = fp8.dequantize(layer.weight, layer.weight_scale)
    assert torch.allclose(layer(x), F.linear(x, w, layer.bias), atol=1e-5)  # fp32: storage path, no rounding


def test_fp8_compute_saves_only_the_fp8_weight():
    layer = computed_layer(64, 64, bias=False)
    saved = []
    x = torch.randn(32, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", torch.bfloat16):
            layer(x)
    assert [t.dtype for t in saved if t.numel() >= 64 * 64] == [E4M3]  # no activation, no upcast weight
    assert sum(t.numel() * t.element_size() for t in saved) == 64 * 64 + 64 * 4  # weight + fp32 row scales


def test_fp8_compute_training_tracks_the_bf16_run_and_compiles():
    """Five AdamW steps of LoRA on the tiny FLUX transformer under bf16 autocast: with fp8 compute the losses stay
    within 5 % of the unquantised bf16 run and it learns; torch.compile (aot_eager, full graph) traces a computed
    layer stack without a graph break and agrees with eager within fp8 rounding."""
    base, _, kwargs = tiny_flux()
    target = torch.randn_like(kwargs["hidden_states"], generator=torch.Generator().manual_seed(9))
    losses = {}
    for mode in ("bf16", "fp8c"):
        model = copy.deepcopy(base)
        params = inject_lora(model, lora_targets(model), 4.0, 0.0, seed=1)
        if mode == "fp8c":
            report = fp8.apply_fp8_base(model, compute=True)
            assert report["computed"] >= 40 and report["computed"] == report["layers"]  # every Linear fits
        opt = torch.optim.AdamW(params, lr=1e-2)
        losses[mode] = []
        for _ in range(5):
            with torch.autocast("cpu", torch.bfloat16):
                loss = F.mse_loss(model(**kwargs)[0].float(), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[mode].append(float(loss))
    assert losses["fp8c"][-1] < losses["fp8c"][0]
    for a, b in zip(losses["fp8c"], losses["bf16"]):
        assert a == pytest.approx(b, rel=0.05)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16))
    inject_lora(net, {"0": 4, "2": 4}, 4.0, 0.0, seed=1)
    fp8.apply_fp8_base(net, compute=True)
    x = torch.randn(48, 32)
    with torch.autocast("cpu", torch.bfloat16):
        eager = net(x)
        compiled = torch.compile(net, backend="aot_eager", fullgraph=True)(x)
    # fullgraph: no graph break; autocast inside the traced graph rounds a few values differently (measured 1.2 %)
    assert rel(compiled, eager) < 0.03


def test_fp8_compute_config_checks(monkeypatch):
    from lorakit.config.schema import Config
    from lorakit.errors import ConfigError
    from lorakit.train import memory

    cfg = Config()
    cfg.memory.fp8_compute = True
    with pytest.raises(ConfigError, match="memory.fp8_compute: .*memory.fp8_base = true"):
        memory.check_supported(cfg, torch.device("cpu"))
    cfg.memory.fp8_base = True
    memory.check_supported(cfg, torch.device("cpu"))  # emulated on the CPU (tests, toy runs)
    cfg.training.mixed_precision = "no"
    with pytest.raises(ConfigError, match='training.mixed_precision = "bf16"'):
        memory.check_supported(cfg, torch.device("cpu"))
    cfg.training.mixed_precision = "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(ConfigError, match="RTX 3090 has no float8 tensor cores"):
        memory.check_supported(cfg, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(fp8, "row_scaled_mm_problem", lambda device: None)  # (no GPU here to try it on)
    memory.check_supported(cfg, torch.device("cuda"))
    cfg.memory.fp8_base, cfg.memory.vram_gb = False, 12.0  # the budget chooses fp8 storage itself
    memory.check_supported(cfg, torch.device("cuda"))


def test_fp8_compute_is_refused_where_row_scaled_matmul_is_missing(monkeypatch):
    """Older PyTorch builds lack per-row scaled float8 products on some devices (Ada before ~2.7, the CPU in 2.5):
    the one-line error comes before any loading, from a real 16×16 product (here: _scaled_mm made to fail)."""
    from lorakit.config.schema import Config
    from lorakit.errors import ConfigError
    from lorakit.train import memory

    assert fp8.row_scaled_mm_problem(torch.device("cpu")) is None  # this torch has it on the CPU

    def missing(*args, **kwargs):
        raise RuntimeError("Invalid scaling configuration\nmore text")

    monkeypatch.setattr(torch, "_scaled_mm", missing)
    assert fp8.row_scaled_mm_problem(torch.device("cpu")) == "Invalid scaling configuration"
    cfg = Config()
    cfg.memory.fp8_base = cfg.memory.fp8_compute = True
    with pytest.raises(ConfigError, match=r"memory.fp8_compute: PyTorch .* no row-scaled float8 matmul on the CPU "
                                          r"\(Invalid scaling configuration\); upgrade torch"):
        memory.check_supported(cfg, torch.device("cpu"))


def _compile_checkpointed_fp8(tag_pass: bool = True) -> dict:
    """A small LoRA'd, fp8-computed Linear stack under bf16 autocast, compiled with the checkpoint traced inside and
    inductor's min-cut partitioner (joint-graph pass first, as inductor orders them). The fp8 Function body's nodes
    lose their recompute tags first, as torch 2.11 (the GPU machine's) leaves them."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 96), nn.GELU(), nn.Linear(96, 48), nn.GELU(), nn.Linear(48, 16))
    frozen(net)
    inject_lora(net, {"0": 4, "4": 4}, 4.0, 0.0, seed=1)
    for name, p in net.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, 0, 0.1)
    fp8.apply_fp8_base(net, compute=True)
    got: dict = {"saved": [], "tagged": [], "stripped": 0, "bw_graphs": []}

    def fw(gm, example_inputs):
        out = [n for n in gm.graph.nodes if n.op == "output"][0]
        got["saved"].extend(tuple(a.meta["val"].shape) + (a.meta["val"].dtype,) for a in out.args[0]
                            if hasattr(a, "meta") and "val" in a.meta)
        return make_boxed_func(gm.forward)

    def bw(gm, example_inputs):
        got["bw_graphs"].append(gm)
        return make_boxed_func(gm.forward)

    def partition(gm, joint_inputs, **kwargs):
        for n in gm.graph.nodes:
            if n.op == "call_function" and "lorakit/train/fp8.py" in (n.meta.get("stack_trace") or "") \
                    and "_scaled_mm" in str(n.target) + str([u.target for u in n.users]):
                n.meta.pop("recompute", None)
                got["stripped"] += 1
        if tag_pass:
            got["tagged"].append(fp8.tag_checkpointed_scaled_mm(gm.graph))
        got["untagged_mm"] = [n.name for n in gm.graph.nodes if n.target is torch.ops.aten._scaled_mm.default
                              and n.meta.get("recompute") is None]
        return min_cut_rematerialization_partition(gm, joint_inputs, **kwargs)

    def step(x):
        return torch.utils.checkpoint.checkpoint(net, x, use_reentrant=False)

    x = torch.randn(40, 32)
    with torch.autocast("cpu", torch.bfloat16):
        got["eager"] = step(x)
    got["eager"].float().sum().backward()
    got["eager_grads"] = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    net.zero_grad(set_to_none=True)
    backend = aot_autograd(fw_compiler=fw, bw_compiler=bw, partition_fn=partition)
    with torch.autocast("cpu", torch.bfloat16):
        got["out"] = torch.compile(step, backend=backend, fullgraph=True)(x)
    got["out"].float().sum().backward()
    got["grads"] = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    got["shapes"] = {tuple(m.weight.shape) for m in net.modules() if fp8.is_fp8(m)}
    return got


def test_compiled_fp8_compute_saves_no_weight_copy():
    """fp8 compute under torch.compile with the checkpoint traced inside (lorakit's compiled-block layout) and
    inductor's min-cut partitioner: with ``fp8.tag_checkpointed_scaled_mm`` tagging the traced ``_scaled_mm`` nodes,
    forward saves no transposed (or any other) copy of the fp8 weights for backward, and no layer output: the
    checkpointed layers are recomputed. (On the H200 with torch 2.11, untagged ``_scaled_mm`` outputs were saved
    instead, +14 GiB on FLUX.1-dev.) The input gradient is a plain bf16 ``aten.mm``. Gradients match eager within fp8
    rounding."""
    got = _compile_checkpointed_fp8()
    saved, shapes = got["saved"], got["shapes"]
    assert rel(got["out"], got["eager"]) < 0.03
    assert all(rel(g, got["eager_grads"][n]) < 0.05 for n, g in got["grads"].items())
    assert got["stripped"] >= 3 and got["tagged"][0] >= 3 and got["untagged_mm"] == [], got
    assert len(shapes) == 3 and saved
    copies = [s for s in saved if s[:-1] in shapes | {(b, a) for a, b in shapes}]
    assert len(copies) <= len(shapes) and all(s[:-1] in shapes and s[-1] == fp8.FP8 for s in copies), copies
    # the input gradients: bf16 ``aten.mm`` with the fp8 weight upcast as it is stored (no transposed copy), for the
    # two layers whose input needs a gradient (the first one's is the stack's input, which does not)
    upcast_mms = {tuple(n.args[1].meta["val"].shape) for gm in got["bw_graphs"] for n in gm.graph.nodes
                  if n.target is torch.ops.aten.mm.default and n.args[1].target is torch.ops.aten._to_copy.default
                  and n.args[1].args[0].meta["val"].dtype == fp8.FP8}
    assert upcast_mms == {(48, 96), (16, 48)}, upcast_mms
    assert not [s for s in saved if s[:-1] in OUTPUTS and s[-1] == torch.bfloat16], saved


# the stack's layer outputs (bf16), with the rows as given (40) and as padded for _scaled_mm (48); (48, 96) is also
# the second layer's fp8 weight
OUTPUTS = {(40, 96), (40, 48), (48, 96), (48, 48)}


def test_untagged_scaled_mm_outputs_are_saved_without_the_pass():
    """The failure the pass repairs, reproduced: traced ``_scaled_mm`` nodes without a recompute tag are banned from
    recomputation by the min-cut partitioner, so forward keeps the layers' bf16 outputs for backward."""
    got = _compile_checkpointed_fp8(tag_pass=False)
    assert got["stripped"] >= 3 and len(got["untagged_mm"]) == 3
    assert [s for s in got["saved"] if s[:-1] in OUTPUTS and s[-1] == torch.bfloat16], got["saved"]


def test_recompute_pass_installs_once_and_keeps_an_earlier_pass():
    import torch._inductor.config as inductor_config

    calls: list = []
    with inductor_config.patch(joint_custom_pre_pass=lambda graph: calls.append(graph)):
        fp8.install_recompute_pass()
        fp8.install_recompute_pass()
        installed = inductor_config.joint_custom_pre_pass
    assert isinstance(installed, fp8.RecomputeInCheckpoint) and not isinstance(installed.previous,
                                                                              fp8.RecomputeInCheckpoint)
    graph = torch.fx.Graph()
    graph.output(graph.placeholder("x"))
    installed(graph)
    assert calls == [graph] and "lorakit-fp8-recompute" in installed.uuid()


def test_the_recompute_pass_tags_only_nodes_inside_one_checkpointed_region():
    """On a hand-built joint graph: an untagged node between two nodes of region 1 takes region 1's tag; an untagged
    node between region 1 and region 2, one fed only by a graph input, and every node on the backward side (fed by a
    tangent) stay untagged; a graph without ``_scaled_mm`` is not touched at all."""
    from torch.utils.checkpoint import CheckpointPolicy

    def build(with_scaled_mm: bool = True):
        g = torch.fx.Graph()
        x, w, tangent = g.placeholder("primals_1"), g.placeholder("primals_2"), g.placeholder("tangents_1")
        nodes = {}

        def op(name, target, *args, region=None):
            n = g.call_function(target, args)
            n.name = name
            if region is not None:
                n.meta["recompute"], n.meta["ac_graph_id"] = CheckpointPolicy.PREFER_RECOMPUTE, region
            nodes[name] = n
            return n

        mm = torch.ops.aten._scaled_mm.default if with_scaled_mm else torch.ops.aten.mm.default
        a1 = op("a1", torch.ops.aten.relu.default, x, region=1)
        inner = op("inner", mm, a1, w)  # untagged, between two region-1 nodes
        a2 = op("a2", torch.ops.aten.relu.default, inner, region=1)
        between = op("between", mm, a2, w)  # untagged, from region 1 into region 2
        b1 = op("b1", torch.ops.aten.relu.default, between, region=2)
        weight_only = op("weight_only", torch.ops.aten.t.default, w)  # fed by a graph input only
        op("b2", torch.ops.aten.mul.Tensor, b1, weight_only, region=2)
        op("grad", torch.ops.aten.mul.Tensor, tangent, a2)  # backward side
        g.output(tuple(nodes.values()))
        return g, nodes

    graph, nodes = build()
    assert fp8.tag_checkpointed_scaled_mm(graph) == 1
    assert nodes["inner"].meta["recompute"] == CheckpointPolicy.PREFER_RECOMPUTE
    assert nodes["inner"].meta["ac_graph_id"] == 1
    for name in ("between", "weight_only", "grad"):
        assert nodes[name].meta.get("recompute") is None, name
    graph, nodes = build(with_scaled_mm=False)
    assert fp8.tag_checkpointed_scaled_mm(graph) == 0 and nodes["inner"].meta.get("recompute") is None
