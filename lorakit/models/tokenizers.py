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


# Qwen3's special tokens (the toy tokenizers') and the part of its chat template the image pipelines use (FLUX.2 Klein,
# Z-Image): system/user turns, the assistant turn opened, and the empty thinking block only when ``enable_thinking`` is
# false. Without tools these render as Qwen3-4B's / Qwen3-8B's own template does; shipped with the Qwen3 tokenizer.
QWEN3_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
TINY_QWEN3_TEMPLATE = QWEN3_TEMPLATE  # the toy tokenizers carry the same template


# ------------------------------------------------------------------------------------------------ Qwen (shipped)
# Qwen2, Qwen2.5(-VL) and Qwen3 share one byte-level BPE: 151,643 regular tokens (ids = BPE ranks), NFC, this split
# pattern (transformers' Qwen2Tokenizer, torchtune's qwen2/_tokenizer.py), GPT-2's byte stand-ins. They differ in the
# added tokens from id 151643 on. lorakit ships the vocabulary (qwen/qwen_bpe_ranks.bin.gz, see NOTICE.md) and builds
# the tokenizer the pipelines load (Qwen2TokenizerFast) from it in memory, with the added tokens of each variant.
QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
              r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_REGULAR = 151643
# (token, special) from id 151643 on, as the added_tokens of Qwen2.5-VL-7B-Instruct (Qwen-Image's tokenizer/) and of
# Qwen3-4B / Qwen3-8B (FLUX.2 Klein's, Z-Image's) define them; all lstrip/rstrip/single_word false, normalized false.
# Checked against torchtune's QWEN2_5_SPECIAL_TOKENS / QWEN3_SPECIAL_TOKENS (pytorch/torchtune,
# torchtune/models/qwen2_5/_tokenizer.py, qwen3/_tokenizer.py) and a vendored Qwen3-4B tokenizer_config.json
# (akougkas/warpio-cli, warpio-docs/ai-docs/model_cards/qwen3:4b.md): 151643-151656 special, 151657 on not.
QWEN25_ADDED = (("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
                ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
                ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
                ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
                ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
                ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False))
QWEN3_ADDED = QWEN25_ADDED + (("<tool_response>", False), ("</tool_response>", False), ("<think>", False),
                              ("</think>", False))
# variant -> (added tokens, eos, pad, chat template); the configs' additional_special_tokens are the special added
# tokens but <|endoftext|>. Qwen-Image's pipeline writes its own template, so Qwen2.5-VL's chat template is not shipped.
QWEN_VARIANTS = {"qwen2.5-vl": (QWEN25_ADDED, "<|im_end|>", "<|endoftext|>", None),
                 "qwen3": (QWEN3_ADDED, "<|im_end|>", "<|endoftext|>", "qwen3")}
QWEN_VARIANT_NAMES = {"qwen2.5-vl": "Qwen2.5-VL", "qwen3": "Qwen3"}


def _byte_to_symbol() -> dict[int, str]:
    """Raw byte -> its GPT-2 stand-in character (the inverse order of :func:`_byte_symbols`)."""
    symbols = _byte_symbols()
    order = sorted(range(256), key=lambda b: (chr(b) not in symbols, b))  # printable bytes first, then the rest
    return dict(zip(order, symbols))


@lru_cache(maxsize=1)
def qwen_bpe_tokens() -> tuple[bytes, ...]:
    """Qwen's 151,643 regular tokens (bytes) in rank order, read from the shipped data."""
    blob = gzip.decompress(resources.files(_ASSETS).joinpath("qwen/qwen_bpe_ranks.bin.gz").read_bytes())
    tokens, i = [], 0
    while i < len(blob):
        n = blob[i]
        tokens.append(blob[i + 1:i + 1 + n])
        i += 1 + n
    if len(tokens) != QWEN_REGULAR or i != len(blob):
        raise RuntimeError(f"lorakit's Qwen vocabulary data is damaged: {len(tokens)} tokens instead of {QWEN_REGULAR}")
    return tuple(tokens)


def qwen_tiktoken_text() -> bytes:
    """The published ``qwen.tiktoken`` rebuilt from the shipped data (base64 token, space, rank per line)."""
    import base64
    return b"".join(base64.b64encode(t) + b" %d\n" % r for r, t in enumerate(qwen_bpe_tokens()))


