"""Loading SD 1.x base models offline: the official single file (LDM layout) or a diffusers folder.

The UNet is read now (only its own tensors, converted by diffusers' single-file converter and assigned to a model built
without weights, as the SDXL family does); the VAE and CLIP-L with its tokenizer are read on first use
(:class:`SD15Parts`), so a run whose latent and text caches are complete never reads them. What the file is comes from
its header first (:func:`lorakit.models.sd15.convert.detect`): an SDXL, FLUX, SD 2.x, SD3 or inpainting file is
refused in one line naming it before any tensor is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.sd15 import configs
from lorakit.models.sd15.convert import TE_PREFIX, Variant, detect_file, save_ldm_checkpoint
from lorakit.models.unet_parts import UNET_PREFIX, VAE_PREFIX
from lorakit.safetensors_header import is_pickle  # by content: a renamed .ckpt is a pickle too


@dataclass
class SD15Parts:
    """The UNet (loaded) and the VAE / text encoder + tokenizer (read by ``load_vae()`` / ``load_text()``)."""

    unet: Any
    scheduler_config: dict
    variant: Variant
    vae_scaling_factor: float
    load_vae: Callable[[], Any]
    load_text: Callable[[], tuple[Any, Any]]


def _frozen(module: Any) -> Any:
    module.requires_grad_(False)
    module.eval()
    return module


def _source(model_cfg: Any) -> tuple[str, Path, Path]:
    """("file" | "folder", path, config folder) after checking ``model.checkpoint`` / ``model.config_dir``."""
    source = model_cfg.checkpoint
    if not source:
        raise ConfigError("model.checkpoint: missing; give an SD 1.5 .safetensors file or a diffusers folder")
    path = Path(str(source)).expanduser()
    cfg_dir = Path(model_cfg.config_dir).expanduser() if model_cfg.config_dir else None
    if cfg_dir is not None and not (cfg_dir / "model_index.json").is_file():
        raise ConfigError(f"model.config_dir: {cfg_dir} has no model_index.json; point it at a diffusers SD 1.5 "
                          f"config folder")
    if path.is_file():
        from lorakit.safetensors_header import weights_format
        if weights_format(path) == "pickle" and not getattr(model_cfg, "allow_pickle", False):
            raise ConfigError(f"model.checkpoint: {path} is a pickle file, which can run code when loaded; convert "
                              f"it to .safetensors or set model.allow_pickle = true if you trust it")
        return "file", path, cfg_dir or configs.shipped_config_dir()
    if path.is_dir():
        from lorakit.models.registry import require_base_folder

        require_base_folder(path, "sd15")  # another family's diffusers folder: the family to set
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"model.checkpoint: {path} is a folder without model_index.json; give a diffusers "
                              f"SD 1.5 folder or a .safetensors file")
        return "folder", path, cfg_dir or path
    raise ConfigError(f"model.checkpoint: {source} does not exist; lorakit loads SD 1.5 offline from a "
                      f".safetensors file or a diffusers folder")


def _read(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` whose names start with ``prefix`` (a .safetensors file reads nothing else)."""
    if is_pickle(path):
        from lorakit.models.weights import load_safetensors  # the one weights reader (pickle when allowed)

        sd = load_safetensors(path, allow_pickle=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        return {k: v for k, v in sd.items() if k.startswith(prefix)}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}


def _pickle_variant(path: Path) -> Variant:
    from lorakit.models.sd15.convert import detect

    header = {k: {"shape": list(v.shape)} for k, v in _read(path, "").items()}
    return detect(header, {}, path)


def _check_folder(path: Path) -> Variant:
    """A diffusers folder must be SD 1.x: a 4-channel UNet with 768-wide cross-attention and no SDXL add-embedding."""
    try:
        unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: no readable unet/config.json ({exc}); give a diffusers SD 1.5 folder") from exc
    if unet.get("_class_name") not in (None, "UNet2DConditionModel"):
        raise ModelLoadError(f"{path}: its unet is a {unet.get('_class_name')}, not an SD 1.x UNet2DConditionModel")
    if unet.get("addition_embed_type") == "text_time":
        raise ModelLoadError(f"{path}: this is an SDXL folder, not SD 1.x; set model.family = \"sdxl\"")
    if int(unet.get("in_channels", 4)) != 4:
        raise ModelLoadError(f"{path}: this is an inpainting model ({unet.get('in_channels')} input channels), not "
                             f"an SD 1.x base; train LoRAs on the 4-channel base model")
    if unet.get("cross_attention_dim") == 1024:
        raise ModelLoadError(f"{path}: this is a Stable Diffusion 2.x folder (cross_attention_dim "
                             f"{unet.get('cross_attention_dim')}), not SD 1.x; lorakit's sd15 family trains SD 1.x")
    sched = _scheduler_config(path)
    if sched.get("prediction_type") == "v_prediction":
        return Variant("v_prediction", "the folder's scheduler config (prediction_type)")
    return Variant("epsilon", "the folder's scheduler config (prediction_type)")


