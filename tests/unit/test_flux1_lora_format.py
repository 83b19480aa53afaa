"""FLUX.1 LoRA names and fusing: golden kohya key list (full size, meta device) and exact fused deltas."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lorakit.errors import ConfigError
from lorakit.models.base import LoraModule
from lorakit.models.flux1 import configs, lora_format

GOLDEN = Path(__file__).parent / "golden" / "flux1_lora_keys.txt"


def net(**kw) -> SimpleNamespace:
    base = dict(rank=4, alpha=2.0, module_ranks={}, train_blocks="all", double_block_indices=None,
                single_block_indices=None, train_text_encoder=False)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture(scope="module")
def full_meta():
    from diffusers import FluxTransformer2DModel
    cfg = {k: v for k, v in configs.transformer_config("dev").items() if not k.startswith("_")}
    with torch.device("meta"):
        return FluxTransformer2DModel(**cfg)


def _zero_lora(model, targets, alpha=2.0):
    mods = dict(model.named_modules())
    return {p: LoraModule(down=torch.zeros(r, mods[p].in_features), up=torch.zeros(mods[p].out_features, r),
                          alpha=alpha) for p, r in targets.items()}


def _outs(model):
    return {n: m.out_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_golden_kohya_keys_full_size(full_meta):
    targets = lora_format.transformer_targets(net(), 19, 38)
    sd = lora_format.to_kohya({"transformer": _zero_lora(full_meta, targets)}, _outs(full_meta), 19, 38)
    modules = {k.split(".")[0] for k in sd}
    assert len(modules) == 304 and len(sd) == 912
    got = [f"{k} {list(v.shape)}" for k, v in sorted(sd.items())]
    assert got == GOLDEN.read_text().splitlines()
    # the §3.2 table, independently: widths of the real model at rank 4 (fused parts stack their ranks)
    table = {
        "double_blocks_7_img_attn_qkv": ([12, 3072], [9216, 12]),
        "double_blocks_7_txt_attn_proj": ([4, 3072], [3072, 4]),
        "double_blocks_7_img_mlp_0": ([4, 3072], [12288, 4]),
        "double_blocks_7_txt_mlp_2": ([4, 12288], [3072, 4]),
        "double_blocks_7_img_mod_lin": ([4, 3072], [18432, 4]),
        "single_blocks_37_linear1": ([16, 3072], [21504, 16]),
        "single_blocks_37_linear2": ([4, 15360], [3072, 4]),
        "single_blocks_37_modulation_lin": ([4, 3072], [9216, 4]),
    }
    for name, (down, up) in table.items():
        assert list(sd[f"lora_unet_{name}.lora_down.weight"].shape) == down
        assert list(sd[f"lora_unet_{name}.lora_up.weight"].shape) == up
        assert sd[f"lora_unet_{name}.alpha"].ndim == 0
    assert sorted(modules) == lora_format.kohya_module_names()


def _fused_delta(sd, name):
    down, up, alpha = sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"], sd[f"{name}.alpha"]
    return float(alpha) / down.shape[0] * up @ down


def _random_lora(model, targets, alphas, seed=0):
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    return {p: LoraModule(down=torch.randn(r, mods[p].in_features, generator=g),
                          up=torch.randn(mods[p].out_features, r, generator=g), alpha=alphas(p))
            for p, r in targets.items()}


@pytest.mark.parametrize("case", ["equal", "unequal"])
def test_fused_delta_equals_sum_of_parts(case):
    from lorakit.models.flux1.load import tiny_models
    from lorakit.models.flux1.convert import module_table
    model = tiny_models("dev")["transformer"]
    targets = lora_format.transformer_targets(net(), 2, 2)
    if case == "unequal":                        # different ranks and alphas inside one fused module
        targets = {p: (2 + i % 3) for i, p in enumerate(sorted(targets))}
        alphas = lambda p: 0.5 + (hash(p) % 5)   # noqa: E731
    else:
        alphas = lambda p: 3.0                   # noqa: E731  (alpha != rank 4)
    lora = _random_lora(model, targets, alphas)
    sd = lora_format.to_kohya({"transformer": lora}, _outs(model), 2, 2)
    mods = dict(model.named_modules())
    for m in module_table(2, 2, True):
        if not m.lora:
            continue
        # independent reference: each part's delta placed in its own rows of the fused weight
        blocks = [lora[p].alpha / lora[p].down.shape[0] * lora[p].up @ lora[p].down for p in m.parts]
        want = torch.cat(blocks, dim=0)
        assert want.shape[0] == sum(mods[p].out_features for p in m.parts)
        got = _fused_delta(sd, lora_format.kohya_name(m.bfl))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if case == "equal":                          # alpha scaled by the number of parts, weights unscaled
        assert float(sd["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 9.0
        assert float(sd["lora_unet_single_blocks_0_linear1.alpha"]) == 12.0


def test_partially_trained_fused_module_has_zero_rows():
    parts = [LoraModule(torch.ones(2, 3), torch.ones(4, 2), 2.0), None, None]
    down, up, alpha = lora_format.fuse(parts, [4, 4, 4])
    assert down.shape == (2, 3) and up.shape == (12, 2) and alpha == 2.0
    assert torch.all(up[4:] == 0)


def test_selection_by_blocks_indices_and_ranks():
    t = lora_format.transformer_targets(net(train_blocks="single", single_block_indices="0,2-3"), 19, 38)
    assert {p.split(".")[1] for p in t} == {"0", "2", "3"} and all(p.startswith("single_") for p in t)
    assert len(t) == 3 * 6                      # q, k, v, proj_mlp, proj_out, norm.linear per block
    t = lora_format.transformer_targets(net(module_ranks={"img_attn": 8, "txt_mod": 0, "single": 2}), 2, 2)
    assert t["transformer_blocks.0.attn.to_q"] == 8 and t["transformer_blocks.1.attn.to_out.0"] == 8
    assert "transformer_blocks.0.norm1_context.linear" not in t
    assert t["single_transformer_blocks.0.proj_mlp"] == 2 and t["single_transformer_blocks.0.norm.linear"] == 4
    assert t["transformer_blocks.0.ff_context.net.2"] == 4
    t = lora_format.transformer_targets(net(train_blocks="double", double_block_indices=[1]), 19, 38)
    assert len(t) == 14 and all(p.startswith("transformer_blocks.1.") for p in t)


@pytest.mark.parametrize("kw,msg", [({"double_block_indices": "0,40"}, "network.double_block_indices"),
                                    ({"single_block_indices": "x"}, "network.single_block_indices"),
                                    ({"module_ranks": {"img_attention": 4}}, "network.module_ranks"),
                                    ({"module_ranks": {"single": -1}}, "network.module_ranks.single")])
def test_bad_selection_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        lora_format.transformer_targets(net(**kw), 19, 38)


def test_te1_names_have_text_model():
    lora = {"te1": {"encoder.layers.3.self_attn.q_proj": LoraModule(torch.ones(2, 8), torch.ones(8, 2), 1.0)}}
    sd = lora_format.to_kohya(lora, {}, 0, 0)
    assert set(sd) == {f"lora_te1_text_model_encoder_layers_3_self_attn_q_proj.{s}"
                       for s in ("lora_down.weight", "lora_up.weight", "alpha")}
