"""FLUX.2 prompt embeddings: hidden states of three decoder layers, stacked along the width.

Klein (Qwen3-4B / Qwen3-8B): the prompt is wrapped in Qwen3's chat template as one user turn with the assistant
turn opened and thinking switched off, padded to 512 tokens, and the hidden states after layers 9, 18 and 27 are
concatenated per token (diffusers' ``Flux2KleinPipeline._get_qwen3_prompt_embeds``). dev (Mistral Small 3.x): a
system turn with BFL's system message and the user turn, no generation prompt, layers 10, 20, 30
(``Flux2Pipeline._get_mistral_3_small_prompt_embeds``). The padding tokens' states are kept: the transformer attends
to all 512 positions, unmasked, exactly as the pipelines run it.

Klein's tokenizer: ``model.tokenizer_dir``, a diffusers folder's ``tokenizer/``, else lorakit's shipped Qwen3 tokenizer
(:func:`lorakit.models.tokenizers.qwen_tokenizer`); dev's (Mistral) is not shipped.
:func:`lorakit.models.tokenizers.tiny_qwen_tokenizer` builds a small tokenizer of the real class for tests and the toy
world (shared with Z-Image).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

# the tiny Qwen tokenizer and Qwen3 template are shared with Z-Image (lorakit/models/tokenizers.py)
from lorakit.models.tokenizers import QWEN3_SPECIALS, TINY_QWEN3_TEMPLATE, tiny_qwen_tokenizer  # noqa: F401

from . import configs

# what Qwen3's chat template renders for one user turn, add_generation_prompt=True, enable_thinking=False
QWEN3_TURN = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# BFL's system message for FLUX.2 dev's prompt encoding (flux2/system_messages.py; the line break is part of it)
DEV_SYSTEM_MESSAGE = ("You are an AI that reasons about image descriptions. You give structured responses focusing on "
                      "object relationships, object\nattribution and actions without speculation.")


def qwen3_texts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """The chat-formatted text of each prompt: the tokenizer's own template when it has one, else Qwen3's."""
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=False) for p in prompts]
    return [QWEN3_TURN.format(prompt=p) for p in prompts]


def stack_layers(hidden_states: Sequence[torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """[B, L, H] states of ``layers`` -> [B, L, len(layers)·H], layer-major per token (as the pipelines)."""
    out = torch.stack([hidden_states[k] for k in layers], dim=1)
    b, n, length, h = out.shape
    return out.permute(0, 2, 1, 3).reshape(b, length, n * h)


def check_depth(model: Any, layers: Sequence[int], where: str) -> None:
    n = int(model.config.num_hidden_layers)
    if max(layers) > n:
        from lorakit.errors import ModelLoadError
        raise ModelLoadError(f"{where}: the text encoder has {n} layers; FLUX.2 takes hidden states {tuple(layers)}")


def encode_qwen3(model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int = configs.MAX_TEXT_TOKENS,
                 layers: Sequence[int] = configs.QWEN3_LAYERS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt embeddings [B, L, 3H], input ids [B, L], attention mask [B, L]) for Klein."""
    check_depth(model, layers, "text_encoder")
    tok = tokenizer(qwen3_texts(tokenizer, prompts), return_tensors="pt", padding="max_length", truncation=True,
                    max_length=max_length)
    device = next(model.parameters()).device
    out = model(input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device),
                output_hidden_states=True, use_cache=False)
    return stack_layers(out.hidden_states, layers), tok["input_ids"], tok["attention_mask"]


def dev_messages(prompts: Sequence[str]) -> list[list[dict[str, Any]]]:
    """FLUX.2 dev's conversations: BFL's system message, then the prompt ([IMG] markers removed, as diffusers)."""
    return [[{"role": "system", "content": [{"type": "text", "text": DEV_SYSTEM_MESSAGE}]},
             {"role": "user", "content": [{"type": "text", "text": p.replace("[IMG]", "")}]}] for p in prompts]


def encode_mistral(model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int = configs.MAX_TEXT_TOKENS,
                   layers: Sequence[int] = configs.MISTRAL_LAYERS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt embeddings [B, L, 3H], input ids, attention mask) for dev (Mistral Small 3.x)."""
    check_depth(model, layers, "text_encoder")
    tok = tokenizer.apply_chat_template(dev_messages(prompts), add_generation_prompt=False, tokenize=True,
                                        return_dict=True, return_tensors="pt", padding="max_length", truncation=True,
                                        max_length=max_length)
    device = next(model.parameters()).device
    out = model(input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device),
                output_hidden_states=True, use_cache=False)
    return stack_layers(out.hidden_states, layers), tok["input_ids"], tok["attention_mask"]


def text_position_ids(length: int) -> torch.Tensor:
    """[L, 4] (t, h, w, l) = (0, 0, 0, i) for the i-th text token (``Flux2KleinPipeline._prepare_text_ids``)."""
    ids = torch.zeros(length, 4, dtype=torch.int64)
    ids[:, 3] = torch.arange(length)
    return ids
