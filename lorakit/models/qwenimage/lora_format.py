"""Qwen-Image LoRA targets and the two file layouts.

Targets: every Linear of the 60 ``QwenImageTransformerBlock``s except the modulation ones (``img_mod.1`` /
``txt_mod.1``), as musubi-tuner's ``networks.lora_qwen_image``: the image stream's attention (``attn.to_q/k/v``,
``attn.to_out.0``), the text stream's (``attn.add_q/k/v_proj``, ``attn.to_add_out``) and both MLPs
(``img_mlp.net.0.proj``, ``img_mlp.net.2``, ``txt_mlp.*``). ``network.module_ranks`` types: ``img_attn``, ``txt_attn``,
``img_mlp``, ``txt_mlp`` (0 skips a type).

ComfyUI's Qwen-Image model keeps diffusers' names (``diffusion_model.transformer_blocks.N.attn.to_q.weight``) and its
LoRA key map (comfy/lora.py ``model_lora_keys_unet``) takes ``lora_unet_`` + that path with dots as underscores for
every model, and for Qwen-Image also the bare path, ``transformer.<path>`` and ``lycoris_<path>``. So:

* ``save.format = "kohya"``: ``lora_unet_transformer_blocks_N_attn_to_q`` with ``lora_down`` / ``lora_up`` / ``alpha``
  (what musubi-tuner writes; diffusers' Qwen-Image loader converts it too);
* ``save.format = "diffusers"``: ``transformer.<path>.lora_A/lora_B.weight`` with alpha/rank folded into lora_B
  (``QwenImagePipeline.load_lora_weights``; ComfyUI reads it through its ``transformer.`` keys).
No fusing: Qwen-Image's q, k and v are separate Linears in every layout.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lorakit.models.base import LoraModule
from lorakit.models.common import module_ranks

MODULE_TYPES = ("img_attn", "txt_attn", "img_mlp", "txt_mlp")
LINEARS = (("attn.to_q", "img_attn"), ("attn.to_k", "img_attn"), ("attn.to_v", "img_attn"),
           ("attn.to_out.0", "img_attn"), ("attn.add_q_proj", "txt_attn"), ("attn.add_k_proj", "txt_attn"),
           ("attn.add_v_proj", "txt_attn"), ("attn.to_add_out", "txt_attn"), ("img_mlp.net.0.proj", "img_mlp"),
           ("img_mlp.net.2", "img_mlp"), ("txt_mlp.net.0.proj", "txt_mlp"), ("txt_mlp.net.2", "txt_mlp"))


def module_table(num_layers: int) -> list[tuple[str, str]]:
    """(diffusers module path, module type) of every trainable Linear."""
    return [(f"transformer_blocks.{i}.{p}", kind) for i in range(num_layers) for p, kind in LINEARS]


def transformer_targets(network: Any, num_layers: int) -> dict[str, int]:
    """diffusers module path -> rank, from NetworkCfg (rank, module_ranks)."""
    ranks = module_ranks(network, MODULE_TYPES, "Qwen-Image")
    out: dict[str, int] = {}
    for path, kind in module_table(num_layers):
        rank = int(ranks.get(kind, network.rank))
        if rank:
            out[path] = rank
    return out


def kohya_name(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def _only_transformer(lora: Mapping[str, Any]) -> Mapping[str, LoraModule]:
    unknown = sorted(set(lora) - {"transformer"})
    if unknown:
        raise ValueError(f"qwenimage export: unknown LoRA component {unknown[0]!r} (expected transformer)")
    return lora.get("transformer", {})


def to_comfy(lora: Mapping[str, Mapping[str, LoraModule]], num_layers: int) -> dict[str, torch.Tensor]:
    """component -> path -> LoraModule  =>  ``lora_unet_<path>`` with lora_down / lora_up / alpha."""
    from lorakit.models.kohya_pack import pack  # the kohya triple writer shared with FLUX.1 / Z-Image
    known = {p for p, _k in module_table(num_layers)}
    out: dict[str, torch.Tensor] = {}
    for path, m in _only_transformer(lora).items():
        if path not in known:
            raise ValueError(f"qwenimage export: LoRA on {path!r} has no ComfyUI Qwen-Image name")
        pack(out, kohya_name(path), m.down.float(), m.up.float(), m.alpha)
    return out


def to_diffusers(lora: Mapping[str, Mapping[str, LoraModule]]) -> dict[str, torch.Tensor]:
    """``transformer.<path>.lora_A/B.weight`` with alpha/rank folded into lora_B (exact in every loader)."""
    out: dict[str, torch.Tensor] = {}
    for path, p in _only_transformer(lora).items():
        scale = float(p.alpha) / p.down.shape[0]
        out[f"transformer.{path}.lora_A.weight"] = p.down.float().detach().clone().contiguous()
        out[f"transformer.{path}.lora_B.weight"] = (p.up.float() * scale).contiguous()
    return out


def comfy_module_names(num_layers: int) -> list[str]:
    """Every ComfyUI module name lorakit can export for a model of this depth, sorted."""
    return sorted(kohya_name(p) for p, _k in module_table(num_layers))
