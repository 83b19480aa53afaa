"""The LoRA module names full-size FLUX.2 models accept (``lorakit inspect``, export checks), per size.

Derived from the transformers themselves, built on the meta device from the shipped configs: ComfyUI / kohya /
musubi-tuner ``lora_unet_`` + the underscored BFL path of each Linear weight, ai-toolkit's
``diffusion_model.<BFL path>`` and diffusers/PEFT ``transformer.<diffusers path>``."""

from __future__ import annotations

from functools import lru_cache

from . import configs


@lru_cache(maxsize=None)
def size_universe(size: str) -> frozenset[str]:
    """ComfyUI (``lora_unet_*``) and diffusers (``transformer.*``) names of every Linear of a full-size model."""
    import torch
    from diffusers import Flux2Transformer2DModel

    from .convert import diffusers_to_bfl
    cfg = {k: v for k, v in configs.transformer_config(size).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**cfg)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    bfl = {k.removesuffix(".weight") for k in diffusers_to_bfl(model.state_dict()) if k.endswith(".weight")
           and not k.endswith("norm.scale")}
    return frozenset({"lora_unet_" + n.replace(".", "_") for n in bfl} | {f"diffusion_model.{n}" for n in bfl}
                     | {f"transformer.{n}" for n in linears})


@lru_cache(maxsize=1)
def lora_key_universe() -> frozenset[str]:
    """Names any FLUX.2 size accepts (dev's depths contain both Klein sizes' block indices)."""
    return frozenset().union(*(size_universe(s) for s in configs.SIZES))


def fitting_sizes(names: set[str]) -> list[str]:
    """The sizes whose universe holds every one of ``names`` (widths aside: names only)."""
    return [s for s in configs.SIZES if names <= size_universe(s)]


def lora_sizes(names: set[str], out_widths: dict[str, int]) -> list[str]:
    """The full-size FLUX.2 models a LoRA fits: every name known to the size and, where the file tells the output
    width of a module that writes the hidden state (attention / single-block output), that width equal to the
    size's hidden width (Klein 4B 3072, Klein 9B 4096, dev 6144). ``out_widths``: module name -> rows of its up."""
    hidden_of = {v: k for k, v in configs.HIDDEN_TO_SIZE.items()}
    writers = ("_img_attn_proj", "_txt_attn_proj", "_linear2", ".attn.to_out.0", ".attn.to_add_out", ".attn.to_out")
    widths = {w for n, w in out_widths.items() if n.endswith(writers)}
    return [s for s in fitting_sizes(names) if not widths or widths == {hidden_of[s]}]


# ------------------------------------------------------------------------------- LoRA tools' key map

def lora_keymap(transformer=None, size: str = "klein-4b"):
    """The LoRA tools' :class:`~lorakit.lora.formats.keymap.FamilyKeys` of one FLUX.2 transformer: the trainable
    block Linears (80 on Klein 4B, 112 on Klein 9B, 160 on dev; the double blocks' fused ``qkv`` with its three
    diffusers parts) and the 1:1 Linears outside the blocks, under BFL and diffusers names with shapes and
    single-file keys. Without a model, the full-size ``size`` is built on the meta device. FLUX.2's
    ``final_layer.adaLN_modulation.1`` (its halves swapped against diffusers' ``norm_out.linear``) is left out: a
    LoRA on it is kept by name, not converted."""
    import torch

    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys

    from .convert import _GLOBAL_NAMES
    from .lora_format import module_table

    if transformer is None:
        cfg = {k: v for k, v in configs.transformer_config(size).items() if not k.startswith("_")}
        with torch.device("meta"):
            from diffusers import Flux2Transformer2DModel
            transformer = Flux2Transformer2DModel(**cfg)
        variant = size
    else:
        variant = ""
    named = dict(transformer.named_modules())
    nd = len(transformer.transformer_blocks)
    ns = len(transformer.single_transformer_blocks)
    table = [(bfl, parts) for bfl, parts, _kind in module_table(nd, ns)]
    table += [(bfl, (dif,)) for bfl, dif in _GLOBAL_NAMES.items() if dif in named]
    mods = []
    for bfl, parts in table:
        layers = [named[p] for p in parts]
        mods.append(BaseModule("denoiser", bfl, parts, sum(int(x.out_features) for x in layers),
                               int(layers[0].in_features), parts_rule="equal" if len(parts) == 3 else "",
                               checkpoint_key=bfl + ".weight"))
    return FamilyKeys("flux2", tuple(mods), kohya_prefix={"denoiser": "lora_unet_"},
                      diffusers_prefix={"denoiser": "transformer."}, comfy_prefix={"denoiser": "diffusion_model."},
                      checkpoint_prefix={"denoiser": ""}, variant=variant)


@lru_cache(maxsize=1)
def full_lora_keymap() -> tuple:
    """One key map per full size (Klein 4B, Klein 9B, dev): the LoRA tools pick the one a file's names and shapes fit."""
    return tuple(lora_keymap(size=s) for s in configs.SIZES)
