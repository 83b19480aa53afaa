"""Loading Qwen-Image offline: ComfyUI's split files or a diffusers folder.

* ``model.checkpoint``: the transformer: ComfyUI's ``diffusion_models/qwen_image_bf16.safetensors`` or
  ``qwen_image_fp8_e4m3fn.safetensors`` (diffusers' names, with or without ``model.diffusion_model.``), the first of
  split files (``...-00001-of-00009.safetensors``: all parts are read), or a diffusers folder (``transformer/``,
  ``text_encoder/``, ``vae/``, ``tokenizer/``, ``model_index.json``).
* ``model.text_encoder``: Qwen2.5-VL-7B: ComfyUI's ``text_encoders/qwen_2.5_vl_7b.safetensors`` or
  ``qwen_2.5_vl_7b_fp8_scaled.safetensors``, split files or a folder of them. Only the language model is read.
* ``model.vae``: ComfyUI's ``vae/qwen_image_vae.safetensors`` (Wan 2.1's layout) or a diffusers-layout VAE file.
* ``model.tokenizer_dir``: Qwen2.5-VL's tokenizer folder (with a diffusers folder its ``tokenizer/``); without
  either, lorakit's shipped Qwen2.5-VL tokenizer.

Qwen-Image-Edit (2508 / 2509 / 2511) has the same transformer tensors; it is refused by its folder
(``model_index.json``: ``QwenImageEdit*Pipeline``), its transformer config (``zero_cond_t``) or its file name
(``*edit*``), since lorakit trains Qwen-Image's text-to-image objective. Models are built on the meta device and the
tensors assigned; only the transformer is read at once, the rest on first use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.common import folder_weights
from lorakit.models.common import LazyPart, LazyParts, component_files, folder_parts, local_checkpoint, shards, \
    qwen_tokenizer_for, wrong_file

from . import configs
from .convert import Shape, detect, text_weights, transformer_config, vae_to_diffusers, what_is


def read_file(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    from lorakit.models.weights import load_safetensors  # the one weights reader (pickle only when allowed)
    return load_safetensors(path, allow_pickle)


def _read_all(paths: list[Path], allow: bool) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for p in paths:
        sd.update(read_file(p, allow))
    return sd


def _upcast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from lorakit.models.weights import upcast  # fp8 (+ ComfyUI scale_weight) -> dtype; shared helper
    return upcast(sd, dtype)


def _assign(model: nn.Module, sd: dict[str, torch.Tensor], where: str, dtype: torch.dtype) -> nn.Module:
    from lorakit.models.weights import assign_weights_rotary as assign  # meta-model loading: the one copy
    return assign(model, sd, where, dtype)


def build_transformer(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.checkpoint",
                      base: Optional[dict[str, Any]] = None) -> tuple[nn.Module, Shape]:
    """QwenImageTransformer2DModel from its weights (either prefix); widths and depths from the weights."""
    from diffusers import QwenImageTransformer2DModel
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

    from .convert import strip_prefix
    shape = detect(sd, where)
    sd = _upcast(strip_prefix(sd), dtype)
    cfg = {k: v for k, v in transformer_config(shape, base).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = QwenImageTransformer2DModel(**cfg)
    # the rotary tables are plain attributes (complex), not buffers: build them for real
    model.pos_embed = QwenEmbedRope(theta=10000, axes_dim=list(cfg["axes_dims_rope"]), scale_rope=True)
    return _assign(model, sd, where, dtype), shape


def build_text_encoder(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.text_encoder",
                       base: Optional[dict[str, Any]] = None) -> nn.Module:
    """Qwen2_5_VLTextModel (Qwen2.5-VL's language model) from Qwen2.5-VL weights in any stored layout."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel
    kind, given = what_is(sd), sd
    sd = text_weights(sd)
    if kind != "a Qwen2 / Qwen2.5-VL text encoder" or "embed_tokens.weight" not in sd:
        raise wrong_file("model.text_encoder", where, given, "the Qwen2.5-VL-7B text encoder Qwen-Image uses (e.g. "
                         "ComfyUI's text_encoders/qwen_2.5_vl_7b.safetensors)")
    emb, q = sd["embed_tokens.weight"], sd["layers.0.self_attn.q_proj.weight"]
    cfg = dict(base.get("text_config", base) if base else configs.text_config())
    width = int(q.shape[0])
    heads = int(cfg.get("num_attention_heads", 28)) if base else width // 128   # Qwen2.5-VL: heads of 128
    if heads < 1 or width % heads:
        raise ModelLoadError(f"{where}: a text encoder of width {width} does not split into heads of 128; pass its "
                             "config folder as model.config_dir (text_encoder/config.json)")
    head_dim = width // heads
    cfg.update(vocab_size=int(emb.shape[0]), hidden_size=int(emb.shape[1]), num_attention_heads=heads,
               num_key_value_heads=int(sd["layers.0.self_attn.k_proj.weight"].shape[0]) // head_dim,
               intermediate_size=int(sd["layers.0.mlp.gate_proj.weight"].shape[0]),
               num_hidden_layers=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers.")))
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")
           and not k.startswith("_")}
    for tok_key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(cfg.get(tok_key), int) and cfg[tok_key] >= cfg["vocab_size"]:   # a small test vocabulary
            cfg[tok_key] = None
    with torch.device("meta"):
        model = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**cfg))
    return _assign(model, _upcast(sd, dtype), where, dtype)


