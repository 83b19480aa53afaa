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
