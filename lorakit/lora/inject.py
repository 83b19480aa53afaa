"""Put LoRA layers into a model with peft, read them out, load them back, switch them on and off.

peft does the LoRA maths (``y = base(x) + scale · B(A(dropout(x)))`` with ``scale = alpha / r``); lorakit only
decides *which* modules get one, by their exact paths. peft treats a list of ``target_modules`` as suffixes
(``"a.to_q"`` would also match ``"b.a.to_q"``), so the targets are passed as one anchored regular expression
of escaped full paths, which peft matches with ``re.fullmatch``. Per-module ranks and alphas go through
``rank_pattern`` / ``alpha_pattern`` whose keys peft matches as ``(.*\\.)?(key)$``; a key starting with
``^`` can only match at the start, so ``^<escaped path>`` is exact too. Only modules whose rank/alpha differ
from the most common value get a pattern entry (each entry is a regex tried against every target).
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from typing import Iterator, Union

import torch
from torch import nn

from lorakit.errors import ModelLoadError
from lorakit.models.base import LoraModule


def _lora_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, peft LoRA layer) for every injected LoRA layer, in module order."""
    from peft.tuners.lora import LoraLayer

    for name, sub in module.named_modules():
        if isinstance(sub, LoraLayer):
            yield name, sub


def _tuner_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, layer) for every peft tuner layer: LoRA, and the LoHa/LoKr variants (issue 23)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, sub in module.named_modules():
        if isinstance(sub, BaseTunerLayer):
            yield name, sub


def _exact_regex(paths: list[str]) -> str:
    return "(?:" + "|".join(re.escape(p) for p in paths) + ")"


def _most_common(values: dict[str, float]) -> float:
    return Counter(values.values()).most_common(1)[0][0]


def _lean_forward(layer: nn.Module, peft_forward):
    """peft's Linear LoRA forward, ``base(x) + B(A(dropout(x))) · scale``, with the up-projection accumulated onto
    the base output by one ``addmm`` (the scale as its alpha; in place where the base output is a fresh 2-D tensor):
    no LoRA-sized output, no separate scale and add kernels, forward or backward. Eager only: under ``torch.compile`` peft's own forward runs (the compiler
    fuses it better), as in every case this does not cover (adapters off or merged, several adapters, a LoRA
    variant or bias, extra arguments). The base output may be overwritten: a Linear's backward never reads it."""

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        active = layer.active_adapters
        if (args or kwargs or torch.compiler.is_compiling() or layer.disable_adapters or layer.merged
                or len(active) != 1 or active[0] not in layer.lora_A or active[0] in layer.lora_variant):
            return peft_forward(x, *args, **kwargs)
        name = active[0]
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        if lora_b.bias is not None:  # peft's lora_bias: not covered here
            return peft_forward(x, *args, **kwargs)
        flat = x.reshape(-1, x.shape[-1])
        # the base Linear sees the input as the model gave it: on some CPUs a 3-D input runs another GEMM than its
        # 2-D view, and a LoRA whose up-projection is zero must give the base model's output bit for bit
        base = layer.base_layer(x)
        out = base if base.dim() == 2 else base.reshape(-1, base.shape[-1])
        h = lora_a(layer.lora_dropout[name](layer._cast_input_dtype(flat, lora_a.weight.dtype)))
        up = (h.to(out.dtype), lora_b.weight.to(out.dtype).t())
        if out is base and base._base is None:  # a fresh 2-D tensor (views, e.g. from fp8 compute's Function or of a
            out.addmm_(*up, alpha=layer.scaling[name])  # 3-D output, are not changed in place)
        else:
            out = torch.addmm(out, *up, alpha=layer.scaling[name])
        return out.view(*x.shape[:-1], out.shape[-1])

    return forward