def _scheduler_config(folder: Path) -> dict:
    """The scheduler config of a diffusers folder, as JSON (the sampler classes are built from it later)."""
    try:
        return json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dict(configs.SCHEDULER)


def _vae_scaling(folder: Path) -> float:
    try:
        cfg = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return float(configs.VAE["scaling_factor"])
    return float(cfg.get("scaling_factor", configs.VAE["scaling_factor"]))


def _tokenizer(model_dir: Optional[Path], tokenizer_dir: Optional[str]) -> Any:
    """model.tokenizer_dir, else the tokenizer folder next to the model, else lorakit's package data."""
    from lorakit.models.tokenizers import clip_tokenizer

    if tokenizer_dir:
        base = Path(tokenizer_dir).expanduser()
        return clip_tokenizer(folder=base / "tokenizer" if (base / "tokenizer").is_dir() else base)
    if model_dir is not None and any((model_dir / "tokenizer" / n).is_file() for n in ("vocab.json", "tokenizer.json")):
        return clip_tokenizer(folder=model_dir / "tokenizer")
    return clip_tokenizer()


def _vae_file(model_cfg: Any, cfg_dir: Path) -> Any:
    """``model.vae``: a separate VAE file (LDM or diffusers keys), loaded with the VAE config of ``cfg_dir``."""
    vae_path = Path(model_cfg.vae).expanduser()
    if not vae_path.is_file():
        raise ConfigError(f"model.vae: {vae_path} does not exist")
    if is_pickle(vae_path) and not getattr(model_cfg, "allow_pickle", False):
        raise ConfigError(f"model.vae: {vae_path} is a pickle file; convert it to .safetensors or set "
                          f"model.allow_pickle = true if you trust it")
    from lorakit.models.common import refuse_checkpoint_as  # an SDXL file's VAE has SD 1.5's shapes, not its latents
    refuse_checkpoint_as("model.vae", vae_path, ("sd15",), "an SD 1.5 VAE (e.g. vae-ft-mse-840000-ema-pruned"
                         ".safetensors)")
    what = _not_sd15_vae(vae_path)  # another VAE (FLUX.1's 16 channels, Qwen-Image's): what it is, before diffusers
    if what:
        raise ModelLoadError(f"model.vae: {vae_path} is {what}, not {_SD15_VAE}")
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_single_file(str(vae_path), config=str(cfg_dir), subfolder="vae",
                                              local_files_only=True)
    except Exception as exc:  # diffusers' text can run to pages: its first line, clipped
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"model.vae: {vae_path} could not be loaded as {_SD15_VAE}: "
                             f"{first[:160]}{'…' if len(first) > 160 else ''}") from exc


_SD15_VAE = "an SD 1.5 VAE (4 latent channels, e.g. vae-ft-mse-840000-ema-pruned.safetensors)"


def _not_sd15_vae(path: Path) -> str:
    """What ``path`` is when it is not a VAE of SD 1.5's latents (4 channels), read from the header; "" when it is
    one (:func:`lorakit.models.common.not_a_vae_of`)."""
    from lorakit.models.common import not_a_vae_of
    return not_a_vae_of(path, 4)


def _unet_from_file(path: Path, cfg_dir: Path, dtype: torch.dtype, device: Optional[torch.device]) -> Any:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from lorakit.models.unet_parts import sgm_to_unet

    from lorakit.models.weights import upcast  # fp8 with its ComfyUI scale (scaled fp8 files), the rest cast

    tensors = upcast({k: (v if device is None else v.to(device)) for k, v in _read(path, UNET_PREFIX).items()}, dtype)
    config = UNet2DConditionModel.load_config(str(cfg_dir), subfolder="unet", local_files_only=True)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    missing, _ = unet.load_state_dict(sgm_to_unet(tensors, unet.config), strict=False, assign=True)
    if missing:
        raise ModelLoadError(f"{path}: UNet tensors missing, such as {missing[0]!r} ({len(missing)} in all); "
                             f"truncated, or not the SD 1.5 architecture of {cfg_dir}?")
    return unet


