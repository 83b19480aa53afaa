"""FLOPs of one FLUX.2 training step, counted by torch's FlopCounterMode on the meta device (CPU, seconds).

    python benchmarks/flux2_flops.py klein-4b [--text 512] [--size 1024]

The transformer is diffusers' ``Flux2Transformer2DModel`` at lorakit's full-size config for that size; its weights are
frozen and the gradient flows to the input only, as in LoRA training (LoRA's own matmuls at rank 16 add about 0.5 %,
not counted).
Prints the forward, forward + backward (no checkpointing) and + a recomputed forward (every block checkpointed), in TFLOP.
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode


def count(size: str, text_tokens: int = 512, resolution: int = 1024) -> tuple[float, float]:
    """(forward FLOPs, forward + backward FLOPs) of one step at batch 1."""
    from diffusers import Flux2Transformer2DModel

    from lorakit.models.flux2 import configs

    cfg = {k: v for k, v in configs.transformer_config(size).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**cfg).to(torch.bfloat16).requires_grad_(False)
        tokens = (resolution // 16) ** 2  # 8x VAE, 2x2 patches
        x = torch.randn(1, tokens, cfg["in_channels"], dtype=torch.bfloat16, requires_grad=True)
        kw = {"hidden_states": x, "timestep": torch.ones(1, dtype=torch.bfloat16),
              "encoder_hidden_states": torch.randn(1, text_tokens, cfg["joint_attention_dim"], dtype=torch.bfloat16),
              "img_ids": torch.zeros(1, tokens, 4), "txt_ids": torch.zeros(1, text_tokens, 4), "return_dict": False}
        if cfg.get("guidance_embeds"):
            kw["guidance"] = torch.ones(1, dtype=torch.bfloat16)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(**kw)[0]
        forward = counter.get_total_flops()
        out.float().sum().backward()
    return float(forward), float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("size", choices=("klein-4b", "klein-9b", "dev"))
    ap.add_argument("--text", type=int, default=512, help="text tokens (Klein and dev pad to 512)")
    ap.add_argument("--size", dest="resolution", type=int, default=1024, help="square image side in pixels")
    a = ap.parse_args()
    fwd, both = count(a.size, a.text, a.resolution)
    print(f"{a.size} {a.resolution}² text {a.text}: forward {fwd / 1e12:.1f} TFLOP, forward + backward "
          f"{both / 1e12:.1f}, + recomputed forward {(both + fwd) / 1e12:.1f}")


if __name__ == "__main__":
    main()
