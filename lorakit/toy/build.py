"""Build the toy base models: tiny models of each family's real architectures, pretrained on the toy world.

``python -m lorakit.toy build [--family NAME|all] [--out DIR]``

What a family's toy is made of (configs, classes, file layout, pretraining knobs) is its ``TOY`` recipe
(:class:`lorakit.models.base.ToyRecipe`, in ``lorakit/models/<family>/toy.py``); the maths of noising, prediction
and text encoding is the family's own Adapter. This module names no family.

Recipe (per family, all on one CPU thread, deterministic):
1. Render a fixed set of world scenes (base shapes only for the denoiser; every shape for the VAE,
   because a VAE is a general image codec: the real SDXL/FLUX VAEs encode shapes their denoisers never
   saw, and the LoRA demo needs the concept to survive encode/decode).
2. Train the AutoencoderKL (or, with the recipe's ``vae_from``, start from that toy's shipped VAE of the same class
   and config: :func:`shipped_vae`): reconstruction (MSE + L1) + a small KL term. Its latent scale/shift for the
   config are measured on the data (as SD's 0.18215 once was), so the denoiser sees unit-variance latents.
3. Text encoders are *frozen random* (with the real tokenizers). Why: a real base model's text encoders
   are trained elsewhere and frozen while the denoiser learns to read them; random token embeddings of a
   49,408/32,128 vocabulary are distinct enough for a denoiser to read "red", "circle"...; and frozen
   encoders let the build encode the ~180 distinct captions once, so every step is denoiser-only.
   The trigger word therefore has a random embedding the denoiser never learned: exactly the situation
   a LoRA faces with a new word on a real model.
4. Train the denoiser through the family Adapter bound to the in-memory modules (``TOY.adapter``): captions
   encoded by ``adapter.encode_text``, noise and target from ``adapter.noise`` with the recipe's [training]
   settings (SDXL: DDPM ε-prediction, scaled-linear betas, noise offset 0.15; FLUX: rectified flow with the
   FLUX time shift for its sequence length), prediction by ``adapter.predict`` (or ``TOY.pretrain_predict``:
   FLUX.1-dev feeds the guidance input random values). 10 % of captions are dropped to "" so classifier-free
   guidance works at sampling time.
5. Re-target the VAE to the family's real latent constants (``SPEC.vae_scale`` / ``vae_shift``) and save in the
   real single-file layouts with the family converters (``TOY.save``), plus a diffusers config folder.
"""


from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lorakit.data.images import to_tensor
from lorakit.fsutil import write_json
from lorakit.lora.io import file_sha256
from lorakit.toy import world
from lorakit.toy.paths import toy_recipe

SEED = 20260
CAPTION_DROPOUT = 0.1


@dataclass(frozen=True)
class Plan:
    """How long each stage trains (the 'quick' plan exists for the bit-for-bit reproducibility test)."""

    n_vae_images: int
    vae_steps: int
    vae_batch: int
    n_images: int
    steps: int
    batch: int
    lr: float = 1e-3
    vae_lr: float = 2e-3
    vae_crop: int = 0          # > 0: the first 3/4 of the VAE steps see random crops of this side (a multiple of 8)


PLANS = {
    "full": Plan(n_vae_images=2400, vae_steps=1000, vae_batch=16, n_images=4000, steps=3500, batch=32),
    "quick": Plan(n_vae_images=32, vae_steps=3, vae_batch=4, n_images=32, steps=3, batch=4),
}


# ------------------------------------------------------------------------------------------ helpers

def toy_config(family: str, *, pretraining: bool = False, model: Optional[dict[str, Any]] = None) -> Any:
    """The Config a toy adapter is made with: the recipe's [training] keys (plus its pretraining keys when
    ``pretraining``), on the CPU in fp32 without gradient checkpointing; ``model`` fills [model] (file paths)."""
    from lorakit.config.schema import Config, MemoryCfg, ModelCfg, TrainingCfg

    recipe = toy_recipe(family)
    training = {**recipe.training, **(recipe.pretrain if pretraining else {})}
    return Config(model=ModelCfg(**{"family": family, **(model or {})}),
                  training=dataclasses.replace(TrainingCfg(), device="cpu", mixed_precision="no", **training),
                  memory=dataclasses.replace(MemoryCfg(), gradient_checkpointing=False))


