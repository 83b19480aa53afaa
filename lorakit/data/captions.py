"""The per-sample caption pipeline and tag statistics (reference/kohya-format.md §2.2, §4 ss_tag_frequency).

Order, as kohya applies it: prefix/suffix → caption dropout → split on the separator, keep the first
`keep_tokens` tags fixed, shuffle the rest, drop each remaining tag with `tag_dropout_rate` → rejoin with
", ". Every random decision draws from the `random.Random` the caller passes, so a seeded rng (the batch
stream derives one from seed, epoch and position) reproduces the caption exactly on resume.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from lorakit.data.scan import Dataset


@dataclass(frozen=True)
class CaptionSettings:
    """Caption options of one subset (after subset → dataset → general → data.* fall-back)."""

    prefix: str = ""
    suffix: str = ""
    shuffle: bool = False
    separator: str = ","
    keep_tokens: int = 0
    dropout_rate: float = 0.0
    tag_dropout_rate: float = 0.0

    @property
    def varies(self) -> bool:
        """True when the same caption can give different texts (text-encoder caching is then impossible)."""
        return self.shuffle or self.dropout_rate > 0 or self.tag_dropout_rate > 0


def add_prefix_suffix(caption: str, settings: CaptionSettings) -> str:
    """Prefix and suffix joined with a space (kohya's behaviour); empty parts add nothing."""
    parts = [p for p in (settings.prefix, caption, settings.suffix) if p]
    return " ".join(parts)


class CaptionPipeline:
    """Turns a stored caption into the text of one training sample."""

    def __init__(self, settings: CaptionSettings):
        self.settings = settings

    def make(self, caption: str, rng: random.Random) -> str:
        s = self.settings
        text = add_prefix_suffix(caption, s)
        if s.dropout_rate > 0 and rng.random() < s.dropout_rate:
            return ""
        if not (s.shuffle or s.tag_dropout_rate > 0):
            return text
        tags = [t.strip() for t in text.split(s.separator)]
        tags = [t for t in tags if t]
        fixed, free = tags[:s.keep_tokens], tags[s.keep_tokens:]
        if s.shuffle:
            rng.shuffle(free)
        if s.tag_dropout_rate > 0:
            free = [t for t in free if rng.random() >= s.tag_dropout_rate]
        return ", ".join(fixed + free)


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """Non-empty, stripped tags of a caption."""
    return [t.strip() for t in caption.split(separator) if t.strip()]


def tag_frequency(dataset: "Dataset") -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: {subset folder name: {tag: occurrences over the subset's captions}}.

    Counts raw captions (after the class-token fall-back, before prefix/suffix and shuffling), each image
    once (not × repeats), like kohya. Tags are split on "," — what kohya does regardless of caption_separator.
    """
    out: dict[str, dict[str, int]] = {}
    for idx, subset in enumerate(dataset.subsets):
        counts: Counter[str] = out.setdefault(Path(subset.dir).name, Counter())  # type: ignore[assignment]
        for item in dataset.items:
            if item.subset == idx:
                counts.update(split_tags(item.caption, ","))
    return {k: dict(v) for k, v in out.items()}


def fixed_captions(dataset: "Dataset") -> list[str]:
    """The exact text of every item's caption when it never varies (what a text-encoder cache stores).

    Text-encoder outputs can only be cached when a caption always gives the same text; shuffle, caption
    dropout and tag dropout break that, so they are refused here with the key to change (kohya refuses the
    same combination). The texts match what :class:`BatchStream` yields for these settings.
    """
    from lorakit.errors import ConfigError

    for sub in dataset.subsets:
        s = sub.caption
        if s.varies:
            key = ("shuffle_caption" if s.shuffle else
                   "caption_dropout_rate" if s.dropout_rate > 0 else "caption_tag_dropout_rate")
            raise ConfigError(f"memory.cache_text_encoder_outputs: cannot cache captions that change every step "
                              f"(data.{key} is set for {Path(sub.dir).name}); turn one of them off")
    return [add_prefix_suffix(it.caption, dataset.subsets[it.subset].caption) for it in dataset.items]
