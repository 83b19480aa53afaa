"""Exported FLUX.1 LoRA files, loaded by diffusers, reproduce lorakit's LoRA-injected transformer."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from lorakit.models.base import LoraModule
from lorakit.models.flux1 import lora_format
from lorakit.models.flux1.load import tiny_models
from tests.family_fixtures import train_like

NET = SimpleNamespace(rank=4, alpha=2.0, module_ranks={}, train_blocks="all", double_block_indices=None,
                      single_block_indices=None)


def _inputs(model, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    n_img, n_txt = 16, 6
    ids = torch.stack([torch.zeros(n_img), torch.arange(n_img).div(4, rounding_mode="floor").float(),
                       torch.arange(n_img).remainder(4).float()], dim=1)
    kw = dict(hidden_states=torch.randn(1, n_img, cfg.in_channels, generator=g),
              encoder_hidden_states=torch.randn(1, n_txt, cfg.joint_attention_dim, generator=g),
              pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
              timestep=torch.tensor([0.6]), img_ids=ids, txt_ids=torch.zeros(n_txt, 3), return_dict=False)
    if cfg.guidance_embeds:
        kw["guidance"] = torch.tensor([3.5])
    return kw


def _pipeline_with(transformer):
    from diffusers import FluxPipeline
    return FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _check_kohya(base, targets, alpha_of):
    nd, ns = base.config.num_layers, base.config.num_single_layers
    outs = {n: m.out_features for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    ours = copy.deepcopy(base)
    lora = train_like(ours, targets, alpha_of)
    kohya = lora_format.to_kohya({"transformer": lora}, outs, nd, ns)
    theirs = copy.deepcopy(base)
    _pipeline_with(theirs).load_lora_weights({k: v.clone() for k, v in kohya.items()})
    x = _inputs(base)
    with torch.no_grad():
        want, got, plain = ours(**x)[0], theirs(**x)[0], base(**x)[0]
    assert _rel(plain, want) > 1e-2                  # the LoRA really changes the output
    assert _rel(got, want) <= 1e-4


def _no_linear1(targets):
    """diffusers' kohya converter hard-codes linear1 = [3072]*3 + [12288]: tiny widths cannot take it."""
    skip = (".attn.to_q", ".attn.to_k", ".attn.to_v", ".proj_mlp")
    return {p: r for p, r in targets.items() if not (p.startswith("single_") and p.endswith(skip))}


@pytest.mark.parametrize("unequal", [False, True])
def test_kohya_export_loads_in_diffusers_tiny(unequal):
    base = tiny_models("dev", seed=5)["transformer"]
    targets = _no_linear1(lora_format.transformer_targets(NET, 2, 2))
    if unequal:
        targets = {p: 2 + i % 3 for i, p in enumerate(sorted(targets))}
        _check_kohya(base, targets, lambda p: 1.0 + len(p) % 4)
    else:
        _check_kohya(base, targets, lambda p: 2.0)


def test_diffusers_export_loads_exactly_tiny():
    base = tiny_models("dev", seed=6)["transformer"]
    targets = lora_format.transformer_targets(NET, 2, 2)          # every module, linear1 parts included
    targets = {p: 2 + i % 3 for i, p in enumerate(sorted(targets))}
    ours = copy.deepcopy(base)
    lora = train_like(ours, targets, lambda p: 1.5 + len(p) % 3)
    sd = lora_format.to_diffusers({"transformer": lora})
    assert all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in sd)
    theirs = copy.deepcopy(base)
    _pipeline_with(theirs).load_lora_weights(sd)
    x = _inputs(base)
    with torch.no_grad():
        assert _rel(theirs(**x)[0], ours(**x)[0]) <= 1e-5


@pytest.mark.slow
def test_kohya_linear1_at_full_width():
    """1 double + 1 single block at inner_dim 3072 (~530M params): single_blocks linear1 through diffusers."""
    from diffusers import FluxTransformer2DModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                      attention_head_dim=128, num_attention_heads=24, joint_attention_dim=32,
                                      pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    base.eval()
    targets = lora_format.transformer_targets(NET, 1, 1)
    _check_kohya(base, targets, lambda p: 2.0)
    linear1 = {p: r for p, r in targets.items() if p not in _no_linear1(targets)}
    _check_kohya(base, {p: 2 + i % 3 for i, p in enumerate(sorted(linear1))}, lambda p: 1.0 + len(p) % 4)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_te1_export_loads_in_diffusers(fmt):
    """lora_te1_text_model_* (kohya) and text_encoder.* (diffusers) give the merged CLIP-L exactly; the
    exported tensors are independent of the trained LoRA (diffusers' converter scales in place)."""
    m = tiny_models("dev", seed=7)
    clip = m["clip_l"]
    targets = lora_format.clip_targets(clip, 2)
    assert len(targets) == 12
    g = torch.Generator().manual_seed(0)
    mods = dict(clip.named_modules())
    lora = {p: LoraModule(torch.randn(2, mods[p].in_features, generator=g),
                          torch.randn(mods[p].out_features, 2, generator=g), 3.0) for p in targets}
    before = {p: (l.down.clone(), l.up.clone()) for p, l in lora.items()}
    merged = copy.deepcopy(clip)                       # independent reference: W += alpha/r · up @ down
    with torch.no_grad():
        for p, l in lora.items():
            dict(merged.named_modules())[p].weight += l.alpha / 2 * l.up @ l.down
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 4])
    sd = (lora_format.to_kohya({"te1": lora}, {}, 2, 2) if fmt == "kohya"
          else lora_format.to_diffusers({"te1": lora}))
    loaded = copy.deepcopy(clip)
    from diffusers import FluxPipeline
    FluxPipeline(scheduler=None, vae=None, text_encoder=loaded, tokenizer=None, text_encoder_2=None,
                 tokenizer_2=None, transformer=copy.deepcopy(m["transformer"])).load_lora_weights(sd)
    with torch.no_grad():
        want, got, plain = merged(ids).pooler_output, loaded(ids).pooler_output, clip(ids).pooler_output
    assert _rel(plain, want) > 1e-2 and _rel(got, want) <= 1e-5
    assert all(torch.equal(lora[p].down, d) and torch.equal(lora[p].up, u) for p, (d, u) in before.items())
