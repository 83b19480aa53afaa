"""LoRA variants beside plain LoRA/LoCon (issue 23): LoHa, LoKr and DoRA, trained with peft, read out and written in
the LyCORIS key layout ComfyUI, Forge and A1111 load natively.

The maths, per targeted module with base weight W ([out, in] or [out, in, kh, kw], flattened to [out, in·kh·kw]),
rank r, alpha a, s = a / r:

* LoHa (peft ``LoHaConfig``): ΔW = s · (w1a @ w1b) ⊙ (w2a @ w2b); w1a, w2a [out, r], w1b, w2b [r, in·kh·kw].
  Stored as ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` and ``alpha``.
* LoKr (peft ``LoKrConfig``, ``network.factor`` = peft's ``decompose_factor``): ΔW = s · kron(w1, w2) with
  w1 [out_l, in_m] and w2 = w2a @ w2b ([out_k, r] @ [r, in_n·kh·kw]), or w2 full where the rank is at least half
  its sides (peft and LyCORIS decide alike). Stored as ``lokr_w1``, ``lokr_w2_a``/``lokr_w2_b`` (or ``lokr_w2``),
  ``alpha``. A loader applies alpha / r only where a factor is rank-decomposed (ComfyUI: alpha divided by the
  decomposed factor's rank, else 1), so where both factors are full the scale is folded into ``lokr_w1`` (and
  the stored alpha is r).
* DoRA: W' = (W + ΔW) · diag(m / ‖W + ΔW‖_col), ΔW = s · up @ down (a peft LoRA), one magnitude m_i per INPUT
  column i (the norm runs over the output rows and the kernel). Stored as the LoRA keys plus ``dora_scale`` of
  shape [1, in] ([1, in, 1, 1] for a convolution). Why per input column, not per output row as peft's
  ``use_dora`` does: A1111 reads dora_scale on the input axis only, and ComfyUI/Forge normalise an output-axis
  dora_scale by the norm of W instead of W + ΔW (``weight_decompose``), so a per-row DoRA would not load as trained
  anywhere but LyCORIS itself; the per-column form loads exactly in all of them (LyCORIS: ``wd_on_output=False``).
  Scaling the weight's input columns is scaling the layer's input features, so the layer runs as peft's LoRA on
  ``x · m / ‖W + ΔW‖_col``; the norm is computed without gradient (the DoRA paper's §4.3, as peft does).

A trained module travels through lorakit as a :class:`lorakit.models.base.LoraModule` with ``algo`` set and its
tensors in ``extra`` under their LyCORIS names (DoRA: ``down``/``up`` as LoRA plus ``extra["dora_scale"]``).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

from lorakit.errors import ModelLoadError
from lorakit.lora.variant_keys import ALGOS, LOHA_KEYS, LOKR_KEYS, LYCORIS_SUFFIXES, algo_of_keys  # noqa: F401

DORA_ATTR = "lorakit_dora_magnitude"   # the magnitude parameter set on a peft LoRA layer
EPS = torch.finfo(torch.float32).eps


# ------------------------------------------------------------------------------------------------ maths

def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).float()


def lycoris_delta(algo: str, t: dict[str, torch.Tensor], alpha: float, shape) -> torch.Tensor:
    """ΔW (float32, ``shape``) of a LoHa/LoKr module from its stored tensors (before any folding)."""
    if algo == "loha":
        r = t["hada_w1_b"].shape[0]
        m1 = _flat(t["hada_w1_a"]) @ _flat(t["hada_w1_b"])
        m2 = _flat(t["hada_w2_a"]) @ _flat(t["hada_w2_b"])
        return ((alpha / r) * m1 * m2).reshape(shape)
    if algo == "lokr":
        w1 = t["lokr_w1"].float() if "lokr_w1" in t else _flat(t["lokr_w1_a"]) @ _flat(t["lokr_w1_b"])
        w2 = t["lokr_w2"].float() if "lokr_w2" in t else _flat(t["lokr_w2_a"]) @ _flat(t["lokr_w2_b"])
        low = next((t[k] for k in ("lokr_w2_b", "lokr_w1_b") if k in t), None)  # the decomposed factor's rank
        scale = alpha / low.shape[0] if low is not None else 1.0
        w2 = w2.reshape(w2.shape[0], -1)
        return (scale * torch.kron(w1.reshape(w1.shape[0], -1), w2)).reshape(shape)
    raise ValueError(algo)


def dora_column_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖ per input column ([in]): over the output rows and the kernel."""
    w = weight.float()
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)


def dora_scale_shape(weight_shape) -> tuple[int, ...]:
    """dora_scale's shape as LyCORIS writes it on the input axis: [1, in] or [1, in, 1, 1]."""
    return (1, int(weight_shape[1]), *([1] * (len(weight_shape) - 2)))


# ------------------------------------------------------------------------------------------------ layers

