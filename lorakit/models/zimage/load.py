"""Loading Z-Image offline: the original single file, ComfyUI's split files, or a diffusers folder.

* ``model.checkpoint``: the transformer: Tongyi-MAI's / ComfyUI's ``diffusion_models/z_image_turbo_bf16.safetensors``
  (original layout, bf16 or fp8, with or without ``model.diffusion_model.``), a diffusers-layout transformer file, or
  a diffusers folder (``transformer/``, ``text_encoder/``, ``vae/``, ``tokenizer/``, ``model_index.json``).
* ``model.text_encoder``: Qwen3-4B: ComfyUI's ``text_encoders/qwen_3_4b.safetensors`` (bf16 or fp8), the first of
  split files (``model-00001-of-00003.safetensors``: all parts are read) or a folder of them.
* ``model.ae``: FLUX.1's ``ae.safetensors`` (ComfyUI's ``vae/ae.safetensors``) or a diffusers-layout VAE file.
* ``model.tokenizer_dir``: Qwen3's tokenizer folder (with a diffusers folder its ``tokenizer/``); without either,
  lorakit's shipped Qwen3 tokenizer.
* ``model.variant``: ``distilled`` (Z-Image Turbo) or ``base``. Both releases have identical tensors, so ``auto``
  reads the name: a file or folder named ``*turbo*`` is Turbo (all of Tongyi-MAI's and ComfyUI's Turbo files are),
  anything else the base model.

Models are built on the meta device and the tensors assigned; only the transformer is read at once, the text
encoder, the AE and the tokenizer on first use (a run whose caches are complete never reads them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.common import encoder_width, folder_weights
from lorakit.models.common import LazyPart, LazyParts, component_files, folder_parts, local_checkpoint, shards, \
    qwen_tokenizer_for, refuse_checkpoint_as, wrong_file

from lorakit.models.weights import assign_weights_rotary

from . import configs
from .convert import Shape, detect, layout, original_to_diffusers, strip_prefix, transformer_config, what_is


def read_file(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    from lorakit.models.weights import load_safetensors  # the one weights reader (pickle only when allowed)
    return load_safetensors(path, allow_pickle)


def _upcast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from lorakit.models.weights import upcast  # fp8 (+ ComfyUI scale_weight) -> dtype; shared helper
    return upcast(sd, dtype)


def build_transformer(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.checkpoint",
                      base: Optional[dict[str, Any]] = None) -> tuple[nn.Module, Shape]:
    """ZImageTransformer2DModel from an original- or diffusers-layout state dict; widths and depths from the
    weights."""
    from diffusers import ZImageTransformer2DModel
    shape = detect(sd, where)
    sd = _upcast(strip_prefix(sd), dtype)
    if layout(sd) == "original":
        sd = original_to_diffusers(sd)
    cfg = transformer_config(shape, base)
    with torch.device("meta"):
        model = ZImageTransformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    return assign_weights_rotary(model, sd, where, dtype), shape


def build_text_encoder(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.text_encoder",
                       base: Optional[dict[str, Any]] = None) -> nn.Module:
    """Qwen3Model from HF-layout weights (``model.`` prefix and ``lm_head`` of a causal-LM file dropped)."""
    from transformers import Qwen3Config, Qwen3Model
    given = sd
    if any(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    if "embed_tokens.weight" not in sd or "layers.0.self_attn.q_norm.weight" not in sd:
        raise wrong_file("model.text_encoder", where, given, "the Qwen3 text encoder Z-Image uses (Qwen3-4B, e.g. "
                         "ComfyUI's text_encoders/qwen_3_4b.safetensors)")
    emb = sd["embed_tokens.weight"]
    head_dim = int(sd["layers.0.self_attn.q_norm.weight"].shape[0])
    cfg = dict(base or configs.qwen3_config())
    cfg.update(vocab_size=int(emb.shape[0]), hidden_size=int(emb.shape[1]), head_dim=head_dim,
               num_attention_heads=int(sd["layers.0.self_attn.q_proj.weight"].shape[0]) // head_dim,
               num_key_value_heads=int(sd["layers.0.self_attn.k_proj.weight"].shape[0]) // head_dim,
               intermediate_size=int(sd["layers.0.mlp.gate_proj.weight"].shape[0]),
               num_hidden_layers=max(int(m.group(1)) for n in sd if (m := re.match(r"layers\.(\d+)\.", n))) + 1)
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type") and not k.startswith("_")}
    for tok_key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(cfg.get(tok_key), int) and cfg[tok_key] >= cfg["vocab_size"]:   # a small test vocabulary
            cfg[tok_key] = None
    with torch.device("meta"):
        model = Qwen3Model(Qwen3Config(**cfg))
    return assign_weights_rotary(model, _upcast(sd, dtype), where, dtype)


def build_ae(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.ae",
             base: Optional[dict[str, Any]] = None) -> nn.Module:
    """FLUX.1's 16-channel AutoencoderKL (Z-Image's AE), through the shared LDM AE loader (models/ldm_vae.py)."""
    from lorakit.models.ldm_vae import ae_config, build_ae as ldm_ae
    if not any(k.endswith("encoder.conv_in.weight") for k in sd):
        raise wrong_file("model.ae", where, sd, "the FLUX.1 / Z-Image autoencoder (ae.safetensors)")
    model = ldm_ae(sd, dtype, base or ae_config(), where)
    if int(model.config.latent_channels) != 16:
        raise ModelLoadError(f"model.ae: {where}: an autoencoder with {model.config.latent_channels} latent channels; "
                             "Z-Image uses FLUX.1's 16-channel ae.safetensors")
    return model


# ----------------------------------------------------------------------------------------------- components

@dataclass
class ZImageComponents(LazyParts):
    """The loaded Z-Image parts. ``text_encoder``, ``ae`` and ``tokenizer`` are read on first use."""

    transformer: nn.Module
    shape: Shape
    variant: str                                      # "turbo" | "base"
    how: str                                          # how the variant was decided (for the log)
    files: dict[str, Path] = field(default_factory=dict)
    _loaders: dict[str, Callable[[], Any]] = field(default_factory=dict)
    _parts: dict[str, Any] = field(default_factory=dict)

    text_encoder = LazyPart()
    ae = LazyPart()
    tokenizer = LazyPart("model.tokenizer_dir")


def resolve_variant(wanted: str, name: str) -> tuple[str, str]:
    """("turbo" | "base", how): ``model.variant`` (distilled = Turbo, base), else the file / folder name."""
    if wanted in ("base", "distilled"):
        return ("turbo" if wanted == "distilled" else "base"), "model.variant"
    if wanted not in ("auto", "", None):
        raise ConfigError(f"model.variant: {wanted!r} is not a Z-Image choice; use auto, distilled (Turbo) or base")
    if "turbo" in name.lower():
        return "turbo", f"the name {name!r} (Turbo and base weights look alike; set model.variant to be sure)"
    return "base", (f"the name {name!r} has no 'turbo' (Turbo and base weights look alike; set model.variant = "
                    "'distilled' if this is Z-Image Turbo)")




def _tokenizer_loader(model_cfg: Any, folder: Optional[Path], log: Callable[[str], None]) -> Callable[[], Any]:
    """Qwen3's tokenizer: model.tokenizer_dir, else the folder's tokenizer/, else lorakit's shipped one."""
    return lambda: qwen_tokenizer_for(model_cfg, folder, "qwen3", "Z-Image", log)