def set_determinism(seed: int) -> None:
    """One thread, deterministic kernels, fixed seeds: a rebuild gives the same bytes."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def images_to_tensor(images: list) -> torch.Tensor:
    """PIL images → [N, 3, H, W] float32 in [-1, 1] (:func:`lorakit.data.images.to_tensor` of each)."""
    return torch.stack([to_tensor(im) for im in images])


def _log(msg: str, t0: float) -> None:
    print(f"[toy build {time.time() - t0:7.1f}s] {msg}", flush=True)


def _cosine_lr(step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * 0.95 + 0.05


def train_vae(vae: torch.nn.Module, pixels: torch.Tensor, plan: Plan, gen: torch.Generator,
              t0: float) -> None:
    """Reconstruction (MSE + L1) + small KL; the KL keeps the latent a well-behaved Gaussian."""
    opt = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, plan.vae_steps))
    vae.train()
    for step in range(plan.vae_steps):
        idx = torch.randint(0, pixels.shape[0], (plan.vae_batch,), generator=gen)
        x = pixels[idx]
        if plan.vae_crop and step < plan.vae_steps * 3 // 4:
            i, j = (8 * torch.randint(0, (x.shape[-1] - plan.vae_crop) // 8 + 1, (2,), generator=gen)).tolist()
            x = x[..., i:i + plan.vae_crop, j:j + plan.vae_crop]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean ** 2 + post.var - 1.0 - post.logvar).mean()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == plan.vae_steps - 1:
            _log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.2f}", t0)
    vae.eval()


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, pixels: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (sampled afresh each training step)."""
    means, stds = [], []
    for i in range(0, pixels.shape[0], batch):
        post = vae.encode(pixels[i:i + batch]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def caption_index(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct captions (with "" first, for caption dropout) and each image's index into them."""
    distinct = [""] + sorted(set(captions))
    pos = {c: i for i, c in enumerate(distinct)}
    return distinct, torch.tensor([pos[c] for c in captions])


# ------------------------------------------------------------------------------------------ denoiser

def fit(params: Any, steps: int, lr: float, loss_at: Any, label: str, t0: float) -> list[float]:
    """Full-weight pretraining: AdamW (weight decay 0.01) on the warm-up + cosine schedule, gradients clipped to
    norm 1; ``loss_at(step)`` draws the batch and returns the loss. Returns the mean loss of each 100 steps."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps))
    curve: list[float] = []
    running: list[float] = []
    for step in range(steps):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if (step + 1) % 100 == 0 or step == steps - 1:
            curve.append(float(np.mean(running)))
            running = []
            if (step + 1) % 500 == 0 or step == steps - 1:
                _log(f"{label} step {step + 1} loss {curve[-1]:.4f}", t0)
    return curve


def toy_batch(latents: torch.Tensor, text: dict[str, torch.Tensor]) -> Any:
    """A training Batch of unresized, uncropped world images (micro-conditioning = the image size)."""
    from lorakit.models.base import Batch

    b, size = latents.shape[0], world.IMAGE_SIZE
    return Batch(latents=latents, text=text, original_sizes=[(size, size)] * b, crop_top_lefts=[(0, 0)] * b,
                 target_sizes=[(size, size)] * b, loss_weight=torch.ones(b))


def train_denoiser(recipe: Any, adapter: Any, training: Any, means: torch.Tensor, stds: torch.Tensor,
                   cap_idx: torch.Tensor, text: dict[str, torch.Tensor], plan: Plan, gen: torch.Generator,
                   t0: float) -> list[float]:
    """Full-weight training of ``adapter.denoiser()`` with the family's own noising and prediction (the
    adapter's ``noise`` with ``training``, then ``predict`` or the recipe's ``pretrain_predict``); returns the
    loss curve (mean every 100 steps)."""
    from lorakit.diffusion import objectives as obj

    model = adapter.denoiser()
    model.requires_grad_(True)
    predict = recipe.pretrain_predict or (lambda a, noised, batch, _gen: a.predict(noised, batch))
    model.train()

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(0, means.shape[0], (plan.batch,), generator=gen)
        x0 = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        ci = cap_idx[idx].clone()
        ci[torch.rand(plan.batch, generator=gen) < CAPTION_DROPOUT] = 0
        batch = toy_batch(x0, {k: v[ci] for k, v in text.items()})
        noised = adapter.noise(x0, noise, batch, training, gen)
        pred = predict(adapter, noised, batch, gen)
        return obj.weighted_mean(obj.loss_per_sample(pred, noised.target), noised.weight)

    curve = fit(model.parameters(), plan.steps, plan.lr, loss_at, f"{adapter.spec.family} denoiser", t0)
    model.requires_grad_(False)
    model.eval()
    return curve


# ------------------------------------------------------------------------------------------ build

def real_latent(family: str) -> tuple[float, float]:
    """The family's real latent constants (``SPEC.vae_scale``, ``SPEC.vae_shift``) the saved VAE speaks."""
    from lorakit.models.registry import get_family

    spec = get_family(family).SPEC
    return float(spec.vae_scale), float(spec.vae_shift)


def pretrain(family: str, plan: Plan, seed: int = SEED, log_t0: float | None = None) -> tuple[dict, dict]:
    """Make and train one family's models; returns (modules, facts) with facts = scale/shift, loss curve."""
    recipe = toy_recipe(family)
    set_determinism(seed)
    t0 = time.time() if log_t0 is None else log_t0
    models = recipe.make(seed)
    vae = models[recipe.vae]
    gen = torch.Generator().manual_seed(seed + 1)
    vae_scenes = world.sample_scenes(plan.n_vae_images, seed + 2, shapes=world.ALL_SHAPES,
                                     positions=tuple(world.POSITIONS))
    reused = None
    if recipe.vae_from:                                  # another toy's trained VAE of the same class and config
        vae, reused = shipped_vae(recipe)
        models[recipe.vae] = vae
        _log(f"{family}: the VAE is the {recipe.vae_from} toy's {reused['file']} (not trained again)", t0)
    else:
        _log(f"{family}: training the VAE on {len(vae_scenes)} images", t0)
        train_vae(vae, images_to_tensor([world.render(s) for s in vae_scenes]), plan, gen, t0)

    scenes = world.sample_scenes(plan.n_images, seed + 3)
    pixels = images_to_tensor([world.render(s) for s in scenes])
    means, stds = encode_latents(vae, pixels)
    scale = round(float(1.0 / (means - means.mean()).std()), 4)
    # The shift is chosen so that re-targeting to the real constants needs no additive term (see
    # retarget_latents: FLUX's 3×3 conv_in cannot absorb one exactly); SDXL has none.
    real_scale, real_shift = real_latent(family)
    shift = real_shift * real_scale / scale
    means, stds = (means - shift) * scale, stds * scale
    _log(f"{family}: latent scale {scale} shift {shift:.5f}; encoding captions", t0)
    distinct, cap_idx = caption_index([world.caption(s) for s in scenes])
    cfg = toy_config(family, pretraining=True)
    adapter = recipe.adapter(models, cfg)
    with torch.no_grad():
        text = adapter.encode_text(distinct)
    _log(f"{family}: training the denoiser on {len(scenes)} images, {len(distinct) - 1} captions", t0)
    curve = train_denoiser(recipe, adapter, cfg.training, means, stds, cap_idx, text, plan, gen, t0)
    facts = {"scaling_factor": scale, "shift_factor": shift, "loss_curve": curve}
    return models, {**facts, "vae_from": reused} if reused else facts


def shipped_vae(recipe: Any) -> tuple[torch.nn.Module, dict[str, str]]:
    """The VAE of the toy ``recipe.vae_from`` names, read from its shipped file by this family's ``read_vae`` and
    checked to have this recipe's VAE config (latent constants aside: the build measures and re-targets them);
    returns (module in eval mode, {family, file, sha256} for build.json)."""
    from lorakit.errors import ModelLoadError
    from lorakit.toy.paths import toy_paths

    donor = recipe.vae_from
    path = toy_paths(donor)[toy_recipe(donor).vae]
    vae = recipe.read_vae(path).eval()
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    want = {k: norm(v) for k, v in recipe.configs()[recipe.vae].items()
            if not k.startswith("_") and k not in ("scaling_factor", "shift_factor")}
    differ = sorted(k for k, v in want.items() if norm(vae.config.get(k)) != v)
    if type(vae).__name__ != recipe.configs()[recipe.vae].get("_class_name", type(vae).__name__) or differ:
        raise ModelLoadError(f"{path}: the {donor} toy's VAE is not this toy's ({type(vae).__name__}; differs in "
                             f"{', '.join(differ) or 'class'}); set vae_from = None to train one")
    return vae, {"family": donor, "file": path.name, "sha256": file_sha256(path)}


@torch.no_grad()
def retarget_latents(vae: torch.nn.Module, scale: float, shift: float, new_scale: float, new_shift: float) -> None:
    """Re-parametrise a trained VAE so its latents have the real family's scale/shift, in place.

    The latent z becomes z' = a·z + b with a = scale / new_scale and b = new_shift − a·shift, so that
    (z' − new_shift)·new_scale == (z − shift)·scale: the denoiser sees the very same normalised latents.
    The encoder's last layer (quant_conv, or conv_out without quant convs) gets the affine map on its mean
    channels (+2·ln a on the log-variance); the decoder's first layer (post_quant_conv, or conv_in) gets
    the inverse. With a 1×1 post_quant_conv (SDXL) this is exact; with FLUX's 3×3 conv_in it is exact
    except that the zero padding at the image border now stands for z = −b/a instead of 0 (b is small).
    """
    a = scale / new_scale
    b = new_shift - a * shift
    if abs(b) < 1e-9:                                    # the build picks shift so that b == 0 (exact)
        b = 0.0
    enc = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else vae.encoder.conv_out
    dec = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else vae.decoder.conv_in
    c = vae.config.latent_channels
    enc.weight[:c] *= a
    enc.bias[:c] = a * enc.bias[:c] + b
    enc.bias[c:] += 2.0 * math.log(a)
    w = dec.weight / a                                   # [out, c, kh, kw]
    dec.bias -= (w * b).sum(dim=(1, 2, 3))
    dec.weight.copy_(w)


def save_family(family: str, models: dict, facts: dict, out: Path) -> dict[str, Path]:
    """Re-target the VAE to the real latent constants, then write the family's files (``TOY.save``: single files +
    config folder with the family converters); returns role → path."""
    recipe = toy_recipe(family)
    new_scale, new_shift = real_latent(family)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.build is not None:  # a family that pretrained itself saves its modules as they are
        return recipe.save(models, facts, out)
    retarget_latents(models[recipe.vae], facts["scaling_factor"], facts["shift_factor"], new_scale, new_shift)
    return recipe.save(models, {**facts, "scaling_factor": new_scale, "shift_factor": new_shift}, out)


def build(family: str, out: Path, plan_name: str = "full", seed: int = SEED) -> dict[str, Any]:
    """Pretrain and save one family under ``out/<family>``; refuses to overwrite existing files."""
    toy_recipe(family)                                   # ModelLoadError naming the toy families
    target = Path(out) / family
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target}: already exists and is not empty; remove it or pass another --out")
    t0, c0 = time.time(), time.process_time()
    recipe = toy_recipe(family)
    if recipe.build is not None:  # the family pretrains itself with the toy world's kit (see ToyRecipe.build)
        models, facts = recipe.build(kit(), plan_name, seed, t0)
    else:
        models, facts = pretrain(family, PLANS[plan_name], seed, t0)
    return finish(family, models, facts, target, plan_name, t0, c0)


