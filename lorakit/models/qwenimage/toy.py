"""Qwen-Image's toy: a QwenImageTransformer2DModel of width 64 (2 heads of 32, 4 blocks), a Qwen2.5-VL of width 16
(language model and a one-block vision tower; a tokenizer of the real class with one token per toy-world word and a
34-token template head, as the real one) and an AutoencoderKLQwenImage of base width 8, trained on the toy scenes.

Qwen-Image normalises latents per channel with the VAE's own ``latents_mean`` / ``latents_std`` (its config), which
the shared recipe's one scale and shift cannot express; so the family pretrains itself (``ToyRecipe.build``) with the
toy world's kit: the VAE (through a one-frame view of the video VAE), its statistics written into its config, then the
transformer through this family's Adapter (its noising, dynamic shift and masked prompt features). Saved as ComfyUI
keeps the files (diffusers-named transformer, Qwen2.5-VL with its vision tower, Wan-layout VAE) plus ``tokenizer/``
and a config folder (lorakit/toy/assets/qwenimage/). Build: ``python -m lorakit.toy build --family qwenimage``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from lorakit.models.base import ToyDemo, ToyRecipe, init_kwargs

TEXT_LENGTH = 32          # toy prompt tokens after the template (the pipeline keeps 512)
FILES = {"checkpoint": "qwen_image_toy.safetensors", "text_encoder": "qwen_2.5_vl_toy.safetensors",
         "vae": "qwen_image_vae.safetensors", "tokenizer_dir": "tokenizer", "config": "config"}


def configs() -> dict[str, dict[str, Any]]:
    from . import configs as real
    from .tiny import TINY_TEXT, TINY_VAE
    transformer = {"_class_name": "QwenImageTransformer2DModel", "patch_size": 2, "in_channels": 64,
                   "out_channels": 16, "num_layers": 4, "attention_head_dim": 32, "num_attention_heads": 2,
                   "joint_attention_dim": 16, "guidance_embeds": False, "axes_dims_rope": [8, 12, 12]}
    text = {**TINY_TEXT, "num_hidden_layers": 3}
    vae = {"_class_name": "AutoencoderKLQwenImage", **TINY_VAE, "latents_mean": list(real.LATENTS_MEAN),
           "latents_std": list(real.LATENTS_STD)}
    return {"transformer": transformer, "text_encoder": text, "vae": vae}


def plans(kit: Any) -> dict[str, Any]:
    # The causal 3-D VAE costs ~1 s per step at batch 16 on one idle core (~0.3 s on 32² crops; ~0.07 s a transformer
    # step at batch 32). Its decoder learns hue only after ~300 steps (300 gave a two-tone VAE): 800 steps at lr 1e-3
    # (which left the early collapse first in 100-step runs; docs/qwenimage.md), on crops, the last quarter on whole
    # images (the mid-block attention then sees 8x8 latents)
    return {"full": kit.Plan(n_vae_images=1200, vae_steps=800, vae_batch=16, n_images=2000, steps=2000, batch=32,
                             vae_lr=1e-3, vae_crop=32),
            "quick": kit.PLANS["quick"]}


def world_words() -> list[str]:
    """Every word of the base world's captions (one token each in the toy tokenizer), sorted."""
    from lorakit.toy import world  # the toy world's vocabulary: asked only when the tiny tokenizer is built

    scenes = world.sample_scenes(2000, 7)
    return sorted({w.strip(",.") for s in scenes for w in world.caption(s).split()})


