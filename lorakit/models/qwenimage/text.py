"""Qwen-Image prompt features: Qwen2.5-VL-7B's last hidden state under the pipeline's template, template dropped.

As diffusers' ``QwenImagePipeline._get_qwen_prompt_embeds``: each prompt is put into the fixed template (a system
turn asking to describe the image, the prompt as the user turn, the assistant turn opened), tokenized with padding
to the longest and truncation at 1024 + 34 tokens, run through the text encoder with the attention mask, and the
last hidden state kept; of each prompt's real (unmasked) tokens the first 34 (the system turn and
``<|im_start|>user\\n``) are dropped; the rest is padded with zeros and a 0/1 mask, and ``encode_prompt`` cuts both to
``max_sequence_length`` (512 by default).

The pipeline runs ``Qwen2_5_VLForConditionalGeneration``; for text alone its language model
(``Qwen2_5_VLTextModel``) gives the same hidden states (text positions on all three rotary axes), so lorakit builds
only that: the vision tower (0.7 B) and the LM head (0.5 B) are never read. lorakit keeps the features padded to a
fixed ``max_length`` (so captions cache and batch) and cuts them to the batch's longest caption right before the
transformer (``adapter._forward``), which is the pipeline's input.

Tokenizer: ``model.tokenizer_dir``, a diffusers folder's ``tokenizer/``, else lorakit's shipped Qwen2.5-VL tokenizer
(:func:`lorakit.models.tokenizers.qwen_tokenizer`). Tests and the toy use :func:`tiny_tokenizer`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from . import configs


def prompt_texts(prompts: Sequence[str]) -> list[str]:
    return [configs.PROMPT_TEMPLATE.format(p) for p in prompts]


def encode(model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int = configs.MAX_TEXT_TOKENS
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [B, max_length, H], mask [B, max_length] int64): the pipeline's prompt_embeds and
    prompt_embeds_mask, zero-padded (or cut) to ``max_length``."""
    tok = tokenizer(prompt_texts(prompts), max_length=configs.TOKENIZER_MAX_LENGTH + configs.DROP_IDX, padding=True,
                    truncation=True, return_tensors="pt")
    device = next(model.parameters()).device
    mask = tok["attention_mask"].to(device)
    hidden = model(input_ids=tok["input_ids"].to(device), attention_mask=mask, output_hidden_states=True
                   ).hidden_states[-1]
    width = hidden.shape[-1]
    out = hidden.new_zeros(len(prompts), max_length, width)
    keep = torch.zeros(len(prompts), max_length, dtype=torch.int64)
    for i in range(len(prompts)):
        real = hidden[i][mask[i].bool()][configs.DROP_IDX:][:max_length]
        out[i, :real.shape[0]] = real
        keep[i, :real.shape[0]] = 1
    return out, keep


def trim(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Cut padded features to the longest caption of the batch; the mask becomes None when every token is real (as
    ``encode_prompt`` does)."""
    n = max(int(mask.sum(dim=1).max()), 1)
    embeds, mask = embeds[:, :n], mask[:, :n]
    return embeds, (None if bool(mask.all()) else mask)


def tiny_tokenizer(words: Sequence[str] = ()) -> Any:
    """A small tokenizer of the real class (``Qwen2TokenizerFast``) in which the template's system turn is 34 tokens,
    as in Qwen2.5-VL's vocabulary (one token per word, punctuation and newline); tests and the toy only."""
    import re

    from lorakit.models.tokenizers import tiny_qwen_tokenizer
    head = configs.PROMPT_TEMPLATE.split("{}")[0]
    template_words = sorted({w for w in re.findall(r"[A-Za-z]+", head)} - {"system", "user", "Describe"})
    return tiny_qwen_tokenizer(sorted(set(template_words) | set(words)), bare=("system", "user", "assistant",
                                                                              "Describe"))