def inject_lora(module: nn.Module, targets: dict[str, int], alpha: Union[float, dict[str, float]],
                dropout: float, *, adapter_name: str = "default", seed: int | None = None,
                dtype: torch.dtype = torch.float32, under_autocast: bool = False, algo: str = "lora",
                factor: int = -1) -> list[nn.Parameter]:
    """Inject LoRA into the Linear/Conv2d modules named in ``targets`` (exact path → rank); return the
    trainable LoRA parameters, with every other parameter of ``module`` frozen.

    ``alpha`` is one value or a per-path dict (missing paths are an error). The up matrix (peft's lora_B)
    starts at zero, so the model's output is unchanged until training moves it; the down matrix is
    Kaiming-uniform, drawn from ``seed`` when given without touching the global RNG stream.
    The LoRA weights are kept in ``dtype`` (fp32 by default) whatever the base model's dtype: peft would cast
    them to a bf16 base's dtype, where AdamW's small updates round away; mixed precision happens in autocast.

    ``under_autocast``: every call of ``module`` will run under autocast (a bf16/fp16 run). peft then need not cast
    each LoRA layer's input to the LoRA weights' dtype: it turns a bf16 activation into an fp32 copy that autocast
    turns straight back into a bf16 copy for the down-projection, which also saves that copy for backward. Without
    the casts the layer reads the activation as it is; outputs and gradients are bit-identical (the round trip
    bf16 → fp32 → bf16 is exact).

    ``algo`` (network.type, issue 23): "lora" (LoRA/LoCon), or a variant of :mod:`lorakit.lora.variants`: "loha"
    and "lokr" (peft's LoHa/LoKr layers; ``factor`` is LoKr's decompose_factor, -1 = near the square root), "dora"
    (a peft LoRA with lorakit's input-axis magnitude). The returned parameters are the variant's own.
    """
    from peft import LoraConfig

    if not targets:
        raise ValueError("inject_lora: no target modules")
    modules = dict(module.named_modules())
    for path, rank in targets.items():
        sub = modules.get(path)
        if sub is None:
            raise ValueError(f"inject_lora: module {path!r} not found in {type(module).__name__}")
        if not isinstance(sub, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"inject_lora: {path!r} is a {type(sub).__name__}; only Linear and Conv2d take LoRA")
        if int(rank) < 1:
            raise ValueError(f"inject_lora: rank of {path!r} must be >= 1, got {rank}")
    alphas = {p: float(alpha) for p in targets} if not isinstance(alpha, dict) else dict(alpha)
    missing = set(targets) - set(alphas)
    if missing:
        raise ValueError(f"inject_lora: no alpha for {sorted(missing)[:3]}")

    ranks = {p: int(r) for p, r in targets.items()}
    alphas = {p: float(alphas[p]) for p in targets}
    r0, a0 = int(_most_common(ranks)), _most_common(alphas)
    if algo in ("loha", "lokr"):
        return _inject_lycoris(module, targets, ranks, alphas, r0, a0, algo, factor, adapter_name, seed, dtype)
    if algo not in ("lora", "dora"):
        raise ValueError(f"inject_lora: unknown algo {algo!r}")
    config = LoraConfig(
        r=r0,
        lora_alpha=a0,
        target_modules=_exact_regex(list(targets)),
        rank_pattern={"^" + re.escape(p): r for p, r in ranks.items() if r != r0},
        alpha_pattern={"^" + re.escape(p): a for p, a in alphas.items() if a != a0},
        lora_dropout=dropout,
        init_lora_weights=True,
        bias="none",
    )
    _peft_inject(module, config, adapter_name, seed)

    params: list[nn.Parameter] = []
    found = set()
    for path, layer in _lora_layers(module):
        if adapter_name not in layer.lora_A:
            continue
        found.add(path)
        if layer.r[adapter_name] != ranks.get(path) or layer.lora_alpha[adapter_name] != alphas.get(path):
            raise RuntimeError(f"inject_lora: peft gave {path!r} r={layer.r[adapter_name]} "
                               f"alpha={layer.lora_alpha[adapter_name]}, expected {ranks.get(path)}/{alphas.get(path)}")
        if under_autocast:
            layer.cast_input_dtype_enabled = False  # read by peft's _cast_input_dtype
        if isinstance(layer.base_layer, nn.Linear) and "forward" not in vars(layer):
            layer.forward = _lean_forward(layer, layer.forward)
        for sub in (layer.lora_A[adapter_name], layer.lora_B[adapter_name]):
            sub.to(dtype)
            for p in sub.parameters():
                p.requires_grad_(True)
                params.append(p)
        if algo == "dora":
            from lorakit.lora.variants import add_dora

            params.append(add_dora(layer, adapter_name))
    if found != set(targets):
        raise RuntimeError(f"inject_lora: peft injected {len(found)} modules, expected {len(targets)}; "
                           f"e.g. unexpected {sorted(found - set(targets))[:3]}, missing {sorted(set(targets) - found)[:3]}")
    return params


def _peft_inject(module, config, adapter_name: str, seed) -> None:
    """Freeze ``module`` and let peft add the adapter layers ``config`` names; their initial weights drawn from a
    generator seeded with ``seed`` (the global RNG's state left as it was)."""
    from peft import inject_adapter_in_model

    for p in module.parameters():
        p.requires_grad_(False)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        inject_adapter_in_model(config, module, adapter_name=adapter_name)


def _inject_lycoris(module, targets, ranks, alphas, r0, a0, algo, factor, adapter_name, seed, dtype):
    """peft's LoHa/LoKr on exactly ``targets``; returns their trainable parameters (see :func:`inject_lora`)."""
    from lorakit.lora.variants import lycoris_params, peft_lycoris_config, variant_layers

    config = peft_lycoris_config(algo, r=r0, alpha=a0, target_modules=_exact_regex(list(targets)),
                                 rank_pattern={"^" + re.escape(p): r for p, r in ranks.items() if r != r0},
                                 alpha_pattern={"^" + re.escape(p): a for p, a in alphas.items() if a != a0},
                                 factor=factor)
    _peft_inject(module, config, adapter_name, seed)
    params: list[nn.Parameter] = []
    found = set()
    for path, kind, layer in variant_layers(module, adapter_name):
        found.add(path)
        if layer.r[adapter_name] != ranks.get(path) or layer.alpha[adapter_name] != alphas.get(path):
            raise RuntimeError(f"inject_lora: peft gave {path!r} r={layer.r[adapter_name]} "
                               f"alpha={layer.alpha[adapter_name]}, expected {ranks.get(path)}/{alphas.get(path)}")
        for p in lycoris_params(layer, kind, adapter_name).values():
            p.data = p.data.to(dtype)
            p.requires_grad_(True)
            params.append(p)
    if found != set(targets):
        raise RuntimeError(f"inject_lora: peft injected {len(found)} {algo} modules, expected {len(targets)}")
    return params


