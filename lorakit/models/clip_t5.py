"""The text encoders several families share: CLIP-L, OpenCLIP bigG and T5-XXL (encoder only).

* :data:`CLIP_L` / :data:`CLIP_G`: transformers ``CLIPTextConfig`` dicts of the CLIP ViT-L/14 text tower (SDXL's TE1,
  SD 1.5's text encoder, SD3's CLIP-L) and of OpenCLIP ViT-bigG/14's (SDXL's TE2, SD3's CLIP-G);
  :func:`t5_config`: google/t5-v1_1-xxl's encoder (FLUX.1, SD3).
* :func:`clip_config`: a CLIP config with the sizes read from the weights; :func:`build_t5`: a frozen
  ``T5EncoderModel`` from an HF-layout file, sizes from the weights.
* :func:`text_encoder_lora_targets`: kohya's CLIP LoRA targets (attention q/k/v/out and MLP fc1/fc2 of each layer).

torch and transformers are imported inside the functions, so the config dicts are light to import.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

from lorakit.errors import ModelLoadError
from lorakit.models.weights import assign_weights, upcast

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["CLIP_L", "CLIP_G", "t5_config", "clip_config", "build_t5", "text_encoder_lora_targets"]

# CLIP ViT-L/14 text tower (SDXL's TE1, SD 1.5's text encoder, SD3's CLIP-L). eos_token_id 2 is what the SDXL repo
# ships: transformers then pools at the argmax token id, i.e. the first <|endoftext|> (49407, the largest id), whatever
# the pad token is.
CLIP_L: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
    "torch_dtype": "float16",
}

# OpenCLIP ViT-bigG/14 text tower (SDXL's TE2, SD3's CLIP-G), with its projection.
CLIP_G: dict[str, Any] = {
    **CLIP_L,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}


def t5_config() -> dict[str, Any]:
    """transformers ``T5Config`` of google/t5-v1_1-xxl, encoder only (what FLUX uses)."""
    return {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": 32128,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "initializer_factor": 1.0,
        "feed_forward_proj": "gated-gelu",
        "is_gated_act": True,
        "dense_act_fn": "gelu_new",
        "tie_word_embeddings": False,
        "is_encoder_decoder": False,
        "use_cache": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def clip_config(sd: dict[str, torch.Tensor], base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a CLIPTextConfig dict) with vocabulary, widths, depth and positions read from the weights (no
    ``text_model.`` prefix); heads re-derived (64 wide) when the shipped count does not divide the width."""
    emb = sd["embeddings.token_embedding.weight"]
    cfg = dict(base)
    hidden = emb.shape[1]
    if hidden != base.get("hidden_size") and hidden % base.get("num_attention_heads", 1):
        cfg["num_attention_heads"] = max(1, hidden // 64)
    cfg.update(vocab_size=emb.shape[0], hidden_size=hidden,
               max_position_embeddings=sd["embeddings.position_embedding.weight"].shape[0],
               intermediate_size=sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
               num_hidden_layers=max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
               + 1)
    return cfg


def build_t5(sd: dict[str, torch.Tensor], dtype: torch.dtype, base: Optional[dict[str, Any]] = None,
             where: str = "t5xxl") -> nn.Module:
    """T5EncoderModel from an HF-layout file (``shared.weight`` or ``encoder.embed_tokens.weight``)."""
    import torch
    from transformers import T5Config, T5EncoderModel
    sd = {k: v for k, v in sd.items() if not k.startswith("decoder.") and k != "lm_head.weight"}
    emb = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    if emb is None or "encoder.block.0.layer.0.SelfAttention.q.weight" not in sd:
        raise ModelLoadError(f"{where}: not a T5 encoder (no shared.weight / encoder.block.0.*)")
    sd["shared.weight"] = emb
    sd.pop("encoder.embed_tokens.weight", None)
    rel = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = rel.shape[1]
    cfg = dict(base or t5_config())
    cfg.update(vocab_size=emb.shape[0], d_model=emb.shape[1], num_heads=heads,
               relative_attention_num_buckets=rel.shape[0],
               d_kv=sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
               d_ff=sd["encoder.block.0.layer.1.DenseReluDense.wo.weight"].shape[1],
               num_layers=max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.block\.(\d+)\.", k))) + 1)
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**{k: v for k, v in cfg.items() if k != "architectures"}))
    sd = upcast(sd, dtype)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    model = assign_weights(model, sd, where, dtype)
    model.encoder.embed_tokens.weight = model.shared.weight       # keep the tie after assign
    return model


_TE_SUFFIXES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "mlp.fc1", "mlp.fc2")


def text_encoder_lora_targets(te: nn.Module, rank: int) -> dict[str, int]:
    """CLIP attention q/k/v/out_proj and MLP fc1/fc2 of every encoder layer (not the text projection)."""
    from torch import nn

    return {name: rank for name, module in te.named_modules()
            if isinstance(module, nn.Linear) and ".encoder.layers." in f".{name}" and name.endswith(_TE_SUFFIXES)}
