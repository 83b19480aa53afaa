"""What a file in a FLUX.1 layout is (BFL names, optionally under ``model.diffusion_model.``, or diffusers names),
from its header's names and shapes.

FLUX.1 dev and schnell take 64 input channels (16 latent channels × a 2×2 patch) and differ by the guidance
embedder; Fill takes 384 (latents, masked image, mask) and Canny / Depth 128: those variants are not trained here. A
FLUX.1 transformer has its modulation inside each double block (``img_mod``); FLUX.2's is shared outside the blocks,
so FLUX.2 files are not claimed here.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from lorakit.models.base import FileKind

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
BFL_MARK = "double_blocks.0.img_mod.lin.weight"
DIFFUSERS_MARK = "transformer_blocks.0.norm1.linear.weight"
VARIANTS = {384: "FLUX.1 Fill (inpainting / outpainting)", 128: "FLUX.1 Canny / Depth (control)"}
FULL_WIDTH = 3072


def identify(header: Mapping[str, Any]) -> Optional[FileKind]:
    """A FileKind for a FLUX.1 transformer (or a Chroma one, which derives from it), else None."""
    for prefix in PREFIXES:
        if prefix + BFL_MARK in header:
            img_in, guidance = prefix + "img_in.weight", prefix + "guidance_in.in_layer.weight"
            break
        if prefix + DIFFUSERS_MARK in header and prefix + "x_embedder.weight" in header:
            img_in, guidance = prefix + "x_embedder.weight", prefix + "time_text_embed.guidance_embedder.linear_1.weight"
            break
        if prefix + "distilled_guidance_layer.in_proj.weight" in header:
            return FileKind("a Chroma transformer (FLUX.1-derived, without FLUX.1's modulation layers)")
    else:
        return None
    if img_in not in header:
        return FileKind("a FLUX.1 transformer without its input layer (truncated or partial file?)")
    width, in_ch = (int(d) for d in header[img_in]["shape"][:2])
    if in_ch in VARIANTS:
        return FileKind(f"a {VARIANTS[in_ch]} transformer ({in_ch} input channels; FLUX.1 dev / schnell take 64)")
    if in_ch != 64:
        return FileKind(f"a FLUX.1-layout transformer with {in_ch} input channels (FLUX.1 dev / schnell take 64)")
    variant = "dev" if guidance in header else "schnell"
    if width != FULL_WIDTH:
        return FileKind(f"a FLUX.1-{variant}-layout transformer of another size (width {width}; FLUX.1 has "
                        f"{FULL_WIDTH})", family="flux1", standard=False)
    return FileKind(f"a FLUX.1-{variant} transformer", family="flux1")
