"""Loading SDXL base models: single SGM file (offline), diffusers folder, or hub id; tiny test models.

Single files go through diffusers' ``from_single_file`` with a local config folder, always (without
``config=`` diffusers guesses a Hub repo). SDXL's two text encoders are told apart by their width, so
tiny models must give TE1 and TE2 different hidden sizes (stack.md pitfalls 6/7).

Two entry points: :func:`load_components` reads the whole model at once (the reference, and what tests
compare against); :func:`open_components` reads only the UNet and leaves the VAE, the text encoders and
the tokenizers to be read on first use (:class:`SDXLParts`), so a run whose latent and text caches are
complete never reads them. From a single file only the part's own tensors are read (safetensors
``safe_open``) and converted by diffusers' own converters, so the modules are bit-identical to the eager
load (tests/unit/test_lazy_loading.py). The UNet skips ``from_single_file``'s per-tensor loading: its fp16
tensors go to the training device, are cast there and assigned to a model built without weights (full-size
SDXL, H200 machine: 1.5 s instead of 2.3-3.4 s through diffusers' UNet loader, 4.3-5.5 s for the pipeline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.sdxl import configs
from lorakit.models.sdxl.convert import TE2_PREFIX, save_sgm_checkpoint
from lorakit.models.unet_parts import TE1_PREFIX, UNET_PREFIX, VAE_PREFIX
from lorakit.safetensors_header import is_pickle  # by content: a renamed .ckpt is a pickle too


@dataclass
class SDXLComponents:
    """The loaded base model, as diffusers/transformers modules."""

    unet: Any
    vae: Any
    te1: Any
    te2: Any
    tokenizer1: Any
    tokenizer2: Any
    scheduler_config: dict
    force_zeros_for_empty_prompt: bool = True   # model_index.json: the empty negative prompt is zeros


def read_header(path: Path) -> dict[str, Any]:
    """Tensor name → header entry of a .safetensors file, validated, without reading tensor data.

    Uses :func:`lorakit.safetensors_header.read_safetensors_header` (raises ModelLoadError naming the file).
    """
    from lorakit.safetensors_header import read_safetensors_header

    header, _meta = read_safetensors_header(path)
    return header


def check_weights_file(path: Path, allow_pickle: bool, key: str = "model.checkpoint") -> None:
    """Refuse pickle files unless allowed, and broken safetensors files, with one clear line."""
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    from lorakit.models.common import keyed
    from lorakit.safetensors_header import weights_format
    if weights_format(path) == "pickle":  # by the content: a renamed .ckpt is one too
        if not allow_pickle:
            raise ConfigError(f"{key}: {path} is a pickle file, which can run code when loaded; convert it to "
                              f".safetensors or set model.allow_pickle = true if you trust it")
        return
    with keyed(key):  # a GGUF, a truncated or empty file: the key, the file and what it is
        read_header(path)


def _has_sdxl_parts(header: dict[str, Any], path: Path) -> None:
    keys = [k for k in header if k != "__metadata__"]
    missing = [name for name, prefix in (("UNet", UNET_PREFIX), ("VAE", VAE_PREFIX), ("text encoder 1", TE1_PREFIX),
                                         ("text encoder 2", TE2_PREFIX)) if not any(k.startswith(prefix) for k in keys)]
    if missing:
        raise ModelLoadError(f"{path}: not an SDXL checkpoint in the original layout (no {', '.join(missing)} "
                             f"weights); give a full SDXL .safetensors file or a diffusers folder")


def _is_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()


def _tokenizer_pair(base: Path) -> tuple[Any, Any]:
    """A folder holding tokenizer/ (+ tokenizer_2/), or one CLIP tokenizer folder used for both."""
    from lorakit.models.tokenizers import clip_tokenizer

    if (base / "tokenizer").is_dir():
        t1 = clip_tokenizer(folder=base / "tokenizer")
        t2 = clip_tokenizer(folder=base / "tokenizer_2") if (base / "tokenizer_2").is_dir() else _with_pad(t1, "!")
        return t1, t2
    t1 = clip_tokenizer(folder=base)
    return t1, _with_pad(t1, "!")


def _tokenizers(model_dir: Optional[Path], tokenizer_dir: Optional[str]) -> tuple[Any, Any]:
    """model.tokenizer_dir, else the tokenizer folders next to the model, else lorakit's package data."""
    from lorakit.models.tokenizers import clip_tokenizer

    if tokenizer_dir:
        return _tokenizer_pair(Path(tokenizer_dir).expanduser())
    if model_dir is not None and any((model_dir / "tokenizer" / n).is_file() for n in ("vocab.json", "tokenizer.json")):
        return _tokenizer_pair(model_dir)
    return clip_tokenizer(), clip_tokenizer(pad_token="!")


