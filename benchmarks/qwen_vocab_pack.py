"""Pack Qwen's BPE vocabulary (``qwen.tiktoken``) into lorakit's package data (issues 19 and 29).

    pip download --no-deps dashscope==2.0.2 && unzip dashscope-2.0.2-py3-none-any.whl dashscope/resources/qwen.tiktoken
    python benchmarks/qwen_vocab_pack.py dashscope/resources/qwen.tiktoken

``qwen.tiktoken`` holds one line per regular token: the token's bytes in base64, a space, its BPE rank (0 .. 151,642,
every rank once, in order). lorakit ships the same information without the base64 and the ranks: each token as one
length byte followed by its bytes, in rank order, gzip-compressed (``lorakit/assets/tokenizers/qwen/qwen_bpe_ranks.bin.gz``,
0.67 MB instead of 2.56 MB). :func:`lorakit.models.tokenizers.qwen_tiktoken_text` rebuilds the original file from it
byte for byte (a test checks its sha256 against the published file's).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "lorakit/assets/tokenizers/qwen/qwen_bpe_ranks.bin.gz"


def main() -> None:
    text = Path(sys.argv[1]).read_bytes()
    tokens = []
    for rank, line in enumerate(text.splitlines()):
        b64, r = line.split()
        if int(r) != rank:
            raise SystemExit(f"{sys.argv[1]}: line {rank + 1} has rank {r}; expected the ranks in order")
        tokens.append(base64.b64decode(b64))
    blob = b"".join(bytes([len(t)]) + t for t in tokens)  # every token is 1..128 bytes long
    OUT.write_bytes(gzip.compress(blob, 9, mtime=0))
    print(f"{len(tokens)} tokens, sha256 of the source {hashlib.sha256(text).hexdigest()}, wrote {OUT} "
          f"({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
