"""LoRA injection through peft: exact targets, zero-init up, the (alpha/r)·up@down maths, round trips, on/off."""


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ModelLoadError
from lorakit.lora import inject as inj
from lorakit.models.base import LoraModule


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Module()
        self.a.to_q = nn.Linear(8, 6)
        self.b = nn.Module()
        self.b.a = nn.Module()
        self.b.a.to_q = nn.Linear(6, 6)
        self.x = nn.Linear(6, 6)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.conv1 = nn.Conv2d(5, 4, 1)

    def forward(self, v, img):
        h = self.x(self.b.a.to_q(self.a.to_q(v)))
        return h, self.conv1(self.conv(img))


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 8, generator=g), torch.randn(2, 3, 7, 7, generator=g)


def _base_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_exact_targets_do_not_match_same_suffix():
    m = Toy()
    inj.inject_lora(m, {"a.to_q": 4}, 4.0, 0.0, seed=0)
    assert set(inj.extract_lora(m)) == {"a.to_q"}
    assert isinstance(m.b.a.to_q, nn.Linear) and not hasattr(m.b.a.to_q, "lora_A")


def test_rank_and_alpha_patterns_are_exact():
    m = Toy()
    # most common rank is 4; "a.to_q" differs — its pattern must not also catch "b.a.to_q"
    inj.inject_lora(m, {"x": 4, "b.a.to_q": 4, "a.to_q": 2},
                    {"x": 8.0, "b.a.to_q": 8.0, "a.to_q": 1.0}, 0.0, seed=0)
    got = {p: (lm.down.shape[0], lm.alpha) for p, lm in inj.extract_lora(m).items()}
    assert got == {"a.to_q": (2, 1.0), "b.a.to_q": (4, 8.0), "x": (4, 8.0)}


def test_freezes_base_and_returns_lora_params():
    m = Toy()
    params = inj.inject_lora(m, {"a.to_q": 4, "conv": 2}, 2.0, 0.0, seed=0)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"a.to_q.lora_A.default.weight", "a.to_q.lora_B.default.weight",
                         "conv.lora_A.default.weight", "conv.lora_B.default.weight"}
    assert {id(p) for p in params} == {id(p) for n, p in m.named_parameters() if p.requires_grad}


def test_bad_targets():
    with pytest.raises(ValueError, match="not found"):
        inj.inject_lora(Toy(), {"nope": 4}, 4.0, 0.0)
    with pytest.raises(ValueError, match="only Linear and Conv2d"):
        inj.inject_lora(Toy(), {"b": 4}, 4.0, 0.0)


def test_zero_init_output_unchanged_and_seeded_down():
    m = Toy()
    v, img = _inputs()
    with torch.no_grad():
        ref = m(v, img)
    state = torch.random.get_rng_state()
    inj.inject_lora(m, {"a.to_q": 4, "conv": 2}, 4.0, 0.0, seed=123)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded init leaves the global stream alone
    with torch.no_grad():
        out = m(v, img)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    loras = inj.extract_lora(m)
    assert torch.count_nonzero(loras["a.to_q"].up) == 0 and torch.count_nonzero(loras["a.to_q"].down) > 0
    m2 = Toy()
    inj.inject_lora(m2, {"a.to_q": 4, "conv": 2}, 4.0, 0.0, seed=123)
    assert torch.equal(inj.extract_lora(m2)["conv"].down, loras["conv"].down)
    # kaiming-uniform(a=√5) bound = 1/√fan_in
    assert loras["a.to_q"].down.abs().max() <= 1 / 8 ** 0.5


def _randomize(m):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_output_is_base_plus_scaled_up_down():
    m = Toy()
    base = _base_weights(m)
    inj.inject_lora(m, {"a.to_q": 4, "conv": 2}, {"a.to_q": 3.0, "conv": 5.0}, 0.0, seed=0)
    _randomize(m)
    loras = inj.extract_lora(m)
    v, img = _inputs()
    with torch.no_grad():
        out_lin, out_conv = m(v, img)
    # Linear: W' = W + (alpha/r)·up@down
    lq = loras["a.to_q"]
    w = base["a.to_q.weight"] + (3.0 / 4) * lq.up @ lq.down
    h = F.linear(v, w, base["a.to_q.bias"])
    h = F.linear(F.linear(h, base["b.a.to_q.weight"], base["b.a.to_q.bias"]), base["x.weight"], base["x.bias"])
    torch.testing.assert_close(out_lin, h, rtol=1e-5, atol=1e-5)
    # Conv 3×3 with 1×1 up: delta kernel = up ∘ down
    lc = loras["conv"]
    assert lc.down.shape == (2, 3, 3, 3) and lc.up.shape == (5, 2, 1, 1)
    delta = torch.einsum("or,rikl->oikl", lc.up[:, :, 0, 0], lc.down)
    c = F.conv2d(img, base["conv.weight"] + (5.0 / 2) * delta, base["conv.bias"], padding=1)
    c = F.conv2d(c, base["conv1.weight"], base["conv1.bias"])
    torch.testing.assert_close(out_conv, c, rtol=1e-5, atol=1e-5)