def variant_layers(module: nn.Module, adapter_name: str = "default") -> Iterator[tuple[str, str, nn.Module]]:
    """(path, algo, layer) of every LoHa/LoKr peft layer and every DoRA-wrapped LoRA layer."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    for name, sub in module.named_modules():
        if isinstance(sub, LoHaLayer) and adapter_name in sub.hada_w1_a:
            yield name, "loha", sub
        elif isinstance(sub, LoKrLayer) and adapter_name in sub._available_adapters:
            yield name, "lokr", sub
        elif hasattr(sub, DORA_ATTR):
            yield name, "dora", sub


def lycoris_params(layer: nn.Module, algo: str, adapter_name: str = "default") -> dict[str, nn.Parameter]:
    """name → the layer's parameter of that name, for a peft LoHa/LoKr layer."""
    out = {}
    for key in (LOHA_KEYS if algo == "loha" else LOKR_KEYS):
        table = getattr(layer, key, None)
        if table is not None and adapter_name in table:
            out[key] = table[adapter_name]
    return out


def peft_lycoris_config(algo: str, *, r: int, alpha: float, target_modules: str, rank_pattern: dict,
                        alpha_pattern: dict, factor: int):
    from peft import LoHaConfig, LoKrConfig

    common = dict(r=r, alpha=alpha, target_modules=target_modules, rank_pattern=rank_pattern,
                  alpha_pattern=alpha_pattern, rank_dropout=0.0, module_dropout=0.0, init_weights=True,
                  use_effective_conv2d=False)
    if algo == "loha":
        return LoHaConfig(**common)
    return LoKrConfig(**common, decompose_both=False, decompose_factor=int(factor))


def add_dora(layer: nn.Module, adapter_name: str = "default") -> nn.Parameter:
    """Give an injected peft LoRA layer an input-axis DoRA magnitude (initialised to ‖W‖ per column, so the layer is
    unchanged until training moves it) and route its forward through :func:`dora_input_scale`."""
    weight = layer.base_layer.weight
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"DoRA needs the base weight in a float dtype, got {weight.dtype}")
    magnitude = nn.Parameter(dora_column_norm(weight.detach()).to(weight.device))
    setattr(layer, DORA_ATTR, magnitude)
    inner = layer.forward
    conv = isinstance(layer.base_layer, nn.Conv2d)

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if layer.disable_adapters or layer.merged:
            return inner(x, *args, **kwargs)
        c = dora_input_scale(layer, adapter_name)
        c = c.view(1, -1, 1, 1) if conv else c
        return inner(x * c.to(x.dtype), *args, **kwargs)

    layer.forward = forward
    return magnitude


def dora_input_scale(layer: nn.Module, adapter_name: str = "default") -> torch.Tensor:
    """m / (‖W + s·up@down‖_col + eps) ([in], float32); the norm carries no gradient."""
    magnitude = getattr(layer, DORA_ATTR)
    with torch.no_grad():
        norm = dora_column_norm(_dora_merged(layer, adapter_name))
    return magnitude / (norm + EPS)


def _dora_merged(layer: nn.Module, adapter_name: str) -> torch.Tensor:
    w = layer.base_layer.weight.detach().float()
    a = layer.lora_A[adapter_name].weight.detach().float()
    b = layer.lora_B[adapter_name].weight.detach().float()
    delta = (_flat(b) @ _flat(a)) * float(layer.scaling[adapter_name])
    return w + delta.reshape(w.shape)


# ------------------------------------------------------------------------------------------------ out and in

def extract_variant(layer: nn.Module, algo: str, adapter_name: str = "default"):
    """The trained module as a LoraModule (fp32 CPU clones)."""
    from lorakit.models.base import LoraModule

    cpu = lambda t: t.detach().to("cpu", torch.float32).clone()  # noqa: E731
    if algo == "dora":
        down, up = cpu(layer.lora_A[adapter_name].weight), cpu(layer.lora_B[adapter_name].weight)
        shape = dora_scale_shape(layer.base_layer.weight.shape)
        return LoraModule(down=down, up=up, alpha=float(layer.lora_alpha[adapter_name]), algo="dora",
                          extra={"dora_scale": cpu(getattr(layer, DORA_ATTR)).reshape(shape)})
    extra = {k: cpu(p) for k, p in lycoris_params(layer, algo, adapter_name).items()}
    empty = torch.zeros(0)
    return LoraModule(down=empty, up=empty, alpha=float(layer.alpha[adapter_name]), algo=algo, extra=extra,
                      rank=int(layer.r[adapter_name]))


