"""The toy base models: bit-for-bit rebuilds, the shipped files, loading through the real loaders, and
whether the base draws what the prompt says."""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.lora.io import file_sha256
from lorakit.errors import ModelLoadError
from lorakit.toy import build, eval as toy_eval, paths


def _has_assets(family: str) -> bool:
    try:
        paths.toy_paths(family)
        return True
    except ModelLoadError:
        return False


# The toy assets ship in the repository: a missing file is a failure, never a skip.


TOY_FAMILIES = paths.toy_families()


def test_the_shipped_families_have_toys():
    assert {"sdxl", "flux1"} <= set(TOY_FAMILIES)


@pytest.mark.parametrize("family", TOY_FAMILIES)
def test_toy_assets_are_shipped(family):
    assert _has_assets(family), f"lorakit/toy/assets/{family} is missing: run python -m lorakit.toy build"


@pytest.mark.parametrize("family", TOY_FAMILIES)
def test_quick_build_is_bit_for_bit(tmp_path, family):
    a = build.build(family, tmp_path / "a", plan_name="quick")
    b = build.build(family, tmp_path / "b", plan_name="quick")
    ha = {r: f["sha256"] for r, f in a["files"].items()}
    assert ha == {r: f["sha256"] for r, f in b["files"].items()}
    files = paths.toy_recipe(family).files
    assert set(ha) == {r for r in files if r != "config" and not r.endswith("_dir")}  # every file of the table
    assert ha and all(len(h) == 64 for h in ha.values())
    # the config folder is identical too
    for p in sorted((tmp_path / "a" / family / "config").rglob("*.json")):
        q = tmp_path / "b" / family / "config" / p.relative_to(tmp_path / "a" / family / "config")
        assert p.read_bytes() == q.read_bytes()
    with pytest.raises(FileExistsError, match="not empty"):
        build.build(family, tmp_path / "a", plan_name="quick")


def test_missing_assets_name_the_build_command(tmp_path):
    with pytest.raises(ModelLoadError, match=r"python -m lorakit.toy build --family flux1"):
        paths.toy_paths("flux1", root=tmp_path)
    with pytest.raises(ModelLoadError, match="toy families are"):
        paths.toy_paths("nosuchfamily")


def test_sdxl_text_encoders_differ_in_width():
    cfg = paths.toy_recipe("sdxl").configs()
    assert cfg["te1"]["hidden_size"] != cfg["te2"]["hidden_size"]           # stack.md pitfall 6
    assert cfg["unet"]["cross_attention_dim"] == cfg["te1"]["hidden_size"] + cfg["te2"]["hidden_size"]
    assert cfg["unet"]["projection_class_embeddings_input_dim"] == (
        6 * cfg["unet"]["addition_time_embed_dim"] + cfg["te2"]["projection_dim"])


def test_shipped_assets_fit_the_budget_and_match_build_json():
    total = 0
    for fam in TOY_FAMILIES:
        p = paths.toy_paths(fam)
        report = json.loads((p["config"].parent / "build.json").read_text())
        for role, f in report["files"].items():
            assert p[role].stat().st_size == f["bytes"]
            assert file_sha256(p[role]) == f["sha256"]
        weights = sum(f["bytes"] for f in report["files"].values())
        assert weights <= 8 * 1024 * 1024, (fam, weights)    # the issues' limit per toy model
        total += sum(f.stat().st_size for f in p["config"].parent.rglob("*") if f.is_file())
    assert total <= 40 * 1024 * 1024   # seven toys with their config folders (six: 28.9 MiB; Qwen-Image 5.1 MB)


def test_sdxl_loads_in_diffusers_from_single_file():
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    p = paths.toy_paths("sdxl")
    pipe = StableDiffusionXLPipeline.from_single_file(str(p["checkpoint"]), config=str(p["config"]),
                                                      torch_dtype=torch.float32)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for t in getattr(pipe, name).parameters():
            assert t.device.type == "cpu" and torch.isfinite(t).all()
    sd = load_file(str(p["checkpoint"]))
    # one tensor per component, compared with the file itself
    assert torch.equal(pipe.unet.conv_in.weight, sd["model.diffusion_model.input_blocks.0.0.weight"].float())
    assert torch.equal(pipe.vae.decoder.conv_out.weight, sd["first_stage_model.decoder.conv_out.weight"].float())
    te1 = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(te1, sd["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"].float())
    te2 = pipe.text_encoder_2.get_input_embeddings().weight
    assert torch.equal(te2, sd["conditioner.embedders.1.model.token_embedding.weight"].float())
    assert pipe.vae.config.scaling_factor == json.loads((p["config"] / "vae" / "config.json").read_text())["scaling_factor"]


PROMPTS = ["a red circle on a blue background", "a green square on a white background",
           "a yellow triangle on a black background", "a white circle on a red background",
           "a blue square on a yellow background", "a black triangle on a green background"]


