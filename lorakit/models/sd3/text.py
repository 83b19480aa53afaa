"""SD3 prompt embeddings, as diffusers' ``StableDiffusion3Pipeline.encode_prompt`` builds them.

* CLIP-L and CLIP-G (``CLIPTextModelWithProjection``): the prompt padded to 77 tokens (CLIP-L pads with
  ``<|endoftext|>``, bigG with ``!``), no attention mask; the penultimate hidden state (``hidden_states[-2]``) and the
  pooled projection (``text_embeds``) of each.
* The two hidden states concatenated on the width (768 + 1280 = 2048) and zero-padded to T5's width (4096).
* T5-XXL: the prompt padded to ``max_length`` tokens (256 by default), no mask, last hidden state; without T5
  (no file anywhere) zeros of [B, max_length, joint_attention_dim], as the pipeline without ``text_encoder_3``.
* ``prompt_embeds`` = [CLIP | T5] along the sequence: [B, 77 + max_length, 4096]; ``pooled`` = [pooled-L | pooled-G]
  ([B, 2048]).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from . import configs


def clip_embeds(model: Any, tokenizer: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden_states[-2] [B, 77, W], pooled projection [B, P], input ids [B, 77])."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=configs.CLIP_TOKENS, truncation=True,
                    return_tensors="pt")["input_ids"]
    out = model(ids.to(next(model.parameters()).device), output_hidden_states=True)
    return out.hidden_states[-2], out.text_embeds, ids


def t5_embeds(model: Optional[Any], tokenizer: Any, prompts: Sequence[str], max_length: int, width: int,
              like: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(T5 last hidden state [B, max_length, width] or zeros without T5, input ids or None)."""
    if model is None:
        return torch.zeros(len(prompts), max_length, width, dtype=like.dtype, device=like.device), None
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_tensors="pt")["input_ids"]
    return model(ids.to(next(model.parameters()).device))[0], ids


def encode(clip_l: Any, clip_g: Any, t5: Optional[Any], tokenizers: Sequence[Any], prompts: Sequence[str],
           max_length: int = configs.T5_TOKENS, joint_width: int = 4096) -> dict[str, torch.Tensor]:
    """{"prompt_embeds" [B, 77 + max_length, joint_width], "pooled" [B, P_l + P_g]} (the pipeline's encode_prompt),
    plus the ids for checks (``ids_l``, ``ids_g`` and, with T5, ``ids_t5``)."""
    h_l, p_l, ids_l = clip_embeds(clip_l, tokenizers[0], prompts)
    h_g, p_g, ids_g = clip_embeds(clip_g, tokenizers[1], prompts)
    clip = torch.cat([h_l, h_g.to(h_l.device, h_l.dtype)], dim=-1)
    t5_out, ids_t5 = t5_embeds(t5, tokenizers[2], prompts, max_length, joint_width, clip)
    clip = torch.nn.functional.pad(clip, (0, t5_out.shape[-1] - clip.shape[-1]))
    out = {"prompt_embeds": torch.cat([clip, t5_out.to(clip.device, clip.dtype)], dim=-2),
           "pooled": torch.cat([p_l, p_g.to(p_l.device, p_l.dtype)], dim=-1), "ids_l": ids_l, "ids_g": ids_g}
    if ids_t5 is not None:
        out["ids_t5"] = ids_t5
    return out
