"""Loading SD3 / SD3.5 offline: the official single files, ComfyUI's split files, or a diffusers folder.

* ``model.checkpoint``: Stability AI's ``sd3.5_large.safetensors`` / ``sd3.5_medium.safetensors``
  (``model.diffusion_model.`` and ``first_stage_model.``, optionally ``text_encoders.clip_l/clip_g/t5xxl.transformer.``
  bundled), ComfyUI's
  ``diffusion_models/`` file (bf16 or fp8, with or without the prefix), a diffusers-layout transformer file, or a
  diffusers folder (``transformer/``, ``text_encoder/``, ``text_encoder_2/``, ``text_encoder_3/``, ``vae/``,
  ``tokenizer*/``, ``model_index.json``).
* ``model.clip_l`` / ``model.clip_g`` / ``model.t5xxl``: ComfyUI's ``text_encoders/clip_l.safetensors``,
  ``clip_g.safetensors`` and ``t5xxl_fp16.safetensors`` (or fp8); they win over encoders bundled in the checkpoint.
  Without T5 anywhere, the T5 half of the prompt is zeros (as StableDiffusion3Pipeline without ``text_encoder_3``).
* ``model.vae``: the VAE (``vae/diffusion_pytorch_model.safetensors`` or an LDM-layout file); default: the
  checkpoint's ``first_stage_model.``.
* ``model.variant``: large and large-turbo have the same tensors: ``auto`` reads the name (``*turbo*``), ``distilled``
  says Turbo, ``base`` says not. Medium / large come from the weights.

Models are built on the meta device and the tensors assigned; only the transformer is read at once, the encoders,
the VAE and the tokenizers on first use (a run whose caches are complete never reads them).
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
from lorakit.models.common import LazyPart, LazyParts, local_checkpoint, need_file, refuse_checkpoint_as, shards, \
    wrong_file

from . import configs
from .convert import ENCODER_PREFIXES, Shape, detect, layout, original_to_diffusers, strip_prefix, \
    transformer_config, what_is


def _upcast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from lorakit.models.weights import upcast  # fp8 (+ ComfyUI scale_weight) -> dtype; shared helper
    return upcast(sd, dtype)


def _pick(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors under the first of ``prefixes`` that ``sd`` has, the prefix removed (``""`` = every tensor)."""
    for p in prefixes:
        if not p or any(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return {}


def read_part(path: Path, prefixes: tuple[str, ...] = ("",), allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` whose names start with the first of ``prefixes`` that the file has (prefix removed;
    ``""`` = every tensor). Only those tensors are read from a .safetensors file."""
    from lorakit.safetensors_header import is_safetensors
    if not is_safetensors(path):
        from lorakit.models.weights import load_safetensors  # pickle only when allowed
        return _pick(load_safetensors(path, allow_pickle), prefixes)
    from safetensors import safe_open

    from lorakit.safetensors_header import read_safetensors_header
    header, _ = read_safetensors_header(path)          # the one header reader: names the file when broken
    for p in prefixes:
        names = [k for k in header if k != "__metadata__" and k.startswith(p)]
        if names:
            with safe_open(str(path), framework="pt") as fh:
                return {k[len(p):]: fh.get_tensor(k) for k in names}
    return {}


def _assign(model: nn.Module, sd: dict[str, torch.Tensor], where: str, dtype: torch.dtype) -> nn.Module:
    from lorakit.models.weights import assign_weights as assign  # strict assign-load, position_ids rebuilt, frozen
    return assign(model, sd, where, dtype)


def build_transformer(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.checkpoint",
                      base: Optional[dict[str, Any]] = None) -> tuple[nn.Module, Shape]:
    """SD3Transformer2DModel from an original- or diffusers-layout state dict; sizes from the weights."""
    from diffusers import SD3Transformer2DModel
    sd = strip_prefix(sd)
    shape = detect(sd, where, (base or {}).get("attention_head_dim"))
    sd = _upcast(sd, dtype)
    if layout(sd) == "original":
        sd = original_to_diffusers(sd)
    cfg = transformer_config(shape, base)
    with torch.device("meta"):
        model = SD3Transformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    return _assign(model, sd, where, dtype), shape


def build_clip(sd: dict[str, torch.Tensor], dtype: torch.dtype, which: str, where: str,
               base: Optional[dict[str, Any]] = None, log: Callable[[str], None] = print) -> nn.Module:
    """CLIPTextModelWithProjection (CLIP-L or bigG) from an HF-layout file (``text_model.*`` + ``text_projection``).
    A CLIP-L file without ``text_projection.weight`` (FLUX.1's clip_l) gets the identity, as ComfyUI does."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from lorakit.models.clip_t5 import clip_config
    given = sd
    sd = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k != "logit_scale" and not k.endswith("position_ids")}
    if "embeddings.token_embedding.weight" not in sd:
        raise wrong_file(f"model.{which}", where, given, f"the CLIP text encoder SD3 needs for model.{which} (e.g. "
                         f"ComfyUI's text_encoders/{which}.safetensors)")
    width = int(sd["embeddings.token_embedding.weight"].shape[1])
    if width == {"clip_l": 1280, "clip_g": 768}[which]:  # the other CLIP: same total width, silently wrong embeddings
        other, named = ("clip_g", "CLIP-G") if which == "clip_l" else ("clip_l", "CLIP-L")
        raise ModelLoadError(f"model.{which}: {where}: a CLIP text encoder of width {width}, the {named} (model.{other});"
                             f" model.{which} takes the {'CLIP-L (768)' if which == 'clip_l' else 'CLIP-G (1280)'}: "
                             "swap model.clip_l and model.clip_g")
    default = configs.clip_l_config() if which == "clip_l" else configs.clip_g_config()
    cfg = clip_config(sd, base or default)
    if "text_projection.weight" not in sd:
        if which != "clip_l":
            raise ModelLoadError(f"model.{which}: {where}: a CLIP-G without text_projection.weight; SD3 needs the "
                                 "pooled projection (ComfyUI's clip_g.safetensors has it)")
        log(f"sd3: {where} has no text_projection.weight; using the identity (as ComfyUI does for such CLIP-L files)")
        sd["text_projection.weight"] = torch.eye(width)
    cfg["projection_dim"] = int(sd["text_projection.weight"].shape[0])
    if width % int(cfg.get("num_attention_heads", 1)):
        cfg["num_attention_heads"] = max(1, width // 64)
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(CLIPTextConfig(**{k: v for k, v in cfg.items()
                                                              if k not in ("architectures", "torch_dtype")}))
    expected = set(model.state_dict())
    sd = {(k if k in expected or k == "text_projection.weight" else "text_model." + k): v for k, v in sd.items()}
    return _assign(model, _upcast(sd, dtype), where, dtype)


def build_t5(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str, base: Optional[dict[str, Any]] = None
             ) -> nn.Module:
    from lorakit.models.clip_t5 import build_t5 as flux_t5  # the same T5-XXL encoder as FLUX.1
    if "encoder.block.0.layer.0.SelfAttention.q.weight" not in sd:
        raise wrong_file("model.t5xxl", where, sd, "the T5-XXL encoder SD3 uses for model.t5xxl (e.g. ComfyUI's "
                         "text_encoders/t5xxl_fp16.safetensors)")
    return flux_t5(sd, dtype, base or configs.t5_config(), where)


def build_vae(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str, base: Optional[dict[str, Any]] = None
              ) -> nn.Module:
    from lorakit.models.ldm_vae import build_ae  # LDM or diffusers layout, sizes from the weights
    if not any(k.endswith("encoder.conv_in.weight") for k in sd):
        raise wrong_file("model.vae", where, sd, "the SD3 VAE")
    model = build_ae(sd, dtype, base or configs.vae_config(), where)
    if int(model.config.latent_channels) != 16:
        raise ModelLoadError(f"model.vae: {where}: a VAE with {model.config.latent_channels} latent channels; SD3 uses "
                             "its 16-channel VAE")
    return model


# ----------------------------------------------------------------------------------------------- components

@dataclass
class SD3Components(LazyParts):
    """The loaded SD3 parts; encoders, VAE and tokenizers are read on first use. ``t5`` may be None."""

    transformer: nn.Module
    shape: Shape
    variant: str                                      # large / large-turbo / medium / sd3-medium / custom
    how: str
    files: dict[str, Optional[Path]] = field(default_factory=dict)
    _loaders: dict[str, Callable[[], Any]] = field(default_factory=dict)
    _parts: dict[str, Any] = field(default_factory=dict)

    clip_l = LazyPart()
    clip_g = LazyPart()
    t5 = LazyPart("model.t5xxl")
    vae = LazyPart()
    tokenizers = LazyPart("model.tokenizer_dir")


def resolve_variant(shape: Shape, wanted: str, name: str) -> tuple[str, str]:
    """(variant, how): medium / large from the weights; large-turbo from model.variant or the name."""
    wanted = wanted or "auto"
    if wanted not in ("auto", "base", "distilled"):
        raise ConfigError(f"model.variant: {wanted!r} is not an SD3.5 choice; use auto (medium / large from the "
                          "weights, Turbo from the name), distilled (large-turbo) or base")
    v = shape.variant
    if wanted == "distilled":
        if v not in ("large", "custom"):
            raise ConfigError(f"model.variant: 'distilled' (SD3.5 large-turbo) but the checkpoint is SD3 {v}; use auto")
        return ("large-turbo" if v == "large" else v), "model.variant"
    if wanted == "base":
        return v, "model.variant"
    if v == "large" and "turbo" in name.lower():
        return "large-turbo", f"the name {name!r} (Turbo and large have the same tensors; set model.variant to be sure)"
    return v, "the weights"


def _tokenizer_loader(model_cfg: Any, folder: Optional[Path]) -> Callable[[], tuple[Any, Any, Any]]:
    def load() -> tuple[Any, Any, Any]:
        from lorakit.models.tokenizers import clip_tokenizer, t5_tokenizer
        root = Path(model_cfg.tokenizer_dir).expanduser() if getattr(model_cfg, "tokenizer_dir", None) else folder
        sub = lambda n: (root / n) if root is not None and (root / n).is_dir() else None  # noqa: E731
        if root is not None and not root.is_dir():
            raise ConfigError(f"model.tokenizer_dir: {root} is not a folder")
        return (clip_tokenizer(pad_token="<|endoftext|>", folder=sub("tokenizer")),
                clip_tokenizer(pad_token="!", folder=sub("tokenizer_2")), t5_tokenizer(folder=sub("tokenizer_3")))
    return load


def _has(path: Path, prefix: str) -> bool:
    from lorakit.safetensors_header import read_safetensors_header
    from lorakit.safetensors_header import is_safetensors
    if not is_safetensors(path):
        return False
    header, _ = read_safetensors_header(path)
    return any(k.startswith(prefix) for k in header)


def _role_file(model_cfg: Any, role: str) -> Optional[Path]:
    return need_file(model_cfg, role, "", "SD3") if getattr(model_cfg, role, None) else None


def _folder_sources(src: Path) -> dict[str, Optional[tuple[list[Path], str]]]:
    index = src / "model_index.json"
    if index.is_file():
        cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        if cls not in (None, "StableDiffusion3Pipeline"):
            raise ConfigError(f"model.checkpoint: {src} is a {cls} folder, not SD3 (StableDiffusion3Pipeline)")
    out: dict[str, Optional[tuple[list[Path], str]]] = {}
    for role, sub in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2"), ("t5xxl", "text_encoder_3"),
                      ("vae", "vae")):
        parts = folder_weights(src / sub, f"model.checkpoint: {sub}") if (src / sub).is_dir() else []
        out[role] = (parts, "") if parts else None
    return out


def load_components(model_cfg: Any, dtype: torch.dtype = torch.bfloat16,
                    log: Callable[[str], None] = print) -> SD3Components:
    """Read the transformer now (any source), the rest on first use; the variant decided."""
    src = local_checkpoint(model_cfg, "sd3.5_large.safetensors", "SD3")
    allow = bool(getattr(model_cfg, "allow_pickle", False))
    cdir = getattr(model_cfg, "config_dir", None)
    sources: dict[str, Optional[tuple[list[Path], str]]]
    tok_folder: Optional[Path] = None
    if src.is_dir():
        if not (src / "transformer").is_dir():
            raise ConfigError(f"model.checkpoint: folder {src} is not a diffusers SD3 model (no transformer/)")
        sources = _folder_sources(src)
        tsd: dict[str, torch.Tensor] = {}
        for p in folder_weights(src / "transformer", "model.checkpoint"):
            tsd.update(read_part(p))
        if not tsd:
            raise ConfigError(f"model.checkpoint: {src / 'transformer'} holds no .safetensors weights")
        tok_folder = src
        cdir = cdir or str(src)
    else:
        from lorakit.safetensors_header import is_safetensors
        if is_safetensors(src):
            from lorakit.models.registry import require_base
            require_base(src, "sd3")     # a LoRA or another family's file: one line saying what it is and what to set
        prefixes = ("model.diffusion_model.", "diffusion_model.", "")
        if is_safetensors(src):
            tsd = read_part(src, prefixes, allow)
            sources = {role: ([src], p) if _has(src, p) else None for role, p in ENCODER_PREFIXES.items()}
        else:  # a pickle (allow_pickle): its bundled encoders found by name too (loadleft: was "model.clip_l: required")
            full = read_part(src, ("",), allow)
            tsd = _pick(full, prefixes)
            sources = {role: ([src], p) if any(k.startswith(p) for k in full) else None
                       for role, p in ENCODER_PREFIXES.items()}
            del full
        tsd = {k: v for k, v in tsd.items() if not k.startswith(tuple(ENCODER_PREFIXES.values()))}
    for role in ("clip_l", "clip_g", "t5xxl", "vae"):
        f = _role_file(model_cfg, role)
        if f is not None:
            sources[role] = (shards(f, f"model.{role}"), "")
    detect(strip_prefix(tsd), "model.checkpoint")     # another family's file: one line saying what it is, first
    for role, what in (("clip_l", "CLIP-L, e.g. ComfyUI's text_encoders/clip_l.safetensors"),
                       ("clip_g", "CLIP-G, e.g. ComfyUI's text_encoders/clip_g.safetensors"),
                       ("vae", "the SD3 VAE, e.g. the vae/ folder's diffusion_pytorch_model.safetensors")):
        if sources.get(role) is None:
            raise ConfigError(f"model.{role}: required: {src.name} holds no {role} ({what})")
    transformer, shape = build_transformer(tsd, dtype, "model.checkpoint", configs.read_config(cdir, "transformer"))
    del tsd
    variant, how = resolve_variant(shape, getattr(model_cfg, "variant", "auto"), src.name)

    def reader(role: str) -> Callable[[], dict[str, torch.Tensor]]:
        paths, prefix = sources[role]  # type: ignore[misc]

        def read() -> dict[str, torch.Tensor]:
            sd: dict[str, torch.Tensor] = {}
            for p in paths:
                sd.update(read_part(p, (prefix,), allow))
            return sd
        return read

    def where(role: str) -> str:
        paths, prefix = sources[role]  # type: ignore[misc]
        return f"{paths[0]}" + (f" ({prefix}*)" if prefix else "")

    vae_dtype = torch.float32 if dtype == torch.float16 else dtype

    def vae() -> nn.Module:
        # an SDXL or FLUX.1 checkpoint's bundled VAE is another model's: refused by what the file is
        refuse_checkpoint_as("model.vae", sources["vae"][0][0], ("sd3",), "the SD3 VAE")  # type: ignore[index]
        return build_vae(reader("vae")(), vae_dtype, where("vae"), configs.read_config(cdir, "vae"))

    loaders: dict[str, Callable[[], Any]] = {
        "clip_l": lambda: build_clip(reader("clip_l")(), dtype, "clip_l", where("clip_l"),
                                     configs.read_config(cdir, "text_encoder"), log),
        "clip_g": lambda: build_clip(reader("clip_g")(), dtype, "clip_g", where("clip_g"),
                                     configs.read_config(cdir, "text_encoder_2"), log),
        "t5": (lambda: build_t5(reader("t5xxl")(), dtype, where("t5xxl"), configs.read_config(cdir, "text_encoder_3")))
        if sources.get("t5xxl") is not None else (lambda: None),
        "vae": vae,
        "tokenizers": _tokenizer_loader(model_cfg, tok_folder),
    }
    files = {"checkpoint": src, **{r: (s[0][0] if s else None) for r, s in sources.items()}}
    comps = SD3Components(transformer, shape, variant, how, files, loaders)
    t5 = "T5-XXL" if sources.get("t5xxl") is not None else "no T5 (its half of the prompt is zeros, as diffusers)"
    log(f"SD3 {variant} ({shape.depth} blocks, width {shape.width}, {len(shape.dual_layers)} dual-attention blocks, "
        f"{t5}); variant from {how}")
    return comps
