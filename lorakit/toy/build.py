"""Build the toy base models: tiny SDXL and FLUX.1 of the real architectures, pretrained on the toy world.

``python -m lorakit.toy build [--family sdxl|flux1|all] [--out DIR]``

Recipe (per family, all on one CPU thread, deterministic):
1. Render a fixed set of world scenes (base shapes only for the denoiser; every shape for the VAE,
   because a VAE is a general image codec: the real SDXL/FLUX VAEs encode shapes their denoisers never
   saw, and the LoRA demo needs the concept to survive encode/decode).
2. Train the AutoencoderKL: reconstruction (MSE + L1) + a small KL term. Its latent scale/shift for the
   config are measured on the data (as SD's 0.18215 once was), so the denoiser sees unit-variance latents.
3. Text encoders are *frozen random* (with the real tokenizers). Why: a real base model's text encoders
   are trained elsewhere and frozen while the denoiser learns to read them; random token embeddings of a
   49,408/32,128 vocabulary are distinct enough for a denoiser to read "red", "circle"...; and frozen
   encoders let the build encode the ~180 distinct captions once, so every step is denoiser-only.
   The trigger word therefore has a random embedding the denoiser never learned: exactly the situation
   a LoRA faces with a new word on a real model.
4. Train the denoiser with the real objectives (``lorakit.train.objectives``): SDXL DDPM ε-prediction,
   scaled-linear betas, SDXL micro-conditioning time ids; FLUX rectified flow (target ε − x0) with the
   FLUX time shift for its sequence length, guidance input fed with random values (dev layout).
   10 % of captions are dropped to "" so classifier-free guidance works at sampling time.
5. Save in the real single-file layouts with the family converters, plus a diffusers config folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from lorakit.lora.io import file_sha256
from lorakit.toy import world

FAMILIES = ("sdxl", "flux1", "flux2")
SEED = 20260
LATENT_RES = 8            # 64 px / VAE factor 8
T5_MAX_LENGTH = 64        # toy FLUX text length (see TOY_TEXT in paths.py; real dev uses 512)
CAPTION_DROPOUT = 0.1
# SDXL's scaled-linear schedule leaves ~7 % of the signal at t=999, so without an offset the per-channel
# latent mean (here: the background colour) leaks through training and the sampler's starting noise picks
# the background instead of the prompt. A noise offset (SDXL itself used one) teaches the UNet to set it.
SDXL_NOISE_OFFSET = 0.15
# The real families' latent constants; adapters may read them from their ModelSpec instead of the config.
REAL_LATENT = {"sdxl": (0.13025, 0.0), "flux1": (0.3611, 0.1159)}


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


PLANS = {
    "full": Plan(n_vae_images=2400, vae_steps=1000, vae_batch=16, n_images=4000, steps=3500, batch=32),
    "quick": Plan(n_vae_images=32, vae_steps=3, vae_batch=4, n_images=32, steps=3, batch=4),
}


# ------------------------------------------------------------------------------------------ configs

def _clip_config(hidden: int, layers: int, heads: int, projection: int, pad_id: int) -> dict[str, Any]:
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 49408,
            "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "max_position_embeddings": 77, "projection_dim": projection,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
            "initializer_range": 0.02, "initializer_factor": 1.0, "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": pad_id}


def _vae_config(latent_channels: int, flux: bool) -> dict[str, Any]:
    cfg = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "block_out_channels": [8, 16, 32, 32], "layers_per_block": 1, "act_fn": "silu",
           "latent_channels": latent_channels, "norm_num_groups": 8, "sample_size": 64,
           "scaling_factor": 1.0, "force_upcast": True, "mid_block_add_attention": True}
    if flux:
        cfg.update(shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False)
    else:
        cfg.update(shift_factor=None, use_quant_conv=True, use_post_quant_conv=True)
    return cfg


def sdxl_configs() -> dict[str, dict[str, Any]]:
    """Tiny SDXL: 2-level UNet with SDXL's text_time add-embedding; TE1 (16) and TE2 (24) differ in width."""
    te1 = _clip_config(16, 2, 2, 16, 49407)
    te2 = {**_clip_config(24, 2, 2, 16, 0), "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu"}
    unet = {"_class_name": "UNet2DConditionModel", "sample_size": LATENT_RES, "in_channels": 4, "out_channels": 4,
            "layers_per_block": 1, "block_out_channels": [32, 64],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": [4, 8], "use_linear_projection": True, "transformer_layers_per_block": [1, 1],
            "norm_num_groups": 16, "cross_attention_dim": 16 + 24, "addition_embed_type": "text_time",
            "addition_time_embed_dim": 16, "projection_class_embeddings_input_dim": 6 * 16 + 16,
            "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "center_input_sample": False}
    return {"unet": unet, "vae": _vae_config(4, flux=False), "te1": te1, "te2": te2}


def flux1_configs() -> dict[str, dict[str, Any]]:
    """Tiny FLUX.1-dev: inner dim 64 (2 heads of 32), 2 double + 2 single blocks, guidance embedding."""
    transformer = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64,
                   "out_channels": None, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 32,
                   "num_attention_heads": 2, "joint_attention_dim": 16, "pooled_projection_dim": 16,
                   "guidance_embeds": True, "axes_dims_rope": [8, 12, 12]}
    clip_l = _clip_config(16, 2, 2, 16, 49407)
    t5 = {"architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": 32128, "d_model": 16,
          "d_kv": 8, "d_ff": 32, "num_layers": 2, "num_heads": 2, "relative_attention_num_buckets": 32,
          "relative_attention_max_distance": 128, "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6,
          "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu", "is_gated_act": True,
          "dense_act_fn": "gelu_new", "tie_word_embeddings": False, "is_encoder_decoder": False,
          "use_cache": False, "pad_token_id": 0, "eos_token_id": 1}
    return {"transformer": transformer, "clip_l": clip_l, "t5": t5, "ae": _vae_config(16, flux=True)}


