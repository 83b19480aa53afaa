"""Helpers that family packages share; no family knowledge lives here.

* :class:`LazyPart`: a component attribute read by its loader on first access (text encoders, autoencoders and
  tokenizers that a cached run never needs).
* :func:`block_indices` / :func:`chosen_blocks` / :func:`module_ranks`: ``network.train_blocks``, the block index
  lists and ``network.module_ranks`` for transformers built of two-stream ("double") and single-stream blocks.
* :func:`shards` / :func:`need_file`: the weights files a ``model.*`` key names (split files, folders, required roles).
* :func:`linear_widths`: output width of every Linear of a (LoRA-injected) model, for fusing exports.
* :func:`deferred_placement`: whether the memory settings leave the denoiser on the CPU after loading (the loop
  places it block by block).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Optional

from lorakit.errors import ConfigError

__all__ = ["LazyPart", "block_indices", "chosen_blocks", "module_ranks", "deferred_placement", "shards", "need_file",
           "linear_widths"]


class LazyPart:
    """A descriptor: ``obj.<name>`` calls ``obj._loaders[name]()`` once and keeps the result in ``obj._parts``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        if self.name not in obj._parts:
            obj._parts[self.name] = obj._loaders[self.name]()
        return obj._parts[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj._parts[self.name] = value


def block_indices(value: Any, count: int, key: str) -> list[int]:
    """'0,2-5' / [0, 2] / None (all) / 'all' / 'none' -> sorted block indices, checked against ``count``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return list(range(count))
    if isinstance(value, str) and value.strip().lower() == "none":
        return []
    items: list[int] = []
    parts: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    for part in parts:
        s = str(part).strip()
        try:
            if "-" in s:
                a, b = (int(x) for x in s.split("-", 1))
                items.extend(range(a, b + 1))
            else:
                items.append(int(s))
        except ValueError:
            raise ConfigError(f"{key}: cannot read {s!r}; use indices like '0,2-5'") from None
    bad = [i for i in items if not 0 <= i < count]
    if bad:
        raise ConfigError(f"{key}: index {bad[0]} out of range; this model has {count} blocks (0-{count - 1})")
    return sorted(set(items))


def chosen_blocks(network: Any, num_double: int, num_single: int) -> set[str]:
    """Name prefixes (``double_blocks.I.`` / ``single_blocks.I.``) of the blocks that ``network.train_blocks`` and
    ``network.double_block_indices`` / ``single_block_indices`` select."""
    blocks = getattr(network, "train_blocks", "all") or "all"
    if blocks not in ("all", "double", "single"):
        raise ConfigError(f"network.train_blocks: {blocks!r}; use all, double or single")
    doubles = block_indices(getattr(network, "double_block_indices", None), num_double,
                            "network.double_block_indices") if blocks in ("all", "double") else []
    singles = block_indices(getattr(network, "single_block_indices", None), num_single,
                            "network.single_block_indices") if blocks in ("all", "single") else []
    return {f"double_blocks.{i}." for i in doubles} | {f"single_blocks.{i}." for i in singles}


def module_ranks(network: Any, types: Iterable[str], model: str) -> dict[str, int]:
    """``network.module_ranks`` checked against the family's module ``types`` (``model`` names it in the error)."""
    types = tuple(types)
    ranks = dict(getattr(network, "module_ranks", None) or {})
    unknown = sorted(set(ranks) - set(types))
    if unknown:
        raise ConfigError(f"network.module_ranks: {unknown[0]!r} is not a {model} module type; use "
                          f"{', '.join(types)}")
    for k, v in ranks.items():
        if not isinstance(v, int) or v < 0:
            raise ConfigError(f"network.module_ranks.{k}: must be an integer >= 0 (0 skips), got {v!r}")
    return ranks


def deferred_placement(memory: Any, *family_keys: str) -> bool:
    """Whether the denoiser stays on the CPU after load(): block swap, fp8 storage or a VRAM budget (the loop
    then places it block by block), or any of the family's own ``memory`` keys in ``family_keys``."""
    if memory is None:
        return False
    keys = ("blocks_to_swap", "fp8_base", "vram_gb") + family_keys
    return any(bool(getattr(memory, k, None)) for k in keys)


def shards(path: Path, key: str) -> list[Path]:
    """A file, the parts of a split file named by its first part (``x-00001-of-00003.safetensors``), or the
    .safetensors files of a folder; ``key`` (``model.text_encoder``) names the setting in the errors."""
    if path.is_dir():
        parts = sorted(path.glob("*.safetensors"))
        if not parts:
            raise ConfigError(f"{key}: folder {path} holds no .safetensors file")
        return parts
    m = re.match(r"(.*)-(\d+)-of-(\d+)\.safetensors$", path.name)
    if not m:
        return [path]
    width = len(m.group(2))
    parts = [path.with_name(f"{m.group(1)}-{i:0{width}d}-of-{m.group(3)}.safetensors")
             for i in range(1, int(m.group(3)) + 1)]
    absent = [p for p in parts if not p.is_file()]
    if absent:
        raise ConfigError(f"{key}: part {absent[0].name} of the split file is missing next to {path.name}")
    return parts


def need_file(model_cfg: Any, role: str, what: str, model: str) -> Path:
    """``model.<role>``, required beside a single-file checkpoint of ``model`` (``what``: which file to give)."""
    value = getattr(model_cfg, role, None)
    if not value:
        raise ConfigError(f"model.{role}: required with a {model} single-file checkpoint ({what})")
    p = Path(value).expanduser()
    if not p.exists():
        raise ConfigError(f"model.{role}: not found: {p}")
    return p


def linear_widths(model: Any) -> dict[str, int]:
    """Module path -> output width of every Linear (peft's ``.base_layer`` under its module's own path)."""
    from torch import nn

    return {n.removesuffix(".base_layer"): m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}


class ComponentsAdapter:
    """What adapters share whose ``self.comps`` holds a ``transformer``, lazily read encoders (``loaded(name)``) and
    the ``files`` they came from: the FLUX.2 and Z-Image adapters. ``family`` names it in messages and cache keys."""

    family = "?"
    encoders: tuple[str, ...] = ("text_encoder", "ae")
    comps: Any = None
    cfg: Any = None

    def _c(self) -> Any:
        if self.comps is None:
            raise RuntimeError(f"{self.family} adapter: load() must be called first")
        return self.comps

    @property
    def variant(self) -> str:
        return self._c().variant

    def cache_key(self, part: str, role: str, *settings: str) -> str:
        """The cache identity of ``part`` ("vae", "text", "model"): the identity (size, mtime, header hash) of the
        file ``role`` was read from and the encoding ``settings``."""
        import hashlib

        from lorakit.fsutil import path_identity  # the one file-identity algorithm

        p = self._c().files.get(role)
        parts = (part, path_identity(Path(p)) if p is not None else "none", *settings)
        return f"{self.family}-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def offload_encoders(self) -> None:
        c = self._c()
        for name in self.encoders:
            if c.loaded(name):
                getattr(c, name).to("cpu")

    def flow_sample(self, prompt: Any, generator: Any, channels: int, schedule: Any) -> Any:
        """A preview: noise of the prompt's size (multiples of 16, latents 1/8), ``schedule(steps)``'s sigmas through
        :meth:`euler_cfg` (CFG with the prompt's negative unless the scale is 1), then the adapter's ``decode``."""
        import torch

        steps, cfg_scale = self.sample_settings(prompt)
        width, height = max(16, prompt.width // 16 * 16), max(16, prompt.height // 16 * 16)
        x = torch.randn((1, channels, height // 8, width // 8), generator=generator, device=generator.device,
                        dtype=torch.float32).to(self.device)
        cond = self.encode_text([prompt.prompt])
        neg = self.encode_text([prompt.negative]) if cfg_scale != 1.0 else None
        return self.decode(self.euler_cfg(x, schedule(steps), steps, cond, neg, cfg_scale))

    def euler_cfg(self, x: Any, sigmas: Any, steps: int, cond: Any, neg: Any, cfg_scale: float) -> Any:
        """``steps`` flow-match Euler steps along ``sigmas`` with classifier-free guidance (``neg`` None: none), the
        denoiser in eval mode meanwhile; the adapter's ``_forward(x, sigma, text)`` gives the velocity."""
        tr = self._c().transformer
        was_training = tr.training
        tr.eval()
        try:
            for i in range(steps):
                s = sigmas[i].reshape(1)
                v = self._forward(x, s, cond)
                if neg is not None:
                    v_neg = self._forward(x, s, neg)
                    v = v_neg + cfg_scale * (v - v_neg)
                x = x + (sigmas[i + 1] - sigmas[i]).item() * v.to(x.device)
        finally:
            tr.train(was_training)
        return x

    def vae_module(self) -> Any:
        """The autoencoder (``ae`` or, in SD3.5's and Qwen-Image's components, ``vae``): the planner may switch it to
        tiled encode / decode (train/autoplan.py)."""
        c = self._c()
        return c.vae if hasattr(type(c), "vae") else c.ae  # asked of the class: the part loads on first use

    def denoiser(self) -> Any:
        return self._c().transformer

    def text_encoder_modules(self) -> dict[str, Any]:
        return {}
