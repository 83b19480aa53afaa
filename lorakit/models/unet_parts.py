"""What the SGM/LDM U-Net families (SDXL, SD 1.5) share in their weights and LoRA names; each keeps its own configs,
text encoders and conditioning (the shared adapter behaviour is :mod:`lorakit.models.unet`).

* :data:`UNET_PREFIX` / :data:`VAE_PREFIX` / :data:`TE1_PREFIX`: the single-file prefixes (TE1's is SDXL's; SD 1.5
  passes its own to :func:`te1_to_sgm`).
* :func:`unet_module_to_sgm` / :func:`unet_to_sgm`: a diffusers UNet module path / state dict -> SGM names, derived from
  the config (levels, ``layers_per_block``, block types), so full-size and tiny models share one code path;
  :func:`sgm_to_unet`: back, through diffusers' own converter. :func:`vae_to_sgm`, :func:`te1_to_sgm`: the same for
  the VAE and the CLIP-L text encoder.
* :func:`unet_lora_targets`: kohya's UNet LoRA targets (+ LoCon convs); :func:`unet_modules`: the key map's UNet
  modules; :func:`export_diffusers`: the diffusers/PEFT LoRA layout with alpha/rank folded into ``lora_B``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn

from lorakit.models.base import LoraModule

__all__ = ["UNET_PREFIX", "VAE_PREFIX", "TE1_PREFIX", "unet_module_to_sgm", "unet_to_sgm", "vae_to_sgm", "te1_to_sgm",
           "sgm_to_unet", "unet_lora_targets", "unet_modules", "export_diffusers"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE1_PREFIX = "conditioner.embedders.0.transformer."

_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _cfg(config: Any, key: str) -> Any:
    """Read a config entry from a dict or a diffusers FrozenDict/ConfigMixin config."""
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def _layers_per_block(config: Any) -> int:
    lpb = _cfg(config, "layers_per_block")
    if not isinstance(lpb, int):
        raise ValueError(f"SDXL conversion needs an int layers_per_block, got {lpb!r}")
    return lpb


def _map_resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _UNET_RESNET:
        raise KeyError(f"unknown UNet resnet part {rest!r}")
    return _UNET_RESNET[head] + (("." + tail) if tail else "")


def unet_module_to_sgm(name: str, unet_config: Any) -> str:
    """Map a diffusers UNet module (or parameter) path to its SGM path.

    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` → ``input_blocks.4.1.transformer_blocks.0.attn1.to_q``
    (with SDXL's ``layers_per_block`` 2). Resnet parts are renamed (conv1 → in_layers.2, time_emb_proj →
    emb_layers.1, conv_shortcut → skip_connection); attention internals keep their names. A trailing
    ``.weight``/``.bias`` passes through unchanged.
    """
    for src, dst in _UNET_TOP.items():
        if name == src or name.startswith(src + "."):
            return dst + name[len(src):]
    lpb = _layers_per_block(unet_config)
    step = lpb + 1
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)(?:\.(.*))?$", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "downsamplers":
            return f"input_blocks.{(i + 1) * step}.0.op" + rest.removeprefix("conv")
        idx = 1 + i * step + j
        if kind == "resnets":
            return f"input_blocks.{idx}.0.{_map_resnet(rest)}"
        return f"input_blocks.{idx}.1" + (f".{rest}" if rest else "")
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3] or ""
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_map_resnet(rest)}"
        return f"middle_block.{2 * j + 1}" + (f".{rest}" if rest else "")
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)(?:\.(.*))?$", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "upsamplers":
            has_attn = "CrossAttn" in _cfg(unet_config, "up_block_types")[i]
            return f"output_blocks.{i * step + lpb}.{2 if has_attn else 1}" + (f".{rest}" if rest else "")
        idx = i * step + j
        if kind == "resnets":
            return f"output_blocks.{idx}.0.{_map_resnet(rest)}"
        return f"output_blocks.{idx}.1" + (f".{rest}" if rest else "")
    raise KeyError(f"no SGM equivalent for UNet module {name!r}")


def unet_to_sgm(state_dict: Mapping[str, torch.Tensor], unet_config: Any, prefix: str = UNET_PREFIX
                ) -> dict[str, torch.Tensor]:
    """Diffusers UNet2DConditionModel state dict → SGM keys (with ``prefix``)."""
    return {prefix + unet_module_to_sgm(k, unet_config): v for k, v in state_dict.items()}


def _vae_key(key: str, n_levels: int) -> str:
    enc = re.match(r"(encoder|decoder)\.(.*)$", key)
    if not enc:
        return key  # quant_conv / post_quant_conv keep their names
    side, rest = enc[1], enc[2]
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)$", rest)
    if m:
        direction, i, kind, j, tail = m[1], int(m[2]), m[3], int(m[4]), m[5]
        level = i if direction == "down" else n_levels - 1 - i  # decoder levels are stored reversed
        if kind == "resnets":
            head, _, p = tail.partition(".")
            return f"{side}.{direction}.{level}.block.{j}.{_VAE_RESNET.get(head, head)}.{p}"
        return f"{side}.{direction}.{level}.{'downsample' if direction == 'down' else 'upsample'}.{tail}"
    m = re.match(r"mid_block\.resnets\.(\d+)\.(.*)$", rest)
    if m:
        head, _, p = m[2].partition(".")
        return f"{side}.mid.block_{int(m[1]) + 1}.{_VAE_RESNET.get(head, head)}.{p}"
    m = re.match(r"mid_block\.attentions\.0\.(.*)\.(weight|bias)$", rest)
    if m:
        return f"{side}.mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}"
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out." + rest.removeprefix("conv_norm_out.")
    return key


def vae_to_sgm(state_dict: Mapping[str, torch.Tensor], vae_config: Any, prefix: str = VAE_PREFIX
               ) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL state dict → SGM keys. Mid-attention q/k/v/proj_out become 1×1 convs."""
    n_levels = len(_cfg(vae_config, "down_block_types"))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _vae_key(key, n_levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[prefix + new] = value
    return out


def te1_to_sgm(state_dict: Mapping[str, torch.Tensor], prefix: str = TE1_PREFIX) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict → SGM keys; transformers 5 drops ``text_model.``, SGM has it."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state_dict.items()}


def sgm_to_unet(checkpoint: Mapping[str, torch.Tensor], unet_config: Any) -> dict[str, torch.Tensor]:
    """SGM checkpoint → diffusers UNet state dict (diffusers' ``convert_ldm_unet_checkpoint``)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(dict(checkpoint), dict(unet_config))


# ---------------------------------------------------------------------------------------- LoRA targets and names

# Linear layers inside a Transformer2DModel that kohya trains (names relative to the Transformer2DModel).
_ATTN_SUFFIXES = ("proj_in", "proj_out", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                  "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")


def unet_lora_targets(unet: nn.Module, rank: int, conv_rank: int = 0) -> dict[str, int]:
    """kohya's SDXL UNet targets as {diffusers module path: rank}.

    Always: the Linear/1×1 layers of every Transformer2DModel (proj_in/out, attn1/attn2 q/k/v/out, ff).
    With ``conv_rank`` > 0 (LoCon): 3×3 convs of resnets and down/up-samplers at ``conv_rank``, plus each
    resnet's time-embedding Linear and 1×1 shortcut conv at ``rank``.
    """
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    targets: dict[str, int] = {}
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            for sub_name, sub in module.named_modules():
                if sub_name.endswith(_ATTN_SUFFIXES) and _is_linear_like(sub):
                    targets[f"{name}.{sub_name}"] = rank
        elif conv_rank > 0 and isinstance(module, ResnetBlock2D):
            for sub_name, sub in module.named_children():
                if isinstance(sub, nn.Conv2d) and sub.kernel_size == (3, 3):
                    targets[f"{name}.{sub_name}"] = conv_rank
                elif _is_linear_like(sub) and sub_name in ("time_emb_proj", "conv_shortcut"):
                    targets[f"{name}.{sub_name}"] = rank
        elif conv_rank > 0 and isinstance(module, (Downsample2D, Upsample2D)):
            conv = getattr(module, "conv", None)
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                targets[f"{name}.conv"] = conv_rank
    return targets


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))


def unet_modules(unet: Any, conv: bool = False) -> list:
    """The key map's modules of an SGM / LDM UNet (SDXL, SD 1.x): kohya's UNet targets with LoCon convs, each under
    its single-file path with its shape; ``conv`` marks Conv2d modules (SD 1.x writes their factors 4-D)."""
    from lorakit.lora.formats.keymap import BaseModule

    mods = []
    named = dict(unet.named_modules())
    for path in sorted(unet_lora_targets(unet, 1, conv_rank=1)):
        w = named[path].weight
        native = unet_module_to_sgm(path, unet.config)
        kernel = (int(w.shape[2]), int(w.shape[3])) if w.dim() == 4 else (1, 1)
        mods.append(BaseModule("denoiser", native, (path,), int(w.shape[0]), int(w.shape[1]), kernel,
                               checkpoint_key=UNET_PREFIX + native + ".weight", conv=conv and w.dim() == 4))
    return mods


_DIFFUSERS_PREFIX = {"unet": "unet", "denoiser": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}


def export_diffusers(lora: dict[str, dict[str, LoraModule]]) -> dict[str, torch.Tensor]:
    """diffusers/PEFT layout: ``unet.<path>.lora_A.weight`` / ``lora_B.weight`` (``text_encoder.``,
    ``text_encoder_2.`` for the CLIPs).

    A PEFT file carries no alpha tensor, and without adapter metadata diffusers loads every module with
    scale 1 (alpha = rank). So the trained scale alpha/rank is folded into ``lora_B``: the loaded delta
    B·A equals the trained (alpha/r)·up·down exactly, whatever loader reads the file.
    """
    out: dict[str, torch.Tensor] = {}
    for component, modules in lora.items():
        prefix = _DIFFUSERS_PREFIX.get(component)
        if prefix is None:
            raise ValueError(f"SDXL LoRA export: unknown component {component!r} (expected unet, te1, te2)")
        for path, m in modules.items():
            full = path
            if component == "te1" and not path.startswith("text_model."):
                full = "text_model." + path  # the name older transformers and ComfyUI use; diffusers maps it
            scale = float(m.alpha) / m.down.shape[0]
            out[f"{prefix}.{full}.lora_A.weight"] = m.down
            out[f"{prefix}.{full}.lora_B.weight"] = m.up * scale
    return out
