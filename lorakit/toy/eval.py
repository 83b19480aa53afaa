"""Sampling straight from the toy models, and the learning benchmark (concept score before/after, drift).

The samplers here use the modules directly (no pipeline): DDIM for SDXL's ε-prediction UNet and flow Euler
for FLUX, both with classifier-free guidance (the toy bases were trained with 10 % caption dropout).
They exist so the build and the tests can check what a toy base draws without depending on the family
adapters; the lead wires ``evaluate`` to the adapters' own sampling and the trained LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from lorakit.data.images import to_images
from lorakit.toy import detector, world

# Fixed benchmark prompts. The concept prompts name the trigger; the drift prompts never do.
CONCEPT_PAIRS = (("red", "blue"), ("green", "white"), ("yellow", "black"), ("blue", "yellow"),
                 ("white", "red"), ("black", "green"))
DRIFT_PROMPTS = ("a red circle on a blue background", "a green square on a white background",
                 "a yellow triangle on a black background", "a blue circle on a yellow background",
                 "a white square on a red background", "a black triangle on a green background")
EVAL_SEEDS = (0, 1, 2, 3)

Generate = Callable[[list[str], list[int], bool], list[Image.Image]]


# --------------------------------------------------------------------------------------- the toy models

@dataclass
class ToyModel:
    """One family's toy modules in diffusers/transformers classes, plus what sampling needs."""

    family: str
    denoiser: torch.nn.Module
    vae: torch.nn.Module
    encode_text: Callable[[list[str]], dict[str, torch.Tensor]]
    scaling_factor: float
    shift_factor: float


def from_modules(family: str, modules: dict[str, Any], scaling_factor: float, shift_factor: float) -> ToyModel:
    """Wrap freshly built (or loaded) modules; tokenizers are lorakit's shipped ones."""
    from lorakit.toy import build

    tok_a, tok_b = build.tokenizers(family)
    if family == "sdxl":
        enc = lambda p: build.sdxl_encode_text(modules["te1"], modules["te2"], tok_a, tok_b, p)  # noqa: E731
        return ToyModel(family, modules["unet"], modules["vae"], enc, scaling_factor, shift_factor)
    enc = lambda p: build.flux_encode_text(modules["clip_l"], modules["t5"], tok_a, tok_b, p)  # noqa: E731
    return ToyModel(family, modules["transformer"], modules["ae"], enc, scaling_factor, shift_factor)


def load_toy(family: str, dtype: torch.dtype = torch.float32, root: Optional[Path] = None) -> ToyModel:
    """Load the shipped toy model (or one built under ``root``) through diffusers' single-file loader (SDXL)
    or lorakit's FLUX converters."""
    from lorakit.toy.paths import toy_paths

    p = toy_paths(family, root)
    if family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_single_file(str(p["checkpoint"]), config=str(p["config"]),
                                                          torch_dtype=dtype)
        mods = {"unet": pipe.unet, "vae": pipe.vae, "te1": pipe.text_encoder, "te2": pipe.text_encoder_2}
        vcfg = pipe.vae.config
        return from_modules(family, mods, vcfg.scaling_factor, 0.0)
    mods = _load_flux_modules(p, dtype)
    vcfg = mods["ae"].config
    return from_modules(family, mods, vcfg.scaling_factor, vcfg.shift_factor or 0.0)


