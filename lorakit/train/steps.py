"""One optimizer step: forward/backward with gradient accumulation, the NaN-aware update, and the small helpers the
step, the previews and the final checks share (batch placement, autocast, the LoRA-effect check)."""

from __future__ import annotations

import contextlib

import torch

from lorakit import interrupts
from lorakit.config.schema import Config
from lorakit.lora.inject import enable_lora
from lorakit.models.base import Batch, to_gpu
from lorakit.train import distributed, health


def update_step(adapter, next_batch, cfg: Config, generator, optimizer, trainable, scaler, device,
                compute_dtype) -> health.StepStats:
    """``train_step``, then the optimizer update unless the loss or the gradient is not finite (the loop's
    ``nan_policy`` then stops the run or counts the step as skipped).

    A fused torch AdamW (the CUDA default) makes that decision on the GPU (``health.skip_on_device``), so the host
    queues the update and the next step without waiting, and reads this step's numbers later. Any other optimizer
    waits here for the numbers: one GPU synchronisation per step."""
    interrupts.check()  # a Ctrl-C/SIGTERM that some library swallowed stops the run here
    stats = train_step(adapter, next_batch, cfg, generator, optimizer, trainable, scaler, device, compute_dtype)
    in_backward = getattr(optimizer, "steps_in_backward", False)  # memory.fused_backward: already stepped
    if scaler is None and not in_backward and health.skip_on_device(optimizer, stats):
        optimizer_step(optimizer, scaler)
    elif stats.ok():
        optimizer_step(optimizer, scaler)
    else:
        optimizer.zero_grad(set_to_none=True)
    return stats


def train_step(adapter, next_batch, cfg: Config, generator, optimizer, trainable, scaler, device,
               compute_dtype) -> health.StepStats:
    """One optimizer step's worth of forward/backward (with gradient accumulation); returns its loss and gradient
    norm as ``health.StepStats`` (read without a synchronisation until asked for)."""
    from lorakit.diffusion import objectives
    from lorakit.train import speed

    accumulation = cfg.training.gradient_accumulation
    if getattr(optimizer, "needs_train_mode", False):  # schedule-free: gradients at y (zero_grad goes back to x)
        optimizer.train()
    total = torch.zeros((), device=device)  # summed on the device: reading it would wait for the GPU
    for micro in range(accumulation):
        if micro == accumulation - 1:  # distributed.overlap: gradients summed as this backward produces them
            distributed.arm(cfg, trainable)
        speed.mark_step()  # CUDA graph trees: a new forward/backward begins (no-op unless CUDA graphs are on)
        batch = to_device(next_batch(), device)
        noise = to_gpu(torch.randn(batch.latents.shape, generator=generator), device)
        noised = adapter.noise(batch.latents, noise, batch, cfg.training, generator)
        batch, noised, share = distributed.local_part(batch, noised)  # this process's slice of the global batch
        if not batch.latents.shape[0]:  # a short last batch with fewer samples than processes: nothing here
            continue
        with autocast(device, compute_dtype):
            pred = adapter.predict(noised, batch)
        per_sample = objectives.loss_per_sample(pred.float(), noised.target.float(), cfg.training.loss,
                                                cfg.training.huber_c, mask=batch.mask)
        loss = objectives.weighted_mean(per_sample, noised.weight.to(device) * batch.loss_weight) * share / accumulation
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach().float()
    distributed.exchange(trainable, total)  # several processes: gradients and loss summed over them
    if scaler:
        scaler.unscale_(optimizer)
    if getattr(optimizer, "steps_in_backward", False):  # memory.fused_backward: stepped, grads already freed
        grad_norm = optimizer.grad_norm()
    elif cfg.optimizer.max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.optimizer.max_grad_norm)
    else:
        # one foreach reduction (a per-parameter sum would queue thousands of kernels every step)
        grad_norm = torch.nn.utils.get_total_norm([p.grad.float() for p in trainable if p.grad is not None])
    return health.StepStats(total, grad_norm)


def optimizer_step(optimizer, scaler) -> None:
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def no_training_randomness(modules: dict):
    """For previews and checks: the LoRA's dropout off (its layers in eval mode) and every global random stream
    (torch CPU and the current CUDA device) put back afterwards, so drawing a preview changes nothing that training
    draws next (previews and checks take their own generators)."""
    switched = [m for module in modules.values() for m in module.modules()
                if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training]
    for m in switched:
        m.eval()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for m in switched:
            m.train()


def lora_effect(adapter, modules, next_batch, training, generator, device, compute_dtype) -> float:
    """Mean |output with LoRA − output without| on one training batch (0 means the LoRA does nothing); dropout off,
    ``generator`` only (the check's own). Runs eager, as previews and validation do: through compiled blocks, its
    no_grad passes (with and without LoRA) would compile every block shape twice more at the end of the run."""
    batch = to_device(next_batch(), device)
    noise = torch.randn(batch.latents.shape, generator=generator).to(device)
    with torch.no_grad(), autocast(device, compute_dtype), no_training_randomness(modules), \
            torch.compiler.set_stance("force_eager"):
        noised = adapter.noise(batch.latents, noise, batch, training, generator)
        with_lora = adapter.predict(noised, batch).float()
        for m in modules.values():
            enable_lora(m, False)
        try:
            without = adapter.predict(noised, batch).float()
        finally:
            for m in modules.values():
                enable_lora(m, True)
    return float((with_lora - without).abs().mean())


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a batch to ``device`` without waiting for the GPU (``models.base.to_gpu``: a copy that waits would
    start every step from an idle GPU)."""
    batch.latents = to_gpu(batch.latents, device)
    batch.host_text = batch.text
    batch.text = {k: to_gpu(v, device) for k, v in batch.text.items()}
    batch.loss_weight = to_gpu(batch.loss_weight, device)
    if batch.mask is not None:
        batch.mask = to_gpu(batch.mask, device)
    return batch


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
