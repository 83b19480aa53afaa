"""From what a captioner said to the caption file's text: trigger first, prefix/suffix, tags or a sentence,
and the family's text limit.

The guide's rule: the trigger word (and class) come first ("ohwx woman, ..."), the rest describes what should
stay variable. ``replace`` names words the captioner uses for the subject itself (its class name, "cross" for
the toy concept): each is replaced by the trigger, so the subject is named by the trigger and not described.
"""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from lorakit.caption.base import Raw
from lorakit.errors import ConfigError

Mode = Literal["tags", "sentence"]


@dataclass(frozen=True)
class TextOptions:
    trigger: str = ""
    class_word: str = ""
    prefix: str = ""
    suffix: str = ""
    replace: tuple[str, ...] = ()        # words replaced by the trigger (whole words, any case)
    mode: Optional[Mode] = None          # None: the captioner's own kind
    max_tokens: Optional[int] = None     # the family's text limit (or lower, --max-tokens)
    separator: str = ", "


@dataclass
class Finished:
    text: str
    tokens: Optional[int] = None
    notes: list[str] = field(default_factory=list)   # e.g. "3 tags dropped to fit 77 tokens"


def _words(text: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(text)}(?!\w)", re.IGNORECASE)


def has_word(text: str, word: str) -> bool:
    return bool(word) and bool(_words(word).search(text))


def to_tags(raw: Raw) -> list[str]:
    """Tags as a list: a sentence is cut at commas, semicolons and full stops."""
    parts = raw if isinstance(raw, list) else re.split(r"[,;]|\.(?:\s|$)", raw)
    out: list[str] = []
    for p in parts:
        p = " ".join("".join(ch if ch.isprintable() else " " for ch in p).split()).strip(" .")
        if p and p.lower() not in {o.lower() for o in out}:
            out.append(p)
    return out


def to_sentence(raw: Raw) -> str:
    text = ", ".join(to_tags(raw)) if isinstance(raw, list) else raw
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def _head(trigger: str, class_word: str, lead: str) -> str:
    """What leads the caption: ``trigger class``; without --trigger a kohya folder's class tokens (``ohwx woman``),
    with --class added when they lack it (--class alone dropped the folder's trigger from every caption)."""
    if trigger or not lead:
        return " ".join(p for p in (trigger, class_word) if p)
    return lead if not class_word or has_word(lead, class_word) else f"{lead} {class_word}"


def finish(raw: Raw, opts: TextOptions, kind: Mode, count_tokens: Optional[Callable[[str], int]] = None,
           lead: str = "") -> Finished:
    """The caption text. ``lead`` is the folder's class tokens, used when no trigger/class is given."""
    mode = opts.mode or kind
    trigger = opts.trigger.strip()
    head = _head(trigger, opts.class_word.strip(), lead.strip())
    body: list[str] = to_tags(raw) if mode == "tags" else [to_sentence(raw)] if to_sentence(raw) else []
    if trigger and opts.replace:
        for word in opts.replace:
            body = [_words(word).sub(trigger, b) for b in body]
    if mode == "tags":      # the lead is the first tag; the same words later are repeats
        drop = {t.lower() for t in (trigger, opts.class_word.strip(), head) if t}
        body = [b for b in body if b.lower() not in drop]
    else:
        key = trigger or (head.split()[0] if head else "")
        if key and any(has_word(b, key) for b in body):
            head = ""       # the trigger already names the subject in the sentence (e.g. after replace)

    def join(parts: list[str]) -> str:
        return opts.separator.join(p for p in [opts.prefix.strip(), head, *parts, opts.suffix.strip()] if p)

    text = join(body)
    done = Finished(text)
    if count_tokens is None or opts.max_tokens is None or not text:
        return done
    n = count_tokens(text)
    if n > opts.max_tokens and mode == "tags":
        dropped = 0
        while body and n > opts.max_tokens:     # tags come most confident first: drop from the end
            body.pop()
            dropped += 1
            text = join(body)
            n = count_tokens(text)
        done.text = text
        done.notes.append(f"{dropped} least confident tag(s) dropped to fit {opts.max_tokens} tokens")
    elif n > opts.max_tokens:
        done.notes.append(f"caption is {n} tokens; the text encoder only sees the first {opts.max_tokens}")
    done.tokens = n
    return done


@lru_cache(maxsize=None)
def family_limit(family: str) -> tuple[int, Callable[[str], int]]:
    """(max caption tokens, token counter) of a model family, both from its ModelSpec.

    The counter is the tokenizer of the family's longest-reading text encoder (T5 where the spec lists one,
    else CLIP), so the count matches the limit the family's own data check uses.
    """
    from lorakit.models import tokenizers
    from lorakit.models.registry import get_family

    try:
        spec = get_family(family).SPEC
    except ConfigError as e:
        raise ConfigError(f"--family: {str(e).split(': ', 1)[-1]}") from None
    own = getattr(get_family(family), "caption_token_counter", None)  # a family package may count its own way
    if own is not None:
        return spec.max_caption_tokens, own()
    tok = tokenizers.t5_tokenizer() if any(e.startswith("t5") for e in spec.text_encoders) \
        else tokenizers.clip_tokenizer()
    return spec.max_caption_tokens, lambda text: len(tok(text, truncation=False)["input_ids"])
