"""SD 1.x single files: the original LDM layout, what a file is (variant detection), and writing one.

The layout of ``v1-5-pruned-emaonly.safetensors``: UNet ``model.diffusion_model.*``, VAE ``first_stage_model.*``,
CLIP-L ``cond_stage_model.transformer.text_model.*``. LDM and SGM (SDXL) name UNet and VAE tensors the same way, so
the diffusers → LDM writers and the LDM → diffusers readers (diffusers' own ``single_file_utils`` converters, what
``from_single_file`` runs) are the SDXL package's, driven by the SD 1.5 config.

:func:`detect` reads only a file's header (names, shapes, metadata) and says what it is: an SD 1.x ε or v model, or
one line naming what else it is (SDXL, SD 2.x, SD3, FLUX, an inpainting model, a bare VAE or LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from lorakit.errors import ModelLoadError
from lorakit.fsutil import atomic_path
from lorakit.models.unet_parts import UNET_PREFIX, VAE_PREFIX, te1_to_sgm, unet_to_sgm, vae_to_sgm

TE_PREFIX = "cond_stage_model.transformer."
V_PRED_MARKER = "v_pred"          # the empty tensor v-prediction SD 1.x/SDXL files carry (ComfyUI reads it)
_IN_CONV = UNET_PREFIX + "input_blocks.0.0.weight"
_CROSS_K = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


@dataclass(frozen=True)
class Variant:
    """What an SD 1.x file holds: its prediction type and why lorakit thinks so."""

    prediction: str          # "epsilon" | "v_prediction"
    reason: str


def _has(keys: list[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def detect(header: Mapping[str, Any], metadata: Mapping[str, str], path: Path) -> Variant:
    """The SD 1.x variant of a single file from its header, or ModelLoadError naming what the file is instead.

    v-prediction: the ``v_pred`` marker tensor, or ``modelspec.prediction_type = v`` in the metadata (sd-scripts and
    lorakit write it); otherwise ε, as every SD 1.x release and ComfyUI's SD15 model type assume.
    """
    keys = [k for k in header if k != "__metadata__"]

    def refuse(what: str, hint: str) -> ModelLoadError:
        return ModelLoadError(f"model.checkpoint: {path} is {what}, not an SD 1.x checkpoint; {hint}")

    if _has(keys, "conditioner.embedders.1.model.") or _has(keys, UNET_PREFIX + "label_emb."):
        return _raise(refuse("an SDXL checkpoint", 'set model.family = "sdxl"'))
    if any(".double_blocks." in f".{k}" for k in keys):
        flux2 = any("double_stream_modulation" in k for k in keys)
        return _raise(refuse("a FLUX.2 transformer" if flux2 else "a FLUX.1 transformer",
                             f'set model.family = "{"flux2" if flux2 else "flux1"}"'))
    if any(".joint_blocks." in f".{k}" for k in keys):
        return _raise(refuse("a Stable Diffusion 3 (MMDiT) checkpoint", 'set model.family = "sd3"'))
    if not _has(keys, UNET_PREFIX):
        if _has(keys, "lora_unet_") or any(".lora_" in k or "lora_A" in k for k in keys):
            return _raise(refuse("a LoRA file", "model.checkpoint takes the base model; a LoRA to start from goes in network.weights"))
        if _has(keys, "encoder.down.") or _has(keys, "decoder.up.") or _has(keys, VAE_PREFIX) and len(keys) < 300:
            return _raise(refuse("a bare VAE", "give it as model.vae and a full SD 1.5 file as model.checkpoint"))
        from lorakit.models.registry import identify_header  # what it is instead (a Z-Image transformer, an encoder)
        kind = identify_header(dict(header))
        if kind.family is not None:
            return _raise(refuse(kind.what, f'set model.family = "{kind.family}"'))
        what = f"this is {kind.what}, with " if kind.role == "component" else ""
        return _raise(ModelLoadError(f"model.checkpoint: {path}: {what}no UNet weights (model.diffusion_model.*); give "
                                     "a full SD 1.5 .safetensors file (UNet, VAE and CLIP-L) or a diffusers folder"))
    in_conv = header.get(_IN_CONV, {}).get("shape") or []
    if len(in_conv) == 4 and in_conv[1] == 9:
        return _raise(refuse("an inpainting model (9 input channels)", "train LoRAs on the 4-channel base model"))
    cross = header.get(_CROSS_K, {}).get("shape") or []
    if _has(keys, "cond_stage_model.model.") or (len(cross) == 2 and cross[1] == 1024):
        return _raise(refuse("a Stable Diffusion 2.x checkpoint (OpenCLIP-H text encoder, 1024-wide context)",
                             "lorakit's sd15 family trains SD 1.x models (CLIP-L, 768)"))
    missing = [name for name, prefix in (("VAE", VAE_PREFIX), ("CLIP-L text encoder", TE_PREFIX))
               if not _has(keys, prefix)]
    if missing:
        return _raise(ModelLoadError(f"{path}: SD 1.x UNet without {' or '.join(missing)} weights; give a full "
                                     f"SD 1.5 .safetensors file or a diffusers folder"))
    if V_PRED_MARKER in header:
        return Variant("v_prediction", f"the file's {V_PRED_MARKER!r} marker tensor")
    if str(metadata.get("modelspec.prediction_type", "")).lower() in ("v", "v_prediction"):
        return Variant("v_prediction", "the file's modelspec.prediction_type metadata")
    return Variant("epsilon", "an SD 1.x file without a v-prediction marker")


def _raise(exc: ModelLoadError) -> Variant:
    raise exc


def detect_file(path: Path) -> Variant:
    """:func:`detect` on a .safetensors file (its header only; the one header reader)."""
    from lorakit.safetensors_header import read_safetensors_header

    header, metadata = read_safetensors_header(path)
    return detect(header, metadata or {}, path)


# ---- writing a single-file checkpoint ----

def ldm_state_dict(*, unet: Any, vae: Any, text_encoder: Any, dtype: Optional[torch.dtype] = torch.float16,
                   v_prediction: bool = False) -> dict[str, torch.Tensor]:
    """The three diffusers/transformers modules → one LDM state dict (floating tensors cast to ``dtype``)."""
    sd: dict[str, torch.Tensor] = {}
    sd.update(unet_to_sgm(unet.state_dict(), unet.config))
    sd.update(vae_to_sgm(vae.state_dict(), vae.config))
    sd.update(te1_to_sgm({k: v for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")},
                         prefix=TE_PREFIX))
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    if v_prediction:
        out[V_PRED_MARKER] = torch.zeros(0)
    return out


def save_ldm_checkpoint(path: Path | str, *, unet: Any, vae: Any, text_encoder: Any,
                        dtype: Optional[torch.dtype] = torch.float16, v_prediction: bool = False,
                        metadata: Optional[dict[str, str]] = None) -> Path:
    """Write an SD 1.x single file in the original layout, atomically; never overwrites an existing file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another name or remove it first")
    sd = ldm_state_dict(unet=unet, vae=vae, text_encoder=text_encoder, dtype=dtype, v_prediction=v_prediction)
    with atomic_path(path, overwrite=False) as tmp:
        save_file(sd, str(tmp), metadata=dict(metadata or {}))
    return path
