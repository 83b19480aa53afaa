"""The config's messages: how keys and values appear in the one-line errors every config problem raises.

Every :class:`~lorakit.errors.ConfigError` starts with the key path (``network.rank: ...``); values are shown
quoted, escaped and shortened so a message always stays on one line.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Sequence

from lorakit.errors import ConfigError

BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def seg(key: Any) -> str:
    """One key-path segment: bare when TOML allows it, else quoted (so messages stay on one line)."""
    s = str(key)
    return s if BARE_KEY_RE.match(s) else quote(s)


def quote(s: str, limit: int = 80) -> str:
    """A double-quoted, escaped, one-line rendering of a string."""
    if len(s) > limit:
        s = s[:limit] + "…"
    out = []
    for ch in s:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def show(value: Any) -> str:
    """How a given value appears in an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:40] + "…"
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show(v) for v in value[:6]) + (", …" if len(value) > 6 else "") + "]"
        return text if len(text) <= 100 else text[:100] + "…]"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def num(x: float) -> str:
    """A bound as written: integers in full (4294967295, not 4.29497e+09), other numbers short."""
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:g}"


def suggest(word: str, options: Sequence[str]) -> str | None:
    hits = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not hits:
        lowered = {o.lower(): o for o in options}
        hits = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        hits = [lowered[h] for h in hits]
    return hits[0] if hits else None


def err(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")
