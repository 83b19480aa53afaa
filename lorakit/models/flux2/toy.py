"""The toy FLUX.2 (Klein layout, base): tiny models of the real classes pretrained on the toy world (``TOY``).

Recipe, as the other toys (lorakit/toy/build.py), but pretrained by this package itself (``ToyRecipe.build``): the
AutoencoderKLFlux2 learns the toy images; its latent batch-norm statistics (FLUX.2's per-channel latent
normalisation, shipped inside ``ae.safetensors``) are measured on the data, as SD's scale once was; the Qwen3 text
encoder is frozen random (a tokenizer of the real class with one token per toy-world word, so the trigger word stays
an unseen multi-token string); the transformer learns rectified flow on the 2x2-patchified, normalised latents
(FLUX.2's ``flux_shift`` for 16 tokens, target ε − x0) with 10 % of captions dropped so CFG works (a base model: no
guidance input, sampled with CFG). Saved in the real single-file layouts: BFL transformer, HF-layout Qwen3, BFL
``ae.safetensors``, plus ``tokenizer/`` and a config folder (model_index.json says is_distilled = false).
"""


from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lorakit.models.base import ToyDemo, ToyRecipe

TEXT_LENGTH = 32          # toy prompt tokens, chat wrapper included (captions take 21-24; the pipelines use 512)
QWEN_WIDTH = 16
TRANSFORMER = {"patch_size": 1, "in_channels": 128, "num_layers": 2, "num_single_layers": 2,
               "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 3 * QWEN_WIDTH,
               "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": [8, 8, 8, 8],
               "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": False}
QWEN3 = {"hidden_size": QWEN_WIDTH, "intermediate_size": 32, "num_hidden_layers": 28, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 8, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
         "rope_theta": 1000000.0, "tie_word_embeddings": True, "use_cache": False}
AE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
      "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [8, 16, 32, 32], "layers_per_block": 1,
      "latent_channels": 32, "norm_num_groups": 8, "sample_size": 64, "use_quant_conv": True,
      "use_post_quant_conv": True, "batch_norm_eps": 1e-4, "patch_size": [2, 2]}
FILES = {"checkpoint": "flux2-klein-base-toy.safetensors", "text_encoder": "qwen_3_toy.safetensors",
         "ae": "flux2-ae.safetensors", "tokenizer_dir": "tokenizer", "config": "config"}


# shorter than the other toys' plan (VAE 1000 / denoiser 3500 steps): the 28-layer text path and 32 text tokens make
# each step several times dearer, and the 32-channel AE reconstructs the scenes sooner
def plans(kit: Any) -> dict[str, Any]:
    return {"full": kit.Plan(n_vae_images=2400, vae_steps=600, vae_batch=16, n_images=4000, steps=2000, batch=32),
            "quick": kit.PLANS["quick"]}


def world_words() -> list[str]:
    """Every word of the base world's captions (one token each in the toy tokenizer), sorted."""
    from lorakit.toy import world  # the toy world's vocabulary: asked only when the tiny tokenizer is built

    scenes = world.sample_scenes(2000, 7)
    return sorted({w.strip(",.") for s in scenes for w in world.caption(s).split()})


def make(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from lorakit.models.flux2.text import tiny_qwen_tokenizer
    tok = tiny_qwen_tokenizer(world_words(), bare=("user", "assistant", "\n\n"))
    torch.manual_seed(seed)
    te = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=None,
                                      eos_token_id=tok.eos_token_id, **QWEN3)).eval()
    ae = AutoencoderKLFlux2(**AE)
    tr = Flux2Transformer2DModel(**TRANSFORMER)
    return {"transformer": tr, "text_encoder": te, "ae": ae, "tokenizer": tok}