def build_vae(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.vae",
              base: Optional[dict[str, Any]] = None) -> nn.Module:
    """AutoencoderKLQwenImage from Wan 2.1 original-layout (ComfyUI) or diffusers-layout weights."""
    from diffusers import AutoencoderKLQwenImage
    if "decoder.middle.0.residual.0.gamma" not in sd and "decoder.mid_block.resnets.0.norm1.gamma" not in sd:
        raise wrong_file("model.vae", where, sd, "the Qwen-Image autoencoder (e.g. ComfyUI's "
                         "vae/qwen_image_vae.safetensors)")
    sd = vae_to_diffusers(sd)
    cfg = {k: v for k, v in (base or configs.vae_config()).items() if not k.startswith("_")}
    conv_in = sd["encoder.conv_in.weight"]
    cfg.update(base_dim=int(conv_in.shape[0]), z_dim=int(sd["post_quant_conv.weight"].shape[0]))
    if len(cfg.get("latents_mean", ())) != cfg["z_dim"]:
        raise ModelLoadError(f"{where}: a VAE with {cfg['z_dim']} latent channels but no matching latents_mean / "
                             "latents_std; pass its config folder as model.config_dir")
    with torch.device("meta"):
        model = AutoencoderKLQwenImage(**cfg)
    return _assign(model, _upcast(sd, dtype), where, dtype)


# ----------------------------------------------------------------------------------------------- components

@dataclass
class QwenImageComponents(LazyParts):
    """The loaded Qwen-Image parts. ``text_encoder``, ``vae`` and ``tokenizer`` are read on first use."""

    transformer: nn.Module
    shape: Shape
    files: dict[str, Optional[Path]] = field(default_factory=dict)
    _loaders: dict[str, Callable[[], Any]] = field(default_factory=dict)
    _parts: dict[str, Any] = field(default_factory=dict)
    variant: str = "qwen-image"

    text_encoder = LazyPart()
    vae = LazyPart()
    tokenizer = LazyPart("model.tokenizer_dir")


def _tokenizer_loader(model_cfg: Any, folder: Optional[Path], log: Callable[[str], None]) -> Callable[[], Any]:
    """Qwen2.5-VL's tokenizer: model.tokenizer_dir, else the folder's tokenizer/, else lorakit's shipped one."""
    return lambda: qwen_tokenizer_for(model_cfg, folder, "qwen2.5-vl", "Qwen-Image", log)


EDIT = "Qwen-Image-Edit is not trained by lorakit (it shares Qwen-Image's tensors but edits images); give Qwen-Image"


