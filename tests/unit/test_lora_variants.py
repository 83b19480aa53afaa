"""LoRA variants (issue 23): LoHa, LoKr and DoRA trained on the tiny SDXL, written in the LyCORIS layout.

The central check: the exported file, applied through ComfyUI's loader maths re-derived in
:mod:`tests.unit.comfyui_rederived` (its key map, load_lora, calculate_weight and weight_decompose), gives every
patched layer the output the trained layer gives (peft's LoHa/LoKr forward, lorakit's DoRA forward): an
independent computation on each side. Then: the loss falls in a short run, resume carries the variant, verify and
inspect know it, the tools and the fast paths refuse in one line.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from lorakit.config.schema import Config
from lorakit.errors import ConfigError, LorakitError
from lorakit.lora.inject import extract_lora, load_lora_into
from lorakit.lora.io import load_lora_file, save_safetensors_atomic
from lorakit.models.base import Batch
from lorakit.models.sdxl import Adapter
from lorakit.models.sdxl.adapter import kohya_name
from lorakit.models.sdxl.load import write_tiny_checkpoint
from lorakit.train import placement
from tests.unit import comfyui_rederived as comfy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=2)
    cfg = _cfg(paths, "lora")
    loaded = Adapter(cfg)
    loaded.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    loaded.te1, loaded.te2  # read once (lazily loaded parts)
    return {**paths, "adapter": loaded, "batch": _batch(loaded)}


def _cfg(tiny, algo, factor=-1, rank=4, te=False):
    cfg = Config()
    cfg.model.family, cfg.model.checkpoint, cfg.model.config_dir = "sdxl", str(tiny["checkpoint"]), str(tiny["config"])
    cfg.network.type, cfg.network.rank, cfg.network.alpha = algo, rank, 2.0
    cfg.network.conv_rank, cfg.network.conv_alpha = 2, 1.0   # the 3x3 convolutions too (LyCORIS' conv layers)
    cfg.network.factor, cfg.network.train_text_encoder = factor, te
    cfg.memory.gradient_checkpointing = False
    return cfg


def _adapter(tiny, cfg):
    """A fresh adapter on copies of the loaded tiny SDXL (loading it again costs seconds)."""
    src = tiny["adapter"]
    ad = Adapter(cfg)
    ad.attach(copy.deepcopy(src.unet), src.vae, copy.deepcopy(src.te1), copy.deepcopy(src.te2), src.tokenizer1,
              src.tokenizer2, src.scheduler_config)
    return ad


_TRAINED: dict = {}


def _trained(tiny, cfg, seed=5):
    """The tiny SDXL with the variant injected and every trainable tensor moved (a trained-looking network); one per
    (type, factor, text encoder) and module, shared by the tests below (each leaves it as it found it)."""
    key = (tiny["checkpoint"], cfg.network.type, cfg.network.factor, cfg.network.train_text_encoder, seed)
    if key not in _TRAINED:
        _TRAINED[key] = _train_like(tiny, cfg, seed)
    return _TRAINED[key]


def _train_like(tiny, cfg, seed):
    ad = _adapter(tiny, cfg)
    modules, targets, groups = placement.inject(cfg, ad, torch.float32, log=lambda s: None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in groups:
            for p in group["params"]:
                p.add_(torch.randn(p.shape, generator=g) * 0.2 * (p.abs().mean() + 0.05))
    return ad, modules, targets


def _probe(layer, base_weight, bias, x):
    """The trained layer's output and the output of the plain op with ``base_weight``."""
    conv = isinstance(getattr(layer, "base_layer", layer), torch.nn.Conv2d)
    if conv:
        b = layer.base_layer
        return layer(x), F.conv2d(x, base_weight, bias, b.stride, b.padding, b.dilation, b.groups)
    return layer(x), F.linear(x, base_weight, bias)


