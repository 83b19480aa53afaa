"""The shipped Qwen-Image toy (lorakit/models/qwenimage/toy.py, files in lorakit/toy/assets/qwenimage/) end to end: its
ComfyUI-layout files load through the real Qwen-Image loader with the build's own VAE statistics, and the demo's recipe
trains a LoRA that `lorakit verify` finds loadable by ComfyUI and diffusers and that an interrupted and resumed run
reproduces bit for bit. (The recipe's quick build is checked bit for bit by tests/unit/test_toy_build.py.)"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.toy.build import toy_config
from lorakit.toy.paths import model_section, toy_paths


def test_the_toy_loads_through_the_qwenimage_loader():
    from lorakit.models.qwenimage import Adapter, configs
    from lorakit.models.qwenimage.identify import identify
    from lorakit.safetensors_header import read_safetensors_header

    files = toy_paths("qwenimage")
    model = {k: v for k, v in model_section("qwenimage").items() if k != "family"}
    cfg = toy_config("qwenimage", model=model)
    kind = identify(read_safetensors_header(files["checkpoint"])[0])
    assert kind.family == "qwenimage" and kind.standard is False      # "of another size": the toy's width 64
    a = Adapter(cfg)
    a.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    tr, te, vae, tok = a.comps.transformer, a.comps.text_encoder, a.comps.vae, a.comps.tokenizer
    # every transformer tensor is the file's (bf16 on disk, fp32 in memory)
    sd = load_file(files["checkpoint"])
    own = tr.state_dict()
    assert sd.keys() == own.keys() and all(torch.equal(own[k], sd[k].float()) for k in sd)
    # the text encoder's embeddings come from the ComfyUI-layout Qwen2.5-VL file
    te_file = load_file(files["text_encoder"])
    assert torch.equal(te.get_input_embeddings().weight, te_file["model.embed_tokens.weight"].float())
    # the VAE carries the build's per-channel statistics (not the real Qwen-Image ones), as its config folder says
    shipped = json.loads((files["config"] / "vae" / "config.json").read_text())
    assert list(vae.config.latents_mean) == shipped["latents_mean"] != list(configs.LATENTS_MEAN)
    assert list(vae.config.latents_std) == shipped["latents_std"]
    # the toy tokenizer: the template's system turn is 34 tokens, as in Qwen2.5-VL's vocabulary
    head = configs.PROMPT_TEMPLATE.split("{}")[0]
    assert len(tok(head)["input_ids"]) == configs.DROP_IDX == 34
    # one world caption: every word is a token of the toy vocabulary (no unknowns)
    ids = tok("a red circle on a blue background")["input_ids"]
    assert len(ids) == 7


def test_demo_steps_change_the_lora_and_resume_bitwise(tmp_path, monkeypatch, capsys):
    """Four demo steps (the recipe's lr, rank, CFG, text length) trained through `lorakit train`; interrupted in step 3
    and resumed from the step-2 checkpoint, the same LoRA bit for bit and the same loss curve."""
    import lorakit.train.steps as steps
    from lorakit.errors import Interrupted
    from lorakit.toy.demo import demo_config, ensure_dataset
    from lorakit.train.loop import train

    ensure_dataset(tmp_path / "dataset")
    over = ("sample.prompts=[]", "log.progress=false", "log.tensorboard=false", "save.every_n_steps=2")
    full = train(demo_config("qwenimage", tmp_path / "dataset", tmp_path, "full", steps=4, overrides=over),
                 log=lambda *_: None)
    lora = load_file(full.lora_path)
    assert lora and all(k.startswith("lora_unet_transformer_blocks_") for k in lora)
    # lora_up starts at zero: the steps changed every module but the last block's text-only path (its text queries,
    # text output and text MLP), whose output the transformer drops, so no gradient reaches it
    still = {k.split(".")[0] for k, v in lora.items() if k.endswith(".lora_up.weight") and not v.abs().max() > 0}
    assert still == {f"lora_unet_transformer_blocks_3_{m}" for m in ("attn_add_q_proj", "attn_to_add_out",
                                                                      "txt_mlp_net_0_proj", "txt_mlp_net_2")}

    # `lorakit verify` against the toy base: ComfyUI and diffusers apply every key; Forge and sd-scripts read no
    # Qwen-Image LoRA (said in one line each, not counted against the file)
    capsys.readouterr()
    assert main(["verify", str(full.lora_path), "--base", str(toy_paths("qwenimage")["checkpoint"])]) == 0
    shown = capsys.readouterr().out
    n = len(lora)
    for loader in ("comfyui", "diffusers"):
        assert re.search(rf"^{loader}\s+{n}\s+0\s+0$", shown, re.M), shown
    for loader in ("forge", "kohya"):
        assert f"{loader:<10} loads no qwenimage LoRA at all (not counted)" in shown

    real_step, calls = steps.train_step, {"n": 0}

    def dying_step(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*a, **kw)

    monkeypatch.setattr(steps, "train_step", dying_step)
    part_cfg = demo_config("qwenimage", tmp_path / "dataset", tmp_path, "part", steps=4, overrides=over)
    with pytest.raises(Interrupted, match="interrupted at step 3: the last complete checkpoint is step 2"):
        train(part_cfg, log=lambda *_: None)
    monkeypatch.setattr(steps, "train_step", real_step)
    run = tmp_path / "runs" / "part"
    assert main(["train", "--resume", str(run)]) == 0
    resumed = load_file(run / "part.safetensors")
    assert resumed.keys() == lora.keys()
    for k in lora:
        assert torch.equal(resumed[k], lora[k]), k

    def losses(folder):
        return [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses(run) == losses(full.run_dir) and len(losses(run)) == 4