def _with_pad(tok: Any, pad: str) -> Any:
    import copy

    tok = copy.deepcopy(tok)
    tok.pad_token = pad
    return tok


def _source(model_cfg: Any) -> tuple[str, Any, Optional[Path]]:
    """Check ``model.checkpoint``/``model.config_dir`` and say what the checkpoint is: ("file", path, config
    folder), ("folder", path, config folder or None) or ("hub", id, config folder or None)."""
    source = model_cfg.checkpoint
    if not source:
        raise ConfigError("model.checkpoint: missing; give an SDXL .safetensors file, a diffusers folder or a hub id")
    path = Path(str(source)).expanduser()
    cfg_dir = Path(model_cfg.config_dir).expanduser() if model_cfg.config_dir else None
    if cfg_dir is not None and not (cfg_dir / "model_index.json").is_file():
        raise ConfigError(f"model.config_dir: {cfg_dir} has no model_index.json; point it at a diffusers SDXL "
                          f"config folder")
    allow_pickle = bool(getattr(model_cfg, "allow_pickle", False))
    if path.is_file():
        check_weights_file(path, allow_pickle)
        if not is_pickle(path):
            from lorakit.models.registry import require_base
            kind = require_base(path, "sdxl")      # SD1.5, a refiner, an inpainting file or a LoRA: one line
            _has_sdxl_parts(read_header(path), path)
            if not kind.standard and cfg_dir is None:
                raise ConfigError(f"model.config_dir: {path} is {kind.what}; set model.config_dir to its diffusers "
                                  "config folder (for lorakit's toy: `lorakit toy path sdxl` prints the [model] table)")
        return "file", path, cfg_dir or configs.shipped_config_dir()
    if path.is_dir():
        from lorakit.models.registry import require_base_folder

        require_base_folder(path, "sdxl")  # another family's diffusers folder: the family to set
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"model.checkpoint: {path} is a folder without model_index.json; give a diffusers "
                              f"SDXL folder or a .safetensors file")
        from lorakit.models.weights import check_weights_folder

        check_weights_folder(path, allow_pickle)  # .safetensors only unless allowed, for folders too
        return "folder", path, cfg_dir
    if _is_hub_id(str(source)):
        return "hub", str(source), cfg_dir
    raise ConfigError(f"model.checkpoint: {source} does not exist (not a file, folder or hub id)")


def _vae_file(model_cfg: Any) -> Optional[Path]:
    """``model.vae`` (a separate VAE file), checked; None when the checkpoint's own VAE is used."""
    if not getattr(model_cfg, "vae", None):
        return None
    vae_path = Path(model_cfg.vae).expanduser()
    if vae_path.is_dir():
        raise ConfigError(f"model.vae: {vae_path} is a folder; give the VAE's .safetensors file (for a diffusers VAE "
                          "folder: its diffusion_pytorch_model.safetensors)")
    check_weights_file(vae_path, bool(getattr(model_cfg, "allow_pickle", False)), key="model.vae")
    from lorakit.safetensors_header import is_safetensors
    if is_safetensors(vae_path):  # what it is, now: diffusers' words come only at the first image, and run to pages
        from lorakit.models.common import not_a_vae_of, refuse_checkpoint_as
        refuse_checkpoint_as("model.vae", vae_path, ("sdxl",), _SDXL_VAE)  # an SD 1.5 / SD3 file's VAE: not SDXL's
        what = not_a_vae_of(vae_path, 4)
        if what:
            raise ModelLoadError(f"model.vae: {vae_path} is {what}, not {_SDXL_VAE}")
    return vae_path


_SDXL_VAE = "an SDXL VAE (4 latent channels, e.g. sdxl_vae.safetensors or sdxl.vae.safetensors)"