def _model_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "model_type")}


# ------------------------------------------------------------------------------------------ helpers

def set_determinism(seed: int) -> None:
    """One thread, deterministic kernels, fixed seeds: a rebuild gives the same bytes."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def images_to_tensor(images: list) -> torch.Tensor:
    """PIL images → [N, 3, H, W] float32 in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


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


# ------------------------------------------------------------------------------------------ text

@torch.no_grad()
def sdxl_encode_text(te1, te2, tok1, tok2, prompts: list[str]) -> dict[str, torch.Tensor]:
    """SDXL conditioning: concat of both encoders' penultimate hidden states; TE2's projected pooled output."""
    ids1 = tok1(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids2 = tok2(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    o1 = te1(ids1, output_hidden_states=True)
    o2 = te2(ids2, output_hidden_states=True)
    hidden = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
    return {"encoder_hidden_states": hidden, "text_embeds": o2.text_embeds}


@torch.no_grad()
def flux_encode_text(clip, t5, tok_clip, tok_t5, prompts: list[str],
                     max_length: int = T5_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """FLUX conditioning: T5 last hidden state (padded to max_length) and CLIP's pooled output."""
    ids_c = tok_clip(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids_t = tok_t5(prompts, padding="max_length", max_length=max_length, truncation=True,
                   return_tensors="pt").input_ids
    return {"encoder_hidden_states": t5(ids_t).last_hidden_state,
            "pooled_projections": clip(ids_c).pooler_output}


def sdxl_time_ids(batch: int, size: int = 64) -> torch.Tensor:
    """Micro-conditioning (orig h, orig w, crop top, crop left, target h, target w) for unresized images."""
    return torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(batch, 1)


# ------------------------------------------------------------------------------------------ models

def make_sdxl(seed: int) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = sdxl_configs()
    torch.manual_seed(seed)
    te1 = CLIPTextModel(CLIPTextConfig(**_model_kwargs(cfg["te1"])))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_model_kwargs(cfg["te2"])))
    vae = AutoencoderKL(**_model_kwargs(cfg["vae"]))
    unet = UNet2DConditionModel(**_model_kwargs(cfg["unet"]))
    return {"unet": unet, "vae": vae, "te1": te1.eval(), "te2": te2.eval()}


def make_flux1(seed: int) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    cfg = flux1_configs()
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(**_model_kwargs(cfg["clip_l"])))
    t5 = T5EncoderModel(T5Config(**_model_kwargs(cfg["t5"])))
    ae = AutoencoderKL(**_model_kwargs(cfg["ae"]))
    transformer = FluxTransformer2DModel(**_model_kwargs(cfg["transformer"]))
    return {"transformer": transformer, "clip_l": clip.eval(), "t5": t5.eval(), "ae": ae}


def tokenizers(family: str) -> tuple[Any, Any]:
    from lorakit.models.tokenizers import clip_tokenizer, t5_tokenizer

    if family == "sdxl":
        return clip_tokenizer(), clip_tokenizer(pad_token="!")
    return clip_tokenizer(), t5_tokenizer()


# ------------------------------------------------------------------------------------------ denoisers

def sdxl_predict(unet, x_t: torch.Tensor, t: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:
    """ε-prediction of the UNet with SDXL's added conditions."""
    added = {"text_embeds": text["text_embeds"], "time_ids": sdxl_time_ids(x_t.shape[0])}
    return unet(x_t, t, encoder_hidden_states=text["encoder_hidden_states"], added_cond_kwargs=added).sample


def flux_predict(transformer, x_t: torch.Tensor, sigma: torch.Tensor, text: dict[str, torch.Tensor],
                 guidance: torch.Tensor) -> torch.Tensor:
    """Velocity prediction of the FLUX transformer on packed 2×2 latent patches."""
    from lorakit.train.objectives import image_position_ids, pack_latents, unpack_latents

    b, _, h, w = x_t.shape
    txt = text["encoder_hidden_states"]
    out = transformer(hidden_states=pack_latents(x_t), encoder_hidden_states=txt,
                      pooled_projections=text["pooled_projections"], timestep=sigma, guidance=guidance,
                      img_ids=image_position_ids(h, w), txt_ids=torch.zeros(txt.shape[1], 3)).sample
    return unpack_latents(out, h, w)


def train_denoiser(family: str, model: torch.nn.Module, means: torch.Tensor, stds: torch.Tensor,
                   cap_idx: torch.Tensor, text: dict[str, torch.Tensor], plan: Plan, gen: torch.Generator,
                   t0: float) -> list[float]:
    """Full-weight training with the family's real objective; returns the loss curve (every 100 steps)."""
    from lorakit.train import objectives as obj

    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, plan.steps))
    acp = obj.ddpm_alphas_cumprod()
    model.train()
    curve, running = [], []
    for step in range(plan.steps):
        idx = torch.randint(0, means.shape[0], (plan.batch,), generator=gen)
        x0 = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        ci = cap_idx[idx].clone()
        ci[torch.rand(plan.batch, generator=gen) < CAPTION_DROPOUT] = 0
        cond = {k: v[ci] for k, v in text.items()}
        if family == "sdxl":
            t = obj.sample_timesteps_uniform(plan.batch, 0, 1000, generator=gen)
            noise = obj.apply_noise_offset(noise, SDXL_NOISE_OFFSET, generator=gen)
            pred = sdxl_predict(model, obj.ddpm_add_noise(x0, noise, t, acp), t, cond)
            target = obj.ddpm_target(x0, noise, t, acp, "epsilon")
        else:
            sigma = obj.sample_sigmas(plan.batch, "flux_shift", generator=gen, seq_len=(LATENT_RES // 2) ** 2)
            guidance = 1.0 + 4.0 * torch.rand(plan.batch, generator=gen)
            pred = flux_predict(model, obj.flow_noise(x0, noise, sigma), sigma, cond, guidance)
            target = obj.flow_target(x0, noise)
        loss = obj.weighted_mean(obj.loss_per_sample(pred, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if (step + 1) % 100 == 0 or step == plan.steps - 1:
            curve.append(float(np.mean(running)))
            running = []
            if (step + 1) % 500 == 0 or step == plan.steps - 1:
                _log(f"{family} denoiser step {step + 1} loss {curve[-1]:.4f}", t0)
    model.eval()
    return curve


# ------------------------------------------------------------------------------------------ build



def pretrain(family: str, plan: Plan, seed: int = SEED, log_t0: float | None = None) -> tuple[dict, dict]:
    """Make and train one family's models; returns (modules, facts) with facts = scale/shift, loss curve."""
    set_determinism(seed)
    t0 = time.time() if log_t0 is None else log_t0
    models = make_sdxl(seed) if family == "sdxl" else make_flux1(seed)
    vae_key, den_key = ("vae", "unet") if family == "sdxl" else ("ae", "transformer")
    gen = torch.Generator().manual_seed(seed + 1)
    vae_scenes = world.sample_scenes(plan.n_vae_images, seed + 2, shapes=world.ALL_SHAPES,
                                     positions=tuple(world.POSITIONS))
    _log(f"{family}: training the VAE on {len(vae_scenes)} images", t0)
    train_vae(models[vae_key], images_to_tensor([world.render(s) for s in vae_scenes]), plan, gen, t0)

    scenes = world.sample_scenes(plan.n_images, seed + 3)
    pixels = images_to_tensor([world.render(s) for s in scenes])
    means, stds = encode_latents(models[vae_key], pixels)
    scale = round(float(1.0 / (means - means.mean()).std()), 4)
    # The shift is chosen so that re-targeting to the real constants needs no additive term (see
    # retarget_latents: FLUX's 3×3 conv_in cannot absorb one exactly); SDXL has none.
    real_scale, real_shift = REAL_LATENT[family]
    shift = real_shift * real_scale / scale
    means, stds = (means - shift) * scale, stds * scale
    _log(f"{family}: latent scale {scale} shift {shift:.5f}; encoding captions", t0)
    distinct, cap_idx = caption_index([world.caption(s) for s in scenes])
    tok_a, tok_b = tokenizers(family)
    if family == "sdxl":
        text = sdxl_encode_text(models["te1"], models["te2"], tok_a, tok_b, distinct)
    else:
        text = flux_encode_text(models["clip_l"], models["t5"], tok_a, tok_b, distinct)
    _log(f"{family}: training the denoiser on {len(scenes)} images, {len(distinct) - 1} captions", t0)
    curve = train_denoiser(family, models[den_key], means, stds, cap_idx, text, plan, gen, t0)
    return models, {"scaling_factor": scale, "shift_factor": shift, "loss_curve": curve}


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


def _final_configs(family: str, facts: dict) -> dict[str, dict[str, Any]]:
    cfg = sdxl_configs() if family == "sdxl" else flux1_configs()
    vae_key = "vae" if family == "sdxl" else "ae"
    cfg = copy.deepcopy(cfg)
    cfg[vae_key]["scaling_factor"] = facts["scaling_factor"]
    if family == "flux1":
        cfg[vae_key]["shift_factor"] = facts["shift_factor"]
    return cfg


def save_family(family: str, models: dict, facts: dict, out: Path) -> dict[str, Path]:
    """Write the single files + config folder with the family converters; returns role → path."""
    vae_key = "vae" if family == "sdxl" else "ae"
    new_scale, new_shift = REAL_LATENT[family]
    retarget_latents(models[vae_key], facts["scaling_factor"], facts["shift_factor"], new_scale, new_shift)
    facts = {**facts, "trained_scaling_factor": facts["scaling_factor"], "trained_shift_factor": facts["shift_factor"],
             "scaling_factor": new_scale, "shift_factor": new_shift}
    cfg = _final_configs(family, facts)
    out.mkdir(parents=True, exist_ok=True)
    if family == "sdxl":
        from lorakit.models.sdxl.configs import write_config_folder
        from lorakit.models.sdxl.convert import save_sgm_checkpoint

        ckpt = out / "toy_sdxl.safetensors"
        save_sgm_checkpoint(ckpt, unet=models["unet"], vae=models["vae"], te1=models["te1"], te2=models["te2"],
                            dtype=torch.float16, metadata={"lorakit.toy": "sdxl"})
        # the toy learned the unconditional case from captions dropped to "", not from zero embeddings
        write_config_folder(out / "config", unet=cfg["unet"], vae=cfg["vae"], te1=cfg["te1"], te2=cfg["te2"],
                            force_zeros_for_empty_prompt=False)
        return {"checkpoint": ckpt, "config": out / "config"}
    from lorakit.models.flux1.configs import write_config_folder
    from lorakit.models.flux1.convert import save_bfl_files

    files = save_bfl_files(out, transformer=models["transformer"], clip_l=models["clip_l"], t5=models["t5"],
                           ae=models["ae"], dtype=torch.bfloat16)
    write_config_folder(out / "config", "dev", transformer=cfg["transformer"], clip_l=cfg["clip_l"],
                        t5=cfg["t5"], ae=cfg["ae"])
    return {**{k: Path(v) for k, v in files.items()}, "config": out / "config"}


def build(family: str, out: Path, plan_name: str = "full", seed: int = SEED) -> dict[str, Any]:
    """Pretrain and save one family under ``out/<family>``; refuses to overwrite existing files."""
    if family not in FAMILIES:
        raise ValueError(f"--family: unknown family {family!r}; use one of {FAMILIES} or 'all'")
    target = Path(out) / family
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target}: already exists and is not empty; remove it or pass another --out")
    if family == "flux2":                        # its own recipe (128-channel normalised latents, Qwen3 text)
        from lorakit.toy import build_flux2
        return build_flux2.build(target, plan_name, seed)
    t0, c0 = time.time(), time.process_time()
    models, facts = pretrain(family, PLANS[plan_name], seed, t0)
    return finish(family, models, facts, target, plan_name, t0, c0)


def finish(family: str, models: dict, facts: dict, target: Path, plan_name: str, t0: float,
           c0: float) -> dict[str, Any]:
    """Save the trained models and write ``build.json`` (time, sizes, hashes, loss curve)."""
    paths = save_family(family, models, facts, target)
    facts = {**facts, "trained_scaling_factor": facts["scaling_factor"], "trained_shift_factor": facts["shift_factor"],
             "scaling_factor": REAL_LATENT[family][0], "shift_factor": REAL_LATENT[family][1]}
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    files = {role: p for role, p in paths.items() if p.is_file()}
    report = {"family": family, "plan": plan_name, "seconds": round(seconds, 1),
              "cpu_seconds": round(cpu_seconds, 1),
              "scaling_factor": facts["scaling_factor"], "shift_factor": facts["shift_factor"],
              "trained_scaling_factor": facts["trained_scaling_factor"],
              "trained_shift_factor": facts["trained_shift_factor"],
              "loss_curve": [round(x, 5) for x in facts["loss_curve"]],
              "files": {role: {"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                        for role, p in files.items()},
              "torch": torch.__version__}
    (target / "build.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _log(f"{family}: done in {seconds:.0f}s ({cpu_seconds:.0f} s CPU)", t0)
    return report