def predict(transformer, x_t: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The velocity as the Klein pipeline runs the transformer (tokens = latent pixels, ids (0, row, col, 0))."""
    from lorakit.models.flux2 import maths
    from lorakit.models.flux2.text import text_position_ids
    b, _, h, w = x_t.shape
    out = transformer(hidden_states=maths.pack(x_t), encoder_hidden_states=text, timestep=sigma,
                      img_ids=maths.image_position_ids(h, w), txt_ids=text_position_ids(text.shape[1]),
                      guidance=None).sample
    return maths.unpack(out, h, w)


def pretrain(kit: Any, plan: Any, seed: int, t0: float) -> tuple[dict, dict]:
    from lorakit.models.flux2 import maths
    from lorakit.models.flux2.text import encode_qwen3
    kit.set_determinism(seed)
    models = make(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    vae_scenes = kit.world.sample_scenes(plan.n_vae_images, seed + 2, shapes=kit.world.ALL_SHAPES,
                                     positions=tuple(kit.world.POSITIONS))
    kit.log(f"flux2: training the AE on {len(vae_scenes)} images", t0)
    kit.train_vae(models["ae"], kit.images_to_tensor([kit.world.render(s) for s in vae_scenes]), plan, gen, t0)
    scenes = kit.world.sample_scenes(plan.n_images, seed + 3)
    means, _stds = kit.encode_latents(models["ae"], kit.images_to_tensor([kit.world.render(s) for s in scenes]))
    packed = maths.patchify(means)                                   # [N, 128, 4, 4]
    mu = packed.mean(dim=(0, 2, 3))
    var = packed.var(dim=(0, 2, 3), unbiased=False)
    with torch.no_grad():
        models["ae"].bn.running_mean.copy_(mu)
        models["ae"].bn.running_var.copy_(var)
    std = torch.sqrt(var + AE["batch_norm_eps"]).view(1, -1, 1, 1)
    distinct, cap_idx = kit.caption_index([kit.world.caption(s) for s in scenes])
    with torch.no_grad():
        text, _ids, _mask = encode_qwen3(models["text_encoder"].model, models["tokenizer"], distinct,
                                         max_length=TEXT_LENGTH)
    kit.log(f"flux2: training the transformer on {len(scenes)} images, {len(distinct) - 1} captions", t0)
    tr = models["transformer"]
    tr.train()

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(0, means.shape[0], (plan.batch,), generator=gen)
        # the posterior mean, as lorakit's adapter and the pipelines encode (a sampled z would put the unused AE
        # channels' unit posterior noise, scaled up by their small batch-norm std, into the target)
        x0 = (maths.patchify(means[idx]) - mu.view(1, -1, 1, 1)) / std
        noise = torch.randn(x0.shape, generator=gen)
        ci = cap_idx[idx].clone()
        ci[torch.rand(plan.batch, generator=gen) < kit.CAPTION_DROPOUT] = 0
        sigma = maths.sample_sigmas(plan.batch, "flux_shift", gen, seq_len=x0.shape[-1] * x0.shape[-2])
        pred = predict(tr, maths.flow_noise(x0, noise, sigma), sigma, text[ci])
        return torch.nn.functional.mse_loss(pred, maths.flow_target(x0, noise))

    curve = kit.fit(tr.parameters(), plan.steps, plan.lr, loss_at, "flux2 transformer", t0)
    tr.eval()
    return models, {"loss_curve": curve}


def save(models: dict, facts: dict, out: Path) -> dict[str, Path]:
    from lorakit.lora.io import save_safetensors_atomic
    from lorakit.models.flux2 import configs
    from lorakit.models.flux2.convert import ae_diffusers_to_bfl, diffusers_to_bfl
    out.mkdir(parents=True, exist_ok=True)
    paths = {role: out / name for role, name in FILES.items()}

    def cast(sd: dict, dtype: torch.dtype) -> dict:
        return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}

    meta = {"lorakit.toy": "flux2"}
    save_safetensors_atomic(paths["checkpoint"], cast(diffusers_to_bfl(models["transformer"].state_dict()),
                                                      torch.bfloat16), meta)
    te = {k: v for k, v in models["text_encoder"].state_dict().items() if k != "lm_head.weight"}
    save_safetensors_atomic(paths["text_encoder"], cast(te, torch.bfloat16), meta)
    save_safetensors_atomic(paths["ae"], cast(ae_diffusers_to_bfl(models["ae"].state_dict()), torch.float32), meta)
    models["tokenizer"].save_pretrained(str(paths["tokenizer_dir"]))
    cfg_dir = paths["config"]
    (cfg_dir / "transformer").mkdir(parents=True, exist_ok=True)
    (cfg_dir / "transformer" / "config.json").write_text(json.dumps(
        {**configs.transformer_config("klein-4b"), **TRANSFORMER}, indent=2) + "\n", encoding="utf-8")
    (cfg_dir / "model_index.json").write_text(json.dumps(
        {"_class_name": "Flux2KleinPipeline", "is_distilled": False}, indent=2) + "\n", encoding="utf-8")
    return paths


def build(kit: Any, plan_name: str, seed: int, t0: float) -> tuple[dict, dict]:
    """ToyRecipe.build: FLUX.2's own pretraining (its latents are normalised by the AE's batch-norm statistics, which
    the shared recipe's scale and shift cannot express)."""
    return pretrain(kit, plans(kit)[plan_name], seed, t0)


def configs() -> dict[str, dict[str, Any]]:
    return {"transformer": dict(TRANSFORMER), "text_encoder": dict(QWEN3), "ae": dict(AE)}


def adapter(modules: dict, cfg: Any) -> Any:
    """The family Adapter on in-memory toy modules: written in the real layouts to a temporary folder and loaded the
    way a user's files are (the tokenizer is not a module, so there is no shortcut through ``attach``)."""
    import tempfile
    from dataclasses import replace

    from lorakit.models.flux2.adapter import Adapter

    folder = Path(tempfile.mkdtemp(prefix="lorakit-flux2-toy-"))
    paths = save(modules, {}, folder)
    model = replace(cfg.model, family="flux2", checkpoint=str(paths["checkpoint"]),
                    text_encoder=str(paths["text_encoder"]), ae=str(paths["ae"]),
                    tokenizer_dir=str(paths["tokenizer_dir"]), config_dir=str(paths["config"]))
    cfg = replace(cfg, model=model)
    out = Adapter(cfg)
    out.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    return out


TOY = ToyRecipe(files=FILES, configs=configs, make=make, vae="ae", adapter=adapter, save=save,
                # a Klein *base* model pretrained with 32 prompt tokens: sampled with true CFG. lr 6e-3, 1000 steps:
                # in 400 steps (lr 1e-3 to 1.2e-2) it drew a cross in 4-17 % of trigger samples; 1000 steps reach
                # 21-42 % over 3 training seeds (issue 19; benchmarks/RESULTS.md, "FLUX.2 demo recipe")
                demo=ToyDemo(steps=1000, lr=6e-3, rank=8, sample_steps=20, cfg_scale=4.0),
                training={"text_max_length": TEXT_LENGTH}, build=build)
