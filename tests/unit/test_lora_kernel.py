"""lorakit.train.lora_kernel: the fused LoRA Linear ``y = x Wᵀ + b + s (x Aᵀ) Bᵀ`` (autograd Function, torch path
on the CPU, Triton kernel on CUDA).

Every value is checked against an independent fp64 computation of the same formula differentiated by autograd.
The CUDA tests (marked ``gpu``, skipped without a GPU, deselected in CI) compare the Triton path to an fp32
reference with bf16 tolerances, on odd shapes and under ``torch.compile(fullgraph=True)``; run them on a GPU
machine with ``python3 -m pytest -q -m gpu tests/unit/test_lora_kernel.py -o addopts=""``.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from lorakit.train import lora_kernel as lk
from lorakit.train.lora_kernel import fused_lora_linear

CUDA = torch.cuda.is_available()


def make(shape_x, n, r, *, bias=True, dtype=torch.float32, device="cpu", seed=0):
    """Leaf tensors x [..., K], W [N,K] (frozen), b [N], A [R,K], B [N,R] (trainable) and an upstream grad g."""
    gen = torch.Generator().manual_seed(seed)
    k = shape_x[-1]

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    x = rnd(*shape_x).requires_grad_(True)
    w = rnd(n, k, scale=k ** -0.5)
    b = rnd(n) if bias else None
    a = rnd(r, k, scale=k ** -0.5).requires_grad_(True)
    bb = rnd(n, r, scale=0.5).requires_grad_(True)  # non-zero B so every gradient path is exercised
    g = rnd(*shape_x[:-1], n)
    return x, w, b, a, bb, g


def reference(x, w, b, a, bb, s, g):
    """fp64 ``x Wᵀ + b + s (x Aᵀ) Bᵀ`` and its gradients w.r.t. x, A, B (plain autograd, no lorakit code)."""
    x64, a64, b64 = (t.detach().double().cpu().requires_grad_(True) for t in (x, a, bb))
    y = x64 @ w.double().cpu().t() + s * (x64 @ a64.t()) @ b64.t()
    if b is not None:
        y = y + b.double().cpu()
    y.backward(g.double().cpu())
    return y.detach(), x64.grad, a64.grad, b64.grad


def run(fn, x, w, b, a, bb, s, g):
    """Output and grads (x, A, B) of ``fn`` after one backward with upstream ``g``."""
    for t in (x, a, bb):
        t.grad = None
    y = fn(x, w, b, a, bb, s)
    y.backward(g)
    return y.detach(), x.grad, a.grad, bb.grad


def rel_err(got, want):
    got, want = got.detach().double().cpu(), want.double().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def assert_matches(got, want, tol):
    names = ("y", "grad_x", "grad_A", "grad_B")
    for name, gt, wt in zip(names, got, want):
        assert gt is not None, f"{name} missing"
        assert gt.shape == wt.shape, (name, gt.shape, wt.shape)
        err = rel_err(gt, wt)
        assert err < tol, f"{name}: relative error {err:.3g} >= {tol}"


# ------------------------------------------------------------------------------------------------ CPU (torch path)


def test_cpu_is_not_the_triton_path():
    assert lk.available("cpu") is False
    assert lk.available(torch.zeros(1)) is False


@pytest.mark.parametrize("rank", [1, 4, 16])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape_x", [(13, 24), (2, 7, 24)])
def test_matches_fp64_reference(shape_x, with_bias, rank):
    x, w, b, a, bb, g = make(shape_x, 20, rank, bias=with_bias)
    s = 16.0 / rank
    got = run(fused_lora_linear, x, w, b, a, bb, s, g)
    want = reference(x, w, b, a, bb, s, g)
    assert got[0].shape == (*shape_x[:-1], 20)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float32 and got[3].dtype == torch.float32
    assert_matches(got, want, 1e-5)


def test_fp64_inputs_are_exact_to_fp64_precision():
    x, w, b, a, bb, g = make((3, 5, 32), 24, 8, dtype=torch.float64)
    assert_matches(run(fused_lora_linear, x, w, b, a, bb, 0.75, g), reference(x, w, b, a, bb, 0.75, g), 1e-12)


def test_zero_b_gives_the_base_linear_and_a_nonzero_b_gradient():
    x, w, b, a, bb, g = make((9, 16), 12, 4)
    with torch.no_grad():
        bb.zero_()  # how a fresh LoRA starts
    y, gx, ga, gb = run(fused_lora_linear, x, w, b, a, bb, 2.0, g)
    torch.testing.assert_close(y, torch.nn.functional.linear(x.detach(), w, b), rtol=1e-6, atol=1e-6)
    assert ga.abs().max() == 0 and gb.abs().max() > 0
    assert_matches((y, gx, ga, gb), reference(x, w, b, a, bb, 2.0, g), 1e-5)


def test_only_needed_gradients_are_computed():
    x, w, b, a, bb, g = make((6, 16), 10, 4)
    want = reference(x, w, b, a, bb, 0.5, g)
    x.requires_grad_(False)
    y = fused_lora_linear(x, w, b, a, bb, 0.5)
    y.backward(g)
    assert x.grad is None
    assert rel_err(a.grad, want[2]) < 1e-5 and rel_err(bb.grad, want[3]) < 1e-5
    # frozen LoRA (e.g. a LoRA stacked under the one being trained): only x gets a gradient
    x.requires_grad_(True)
    a.requires_grad_(False)
    bb.requires_grad_(False)
    y = fused_lora_linear(x, w, b, a, bb, 0.5)
    y.backward(g)
    assert rel_err(x.grad, want[1]) < 1e-5


@pytest.mark.parametrize("shape_x", [(11, 24), (2, 5, 24)])
def test_under_non_reentrant_checkpoint(shape_x):
    x, w, b, a, bb, g = make(shape_x, 18, 4)

    def ckpt(x, w, b, a, bb, s):
        return checkpoint(fused_lora_linear, x, w, b, a, bb, s, use_reentrant=False)

    got = run(ckpt, x, w, b, a, bb, 1.5, g)
    plain = run(fused_lora_linear, x, w, b, a, bb, 1.5, g)
    for gt, pt in zip(got, plain):
        assert torch.equal(gt, pt)  # a pure function: the recomputation is bit-identical on the CPU
    assert_matches(got, reference(x, w, b, a, bb, 1.5, g), 1e-5)


def test_cpu_autocast_bf16_casts_x_and_keeps_lora_grads_fp32():
    x, w, b, a, bb, g = make((2, 8, 32), 24, 4)
    w, b = w.bfloat16(), b.bfloat16()  # frozen bf16 base, fp32 LoRA weights, fp32 activations
    want = reference(x, w, b, a, bb, 1.0, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused_lora_linear(x, w, b, a, bb, 1.0)
    assert y.dtype == torch.bfloat16
    y.backward(g.bfloat16())
    assert x.grad.dtype == torch.float32 and a.grad.dtype == torch.float32 and bb.grad.dtype == torch.float32
    assert_matches((y, x.grad, a.grad, bb.grad), want, 3e-2)


def test_frozen_weight_or_bias_requiring_grad_is_refused():
    x, w, b, a, bb, g = make((4, 8), 6, 2)
    with pytest.raises(ValueError, match="weight and bias are frozen"):
        fused_lora_linear(x, w.requires_grad_(True), b, a, bb, 1.0)
    w.requires_grad_(False)
    with pytest.raises(ValueError, match="weight and bias are frozen"):
        fused_lora_linear(x, w, b.requires_grad_(True), a, bb, 1.0)
    with torch.no_grad():  # inference with a trainable-looking base is fine
        fused_lora_linear(x, w, b, a, bb, 1.0)


@pytest.mark.parametrize("case, match", [
    ("x_k", "x's last dim"),
    ("a_shape", r"lora_a must be \[rank, 8\]"),
    ("b_shape", r"lora_b must be \[6, 2\]"),
    ("bias_shape", r"bias must be \[6\]"),
    ("int_x", "x has dtype torch.int64"),
    ("weight_3d", "weight must be 2-D"),
    ("scale", "scale must be finite"),
])
def test_bad_inputs_raise_one_clear_value_error(case, match):
    x, w, b, a, bb, _ = make((4, 8), 6, 2)
    args = dict(x=x, weight=w, bias=b, lora_a=a, lora_b=bb, scale=1.0)
    if case == "x_k":
        args["x"] = torch.randn(4, 9)
    elif case == "a_shape":
        args["lora_a"] = torch.randn(2, 7)
    elif case == "b_shape":
        args["lora_b"] = torch.randn(6, 3)
    elif case == "bias_shape":
        args["bias"] = torch.randn(5)
    elif case == "int_x":
        args["x"] = torch.ones(4, 8, dtype=torch.long)
    elif case == "weight_3d":
        args["weight"] = torch.randn(6, 8, 1)
    elif case == "scale":
        args["scale"] = float("nan")
    with pytest.raises(ValueError, match=match):
        fused_lora_linear(**args)


def test_torch_compile_fullgraph_traces_the_cpu_path():
    x, w, b, a, bb, g = make((2, 6, 16), 12, 4)
    compiled = torch.compile(fused_lora_linear, fullgraph=True, backend="aot_eager")
    got = run(compiled, x, w, b, a, bb, 0.5, g)
    assert_matches(got, reference(x, w, b, a, bb, 0.5, g), 1e-5)


def test_lora_matmul_torch_path_takes_any_strides():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(12, 7, generator=gen).t()        # [7, 12] view with stride (1, 7)
    q = torch.randn(9, 12, generator=gen).t()        # [12, 9] as Wᵀ
    h = torch.randn(3, 7, generator=gen).t()
    z = torch.randn(9, 3, generator=gen).t()
    bias = torch.randn(9, generator=gen)
    want = p.double() @ q.double() + h.double() @ z.double() + bias.double()
    assert rel_err(lk.lora_matmul(p, q, h, z, bias), want) < 1e-6


# ------------------------------------------------------------------------------------------------ CUDA (Triton path)

BF16_TOL = 2e-2  # relative to the largest reference value: bf16 inputs, one bf16 rounding of the output


def _cuda_case(shape_x, n, r, *, bias=True, seed=0):
    x, w, b, a, bb, g = make(shape_x, n, r, bias=bias, seed=seed, device="cuda")
    return x, w.bfloat16(), (b.bfloat16() if b is not None else None), a, bb, g.bfloat16()


def _autocast_fused(x, w, b, a, bb, s):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return fused_lora_linear(x, w, b, a, bb, s)


@pytest.mark.parametrize("shape_x, n, r, with_bias", [
    ((256, 512), 384, 16, True),
    ((77, 96), 200, 3, True),       # nothing a multiple of a block; R padded 3 -> 16
    ((2, 45, 96), 200, 3, False),
    ((130, 64), 48, 1, True),
    ((64, 128), 136, 33, True),     # R padded 33 -> 64
    ((40, 64), 72, 128, False),     # the largest rank the kernel takes
], ids=["square", "odd", "odd-3d", "rank1", "rank33", "rank128"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_triton_path_matches_fp32_reference(shape_x, n, r, with_bias):
    assert lk.available("cuda"), "triton is not importable on this CUDA machine"
    x, w, b, a, bb, g = _cuda_case(shape_x, n, r, bias=with_bias)
    got = run(_autocast_fused, x, w, b, a, bb, 2.0, g)
    assert got[0].dtype == torch.bfloat16 and x.grad.dtype == torch.float32
    assert a.grad.dtype == torch.float32 and bb.grad.dtype == torch.float32
    assert_matches(got, reference(x, w, b, a, bb, 2.0, g), BF16_TOL)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_kernel_alone_on_strided_operands():
    gen = torch.Generator(device="cuda").manual_seed(3)
    for dtype in (torch.bfloat16, torch.float16):
        def r(*s):
            return torch.randn(*s, generator=gen, device="cuda", dtype=dtype)
        w = r(201, 96)
        h = r(77, 5)
        z = r(201, 5).t()
        bias = torch.randn(201, generator=gen, device="cuda")
        # P transposed (stride (1, 77)) or a transposed slice with an aligned stride (1, 128); Q as the Wᵀ view,
        # a contiguous [K, N], or a column slice of a wider matrix (N = 201 of 256: unaligned N, aligned stride)
        for p in (r(96, 77).t(), r(96, 128)[:, :77].t(), r(77, 96)):
            for q in (w.t(), r(96, 201), r(96, 256)[:, :201]):
                out = torch.ops.lorakit.lora_matmul(p, q, h, z, bias)
                assert out.dtype == dtype and out.shape == (77, 201)
                want = p.double() @ q.double() + h.double() @ z.double() + bias.double()
                assert rel_err(out, want) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_fp16_and_plain_bf16_without_autocast():
    for dtype in (torch.float16, torch.bfloat16):
        x, w, b, a, bb, g = make((70, 96), 112, 8, device="cuda")
        xs = x.detach().to(dtype).requires_grad_(True)
        got = run(fused_lora_linear, xs, w.to(dtype), b.to(dtype), a, bb, 1.0, g.to(dtype))
        assert got[0].dtype == dtype and xs.grad.dtype == dtype
        assert_matches(got, reference(xs, w.to(dtype), b.to(dtype), a, bb, 1.0, g), BF16_TOL)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_rank_above_limit_and_fp32_take_the_torch_path():
    x, w, b, a, bb, g = make((40, 64), 48, lk.MAX_RANK + 1, device="cuda")
    assert_matches(run(_autocast_fused, x, w.bfloat16(), b, a, bb, 0.1, g), reference(x, w, b, a, bb, 0.1, g),
                   BF16_TOL)
    x, w, b, a, bb, g = make((40, 64), 48, 4, device="cuda")
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        assert_matches(run(fused_lora_linear, x, w, b, a, bb, 0.1, g), reference(x, w, b, a, bb, 0.1, g), 1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_under_checkpoint():
    x, w, b, a, bb, g = _cuda_case((3, 50, 96), 200, 16)

    def ckpt(x, w, b, a, bb, s):
        return checkpoint(_autocast_fused, x, w, b, a, bb, s, use_reentrant=False)

    assert_matches(run(ckpt, x, w, b, a, bb, 1.0, g), reference(x, w, b, a, bb, 1.0, g), BF16_TOL)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape_x, n, r", [((2, 64, 256), 384, 16), ((77, 96), 200, 3)], ids=["3d", "odd"])
def test_cuda_torch_compile_fullgraph(shape_x, n, r):
    torch._dynamo.reset()
    x, w, b, a, bb, g = _cuda_case(shape_x, n, r)
    compiled = torch.compile(_autocast_fused, fullgraph=True)
    got = run(compiled, x, w, b, a, bb, 0.5, g)
    assert_matches(got, reference(x, w, b, a, bb, 0.5, g), BF16_TOL)
    eager = run(_autocast_fused, x, w, b, a, bb, 0.5, g)
    assert_matches(got, eager, 1e-2)
