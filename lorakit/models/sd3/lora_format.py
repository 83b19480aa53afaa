"""SD3 / SD3.5 LoRA targets and the two file layouts.

Targets: every Linear of the joint blocks, as sd-scripts' ``networks/lora_sd3.py`` (all Linears of its
``SingleDiTBlock``s: attention qkv and proj, attn2 of medium's dual-attention blocks, MLP fc1/fc2 and the adaLN
modulation; not the last block's caption modulation, whose halves are stored in another order), trained on diffusers'
split Linears (``attn.to_q`` ...). ``network.module_ranks`` types, as sd-scripts'
``x_attn_dim`` ... ``context_mod_dim``: ``img_attn``, ``img_mlp``, ``img_mod`` (the image stream, ``x_block``) and
``txt_attn``, ``txt_mlp``, ``txt_mod`` (the caption stream, ``context_block``); 0 leaves a type out.

kohya / ComfyUI layout (``save.format = "kohya"``): ``lora_unet_<original module path, dots as underscores>``, e.g.
``lora_unet_joint_blocks_0_x_block_attn_qkv``, with ``lora_down`` / ``lora_up`` / ``alpha``: the names sd-scripts
writes (its ``LORA_PREFIX_SD3 = "lora_unet"`` + the MMDiT module path) and ComfyUI maps (``model_lora_keys_unet``:
``lora_unet_`` + every ``diffusion_model.*.weight`` path). q, k and v are fused into ``qkv`` exactly (block-diagonal
up, FLUX.1's fusing maths); the last block's caption modulation has its output halves swapped (the original stores
shift, scale; diffusers scale, shift).

diffusers layout: ``transformer.<diffusers path>.lora_A/lora_B.weight`` with alpha/rank folded into lora_B; read by
``StableDiffusion3Pipeline.load_lora_weights`` and by ComfyUI (its SD3 key map has ``transformer.<diffusers path>``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from lorakit.models.base import LoraModule
from lorakit.models.common import module_ranks

from .convert import module_table, swap_halves

MODULE_TYPES = ("img_attn", "img_mlp", "img_mod", "txt_attn", "txt_mlp", "txt_mod")


def transformer_targets(network: Any, depth: int, dual_layers: Iterable[int] = ()) -> dict[str, int]:
    """diffusers module path -> rank, from NetworkCfg (rank, module_ranks)."""
    ranks = module_ranks(network, MODULE_TYPES, "SD3")
    out: dict[str, int] = {}
    for m in module_table(depth, dual_layers):
        if m.swap:     # the last block's caption modulation (2 of 6 outputs, reordered): the LoRA tools' key map
            continue   # cannot say its row order, so files with it would not convert or warm-start; not trained
        rank = int(ranks.get(m.kind, network.rank))
        if rank:
            out.update(dict.fromkeys(m.parts, rank))
    return out


def kohya_name(original_module: str) -> str:
    return "lora_unet_" + original_module.replace(".", "_")


def to_comfy(lora: Mapping[str, Mapping[str, LoraModule]], out_features: Mapping[str, int], depth: int,
             dual_layers: Iterable[int] = ()) -> dict[str, torch.Tensor]:
    """component -> path -> LoraModule  =>  the kohya / ComfyUI SD3 state dict (original names, q/k/v fused)."""
    from lorakit.models.kohya_pack import fuse, pack  # the exact fusing maths shared with FLUX.1
    unknown = sorted(set(lora) - {"transformer"})
    if unknown:
        raise ValueError(f"sd3 export: unknown LoRA component {unknown[0]!r} (expected transformer)")
    trained = dict(lora.get("transformer", {}))
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for m in module_table(depth, dual_layers):
        mods = [trained.get(p) for p in m.parts]
        if all(x is None for x in mods):
            continue
        used.update(p for p in m.parts if p in trained)
        if len(m.parts) == 1:
            down, up, alpha = mods[0].down.float(), mods[0].up.float(), mods[0].alpha
        else:
            down, up, alpha = fuse(mods, [int(out_features[p]) for p in m.parts])
        pack(out, kohya_name(m.original), down, swap_halves(up) if m.swap else up, alpha)
    left = sorted(set(trained) - used)
    if left:
        raise ValueError(f"sd3 export: LoRA on {left[0]!r} has no kohya / ComfyUI SD3 name")
    return out


def to_diffusers(lora: Mapping[str, Mapping[str, LoraModule]]) -> dict[str, torch.Tensor]:
    """``transformer.<path>.lora_A/B.weight`` with alpha/rank folded into lora_B (exact in every loader)."""
    out: dict[str, torch.Tensor] = {}
    for comp, mods in lora.items():
        if comp != "transformer":
            raise ValueError(f"sd3 export: unknown LoRA component {comp!r} (expected transformer)")
        for path, p in mods.items():
            scale = float(p.alpha) / p.down.shape[0]
            out[f"transformer.{path}.lora_A.weight"] = p.down.float().detach().clone().contiguous()
            out[f"transformer.{path}.lora_B.weight"] = (p.up.float() * scale).contiguous()
    return out


def kohya_module_names(depth: int, dual_layers: Iterable[int] = ()) -> list[str]:
    """Every kohya / ComfyUI module name lorakit can export for a model of this depth, sorted."""
    return sorted(kohya_name(m.original) for m in module_table(depth, dual_layers))


TE_KOHYA = {"te1": "lora_te1_", "te2": "lora_te2_"}                   # sd-scripts' LORA_PREFIX_TEXT_ENCODER_CLIP_L/G
TE_DIFFUSERS = {"te1": "text_encoder.", "te2": "text_encoder_2."}       # StableDiffusion3Pipeline's components


def text_encoder_names(lora: Mapping[str, Mapping[str, LoraModule]], fmt: str) -> dict[str, torch.Tensor]:
    """CLIP-L / CLIP-G LoRA (components te1 / te2): kohya ``lora_te1_text_model_encoder_layers_0_self_attn_q_proj``
    (sd-scripts' names, ComfyUI's clip_l / clip_g map) with a real alpha, or diffusers
    ``text_encoder(_2).text_model.…lora_A/B.weight`` with alpha/rank folded into B."""
    out: dict[str, torch.Tensor] = {}
    for comp, mods in lora.items():
        if comp not in TE_KOHYA:
            raise ValueError(f"sd3 export: unknown LoRA component {comp!r} (expected transformer, te1, te2)")
        for path, p in mods.items():
            full = path if path.startswith("text_model.") else "text_model." + path   # transformers >= 5.6 paths
            if fmt == "kohya":
                name = TE_KOHYA[comp] + full.replace(".", "_")
                out[f"{name}.lora_down.weight"] = p.down.float().detach().clone().contiguous()
                out[f"{name}.lora_up.weight"] = p.up.float().detach().clone().contiguous()
                out[f"{name}.alpha"] = torch.tensor(float(p.alpha), dtype=torch.float32)
            else:
                scale = float(p.alpha) / p.down.shape[0]
                out[f"{TE_DIFFUSERS[comp]}{full}.lora_A.weight"] = p.down.float().detach().clone().contiguous()
                out[f"{TE_DIFFUSERS[comp]}{full}.lora_B.weight"] = (p.up.float() * scale).contiguous()
    return out
