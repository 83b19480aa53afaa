"""Loading FLUX.1 components: BFL single files (+ clip_l / t5xxl / ae), a diffusers folder, or a hub id.

Single files load fully offline: models are built on the meta device from the shipped configs (widths
replaced by what the weights say) and the tensors are assigned, so no 24 GB random init happens and tiny
test checkpoints go through exactly the same code as the real ones.

``load_components(..., lazy=True)`` (what the adapter uses) reads the transformer only; CLIP-L, T5, the AE
and the tokenizers are read on first access (:class:`LazyFluxComponents`) by the same builders, so a run
whose latent and text caches are complete never reads the 9.5 GB T5 file. The encoder files are still
checked at once (present, allowed, the right kind of weights, from their headers).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.clip_t5 import build_t5, clip_config
from lorakit.models.common import LazyPart, LazyParts
from lorakit.models.ldm_vae import TINY_AE, build_ae
from lorakit.models.weights import assign_weights, load_safetensors, upcast

from . import configs
from .convert import (bfl_to_diffusers, detect_variant, infer_transformer_config, is_bfl_transformer, save_bfl_files,
                      strip_prefix)


@dataclass
class FluxComponents:
    """The loaded FLUX.1 model parts (frozen, eval mode) and where they came from."""

    transformer: nn.Module
    clip_l: nn.Module
    t5: nn.Module
    ae: nn.Module
    variant: str                                       # "dev" | "schnell"
    files: dict[str, Path] = field(default_factory=dict)   # role -> source file or folder
    clip_tokenizer: Any = None
    t5_tokenizer: Any = None

    def loaded(self, name: str) -> bool:
        """Whether a part is in memory (always, here; see LazyFluxComponents)."""
        return getattr(self, name, None) is not None


class LazyFluxComponents(LazyParts):
    """FluxComponents whose encoders (``clip_l``, ``t5``, ``ae``) and tokenizers are read on first access.

    Same attributes as :class:`FluxComponents`; ``loaded(name)`` says whether a part is in memory without
    reading it. Each loader returns exactly what the eager load builds (frozen, eval mode)."""

    clip_l = LazyPart()
    t5 = LazyPart("model.t5xxl")
    ae = LazyPart()
    clip_tokenizer = LazyPart("model.tokenizer_dir")
    t5_tokenizer = LazyPart("model.tokenizer_dir")

    def __init__(self, transformer: nn.Module, variant: str, files: dict[str, Path],
                 loaders: dict[str, Callable[[], Any]]) -> None:
        self.transformer = transformer
        self.variant = variant
        self.files = files
        self._parts: dict[str, Any] = {}
        self._loaders = dict(loaders)


# ----------------------------------------------------------------------------------------------- building

def build_transformer(sd: dict[str, torch.Tensor], dtype: torch.dtype, base: Optional[dict[str, Any]] = None,
                      where: str = "transformer") -> nn.Module:
    """FluxTransformer2DModel from a BFL (or diffusers-layout) state dict; widths from the weights."""
    from diffusers import FluxTransformer2DModel
    sd = strip_prefix(sd)
    if not is_bfl_transformer(sd):
        if not any(k.startswith("transformer_blocks.") for k in sd):
            raise ModelLoadError(f"{where}: not a FLUX.1 transformer (no double_blocks.* / transformer_blocks.*)")
        from .convert import diffusers_to_bfl
        sd = diffusers_to_bfl(sd)
    cfg = infer_transformer_config(sd, base or configs.transformer_config(detect_variant(sd)))
    dsd = bfl_to_diffusers(upcast(sd, dtype))
    init = {k: v for k, v in cfg.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = FluxTransformer2DModel(**init)
    return assign_weights(model, dsd, where, dtype)


def build_clip(sd: dict[str, torch.Tensor], dtype: torch.dtype, base: Optional[dict[str, Any]] = None,
               where: str = "clip_l") -> nn.Module:
    """CLIPTextModel from an HF-layout file (``text_model.`` prefix optional; projection ignored)."""
    from transformers import CLIPTextConfig, CLIPTextModel
    sd = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k not in ("text_projection.weight", "logit_scale")
          and not k.endswith("position_ids")}
    if "embeddings.token_embedding.weight" not in sd:
        raise ModelLoadError(f"{where}: not a CLIP text encoder (no text_model.embeddings.token_embedding.weight)")
    cfg = clip_config(sd, base or configs.clip_l_config())
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    expected = set(model.state_dict())
    if not any(k in expected for k in sd):                      # an older transformers with text_model.*
        sd = {"text_model." + k: v for k, v in sd.items()}
    return assign_weights(model, upcast(sd, dtype), where, dtype)


# ----------------------------------------------------------------------------------------------- entry points

def _is_hub_id(s: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", s)) and not Path(s).exists()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _need(model_cfg: Any, role: str) -> Path:
    value = getattr(model_cfg, role, None)
    if not value:
        raise ConfigError(f"model.{role}: required with a FLUX.1 single-file checkpoint "
                          f"(e.g. {role}.safetensors from ComfyUI's models folder)")
    p = Path(value).expanduser()
    if p.is_dir():  # a diffusers component folder: its files are read through the whole diffusers folder
        raise ConfigError(f"model.{role}: {p} is a folder; give the .safetensors file (e.g. ComfyUI's "
                          f"{_ROLE_EXAMPLE[role]}), or set model.checkpoint to the diffusers FLUX.1 folder and leave "
                          f"model.{role} out to use its component")
    if not p.is_file():
        raise ConfigError(f"model.{role}: file not found: {p}")
    return p


_ROLE_EXAMPLE = {"clip_l": "text_encoders/clip_l.safetensors", "t5xxl": "text_encoders/t5xxl_fp16.safetensors",
                 "ae": "vae/ae.safetensors"}


def _check_variant(model_cfg: Any, detected: str, where: str) -> str:
    wanted = getattr(model_cfg, "variant", "auto") or "auto"
    if wanted not in ("auto", detected):
        raise ConfigError(f"model.variant: set to {wanted!r} but {where} is FLUX.1-{detected} "
                          f"({'has' if detected == 'dev' else 'has no'} guidance embedding); use 'auto'")
    return detected


# What each encoder file must hold (any one of the names), checked from its header; messages as the builders'.
_ROLE_KEYS = {
    "clip_l": (("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"),
               "not a CLIP text encoder (no text_model.embeddings.token_embedding.weight)"),
    "t5xxl": (("encoder.block.0.layer.0.SelfAttention.q.weight",),
              "not a T5 encoder (no shared.weight / encoder.block.0.*)"),
    "ae": (("encoder.conv_in.weight", "first_stage_model.encoder.conv_in.weight", "vae.encoder.conv_in.weight"),
           "not an autoencoder (no encoder.conv_in.weight)"),
}


def check_encoder_file(path: Path, role: str, allow_pickle: bool) -> None:
    """Refuse, before anything is read, an encoder file that the lazy load would refuse on first use: a
    pickle file not allowed, a broken safetensors header, or the weights of another role."""
    from lorakit.safetensors_header import is_safetensors
    if not is_safetensors(path):
        from lorakit.safetensors_header import read_safetensors_header, weights_format
        if weights_format(path) != "pickle":
            read_safetensors_header(path)  # a GGUF, a file too short: one line saying what it is
        if not allow_pickle:
            raise ModelLoadError(f"{path}: only .safetensors files are loaded; set model.allow_pickle = true to "
                                 "load pickle-based files (unsafe: they can run code)")
        return
    from lorakit.safetensors_header import read_safetensors_header
    header, _meta = read_safetensors_header(path)
    names, problem = _ROLE_KEYS[role]
    if not any(n in header for n in names):
        from lorakit.models.registry import identify_header
        raise ModelLoadError(f"model.{role}: {path} is {identify_header(header).what}; {problem}")
    if role == "ae":  # FLUX.2's 32-channel AE (or an SDXL file's 4-channel VAE) loaded, then broke the first step
        from lorakit.models.common import not_a_vae_of
        what = not_a_vae_of(path, 16)
        if what:
            raise ModelLoadError(f"model.ae: {path} is {what}, not FLUX.1's autoencoder (ae.safetensors, 16 latent "
                                 "channels)")


def _single_file_loaders(files: dict[str, Path], dtype: torch.dtype, allow: bool, cdir: Optional[str]
                         ) -> dict[str, Callable[[], nn.Module]]:
    """Builders of CLIP-L, T5 and the AE from their files (each reads its file when called)."""
    ae_dtype = torch.float32 if dtype == torch.float16 else dtype        # fp16 AE overflows
    return {
        "clip_l": lambda: build_clip(load_safetensors(files["clip_l"], allow), dtype,
                                     configs.read_config(cdir, "text_encoder"), str(files["clip_l"])),
        "t5": lambda: build_t5(load_safetensors(files["t5xxl"], allow), dtype,
                               configs.read_config(cdir, "text_encoder_2"), str(files["t5xxl"])),
        "ae": lambda: build_ae(load_safetensors(files["ae"], allow), ae_dtype, configs.read_config(cdir, "vae"),
                               str(files["ae"])),
    }


def load_single_files(model_cfg: Any, dtype: torch.dtype = torch.bfloat16, lazy: bool = False
                      ) -> FluxComponents | LazyFluxComponents:
    """BFL transformer + clip_l + t5xxl + ae single files, offline, configs from model.config_dir or shipped.

    ``lazy``: read the transformer now, the encoders on first access (their files are checked now)."""
    ckpt = Path(model_cfg.checkpoint).expanduser()
    allow = bool(getattr(model_cfg, "allow_pickle", False))
    cdir = getattr(model_cfg, "config_dir", None)
    from lorakit.models.common import keyed, refuse_unreadable
    from lorakit.safetensors_header import is_safetensors
    with keyed("model.checkpoint"):
        refuse_unreadable(ckpt, allow)  # a GGUF, an empty or damaged file, whatever its name; a pickle not allowed
    if is_safetensors(ckpt):  # what the file is first, then what else it needs
        from lorakit.models.registry import require_base
        with keyed("model.checkpoint"):
            kind = require_base(ckpt, "flux1")     # a FLUX.2, Fill, SDXL file or a LoRA: one line saying what it is
        if not kind.standard and not cdir:         # rotary axes, norm groups and heads are not in the shapes
            raise ConfigError(f"model.config_dir: {ckpt} is {kind.what}; set model.config_dir to its diffusers "
                              "config folder (for lorakit's toy: `lorakit toy path flux1` prints the [model] table)")
    files = {"checkpoint": ckpt, **{r: _need(model_cfg, r) for r in ("clip_l", "t5xxl", "ae")}}
    if lazy:
        for role in ("clip_l", "t5xxl", "ae"):
            with keyed(f"model.{role}"):
                check_encoder_file(files[role], role, allow)
    tsd = load_safetensors(ckpt, allow)
    variant = _check_variant(model_cfg, detect_variant(tsd), str(ckpt))
    transformer = build_transformer(tsd, dtype, configs.read_config(cdir, "transformer"), str(ckpt))
    del tsd
    loaders = _single_file_loaders(files, dtype, allow, cdir)
    if lazy:
        return LazyFluxComponents(transformer, variant, files, loaders)
    return FluxComponents(transformer, loaders["clip_l"](), loaders["t5"](), loaders["ae"](), variant, files)


def load_pretrained(model_cfg: Any, dtype: torch.dtype = torch.bfloat16, lazy: bool = False
                    ) -> FluxComponents | LazyFluxComponents:
    """A diffusers FLUX folder or hub id (hub only when online); ``lazy``: encoders read on first access."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel
    src = str(model_cfg.checkpoint)
    if not Path(src).exists() and _offline():
        raise ConfigError(f"model.checkpoint: {src!r} is not a local path and the Hub is offline "
                          "(HF_HUB_OFFLINE=1); give a local file or diffusers folder")
    kw: dict[str, Any] = {"torch_dtype": dtype}
    if not allow_pickle_ok(model_cfg):
        kw["use_safetensors"] = True

    def part(cls: Any, sub: str, **extra: Any) -> Callable[[], nn.Module]:
        def read() -> nn.Module:
            try:
                return cls.from_pretrained(src, subfolder=sub, **{**kw, **extra}).requires_grad_(False).eval()
            except (OSError, ValueError) as e:
                raise ModelLoadError(f"model.checkpoint: cannot load FLUX.1 diffusers model from {src!r}: {e}"
                                     ) from None
        return read

    loaders: dict[str, Callable[[], Any]] = {
        "clip_l": part(CLIPTextModel, "text_encoder"), "t5": part(T5EncoderModel, "text_encoder_2"),
        "ae": part(AutoencoderKL, "vae", torch_dtype=torch.float32 if dtype == torch.float16 else dtype)}
    tr = part(FluxTransformer2DModel, "transformer")()
    variant = _check_variant(model_cfg, "dev" if tr.config.guidance_embeds else "schnell", src)
    root = Path(src)
    if (root / "tokenizer").is_dir() and (root / "tokenizer_2").is_dir():
        from transformers import CLIPTokenizer, T5TokenizerFast
        loaders["clip_tokenizer"] = lambda: CLIPTokenizer.from_pretrained(root / "tokenizer", model_max_length=77)
        loaders["t5_tokenizer"] = lambda: T5TokenizerFast.from_pretrained(root / "tokenizer_2")
    files = {"checkpoint": Path(src)}
    if lazy:
        return LazyFluxComponents(tr, variant, files, loaders)
    comps = FluxComponents(tr, loaders["clip_l"](), loaders["t5"](), loaders["ae"](), variant, files)
    if "clip_tokenizer" in loaders:
        comps.clip_tokenizer, comps.t5_tokenizer = loaders["clip_tokenizer"](), loaders["t5_tokenizer"]()
    return comps


