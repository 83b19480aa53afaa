"""An exponential moving average of the LoRA weights (``training.ema``, ``training.ema_decay``; issue 23).

After every optimizer step ``ema ← decay · ema + (1 − decay) · weights``, per tensor, in the weights' own dtype
(fp32) and on their device, starting from the weights before step 1 (the LoRA's init, or ``network.weights``).
The run ships it beside the trained LoRA as ``<name>-ema.safetensors`` (same format, keys and metadata), and the
previews draw with it when ``sample.use_ema`` is on.

Resume: the EMA travels inside the optimizer's state dict (``optimizer.pt`` of each resume state, covered by its
checksum), so a resumed run continues it bit for bit; :func:`attach` wraps the optimizer's ``state_dict`` /
``load_state_dict`` on the instance (every optimizer class, bitsandbytes' own overrides included).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

KEY = "lorakit_ema"


class LoraEMA:
    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        self.params = list(params)
        self.decay = float(decay)
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, [p.detach() for p in self.params], alpha=1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.detach().clone() for s in self.shadow]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
            raise ValueError("the saved EMA does not fit this run's LoRA")
        for dst, src in zip(self.shadow, shadow):
            dst.copy_(src.to(dst.device, dst.dtype))
        self.updates = int(state.get("updates", 0))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The EMA in the LoRA weights for the block (exact copies back afterwards)."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)


def attach(cfg, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
           log: Callable[[str], None] = print) -> Optional[LoraEMA]:
    """The run's EMA (None unless ``training.ema``), carried in ``optimizer``'s state dict from now on."""
    if not cfg.training.ema:
        return None
    ema = LoraEMA(params, cfg.training.ema_decay)
    save, load = optimizer.state_dict, optimizer.load_state_dict

    def state_dict() -> dict:
        out = save()
        out[KEY] = ema.state_dict()
        return out

    def load_state_dict(state: dict) -> None:
        state = dict(state)
        saved = state.pop(KEY, None)
        load(state)
        if saved is None:
            log("warning: the resume state holds no EMA (the run started without training.ema); the EMA starts "
                "from the resumed weights")
            ema.shadow = [p.detach().clone() for p in ema.params]
        else:
            ema.load_state_dict(saved)

    optimizer.state_dict = state_dict  # type: ignore[method-assign]
    optimizer.load_state_dict = load_state_dict  # type: ignore[method-assign]
    return ema


def for_previews(ema: Optional[LoraEMA], cfg):
    """The EMA weights for a preview when ``sample.use_ema`` asks for them."""
    return ema.applied() if ema is not None and cfg.sample.use_ema else contextlib.nullcontext()


def save_file(ema: Optional[LoraEMA], run, cfg, adapter, modules, targets, dataset, stream, step: int) -> Optional[Path]:
    """``<name>-ema.safetensors`` beside the LoRA: the EMA exported like the LoRA itself (None without EMA)."""
    if ema is None:
        return None
    from lorakit.train.export import export_lora
    from lorakit.train.resume import extract_all

    with ema.applied():
        lora = extract_all(modules, targets)
    return export_lora(run.root / f"{cfg.save.name}-ema.safetensors", adapter, lora, cfg, dataset, stream, step,
                       run.session())
