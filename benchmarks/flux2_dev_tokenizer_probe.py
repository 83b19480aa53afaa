"""What FLUX.2 dev's tokenizer folder does, printed as JSON: the values lorakit would need to ship it (issue 19).

    huggingface-cli download black-forest-labs/FLUX.2-dev --include "tokenizer/*" --local-dir DIR
    python benchmarks/flux2_dev_tokenizer_probe.py DIR/tokenizer > flux2_dev_tokenizer.json

The folder is loaded the way diffusers' Flux2Pipeline and lorakit load it (AutoProcessor, else AutoTokenizer). The
report holds: the files (sha256), the processor and tokenizer classes, the tokenizer's pre-tokenizer (its split
pattern decides the ids of numbers and mixed-case words: Mistral Small 3.1's published tokenizer.json has a Llama-3
pattern, Tekken's own is different), pad / bos / eos and the control tokens' ids, the padding side, the rendered dev
prompt and its ids as lorakit's encoder produces them (padded positions included), and the ids of a probe corpus
that separates the two split patterns. docs/tokenizers.md says which of these public sources could not establish.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

PROBES = ["a red circle on a white table", "eBay iPhone McDonald's NaOH pH", "DON'T STOP, I'M HERE", "1024x768 in 2025",
          "path/to/file.txt\nnext line\r\n", "naïve café 東京タワー 🚀", "  two  spaces\tand a tab"]
CONTROL = ("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]")


def probe(folder: Path, length: int = 512) -> dict:
    from types import SimpleNamespace

    import torch
    from transformers import MistralConfig, MistralModel

    from lorakit.models.flux2.load import _tokenizer_loader
    from lorakit.models.flux2.text import dev_messages, encode_mistral
    logs: list[str] = []
    tok = _tokenizer_loader(SimpleNamespace(tokenizer_dir=str(folder)), None, lambda: "mistral", logs.append)()
    inner = getattr(tok, "tokenizer", tok)
    backend = json.loads(inner.backend_tokenizer.to_str()) if hasattr(inner, "backend_tokenizer") else {}
    tiny = MistralModel(MistralConfig(vocab_size=len(inner), hidden_size=8, intermediate_size=8, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=4)).eval()
    with torch.no_grad():
        _emb, ids, mask = encode_mistral(tiny, tok, [PROBES[0]], max_length=length, layers=(1, 2, 3))
    return {
        "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()},
        "log": logs, "class": type(tok).__name__, "tokenizer_class": type(inner).__name__, "size": len(inner),
        "padding_side": inner.padding_side, "pad": [inner.pad_token, inner.pad_token_id],
        "control_ids": {t: inner.convert_tokens_to_ids(t) for t in CONTROL},
        "pre_tokenizer": backend.get("pre_tokenizer"), "normalizer": backend.get("normalizer"),
        "post_processor": backend.get("post_processor"),
        "dev_prompt_text": tok.apply_chat_template(dev_messages([PROBES[0]]), tokenize=False)[0],
        "dev_prompt_ids": ids[0].tolist(), "dev_prompt_mask_sum": int(mask.sum()),
        "probe_ids": {p: inner(p, add_special_tokens=False)["input_ids"] for p in PROBES},
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(json.dumps(probe(Path(sys.argv[1]).expanduser()), ensure_ascii=False, indent=1))
