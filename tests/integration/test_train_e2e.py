"""End to end through the CLI on tiny checkpoints in the original single-file layouts, one test per family:
every output file present, the LoRA reloads, losses finite and equal to golden values; exact resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.toy.world import write_demo_dataset
from tests.family_fixtures import interrupted_at_call, run_losses

# Losses of the first steps of the seeded run below, pinned from lorakit itself: they guard against
# unnoticed change of the data order, noise, objective or LoRA init (correctness is shown elsewhere).
GOLDEN_LOSSES: dict[str, list[float]] = {
    # SDXL's cached latents are posterior samples drawn with generators derived from the seed and each image
    # (reproducible across processes); before that they came from torch's global generator
    "sdxl": [0.9717981815338135, 1.1301472187042236, 1.1612943410873413, 1.1261634826660156, 1.1541004180908203,
             1.1195063591003418],
    "flux1": [1.364974856376648, 1.4979991912841797, 1.3887183666229248, 1.407793641090393, 1.4748165607452393,
              1.419875144958496],
    "flux2": [1.419177770614624, 1.355936050415039, 1.3724106550216675, 1.448216438293457, 1.3676836490631104,
              1.4052627086639404],
}


def tiny_model(family: str, folder: Path) -> dict[str, Path]:
    if family == "sdxl":
        from lorakit.models.sdxl.load import write_tiny_checkpoint
    elif family == "flux2":
        from lorakit.models.flux2.load import write_tiny_checkpoint
    else:
        from lorakit.models.flux1.load import write_tiny_checkpoint
    return write_tiny_checkpoint(folder)


def write_run_toml(tmp: Path, family: str, paths: dict[str, Path], **extra: str) -> Path:
    dataset = tmp / "data"
    if not dataset.exists():
        write_demo_dataset(dataset, n=4, repeats=2)
    model_lines = [f'family = "{family}"', f'checkpoint = "{paths["checkpoint"]}"', f'config_dir = "{paths["config"]}"']
    for role in ("clip_l", "t5xxl", "ae", "text_encoder", "vae"):
        if role in paths:
            model_lines.append(f'{role} = "{paths[role]}"')
    if "tokenizer" in paths:
        model_lines.append(f'tokenizer_dir = "{paths["tokenizer"]}"')
    body = f"""
[model]
{chr(10).join(model_lines)}

[data]
dir = "{dataset}"
resolution = 64
min_bucket_reso = 64
max_bucket_reso = 128
cache_dir = "{tmp / 'cache'}"

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

[sample]
prompts = ["a red zkx on a blue background --d 1 --s 3"]