def _load_vae_file(vae_path: Path, cfg_dir: Optional[Path]) -> Any:
    from diffusers import AutoencoderKL

    vae_cfg = cfg_dir or configs.shipped_config_dir()
    try:
        return AutoencoderKL.from_single_file(str(vae_path), config=str(vae_cfg), subfolder="vae",
                                              local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"model.vae: {vae_path} could not be loaded as an SDXL VAE ({exc})") from exc


def _frozen(module: Any) -> Any:
    module.requires_grad_(False)
    module.eval()
    return module


def load_components(model_cfg: Any, dtype: torch.dtype = torch.float32) -> SDXLComponents:
    """Load UNet, VAE, both text encoders and tokenizers from ``ModelCfg`` (frozen, on the CPU).

    The VAE is kept in fp32 (SDXL's VAE overflows in fp16); the rest uses ``dtype``.
    """
    from diffusers import StableDiffusionXLPipeline

    kind, path, cfg_dir = _source(model_cfg)
    allow_pickle = bool(getattr(model_cfg, "allow_pickle", False))
    if kind == "file":
        try:
            pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(cfg_dir), torch_dtype=dtype,
                                                              local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"{path}: could not be loaded as SDXL with configs from {cfg_dir} ({exc})") from exc
        tok_dir = cfg_dir
    elif kind == "folder":
        try:
            pipe = StableDiffusionXLPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"{path}: could not be loaded as a diffusers SDXL folder ({exc})") from exc
        tok_dir = path
    else:
        try:
            pipe = StableDiffusionXLPipeline.from_pretrained(str(path), torch_dtype=dtype,
                                                             use_safetensors=not allow_pickle)
        except Exception as exc:
            raise ModelLoadError(f"model.checkpoint: hub id {path!r} could not be loaded ({exc}); offline, "
                                 f"give a local .safetensors file or diffusers folder instead") from exc
        tok_dir = None

    vae = pipe.vae
    vae_path = _vae_file(model_cfg)
    if vae_path is not None:
        vae = _load_vae_file(vae_path, cfg_dir)
    tokenizer_dir = getattr(model_cfg, "tokenizer_dir", None)
    if tok_dir is None and not tokenizer_dir:
        tok1, tok2 = pipe.tokenizer, pipe.tokenizer_2  # hub id: the repo's own tokenizers
    else:
        tok1, tok2 = _tokenizers(tok_dir, tokenizer_dir)
    vae = vae.to(torch.float32)
    for module in (pipe.unet, vae, pipe.text_encoder, pipe.text_encoder_2):
        _frozen(module)
    return SDXLComponents(unet=pipe.unet, vae=vae, te1=pipe.text_encoder, te2=pipe.text_encoder_2,
                          tokenizer1=tok1, tokenizer2=tok2, scheduler_config=dict(pipe.scheduler.config),
                          force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", True)))


# ---- reading the parts on first use ----

TextParts = tuple[Any, Any, Any, Any]   # te1, te2, tokenizer1, tokenizer2


@dataclass
class SDXLParts:
    """The base model with the UNet loaded and the VAE / text encoders (with their tokenizers) read on first
    use by ``load_vae()`` / ``load_text()``; each returns freshly loaded, frozen CPU modules (VAE in fp32),
    exactly what :func:`load_components` gives. ``vae_scaling_factor`` is known without reading weights."""

    unet: Any
    scheduler_config: dict
    force_zeros_for_empty_prompt: bool
    vae_scaling_factor: float
    load_vae: Callable[[], Any]
    load_text: Callable[[], TextParts]


def _read_prefixed(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file whose names start with ``prefix`` (nothing else is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}


def _index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model_index.json").read_text(encoding="utf-8"))


def _scheduler_config(folder: Path) -> dict:
    """The scheduler's config as the pipeline builds it (its class from model_index.json, defaults filled)."""
    import importlib

    library, name = _index(folder).get("scheduler", ["diffusers", "EulerDiscreteScheduler"])
    cls = getattr(importlib.import_module(library), name)
    return dict(cls.from_pretrained(str(folder), subfolder="scheduler", local_files_only=True).config)


def _vae_scaling(folder: Path) -> float:
    """``scaling_factor`` of the VAE config in ``folder/vae`` (AutoencoderKL's default when it is absent)."""
    import inspect

    from diffusers import AutoencoderKL

    cfg = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    if "scaling_factor" in cfg:
        return cfg["scaling_factor"]
    return inspect.signature(AutoencoderKL.__init__).parameters["scaling_factor"].default


def _unet_from_single_file(path: Path, cfg_dir: Path, dtype: torch.dtype, device: Optional[torch.device]) -> Any:
    """The UNet of an SGM single file: its tensors only, cast to ``dtype`` on ``device`` (where the cast is
    fastest: the GPU), renamed by diffusers' converter (the one ``from_single_file`` runs) and assigned to a
    model built with empty weights from ``cfg_dir/unet``."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from lorakit.models.unet_parts import sgm_to_unet

    # the file's bytes move first, then the cast runs on the device (a GPU casts 2.6 G values in milliseconds)
    from lorakit.models.weights import upcast  # fp8 with its ComfyUI scale (scaled fp8 files), the rest cast

    tensors = upcast({k: (v if device is None else v.to(device)) for k, v in _read_prefixed(path, UNET_PREFIX).items()},
                     dtype)
    config = UNet2DConditionModel.load_config(str(cfg_dir), subfolder="unet", local_files_only=True)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    missing, _unexpected = unet.load_state_dict(sgm_to_unet(tensors, unet.config), strict=False, assign=True)
    if missing:  # tensors the converter does not know are ignored, as from_single_file ignores them
        raise ModelLoadError(f"{path}: UNet tensors missing, such as {missing[0]!r} ({len(missing)} in all); "
                             f"truncated or not an SDXL checkpoint?")
    return unet


def open_components(model_cfg: Any, dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> SDXLParts:
    """Read the UNet now (onto ``device``, default the CPU) and the rest on first use (single .safetensors
    files and diffusers folders; the lazy parts come on the CPU); every check of ``model.*`` happens here,
    so a bad path still fails at once. Pickle files and hub ids are read whole (:func:`load_components`),
    their parts handed out from memory."""
    kind, path, cfg_dir = _source(model_cfg)
    if kind == "hub" or (kind == "file" and is_pickle(path)):
        return _from_components(load_components(model_cfg, dtype))
    vae_path = _vae_file(model_cfg)
    tokenizer_dir = getattr(model_cfg, "tokenizer_dir", None)
    configs_from = cfg_dir if kind == "file" else path

    if kind == "file":
        failed = f"{path}: could not be loaded as SDXL with configs from {cfg_dir}"

        def unet() -> Any:
            return _unet_from_single_file(path, cfg_dir, dtype, device)

        def own_vae() -> Any:
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_single_file(_read_prefixed(path, VAE_PREFIX), config=str(cfg_dir),
                                                  subfolder="vae", torch_dtype=dtype, local_files_only=True)

        def encoders() -> tuple[Any, Any]:
            from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
            from transformers import CLIPTextModel, CLIPTextModelWithProjection

            out = []
            for cls, prefix, sub in ((CLIPTextModel, TE1_PREFIX, "text_encoder"),
                                     (CLIPTextModelWithProjection, TE2_PREFIX, "text_encoder_2")):
                out.append(create_diffusers_clip_model_from_ldm(cls, _read_prefixed(path, prefix), subfolder=sub,
                                                                config=str(cfg_dir), torch_dtype=dtype,
                                                                local_files_only=True))
            return out[0], out[1]
    else:
        failed = f"{path}: could not be loaded as a diffusers SDXL folder"

        def unet() -> Any:
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", torch_dtype=dtype,
                                                        local_files_only=True)

        def own_vae() -> Any:
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_pretrained(str(path), subfolder="vae", torch_dtype=dtype, local_files_only=True)

        def encoders() -> tuple[Any, Any]:
            from transformers import CLIPTextModel, CLIPTextModelWithProjection

            return (CLIPTextModel.from_pretrained(str(path), subfolder="text_encoder", dtype=dtype,
                                                  local_files_only=True),
                    CLIPTextModelWithProjection.from_pretrained(str(path), subfolder="text_encoder_2", dtype=dtype,
                                                                local_files_only=True))

    def guarded(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{failed} ({exc})") from exc

    def load_vae() -> Any:
        vae = _load_vae_file(vae_path, cfg_dir) if vae_path is not None else guarded(own_vae)
        return _frozen(vae.to(torch.float32))

    def load_text() -> TextParts:
        te1, te2 = guarded(encoders)
        tok1, tok2 = _tokenizers(configs_from, tokenizer_dir)
        return _frozen(te1), _frozen(te2), tok1, tok2

    try:
        scheduler_config = _scheduler_config(configs_from)
        index = _index(configs_from)
        scaling = _vae_scaling(cfg_dir or configs.shipped_config_dir() if vae_path is not None else configs_from)
    except Exception as exc:
        raise ModelLoadError(f"{failed} ({exc})") from exc
    return SDXLParts(unet=_frozen(guarded(unet)), scheduler_config=scheduler_config,
                     force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
                     vae_scaling_factor=scaling, load_vae=load_vae, load_text=load_text)


def _from_components(comps: SDXLComponents) -> SDXLParts:
    """Parts already in memory (pickle files, hub ids)."""
    return SDXLParts(unet=comps.unet, scheduler_config=comps.scheduler_config,
                     force_zeros_for_empty_prompt=comps.force_zeros_for_empty_prompt,
                     vae_scaling_factor=comps.vae.config.scaling_factor, load_vae=lambda: comps.vae,
                     load_text=lambda: (comps.te1, comps.te2, comps.tokenizer1, comps.tokenizer2))


# ---- tiny SDXL-architecture models (tests, toy world) ----

TINY_TE1_HIDDEN = 32
TINY_TE2_HIDDEN = 48
TINY_TE2_PROJ = 32
TINY_TIME_DIM = 8


def tiny_configs() -> dict[str, dict[str, Any]]:
    """Configs of a tiny model with SDXL's topology: 3 levels (first without attention), 2 layers per
    block, several transformer blocks, TE1 width ≠ TE2 width, 6 micro-conditioning ids."""
    unet = dict(configs.UNET)
    unet.update(sample_size=8, block_out_channels=[32, 64, 64], layers_per_block=2, attention_head_dim=[2, 4, 4],
                transformer_layers_per_block=[1, 1, 2], norm_num_groups=8,
                cross_attention_dim=TINY_TE1_HIDDEN + TINY_TE2_HIDDEN, addition_time_embed_dim=TINY_TIME_DIM,
                projection_class_embeddings_input_dim=6 * TINY_TIME_DIM + TINY_TE2_PROJ)
    vae = dict(configs.VAE)
    vae.update(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64)
    te1 = dict(configs.TE1)
    te1.update(hidden_size=TINY_TE1_HIDDEN, intermediate_size=2 * TINY_TE1_HIDDEN, num_hidden_layers=3,
               num_attention_heads=4, projection_dim=TINY_TE1_HIDDEN, torch_dtype="float32")
    te2 = dict(configs.TE2)
    te2.update(hidden_size=TINY_TE2_HIDDEN, intermediate_size=2 * TINY_TE2_HIDDEN, num_hidden_layers=3,
               num_attention_heads=4, projection_dim=TINY_TE2_PROJ, torch_dtype="float32")
    return {"unet": unet, "vae": vae, "te1": te1, "te2": te2}


def build_models(cfgs: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Random-weight UNet, VAE and text encoders from config dicts (deterministic for a seed)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def clean(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype")}

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**clean(cfgs["unet"]))
    vae = AutoencoderKL(**clean(cfgs["vae"]))
    te1 = CLIPTextModel(CLIPTextConfig(**clean(cfgs["te1"])))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**clean(cfgs["te2"])))
    # diffusers zero-initialises some output layers; random values make conversions and LoRA tests meaningful
    with torch.no_grad():
        for module in (unet, vae):
            for p in module.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.05)
    return {"unet": unet.eval(), "vae": vae.eval(), "te1": te1.eval(), "te2": te2.eval()}


def write_tiny_checkpoint(folder: Path | str, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """Write a tiny random SDXL-architecture model: ``checkpoint`` (one SGM .safetensors file) and
    ``config`` (its diffusers config folder). The fixture of unit and end-to-end tests."""
    folder = Path(folder)
    cfgs = tiny_configs()
    config_dir = configs.write_config_folder(folder / "config", unet=cfgs["unet"], vae=cfgs["vae"],
                                             te1=cfgs["te1"], te2=cfgs["te2"])
    models = build_models(cfgs, seed=seed)
    ckpt = save_sgm_checkpoint(folder / "tiny_sdxl.safetensors", dtype=dtype, **models)
    return {"checkpoint": ckpt, "config": config_dir}
