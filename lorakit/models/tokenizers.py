"""Tokenizers built without the Hub.

CLIP (SDXL's two encoders, FLUX's CLIP-L) and T5 (FLUX) tokenizers come from, in order: a folder the user
names, else the files next to a diffusers model, else lorakit's package data. The package data are the
CLIP BPE merge list that open-clip-torch ships (read as data, never imported: importing open_clip needs
torchvision) and T5's SentencePiece model. From the merge list we derive the exact vocabulary of the HF
``openai/clip-vit-large-patch14`` tokenizer: 256 byte symbols, the same 256 with the end-of-word suffix,
one entry per merge, then the two specials — 49,408 ids in all.

transformers 5 pitfall: ``CLIPTokenizer(vocab_file=...)`` silently builds an empty vocabulary, so we pass
the vocabulary and merges in memory (``vocab=`` / ``merges=``) or load a folder with ``from_pretrained``.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

from lorakit.fsutil import write_json, write_text

CLIP_MAX_LENGTH = 77
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2  # the merge count open_clip uses (vocabulary size 49,408 with the specials)
_ASSETS = "lorakit.assets.tokenizers"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2-style byte-level BPE uses for raw bytes, in id order.

    Printable Latin-1 bytes stand for themselves; the remaining bytes are given code points from 256 up,
    in byte order. CLIP's vocabulary starts with these symbols in exactly this order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    keep = set(printable)
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in keep:
            table[b] = chr(256 + extra)
            extra += 1
    order = printable + [b for b in range(256) if b not in keep]
    return [table[b] for b in order]


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's vocabulary (token → id) and merge list, derived from the shipped BPE file."""
    blob = resources.files(_ASSETS).joinpath("clip/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(blob).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:1 + _N_MERGES])  # line 0 is a version header
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [CLIP_BOS, CLIP_EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != 49408:
        raise RuntimeError(f"lorakit's CLIP vocabulary data is damaged: {len(vocab)} entries instead of 49408")
    return vocab, merges  # type: ignore[return-value]


def write_clip_tokenizer_files(folder: Path, pad_token: str = CLIP_EOS) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` (a diffusers tokenizer folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    write_text(folder / "merges.txt", "\n".join(merge_lines) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_MAX_LENGTH, "bos_token": CLIP_BOS,
        "eos_token": CLIP_EOS, "unk_token": CLIP_EOS, "pad_token": pad_token, "do_lower_case": True,
        "clean_up_tokenization_spaces": False, "add_prefix_space": False,
    }
    write_json(folder / "tokenizer_config.json", config)
    return folder


def _check_folder(folder: Path, needed: tuple[str, ...], what: str) -> None:
    """A user-named tokenizer folder must exist and hold one of the usual files."""
    if not folder.is_dir():
        raise _error(f"model.tokenizer_dir: {folder} is not a folder; point it at a {what} tokenizer folder")
    if not any((folder / n).is_file() for n in needed):
        raise _error(f"model.tokenizer_dir: {folder} has none of {', '.join(needed)}; "
                     f"point it at a {what} tokenizer folder")


def _error(message: str) -> Exception:
    try:
        from lorakit.errors import ConfigError
        return ConfigError(message)
    except ImportError:  # pragma: no cover - errors.py is part of the package
        return ValueError(message)


def clip_tokenizer(pad_token: str = CLIP_EOS, folder: Optional[Path] = None) -> Any:
    """A CLIP tokenizer (77 tokens). ``folder`` (vocab.json + merges.txt or tokenizer.json) wins if given.

    SDXL's first tokenizer pads with ``<|endoftext|>``; its second (OpenCLIP bigG) pads with ``"!"`` (id 0).
    """
    from transformers import CLIPTokenizer

    if folder is not None:
        folder = Path(folder)
        _check_folder(folder, ("vocab.json", "tokenizer.json"), "CLIP")
        tok = CLIPTokenizer.from_pretrained(str(folder))
    else:
        vocab, merges = clip_vocab_and_merges()
        tok = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token)
    tok.model_max_length = CLIP_MAX_LENGTH  # bare vocab files otherwise give ~1e30 (no truncation)
    return tok


def t5_tokenizer(folder: Optional[Path] = None) -> Any:
    """The T5 v1.1 tokenizer (32,100 ids: 32,000 pieces + 100 sentinels; eos 1, pad 0).

    Converting a bare ``spiece.model`` needs sentencepiece and protobuf (both lorakit dependencies).
    """
    from transformers import T5TokenizerFast

    if folder is not None:
        folder = Path(folder)
        _check_folder(folder, ("spiece.model", "tokenizer.json"), "T5")
        return T5TokenizerFast.from_pretrained(str(folder))
    with resources.as_file(resources.files(_ASSETS).joinpath("t5")) as t5_dir:
        return T5TokenizerFast.from_pretrained(str(t5_dir))


# Qwen3's special tokens and the part of its chat template the image pipelines use (FLUX.2 Klein, Z-Image): one user
# turn, the assistant turn opened, and the empty thinking block only when ``enable_thinking`` is false (as Qwen3's own)
QWEN3_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
TINY_QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")


def tiny_qwen_tokenizer(words: Sequence[str] = (), bare: Sequence[str] = ()) -> Any:
    """A small byte-level BPE tokenizer of the real class (``Qwen2TokenizerFast``) with Qwen3's special tokens and
    the user-turn part of its chat template: 256 byte symbols, one merge chain per word of ``words`` (as a word
    after a space, so the toy world's captions take few tokens) and per string of ``bare`` (as is: "user",
    "assistant", "\n\n" are single tokens in Qwen's vocabulary too), then the specials. Tests and the toy only."""
    from transformers import Qwen2TokenizerFast

    symbols = _byte_symbols()           # GPT-2 byte stand-ins: printable bytes first (as themselves), then the rest
    byte_to_sym = {b: s for b, s in zip(sorted(range(256), key=lambda b: (chr(b) not in symbols, b)), symbols)}
    vocab = {s: i for i, s in enumerate(symbols)}
    merges: list[tuple[str, str]] = []
    for word in [" " + w for w in words] + list(bare):
        pieces = [byte_to_sym[b] for b in word.encode("utf-8")]
        acc = pieces[0]
        for p in pieces[1:]:
            if acc + p not in vocab:
                merges.append((acc, p))
                vocab[acc + p] = len(vocab)
            acc += p
    for s in QWEN3_SPECIALS:
        vocab[s] = len(vocab)
    tok = Qwen2TokenizerFast(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                             pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(QWEN3_SPECIALS[1:])})
    tok.chat_template = TINY_QWEN3_TEMPLATE
    tok.model_max_length = 512
    return tok