@pytest.mark.parametrize("algo,factor", [("loha", -1), ("lokr", 2), ("lokr", -1), ("dora", -1)])
def test_comfyui_applies_the_exported_file_as_trained(tiny, tmp_path, algo, factor):
    cfg = _cfg(tiny, algo, factor, te=algo == "dora")
    ad, modules, targets = _trained(tiny, cfg)
    lora = {c: extract_lora(modules[c]) for c in targets}
    tensors = ad.export(lora, "kohya")
    path = tmp_path / f"{algo}.safetensors"
    save_safetensors_atomic(path, tensors, {})
    file, _ = load_lora_file(path)
    suffixes = {k.rsplit(".", 1)[1] for k in file}
    want = {"loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
            "lokr": {"lokr_w1", "alpha"}, "dora": {"weight", "alpha", "dora_scale"}}[algo]
    assert want <= suffixes and not (suffixes & {"lora_A", "lora_B"})
    if algo == "lokr":  # factor 2: w2 rank-decomposed everywhere; -1: some layers keep both factors full
        split = {k.rsplit(".", 1)[0] for k in file if k.endswith(".lokr_w2_a")}
        full = {k.rsplit(".", 1)[0] for k in file if k.endswith(".lokr_w2")}
        assert split and (not full if factor == 2 else full)

    # ComfyUI: the checkpoint under its state-dict names, its key map, load_lora, calculate_weight
    from safetensors.torch import load_file

    unet_sd, clip_sd = comfy.comfy_layout(load_file(str(tiny["checkpoint"])))
    key_map = {**comfy.model_lora_keys_unet(unet_sd), **comfy.model_lora_keys_clip(clip_sd)}
    patches, not_loaded = comfy.load_lora(file, key_map)
    assert not not_loaded, sorted(not_loaded)[:5]
    assert {p[0] for p in patches.values()} == {"lora" if algo == "dora" else algo}
    if algo == "dora":
        assert all(p[3] is not None and p[3].shape[0] == 1 for p in patches.values())  # the input axis
    weights = {**unet_sd, **clip_sd}
    g = torch.Generator().manual_seed(9)
    checked = 0
    for component, paths in targets.items():
        module = modules[component]
        for path_ in paths:
            name = kohya_name(component, path_, ad.unet.config)
            target = key_map[name]
            patched = comfy.apply_lora(weights[target].clone(), patches[target], 1.0)
            layer = module.get_submodule(path_)
            base = layer.base_layer
            shape = (2, base.in_channels, 5, 5) if isinstance(base, torch.nn.Conv2d) else (3, base.in_features)
            x = torch.randn(shape, generator=g)
            with torch.no_grad():
                trained, comfy_out = _probe(layer, patched, base.bias, x)
                plain = _probe(layer, weights[target], base.bias, x)[1]
            assert not torch.allclose(trained, plain, atol=1e-4), name  # the network does something
            torch.testing.assert_close(comfy_out, trained, rtol=1e-4, atol=2e-5, msg=name)
            checked += 1
    assert checked == len(patches) > 40


def _batch(ad, n=1):
    text = ad.encode_text(["a photo of a zkx"] * n)
    return Batch(latents=torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(1)), text=text,
                 original_sizes=[(64, 64)] * n, crop_top_lefts=[(0, 0)] * n, target_sizes=[(64, 64)] * n,
                 loss_weight=torch.ones(n))


