"""SD3.5's toy: an SD3Transformer2DModel of width 64 (2 heads of 32, 3 joint blocks, the first with Medium's second
self-attention ``attn2``, RMS q/k norm), CLIP-L and CLIP-G of width 16 (CLIPTextModelWithProjection, the real
vocabularies), a T5 encoder of width 32 and a 16-channel AutoencoderKL without quant convs, pretrained with the shared
recipe (lorakit/toy/build.py) through this family's own Adapter. Saved as Stability AI's single file with every
encoder bundled (``model.diffusion_model.``, ``first_stage_model.``, ``text_encoders.*.transformer.``) plus a diffusers
config folder; about 7 MB in bf16. Sampled as a base model (CFG; captions are dropped 10 % of the time in pretraining).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorakit.models.base import ToyDemo, ToyRecipe, init_kwargs

T5_MAX_LENGTH = 32            # toy T5 tokens (the pipeline uses 256)
FILES = {"checkpoint": "sd3.5_medium_toy.safetensors", "config": "config"}


def configs() -> dict[str, dict[str, Any]]:
    from . import configs as full
    transformer = {"_class_name": "SD3Transformer2DModel", "sample_size": 32, "patch_size": 2, "in_channels": 16,
                   "out_channels": 16, "num_layers": 3, "attention_head_dim": 32, "num_attention_heads": 2,
                   "joint_attention_dim": 32, "caption_projection_dim": 64, "pooled_projection_dim": 32,
                   "pos_embed_max_size": 32, "qk_norm": "rms_norm", "dual_attention_layers": [0]}
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "projection_dim": 16}
    clip_l = {**full.clip_l_config(), **small}
    clip_g = {**full.clip_g_config(), **small}
    t5 = {**full.t5_config(), "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2,
          "relative_attention_num_buckets": 32, "dropout_rate": 0.0}
    ae = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "block_out_channels": [8, 16, 32, 32], "layers_per_block": 1, "act_fn": "silu", "latent_channels": 16,
          "norm_num_groups": 8, "sample_size": 64, "scaling_factor": 1.0, "force_upcast": True,
          "mid_block_add_attention": True, "shift_factor": 0.0, "use_quant_conv": False, "use_post_quant_conv": False}
    return {"transformer": transformer, "clip_l": clip_l, "clip_g": clip_g, "t5": t5, "vae": ae}


def make(seed: int) -> dict[str, torch.nn.Module]:
    """Fresh seeded modules of the real classes: transformer, clip_l, clip_g, t5, vae."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    cfg = configs()
    clean = lambda c: {k: v for k, v in init_kwargs(c).items() if k != "torch_dtype"}  # noqa: E731
    torch.manual_seed(seed)
    cl = CLIPTextModelWithProjection(CLIPTextConfig(**clean(cfg["clip_l"])))
    cg = CLIPTextModelWithProjection(CLIPTextConfig(**clean(cfg["clip_g"])))
    t5 = T5EncoderModel(T5Config(**clean(cfg["t5"])))
    vae = AutoencoderKL(**init_kwargs(cfg["vae"]))
    tr = SD3Transformer2DModel(**init_kwargs(cfg["transformer"]))
    return {"transformer": tr, "clip_l": cl.eval(), "clip_g": cg.eval(), "t5": t5.eval(), "vae": vae}


def adapter(modules: dict[str, torch.nn.Module], cfg: Any) -> Any:
    """The SD3 Adapter bound to the in-memory toy modules, with the tokenizers a single-file load gives."""
    from .adapter import Adapter
    from .convert import detect, diffusers_to_original
    from .load import SD3Components, _tokenizer_loader

    tr = modules["transformer"]
    shape = detect(diffusers_to_original(tr.state_dict()), "toy")
    a = Adapter(cfg)
    a.comps = SD3Components(tr, shape, shape.variant, "toy", {}, {"tokenizers": _tokenizer_loader(cfg.model, None)},
                            {k: modules[k] for k in ("clip_l", "clip_g", "t5", "vae")})
    return a


def read_vae(path: Path) -> torch.nn.Module:
    """A shipped toy VAE file (the Z-Image toy's BFL ``ae.safetensors``) through SD3's own VAE loader."""
    from safetensors.torch import load_file

    from .load import build_vae
    return build_vae(load_file(str(path)), torch.float32, str(path), configs()["vae"])


def save(modules: dict[str, torch.nn.Module], facts: dict[str, Any], out: Path) -> dict[str, Path]:
    """The official single file (bf16, every encoder bundled) + the diffusers config folder."""
    from .tiny import save_single_file, write_config
    out.mkdir(parents=True, exist_ok=True)
    ckpt = save_single_file(out / FILES["checkpoint"], modules, torch.bfloat16)
    folder = write_config(out / FILES["config"], modules)
    import json
    vae = {**configs()["vae"], "scaling_factor": facts.get("scaling_factor", 1.5305),
           "shift_factor": facts.get("shift_factor", 0.0609)}
    (folder / "vae" / "config.json").write_text(json.dumps(vae, indent=2) + "\n", encoding="utf-8")
    return {"checkpoint": ckpt, "config": folder}


TOY = ToyRecipe(files=FILES, configs=configs, make=make, vae="vae", adapter=adapter, save=save,
                # the Z-Image toy's VAE has this very config (FLUX.1's 16-channel layout, no quant convs) and was trained
                # by the same recipe on the same scenes: reused, it saves 10 of the build's 19 CPU minutes
                vae_from="zimage", read_vae=read_vae,
                # lr 6e-3: at 1e-3 the 400 steps raised the concept score (0.270 → 0.349) but drew no cross; 6e-3 meets the
                # learning benchmark's FLUX.1 thresholds (benchmarks/RESULTS.md), as for the Z-Image toy
                demo=ToyDemo(steps=400, lr=6e-3, rank=8, sample_steps=20, cfg_scale=4.0),
                training={"t5_max_length": T5_MAX_LENGTH, "timestep_sampling": "shift", "discrete_flow_shift": 3.0})
