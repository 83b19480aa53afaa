"""Z-Image prompt embeddings: Qwen3-4B's second-to-last hidden state of the real (unpadded) tokens.

As diffusers' ``ZImagePipeline._encode_prompt``: the prompt is one user turn of Qwen3's chat template with the
assistant turn opened (``add_generation_prompt=True, enable_thinking=True``: no empty thinking block, unlike FLUX.2
Klein), padded to ``max_length`` (512) and truncated there; the text encoder (``Qwen3Model``) runs with the attention
mask and ``hidden_states[-2]`` is kept. The pipeline hands the transformer only the unpadded tokens of each prompt
(a list of [L_i, 2560]); lorakit keeps the padded [B, max_length, 2560] plus the mask so captions cache and batch,
and drops the padding again right before the transformer (``adapter._forward``), which gives the same input.

Tokenizer: ``model.tokenizer_dir``, a diffusers folder's ``tokenizer/``, else lorakit's shipped Qwen3 tokenizer
(:func:`lorakit.models.tokenizers.qwen_tokenizer`). Tests and the toy use
:func:`lorakit.models.tokenizers.tiny_qwen_tokenizer`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from . import configs

# Qwen3's chat template for one user turn with add_generation_prompt=True and thinking enabled (the default)
QWEN3_USER_TURN = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def prompt_texts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """The chat-formatted text of each prompt: the tokenizer's own template when it has one, else Qwen3's."""
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=True) for p in prompts]
    return [QWEN3_USER_TURN.format(prompt=p) for p in prompts]


def encode(model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int = configs.MAX_TEXT_TOKENS
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(embeddings [B, L, H] of hidden_states[-2], input ids [B, L], attention mask [B, L] int64), L = max_length."""
    tok = tokenizer(prompt_texts(tokenizer, prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="pt")
    device = next(model.parameters()).device
    mask = tok["attention_mask"]
    out = model(input_ids=tok["input_ids"].to(device), attention_mask=mask.to(device).bool(),
                output_hidden_states=True)
    return out.hidden_states[-2], tok["input_ids"], mask.to(torch.int64)


def unpad(embeds: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """[B, L, H] + [B, L] -> the pipeline's list of [L_i, H] (the real tokens of each prompt)."""
    return [embeds[i][mask[i].bool()] for i in range(embeds.shape[0])]
