"""FLUX.2 LoRA: targets, the ComfyUI layout against a re-derivation of ComfyUI's key map, files loaded by diffusers'
Flux2KleinPipeline.load_lora_weights reproducing lorakit's output, and full-size export key lists."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from lorakit.models.flux2 import configs, convert, keys, lora_format, tiny
from tests.family_fixtures import linear_outs, train_like

NET = SimpleNamespace(rank=4, alpha=2.0, module_ranks={}, train_blocks="all", double_block_indices=None,
                      single_block_indices=None)


def comfy_key_map(transformer) -> dict[str, str]:
    """ComfyUI's ``model_lora_keys_unet`` for a model it loaded from BFL weights: ``lora_unet_`` + the underscored
    path of every ``diffusion_model.*.weight`` (comfy/lora.py), re-derived from the BFL state dict."""
    sd = {"diffusion_model." + k: v for k, v in convert.diffusers_to_bfl(transformer.state_dict()).items()}
    return {"lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_"): k
            for k in sd if k.endswith(".weight")}


def _inputs(model, seed=0):
    from lorakit.models.flux2.maths import image_position_ids
    from lorakit.models.flux2.text import text_position_ids
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 16, cfg.in_channels, generator=g),
                encoder_hidden_states=torch.randn(1, 6, cfg.joint_attention_dim, generator=g),
                timestep=torch.tensor([0.6]), img_ids=image_position_ids(4, 4), txt_ids=text_position_ids(6),
                guidance=None, return_dict=False)


def test_targets_cover_the_block_linears_and_honour_selection():
    t = lora_format.transformer_targets(NET, 2, 3)
    assert len(t) == 2 * 12 + 3 * 2    # double: q,k,v,out, add_q/k/v, add_out, ff in/out, ff_context in/out
    assert "single_transformer_blocks.2.attn.to_qkv_mlp_proj" in t and "transformer_blocks.1.ff_context.linear_out" in t
    sel = SimpleNamespace(**{**vars(NET), "train_blocks": "single", "single_block_indices": "1",
                             "module_ranks": {"single": 8}})
    assert lora_format.transformer_targets(sel, 2, 3) == {"single_transformer_blocks.1.attn.to_qkv_mlp_proj": 8,
                                                          "single_transformer_blocks.1.attn.to_out": 8}
    from lorakit.errors import ConfigError
    with pytest.raises(ConfigError, match="img_mod"):
        lora_format.transformer_targets(SimpleNamespace(**{**vars(NET), "module_ranks": {"img_mod": 4}}), 2, 3)


@pytest.fixture(scope="module")
def trained():
    base = tiny.tiny_models(seed=4)["transformer"]
    model = copy.deepcopy(base)
    targets = lora_format.transformer_targets(NET, 2, 2)
    # uneven ranks/alphas on one fused q/k/v (the exact-fusing case), one part untrained
    targets["transformer_blocks.0.attn.to_k"] = 6
    del targets["transformer_blocks.1.attn.add_v_proj"]
    lora = train_like(model, targets, lambda p: 3.0 if p.endswith("to_k") else NET.alpha)
    outs = linear_outs(model)
    with torch.no_grad():
        want = model(**_inputs(model))[0]
    return SimpleNamespace(base=base, model=model, lora={"transformer": lora}, outs=outs, want=want)


def test_every_comfy_key_maps_and_none_is_left_out(trained):
    sd = lora_format.to_comfy(trained.lora, trained.outs, 2, 2)
    names = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in sd}
    kmap = comfy_key_map(trained.base)
    assert names <= set(kmap)
    bfl = convert.diffusers_to_bfl(trained.base.state_dict())
    for n in names:                       # shapes: up @ down has the shape of the weight ComfyUI patches
        w = bfl[kmap[n][len("diffusion_model."):]]
        assert (sd[n + ".lora_up.weight"].shape[0], sd[n + ".lora_down.weight"].shape[1]) == tuple(w.shape)
    assert len(names) == 2 * 8 + 2 * 2      # q/k/v fused into qkv: 8 per double block


def _pipeline(transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                              tokenizer=None, transformer=transformer)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_diffusers_load_lora_weights_reproduces_lorakit(trained, fmt):
    sd = (lora_format.to_comfy(trained.lora, trained.outs, 2, 2) if fmt == "kohya"
          else lora_format.to_diffusers(trained.lora))
    pipe = _pipeline(copy.deepcopy(trained.base))
    pipe.load_lora_weights({k: v.clone() for k, v in sd.items()})
    with torch.no_grad():
        got = pipe.transformer(**_inputs(pipe.transformer))[0]
        plain = trained.base(**_inputs(trained.base))[0]
    assert (trained.want - plain).abs().max() > 1e-3          # the LoRA changes the output
    assert torch.allclose(got, trained.want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size,count", [("klein-4b", 5 * 8 + 20 * 2), ("klein-9b", 8 * 8 + 24 * 2),
                                        ("dev", 8 * 8 + 48 * 2)])
def test_full_size_export_key_lists(size, count):
    nd, ns, _, _ = configs.SIZE_FACTS[size]
    names = lora_format.comfy_module_names(nd, ns)
    assert len(names) == count and set(names) <= keys.size_universe(size)
    # ai-toolkit's names (diffusion_model.<BFL path>) and diffusers' (transformer.<path>) are known too
    assert "diffusion_model.double_blocks.0.img_attn.qkv" in keys.size_universe(size)
    assert f"transformer.single_transformer_blocks.{ns - 1}.attn.to_qkv_mlp_proj" in keys.size_universe(size)
    assert f"lora_unet_single_blocks_{ns}_linear1" not in keys.size_universe(size)
    assert keys.fitting_sizes(set(names)) == [s for s in configs.SIZES if configs.SIZE_FACTS[s][0] >= nd
                                              and configs.SIZE_FACTS[s][1] >= ns]
    # diffusers' kohya reader maps every one of these names (nothing "unsupported"), onto Linears of the model
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux2_lora_to_diffusers
    fake = {}
    for n in names:
        fake.update({f"{n}.lora_down.weight": torch.zeros(3, 2), f"{n}.lora_up.weight": torch.zeros(6, 3),
                     f"{n}.alpha": torch.tensor(3.0)})
    mapped = _convert_kohya_flux2_lora_to_diffusers(fake)
    assert not fake                                           # every key was consumed
    targets = {k.rsplit(".", 2)[0] for k in mapped}
    assert targets <= keys.size_universe(size)
    assert targets == {"transformer." + p for p in lora_format.transformer_targets(NET, nd, ns)}
