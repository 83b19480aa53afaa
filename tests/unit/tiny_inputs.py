"""Inputs for a tiny FLUX transformer's forward, shared by the tests that run one (fp8, block swap)."""

from __future__ import annotations

import torch


def flux_forward_kwargs(config, images: int, texts: int, seed: int = 3) -> dict:
    """Keyword arguments for ``FluxTransformer2DModel.forward``: batch 2, ``images`` image and ``texts`` text tokens,
    random latents/embeddings from a seeded generator, guidance 3.5, tuple output."""
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(2, images, config.in_channels, generator=g),
            "encoder_hidden_states": torch.randn(2, texts, config.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(2, config.pooled_projection_dim, generator=g),
            "timestep": torch.tensor([0.3, 0.8]), "img_ids": torch.zeros(images, 3), "txt_ids": torch.zeros(texts, 3),
            "guidance": torch.tensor([3.5, 3.5]), "return_dict": False}