def _load_flux_modules(p: dict, dtype: torch.dtype) -> dict[str, Any]:
    """BFL transformer + AE through lorakit's converters, CLIP-L/T5 through transformers (HF key layout)."""
    import json

    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lorakit.models.flux1 import convert

    cfg_dir = p["config"]
    read = lambda sub: json.loads((cfg_dir / sub / "config.json").read_text())  # noqa: E731
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_") and k not in ("architectures", "model_type")}  # noqa: E731
    tr = FluxTransformer2DModel(**strip(read("transformer")))
    tr.load_state_dict(convert.bfl_to_diffusers(load_file(str(p["checkpoint"]))))
    ae_cfg = read("vae")
    ae = AutoencoderKL(**strip(ae_cfg))
    ae.load_state_dict(convert.ae_bfl_to_diffusers(load_file(str(p["ae"])), ae_cfg))
    clip = CLIPTextModel(CLIPTextConfig(**strip(read("text_encoder"))))
    csd = {k.removeprefix("text_model."): v for k, v in load_file(str(p["clip_l"])).items()}
    clip.load_state_dict(csd, strict=False)
    t5 = T5EncoderModel(T5Config(**strip(read("text_encoder_2"))))
    tsd = load_file(str(p["t5xxl"]))
    tsd.setdefault("encoder.embed_tokens.weight", tsd["shared.weight"])
    t5.load_state_dict(tsd, strict=False)
    return {k: m.to(dtype).eval() for k, m in
            {"transformer": tr, "ae": ae, "clip_l": clip.eval(), "t5": t5.eval()}.items()}


# --------------------------------------------------------------------------------------- sampling

def _initial_noise(model: ToyModel, seeds: Sequence[int]) -> torch.Tensor:
    ch = model.vae.config.latent_channels
    res = world.IMAGE_SIZE // (2 ** (len(model.vae.config.block_out_channels) - 1))
    return torch.cat([torch.randn(1, ch, res, res, generator=torch.Generator().manual_seed(int(s)))
                      for s in seeds])


@torch.no_grad()
def decode(model: ToyModel, latents: torch.Tensor) -> list[Image.Image]:
    """Unscale/unshift latents, decode with the VAE, convert to 8-bit RGB images."""
    x = model.vae.decode(latents / model.scaling_factor + model.shift_factor).sample
    return to_images(x)


