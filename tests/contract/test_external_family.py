"""Proof that a family is one package: ``tests/families/tinydit`` (a PixArt-architecture transformer, a class lorakit
does not ship, with its own tiny CLIP text encoder and VAE) lives only under tests/ and is registered through
``LORAKIT_FAMILIES``; the CLI trains, samples, exports (kohya and diffusers), inspects and resumes it, with no file of
lorakit naming it. The CLI runs in subprocesses, two at a time (one torch thread each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import lorakit
from lorakit.config import families as config_families
from lorakit.errors import ConfigError
from lorakit.models import registry
from tests.family_fixtures import run_losses

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.families.tinydit"
PROMPT = "a red zkx on a blue background"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(LORAKIT_FAMILIES=MODULE, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lorakit", *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == expect, f"{proc.args}: exit {proc.returncode}\n{out[-3000:]}"
    return out


def _run_toml(tmp: Path, ckpt: Path, name: str, fmt: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f"""
[model]
family = "tinydit"
checkpoint = "{ckpt}"

[data]
dir = "{tmp / 'data'}"
resolution = 64
min_bucket_reso = 64
max_bucket_reso = 128
cache_dir = "{tmp / ('cache_' + name)}"

[network]
rank = 4
alpha = 2.0

[optimizer]
name = "adamw"
lr = 1e-3

[training]
max_steps = 6
batch_size = 2
seed = 7
mixed_precision = "no"
device = "cpu"
timestep_sampling = "logit_normal"   # family-only: flux1 and tinydit honour it

[sample]
prompts = ["{PROMPT} --d 1 --s 3"]

[save]
dir = "{tmp / 'out'}"
name = "{name}"
format = "{fmt}"
precision = "fp32"
every_n_steps = 2
keep_last = 2

