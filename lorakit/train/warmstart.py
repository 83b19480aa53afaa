"""``network.weights``: the run's LoRA starts from a LoRA file (kohya's ``network_weights``), with a new optimizer
state. The file is read and checked (family, modules, ranks) before the LoRA is injected, with the family's key
map built on the model as loaded; :func:`load` copies it into the injected layers. The maths of matching a file
to the run's modules is :mod:`lorakit.lora.warmstart`; this unit only asks the adapter and the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from lorakit.config.schema import Config
from lorakit.errors import ConfigError, LorakitError
from lorakit.lora import warmstart
from lorakit.lora.inject import load_lora_into


def read(cfg: Config, adapter, targets: dict[str, dict[str, int]], alphas: dict[str, dict[str, float]],
         log: Callable[[str], None] = print) -> Optional[dict]:
    """Run component → path → LoraModule from ``network.weights``; None when the key is unset. Call before
    injection (the key map is built from the plain model)."""
    if not cfg.network.weights:
        return None
    from lorakit.lora.tools.files import load_state
    from lorakit.models.registry import get_family

    path = Path(cfg.network.weights)
    if not path.exists():
        raise ConfigError(f"network.weights: {path} does not exist")
    family = get_family(cfg.model.family)
    if not hasattr(family, "lora_keymap"):
        raise ConfigError(f"network.weights: {cfg.model.family} has no LoRA key map yet, so {path} cannot be "
                          "read into a run of it; remove network.weights")
    keys = family.lora_keymap(adapter.denoiser(), *adapter.text_encoder_modules().values())
    try:
        state = load_state(path, [keys], keys.family)
    except LorakitError as exc:
        kind = _what(path)
        if kind is not None and kind.role != "lora":  # a checkpoint, a VAE, an encoder: say so, not "unknown layout"
            raise ConfigError(f"network.weights: {path} is not a LoRA: this is {kind.what}; name a LoRA .safetensors "
                              "file (or remove network.weights)") from None
        raise ConfigError(f"network.weights: {exc}") from None
    components = {"denoiser": adapter.spec.denoiser_name}
    return warmstart.match(state, keys, targets, alphas, components, str(path), log)


def _what(path: Path):
    """What the file at ``path`` is (models.registry.identify), or None where its header cannot be read."""
    from lorakit.models.registry import identify

    try:
        return identify(path) if path.is_file() else None
    except LorakitError:
        return None


def load(loras: Optional[dict], modules: dict) -> None:
    """Copy what :func:`read` returned into the injected LoRA layers (modules by run component)."""
    for component, lora in (loras or {}).items():
        load_lora_into(modules[component], lora, strict=False)