def test_extract_load_round_trip_and_alpha_change():
    m = Toy()
    inj.inject_lora(m, {"a.to_q": 4, "conv": 2}, 4.0, 0.0, seed=0)
    _randomize(m)
    saved = inj.extract_lora(m)
    v, img = _inputs()
    with torch.no_grad():
        ref = m(v, img)
    m2 = Toy()
    m2.load_state_dict({k.replace(".base_layer", ""): t for k, t in m.state_dict().items() if "lora_" not in k})
    inj.inject_lora(m2, {"a.to_q": 4, "conv": 2}, 4.0, 0.0, seed=99)
    inj.load_lora_into(m2, saved)
    with torch.no_grad():
        out = m2(v, img)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    back = inj.extract_lora(m2)
    assert all(torch.equal(back[k].down, saved[k].down) and torch.equal(back[k].up, saved[k].up) for k in saved)
    # halving alpha halves the LoRA delta
    half = {k: LoraModule(down=lm.down, up=lm.up, alpha=lm.alpha / 2) for k, lm in saved.items()}
    inj.load_lora_into(m2, half)
    with torch.no_grad():
        out_half = m2(v, img)
        inj.enable_lora(m2, False)
        base = m2(v, img)
        inj.enable_lora(m2, True)
    torch.testing.assert_close(out_half[1] - base[1], (ref[1] - base[1]) / 2, rtol=1e-4, atol=1e-5)
    assert inj.extract_lora(m2)["conv"].alpha == 2.0


def test_load_errors():
    m = Toy()
    inj.inject_lora(m, {"a.to_q": 4}, 4.0, 0.0)
    good = inj.extract_lora(m)["a.to_q"]
    with pytest.raises(ModelLoadError, match="'x' .*not in the model"):
        inj.load_lora_into(m, {"a.to_q": good, "x": good})
    with pytest.raises(ModelLoadError, match="do not fit"):
        inj.load_lora_into(m, {"a.to_q": LoraModule(down=torch.zeros(2, 8), up=torch.zeros(6, 2), alpha=1.0)})
    with pytest.raises(ModelLoadError, match="missing"):
        inj.load_lora_into(m, {})


def test_disable_and_scale():
    m = Toy()
    v, img = _inputs()
    with torch.no_grad():
        base = m(v, img)
    inj.inject_lora(m, {"a.to_q": 4, "conv": 2}, 4.0, 0.0, seed=0)
    _randomize(m)
    with torch.no_grad():
        full = m(v, img)
        assert not torch.allclose(full[1], base[1])
        with inj.lora_disabled(m):
            off = m(v, img)
        again = m(v, img)
        inj.set_lora_scale(m, 0.0)
        zero = m(v, img)
        inj.set_lora_scale(m, 0.5)
        half = m(v, img)
        inj.set_lora_scale(m, 1.0)
    assert torch.equal(off[0], base[0]) and torch.equal(off[1], base[1])
    assert torch.equal(again[1], full[1])
    torch.testing.assert_close(zero[1], base[1])
    torch.testing.assert_close(half[1] - base[1], (full[1] - base[1]) / 2, rtol=1e-4, atol=1e-5)
    # re-enabling leaves the LoRA weights trainable
    assert all(p.requires_grad for n, p in m.named_parameters() if "lora_" in n)


def test_dropout_only_in_training():
    m = Toy()
    inj.inject_lora(m, {"a.to_q": 4}, 4.0, 0.5, seed=0)
    _randomize(m)
    v, img = _inputs()
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(v, img)[0], m(v, img)[0])
    m.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(m(v, img)[0], m(v, img)[0])


