"""What a file in the Stable Diffusion (SGM / LDM) single-file layout is, from its header's names and shapes.

SD1.x, SD2.x, SDXL base, the SDXL refiner and their inpainting / instruct variants share this layout; they differ in
the U-Net's first convolution (320 wide, 4 input channels for text-to-image; 9 for inpainting, 8 for instruct-pix2pix;
384 wide for the refiner), the cross-attention context width (768 SD1, 1024 SD2, 2048 SDXL, 1280 refiner) and the
SDXL size/time embedding (``label_emb``). Only SDXL base 1.0's layout is trained by this family; a file of the same
layout and another size (a toy or pruned model) is ``standard=False`` and needs ``model.config_dir``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from lorakit.models.base import FileKind

PREFIXES = ("model.diffusion_model.", "")     # a full checkpoint, or a U-Net saved on its own (SGM names)
CONV_IN = "input_blocks.0.0.weight"
ADM = "label_emb.0.0.weight"
EXTRA_INPUTS = {9: "inpainting", 8: "instruct-pix2pix (edit)", 5: "depth-conditioned"}


def identify(header: Mapping[str, Any]) -> Optional[FileKind]:
    """A FileKind for an SGM-layout U-Net checkpoint (SD1/SD2/SDXL and variants), else None."""
    prefix = next((p for p in PREFIXES if p + CONV_IN in header), None)
    if prefix is None:
        if "conv_in.weight" in header and "add_embedding.linear_1.weight" in header:
            return FileKind("an SDXL U-Net in diffusers layout (lorakit loads SDXL from a full single file or a "
                            "diffusers folder)", role="component")
        return None
    width, in_ch = (int(d) for d in header[prefix + CONV_IN]["shape"][:2])
    ctx = next((int(v["shape"][1]) for k, v in header.items() if k.startswith(prefix) and k.endswith("attn2.to_k.weight")),
               None)
    adm = prefix + ADM in header
    variant = f" {EXTRA_INPUTS.get(in_ch, f'{in_ch}-input-channel')}" if in_ch != 4 else ""
    unet_only = "" if prefix else " (U-Net only)"
    if not adm:
        name = {768: "SD1.x (e.g. SD1.5)", 1024: "SD2.x"}.get(ctx)
        what = f"an {name}{variant} checkpoint" if name else f"a Stable Diffusion 1/2-type{variant} checkpoint"
        sd15 = in_ch == 4 and ctx != 1024 and not unet_only  # the sd15 family trains these (SD 2.x, inpainting: not)
        return FileKind(f"{what}{unet_only} (U-Net context width {ctx}; SDXL's is 2048)",
                        family="sd15" if sd15 else None, standard=ctx == 768)
    if width == 384 and ctx == 1280:
        return FileKind(f"an SDXL refiner{variant} checkpoint{unet_only} (SDXL base 1.0 is what this family trains)")
    standard = width == 320 and ctx == 2048
    if in_ch != 4:
        return FileKind(f"an SDXL{variant} checkpoint{unet_only} ({in_ch} U-Net input channels; text-to-image SDXL has "
                        "4)")
    if not standard:
        return FileKind(f"an SDXL-layout checkpoint of another size{unet_only} (U-Net width {width}, context width {ctx}; "
                        "SDXL base 1.0 has 320 and 2048)", family="sdxl", standard=False)
    return FileKind(f"an SDXL base checkpoint{unet_only}", family="sdxl")
