"""`make demo` and `lorakit toy eval`: train a LoRA on the toy world through the real `lorakit train` path.

The demo teaches the toy base model a shape it has never seen (a cross, bound to the trigger word "zkx")
from a dozen generated images in the kohya folder layout, then writes the LoRA (kohya format), a
before/after grid (same prompts and seeds, base vs LoRA), the loss plot and the metrics.
The evaluation then scores generated images for the concept with the toy world's detector, with and
without the LoRA, and measures drift on prompts without the trigger.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lorakit.config.load import load_config
from lorakit.errors import ConfigError, ModelLoadError
from lorakit.fsutil import write_json
from lorakit.toy.paths import model_section, toy_recipe
from lorakit.toy.world import DEFAULT_TRIGGER, write_all_pairs_dataset, write_demo_dataset, write_reg_dataset

DEMO_PROMPTS = [
    f"a red {DEFAULT_TRIGGER} on a blue background --d 1",
    f"a yellow {DEFAULT_TRIGGER} on a black background --d 2",
    f"a white {DEFAULT_TRIGGER} on a green background --d 3",
    "a red circle on a blue background --d 4",
]


def demo_config(family: str, dataset_dir: Path, out_dir: Path, name: str, steps: Optional[int] = None,
                overrides: tuple[str, ...] = ()):
    """The resolved Config of a toy-world run (the same schema a user's run.toml fills); the family's toy recipe
    (``TOY.demo``, ``TOY.training``) sets rank, lr, steps, sampling and its own [training] keys."""
    return load_config(None, list(overrides), data=demo_data(family, dataset_dir, out_dir, name, steps))


def demo_data(family: str, dataset_dir: Path, out_dir: Path, name: str, steps: Optional[int] = None) -> dict:
    """The TOML-shaped dict of a toy-world run (what :func:`demo_config` loads; the web UI's "Use the toy models"
    fills its form from it)."""
    recipe = toy_recipe(family)
    s = recipe.demo
    total = s.steps if steps is None else steps  # --steps 0 is refused by the config check, not replaced
    return {
        "model": model_section(family),
        "data": {"dir": str(dataset_dir / "train"), "reg_dir": str(dataset_dir / "reg"), "resolution": 64,
                 "min_bucket_reso": 64, "max_bucket_reso": 128,
                 "cache_dir": str(out_dir / "cache")},
        "network": {"rank": s.rank, "alpha": float(s.rank)},
        "optimizer": {"name": "adamw", "lr": s.lr, "scheduler": "cosine_with_min_lr", "warmup_steps": 10},
        "training": {"max_steps": total, "batch_size": 4, "seed": 42, "mixed_precision": "no", "device": "cpu",
                     **recipe.training},
        "sample": {"prompts": list(DEMO_PROMPTS), "steps": s.sample_steps, "cfg_scale": s.cfg_scale,
                   "every_n_steps": 0},
        "save": {"dir": str(out_dir / "runs"), "name": name, "every_n_steps": max(total // 3, 1),
                 "keep_last": 2},
        "log": {"tensorboard": True},
    }


def _out_folder(out: Path) -> None:
    """``--out``: made when missing; a file there, or a folder that cannot be made, is one line (was a traceback from
    the first image written)."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror or exc}: {exc.filename or out}); give "
                          "a folder you can write") from None


def ensure_dataset(dataset_dir: Path, caption: bool = False, all_pairs: bool = False) -> None:
    """The demo data: ``train/`` (a dozen images of the new concept) and ``reg/`` (base-world scenes that keep
    prompts without the trigger unchanged); written once, reused by later demos. With ``caption`` the toy
    captioner writes the captions instead of the world (``lorakit demo --caption``); ``all_pairs``: the opt-in
    concept set of 30 large crosses in every colour pair (``write_all_pairs_dataset``) instead of the dozen."""
    concept = write_all_pairs_dataset if all_pairs else write_demo_dataset
    for name, write in (("train", concept), ("reg", write_reg_dataset)):
        if not (dataset_dir / name).exists():
            write(dataset_dir / name)
            if caption:  # the world's captions were just written here by us: the captioner replaces them
                for txt in (dataset_dir / name).rglob("*.txt"):
                    txt.unlink()
    if caption:
        from lorakit.caption.toy import caption_demo_dataset

        caption_demo_dataset(dataset_dir, DEFAULT_TRIGGER)