[log]
progress = false
tensorboard = false
""")
    return path


@pytest.fixture()
def with_tinydit(monkeypatch):
    """LORAKIT_FAMILIES set in this process too (for the in-process checks); every cache forgotten afterwards."""
    monkeypatch.setenv("LORAKIT_FAMILIES", MODULE)
    config_families.clear()
    yield
    monkeypatch.delenv("LORAKIT_FAMILIES")
    config_families.clear()


def test_the_family_lives_outside_lorakit(monkeypatch):
    """By construction: the package is a folder under tests/, lorakit.models has no such subpackage, and no file of
    lorakit names the family."""
    package = ROOT / "tests" / "families" / "tinydit"
    lorakit_dir = Path(lorakit.__file__).resolve().parent
    assert (package / "__init__.py").is_file() and lorakit_dir == ROOT / "lorakit"
    assert not (lorakit_dir / "models" / "tinydit").exists()
    named = [p for p in lorakit_dir.rglob("*.py") if "tinydit" in p.read_text(encoding="utf-8")]
    assert named == []
    monkeypatch.delenv("LORAKIT_FAMILIES", raising=False)
    assert "tinydit" not in registry.families()  # unregistered, lorakit does not know it


def test_train_sample_export_inspect_resume_through_the_cli(tmp_path):
    from lorakit.toy.world import write_demo_dataset
    from tests.families.tinydit import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "model")["checkpoint"]
    write_demo_dataset(tmp_path / "data", n=4, repeats=2)
    full_toml = _run_toml(tmp_path, ckpt, "full", "kohya")
    part_toml = _run_toml(tmp_path, ckpt, "part", "diffusers")
    out = tmp_path / "out"

    # an uninterrupted 6-step kohya run with previews, beside a diffusers run stopped at step 4 (max_steps overridden)
    full = _start(tmp_path, "train", str(full_toml))
    part = _start(tmp_path, "train", str(part_toml), "training.max_steps=4", "sample.prompts=[]")
    _finish(full)
    _finish(part)
    assert (out / "part" / "state" / "step00000004" / "COMPLETE").exists()
    assert (out / "part" / "part-step00000002.safetensors").exists()  # save.every_n_steps
    # the stopped run resumed to step 6, beside `lorakit inspect` of the finished kohya file
    resumed = _start(tmp_path, "train", "--resume", str(out / "part"), "training.max_steps=6")
    inspect = _start(tmp_path, "inspect", str(out / "full" / "full.safetensors"))
    resume_log = _finish(resumed)
    shown = _finish(inspect)

    # trained and exported (kohya): every module named lora_unet_<diffusers path>, down/up/alpha, the run clean
    run = out / "full"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["export_problems"] == [] and status["lora_effect"] > 0
    kohya = load_file(run / "full.safetensors")
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in kohya}
    assert len(names) == 20 and all(n.startswith("lora_unet_transformer_blocks_") for n in names)
    for n in names:
        assert kohya[n + ".lora_down.weight"].shape[0] == 4 and kohya[n + ".lora_up.weight"].shape[1] == 4
        assert kohya[n + ".alpha"].item() == 2.0
    layers = ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0", "attn2_to_q", "attn2_to_k", "attn2_to_v",
              "attn2_to_out_0", "ff_net_0_proj", "ff_net_2")  # every Linear of PixArt's 2 BasicTransformerBlocks
    assert names == {f"lora_unet_transformer_blocks_{i}_{layer}" for i in range(2) for layer in layers}
    from safetensors import safe_open

    with safe_open(str(run / "full.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_base_model_version"] == "tinydit" and meta["modelspec.architecture"] == "tinydit/lora"
    assert meta["lorakit_timestep_sampling"] == "logit_normal" and meta["ss_network_dim"] == "4"

    # sampled: the before and after previews are 64x64 images, and training changed the after one
    before = Image.open(run / "samples" / "full_before_00_1.png")
    after = Image.open(run / "samples" / "full_after_00_1.png")
    assert before.size == after.size == (64, 64) and (run / "samples" / "before_after.png").exists()
    assert before.tobytes() != after.tobytes()

    # inspect asked the registry: the external family's key universe recognises every module
    assert "fits tinydit: 20/20 modules" in shown and "base model: tinydit; every key fits" in shown
    # no key map of full-size shapes for this family: inspect says it checked the names only (docs/families.md)
    lora = out / "full" / "full.safetensors"
    assert f"every key fits (module names checked, not shapes: `lorakit verify {lora}` checks them)" in shown, shown
    assert "ss_base_model_version: tinydit" in shown

    # resumed: the same losses as the uninterrupted run, and the same LoRA bit for bit (diffusers layout: A = down,
    # B = up · alpha/rank with alpha/rank = 0.5, exact in fp32)
    assert f"resumed from {out / 'part' / 'state' / 'step00000004'} at step 4" in resume_log
    assert run_losses(out / "part") == run_losses(run) and len(run_losses(run)) == 6
    peft = load_file(out / "part" / "part.safetensors")
    bases = {k[: -len(".lora_A.weight")] for k in peft if k.endswith(".lora_A.weight")}
    assert len(peft) == 2 * len(bases) and all(b.startswith("transformer.transformer_blocks.") for b in bases)
    assert {"lora_unet_" + b[len("transformer."):].replace(".", "_") for b in bases} == names
    for b in bases:
        n = "lora_unet_" + b[len("transformer."):].replace(".", "_")
        assert torch.equal(peft[b + ".lora_A.weight"], kohya[n + ".lora_down.weight"])
        assert torch.equal(peft[b + ".lora_B.weight"], kohya[n + ".lora_up.weight"] * 0.5)
    status = json.loads((out / "part" / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 6 and status["export_problems"] == []


def _listing(key: str) -> tuple[str, ...]:
    """The installed families whose own spec lists ``key``, read family by family (not through config.families)."""
    return tuple(sorted(name for name in registry.families() if key in registry.get_family(name).SPEC.config_keys))


def test_registered_family_keys_are_honoured_and_others_refused(tmp_path, with_tinydit):
    """With the family registered, its family-only key is accepted and a flux1-only key it does not list is refused
    naming the key; the config layer's answer follows the registry (clear() keeps them consistent)."""
    from lorakit.config.load import load_config

    assert "tinydit" in registry.families()
    assert sorted(config_families.applies_to("training.timestep_sampling")) == list(_listing("training.timestep_sampling"))
    assert "tinydit" in _listing("training.timestep_sampling")
    assert sorted(config_families.applies_to("training.guidance_scale")) == list(_listing("training.guidance_scale"))
    assert "tinydit" not in _listing("training.guidance_scale")
    model = {"family": "tinydit", "checkpoint": str(tmp_path / "x.safetensors")}
    base = {"model": model, "data": {"dir": str(tmp_path), "min_bucket_reso": 64}}  # its 64 px default
    cfg = load_config(None, data={**base, "training": {"timestep_sampling": "uniform"}})
    assert cfg.training.timestep_sampling == "uniform"
    with pytest.raises(ConfigError, match=rf"^training\.guidance_scale: applies only to {', '.join(_listing('training.guidance_scale'))}, not tinydit"):
        load_config(None, data={**base, "training": {"guidance_scale": 2.0}})
    with pytest.raises(ConfigError, match=rf"^network\.conv_rank: applies only to {', '.join(_listing('network.conv_rank'))}, not tinydit"):
        load_config(None, data={**base, "network": {"conv_rank": 4}})