@pytest.mark.parametrize("algo,lr", [("loha", 3e-2), ("lokr", 1e-2), ("dora", 1e-2)])
def test_the_loss_falls_in_a_short_run(tiny, algo, lr):
    """6 AdamW steps on one fixed noised batch of the tiny SDXL: the denoising loss falls by more than 8 % for
    every variant (LoHa/LoKr/DoRA start as the base model, so step 0 is the base model's loss), and the base
    weights stay as they were."""
    cfg = _cfg(tiny, algo, factor=2)
    ad = _adapter(tiny, cfg)
    frozen = {k: v.clone() for k, v in ad.unet.state_dict().items()}
    batch = tiny["batch"]
    modules, targets, groups = placement.inject(cfg, ad, torch.float32, log=lambda s: None)
    params = [p for gr in groups for p in gr["params"]]
    noised = ad.noise(batch.latents, torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(2)),
                      batch, cfg.training, torch.Generator().manual_seed(3))
    with torch.no_grad():
        base_loss = F.mse_loss(tiny["adapter"].predict(noised, batch), noised.target).item()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(6):
        loss = F.mse_loss(ad.predict(noised, batch), noised.target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(base_loss, rel=1e-5)
    assert losses[-1] < 0.92 * losses[0], losses
    after = {k.replace(".base_layer", ""): v for k, v in ad.unet.state_dict().items()}
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # the base stays frozen


@pytest.mark.parametrize("algo,factor", [("loha", -1), ("lokr", -1), ("dora", -1)])
def test_resume_state_round_trip_is_exact(tiny, tmp_path, algo, factor):
    """The resume state (train/checkpoint) carries every variant's tensors (LoKr's rank too) back bit for bit into
    the injected layers; a state of another type is refused naming network.type."""
    from lorakit.train import checkpoint

    cfg = _cfg(tiny, algo, factor, te=algo == "dora")
    ad, modules, targets = _trained(tiny, cfg)
    lora = {c: extract_lora(modules[c]) for c in targets}
    checkpoint.save_state(tmp_path / "s", lora=lora, optimizer_state={}, scheduler_state={}, rng={}, data_state={},
                          step=3, config_fingerprint={})
    back = checkpoint.load_state(tmp_path / "s")["lora"]
    with torch.no_grad():  # the layers moved on since (a later step)
        for c in targets:
            for p in modules[c].parameters():
                if p.requires_grad:
                    p.mul_(0.5)
    for c in targets:
        load_lora_into(modules[c], back[c])
        again = extract_lora(modules[c])
        for p, m in lora[c].items():
            n = again[p]
            assert (n.algo, n.rank, n.alpha) == (m.algo, m.rank, m.alpha)
            assert n.extra.keys() == m.extra.keys() and all(torch.equal(n.extra[k], m.extra[k]) for k in m.extra)
            assert torch.equal(n.down, m.down) and torch.equal(n.up, m.up)
    other = {p: extract_lora(modules["unet"])[p] for p in list(targets["unet"])[:1]}
    for m in other.values():
        m.algo = "lokr" if algo != "lokr" else "loha"
    with pytest.raises(LorakitError, match="network.type"):
        load_lora_into(modules["unet"], other, strict=False)


def test_verify_inspect_and_metadata(tiny, tmp_path, capsys):
    from lorakit.cli import main
    from lorakit.lora.inspect import inspect_file
    from lorakit.lora.metadata import _network_args, variant_metadata

    cfg = _cfg(tiny, "lokr", factor=2)
    ad, modules, targets = _trained(tiny, cfg)
    lora = {c: extract_lora(modules[c]) for c in targets}
    path = tmp_path / "lokr.safetensors"
    save_safetensors_atomic(path, ad.export(lora, "kohya"), {})
    assert main(["verify", str(path), "--base", str(tiny["checkpoint"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    n = len(load_lora_file(path)[0])
    assert report["layout"] == "lycoris" and report["variants"] == ["lokr"] and report["ok"]
    assert report["loaders"]["comfyui"]["applied"] == report["loaders"]["forge"]["applied"] == n
    assert report["loaders"]["diffusers"]["unsupported"] == ["lokr"] == report["loaders"]["kohya"]["unsupported"]
    assert {m["rank"] for m in report["modules"]} == {2, 4}
    info = inspect_file(path)
    assert info["algos"] == {"lokr": len(report["modules"])} and set(info["ranks"]) == {2, 4}
    assert info["fits"]["sdxl"]["matched"] == info["modules"] == len(report["modules"])
    # metadata as LyCORIS' kohya module writes it
    assert variant_metadata(cfg) == {"ss_network_module": "lycoris.kohya"}
    assert _network_args(cfg) == {"conv_dim": "2", "conv_alpha": "1.0", "algo": "lokr", "factor": "2"}
    cfg.network.type = "dora"
    assert _network_args(cfg)["dora_wd"] == "True" and _network_args(cfg)["wd_on_output"] == "False"
    cfg.network.type = "lora"
    assert variant_metadata(cfg) == {}


def test_lora_tools_refuse_a_variant_file_in_one_line(tiny, tmp_path, capsys):
    from lorakit.cli import main

    cfg = _cfg(tiny, "dora", te=True)
    ad, modules, targets = _trained(tiny, cfg)
    path = tmp_path / "dora.safetensors"
    save_safetensors_atomic(path, ad.export({c: extract_lora(modules[c]) for c in targets}, "kohya"), {})
    for args in (["resize", str(path), "--rank", "2"], ["convert", str(path), "--to", "diffusers"],
                 ["merge", str(path), "--into", str(tiny["checkpoint"]), "-o", str(tmp_path / "m.safetensors")]):
        assert main(args) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "a LyCORIS dora file; this works on LoRA/LoCon files only" in err[0], err
    assert not (tmp_path / "m.safetensors").exists() and not list(tmp_path.glob("dora-*"))
    with pytest.raises(ValueError, match="save.format"):
        ad.export({c: extract_lora(modules[c]) for c in targets}, "diffusers")


@pytest.mark.parametrize("override,key", [
    ({"memory.fp8_base": True}, "memory.fp8_base"), ({"memory.compile": True}, "memory.compile"),
    ({"save.format": "diffusers"}, "save.format"), ({"network.weights": "x.safetensors"}, "network.weights"),
    ({"network.dropout": 0.1}, "network.dropout"), ({"model.family": "flux1"}, "network.type"),
])
def test_what_a_variant_cannot_go_with_is_refused_naming_the_key(override, key):
    from lorakit.config.validate import _check_variant

    cfg = Config()
    cfg.model.family, cfg.network.type = "sdxl", "loha"
    for k, v in override.items():
        section, name = k.split(".")
        setattr(getattr(cfg, section), name, v)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _check_variant(cfg, set())
    from lorakit.config.load import load_config

    data = {"model": {"family": "sdxl", "checkpoint": "x.safetensors"}, "data": {"dir": "/tmp"}}
    with pytest.raises(ConfigError, match=r'^network\.factor: only has an effect with network\.type = "lokr"'):
        load_config(None, data={**data, "network": {"type": "loha", "factor": 4}})
    assert load_config(None, data={**data, "network": {"type": "lokr", "factor": 4}}).network.factor == 4


@pytest.mark.parametrize("card", ["h100", "rtx4090"])
def test_the_automatic_plan_keeps_a_variant_eager_in_bf16_and_says_so(card):
    """On a GPU the plan would choose compile, CUDA graphs or float8 weights for LoRA; for a variant it plans eager
    bf16 weights and says so in one line (then the plan's own line)."""
    from lorakit.train import cards
    from tests.unit.test_autoplan import plan

    lora, _ = plan("sdxl", cards.card(card))
    assert lora.applied.memory.compile  # what a LoRA run gets on this card
    for algo in ("loha", "dora"):
        from tests.unit import test_autoplan

        cfg = test_autoplan.config("sdxl")
        cfg.network.type = algo
        lines: list[str] = []
        chosen = test_autoplan.autoplan.choose(cfg, test_autoplan.get_family("sdxl").SPEC, torch.nn.Module(), [], [],
                                               test_autoplan.swap.LOOKAHEAD, cards.card(card), log=lines.append,
                                               sizes=test_autoplan.sizes_of("sdxl"))
        m = chosen.applied.memory
        assert not (m.compile or m.cuda_graphs or m.fp8_base or m.fp8_compute)
        assert lines[0] == (f'plan: network.type = "{algo}" runs eager without fp8 weights (compile, CUDA graphs and '
                            "float8 are not built for its layers)")
        if algo == "loha":  # peft's LoHa keeps each layer's full-size delta weight for backward: checkpointed (planwalk)
            assert "every block checkpointed" in lines[1] and m.gradient_checkpointing and len(lines) == 3
        else:
            assert len(lines) == 2
