"""Issue 28, "the whole run fits the plan": latent caching (batch, VAE tiling), text-encoder placement and previews
(CFG batch, VAE decode tiling) are planned from the card's free memory, and `lorakit plan` shows each phase's peak.

Cards are the card table's (or a copy with less free memory); the SDXL sizes are those of the full-size U-Net as
`lorakit plan` counts them (tests/unit/data/planner_sizes.json, as in test_autoplan.py)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lorakit.config.load import load_config
from lorakit.models.registry import get_family
from lorakit.train import autoplan, budget, cards, swap

from .test_autoplan import GIB, config, sizes_of


def sdxl_plan(card):
    cfg = config("sdxl")
    spec = get_family("sdxl").SPEC
    chosen = autoplan.choose(cfg, spec, nn.Module(), [], [], swap.LOOKAHEAD, card, log=lambda _: None,
                             sizes=sizes_of("sdxl"))
    return cfg, spec, chosen


def test_caching_batch_and_tiling_follow_the_free_memory():
    one = autoplan.ENCODE_GIB_PER_IMAGE  # VAE working memory of one 1024² image
    px = 1024 * 1024
    roomy = autoplan.plan_caching(int((budget.RESERVE_GIB + 10 * one) * GIB), px, tiling=True)
    assert (roomy.latent_batch, roomy.vae_tiling, roomy.key) == (4, False, "")  # never above the default of 4
    two = autoplan.plan_caching(int((budget.RESERVE_GIB + 2.5 * one) * GIB), px, tiling=True)
    assert (two.latent_batch, two.vae_tiling) == (2, False) and two.work_gib == pytest.approx(2 * one, rel=1e-3)
    tight = autoplan.plan_caching(int((budget.RESERVE_GIB + 0.5 * one) * GIB), 2048 * 2048, tiling=True)
    assert (tight.latent_batch, tight.vae_tiling, tight.key) == (1, True, "+tiled512")
    # one 512² tile with a quarter for the overlap, of the 2048² image's working memory
    assert tight.work_gib == pytest.approx(4 * one * 1.25 * 512 * 512 / (2048 * 2048), rel=1e-3)
    untiled = autoplan.plan_caching(int((budget.RESERVE_GIB + 0.5 * one) * GIB), 2048 * 2048, tiling=False)
    assert not untiled.vae_tiling and "lower data.max_bucket_reso" in untiled.line


def test_phases_on_a_big_and_a_small_card():
    cfg, spec, chosen = sdxl_plan(cards.card("h100"))
    room = chosen.applied.memory.vram_gb
    ph = autoplan.plan_phases(chosen.applied, spec, chosen, room)
    comps = dict(spec.component_gib)
    # SDXL keeps its U-Net on the GPU while the caches fill (no block-by-block placement): weights + VAE + 4 images
    assert ph.cache["latent_batch"] == 4 and not ph.cache["vae_tiling"] and ph.cache["text_encoders"] == "GPU"
    assert ph.cache["peak_gib"] == pytest.approx(chosen.parts["weights"] + comps["vae"] + 4 * 2.6 + budget.RESERVE_GIB,
                                                 rel=1e-3)
    # previews: SDXL's CFG 7 doubles the batch; the decode fits untiled
    assert (ph.previews["batch"], ph.previews["vae_tiling"], ph.previews["width"]) == (2, False, 1024)
    assert ph.train_gib == chosen.estimate_gib
    # an 8 GiB card (float8, like an RTX 4060): fewer images per VAE call, and the preview decode tiled
    small = dataclasses.replace(cards.card("rtx4060ti-16g"), free_bytes=8 * GIB, key="")
    cfg, spec, chosen = sdxl_plan(small)
    ph = autoplan.plan_phases(chosen.applied, spec, chosen, chosen.applied.memory.vram_gb)
    assert ph.cache["latent_batch"] < 4 and ph.previews["vae_tiling"]
    assert max(ph.cache["peak_gib"], ph.previews["peak_gib"], ph.train_gib) <= 8.0
    # a family that places its denoiser block by block (FLUX.1) caches without it; its 9.1 GiB of text encoders (T5-XXL
    # + CLIP-L) go on a 12 GB card's GPU (with the 1 GiB margin of lorakit.device.device_for) but not on a 10 GB one's
    fspec = get_family("flux1").SPEC
    where = {}
    for name, card in (("12", cards.card("rtx3060-12g")), ("10", cards.card("rtx3080-10g"))):
        fchosen = autoplan.choose(config("flux1"), fspec, nn.Module(), [], [], swap.LOOKAHEAD, card,
                                  log=lambda _: None, sizes=sizes_of("flux1"))
        fph = autoplan.plan_phases(fchosen.applied, fspec, fchosen, fchosen.applied.memory.vram_gb)
        where[name] = fph.cache["text_encoders"]
        assert fph.previews["batch"] == 1  # FLUX.1: CFG off by default
        assert fph.cache["peak_gib"] < fchosen.parts["weights"] + 9.1 + budget.RESERVE_GIB
    assert where == {"12": "GPU", "10": "CPU"}


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         layers_per_block=1, sample_size=64)


def test_a_run_short_of_memory_tiles_its_vae_and_keys_its_latents_apart(monkeypatch):
    vae = tiny_vae()
    adapter = SimpleNamespace(spec=get_family("sdxl").SPEC, vae_module=lambda: vae)
    card = dataclasses.replace(cards.card("rtx3060-12g"), free_bytes=int(1.5 * GIB))
    monkeypatch.setattr(autoplan, "wanted", lambda cfg, device: True)
    monkeypatch.setattr(cards, "local_card", lambda device: card)
    items = [SimpleNamespace(bucket=(2048, 2048)), SimpleNamespace(bucket=(1024, 1024))]
    lines: list[str] = []
    plan = autoplan.caching_plan(config("sdxl"), items, torch.device("cpu"), lines.append, adapter)
    assert plan.vae_tiling and plan.key == "+tiled512" and vae.use_tiling
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (512, 256)  # 2 levels: 2x down-sampling
    assert any("tiled" in line for line in lines)
    # a family whose adapter has no VAE to tile: one image per call, untiled, and the line says so
    plain = SimpleNamespace(spec=get_family("sdxl").SPEC)
    plan = autoplan.caching_plan(config("sdxl"), items, torch.device("cpu"), lines.append, plain)
    assert not plan.vae_tiling and plan.key == "" and "does not tile" in lines[-1]


def test_lorakit_plan_prints_the_peak_of_each_phase(monkeypatch, capsys, tmp_path):
    from lorakit.train import planview

    monkeypatch.setattr(planview, "meta_model", lambda cfg: (get_family("sdxl").SPEC, nn.Module(), [], []))
    real_choose = autoplan.choose
    monkeypatch.setattr(autoplan, "choose", lambda *a, **k: real_choose(*a, **{**k, "sizes": sizes_of("sdxl")}))
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nfamily = "sdxl"\ncheckpoint = "/nonexistent/sdxl.safetensors"\n[data]\ndir = "/tmp"\n'
                    '[network]\nrank = 32\n')
    assert planview.main(str(toml), [], "h100") == 0
    out = capsys.readouterr().out
    lines = out[out.index("peak by phase"):].splitlines()
    assert lines[1].strip().startswith("cache: ~") and "4 image(s) per VAE call" in lines[1]
    assert lines[2].strip().startswith("train: ~") and lines[3].strip().startswith("previews: ~")
    assert "batch 2 (CFG)" in lines[3]


class Recorder:
    """A stand-in adapter whose ``_forward`` records the batch of each denoiser call (the samplers' only model call)."""

    def __init__(self):
        self.batches: list[int] = []
        self.transformer = nn.Linear(1, 1)

    def _c(self):
        return self

    def _forward(self, x, t, text, *rest):
        self.batches.append(x.shape[0])
        return torch.zeros_like(x)

    def encode_text(self, prompts):
        return {"prompt": prompts}


def test_flow_samplers_run_cfg_as_two_passes_of_one_and_the_previews_count_one():
    """SD3.5 and Z-Image (common.ComponentsAdapter.euler_cfg) and Qwen-Image (its true-CFG denoise) call the denoiser
    twice per step with a batch of 1, without gradients; SDXL batches CFG as 2. plan_phases counts the preview
    activations for the batch the sampler runs: 1 x the checkpointed rate under CFG for those families, 2 x for SDXL."""
    from lorakit.models import common
    from lorakit.models.qwenimage.adapter import Adapter as QwenAdapter

    class FlowRecorder(Recorder, common.ComponentsAdapter):  # the shared loop and guidance, the recorded forward
        pass

    class QwenRecorder(Recorder, QwenAdapter):  # Qwen-Image's schedule and true CFG through the same loop
        pass

    rec = FlowRecorder()
    x = torch.zeros(1, 16, 4, 4)
    rec.euler_cfg(x, torch.linspace(1, 0, 3), 2, {"c": 1}, {"n": 1}, 3.5)
    assert rec.batches == [1, 1, 1, 1]  # 2 steps x (conditional, unconditional)
    rec = QwenRecorder()
    rec.denoise(x, "a photo", "", 2, 4.0)
    assert rec.batches == [1, 1, 1, 1]
    parts = {"weights": 10.0, "swap window": 0.0, "LoRA+optimizer": 1.0, "activations": 2.0}
    plan = budget.Plan(40.0, True, False, 0, sum(parts.values()) + budget.RESERVE_GIB, parts)
    for family, batched in (("sdxl", True), ("sd3", False), ("zimage", False), ("qwenimage", False)):
        spec = get_family(family).SPEC
        assert spec.cfg_batched is batched
        cfg = load_config(None, data={"model": {"family": family, "checkpoint": "/nonexistent/model.safetensors"},
                                      "data": {"dir": "/tmp"}, "sample": {"cfg_scale": 4.0, "width": 2048,
                                                                          "height": 2048}})
        p = autoplan.plan_phases(cfg, spec, plan, 40.0).previews
        held = 10.0 + 1.0 + dict(spec.component_gib)["vae"]
        act = (2 if batched else 1) * spec.activation_gib[0] * 4  # 2048² = 4 x 1024²
        assert p["peak_gib"] == pytest.approx(held + max(act, autoplan.DECODE_GIB_PER_IMAGE * 4) + budget.RESERVE_GIB,
                                              abs=1e-3), family
        assert (p["batch"], p["cfg_passes"]) == ((2, 1) if batched else (1, 2))
    text = autoplan.Phases(40.0, {"peak_gib": 1.0, "latent_batch": 4, "vae_tiling": False, "text_encoders": "GPU"},
                           1.0, p).lines()[2]
    assert "batch 1, CFG in 2 passes" in text


def test_sd35_and_qwen_image_vaes_are_found_and_tiled():
    """The shared vae_module() returns SD3.5's and Qwen-Image's ``vae`` (Z-Image's / FLUX.2's ``ae``), without loading
    another part; tile_vae tiles both VAE kinds with TILE² tiles, and both families plan VAE tiling."""
    from diffusers import AutoencoderKLQwenImage

    from lorakit.models import common

    qvae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False])
    kl = tiny_vae()

    class Named:  # a components object that names its VAE ``vae`` (SD3Components, QwenImageComponents)
        vae = None

    class Ae:  # one that names it ``ae`` (Z-Image, FLUX.2)
        ae = None

    for parts, vae in ((Named(), qvae), (Named(), kl), (Ae(), kl)):
        setattr(parts, "vae" if isinstance(parts, Named) else "ae", vae)
        adapter = SimpleNamespace(_c=lambda parts=parts: parts, vae_role="vae" if isinstance(parts, Named) else "ae")
        adapter.vae_module = lambda adapter=adapter: common.ComponentsAdapter.vae_module(adapter)
        assert adapter.vae_module() is vae
        vae.use_tiling = False
        assert autoplan.tile_vae(adapter, lambda _: None) and vae.use_tiling
    assert (qvae.tile_sample_min_height, qvae.tile_sample_min_width) == (autoplan.TILE, autoplan.TILE)
    assert qvae.tile_sample_stride_height < autoplan.TILE  # tiles overlap, to blend their seams
    assert (kl.tile_sample_min_size, kl.tile_latent_min_size) == (autoplan.TILE, autoplan.TILE // 2)
    assert get_family("sd3").SPEC.vae_tiling and get_family("qwenimage").SPEC.vae_tiling
    # the families' adapters name their VAE as their components do
    from lorakit.models.qwenimage.adapter import Adapter as Qwen
    from lorakit.models.sd3.adapter import Adapter as SD3
    from lorakit.models.zimage.adapter import Adapter as ZImage
    assert (SD3.vae_role, Qwen.vae_role, ZImage.vae_role) == ("vae", "vae", "ae")