def open_components(model_cfg: Any, dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> SD15Parts:
    """Check the source, detect the variant, read the UNet (onto ``device``) and leave the rest for first use."""
    kind, path, cfg_dir = _source(model_cfg)
    tokenizer_dir = getattr(model_cfg, "tokenizer_dir", None)
    if kind == "file":
        from lorakit.models.common import keyed
        with keyed("model.checkpoint"):  # a truncated file: the header reader's line, with the key
            variant = _pickle_variant(path) if is_pickle(path) else detect_file(path)
        failed = f"{path}: could not be loaded as SD 1.5 with configs from {cfg_dir}"

        def unet() -> Any:
            return _unet_from_file(path, cfg_dir, dtype, device)

        def own_vae() -> Any:
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_single_file(_read(path, VAE_PREFIX), config=str(cfg_dir), subfolder="vae",
                                                  torch_dtype=dtype, local_files_only=True)

        def encoder() -> Any:
            from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
            from transformers import CLIPTextModel

            return create_diffusers_clip_model_from_ldm(CLIPTextModel, _read(path, TE_PREFIX),
                                                        subfolder="text_encoder", config=str(cfg_dir),
                                                        torch_dtype=dtype, local_files_only=True)
    else:
        variant = _check_folder(path)
        failed = f"{path}: could not be loaded as a diffusers SD 1.5 folder"

        def unet() -> Any:
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", torch_dtype=dtype,
                                                        local_files_only=True)

        def own_vae() -> Any:
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_pretrained(str(path), subfolder="vae", torch_dtype=dtype, local_files_only=True)

        def encoder() -> Any:
            from transformers import CLIPTextModel

            return CLIPTextModel.from_pretrained(str(path), subfolder="text_encoder", dtype=dtype,
                                                 local_files_only=True)

    def guarded(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ModelLoadError, ConfigError):
            raise
        except Exception as exc:
            raise ModelLoadError(f"{failed} ({exc})") from exc

    def load_vae() -> Any:
        vae = _vae_file(model_cfg, cfg_dir) if getattr(model_cfg, "vae", None) else guarded(own_vae)
        return _frozen(vae.to(torch.float32))

    def load_text() -> tuple[Any, Any]:
        return _frozen(guarded(encoder)), _tokenizer(cfg_dir if kind == "file" else path, tokenizer_dir)

    vae_path = Path(model_cfg.vae).expanduser() if getattr(model_cfg, "vae", None) else None
    if vae_path is not None and vae_path.is_dir():  # was "does not exist" for a folder
        raise ConfigError(f"model.vae: {vae_path} is a folder; give the VAE's .safetensors file (for a diffusers VAE "
                          "folder: its diffusion_pytorch_model.safetensors)")
    if vae_path is not None and not vae_path.is_file():
        raise ConfigError(f"model.vae: {model_cfg.vae} does not exist")
    sched = {k: v for k, v in _scheduler_config(cfg_dir).items() if not k.startswith("_")}
    return SD15Parts(unet=_frozen(guarded(unet)), scheduler_config=sched, variant=variant,
                     vae_scaling_factor=_vae_scaling(cfg_dir), load_vae=load_vae, load_text=load_text)


# ---- tiny SD 1.5-architecture models (tests, contract tests) ----

def tiny_configs() -> dict[str, dict[str, Any]]:
    """A tiny model with SD 1.5's topology: 3 levels (the last without attention, as SD 1.5's fourth), conv
    proj_in/out (use_linear_projection off), 2 resnets per level, one CLIP-L-like encoder."""
    unet = dict(configs.UNET)
    unet.update(sample_size=8, block_out_channels=[32, 32, 64], layers_per_block=2, attention_head_dim=4,
                norm_num_groups=8, cross_attention_dim=32,
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
    vae = dict(configs.VAE)
    vae.update(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64)
    te = dict(configs.TEXT_ENCODER)
    te.update(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, projection_dim=32)
    return {"unet": unet, "vae": vae, "text_encoder": te}


def build_models(cfgs: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Random-weight UNet, VAE and CLIP text encoder of the real classes (deterministic for a seed)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorakit.models.base import init_kwargs

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(**init_kwargs(cfgs["unet"]))
        vae = AutoencoderKL(**init_kwargs(cfgs["vae"]))
        te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in init_kwargs(cfgs["text_encoder"]).items()
                                             if k != "torch_dtype"}))
        with torch.no_grad():  # diffusers zero-initialises some output layers; random values make tests meaningful
            for module in (unet, vae):
                for p in module.parameters():
                    if p.abs().sum() == 0:
                        p.normal_(0, 0.05)
    finally:
        torch.random.set_rng_state(gen_state)
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": te.eval()}


def write_tiny_checkpoint(folder: Path | str, seed: int = 0, dtype: torch.dtype = torch.float32,
                          v_prediction: bool = False) -> dict[str, Path]:
    """A tiny random SD 1.5-architecture model: ``checkpoint`` (one LDM .safetensors) and ``config`` (its diffusers
    config folder). The fixture of the unit and contract tests."""
    folder = Path(folder)
    cfgs = tiny_configs()
    config_dir = configs.write_config_folder(folder / "config", unet=cfgs["unet"], vae=cfgs["vae"],
                                             text_encoder=cfgs["text_encoder"])
    models = build_models(cfgs, seed=seed)
    ckpt = save_ldm_checkpoint(folder / "tiny_sd15.safetensors", dtype=dtype, v_prediction=v_prediction, **models)
    return {"checkpoint": ckpt, "config": config_dir}
