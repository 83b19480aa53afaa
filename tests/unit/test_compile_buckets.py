"""Issue 28, "each bucket shape compiled once": a compiled multi-bucket run of a toy model through `lorakit train`
(2 bucket shapes, 2 epochs, validation and previews in between, the end-of-run checks) compiles each distinct
(block, input signature) exactly once, in the first step of its bucket, and nothing afterwards.

`memory.compile` is CUDA-only; here the real ``speed.prepare_denoiser`` is told the device is CUDA (the model stays on
the CPU) and given a backend that records each compilation and returns the traced graph to run eagerly (no code
generation). What it must compile is derived independently: the blocks' distinct signatures (class, tensor inputs'
shapes/strides/requires_grad, weight shapes, scalar settings) that forward hooks see in an eager pass over the first
real batch of each bucket. Before the fix in ``steps.lora_effect`` the toy SDXL compiled 38 times, not 24: the end-of-run
LoRA check ran the compiled blocks under no_grad, with and without LoRA. Dynamo's tracing is most of the time (SDXL: 24
compiles); FLUX.1's 8 compiles cost about as much again, so that variant is slow-marked.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from lorakit.cli import main
from lorakit.models.registry import get_family
from lorakit.train import memory, speed, steps

from tests.integration.test_train_e2e import tiny_model, write_run_toml

pytest.importorskip("diffusers")

# 2 shapes (128² and 128×256 → two buckets at resolution 128), 3 images each; the validation split takes 2
SIZES = [(128, 128), (128, 256)] * 3


def signature(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    """What dynamo's guards on a compiled block depend on here: its code, its tensor inputs' shapes, strides, dtypes and
    requires_grad (the first block after an embedding gets an input without grad), its Python scalars and Nones, its
    weights' shapes and its own scalar attributes."""
    def value(v: object) -> object:  # dynamo guards on Python scalars and None by value
        if isinstance(v, torch.Tensor):
            return tuple(v.shape), v.stride(), v.dtype, v.requires_grad
        return repr(v) if v is None or isinstance(v, (bool, int, float, str)) else type(v).__name__

    shapes = tuple(value(a) for a in args) + tuple((k, value(v)) for k, v in sorted(kwargs.items()))
    weights = tuple((n, tuple(p.shape)) for n, p in module.named_parameters())
    # and the scalar settings of the block and its submodules (a GroupNorm's eps, a conv's padding): guarded by value
    settings = tuple((name, k, repr(v)) for name, sub in module.named_modules() for k, v in sorted(vars(sub).items())
                     if isinstance(v, (bool, int, float, str, tuple)) and not k.startswith("_"))
    return type(module).__name__, shapes, weights, settings