[save]
dir = "{tmp / 'out'}"
name = "{extra.get('name', 'tiny')}"
every_n_steps = 3
keep_last = 2
"""
    path = tmp / f"{extra.get('name', 'tiny')}.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize("family", ["sdxl", "flux1", "flux2"])
def test_train_cli_end_to_end(tmp_path, family, capsys):
    paths = tiny_model(family, tmp_path / "model")
    run_toml = write_run_toml(tmp_path, family, paths)
    assert main(["train", str(run_toml)]) == 0
    run = tmp_path / "out" / "tiny"
    for name in ("tiny.safetensors", "tiny-step00000003.safetensors", "metrics.jsonl", "loss.png", "config.toml",
                 "data_report.json", "run.json", "samples/before_after.png"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").iterdir())
    assert (run / "state" / "step00000006" / "COMPLETE").exists()
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["export_problems"] == []
    assert status["lora_effect"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses == pytest.approx(GOLDEN_LOSSES[family], rel=1e-4)
    tensors = load_file(run / "tiny.safetensors")
    prefix = "lora_unet_"
    assert tensors and all(k.startswith(prefix) for k in tensors)
    assert all(v.dtype == torch.float16 for v in tensors.values())
    # a new run into the same folder is refused and nothing is overwritten
    before = (run / "tiny.safetensors").read_bytes()
    assert main(["train", str(run_toml)]) == 2
    assert (run / "tiny.safetensors").read_bytes() == before
    # inspect knows the family and finds no stray key
    capsys.readouterr()
    assert main(["inspect", str(run / "tiny.safetensors")]) == 0
    shown = capsys.readouterr().out
    modules = len(tensors) // 3
    assert f"fits {family}: {modules}/{modules} modules" in shown and "every key fits" in shown
    version = {"sdxl": "sdxl_base_v1-0", "flux1": "flux1", "flux2": "flux_2_klein_4b"}[family]
    assert f"ss_base_model_version: {version}" in shown and f"base model: {family};" in shown


@pytest.mark.parametrize("family", ["sdxl", "flux1"])
def test_bf16_run_without_peft_input_casts_matches_with_them(tmp_path, family, monkeypatch):
    """A bf16 (autocast) run injects the denoiser's LoRA with ``under_autocast``: peft no longer round-trips each
    layer's input through fp32. Losses and the exported LoRA equal those of the same run with the casts, bit for
    bit; previews (denoiser calls outside the step) work; a trained text encoder, whose captions are encoded
    outside autocast, keeps its casts (SDXL)."""
    import lorakit.train.placement as loop

    paths = tiny_model(family, tmp_path / "model")
    real = loop.inject_lora
    results = {}
    asked: list[bool] = []  # what the loop asked for, per injected component (denoiser first)

    def spy(*a, **k):
        asked.append(k.get("under_autocast", False))
        return real(*a, **k)

    for casts in (True, False):
        name = "casts" if casts else "nocasts"
        toml = write_run_toml(tmp_path, family, paths, name=name)
        if casts:
            monkeypatch.setattr(loop, "inject_lora", lambda *a, **k: real(*a, **{**k, "under_autocast": False}))
        else:
            monkeypatch.setattr(loop, "inject_lora", spy)
        extra = ["network.train_text_encoder=true"] if family == "sdxl" else []
        assert main(["train", str(toml), "training.mixed_precision=\"bf16\"", "training.max_steps=4", *extra]) == 0
        run = tmp_path / "out" / name
        status = json.loads((run / "run.json").read_text())
        assert status["status"] == "finished" and status["export_problems"] == [] and status["lora_effect"] > 0
        assert (run / "samples" / "before_after.png").exists()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        results[casts] = ([r["loss"] for r in rows if "loss" in r], load_file(run / f"{name}.safetensors"))
    (with_losses, with_lora), (without_losses, without_lora) = results[True], results[False]
    assert len(with_losses) == 4 and with_losses == without_losses
    assert with_lora.keys() == without_lora.keys()
    assert all(torch.equal(with_lora[k], without_lora[k]) for k in with_lora)
    assert asked[0] is True and not any(asked[1:])  # the denoiser skips the casts; a text encoder keeps them
    if family == "sdxl":
        assert any(k.startswith("lora_te1_") for k in with_lora) and len(asked) > 1


def test_the_objects_built_before_the_steps_are_frozen_while_they_run(tmp_path, monkeypatch):
    """The loop moves what it built before the first step (models, graphs, caches) out of the garbage collector's
    sight for the steps (no full collection walks them between steps) and gives them back afterwards."""
    import gc

    from lorakit.train import steps as loop

    before = gc.get_freeze_count()
    seen = []
    real = loop.update_step

    def spy(*args, **kwargs):
        seen.append(gc.get_freeze_count())
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "update_step", spy)
    paths = tiny_model("sdxl", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "sdxl", paths, name="frozen")
    assert main(["train", str(run_toml), "sample.prompts=[]"]) == 0
    assert len(seen) == 6 and all(n > before + 10_000 for n in seen), seen  # the models' objects among them
    assert seen[1] > seen[0]  # and, from the second step on, what the first step built
    assert gc.get_freeze_count() == before


def test_resume_is_exact(tmp_path, monkeypatch):
    """A run stopped after a checkpoint and resumed gives the same final LoRA (bitwise) and loss curve."""
    paths = tiny_model("sdxl", tmp_path / "model")
    full = write_run_toml(tmp_path, "sdxl", paths, name="full")
    assert main(["train", str(full), "sample.prompts=[]"]) == 0

    part = write_run_toml(tmp_path, "sdxl", paths, name="part")
    with interrupted_at_call(monkeypatch):  # after the step-3 checkpoint, in the middle of step 5
        assert main(["train", str(part), "sample.prompts=[]"]) == 130
    assert main(["train", "--resume", str(tmp_path / "out" / "part")]) == 0

    a = load_file(tmp_path / "out" / "full" / "full.safetensors")
    b = load_file(tmp_path / "out" / "part" / "part.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert run_losses(tmp_path / "out" / "full") == run_losses(tmp_path / "out" / "part")


def test_resume_refuses_changed_settings(tmp_path):
    paths = tiny_model("sdxl", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "sdxl", paths)
    assert main(["train", str(run_toml), "sample.prompts=[]", "training.max_steps=3"]) == 0
    run = tmp_path / "out" / "tiny"
    assert main(["train", "--resume", str(run), "network.rank=8", "training.max_steps=4"]) == 2  # changed settings
    assert main(["train", "--resume", str(run), "training.max_steps=4"]) == 0


def test_cache_next_to_images_is_honoured(tmp_path):
    """data.cache_next_to_images puts the caches in a hidden folder inside the dataset (and nowhere else)."""
    paths = tiny_model("sdxl", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "sdxl", paths)
    text = run_toml.read_text().replace(f'cache_dir = "{tmp_path / "cache"}"', "cache_next_to_images = true")
    run_toml.write_text(text)
    assert main(["train", str(run_toml), "sample.prompts=[]", "training.max_steps=2"]) == 0
    hidden = tmp_path / "data" / ".lorakit-cache"
    assert list(hidden.rglob("*.safetensors")) and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("family", ["sdxl", "flux1"])
def test_checkpoint_fraction_trains_to_the_same_losses(tmp_path, family, capsys):
    """memory.checkpoint_fraction = 0.5 through `lorakit train`: half the blocks keep their activations instead of
    recomputing them, which must not change the maths: the losses equal the fully checkpointed golden run's."""
    paths = tiny_model(family, tmp_path / "model")
    run_toml = write_run_toml(tmp_path, family, paths, name="half")
    run_toml.write_text(run_toml.read_text() + "\n[memory]\ncheckpoint_fraction = 0.5\n")
    assert main(["train", str(run_toml)]) == 0
    out = capsys.readouterr()
    found = re.search(r"checkpointing: ([0-9]+) of ([0-9]+) blocks recompute", out.out + out.err)
    assert found and int(found[1]) == round(int(found[2]) / 2) and (family == "sdxl" or found[2] == "4")
    rows = [json.loads(line) for line in (tmp_path / "out" / "half" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses == pytest.approx(GOLDEN_LOSSES[family], rel=1e-4)


def test_flux_modulation_on_cpu_trains_to_the_same_losses(tmp_path, capsys):
    """memory.modulation_on_cpu (FLUX.1): the modulation Linears' weights stay on the host and their outputs are
    computed there each step; the LoRA on them still trains. The maths is unchanged: the losses equal the golden
    run's, the exported file has the same keys, previews are drawn, and the transformer holds no modulation weight."""
    from safetensors.torch import load_file

    paths = tiny_model("flux1", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "flux1", paths, name="modcpu")
    run_toml.write_text(run_toml.read_text() + "\n[memory]\nmodulation_on_cpu = true\n")
    assert main(["train", str(run_toml)]) == 0
    out = capsys.readouterr()
    found = re.search(r"modulation_on_cpu: ([0-9]+) modulation Linears", out.out + out.err)
    assert found and int(found[1]) == 2 * 2 + 2  # the tiny model: 2 double blocks (img + txt), 2 single blocks
    run = tmp_path / "out" / "modcpu"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses == pytest.approx(GOLDEN_LOSSES["flux1"], rel=1e-5)
    lora = load_file(run / "modcpu.safetensors")
    mod_keys = [k for k in lora if "_mod_lin" in k or "modulation_lin" in k]
    assert mod_keys and all(lora[k].abs().sum() > 0 for k in mod_keys if "lora_up" in k)  # they trained
    assert list((run / "samples").glob("*.png"))


def test_a_budget_that_picks_modulation_on_cpu_gets_it_installed(tmp_path, capsys, monkeypatch):
    """memory.vram_gb = 24 on FLUX.1 without fp8 compute plans bf16 with the modulation Linears on the host (the
    full-size FLUX.1-dev byte counts stand in for the tiny model's, so that the plan is the real one); the loop then
    has the adapter install it after the budget, and the run trains to the golden losses."""
    from lorakit.models.registry import get_family
    from lorakit.train import budget, memory
    from tests.unit.test_budget import full_flux_sizes

    full = full_flux_sizes(get_family("flux1").SPEC.host_linears)
    monkeypatch.setattr(budget.Sizes, "of", classmethod(lambda cls, model, blocks, trainable, host=(), **k: full))
    checks = memory.check_supported

    def on_a_gpu(cfg, device, planned=False):  # vram_gb is refused on the CPU; every other check still runs
        from dataclasses import replace

        checks(replace(cfg, memory=replace(cfg.memory, vram_gb=None)), device)

    monkeypatch.setattr(memory, "check_supported", on_a_gpu)
    paths = tiny_model("flux1", tmp_path / "model")
    run_toml = write_run_toml(tmp_path, "flux1", paths, name="budget")
    run_toml.write_text(run_toml.read_text() + "\n[memory]\nvram_gb = 24\n")
    assert main(["train", str(run_toml), "sample.prompts=[]"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert re.search(r"vram_gb = 24: .*fp8_base = false, blocks_to_swap = 0, modulation_on_cpu = true", text), text
    assert re.search(r"modulation_on_cpu: 6 modulation Linears", text), text
    rows = [json.loads(line) for line in (tmp_path / "out" / "budget" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx(GOLDEN_LOSSES["flux1"], rel=1e-5)


def test_flux_modulation_on_cpu_in_bf16_matches_the_plain_bf16_run(tmp_path):
    """The same in a bf16 (autocast) run, where the host computes the modulations in bf16 while the plain run does
    it under autocast on the device: the losses agree to bf16 precision."""
    paths = tiny_model("flux1", tmp_path / "model")
    losses = {}
    for name, extra in (("plain", ""), ("modcpu", "\n[memory]\nmodulation_on_cpu = true\n")):
        run_toml = write_run_toml(tmp_path, "flux1", paths, name=name)
        run_toml.write_text(run_toml.read_text().replace('mixed_precision = "no"', 'mixed_precision = "bf16"') + extra)
        assert main(["train", str(run_toml), "sample.prompts=[]"]) == 0
        rows = [json.loads(line) for line in (tmp_path / "out" / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses["modcpu"]) == 6 and losses["modcpu"] == pytest.approx(losses["plain"], rel=2e-2)