def extract_lora(module: nn.Module, adapter_name: str = "default") -> dict[str, LoraModule]:
    """Module path → LoraModule (fp32 CPU clones of down = lora_A, up = lora_B, and alpha; a LoHa/LoKr/DoRA
    module as :func:`lorakit.lora.variants.extract_variant` gives it)."""
    from lorakit.lora.variants import extract_variant, variant_layers

    out: dict[str, LoraModule] = {path: extract_variant(layer, kind, adapter_name)
                                  for path, kind, layer in variant_layers(module, adapter_name)}
    for path, layer in _lora_layers(module):
        if path in out:
            continue
        if adapter_name not in layer.lora_A:
            continue
        down = layer.lora_A[adapter_name].weight.detach().to("cpu", torch.float32).clone()
        up = layer.lora_B[adapter_name].weight.detach().to("cpu", torch.float32).clone()
        out[path] = LoraModule(down=down, up=up, alpha=float(layer.lora_alpha[adapter_name]))
    return out


def load_lora_into(module: nn.Module, loras: dict[str, LoraModule], adapter_name: str = "default", *,
                   strict: bool = True) -> None:
    """Copy ``loras`` into an already injected ``module`` (resume, or loading a trained file back).

    Shapes must match the injected ranks. With ``strict`` every injected module must be given and every
    given module must exist. A different alpha is applied (peft's scale is recomputed as alpha / r).
    """
    from lorakit.lora.variants import load_variant, variant_layers

    kinds = {p: (kind, layer) for p, kind, layer in variant_layers(module, adapter_name)}
    layers = {p: l for p, l in _lora_layers(module) if adapter_name in l.lora_A}
    layers.update({p: l for p, (_, l) in kinds.items()})
    unknown = sorted(set(loras) - set(layers))
    if unknown:
        raise ModelLoadError(f"LoRA module {unknown[0]!r} (and {len(unknown) - 1} more) is not in the model; "
                             "the file was trained for another model or another set of targets")
    if strict and set(layers) - set(loras):
        absent = sorted(set(layers) - set(loras))
        raise ModelLoadError(f"LoRA module {absent[0]!r} (and {len(absent) - 1} more) is missing from the "
                             "weights being loaded")
    with torch.no_grad():
        for path, lm in loras.items():
            layer = layers[path]
            kind = kinds.get(path, ("lora", None))[0]
            if kind != getattr(lm, "algo", "lora"):
                raise ModelLoadError(f"LoRA module {path!r}: the weights are {getattr(lm, 'algo', 'lora')}, the "
                                     f"model was given {kind} (network.type)")
            if kind in ("loha", "lokr"):
                load_variant(layer, kind, lm, path, adapter_name)
                continue
            a, b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            if tuple(lm.down.shape) != tuple(a.shape) or tuple(lm.up.shape) != tuple(b.shape):
                raise ModelLoadError(f"LoRA module {path!r}: down {tuple(lm.down.shape)} / up {tuple(lm.up.shape)} "
                                     f"do not fit the injected {tuple(a.shape)} / {tuple(b.shape)}")
            a.copy_(lm.down.to(a.device, a.dtype))
            b.copy_(lm.up.to(b.device, b.dtype))
            layer.lora_alpha[adapter_name] = float(lm.alpha)
            layer.set_scale(adapter_name, 1.0)
            if kind == "dora":
                load_variant(layer, kind, lm, path, adapter_name)


def set_lora_scale(module: nn.Module, scale: float, adapter_name: str = "default") -> None:
    """Multiply every LoRA's effect by ``scale`` (1 = as trained, 0 = off) via peft's ``set_scale``."""
    for _, layer in _tuner_layers(module):
        layer.set_scale(adapter_name, scale)


def enable_lora(module: nn.Module, enabled: bool) -> None:
    """Switch all LoRA layers on or off.

    peft's model-level helpers need a PeftModel; with ``inject_adapter_in_model`` the switch lives on each
    tuner layer (``enable_adapters``). Disabling also clears ``requires_grad`` of the LoRA weights and enabling
    sets it again, so call this outside the backward pass.
    """
    for _, layer in _tuner_layers(module):
        layer.enable_adapters(enabled)


@contextlib.contextmanager
def lora_disabled(module: nn.Module) -> Iterator[None]:
    """Run a block with the base model alone (e.g. the "before" sample), then switch the LoRA back on."""
    enable_lora(module, False)
    try:
        yield
    finally:
        enable_lora(module, True)
