"""The LoRA module names full-size SD3.5 models accept (``lorakit inspect``, ``verify``, ``convert``), per size.

Derived from the module table (:func:`.convert.module_table`) of each released size: kohya / ComfyUI
``lora_unet_<original path>`` (fused qkv), ``diffusion_model.<original path>`` and ``transformer.<diffusers path>``
(diffusers / PEFT; ComfyUI's SD3 key map), and the text-encoder names sd-scripts writes when it trains them
(``lora_te1_`` CLIP-L, ``lora_te2_`` CLIP-G, ``lora_te3_`` T5-XXL)."""

from __future__ import annotations

from functools import lru_cache

from . import configs

SIZES = ("large", "medium", "sd3-medium")
_CLIP_PARTS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")
_T5_PARTS = ("layer_0_SelfAttention_q", "layer_0_SelfAttention_k", "layer_0_SelfAttention_v", "layer_0_SelfAttention_o",
             "layer_1_DenseReluDense_wi_0", "layer_1_DenseReluDense_wi_1", "layer_1_DenseReluDense_wo")


def _dims(size: str) -> tuple[int, tuple[int, ...]]:
    cfg = configs.transformer_config(size)
    return int(cfg["num_layers"]), tuple(cfg["dual_attention_layers"])


@lru_cache(maxsize=None)
def size_universe(size: str) -> frozenset[str]:
    from .convert import module_table
    names: set[str] = set()
    for m in module_table(*_dims(size)):
        names |= {"lora_unet_" + m.original.replace(".", "_"), "diffusion_model." + m.original}
        names |= {f"transformer.{p}" for p in m.parts}
    names |= {f"lora_te1_text_model_encoder_layers_{i}_{p}" for i in range(12) for p in _CLIP_PARTS}
    names |= {f"lora_te2_text_model_encoder_layers_{i}_{p}" for i in range(32) for p in _CLIP_PARTS}
    names |= {f"lora_te3_encoder_block_{i}_{p}" for i in range(24) for p in _T5_PARTS}
    return frozenset(names)


@lru_cache(maxsize=1)
def lora_key_universe() -> frozenset[str]:
    """Names any SD3 size accepts (large's 38 blocks hold medium's indices; medium adds attn2)."""
    return frozenset().union(*(size_universe(s) for s in SIZES))


def lora_sizes(names: set[str], out_widths: dict[str, int]) -> list[str]:
    """The full-size models a LoRA fits: every name known to the size and, where the file tells the output width of
    an attention output projection, that width equal to the size's (large 2432, medium 1536)."""
    widths = {w for n, w in out_widths.items() if n.endswith(("_attn_proj", ".attn.to_out.0", ".attn.to_add_out"))}
    width = {"large": 2432, "medium": 1536, "sd3-medium": 1536}
    return [s for s in SIZES if names <= size_universe(s) and (not widths or widths == {width[s]})]


def lora_keymap(transformer=None, *text_encoders):
    """The LoRA tools' key map of a loaded model (``network.weights``: a run's transformer and the CLIPs it trains),
    widths from its Linears; without one, :func:`full_lora_keymap`'s."""
    if transformer is None:
        return full_lora_keymap()
    import torch

    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys

    from .convert import module_table
    named = {n.removesuffix(".base_layer"): m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    c = transformer.config
    mods = []
    for m in module_table(int(c.num_layers), tuple(c.dual_attention_layers or ())):
        if m.swap or not all(p in named for p in m.parts):
            continue
        mods.append(BaseModule("denoiser", m.original, m.parts, sum(int(named[p].out_features) for p in m.parts),
                               int(named[m.parts[0]].in_features), parts_rule="equal" if len(m.parts) == 3 else "",
                               checkpoint_key=m.original + ".weight"))
    for comp, te in zip(("te1", "te2"), text_encoders):
        for path, mod in te.named_modules():
            path = path.removesuffix(".base_layer")
            if isinstance(mod, torch.nn.Linear) and ".layers." in path and path.endswith(_TE_PARTS):
                native = path if path.startswith("text_model.") else "text_model." + path
                mods.append(BaseModule(comp, native, (native,), int(mod.out_features), int(mod.in_features),
                                       checkpoint_key=native + ".weight"))
    base = full_lora_keymap()
    return FamilyKeys("sd3", tuple(mods), base.kohya_prefix, base.diffusers_prefix, base.comfy_prefix,
                      base.checkpoint_prefix)


_TE_PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def size_keymap(depth: int = 38, dual_layers: tuple[int, ...] = (), width: int = 2432,
                attn2_layers: tuple[int, ...] = ()):
    """The LoRA tools' :class:`~lorakit.lora.formats.keymap.FamilyKeys` of the SD3 transformer (defaults: large).
    ``attn2_layers``: blocks whose ``attn2`` modules are listed too (medium's), at large's modulation width. The
    last block's caption modulation is left out: its original rows are (shift, scale), diffusers' (scale,
    shift), a reordering the tools' row rules cannot say (lorakit's own export handles it)."""
    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys

    from .convert import module_table
    hidden = 4 * width
    mods = []
    for m in module_table(depth, tuple(dual_layers) + tuple(attn2_layers)):
        if m.swap:
            continue
        leaf = m.original.rsplit(".", 2)[-2:]
        mod = 9 if ".x_block." in m.original and int(m.original.split(".")[1]) in dual_layers else 6
        out = {"qkv": 3 * width, "fc1": hidden, "1": mod * width}.get(leaf[-1], width)
        inp = hidden if leaf[-1] == "fc2" else width
        mods.append(BaseModule("denoiser", m.original, m.parts, out, inp, parts_rule="equal" if len(m.parts) == 3
                               else "", checkpoint_key=m.original + ".weight"))
    for comp, layers, w in (("te1", 12, 768), ("te2", 32, 1280)):    # CLIP-L / CLIP-G (sd-scripts' lora_te1_/te2_)
        for i in range(layers):
            for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                         "mlp.fc2"):
                native = f"text_model.encoder.layers.{i}.{part}"
                out = 4 * w if part == "mlp.fc1" else w
                mods.append(BaseModule(comp, native, (native,), out, 4 * w if part == "mlp.fc2" else w,
                                       checkpoint_key=native + ".weight"))
    return FamilyKeys("sd3", tuple(mods),
                      kohya_prefix={"denoiser": "lora_unet_", "te1": "lora_te1_", "te2": "lora_te2_"},
                      diffusers_prefix={"denoiser": "transformer.", "te1": "text_encoder.", "te2": "text_encoder_2."},
                      comfy_prefix={"denoiser": "diffusion_model.", "te1": "text_encoders.clip_l.transformer.",
                                    "te2": "text_encoders.clip_g.transformer."},
                      checkpoint_prefix={"denoiser": "model.diffusion_model.",
                                         "te1": "text_encoders.clip_l.transformer.",
                                         "te2": "text_encoders.clip_g.transformer."})


@lru_cache(maxsize=1)
def full_lora_keymap():
    """Large's modules plus medium's ``attn2`` (blocks 0-12); checked against a base file, its shapes decide."""
    return size_keymap(attn2_layers=configs.MEDIUM_DUAL_LAYERS)