def test_the_family_honours_timestep_sampling():
    """The adapter's σ follow training.timestep_sampling (compared with the formulas, not with lorakit.diffusion)."""
    from types import SimpleNamespace

    from tests.families.tinydit import Adapter

    latents = torch.zeros(3, 4, 8, 8)
    noise = torch.ones(3, 4, 8, 8)
    for mode in ("uniform", "logit_normal"):
        training = SimpleNamespace(timestep_sampling=mode, sigmoid_scale=1.0, logit_mean=0.5, logit_std=2.0,
                                   discrete_flow_shift=3.0)
        noised = Adapter.noise(None, latents, noise, None, training, torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)
        if mode == "uniform":
            expected = torch.rand(3, generator=g)
        else:
            expected = torch.sigmoid(0.5 + 2.0 * torch.randn(3, generator=g))
        assert torch.allclose(noised.timesteps, expected * 1000.0)
        assert torch.allclose(noised.model_input[:, 0, 0, 0], expected)  # (1-σ)·0 + σ·1
        assert torch.equal(noised.target, noise - latents)


def test_family_sources_and_their_errors(tmp_path, monkeypatch):
    """LORAKIT_FAMILIES, the lorakit.families entry points and register() all register the package; a module that does
    not import or is not a family is one line naming it."""
    monkeypatch.delenv("LORAKIT_FAMILIES", raising=False)
    monkeypatch.setattr(registry, "_registered", [])
    config_families.clear()
    try:
        assert "tinydit" not in registry.families()
        assert sorted(config_families.applies_to("training.timestep_sampling")) == list(_listing("training.timestep_sampling"))
        # an installed distribution's entry point
        dist = tmp_path / "lorakit_tinydit_ep-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lorakit-tinydit-ep\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[lorakit.families]\ntinydit = {MODULE}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        config_families.clear()
        assert "tinydit" in registry.families() and registry.get_family("tinydit").__name__ == MODULE
        assert "tinydit" in config_families.applies_to("training.timestep_sampling")
        monkeypatch.setenv("LORAKIT_FAMILIES", f" {MODULE} ")
        assert registry.families().count("tinydit") == 1  # entry point and env name one module
        # errors: one line naming the module and where it was named
        for name, why in (("tests.families.no_such_family", "does not import"), ("tests.families", "is not a family")):
            monkeypatch.setenv("LORAKIT_FAMILIES", name)
            with pytest.raises(ConfigError) as exc:
                registry.families()
            assert f"family module {name!r} (from LORAKIT_FAMILIES={name})" in str(exc.value)
            assert why in str(exc.value) and "\n" not in str(exc.value)
        monkeypatch.delenv("LORAKIT_FAMILIES")
        (dist / "entry_points.txt").write_text("[lorakit.families]\nother = tests.families\n")
        registry.clear()
        with pytest.raises(ConfigError, match="entry point lorakit.families: other = tests.families"):
            registry.families()
        (dist / "entry_points.txt").unlink()
        registry.clear()
        # register() in this process
        assert registry.register(MODULE) == "tinydit" and "tinydit" in registry.families()
        assert "tinydit" in config_families.applies_to("training.timestep_sampling")
        with pytest.raises(ConfigError, match="'tests.families' .* is not a family package"):
            registry.register("tests.families")
        assert registry._registered == [MODULE]
    finally:
        monkeypatch.setattr(registry, "_registered", [])
        config_families.clear()


def test_inspect_names_a_family_package_whose_key_universe_fails(with_tinydit, monkeypatch):
    """`lorakit inspect` asks every registered family; a package whose lora_key_universe() raises is one line naming
    it (only tinydit is asked here, so no full-size key universe is built)."""
    import tests.families.tinydit as tinydit
    from lorakit.errors import LorakitError
    from lorakit.lora.inspect import family_fit

    monkeypatch.setattr(registry, "families", lambda: ["tinydit"])
    assert family_fit({"lora_unet_transformer_blocks_0_attn1_to_q", "lora_unet_nowhere"})["tinydit"] == {
        "matched": 1, "of": 2, "unmatched": ["lora_unet_nowhere"]}

    def broken():
        raise ValueError("no such block\nsecond line")

    monkeypatch.setattr(tinydit, "lora_key_universe", broken)
    with pytest.raises(LorakitError, match=r"^inspect: tests\.families\.tinydit\.lora_key_universe\(\) failed: "
                                           r"ValueError: no such block$"):
        family_fit({"lora_unet_x"})