@lru_cache(maxsize=1)
def _qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (stand-in string -> rank) and merge list of Qwen's BPE. tiktoken keeps only ranks; each token of
    rank r > 255 is the merge of the two parts that byte-pair encoding of its bytes with the ranks below r leaves
    (exactly two for every token: checked), so the merges come back in rank order (~2 s, once per process)."""
    tokens = qwen_bpe_tokens()
    rank = {t: r for r, t in enumerate(tokens)}
    sym = _byte_to_symbol()

    def text(b: bytes) -> str:
        return "".join(sym[x] for x in b)

    merges = []
    for r, tok in enumerate(tokens):
        if len(tok) == 1:
            continue
        parts = [tok[i:i + 1] for i in range(len(tok))]
        while len(parts) > 2:
            best, at = r, -1
            for i in range(len(parts) - 1):
                got = rank.get(parts[i] + parts[i + 1], r)
                if got < best:
                    best, at = got, i
            if at < 0:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2 or rank.get(parts[0], r) >= r or rank.get(parts[1], r) >= r:
            raise RuntimeError(f"lorakit's Qwen vocabulary data is damaged: token {r} is not a merge of lower ranks")
        merges.append((text(parts[0]), text(parts[1])))
    return {text(t): r for r, t in enumerate(tokens)}, merges


@lru_cache(maxsize=2)
def _qwen_prototype(variant: str) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import Qwen2TokenizerFast

    added, eos, pad, template = QWEN_VARIANTS[variant]
    vocab, merges = _qwen_vocab_and_merges()
    tk = Tokenizer(models.BPE(dict(vocab), list(merges), dropout=None, unk_token=None, continuing_subword_prefix="",
                              end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    for content, special in added:  # in id order: each takes the next id from 151643 on
        token = AddedToken(content, special=special, normalized=False)
        (tk.add_special_tokens if special else tk.add_tokens)([token])
    tok = Qwen2TokenizerFast(tokenizer_object=tk, unk_token=None, bos_token=None, eos_token=eos, pad_token=pad,
                             errors="replace", add_prefix_space=False, clean_up_tokenization_spaces=False,
                             split_special_tokens=False)
    tok.add_special_tokens({"additional_special_tokens": [t for t, special in added[1:] if special]})
    tok.model_max_length = 131072
    if template == "qwen3":
        tok.chat_template = QWEN3_TEMPLATE
    return tok


def qwen_tokenizer(variant: str) -> Any:
    """Qwen's tokenizer built from lorakit's package data, as ``Qwen2TokenizerFast`` (the class the pipelines load):
    ``"qwen2.5-vl"`` (Qwen2.5-VL-7B, Qwen-Image's encoder) or ``"qwen3"`` (Qwen3-4B / 8B: FLUX.2 Klein, Z-Image; with
    the user-turn part of Qwen3's chat template, thinking switch included). Same ids as the real tokenizer folders.
    Built in memory: the first call in a process takes a few seconds (the merges are derived from the ranks), later
    ones return a copy (< 1 s)."""
    import copy

    if variant not in QWEN_VARIANTS:
        raise ValueError(f"unknown Qwen tokenizer variant {variant!r}; one of {', '.join(QWEN_VARIANTS)}")
    return copy.deepcopy(_qwen_prototype(variant))


def shipped_qwen_tokenizer(variant: str, family: str, log: Any = print) -> Any:
    """:func:`qwen_tokenizer` for a model loaded from files that carry no tokenizer, said once in the log."""
    log(f"{family}: no tokenizer/ beside the model and no model.tokenizer_dir; using lorakit's shipped "
        f"{QWEN_VARIANT_NAMES[variant]} tokenizer (same ids as the model's own)")
    return qwen_tokenizer(variant)


def tiny_qwen_tokenizer(words: Sequence[str] = (), bare: Sequence[str] = ()) -> Any:
    """A small byte-level BPE tokenizer of the real class (``Qwen2TokenizerFast``) with Qwen3's special tokens and
    the user-turn part of its chat template: 256 byte symbols, one merge chain per word of ``words`` (as a word
    after a space, so the toy world's captions take few tokens) and per string of ``bare`` (as is: "user",
    "assistant", "\n\n" are single tokens in Qwen's vocabulary too), then the specials. Tests and the toy only."""
    from transformers import Qwen2TokenizerFast

    symbols = _byte_symbols()           # GPT-2 byte stand-ins: printable bytes first (as themselves), then the rest
    byte_to_sym = _byte_to_symbol()
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