def allow_pickle_ok(model_cfg: Any) -> bool:
    return bool(getattr(model_cfg, "allow_pickle", False))


def load_components(model_cfg: Any, dtype: torch.dtype = torch.bfloat16, lazy: bool = False
                    ) -> FluxComponents | LazyFluxComponents:
    """Dispatch on model.checkpoint: a single file, a diffusers folder, or a hub id.

    ``lazy``: only the transformer is read now; encoders and tokenizers on first access."""
    if not getattr(model_cfg, "checkpoint", None):
        raise ConfigError("model.checkpoint: required (flux1-dev.safetensors, a diffusers folder or a hub id)")
    p = Path(model_cfg.checkpoint).expanduser()
    if p.is_file():
        comps = load_single_files(model_cfg, dtype, lazy=lazy)
    elif p.is_dir():
        from lorakit.models.registry import require_base_folder

        require_base_folder(p, "flux1")  # another family's diffusers folder: the family to set
        if not (p / "model_index.json").is_file() and not (p / "transformer").is_dir():
            raise ConfigError(f"model.checkpoint: folder {p} is not a diffusers FLUX.1 model (no model_index.json)")
        from lorakit.models.weights import check_weights_folder

        check_weights_folder(p, allow_pickle_ok(model_cfg))  # .safetensors only unless allowed, for folders too
        comps = load_pretrained(model_cfg, dtype, lazy=lazy)
    elif _is_hub_id(str(model_cfg.checkpoint)):
        comps = load_pretrained(model_cfg, dtype, lazy=lazy)
    else:
        raise ConfigError(f"model.checkpoint: {p} not found")
    tokenizer_dir = getattr(model_cfg, "tokenizer_dir", None)
    if isinstance(comps, LazyFluxComponents):
        if "clip_tokenizer" not in comps._loaders:
            pair = functools.cache(lambda: default_tokenizers(tokenizer_dir))
            comps._loaders["clip_tokenizer"] = lambda: pair()[0]
            comps._loaders["t5_tokenizer"] = lambda: pair()[1]
    elif comps.clip_tokenizer is None:
        comps.clip_tokenizer, comps.t5_tokenizer = default_tokenizers(tokenizer_dir)
    return comps