def test_lora_weights_stay_fp32_on_a_bf16_base():
    """peft casts adapters to the base dtype; lorakit keeps fp32 master weights (mixed precision via autocast)."""
    base = torch.nn.Sequential(torch.nn.Linear(8, 8)).to(torch.bfloat16)
    params = inj.inject_lora(base, {"0": 2}, 2.0, 0.0)
    assert params and all(p.dtype == torch.float32 for p in params)
    assert base[0].base_layer.weight.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = base(torch.randn(3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


class _QKV(nn.Module):
    """One activation read by three projections, as attention's q/k/v."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(64, 32), nn.Linear(64, 32), nn.Linear(64, 32)

    def forward(self, x):
        return self.q(x) * self.k(x) + self.v(x)


def test_under_autocast_skips_the_input_round_trip_with_identical_results():
    """On a bf16 base under autocast, peft casts each LoRA layer's input to fp32 and autocast casts it straight back
    to bf16 for the down-projection, which saves that copy for backward. ``under_autocast`` skips the round trip:
    same outputs and gradients bit for bit, no activation-sized copies, and q/k/v save their shared input once."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.copies = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) == (256, 64):
                self.copies += 1
            return func(*args, **(kwargs or {}))

    results, saved, copies = [], [], []
    for skip in (False, True):
        torch.manual_seed(0)
        base = _QKV().to(torch.bfloat16)
        params = inj.inject_lora(base, {"q": 4, "k": 4, "v": 4}, 4.0, 0.0, seed=3, under_autocast=skip)
        with torch.no_grad():
            for p in params:  # a non-zero up-projection, so the LoRA side shows in every output and gradient
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
        x = torch.randn(256, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).requires_grad_(True)
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with Record() as rec, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            out = base(x)
        out.float().square().sum().backward()
        results.append([out.detach(), x.grad] + [p.grad for p in params])
        saved.append(sum(storages.values()))
        copies.append(rec.copies)
    for a, b in zip(*results):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert copies == [6, 0]  # to fp32 and back, for each of q, k, v
    assert saved[0] - saved[1] == 2 * 256 * 64 * 2  # three bf16 copies of the input saved, against x itself once


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_lean_forward_matches_peft_without_the_lora_sized_temporaries(autocast):
    """Eager LoRA Linears accumulate the up-projection onto the base output in place (one addmm, the scale as its
    alpha) instead of peft's separate up-projection output, scale and add: outputs and gradients match peft's own
    forward (fp32: to rounding; bf16: to bf16 rounding), with no element-wise op left on a tokens × out tensor."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.elementwise = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor) and tuple(out.shape)[-1] == 32 \
                    and out.numel() >= 128 * 32:
                self.elementwise.append(func.__name__)
            return out

    results, counts = [], []
    for lean in (False, True):
        torch.manual_seed(0)
        base = _QKV().to(torch.bfloat16 if autocast else torch.float32)
        params = inj.inject_lora(base, {"q": 4, "k": 4, "v": 4}, 8.0, 0.0, seed=3, under_autocast=autocast)
        if not lean:
            for layer in (base.q, base.k, base.v):
                del layer.forward  # peft's own forward
        with torch.no_grad():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
        x = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(1))
        x = x.to(torch.bfloat16 if autocast else torch.float32).requires_grad_(True)
        with Record() as rec, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = base(x)
        assert out.shape == (2, 64, 32)
        out.float().square().sum().backward()
        results.append([out.detach().float(), x.grad.float()] + [p.grad for p in params])
        counts.append(len(rec.elementwise))
    for a, b in zip(*results):
        if autocast:  # one rounding of base + LoRA against peft's three: compare whole tensors
            assert float((b - a).norm() / a.norm()) < 1e-2  # bf16 keeps 8 bits: 2^-8 = 3.9e-3
        else:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert counts[0] >= 6 and counts[1] == 2  # peft: scale + add per layer; lean: the block's own mul and add only


def test_lean_forward_steps_aside_when_off_scaled_or_compiled():
    """Adapters switched off and a changed scale behave as peft's; under torch.compile peft's forward is traced."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    params = inj.inject_lora(model, {"0": 4}, 4.0, 0.0, seed=1)
    with torch.no_grad():
        params[1].normal_(0, 0.5)
    x = torch.randn(5, 16)
    layer = model[0]
    base = layer.base_layer(x)
    lora = (x @ params[0].T @ params[1].T) * 1.0  # alpha 4 / rank 4
    torch.testing.assert_close(model(x), base + lora)
    with inj.lora_disabled(model):
        torch.testing.assert_close(model(x), base)
    inj.set_lora_scale(model, 0.5)
    torch.testing.assert_close(model(x), base + 0.5 * lora)
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(x), base + 0.5 * lora)
