"""The shipped SD3.5 toy (lorakit/toy/assets/sd3/): it loads through the real SD3 loader, its VAE is the Z-Image toy's
re-targeted to SD3's latent constants (the build reuses it instead of training one), and the demo's LoRA training
runs on it: a few steps change the LoRA, and a run stopped after a checkpoint and resumed ends on the same LoRA, bit
for bit. The learning benchmark itself (minutes) is tests/integration/test_learning.py (slow)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lorakit.toy import build, paths


def test_the_shipped_toy_loads_through_the_sd3_loader():
    from lorakit.toy.eval import load_toy

    files = paths.toy_paths("sd3")
    sd = load_file(str(files["checkpoint"]))
    adapter = load_toy("sd3").adapter
    c = adapter.comps
    tr = adapter.denoiser()
    assert type(tr).__name__ == "SD3Transformer2DModel" and list(tr.config.dual_attention_layers) == [0]
    # one tensor of each component, against the file itself (bf16 in the file, fp32 once loaded)
    assert torch.equal(tr.pos_embed.proj.weight, sd["model.diffusion_model.x_embedder.proj.weight"].float())
    assert torch.equal(tr.transformer_blocks[0].attn2.to_q.weight,
                       sd["model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight"].float()[:64])
    assert torch.equal(c.vae.decoder.conv_out.weight, sd["first_stage_model.decoder.conv_out.weight"].float())
    assert torch.equal(c.clip_l.get_input_embeddings().weight, sd[
        "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight"].float())
    assert torch.equal(c.t5.get_input_embeddings().weight,
                       sd["text_encoders.t5xxl.transformer.shared.weight"].float())
    vae_cfg = json.loads((files["config"] / "vae" / "config.json").read_text())
    assert (vae_cfg["scaling_factor"], vae_cfg["shift_factor"]) == (1.5305, 0.0609) == build.real_latent("sd3")


def test_toy_path_prints_the_table_of_the_shipped_files(capsys):
    import tomllib

    from lorakit.cli import main

    assert main(["toy", "path", "sd3"]) == 0
    model = tomllib.loads(capsys.readouterr().out)["model"]
    files = paths.toy_paths("sd3")
    assert model == {"family": "sd3", "checkpoint": str(files["checkpoint"]), "config_dir": str(files["config"])}


def test_the_vae_is_the_zimage_toys_retargeted():
    """build.json names the Z-Image toy's ae.safetensors (its hash as shipped); re-targeting that file's VAE from the
    trained constants build.json records to SD3's, independently here, gives the VAE in the SD3 file (bf16)."""
    from lorakit.models.ldm_vae import ae_diffusers_to_bfl
    from lorakit.models.sd3.toy import read_vae
    from lorakit.lora.io import file_sha256

    info = json.loads((paths.toy_paths("sd3")["config"].parent / "build.json").read_text())
    donor = paths.toy_paths("zimage")["ae"]
    assert info["vae_from"] == {"family": "zimage", "file": "ae.safetensors", "sha256": file_sha256(donor)}
    vae = read_vae(donor)
    a = info["trained_scaling_factor"] / 1.5305
    b = 0.0609 - a * info["trained_shift_factor"]
    assert abs(b) < 1e-6                                        # the build picks the shift that needs no bias
    ref = {k: v.clone() for k, v in ae_diffusers_to_bfl(vae.state_dict()).items()}
    ref["encoder.conv_out.weight"][:16] *= a                    # z' = a·z on the mean channels
    ref["encoder.conv_out.bias"][:16] *= a
    ref["encoder.conv_out.bias"][16:] += 2 * torch.log(torch.tensor(a))   # log-variance: + 2 ln a
    ref["decoder.conv_in.weight"] /= a
    sd = load_file(str(paths.toy_paths("sd3")["checkpoint"]))
    got = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    assert got.keys() == ref.keys()
    for k, v in ref.items():
        assert torch.allclose(got[k].float(), v.to(torch.bfloat16).float(), atol=1e-6, rtol=0), k


def test_a_vae_of_another_config_is_refused(monkeypatch):
    import dataclasses

    from lorakit.errors import ModelLoadError
    from lorakit.models.sd3.toy import TOY, configs

    def other():
        c = configs()
        return {**c, "vae": {**c["vae"], "block_out_channels": [8, 16, 32, 64]}}

    with pytest.raises(ModelLoadError, match=r"ae.safetensors: the zimage toy's VAE is not this toy's .*"
                                             r"block_out_channels"):
        build.shipped_vae(dataclasses.replace(TOY, configs=other))


def _demo(tmp_path, name, steps=4):
    from lorakit.toy.demo import demo_config
    from lorakit.toy.world import write_demo_dataset, write_reg_dataset

    data = tmp_path / "dataset"
    if not data.exists():
        write_demo_dataset(data / "train", n=2, repeats=1)
        write_reg_dataset(data / "reg", n=2)
    return demo_config("sd3", data, tmp_path, name, steps, overrides=("sample.prompts=[]", "log.progress=false",
                                                                    "save.precision=fp32"))


def test_demo_steps_change_the_lora_and_resume_bit_for_bit(tmp_path, monkeypatch):
    import lorakit.train.steps as steps_mod
    from lorakit.train.loop import train

    cfg = _demo(tmp_path, "full")
    assert cfg.optimizer.lr == 6e-3 and cfg.training.t5_max_length == 32 and cfg.save.every_n_steps == 1
    full = train(cfg, log=lambda *_: None)
    lora = load_file(str(full.lora_path))
    ups = [v for k, v in lora.items() if k.endswith(".lora_up.weight")]
    assert ups and all(k.startswith("lora_unet_joint_blocks_") for k in lora)
    assert sum(int(v.abs().sum() > 0) for v in ups) == len(ups)      # lora_up starts at zero: every module moved
    losses = [json.loads(x)["loss"] for x in (full.run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert len(losses) == 4 and all(0 < x < 10 for x in losses)

    real_step, calls = steps_mod.train_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:                                           # after the step-2 checkpoint, inside step 3
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    part_cfg = _demo(tmp_path, "part")
    monkeypatch.setattr(steps_mod, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(part_cfg, log=lambda *_: None)
    monkeypatch.setattr(steps_mod, "train_step", real_step)
    part = train(part_cfg, resume=True, log=lambda *_: None)
    b = load_file(str(part.lora_path))
    assert lora.keys() == b.keys()
    for k in lora:
        assert torch.equal(lora[k], b[k]), k
    lb = [json.loads(x)["loss"] for x in (part.run_dir / "metrics.jsonl").read_text().splitlines()
          if "loss" in json.loads(x)]
    assert lb == losses