def kit() -> Any:
    """What a family's own toy pretraining (``ToyRecipe.build``) may use of the toy world."""
    from types import SimpleNamespace

    return SimpleNamespace(world=world, Plan=Plan, PLANS=PLANS, CAPTION_DROPOUT=CAPTION_DROPOUT, log=_log,
                           cosine_lr=_cosine_lr, set_determinism=set_determinism, images_to_tensor=images_to_tensor,
                           train_vae=train_vae, encode_latents=encode_latents, caption_index=caption_index, fit=fit)


def finish(family: str, models: dict, facts: dict, target: Path, plan_name: str, t0: float,
           c0: float) -> dict[str, Any]:
    """Save the trained models and write ``build.json`` (time, sizes, hashes, loss curve)."""
    paths = save_family(family, models, facts, target)
    real_scale, real_shift = real_latent(family)
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    files = {role: Path(p) for role, p in paths.items() if Path(p).is_file()}
    report = {"family": family, "plan": plan_name, "seconds": round(seconds, 1),
              "cpu_seconds": round(cpu_seconds, 1),
              "scaling_factor": real_scale, "shift_factor": real_shift,
              "trained_scaling_factor": facts.get("scaling_factor"),
              "trained_shift_factor": facts.get("shift_factor"),
              "loss_curve": [round(x, 5) for x in facts["loss_curve"]],
              **({"vae_from": facts["vae_from"]} if facts.get("vae_from") else {}),
              "files": {role: {"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                        for role, p in files.items()},
              "torch": torch.__version__}
    write_json(target / "build.json", report)
    _log(f"{family}: done in {seconds:.0f}s ({cpu_seconds:.0f} s CPU)", t0)
    return report
