"""network.weights (issue 23): a run's LoRA starts from a LoRA file, any layout lorakit reads, ranks and family
checked. The step-0 LoRA is compared with the file's own tensors; refusals name the file."""

import pytest
import torch

from lorakit.config.schema import Config
from lorakit.errors import ConfigError
from lorakit.lora.formats.fused import Pair
from lorakit.lora.formats.keymap import BaseModule, FamilyKeys
from lorakit.lora.formats.layouts import LoraState
from lorakit.lora.inject import extract_lora
from lorakit.lora.io import save_safetensors_atomic
from lorakit.lora.warmstart import match
from lorakit.models.sdxl import Adapter
from lorakit.models.sdxl.load import write_tiny_checkpoint
from lorakit.train import placement


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=2)


def _cfg(tiny, rank=4, alpha=2.0, weights=None):
    cfg = Config()
    cfg.model.family, cfg.model.checkpoint, cfg.model.config_dir = "sdxl", str(tiny["checkpoint"]), str(tiny["config"])
    cfg.network.rank, cfg.network.alpha, cfg.network.weights = rank, alpha, weights
    cfg.memory.gradient_checkpointing = False
    return cfg


def _adapter(cfg):
    ad = Adapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    return ad


def _random_lora(cfg, gen):
    """A run's LoRA with every up and down drawn from ``gen`` (a trained-looking file)."""
    ad = _adapter(cfg)
    modules, targets, _ = placement.inject(cfg, ad, torch.float32, log=lambda s: None)
    lora = {c: extract_lora(modules[c]) for c in targets}
    for comp in lora.values():
        for m in comp.values():
            m.down = torch.randn(m.down.shape, generator=gen)
            m.up = torch.randn(m.up.shape, generator=gen)
    return ad, lora


def test_step0_lora_is_the_files_kohya_and_diffusers(tiny, tmp_path):
    gen = torch.Generator().manual_seed(3)
    ad, lora = _random_lora(_cfg(tiny), gen)
    for fmt in ("kohya", "diffusers"):
        tensors = {k: v.half() for k, v in ad.export(lora, fmt).items()}  # as a run saves it (fp16)
        path = tmp_path / f"start-{fmt}.safetensors"
        save_safetensors_atomic(path, tensors, {})
        cfg = _cfg(tiny, weights=str(path))
        fresh = _adapter(cfg)
        modules, targets, _ = placement.inject(cfg, fresh, torch.float32, log=lambda s: None)
        got = {c: extract_lora(modules[c]) for c in targets}
        assert set(got["unet"]) == set(lora["unet"]) and len(got["unet"]) > 10
        for path_, m in lora["unet"].items():
            g = got["unet"][path_]
            assert g.alpha == 2.0
            assert torch.equal(g.down, m.down.half().float())
            if fmt == "kohya":  # the file's own tensors, bit for bit
                assert torch.equal(g.up, m.up.half().float())
            else:  # diffusers folds alpha/rank into lora_B; the run's alpha unfolds it: same ΔW
                torch.testing.assert_close(g.up * (2.0 / 4), (m.up * (2.0 / 4)).half().float(), rtol=0, atol=1e-6)
        # what the run exports at step 0 is the file (kohya): the continued LoRA ships the same keys and values
        if fmt == "kohya":
            again = fresh.export(got, "kohya")
            assert set(again) == set(tensors)
            assert all(torch.equal(again[k].half(), tensors[k]) for k in tensors)


def test_rank_and_family_mismatch_are_refused_naming_the_file(tiny, tmp_path):
    gen = torch.Generator().manual_seed(4)
    ad, lora = _random_lora(_cfg(tiny), gen)
    path = tmp_path / "rank4.safetensors"
    save_safetensors_atomic(path, ad.export(lora, "kohya"), {})
    cfg = _cfg(tiny, rank=8, weights=str(path))
    with pytest.raises(ConfigError, match=r"network\.weights: .*rank4\.safetensors has rank 4 .* rank 8"):
        placement.inject(cfg, _adapter(cfg), torch.float32, log=lambda s: None)
    flux = tmp_path / "flux.safetensors"
    save_safetensors_atomic(flux, {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 32),
                                   "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(96, 4),
                                   "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(4.0)}, {})
    cfg = _cfg(tiny, weights=str(flux))
    with pytest.raises(ConfigError, match=r"network\.weights: .*flux\.safetensors.*sdxl"):
        placement.inject(cfg, _adapter(cfg), torch.float32, log=lambda s: None)
    cfg = _cfg(tiny, weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match=r"missing\.safetensors does not exist"):
        placement.inject(cfg, _adapter(cfg), torch.float32, log=lambda s: None)


def _fused_keys():
    qkv = BaseModule("denoiser", "blk.qkv", ("blk.to_q", "blk.to_k", "blk.to_v"), 12, 8, parts_rule="equal")
    return FamilyKeys("fam", (qkv,), {"denoiser": "lora_unet_"}, {"denoiser": "transformer."},
                      {"denoiser": "diffusion_model."})


def test_fused_module_split_onto_its_parts_with_the_runs_alpha():
    g = torch.Generator().manual_seed(5)
    parts = [Pair(torch.randn(2, 8, generator=g), torch.randn(4, 2, generator=g), 1.0) for _ in range(3)]
    from lorakit.lora.formats.fused import fuse

    fused = fuse(parts, [4, 4, 4])  # what a kohya-layout FLUX file stores: rank 6, block-diagonal up, alpha 3
    state = LoraState({"lora_unet_blk_qkv": fused}, {}, "kohya", "fam")
    targets = {"transformer": {"blk.to_q": 2, "blk.to_k": 2, "blk.to_v": 2}}
    alphas = {"transformer": {p: 2.0 for p in targets["transformer"]}}
    got = match(state, _fused_keys(), targets, alphas, {"denoiser": "transformer"}, "f.safetensors", log=lambda s: None)
    for path, part in zip(("blk.to_q", "blk.to_k", "blk.to_v"), parts):
        m = got["transformer"][path]
        assert m.alpha == 2.0 and torch.equal(m.down, part.down)
        # ΔW kept: (2/2)·up' = (1/2)·up
        torch.testing.assert_close(m.up @ m.down * (2.0 / 2), part.delta(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match=r"f\.safetensors has rank 2 at transformer blk\.to_k, this run injects "
                                          r"rank 3"):
        match(state, _fused_keys(), {"transformer": {"blk.to_q": 2, "blk.to_k": 3, "blk.to_v": 2}}, alphas,
              {"denoiser": "transformer"}, "f.safetensors", log=lambda s: None)
    with pytest.raises(ConfigError, match="which this run does not train"):
        match(state, _fused_keys(), {"transformer": {"blk.to_q": 2}}, alphas, {"denoiser": "transformer"},
              "f.safetensors", log=lambda s: None)


def test_a_checkpoint_as_network_weights_says_what_the_file_is(tiny):
    """network.weights naming the base model itself (a common slip: the two paths sit side by side) is refused in one
    line saying it is a checkpoint, not 'unknown LoRA layout'."""
    cfg = _cfg(tiny, weights=str(tiny["checkpoint"]))
    with pytest.raises(ConfigError) as err:
        placement.inject(cfg, _adapter(cfg), torch.float32, log=lambda s: None)
    text = str(err.value)
    assert text.startswith(f"network.weights: {tiny['checkpoint']} is not a LoRA: this is ") and "\n" not in text
    assert "checkpoint" in text and "unknown LoRA layout" not in text