def run_demo(family: str, out: Path, steps: Optional[int] = None, caption: bool = False) -> dict[str, Any]:
    """Write the demo dataset (captioned by the toy captioner with ``caption``), train, print where things are."""
    # the toy world compiles (on a GPU) into its own cache, never into the user's (lorakit/train/speed.py)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(out) / "inductor-cache"))
    from lorakit.train.loop import train

    toy_recipe(family)  # an unknown family is refused before the dataset is written
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dataset_dir = out / ("dataset-captioned" if caption else "dataset")
    name = f"demo-{family}-{stamp}"
    cfg = demo_config(family, dataset_dir, out, name, steps)  # `--steps 0` is refused before anything is written
    _out_folder(out)
    ensure_dataset(dataset_dir, caption)
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
             seeds: int = 8, caption: bool = False, quality: bool = False, all_pairs: bool = False) -> dict[str, Any]:
    """The learning benchmark: train on the demo dataset, then score concept and drift. ``quality``: with the toy
    recipe's best measured setting (``TOY.quality``, issue 23's bar; ``steps`` still wins over its max_steps).
    ``all_pairs``: train on the opt-in 30-image concept set (every colour pair, large crosses) instead of the demo's."""
    if quality:
        best = tuple(toy_recipe(family).quality)
        if not best:
            raise ModelLoadError(f"--quality: the {family} toy has no measured setting that reaches issue 23's bar "
                                 "(TOY.quality is empty; benchmarks/RESULTS.md says why)")
        overrides = best + ((f"training.max_steps={steps}",) if steps else ()) + tuple(overrides)
    # the toy world compiles (on a GPU) into its own cache, never into the user's (lorakit/train/speed.py)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(out) / "inductor-cache"))
    from lorakit.toy.eval import evaluate
    from lorakit.train.loop import train

    toy_recipe(family)  # an unknown family is refused before the dataset is written
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dataset_dir = out / (("dataset-captioned" if caption else "dataset") + ("-all-pairs" if all_pairs else ""))
    _out_folder(out)
    ensure_dataset(dataset_dir, caption, all_pairs)
    cfg = demo_config(family, dataset_dir, out, f"eval-{family}-{stamp}", steps,
                      overrides=("sample.prompts=[]",) + tuple(overrides))
    t0 = time.perf_counter()
    result = train(cfg, log=lambda *_: None)
    generate = lora_generator(cfg, result.run_dir)
    scores = evaluate(generate, DEFAULT_TRIGGER)
    scores.update(family=family, steps=result.steps, captioned_by="toy captioner" if caption else "toy world", train_seconds=time.perf_counter() - t0,
                  concept_set="all-pairs" if all_pairs else "demo",
                  final_loss=result.final_loss, overrides=list(overrides))
    ema_file = result.run_dir / f"{cfg.save.name}-ema.safetensors"
    if cfg.training.ema and ema_file.is_file():  # issue 23: the EMA weights scored as well as the trained ones
        scores["ema"] = dict(evaluate(lora_generator(cfg, result.run_dir, ema_file), DEFAULT_TRIGGER),
                             lora=str(ema_file))
    write_json(result.run_dir / "eval.json", scores, default=str)
    return scores


def lora_generator(cfg, run_dir: Path, lora_file: Optional[Path] = None):
    """generate(prompts, seeds, with_lora) over a fresh base model with the run's last trained LoRA, or with the
    LoRA file ``lora_file`` (a step file, ``-best`` or ``-ema`` of that run: read through the family's key map,
    on the modules and ranks of the run's last state)."""
    from lorakit.lora.inject import enable_lora, inject_lora, load_lora_into
    from lorakit.lora.variants import rank_of
    from lorakit.models.base import SamplePrompt
    from lorakit.models.registry import get_family
    from lorakit.train import checkpoint
    from lorakit.train.rundir import RunDir

    family = get_family(cfg.model.family)
    adapter = family.Adapter(cfg)
    adapter.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    state = checkpoint.load_state(RunDir(run_dir, cfg.save.name).latest_state())
    modules = {adapter.spec.denoiser_name: adapter.denoiser(), **adapter.text_encoder_modules()}
    keys = _keymap(family, adapter, lora_file, state)  # built on the plain model, before injection
    for component, loras in state["lora"].items():
        module = modules[component]
        algo = next(iter(loras.values())).algo if loras else "lora"  # LoHa/LoKr/DoRA too (issue 23)
        inject_lora(module, {n: rank_of(m) for n, m in loras.items()},
                    {n: float(m.alpha) for n, m in loras.items()}, 0.0, algo=algo, factor=cfg.network.factor)
        load_lora_into(module, loras)
    if lora_file is not None:
        from lorakit.lora.tools.files import load_state
        from lorakit.lora.warmstart import match

        targets = {c: {n: rank_of(m) for n, m in loras.items()} for c, loras in state["lora"].items()}
        alphas = {c: {n: float(m.alpha) for n, m in loras.items()} for c, loras in state["lora"].items()}
        loaded = match(load_state(Path(lora_file), [keys], keys.family), keys, targets, alphas,
                       {"denoiser": adapter.spec.denoiser_name}, str(lora_file), log=lambda *_: None)
        if sum(map(len, loaded.values())) != sum(map(len, targets.values())):
            raise ModelLoadError(f"{lora_file}: holds {sum(map(len, loaded.values()))} of the run's "
                                 f"{sum(map(len, targets.values()))} LoRA modules")
        for component, loras in loaded.items():
            load_lora_into(modules[component], loras)
    roots = list({id(m): m for m in modules.values()}.values())
    s = toy_recipe(cfg.model.family).demo

    def generate(prompts: list[str], seeds: list[int], with_lora: bool):
        for m in roots:
            enable_lora(m, with_lora)
        images = []
        for prompt, seed in zip(prompts, seeds):
            p = SamplePrompt(prompt=prompt, width=64, height=64, steps=s.sample_steps, seed=seed,
                             cfg_scale=s.cfg_scale)
            with torch.no_grad():
                images.append(adapter.sample(p, torch.Generator().manual_seed(seed)))
        for m in roots:
            enable_lora(m, True)
        return images

    return generate


def _keymap(family, adapter, lora_file: Optional[Path], state: dict):
    """The family's key map on the plain model, for reading ``lora_file``; None without one. A file of a LoRA
    variant (LoHa/LoKr/DoRA) or of a family without a key map is refused in one line."""
    if lora_file is None:
        return None
    algos = {m.algo for loras in state["lora"].values() for m in loras.values()}
    if algos - {"lora"} or not hasattr(family, "lora_keymap"):
        raise ModelLoadError(f"{lora_file}: only a LoRA file of a family with a key map is read back for scoring "
                             f"(this run trains {', '.join(sorted(algos))} on {family.SPEC.family}); the run's last "
                             "state is what can be scored")
    return family.lora_keymap(adapter.denoiser(), *adapter.text_encoder_modules().values())


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
