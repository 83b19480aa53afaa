"""FLUX.2 adapter against diffusers' Flux2KleinPipeline on the tiny model: prompt ids and embeddings, latents,
position ids, the timestep schedule and whole sampled latents (base with CFG, distilled without)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lorakit.models.base import SamplePrompt
from lorakit.models.flux2 import configs, maths, tiny
from lorakit.models.flux2.text import QWEN3_TURN, encode_qwen3, qwen3_texts
from tests.family_fixtures import flow_scheduler


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from diffusers import Flux2KleinPipeline

    from lorakit.config.load import load_config
    from lorakit.models.flux2 import Adapter
    models = tiny.tiny_models(seed=3, words=["red", "circle"])
    files = tiny.save_files(tmp_path_factory.mktemp("f2"), models, torch.float32)
    sched = flow_scheduler(configs.scheduler_config())
    pipe = Flux2KleinPipeline(scheduler=sched, vae=models["ae"], text_encoder=models["text_encoder"],
                              tokenizer=models["tokenizer"], transformer=models["transformer"], is_distilled=False)
    data = tmp_path_factory.mktemp("data")
    cfg = load_config(None, data={"model": {"family": "flux2", "checkpoint": str(files["checkpoint"]),
                                            "text_encoder": str(files["text_encoder"]), "ae": str(files["ae"]),
                                            "tokenizer_dir": str(files["tokenizer"]), "variant": "base"},
                                  "data": {"dir": str(data), "resolution": 64, "min_bucket_reso": 64},
                                  "training": {"mixed_precision": "no", "device": "cpu", "text_max_length": 40}})
    adapter = Adapter(cfg)
    adapter.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    return SimpleNamespace(models=models, pipe=pipe, adapter=adapter, cfg=cfg)


def test_prompt_ids_and_embeddings_equal_the_pipeline(world):
    prompts = ["a red circle", "ohwx, a blue square on a green background"]
    ids_p, mask_p = [], []
    for p in prompts:  # the pipeline's own tokenization, re-run to read the ids it used
        text = world.models["tokenizer"].apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                            add_generation_prompt=True, enable_thinking=False)
        assert text == QWEN3_TURN.format(prompt=p)            # the template renders Qwen3's turn exactly
        t = world.models["tokenizer"](text, return_tensors="pt", padding="max_length", truncation=True, max_length=40)
        ids_p.append(t.input_ids)
        mask_p.append(t.attention_mask)
    want, text_ids = world.pipe.encode_prompt(prompts, device=torch.device("cpu"), max_sequence_length=40)
    emb, ids, mask = encode_qwen3(world.models["text_encoder"], world.models["tokenizer"], prompts, max_length=40)
    assert torch.equal(ids, torch.cat(ids_p)) and torch.equal(mask, torch.cat(mask_p))
    assert emb.shape == (2, 40, 3 * tiny.TINY_QWEN_WIDTH) and torch.equal(emb, want)
    # through the adapter: text encoder rebuilt from the single file (Qwen3Model, no lm_head), same numbers
    got = world.adapter.encode_text(prompts)["prompt_embeds"]
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    from lorakit.models.flux2.text import text_position_ids
    assert torch.equal(text_position_ids(40), text_ids[0].to(torch.int64))


def test_template_fallback_is_qwen3s_turn(world):
    tok = world.models["tokenizer"]
    bare = SimpleNamespace(chat_template=None)
    assert qwen3_texts(bare, ["x y"]) == qwen3_texts(tok, ["x y"])


def test_latents_and_position_ids_equal_the_pipeline(world):
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 64, 96) * 2 - 1
    got = world.adapter.encode_images(pixels)
    want = world.pipe._encode_vae_image(pixels, generator=None)
    assert got.shape == (2, 128, 4, 6) and torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.equal(maths.pack(got), world.pipe._pack_latents(got))
    assert torch.equal(maths.image_position_ids(4, 6), world.pipe._prepare_latent_ids(got)[0])
    assert torch.equal(maths.unpatchify(maths.patchify(pixels)), pixels)
    assert torch.equal(maths.patchify(pixels), world.pipe._patchify_latents(pixels))


@pytest.mark.parametrize("seq,steps", [(16, 4), (1024, 50), (4096, 28), (6000, 4)])
def test_schedule_equals_the_pipeline_scheduler(world, seq, steps):
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
    assert maths.empirical_mu(seq, steps) == pytest.approx(compute_empirical_mu(seq, steps), abs=1e-12)
    sched = world.pipe.scheduler
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(seq, steps))
    assert torch.allclose(maths.sample_schedule(steps, seq), sched.sigmas.float(), atol=1e-6)


def test_flux_shift_training_sigmas_use_the_token_count():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s = maths.sample_sigmas(4096, "flux_shift", g1, seq_len=64 * 64)
    plain = torch.sigmoid(torch.randn(4096, generator=g2))
    k = math.exp(1.15)                                     # μ at 4096 tokens (1024² image) is max_shift
    assert torch.allclose(s, k * plain / (1 + (k - 1) * plain), atol=1e-6)
    assert s.mean() > plain.mean() + 0.1                   # pushed towards noise at high resolution


def test_noise_and_target(world):
    x0, eps = torch.randn(2, 128, 4, 4), torch.randn(2, 128, 4, 4)
    t = world.cfg.training
    out = world.adapter.noise(x0, eps, None, t, torch.Generator().manual_seed(1))
    s = out.timesteps.view(-1, 1, 1, 1)
    assert torch.allclose(out.model_input, (1 - s) * x0 + s * eps, atol=1e-6)
    assert torch.equal(out.target, eps - x0)


def test_metadata_in_the_exported_header(world, tmp_path):
    # musubi-tuner's values, SwarmUI's Flux.2 Klein 4B LoRA class (a tiny Klein is sized as 4B; every size's pair:
    # tests/unit/test_family_metadata_ids.py)
    from lorakit.models.base import LoraModule
    from tests.family_fixtures import exported_metadata
    w = dict(world.adapter.denoiser().named_modules())["transformer_blocks.0.attn.to_k"].weight
    g = torch.Generator().manual_seed(0)
    lora = {"transformer": {"transformer_blocks.0.attn.to_k": LoraModule(
        down=torch.randn(2, w.shape[1], generator=g), up=torch.randn(w.shape[0], 2, generator=g), alpha=2.0)}}
    meta = exported_metadata(world.adapter, lora, tmp_path / "f.safetensors")
    assert meta["ss_base_model_version"] == "flux_2_klein_4b" and meta["modelspec.architecture"] == "Flux.2-klein-4b/lora"
    assert meta["lorakit_flux2_variant"] == world.adapter.variant and "base" in meta["lorakit_flux2_variant"]


def _pipe_latents(world, prompt, steps, guidance_scale, seed):
    out = world.pipe(prompt=prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance_scale,
                     generator=torch.Generator().manual_seed(seed), output_type="latent", max_sequence_length=40)
    return out.images


@pytest.mark.parametrize("distilled", [False, True])
def test_sampled_latents_equal_the_pipeline(world, monkeypatch, distilled):
    """The whole sampler (noise, schedule, CFG for base, none for distilled) against Flux2KleinPipeline."""
    a = world.adapter
    monkeypatch.setattr(a.comps, "distilled", distilled)
    world.pipe.register_to_config(is_distilled=distilled)
    captured = {}
    monkeypatch.setattr(a, "decode", lambda x, *_: captured.setdefault("x", x))
    steps, cfg_scale, _ = a.sample_settings(SamplePrompt(prompt="a red circle", steps=3, cfg_scale=1.0))
    assert (steps, cfg_scale) == (3, 1.0 if distilled else 4.0)
    a.sample(SamplePrompt(prompt="a red circle", width=64, height=64, steps=3, seed=7, cfg_scale=1.0),
             torch.Generator().manual_seed(7))
    want = _pipe_latents(world, "a red circle", 3, 4.0, 7)      # the pipeline ignores CFG 4 when distilled
    ae = world.models["ae"]
    mean = ae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(ae.bn.running_var.view(1, -1, 1, 1) + ae.config.batch_norm_eps)
    got = maths.unpatchify(captured["x"] * std + mean)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4, rtol=0)
    world.pipe.register_to_config(is_distilled=False)


def test_dev_prompt_embeddings_equal_flux2_pipeline_on_a_tiny_mistral():
    """FLUX.2 dev: BFL's system message + the user turn, no generation prompt, layers 10/20/30 stacked."""
    from diffusers import Flux2Pipeline
    from transformers import MistralConfig, MistralModel

    from lorakit.models.flux2.text import encode_mistral, tiny_qwen_tokenizer
    tok = tiny_qwen_tokenizer(["red", "circle"])
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}<|im_start|>{{ m['content'][0]['text'] }}"
                         "<|im_end|>{% else %}<think>{{ m['content'][0]['text'] }}</think>{% endif %}{% endfor %}")
    torch.manual_seed(0)
    model = MistralModel(MistralConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=31,
                                       num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                                       pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=None)).eval()
    prompts = ["a red circle", "a [IMG] circle"]
    with torch.no_grad():
        want = Flux2Pipeline._get_mistral_3_small_prompt_embeds(model, tok, prompts, max_sequence_length=300)
        got, ids, _mask = encode_mistral(model, tok, prompts, max_length=300)
    assert got.shape == (2, 300, 24) and torch.equal(got, want)
    assert "[IMG]" not in tok.decode(ids[1]) and "You are an AI that reasons" in tok.decode(ids[0])