def _read_all(paths: list[Path], allow: bool) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for p in paths:
        sd.update(read_file(p, allow))
    return sd


def load_components(model_cfg: Any, dtype: torch.dtype = torch.bfloat16,
                    log: Callable[[str], None] = print) -> ZImageComponents:
    """Read the transformer now (any source), the rest on first use; the variant decided."""
    src = local_checkpoint(model_cfg, "z_image_turbo_bf16.safetensors", "Z-Image")
    allow = bool(getattr(model_cfg, "allow_pickle", False))
    cdir = getattr(model_cfg, "config_dir", None)
    te_src = ae_src = tok_folder = None
    if src.is_dir():
        if not (src / "transformer").is_dir():
            raise ConfigError(f"model.checkpoint: folder {src} is not a diffusers Z-Image model (no transformer/)")
        index = src / "model_index.json"
        if index.is_file():
            cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
            if cls not in (None, "ZImagePipeline"):
                raise ConfigError(f"model.checkpoint: {src} is a {cls} folder, not Z-Image (ZImagePipeline)")
        tsd = _read_all(folder_weights(src / "transformer", "model.checkpoint"), allow)
        if not tsd:
            raise ConfigError(f"model.checkpoint: {src / 'transformer'} holds no .safetensors weights")
        te_src, ae_src, tok_folder = folder_parts(src, "text_encoder", "vae", "tokenizer")
        cdir = cdir or str(src)
    else:
        tsd = read_file(src, allow)
    te_src, ae_src = component_files(
        model_cfg, "Z-Image", text_encoder=(te_src, "Qwen3-4B, e.g. ComfyUI's text_encoders/qwen_3_4b.safetensors"),
        ae=(ae_src, "FLUX.1's autoencoder, e.g. ComfyUI's vae/ae.safetensors"))
    transformer, shape = build_transformer(tsd, dtype, "model.checkpoint", configs.read_config(cdir, "transformer"))
    del tsd
    variant, how = resolve_variant(getattr(model_cfg, "variant", "auto") or "auto", src.name)
    te_parts = shards(te_src, "model.text_encoder")
    ae_parts = shards(ae_src, "model.ae")
    ae_dtype = torch.float32 if dtype == torch.float16 else dtype
    width, _ = encoder_width(te_parts)  # now, from the header: not after the encoder was read at the first caption
    if width is not None and width != shape.cap_feat_dim:
        raise ModelLoadError(f"model.text_encoder: {te_src} has width {width}; this Z-Image transformer takes caption "
                             f"features of width {shape.cap_feat_dim} (Qwen3-4B: 2560)")

    def te() -> nn.Module:
        model = build_text_encoder(_read_all(te_parts, allow), dtype, str(te_src),
                                   configs.read_config(cdir, "text_encoder"))
        if model.config.hidden_size != shape.cap_feat_dim:
            raise ModelLoadError(f"model.text_encoder: {te_src} has width {model.config.hidden_size}; this Z-Image "
                                 f"transformer takes caption features of width {shape.cap_feat_dim} (Qwen3-4B: 2560)")
        return model

    def ae() -> nn.Module:
        # an SD3.5 checkpoint bundles a 16-channel VAE of the same shapes, but not FLUX.1's: refused by what the file is
        refuse_checkpoint_as("model.ae", ae_src, ("zimage",), "FLUX.1's autoencoder (ae.safetensors) Z-Image uses")
        return build_ae(_read_all(ae_parts, allow), ae_dtype, str(ae_src), configs.read_config(cdir, "vae"))

    loaders = {"text_encoder": te, "ae": ae,
               "tokenizer": _tokenizer_loader(model_cfg, tok_folder, log)}
    comps = ZImageComponents(transformer, shape, variant, how, {"checkpoint": src, "text_encoder": te_src,
                                                                 "ae": ae_src}, loaders)
    log(f"Z-Image {'Turbo' if variant == 'turbo' else 'base'} ({shape.n_refiner}+{shape.n_refiner} refiner and "
        f"{shape.n_layers} main blocks, width {shape.dim}); variant from {how}")
    return comps
