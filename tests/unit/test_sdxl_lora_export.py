"""Exported LoRA files, loaded by diffusers' load_lora_weights into a fresh pipeline from the same tiny
checkpoint, reproduce lorakit's LoRA-injected model (UNet and both text encoders)."""

import pytest
import torch
from safetensors.torch import save_file

from lorakit.config.schema import Config
from lorakit.lora.inject import extract_lora, inject_lora
from lorakit.models.sdxl import Adapter
from lorakit.models.sdxl.load import write_tiny_checkpoint

RANK, ALPHA, CONV_RANK, CONV_ALPHA = 4, 3.0, 2, 5.0


def _cfg(ckpt, config_dir, conv_rank=0, te=False):
    cfg = Config()
    cfg.model.family, cfg.model.checkpoint, cfg.model.config_dir = "sdxl", str(ckpt), str(config_dir)
    cfg.network.rank, cfg.network.alpha = RANK, ALPHA
    cfg.network.conv_rank, cfg.network.conv_alpha = conv_rank, CONV_ALPHA
    cfg.network.train_text_encoder = te
    cfg.memory.gradient_checkpointing = False
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An adapter with LoRA on UNet (incl. LoCon) and both TEs, random nonzero up/down, alpha != rank."""
    out = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=1)
    cfg = _cfg(out["checkpoint"], out["config"], conv_rank=CONV_RANK, te=True)
    ad = Adapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    targets = ad.lora_targets(cfg.network)
    modules = {"unet": ad.denoiser(), **ad.text_encoder_modules()}
    torch.manual_seed(0)
    for comp, tg in targets.items():
        root = modules[comp]
        alphas = {p: (CONV_ALPHA if getattr(root.get_submodule(p), "kernel_size", (1, 1)) != (1, 1) else ALPHA)
                  for p in tg}
        for p in inject_lora(root, tg, alphas, 0.0):
            with torch.no_grad():
                p.normal_(0, 0.2)
    lora = {comp: extract_lora(modules[comp]) for comp in targets}
    return out, ad, lora


def _inputs(ad, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = ad.encode_text(["a photo of a cat", "a red bicycle"])
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64], [80, 48, 8, 0, 64, 64]], dtype=torch.float32)
    return x, torch.tensor([10, 500]), text, time_ids


def _unet_out(unet, x, t, text, time_ids):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=text["context"],
                    added_cond_kwargs={"text_embeds": text["pooled"], "time_ids": time_ids}).sample


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_diffusers_loads_export_exactly(trained, tmp_path, fmt):
    from diffusers import StableDiffusionXLPipeline

    out, ad, lora = trained
    sd = ad.export(lora, fmt)
    if fmt == "kohya":
        assert all(k.startswith(("lora_unet_", "lora_te1_text_model_", "lora_te2_text_model_")) for k in sd)
        assert any(k.endswith(".alpha") for k in sd)
    else:
        assert all(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in sd)
    path = tmp_path / f"lora_{fmt}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))

    pipe = StableDiffusionXLPipeline.from_single_file(str(out["checkpoint"]), config=str(out["config"]),
                                                      local_files_only=True)
    x, t, text, time_ids = _inputs(ad)
    base = _unet_out(pipe.unet, x, t, text, time_ids)
    ids1 = ad.tokenizer1(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids2 = ad.tokenizer2(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    pairs = ((ad.te1, pipe.text_encoder, ids1), (ad.te2, pipe.text_encoder_2, ids2))
    with torch.no_grad():
        te_base = [other(ids, output_hidden_states=True).hidden_states[-2] for _, other, ids in pairs]
    pipe.load_lora_weights(str(path))
    ours = _unet_out(ad.unet, x, t, text, time_ids)
    theirs = _unet_out(pipe.unet, x, t, text, time_ids)
    assert _rel(ours, base) > 1e-2  # the LoRA really changes the output
    assert _rel(theirs, ours) <= 1e-4

    with torch.no_grad():
        for (mine, other, ids), before in zip(pairs, te_base):
            a = mine(ids, output_hidden_states=True).hidden_states[-2]
            b = other(ids, output_hidden_states=True).hidden_states[-2]
            assert _rel(a, before) > 1e-2  # the text-encoder LoRA is active
            assert _rel(b, a) <= 1e-4


def test_export_rejects_unknown_format(trained):
    _, ad, lora = trained
    with pytest.raises(ValueError, match="save.format"):
        ad.export(lora, "ckpt")