def test_dev_encoder_cut_after_layer_29_gives_the_full_models_embeddings():
    """ComfyUI's dev text encoder keeps the embedding and layers 0-29 only (no final norm, the Tekken vocabulary as a
    ``tekken_model`` byte tensor): hidden state 30 must be layer 29's raw output, as in the full model, not normed."""
    from transformers import MistralConfig, MistralModel

    from lorakit.models.flux2.load import build_text_encoder
    from lorakit.models.flux2.text import encode_mistral, tiny_qwen_tokenizer
    tok = tiny_qwen_tokenizer(["red", "circle"])
    tok.chat_template = "{% for m in messages %}{{ m['content'][0]['text'] }}{% endfor %}"
    torch.manual_seed(0)
    full = MistralModel(MistralConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=31,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=4)).eval()
    full.norm.weight.data.uniform_(0.5, 2.0)  # a final norm that would show if it were applied
    sd = {f"model.{k}": v for k, v in full.state_dict().items()}
    cut = {k: v for k, v in sd.items() if not k.startswith(("model.norm.", "model.layers.30."))}
    cut["tekken_model"] = torch.frombuffer(bytearray(b'{"config": {}}'), dtype=torch.uint8)
    base = full.config.to_dict()  # the tiny model's own settings (depth and widths are read from the weights)
    prompts = ["a red circle"]
    with torch.no_grad():
        want = encode_mistral(full, tok, prompts, max_length=170)[0]
        for name, state in (("cut", cut), ("cut, norm kept", {**cut, "model.norm.weight": sd["model.norm.weight"]})):
            model, kind = build_text_encoder(state, torch.float32, base=base)
            assert kind == "mistral" and model.config.num_hidden_layers == 30, name
            assert torch.equal(encode_mistral(model.eval(), tok, prompts, max_length=170)[0], want), name
        model, _ = build_text_encoder(sd, torch.float32, base=base)  # a full encoder keeps its final norm
        assert torch.equal(model.norm.weight, full.norm.weight)