def default_tokenizers(folder: Optional[str] = None) -> tuple[Any, Any]:
    """CLIP (pad = <|endoftext|>, as FLUX uses it) and T5 tokenizers from a folder or lorakit's package data."""
    from lorakit.models.tokenizers import clip_tokenizer, t5_tokenizer
    clip_dir = t5_dir = None
    if folder:
        root = Path(folder)
        clip_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        t5_dir = root / "tokenizer_2" if (root / "tokenizer_2").is_dir() else root
    return clip_tokenizer(pad_token="<|endoftext|>", folder=clip_dir), t5_tokenizer(folder=t5_dir)


# ----------------------------------------------------------------------------------------------- tiny fixture

TINY_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                        axes_dims_rope=[4, 6, 6])
TINY_CLIP = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
TINY_T5 = dict(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
               use_cache=False)



def tiny_models(variant: str = "dev", seed: int = 0) -> dict[str, nn.Module]:
    """Tiny random FLUX-architecture components (diffusers/transformers classes), seeded."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = FluxTransformer2DModel(**TINY_TRANSFORMER, guidance_embeds=variant == "dev")
        clip = CLIPTextModel(CLIPTextConfig(**TINY_CLIP))
        t5 = T5EncoderModel(T5Config(**TINY_T5))
        ae = AutoencoderKL(**TINY_AE)
    return {"transformer": tr.eval(), "clip_l": clip.eval(), "t5": t5.eval(), "ae": ae.eval()}


def write_tiny_checkpoint(directory: str | os.PathLike[str], variant: str = "dev", seed: int = 0,
                          dtype: torch.dtype = torch.bfloat16) -> dict[str, Path]:
    """Write tiny FLUX.1 files in the ComfyUI layouts + a config folder; roles: checkpoint, clip_l, t5xxl, ae, config.

    Load them with model.checkpoint/clip_l/t5xxl/ae = the paths and model.config_dir = the "config" path.
    """
    root = Path(directory)
    m = tiny_models(variant, seed)
    files = save_bfl_files(root, transformer=m["transformer"], clip_l=m["clip_l"], t5=m["t5"], ae=m["ae"],
                           dtype=dtype)
    cfg_dir = configs.write_config_folder(root / "config", variant, transformer=TINY_TRANSFORMER, clip_l=TINY_CLIP,
                                          t5=TINY_T5, ae=TINY_AE)
    return {**files, "config": cfg_dir}
