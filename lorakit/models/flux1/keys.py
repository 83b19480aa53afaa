"""Every kohya LoRA module name a full-size FLUX.1 base accepts (for `lorakit inspect` and export checks):
the 304 fused block modules, CLIP-L (lora_te1_) and T5-XXL (lora_te3_) layer names."""

from __future__ import annotations

from functools import lru_cache

from lorakit.models.flux1.lora_format import kohya_module_names

CLIP_LAYERS = 12
T5_LAYERS = 24


@lru_cache(maxsize=1)
def lora_key_universe() -> frozenset[str]:
    names = set(kohya_module_names(19, 38))
    for i in range(CLIP_LAYERS):
        for part in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                     "mlp_fc1", "mlp_fc2"):
            names.add(f"lora_te1_text_model_encoder_layers_{i}_{part}")
    for i in range(T5_LAYERS):
        for part in ("layer_0_SelfAttention_q", "layer_0_SelfAttention_k", "layer_0_SelfAttention_v",
                     "layer_0_SelfAttention_o", "layer_1_DenseReluDense_wi_0", "layer_1_DenseReluDense_wi_1",
                     "layer_1_DenseReluDense_wo"):
            names.add(f"lora_te3_encoder_block_{i}_{part}")
    return frozenset(names)


# ------------------------------------------------------------------------------- LoRA tools' key map

def lora_keymap(transformer=None, clip=None, t5=None):
    """The LoRA tools' :class:`~lorakit.lora.formats.keymap.FamilyKeys` of FLUX.1: every Linear of the
    transformer's module table (fused qkv / linear1 with their diffusers parts), CLIP-L and T5-XXL, with
    shapes and BFL keys. Without models, the full-size ones are built on the meta device."""
    import torch

    from lorakit.lora.formats.keymap import BaseModule, FamilyKeys
    from lorakit.models.flux1.convert import module_table

    if transformer is None:
        transformer, clip, t5 = _meta_models()
    named = dict(transformer.named_modules())
    nd = len(getattr(transformer, "transformer_blocks", []))
    ns = len(getattr(transformer, "single_transformer_blocks", []))
    mods = []
    for m in module_table(nd, ns, guidance=True):
        if not all(p in named for p in m.parts):
            continue
        layers = [named[p] for p in m.parts]
        rule = "" if len(m.parts) == 1 else ("equal" if len(m.parts) == 3 else "in3_rest")
        mods.append(BaseModule("denoiser", m.bfl, m.parts, sum(int(x.out_features) for x in layers),
                               int(layers[0].in_features), parts_rule=rule, checkpoint_key=m.bfl + ".weight"))
    for comp, enc in (("te1", clip), ("te3", t5)):
        if enc is None:
            continue
        for path, mod in enc.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            if comp == "te1" and not (".layers." in path and path.endswith(CLIP_PARTS)):
                continue
            if comp == "te3" and not path.startswith("encoder.block."):
                continue
            native = path if comp == "te3" or path.startswith("text_model.") else "text_model." + path
            mods.append(BaseModule(comp, native, (native,), int(mod.out_features), int(mod.in_features),
                                   checkpoint_key=native + ".weight"))
    return FamilyKeys(
        "flux1", tuple(mods),
        kohya_prefix={"denoiser": "lora_unet_", "te1": "lora_te1_", "te3": "lora_te3_"},
        diffusers_prefix={"denoiser": "transformer.", "te1": "text_encoder.", "te3": "text_encoder_2."},
        comfy_prefix={"denoiser": "diffusion_model.", "te1": "text_encoders.clip_l.transformer.",
                      "te3": "text_encoders.t5xxl.transformer."},
        checkpoint_prefix={"denoiser": "", "te1": "", "te3": ""})


CLIP_PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


@lru_cache(maxsize=1)
def full_lora_keymap():
    return lora_keymap()


def _meta_models():
    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lorakit.models.flux1 import configs

    def clean(cfg):
        return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype")}

    with torch.device("meta"):
        return (FluxTransformer2DModel(**clean(configs.transformer_config("dev"))),
                CLIPTextModel(CLIPTextConfig(**clean(configs.clip_l_config()))),
                T5EncoderModel(T5Config(**clean(configs.t5_config()))))