@pytest.mark.parametrize("family", ["sdxl", pytest.param("flux1", marks=pytest.mark.slow)])
def test_each_block_and_bucket_shape_compiles_once_in_the_first_epoch(tmp_path, monkeypatch, family):
    import torch._dynamo

    paths = tiny_model(family, tmp_path / "model")
    folder = tmp_path / "data" / "1_zkx shape"
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h), (40 * i, 100, 200 - 30 * i)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a zkx shape")
    toml = write_run_toml(tmp_path, family, paths)

    step = [0]
    compiles: list[tuple] = []  # (step, grad mode) of each compilation
    firsts: dict[tuple, int] = {}  # latent shape -> the step that first trains on it
    seen: set[tuple] = set()  # the blocks' signatures (independent of dynamo)
    step_shapes: list[tuple] = []
    denoiser: list[torch.nn.Module] = []

    def recording_backend(gm, example_inputs):
        compiles.append((step[0], torch.is_grad_enabled()))
        return gm.forward  # the traced graph, run eagerly

    real_prepare = speed.prepare_denoiser

    def prepare_on_cpu(model, mem, device, log=print, **kw):
        denoiser.append(model)
        return real_prepare(model, mem, torch.device("cuda"), log=log, **{**kw, "backend": recording_backend})

    real_check = memory.check_supported

    def check_without_compile(cfg, device, *a, **kw):  # compile is CUDA-only; the rest is checked as usual
        return real_check(dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, compile=False)), device,
                          *a, **kw)

    def reference_forward(adapter, batch, cfg):
        blocks = speed.repeated_blocks(denoiser[0], get_family(family).SPEC.compile_blocks)
        hooks = [b.register_forward_pre_hook(lambda m, a, k: seen.add(signature(m, a, k)), with_kwargs=True)
                 for b in blocks]
        try:
            with torch.compiler.set_stance("force_eager"):
                g = torch.Generator().manual_seed(0)
                noise = torch.randn(batch.latents.shape, generator=g)
                adapter.predict(adapter.noise(batch.latents, noise, batch, cfg.training, g), batch)
        finally:
            for h in hooks:
                h.remove()

    real_update = steps.update_step

    def counted_update(adapter, next_batch, cfg, *rest, **kw):
        step[0] += 1

        def seen_batch():
            batch = next_batch()
            shape = tuple(batch.latents.shape)
            step_shapes.append(shape)
            if shape not in firsts:  # a new bucket: what its training forward meets, eager, before it compiles
                firsts[shape] = step[0]
                reference_forward(adapter, batch, cfg)
            return batch

        return real_update(adapter, seen_batch, cfg, *rest, **kw)

    monkeypatch.setattr(speed, "prepare_denoiser", prepare_on_cpu)
    monkeypatch.setattr(memory, "check_supported", check_without_compile)
    monkeypatch.setattr(steps, "update_step", counted_update)
    torch._dynamo.reset()
    try:
        assert main(["train", str(toml), "memory.compile=true", "training.batch_size=1", "training.max_steps=8",
                     "data.resolution=128", "data.max_bucket_reso=256", "data.validation_split=0.34",
                     "validation.every_n_steps=3", "validation.timesteps=1", "sample.every_n_steps=3", "sample.at_start=false",
                     "sample.prompts=[\"a zkx shape --s 1\"]", "save.every_n_steps=100",
                     "log.progress=false", "log.tensorboard=false"]) == 0

        # the run: 4 training images in 2 bucket shapes, 2 epochs of 4 steps
        assert len(step_shapes) == 8 and len(firsts) == 2, step_shapes
        assert sorted(step_shapes[:4]) == sorted(step_shapes[4:])  # each epoch sees every image once
    finally:
        torch._dynamo.reset()

    assert len(seen) >= 2 * 3, seen  # both buckets, several shapes per bucket: the count below means something
    # one compile per distinct signature, all with gradients on (validation, previews and checks run eager) ...
    assert len(compiles) == len(seen), compiles
    assert all(grad for _, grad in compiles), compiles
    # ... each in the first step of its bucket, none after the first epoch
    assert {s for s, _ in compiles} == set(firsts.values()) and max(firsts.values()) <= 4, (compiles, step_shapes)


def test_the_end_of_run_lora_check_compiles_nothing():
    """Fast form of the fix above: ``steps.lora_effect`` (no_grad, LoRA on then off) over compiled blocks that training
    already compiled adds no compilation, and still measures the LoRA (its output differs with LoRA off)."""
    import torch._dynamo
    from types import SimpleNamespace

    from tests.unit.test_speed import step, tiny_flux

    compiled: list[bool] = []

    def recording_backend(gm, example_inputs):
        compiled.append(torch.is_grad_enabled())
        return gm.forward

    torch._dynamo.reset()
    try:
        model, params = tiny_flux()
        speed.compile_regions(model, backend=recording_backend, checkpoint=True, log=lambda s: None)
        step(model, params)  # a training step compiles the blocks
        assert compiled and all(compiled)
        trained = len(compiled)
        g = torch.Generator().manual_seed(3)
        batch = SimpleNamespace(latents=torch.randn(1, 16, 16, generator=g), text={}, loss_weight=torch.ones(1),
                                mask=None)
        text = torch.randn(1, 8, 32, generator=g)

        def predict(noised, b):
            return model(hidden_states=noised, encoder_hidden_states=text, pooled_projections=torch.zeros(1, 8),
                         timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3),
                         return_dict=False)[0]

        adapter = SimpleNamespace(noise=lambda latents, noise, b, training, gen: latents + noise, predict=predict)
        effect = steps.lora_effect(adapter, {"denoiser": model}, lambda: batch, None, torch.Generator().manual_seed(4),
                                   torch.device("cpu"), torch.float32)
    finally:
        torch._dynamo.reset()
    assert effect > 0.0
    assert len(compiled) == trained, "the LoRA check compiled the blocks again (no_grad / LoRA off)"