# Conservative floors, well under what BUILD.md records (chance: shape 1/4 with the concept class, colour and
# background 1/6). The toy FLUX draws the right colours but blobby shapes, hence its lower shape floor.
FLOORS = {"sdxl": {"shape": 0.5, "colour": 0.6, "background": 0.6},
          "flux1": {"shape": 0.3, "colour": 0.5, "background": 0.5},
          "flux2": {"colour": 0.4, "background": 0.5},   # flux2 measured 0.58 / 0.75 (CFG 4); shapes at chance
          "zimage": {"colour": 0.4, "background": 0.5},  # zimage: not measured yet (its toy is not built yet)
          "sd15": {"shape": 0.5, "colour": 0.4, "background": 0.25},  # measured 0.75 / 0.58 / 0.33 (CFG 4)
          "sd3": {"colour": 0.5, "background": 0.6},  # measured 0.67 / 0.83 (CFG 4); shapes 0.33, near chance
          "qwenimage": {"shape": 0.3, "colour": 0.4, "background": 0.6}}  # measured 0.42 / 0.58 / 1.00 (CFG 4)


@pytest.mark.parametrize("family", TOY_FAMILIES)
def test_base_draws_what_the_prompt_says(family):
    """Loaded by the family Adapter from the shipped files, drawn by its sampler with the recipe's CFG (SDXL 4,
    FLUX.1-dev 1 = guidance input only)."""
    model = toy_eval.load_toy(family)
    # the FLUX.2 toy is a Klein base, the Z-Image toy is sampled as Z-Image base: both with CFG
    assert model.demo.cfg_scale == {"sdxl": 4.0, "flux1": 1.0, "flux2": 4.0, "zimage": 4.0, "sd15": 4.0,
                                    "sd3": 4.0, "qwenimage": 4.0}[family]
    prompts = [p for p in PROMPTS for _ in range(2)]
    imgs = toy_eval.sample(model, prompts, list(range(len(prompts))), steps=20)
    r = toy_eval.prompt_following(imgs, prompts)
    for key, floor in FLOORS[family].items():
        assert r[key] >= floor, (key, r)


@pytest.mark.parametrize("family", [f for f in TOY_FAMILIES if paths.toy_recipe(f).build is None])
def test_retarget_latents_keeps_normalised_latents_and_decoding(family):
    """The saved VAE speaks the real family's latent constants without changing what the denoiser sees."""
    from lorakit.toy import world

    torch.manual_seed(0)
    recipe = paths.toy_recipe(family)
    vae = recipe.make(0)[recipe.vae].eval()
    x = build.images_to_tensor([world.render(s) for s in world.sample_scenes(2, 0)])
    real_scale, real_shift = build.real_latent(family)
    assert (real_scale, real_shift) == {"sdxl": (0.13025, 0.0), "flux1": (0.3611, 0.1159),
                                         "zimage": (0.3611, 0.1159), "sd15": (0.18215, 0.0),
                                         "sd3": (1.5305, 0.0609)}[family]
    scale = 1.7
    shift = real_shift * real_scale / scale                       # as pretrain() chooses it
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        norm0, std0, img0 = (post.mean - shift) * scale, post.std * scale, vae.decode(post.mean).sample
        build.retarget_latents(vae, scale, shift, real_scale, real_shift)
        post = vae.encode(x).latent_dist
        norm1, std1 = (post.mean - real_shift) * real_scale, post.std * real_scale
        img1 = vae.decode(post.mean).sample
    assert torch.allclose(norm0, norm1, atol=1e-5) and torch.allclose(std0, std1, atol=1e-5)
    assert torch.allclose(img0, img1, atol=1e-4)


def test_vae_crop_trains_on_grid_aligned_crops_then_whole_images():
    """Plan.vae_crop: the first 3/4 of the VAE steps see random crops of that side on the 8-pixel latent grid, taken
    from the images drawn for the step; the rest see the whole images."""
    from types import SimpleNamespace

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.seen = []

        def encode(self, x):
            self.seen.append(x.detach().clone())
            m = x[:, :1] * self.w
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=m, std=torch.ones_like(m), var=torch.ones_like(m),
                                                               logvar=torch.zeros_like(m)))

        def decode(self, z):
            return SimpleNamespace(sample=z.expand(-1, 3, -1, -1))

    pixels = torch.arange(5 * 3 * 64 * 64, dtype=torch.float32).reshape(5, 3, 64, 64)
    vae = Recorder()
    plan = build.Plan(n_vae_images=5, vae_steps=8, vae_batch=2, n_images=0, steps=0, batch=1, vae_crop=32)
    build.train_vae(vae, pixels, plan, torch.Generator().manual_seed(0), 0.0)
    assert [tuple(x.shape[-2:]) for x in vae.seen] == [(32, 32)] * 6 + [(64, 64)] * 2
    for x in vae.seen[:6]:
        # every crop is a window of one whole image at a multiple of 8 (values encode image, channel, row, column)
        for img in x:
            n, rest = divmod(int(img[0, 0, 0]), 3 * 64 * 64)
            i, j = divmod(rest, 64)
            assert i % 8 == 0 and j % 8 == 0 and i <= 32 and j <= 32
            assert torch.equal(img, pixels[n, :, i:i + 32, j:j + 32])
    for x in vae.seen[6:]:
        assert all(any(torch.equal(img, p) for p in pixels) for img in x)
