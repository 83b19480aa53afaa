"""A LoRA file's modules on the paths of the model a run injects into (``network.weights``, issue 23).

Pure state-dict work: the file is read into the canonical form by :mod:`lorakit.lora.formats` (any layout lorakit
reads), each module is put back on its diffusers path(s) with the family's key map (a fused FLUX.1 qkv / linear1
split exactly into its parts, :func:`~lorakit.lora.formats.fused.split`), and each pair is checked against the rank
the run injects there. The run keeps its own ``network.alpha``: where the file's alpha differs, the up weights are
rescaled so that every module's ΔW is the file's.
"""

from __future__ import annotations

from typing import Callable

from lorakit.errors import ConfigError
from lorakit.lora.formats.fused import Pair, split
from lorakit.lora.formats.keymap import FamilyKeys
from lorakit.lora.formats.layouts import LoraState
from lorakit.models.base import LoraModule

KEY = "network.weights"


def pairs_by_path(state: LoraState, keys: FamilyKeys) -> dict[str, dict[str, Pair]]:
    """Key-map component ("denoiser", "te1", ...) → diffusers module path → pair."""
    out: dict[str, dict[str, Pair]] = {}
    for name, pair in state.modules.items():
        m = keys.by_kohya.get(name)
        if m is None:
            continue  # a module kept by name (the caller refuses those)
        parts = [pair] if len(m.diffusers) == 1 else split(pair, m.part_sizes(int(pair.up.shape[0])))
        for path, part in zip(m.diffusers, parts):
            if part is not None:
                out.setdefault(m.component, {})[path] = part
    return out


def _on_target(path: str, targets: dict[str, int]) -> str | None:
    """The run's path for a key-map path (transformers >= 5.6 names CLIP modules without ``text_model.``)."""
    for p in (path, path.removeprefix("text_model."), "text_model." + path):
        if p in targets:
            return p
    return None


# the keys that choose which modules a run trains (familywalk: a hint names only those the family honours)
_BLOCK_KEYS = ("network.train_blocks", "network.double_block_indices", "network.single_block_indices",
               "network.module_ranks", "network.conv_rank")


def _honoured(family: str, keys: tuple[str, ...]) -> list[str]:
    """The family-only ``keys`` that ``family`` honours (all of them for a family that is not installed)."""
    from lorakit.config import families

    if family not in families.installed():
        return list(keys)
    return [k for k in keys if family in families.applies_to(k)]


def match(state: LoraState, keys: FamilyKeys, targets: dict[str, dict[str, int]], alphas: dict[str, dict[str, float]],
          components: dict[str, str], where: str, log: Callable[[str], None] = print
          ) -> dict[str, dict[str, LoraModule]]:
    """The file's modules as the run's LoRA (run component → path → LoraModule with the run's alpha).

    ``targets``/``alphas``: run component → path → rank / alpha as the run injects them; ``components``: key-map
    component → run component (``"denoiser"`` → ``"unet"``). Refused with one line naming the file: modules the
    run does not train, keys that fit no module of the family, a rank that differs from the run's."""
    stray = state.unplaced() or sorted(state.foreign)
    if stray:
        version = str((state.metadata or {}).get("ss_base_model_version", ""))  # familywalk: say what it says
        said = (f"the file says it is a LoRA of {version} (ss_base_model_version)" if version else
                "is it a LoRA of another family or model?")
        raise ConfigError(f"{KEY}: {where}: {len(stray)} keys fit no {keys.family} module of this model (e.g. "
                          f"{stray[0]}); {said}")
    out: dict[str, dict[str, LoraModule]] = {}
    rescaled = 0
    for comp, pairs in pairs_by_path(state, keys).items():
        run_comp = components.get(comp, comp)
        have = targets.get(run_comp, {})
        for path, pair in sorted(pairs.items()):
            target = _on_target(path, have)
            if target is None:
                chosen = _honoured(keys.family, _BLOCK_KEYS)
                hint = ("set network.train_text_encoder = true" if run_comp != components.get("denoiser") else
                        f"train the same blocks ({', '.join(chosen)})" if chosen else
                        "train the same modules (this family's LoRA covers its default modules)")
                raise ConfigError(f"{KEY}: {where} holds {run_comp} module {path}, which this run does not train; "
                                  f"{hint}")
            rank = have[target]
            if pair.rank != rank:
                other = " / ".join(_honoured(keys.family, ("network.conv_rank", "network.module_ranks")))
                raise ConfigError(f"{KEY}: {where} has rank {pair.rank} at {run_comp} {path}, this run injects rank "
                                  f"{rank}; set network.rank{f' (or {other})' if other else ''} to the file's ranks")
            alpha = float(alphas[run_comp][target])
            factor = pair.scale / (alpha / rank)
            rescaled += factor != 1.0
            down = pair.down.float()
            up = pair.up.float().reshape(pair.up.shape[0], rank, *([1] * (down.dim() - 2)))
            out.setdefault(run_comp, {})[target] = LoraModule(down=down.clone(),
                                                              up=up * factor if factor != 1.0 else up.clone(),
                                                              alpha=alpha)
    n = sum(len(v) for v in out.values())
    if n == 0:
        raise ConfigError(f"{KEY}: {where}: no module of this run's LoRA is in the file")
    total = sum(len(v) for v in targets.values())
    log(f"{KEY}: {n} of the run's {total} LoRA modules start from {where}"
        + (f" ({total - n} not in the file start fresh)" if n < total else "")
        + (f"; {rescaled} up weights rescaled to keep the file's ΔW under network.alpha" if rescaled else "")
        + "; the optimizer starts fresh")
    return out
