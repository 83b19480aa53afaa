"""Activation estimates of the families without GPU rows (issue 29): the planning tables of SD3.5, Qwen-Image,
Z-Image and SD 1.5 (``lorakit/models/<family>/planning.py``) come from this accounting.

Each full-size denoiser is built on the meta device (shapes only: nothing allocated, nothing computed) and run once
on inputs of the training shapes: 1024² (SD 1.5: 512²), batch 1, the text lengths of ``benchmarks/bench.py``'s rows.
Forward hooks count, per repeated block (``lorakit.train.speed.repeated_blocks``), the elements that enter and leave
every ``nn.Linear`` and ``nn.Conv2d`` ("units"), and the elements of each block's tensor inputs (what block
checkpointing keeps). The bytes per unit are those of the measured families of the same kind (no checkpointing,
eager and compiled): FLUX.1-dev for the transformers (RESULTS.md rounds 1 / 5: 38.0 / 29.9 GiB per 1024² image),
SDXL for SD 1.5's U-Net (run 1: 7.5 / 6.2 GiB). With checkpointing the estimate is: the blocks' inputs (bf16) + one
block's activations recomputed in backward + what runs outside the blocks, calibrated the same way (FLUX.1-dev 2.3,
SDXL 0.9 GiB). ``python benchmarks/estimate_activations.py [family ...]`` prints the tables (CPU, ~20 s a family).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

GIB = 2**30


def _inputs(family: str, size: str) -> tuple[Any, Callable[[Any], Any]]:
    """(the full-size denoiser on the meta device in bf16, a call running it on training-shaped inputs)."""
    import torch

    from lorakit.models.base import init_kwargs

    bf = torch.bfloat16

    def e(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=bf)

    with torch.device("meta"):
        if family == "flux1":
            from diffusers import FluxTransformer2DModel

            from lorakit.models.flux1 import configs
            m = FluxTransformer2DModel(**init_kwargs(configs.transformer_config("dev")))
            run = lambda m: m(hidden_states=e(1, 4096, 64), timestep=e(1), guidance=e(1),  # noqa: E731
                              encoder_hidden_states=e(1, 512, 4096), pooled_projections=e(1, 768),
                              txt_ids=e(512, 3), img_ids=e(4096, 3))
        elif family == "flux2":
            from diffusers import Flux2Transformer2DModel

            from lorakit.models.flux2 import configs
            cf = configs.transformer_config(size)
            m = Flux2Transformer2DModel(**init_kwargs(cf))
            run = lambda m: m(hidden_states=e(1, 4096, 128), encoder_hidden_states=e(1, 512, cf["joint_attention_dim"]),  # noqa
                              timestep=e(1), img_ids=e(1, 4096, 4), txt_ids=e(1, 512, 4),
                              guidance=e(1) if cf.get("guidance_embeds") else None)
        elif family == "sdxl":
            from diffusers import UNet2DConditionModel

            from lorakit.models.sdxl import configs
            m = UNet2DConditionModel(**init_kwargs(configs.UNET))
            run = lambda m: m(e(1, 4, 128, 128), e(1), encoder_hidden_states=e(1, 77, 2048),  # noqa: E731
                              added_cond_kwargs={"text_embeds": e(1, 1280), "time_ids": e(1, 6)})
        elif family == "sd15":
            from diffusers import UNet2DConditionModel

            from lorakit.models.sd15 import configs
            m = UNet2DConditionModel(**init_kwargs(configs.UNET))
            run = lambda m: m(e(1, 4, 64, 64), e(1), encoder_hidden_states=e(1, 77, 768))  # noqa: E731
        elif family == "sd3":
            from diffusers import SD3Transformer2DModel

            from lorakit.models.sd3 import configs
            m = SD3Transformer2DModel(**init_kwargs(configs.transformer_config(size)))
            run = lambda m: m(hidden_states=e(1, 16, 128, 128), timestep=e(1),  # noqa: E731
                              encoder_hidden_states=e(1, 77 + 256, 4096), pooled_projections=e(1, 2048))
        elif family == "qwenimage":
            from diffusers import QwenImageTransformer2DModel

            from lorakit.models.qwenimage import configs
            m = QwenImageTransformer2DModel(**init_kwargs(configs.transformer_config()))
            run = lambda m: m(hidden_states=e(1, 4096, 64), timestep=e(1), encoder_hidden_states=e(1, 128, 3584),  # noqa
                              encoder_hidden_states_mask=None, img_shapes=[[(1, 64, 64)]])
        elif family == "zimage":
            from diffusers import ZImageTransformer2DModel

            from lorakit.models.zimage import configs
            m = ZImageTransformer2DModel(**init_kwargs(configs.transformer_config()))
            run = lambda m: m([e(16, 1, 128, 128)], e(1), [e(128, 2560)])  # noqa: E731
        else:
            raise ValueError(family)
    m._apply(lambda t: t.to(bf) if t.is_floating_point() else t)
    return m, run


def count(family: str, size: str = "") -> dict[str, Any]:
    """Units per block, units outside the blocks, and block-input elements of one forward (see the module doc)."""
    import torch
    from torch import nn

    from lorakit.models.registry import get_family
    from lorakit.train import speed

    model, run = _inputs(family, size)
    blocks = speed.repeated_blocks(model, extra=get_family(family).SPEC.compile_blocks)
    owner = {id(sub): i for i, b in enumerate(blocks) for sub in b.modules()}
    per_block = [0] * len(blocks)
    inputs = [0] * len(blocks)
    outside = [0]

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        n = args[0].numel() + out.numel()
        i = owner.get(id(mod))
        if i is None:
            outside[0] += n
        else:
            per_block[i] += n

    def block_in(i: int) -> Callable:
        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            seen = list(args) + list(kwargs.values())
            inputs[i] += sum(t.numel() for t in seen if isinstance(t, torch.Tensor) and t.is_floating_point())
        return pre

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    handles += [b.register_forward_pre_hook(block_in(i), with_kwargs=True) for i, b in enumerate(blocks)]
    from torch.utils.flop_counter import FlopCounterMode

    flops = FlopCounterMode(display=False)
    with torch.no_grad(), torch.device("meta"), flops:
        run(model)
    for h in handles:
        h.remove()
    return {"blocks": per_block, "outside": outside[0], "inputs": inputs, "flops": flops.get_total_flops()}


# calibration: the measured family without checkpointing, (GiB per 1024² image eager, compiled); and every measured
# point with checkpointing, (family, size, GiB): the largest measured / counted ratio is used (errs towards fitting)
CALIBRATION = {"transformer": (("flux1", ""), 38.0, 29.9), "unet": (("sdxl", ""), 7.5, 6.2)}
CHECKPOINTED = {"transformer": (("flux1", "", 2.3), ("flux2", "klein-4b", 1.99), ("flux2", "klein-9b", 2.83)),
                "unet": (("sdxl", "", 0.9),)}
# pixels of the counted forward in 1024² images
PIXELS = {"sd15": 0.25}
_COUNTS: dict = {}


def counted(family: str, size: str = "") -> dict[str, Any]:
    if (family, size) not in _COUNTS:
        _COUNTS[family, size] = count(family, size)
    return _COUNTS[family, size]


def rates(family: str, size: str = "") -> dict[str, Any]:
    """GiB of activations per 1024² image ({"eager": (gc, nogc), "compiled": (gc, nogc)}), the forward's FLOPs per
    1024² image relative to the reference family's ("step_scale": how its measured s/step rows are scaled), and the
    counts behind them."""
    kind = "unet" if family in ("sdxl", "sd15") else "transformer"
    ref, eager, compiled = CALIBRATION[kind]
    r = counted(*ref)
    c = counted(family, size)

    def total(x: dict) -> int:
        return sum(x["blocks"]) + x["outside"]

    b_eager, b_comp = eager * GIB / total(r), compiled * GIB / total(r)  # bytes per unit without checkpointing

    def ckpt(x: dict) -> float:  # block inputs in bf16 + one block and the outside at the eager rate
        return 2 * sum(x["inputs"]) + b_eager * (max(x["blocks"]) + x["outside"])

    k = max(gib * GIB / ckpt(counted(f, s)) for f, s, gib in CHECKPOINTED[kind])
    px = PIXELS.get(family, 1.0)
    g = k * ckpt(c) / GIB / px
    return {"eager": (round(g, 2), round(b_eager * total(c) / GIB / px, 2)),
            "compiled": (round(g, 2), round(b_comp * total(c) / GIB / px, 2)),
            "step_scale": round(c["flops"] / px / r["flops"], 3), "units": total(c), "blocks": len(c["blocks"]),
            "ckpt_scale": round(k, 3)}


SIZES = {"flux2": ("klein-4b", "klein-9b"), "sd3": ("medium", "large"), "qwenimage": ("",), "zimage": ("",), "sd15": ("",), "flux1": ("",),
         "sdxl": ("",)}

if __name__ == "__main__":
    for fam in sys.argv[1:] or ["sd3", "qwenimage", "zimage", "sd15"]:
        for sz in SIZES[fam]:
            print(fam, sz or "-", rates(fam, sz), flush=True)