@torch.no_grad()
def sample(model: ToyModel, prompts: list[str], seeds: Sequence[int], steps: int = 20, cfg: float = 4.0,
           guidance: float = 3.5) -> list[Image.Image]:
    """Draw one image per (prompt, seed): DDIM (SDXL) or flow Euler (FLUX), with classifier-free guidance."""
    from lorakit.toy import build
    from lorakit.diffusion import objectives as obj

    x = _initial_noise(model, seeds)
    b = x.shape[0]
    text = model.encode_text(list(prompts) + [""] * b)
    def both(fn):
        out = fn(torch.cat([x, x]), text)
        cond, unc = out.chunk(2)
        return unc + cfg * (cond - unc)
    if model.family == "sdxl":
        acp = obj.ddpm_alphas_cumprod()
        ts = torch.linspace(999, 0, steps).round().long()
        for i, t in enumerate(ts):
            eps = both(lambda xx, tx: build.sdxl_predict(model.denoiser, xx, t.repeat(xx.shape[0]), tx))
            a = acp[t]
            a_prev = acp[ts[i + 1]] if i + 1 < steps else torch.tensor(1.0)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    else:
        sigmas = obj.flow_schedule(steps, seq_len=(x.shape[-1] // 2) * (x.shape[-2] // 2))
        for i in range(steps):
            s = sigmas[i].repeat(2 * b)
            g = torch.full((2 * b,), guidance)
            v = both(lambda xx, tx: build.flux_predict(model.denoiser, xx, s, tx, g))
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    return decode(model, x)


# --------------------------------------------------------------------------------------- benchmark

def concept_prompts(trigger: str) -> list[str]:
    return [f"a {c} {trigger} on a {b} background" for c, b in CONCEPT_PAIRS]


def _expand(prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]


def prompt_following(images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, float]:
    """Fraction of images whose shape / colour / background (per the detector) match the prompt words."""
    hits = {"shape": [], "colour": [], "background": [], "all": []}
    for img, prompt in zip(images, prompts):
        words = prompt.split()
        want_bg = words[words.index("background") - 1]
        want_col = next(w for w in words if w in world.COLOURS)
        want_shape = next((w for w in words if w in world.ALL_SHAPES), world.CONCEPT_SHAPE)
        r = detector.read(img)
        ok = (r.shape == want_shape, r.colour == want_col, r.background == want_bg)
        for key, v in zip(("shape", "colour", "background"), ok):
            hits[key].append(v)
        hits["all"].append(all(ok))
    return {k: float(np.mean(v)) for k, v in hits.items()}


def evaluate(generate: Generate, trigger: str = world.DEFAULT_TRIGGER,
             seeds: Sequence[int] = EVAL_SEEDS) -> dict[str, float]:
    """The learning benchmark. ``generate(prompts, seeds, with_lora)`` returns one image per prompt/seed.

    Returns concept_score_{before,after} (mean detector score on trigger prompts), concept_rate_{before,after}
    (fraction classified as the concept shape), and for trigger-free prompts: drift_pixel (mean |base −
    base+LoRA| per pixel, 0..1), drift_shape_agreement (same shape class with and without LoRA),
    drift_concept_leak (fraction of trigger-free LoRA images classified as the concept).
    """
    cp, cs = _expand(concept_prompts(trigger), seeds)
    dp, ds = _expand(DRIFT_PROMPTS, seeds)
    before, after = generate(cp, cs, False), generate(cp, cs, True)
    base, lora = generate(dp, ds, False), generate(dp, ds, True)
    rb, ra = [detector.read(i) for i in before], [detector.read(i) for i in after]
    sb, sl = [detector.shape_of(i) for i in base], [detector.shape_of(i) for i in lora]
    pix = [np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255.0 for a, b in zip(base, lora)]
    return {
        "concept_score_before": float(np.mean([r.concept_score for r in rb])),
        "concept_score_after": float(np.mean([r.concept_score for r in ra])),
        "concept_rate_before": float(np.mean([r.shape == world.CONCEPT_SHAPE for r in rb])),
        "concept_rate_after": float(np.mean([r.shape == world.CONCEPT_SHAPE for r in ra])),
        "concept_colour_match_after": prompt_following(after, cp)["colour"],
        "drift_pixel": float(np.mean(pix)),
        "drift_shape_agreement": float(np.mean([a == b for a, b in zip(sb, sl)])),
        "drift_concept_leak": float(np.mean([s == world.CONCEPT_SHAPE for s in sl])),
        "n_images": float(len(cp) + len(dp)),
    }


def before_after_grid(images_before: Sequence[Image.Image], images_after: Sequence[Image.Image],
                      labels: Optional[Sequence[str]] = None, scale: int = 2) -> Image.Image:
    """Two rows (before on top, after below) with a short label above each column."""
    if len(images_before) != len(images_after):
        raise ValueError(f"before_after_grid: {len(images_before)} 'before' images but {len(images_after)} 'after'")
    n = len(images_before)
    if n == 0:
        raise ValueError("before_after_grid: no images")
    w, h = (images_before[0].width * scale, images_before[0].height * scale)
    top, left = 14, 44
    grid = Image.new("RGB", (left + n * w, top + 2 * h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    draw.text((2, top + h // 2 - 5), "before", fill=(0, 0, 0))
    draw.text((2, top + h + h // 2 - 5), "after", fill=(0, 0, 0))
    for i, (b, a) in enumerate(zip(images_before, images_after)):
        grid.paste(b.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (left + i * w, top))
        grid.paste(a.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (left + i * w, top + h))
        if labels is not None:
            draw.text((left + i * w + 2, 1), str(labels[i])[: w // 6], fill=(0, 0, 0))
    return grid


def sample_grid(model: ToyModel, prompts: Sequence[str], seeds: Sequence[int], **kw: Any) -> Image.Image:
    """Rows = prompts, columns = seeds (for BUILD.md and eyeballing)."""
    p, s = _expand(prompts, seeds)
    imgs = sample(model, p, s, **kw)
    n = len(seeds)
    grid = Image.new("RGB", (64 * n, 64 * len(prompts)), (255, 255, 255))
    for i, im in enumerate(imgs):
        grid.paste(im, (64 * (i % n), 64 * (i // n)))
    return grid
