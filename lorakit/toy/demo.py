"""`make demo` and `lorakit toy eval`: train a LoRA on the toy world through the real `lorakit train` path.

The demo teaches the toy base model a shape it has never seen (a cross, bound to the trigger word "zkx")
from a dozen generated images in the kohya folder layout, then writes the LoRA (kohya format), a
before/after grid (same prompts and seeds, base vs LoRA), the loss plot and the metrics.
The evaluation then scores generated images for the concept with the toy world's detector, with and
without the LoRA, and measures drift on prompts without the trigger.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lorakit.config.load import load_config
from lorakit.toy.paths import toy_paths
from lorakit.toy.world import DEFAULT_TRIGGER, write_demo_dataset, write_reg_dataset

DEMO_PROMPTS = [
    f"a red {DEFAULT_TRIGGER} on a blue background --d 1",
    f"a yellow {DEFAULT_TRIGGER} on a black background --d 2",
    f"a white {DEFAULT_TRIGGER} on a green background --d 3",
    "a red circle on a blue background --d 4",
]

# Per-family recipe for a CPU demo of a few minutes (the toy models are tiny; rank/lr are set for that).
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "sdxl": {"steps": 400, "lr": 1e-3, "rank": 8, "sample_steps": 20, "cfg_scale": 4.0},
    # the toy FLUX was pretrained with 64 T5 tokens; guidance-distilled sampling (no true CFG)
    "flux1": {"steps": 400, "lr": 1e-3, "rank": 8, "sample_steps": 20, "cfg_scale": 1.0,
              "training": {"t5_max_length": 64}},
    # the toy FLUX.2 is a Klein *base* model pretrained with 32 prompt tokens: sampled with true CFG
    "flux2": {"steps": 400, "lr": 1e-3, "rank": 8, "sample_steps": 20, "cfg_scale": 4.0,
              "training": {"text_max_length": 32}},
}


def demo_config(family: str, dataset_dir: Path, out_dir: Path, name: str, steps: Optional[int] = None,
                overrides: tuple[str, ...] = ()):
    """The resolved Config of a toy-world run (the same schema a user's run.toml fills)."""
    s = DEMO_SETTINGS[family]
    paths = toy_paths(family)
    model: dict[str, Any] = {"family": family, "checkpoint": str(paths["checkpoint"]),
                             "config_dir": str(paths["config"])}
    for role in ("clip_l", "t5xxl", "ae", "text_encoder"):
        if role in paths:
            model[role] = str(paths[role])
    if "tokenizer" in paths:
        model["tokenizer_dir"] = str(paths["tokenizer"])
    total = steps or s["steps"]
    data = {
        "model": model,
        "data": {"dir": str(dataset_dir / "train"), "reg_dir": str(dataset_dir / "reg"), "resolution": 64,
                 "min_bucket_reso": 64, "max_bucket_reso": 128,
                 "cache_dir": str(out_dir / "cache")},
        "network": {"rank": s["rank"], "alpha": float(s["rank"])},
        "optimizer": {"name": "adamw", "lr": s["lr"], "scheduler": "cosine_with_min_lr", "warmup_steps": 10},
        "training": {"max_steps": total, "batch_size": 4, "seed": 42, "mixed_precision": "no", "device": "cpu",
                     **s.get("training", {})},
        "sample": {"prompts": list(DEMO_PROMPTS), "steps": s["sample_steps"], "cfg_scale": s["cfg_scale"],
                   "every_n_steps": 0},
        "save": {"dir": str(out_dir / "runs"), "name": name, "every_n_steps": max(total // 3, 1),
                 "keep_last": 2},
        "log": {"tensorboard": True},
    }
    return load_config(None, list(overrides), data=data)


def ensure_dataset(dataset_dir: Path) -> None:
    """The demo data: ``train/`` (a dozen images of the new concept) and ``reg/`` (base-world scenes that keep
    prompts without the trigger unchanged); written once, reused by later demos."""
    if not (dataset_dir / "train").exists():
        write_demo_dataset(dataset_dir / "train")
    if not (dataset_dir / "reg").exists():
        write_reg_dataset(dataset_dir / "reg")


def run_demo(family: str, out: Path, steps: Optional[int] = None) -> dict[str, Any]:
    """Write the demo dataset, train, and print where everything is."""
    from lorakit.train.loop import train

    stamp = time.strftime("%Y%m%d-%H%M%S")
    dataset_dir = out / "dataset"
    ensure_dataset(dataset_dir)
    name = f"demo-{family}-{stamp}"
    cfg = demo_config(family, dataset_dir, out, name, steps)
    t0 = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - t0
    run = result.run_dir
    print()
    print(f"demo finished in {seconds:.0f} s ({result.steps} steps, final loss {result.final_loss:.4f})")
    print(f"  LoRA (kohya format):  {result.lora_path}")
    print(f"  before/after grid:    {run / 'samples' / 'before_after.png'}")
    print(f"  loss plot:            {run / 'loss.png'}")
    print(f"  metrics:              {run / 'metrics.jsonl'}")
    print(f"  inspect it:           lorakit inspect {result.lora_path}")
    return {"run_dir": str(run), "lora": str(result.lora_path), "seconds": seconds}


def run_eval(family: str, out: Path, steps: Optional[int] = None, *, overrides: tuple[str, ...] = (),
             seeds: int = 8) -> dict[str, Any]:
    """The learning benchmark: train on the demo dataset, then score concept and drift."""
    from lorakit.toy.eval import evaluate
    from lorakit.train.loop import train

    stamp = time.strftime("%Y%m%d-%H%M%S")
    dataset_dir = out / "dataset"
    ensure_dataset(dataset_dir)
    cfg = demo_config(family, dataset_dir, out, f"eval-{family}-{stamp}", steps,
                      overrides=("sample.prompts=[]",) + tuple(overrides))
    t0 = time.perf_counter()
    result = train(cfg, log=lambda *_: None)
    generate = lora_generator(cfg, result.run_dir)
    scores = evaluate(generate, DEFAULT_TRIGGER)
    scores.update(family=family, steps=result.steps, train_seconds=time.perf_counter() - t0,
                  final_loss=result.final_loss)
    (result.run_dir / "eval.json").write_text(json.dumps(scores, indent=2, default=str))
    return scores


def lora_generator(cfg, run_dir: Path):
    """generate(prompts, seeds, with_lora) over a fresh base model with the run's last trained LoRA."""
    from lorakit.lora.inject import enable_lora, inject_lora, load_lora_into
    from lorakit.models.base import SamplePrompt
    from lorakit.models.registry import get_family
    from lorakit.train import checkpoint
    from lorakit.train.rundir import RunDir

    family = get_family(cfg.model.family)
    adapter = family.Adapter(cfg)
    adapter.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    state = checkpoint.load_state(RunDir(run_dir, cfg.save.name).latest_state())
    modules = {"unet": adapter.denoiser(), "transformer": adapter.denoiser(), **adapter.text_encoder_modules()}
    for component, loras in state["lora"].items():
        module = modules[component]
        inject_lora(module, {n: int(m.down.shape[0]) for n, m in loras.items()},
                    {n: float(m.alpha) for n, m in loras.items()}, 0.0)
        load_lora_into(module, loras)
    roots = list({id(m): m for m in modules.values()}.values())
    s = DEMO_SETTINGS[cfg.model.family]

    def generate(prompts: list[str], seeds: list[int], with_lora: bool):
        for m in roots:
            enable_lora(m, with_lora)
        images = []
        for prompt, seed in zip(prompts, seeds):
            p = SamplePrompt(prompt=prompt, width=64, height=64, steps=s["sample_steps"], seed=seed,
                             cfg_scale=s["cfg_scale"])
            with torch.no_grad():
                images.append(adapter.sample(p, torch.Generator().manual_seed(seed)))
        for m in roots:
            enable_lora(m, True)
        return images

    return generate


@contextlib.contextmanager
def broken_objective(family: str):
    """A deliberately wrong objective for the learning benchmark's control: the family's noising is kept but
    the regression target becomes the clean latents (x0) instead of ε or ε − x0. Restored on exit."""
    from lorakit.models.registry import get_family

    cls = get_family(family).Adapter
    real = cls.noise

    def wrong_target(self, latents, noise, batch, training, generator):
        noised = real(self, latents, noise, batch, training, generator)
        noised.target = latents
        return noised

    cls.noise = wrong_target
    try:
        yield
    finally:
        cls.noise = real