def make(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    from .text import tiny_tokenizer
    from .tiny import tiny_vl
    tok = tiny_tokenizer(world_words())
    cfg = configs()
    torch.manual_seed(seed)
    te = tiny_vl(tok, cfg["text_encoder"])
    vae = AutoencoderKLQwenImage(**init_kwargs(cfg["vae"]))
    tr = QwenImageTransformer2DModel(**init_kwargs(cfg["transformer"]))
    return {"transformer": tr, "text_encoder": te, "vae": vae, "tokenizer": tok}


class OneFrame(nn.Module):
    """The video VAE seen as an image VAE (what the toy world's VAE trainer and encoder call): [B,C,H,W] in and out."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def encode(self, x: torch.Tensor) -> Any:
        post = self.vae.encode(x.unsqueeze(2)).latent_dist
        view = SimpleNamespace(**{k: getattr(post, k)[:, :, 0] for k in ("mean", "std", "var", "logvar")})
        return SimpleNamespace(latent_dist=view)

    def decode(self, z: torch.Tensor) -> Any:
        return SimpleNamespace(sample=self.vae.decode(z.unsqueeze(2)).sample[:, :, 0])


def adapter(modules: dict, cfg: Any) -> Any:
    """The Qwen-Image Adapter bound to the in-memory toy modules (the build trains ``modules["transformer"]``)."""
    from .adapter import Adapter
    from .convert import Shape
    from .load import QwenImageComponents

    tr = modules["transformer"]
    c = tr.config
    shape = Shape(dim=c.num_attention_heads * c.attention_head_dim, num_layers=c.num_layers,
                  head_dim=c.attention_head_dim, text_dim=c.joint_attention_dim, in_channels=c.in_channels,
                  out_channels=c.out_channels)
    out = Adapter(cfg)
    out.comps = QwenImageComponents(tr, shape, {}, {}, {"text_encoder": modules["text_encoder"].model.language_model,
                                                        "vae": modules["vae"], "tokenizer": modules["tokenizer"]})
    return out


def pretrain(kit: Any, plan: Any, seed: int, t0: float) -> tuple[dict, dict]:
    from lorakit.diffusion import objectives as obj
    from lorakit.toy.build import toy_batch, toy_config

    kit.set_determinism(seed)
    models = make(seed)
    vae = models["vae"]
    gen = torch.Generator().manual_seed(seed + 1)
    vae_scenes = kit.world.sample_scenes(plan.n_vae_images, seed + 2, shapes=kit.world.ALL_SHAPES,
                                         positions=tuple(kit.world.POSITIONS))
    kit.log(f"qwenimage: training the VAE on {len(vae_scenes)} images", t0)
    kit.train_vae(OneFrame(vae), kit.images_to_tensor([kit.world.render(s) for s in vae_scenes]), plan, gen, t0)
    scenes = kit.world.sample_scenes(plan.n_images, seed + 3)
    means, _stds = kit.encode_latents(OneFrame(vae), kit.images_to_tensor([kit.world.render(s) for s in scenes]))
    mu, sd = means.mean(dim=(0, 2, 3)), means.std(dim=(0, 2, 3)).clamp_min(1e-3)
    vae.register_to_config(latents_mean=[round(float(x), 4) for x in mu], latents_std=[round(float(x), 4) for x in sd])
    mu, sd = (torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1),
              torch.tensor(vae.config.latents_std).view(1, -1, 1, 1))
    x_all = (means - mu) / sd                       # the adapter's encode_images: posterior mean, normalised
    distinct, cap_idx = kit.caption_index([kit.world.caption(s) for s in scenes])
    cfg = toy_config("qwenimage", pretraining=True) if _exposed() else _config()
    a = adapter(models, cfg)
    with torch.no_grad():
        text = a.encode_text(distinct)
    kit.log(f"qwenimage: training the transformer on {len(scenes)} images, {len(distinct) - 1} captions", t0)
    tr = models["transformer"]
    tr.requires_grad_(True)
    tr.train()

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(0, x_all.shape[0], (plan.batch,), generator=gen)
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, generator=gen)
        ci = cap_idx[idx].clone()
        ci[torch.rand(plan.batch, generator=gen) < kit.CAPTION_DROPOUT] = 0
        batch = toy_batch(x0, {k: v[ci] for k, v in text.items()})
        noised = a.noise(x0, noise, batch, cfg.training, gen)
        return obj.weighted_mean(obj.loss_per_sample(a.predict(noised, batch), noised.target), noised.weight)

    curve = kit.fit(tr.parameters(), plan.steps, plan.lr, loss_at, "qwenimage transformer", t0)
    tr.requires_grad_(False)
    tr.eval()
    return models, {"loss_curve": curve}


def _exposed() -> bool:
    from lorakit.models import qwenimage
    return hasattr(qwenimage, "TOY")


def _config() -> Any:
    """The pretraining config while ``TOY`` is not exposed (toy_config asks the registry for the recipe)."""
    import dataclasses

    from lorakit.config.schema import Config, TrainingCfg
    return Config(training=dataclasses.replace(TrainingCfg(), device="cpu", mixed_precision="no",
                                               text_max_length=TEXT_LENGTH, timestep_sampling="flux_shift"))


def save(modules: dict, facts: dict, out: Path) -> dict[str, Path]:
    """ComfyUI files (bf16 transformer and Qwen2.5-VL, fp32 Wan-layout VAE) + tokenizer + config folder."""
    from lorakit.lora.io import save_safetensors_atomic

    from .convert import vae_to_original
    from .tiny import _cast, comfy_text_layout, write_config
    out.mkdir(parents=True, exist_ok=True)
    paths = {role: out / name for role, name in FILES.items()}
    meta = {"lorakit.toy": "qwenimage"}
    save_safetensors_atomic(paths["checkpoint"], _cast(modules["transformer"].state_dict(), torch.bfloat16), meta)
    te = comfy_text_layout(modules["text_encoder"].state_dict())
    save_safetensors_atomic(paths["text_encoder"], _cast(te, torch.bfloat16), meta)
    save_safetensors_atomic(paths["vae"], _cast(vae_to_original(modules["vae"].state_dict()), torch.float32), meta)
    modules["tokenizer"].save_pretrained(str(paths["tokenizer_dir"]))
    write_config(paths["config"], configs()["transformer"], dict(modules["vae"].config),
                 modules["text_encoder"].config.text_config.to_dict())
    return paths


def build(kit: Any, plan_name: str, seed: int, t0: float) -> tuple[dict, dict]:
    """ToyRecipe.build: Qwen-Image's own pretraining (per-channel latent statistics in the VAE's config)."""
    return pretrain(kit, plans(kit)[plan_name], seed, t0)


TOY = ToyRecipe(files=FILES, configs=configs, make=make, vae="vae", adapter=adapter, save=save,
                # sampled as the pipeline does: true CFG (10 % of captions dropped in pretraining); lr 6e-3 learns the
                # concept best of 1e-3 / 3e-3 / 6e-3 / 1e-2 (benchmarks/RESULTS.md)
                demo=ToyDemo(steps=400, lr=6e-3, rank=8, sample_steps=20, cfg_scale=4.0),
                training={"text_max_length": TEXT_LENGTH, "timestep_sampling": "flux_shift"}, build=build)