def load_variant(layer: nn.Module, algo: str, lm, path: str, adapter_name: str = "default") -> None:
    """Copy a LoraModule of ``algo`` into an injected layer (shapes must match)."""
    if getattr(lm, "algo", "lora") != algo:
        raise ModelLoadError(f"LoRA module {path!r}: the weights are {getattr(lm, 'algo', 'lora')}, the run trains "
                             f"{algo} (network.type)")
    with torch.no_grad():
        if algo == "dora":
            mag = getattr(layer, DORA_ATTR)
            scale = lm.extra["dora_scale"].reshape(-1)
            if scale.numel() != mag.numel():
                raise ModelLoadError(f"LoRA module {path!r}: dora_scale has {scale.numel()} entries, the layer "
                                     f"{mag.numel()} input columns")
            mag.copy_(scale.to(mag.device, mag.dtype))
            return
        params = lycoris_params(layer, algo, adapter_name)
        if set(params) != set(lm.extra):
            raise ModelLoadError(f"LoRA module {path!r}: tensors {sorted(lm.extra)} do not fit the injected "
                                 f"{sorted(params)} (another rank or network.factor)")
        for key, p in params.items():
            if tuple(lm.extra[key].shape) != tuple(p.shape):
                raise ModelLoadError(f"LoRA module {path!r}: {key} {tuple(lm.extra[key].shape)} does not fit the "
                                     f"injected {tuple(p.shape)}")
            p.copy_(lm.extra[key].to(p.device, p.dtype))
        layer.alpha[adapter_name] = float(lm.alpha)
        layer.scaling[adapter_name] = float(lm.alpha) / layer.r[adapter_name]


# ------------------------------------------------------------------------------------------------ the file

def lycoris_tensors(lm) -> dict[str, torch.Tensor]:
    """suffix → tensor (float32) of one module in the LyCORIS layout ComfyUI reads, ``alpha`` included.

    LoKr with both factors full: ComfyUI applies no alpha there, so alpha / r is folded into lokr_w1 and the stored
    alpha is r (a loader that divides it by the rank gets 1 too)."""
    algo = lm.algo
    if algo == "dora":
        return {"lora_down.weight": lm.down.float(), "lora_up.weight": lm.up.float(),
                "alpha": torch.tensor(float(lm.alpha)), "dora_scale": lm.extra["dora_scale"].float()}
    out = {k: v.float() for k, v in lm.extra.items()}
    out["alpha"] = torch.tensor(float(lm.alpha))
    if algo == "lokr" and "lokr_w1_b" not in out and "lokr_w2_b" not in out:
        r = _lokr_rank(lm)
        out["lokr_w1"] = out["lokr_w1"] * (float(lm.alpha) / r)
        out["alpha"] = torch.tensor(float(r))  # alpha / rank = 1 for a loader that applies it anyway
    return out


def _lokr_rank(lm) -> int:
    """The rank a LoKr module was configured with (peft's scale is alpha / r) where no factor is rank-decomposed
    and so no tensor shows it: carried in ``LoraModule.rank``."""
    if not getattr(lm, "rank", 0):
        raise ValueError("a LoKr module with both factors full needs LoraModule.rank (its scale is alpha / rank)")
    return int(lm.rank)


def module_delta(lm, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ΔW of a trained module as it acts on the model (float32). DoRA needs the base ``weight``: its ΔW is
    W' − W."""
    if lm.algo in ("loha", "lokr"):
        if weight is None:
            raise ValueError("module_delta needs the base weight's shape")
        t = dict(lm.extra)
        if lm.algo == "lokr" and "lokr_w1_b" not in t and "lokr_w2_b" not in t:
            return lycoris_delta("lokr", t, 1.0, weight.shape) * (float(lm.alpha) / _lokr_rank(lm))
        return lycoris_delta(lm.algo, t, float(lm.alpha), weight.shape)
    scale = float(lm.alpha) / lm.down.shape[0]
    delta = ((_flat(lm.up) @ _flat(lm.down)) * scale)
    if lm.algo != "dora":
        return delta if weight is None else delta.reshape(weight.shape)
    w = weight.float()
    merged = w + delta.reshape(w.shape)
    c = lm.extra["dora_scale"].reshape(-1).float() / (dora_column_norm(merged) + EPS)
    shape = dora_scale_shape(w.shape)
    return merged * c.reshape(shape) - w


def rank_of(lm) -> int:
    """The rank of a module (LoKr with both factors full: the rank it was configured with, kept in lm.rank)."""
    if lm.algo == "loha":
        return int(lm.extra["hada_w1_b"].shape[0])
    if lm.algo == "lokr":
        for k in ("lokr_w2_b", "lokr_w1_b"):
            if k in lm.extra:
                return int(lm.extra[k].shape[0])
        return _lokr_rank(lm)
    return int(lm.down.shape[0])


def kohya_entries(name: str, lm) -> dict[str, torch.Tensor]:
    """``<name>.<suffix>`` → tensor of one module in the kohya/LyCORIS file (LoRA: lora_down/lora_up/alpha)."""
    if lm.algo == "lora":
        return {name + ".lora_down.weight": lm.down, name + ".lora_up.weight": lm.up,
                name + ".alpha": torch.tensor(float(lm.alpha), dtype=torch.float32)}
    return {f"{name}.{suffix}": t for suffix, t in lycoris_tensors(lm).items()}


def refuse_in_diffusers(lora: dict) -> None:
    """diffusers (0.42) loads no LoHa/LoKr for SDXL/SD 1.5 and drops dora_scale with a warning: one line."""
    for modules in lora.values():
        for m in modules.values():
            if m.algo != "lora":
                raise ValueError(f"save.format = \"diffusers\": a {m.algo} LoRA has no diffusers form that loads as "
                                 "trained; use \"kohya\" (the LyCORIS layout)")