def _refuse_edit(src: Path, cdir: Optional[str]) -> None:
    index = src / "model_index.json" if src.is_dir() else None
    if index is not None and index.is_file():
        cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        if cls and "Edit" in cls:
            raise ConfigError(f"model.checkpoint: {src} is a {cls} folder; {EDIT}")
        if cls not in (None, "QwenImagePipeline"):
            raise ConfigError(f"model.checkpoint: {src} is a {cls} folder, not Qwen-Image (QwenImagePipeline)")
    tcfg = configs.read_config(cdir, "transformer") or {}
    if tcfg.get("zero_cond_t"):
        raise ConfigError(f"model.checkpoint: the transformer config under {cdir} is Qwen-Image-Edit-2511's; {EDIT}")
    if "edit" in src.name.lower():
        raise ConfigError(f"model.checkpoint: {src.name} is named as Qwen-Image-Edit; {EDIT} (rename the file if it "
                          "really is Qwen-Image)")


def load_components(model_cfg: Any, dtype: torch.dtype = torch.bfloat16,
                    log: Callable[[str], None] = print) -> QwenImageComponents:
    """Read the transformer now (any source), the rest on first use."""
    src = local_checkpoint(model_cfg, "qwen_image_bf16.safetensors", "Qwen-Image")
    allow = bool(getattr(model_cfg, "allow_pickle", False))
    cdir = getattr(model_cfg, "config_dir", None)
    te_src = vae_src = tok_folder = None
    if src.is_dir():
        if not (src / "transformer").is_dir():
            raise ConfigError(f"model.checkpoint: folder {src} is not a diffusers Qwen-Image model (no transformer/)")
        cdir = cdir or str(src)
        _refuse_edit(src, cdir)
        tsd = _read_all(folder_weights(src / "transformer", "model.checkpoint"), allow)
        if not tsd:
            raise ConfigError(f"model.checkpoint: {src / 'transformer'} holds no .safetensors weights")
        te_src, vae_src, tok_folder = folder_parts(src, "text_encoder", "vae", "tokenizer")
    else:
        _refuse_edit(src, cdir)
        tsd = _read_all(shards(src, "model.checkpoint"), allow)
    te_src, vae_src = component_files(
        model_cfg, "Qwen-Image",
        text_encoder=(te_src, "Qwen2.5-VL-7B, e.g. ComfyUI's text_encoders/qwen_2.5_vl_7b.safetensors"),
        vae=(vae_src, "the Qwen-Image VAE, e.g. ComfyUI's vae/qwen_image_vae.safetensors"))
    transformer, shape = build_transformer(tsd, dtype, "model.checkpoint", configs.read_config(cdir, "transformer"))
    del tsd
    te_parts, vae_parts = shards(te_src, "model.text_encoder"), shards(vae_src, "model.vae")
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype

    def te() -> nn.Module:
        model = build_text_encoder(_read_all(te_parts, allow), dtype, str(te_src),
                                   configs.read_config(cdir, "text_encoder"))
        if model.config.hidden_size != shape.text_dim:
            raise ModelLoadError(f"model.text_encoder: {te_src} has width {model.config.hidden_size}; this Qwen-Image "
                                 f"transformer takes prompt features of width {shape.text_dim} (Qwen2.5-VL-7B: 3584)")
        return model

    def vae() -> nn.Module:
        model = build_vae(_read_all(vae_parts, allow), vae_dtype, str(vae_src), configs.read_config(cdir, "vae"))
        if model.config.z_dim * 4 != shape.in_channels:
            raise ModelLoadError(f"model.vae: {vae_src} has {model.config.z_dim} latent channels; this transformer "
                                 f"takes {shape.in_channels // 4}")
        return model

    comps = QwenImageComponents(transformer, shape, {"checkpoint": src, "text_encoder": te_src, "vae": vae_src},
                                {"text_encoder": te, "vae": vae, "tokenizer": _tokenizer_loader(model_cfg, tok_folder, log)})
    log(f"Qwen-Image ({shape.num_layers} blocks, width {shape.dim}, prompt width {shape.text_dim})")
    return comps
