"""Host cost of ``memory.modulation_on_cpu`` at FLUX.1-dev's full size: one ``HostModulations.prepare`` (the CPU's
``time_text_embed``, then all 76 modulation Linears on the worker thread, 3.2 B bf16 weights = 6.0 GiB read per
call) until the worker is done, and how soon the first block's outputs are ready, with random weights, batch 1 and
2, on this machine's CPU (the device argument is the CPU, so no copy to a GPU is timed).

    PYTHONPATH=. python3 benchmarks/modulation_host.py
"""

from __future__ import annotations

import time

import torch
from torch import nn

from lorakit.models.flux1.modulation import HostModulation, HostModulations


def build() -> HostModulations:
    from diffusers.models.embeddings import CombinedTimestepGuidanceTextProjEmbeddings

    torch.manual_seed(0)
    mods = []
    for i in range(19):
        for name in ("norm1.linear", "norm1_context.linear"):
            mods.append(HostModulation(nn.Linear(3072, 18432, dtype=torch.bfloat16), f"transformer_blocks.{i}.{name}"))
    for i in range(38):
        mods.append(HostModulation(nn.Linear(3072, 9216, dtype=torch.bfloat16), f"single_transformer_blocks.{i}.norm.linear"))
    embed = CombinedTimestepGuidanceTextProjEmbeddings(embedding_dim=3072, pooled_projection_dim=768)
    return HostModulations(mods, embed.to(torch.bfloat16))


def main() -> None:
    mods = build()
    print(f"{len(mods.modules)} modulation Linears, {mods.host_bytes() / 2**30:.2f} GiB on the host; "
          f"{torch.get_num_threads()} torch threads")
    for batch in (1, 2):
        args = (torch.rand(batch), torch.full((batch,), 1.0), torch.randn(batch, 768), torch.device("cpu"))
        mods.prepare(*args)
        mods.wait()
        times, firsts = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            mods.prepare(*args)  # temb here, the Linears on the worker thread, block by block
            mods._ready[0].wait()
            firsts.append(time.perf_counter() - t0)
            mods.wait()
            times.append(time.perf_counter() - t0)
        times.sort()
        firsts.sort()
        print(f"batch {batch}: {times[2] * 1e3:.0f} ms per step (median of 5, min {times[0] * 1e3:.0f}), "
              f"{mods.host_bytes() / times[2] / 1e9:.0f} GB/s of weights read; the first block's outputs after "
              f"{firsts[2] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
