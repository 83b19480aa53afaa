"""Can Qwen2's byte-level BPE tokenizer (the Qwen2 / Qwen2.5 / Qwen2.5-VL vocabulary) be built offline from a PyPI
package? The investigation behind issue 29's shipped Qwen tokenizer (lorakit now ships it: lorakit.models.tokenizers.qwen_tokenizer).

    pip download --no-deps dashscope==2.0.2 && unzip dashscope-2.0.2-py3-none-any.whl dashscope/resources/qwen.tiktoken
    python benchmarks/qwen_tokenizer_check.py dashscope/resources/qwen.tiktoken [OUT_DIR]

``qwen.tiktoken`` (151,643 base64 byte strings with their BPE ranks; shipped, byte-identical, by Alibaba's
``dashscope`` SDK (Apache-2.0), ``qwen-agent`` (Apache-2.0) and ``qwen-tokenizer`` (MIT)) is turned into a
``tokenizers`` BPE (ranks -> vocab, merges recovered by re-running BPE on each token below its own rank; NFC, Qwen's
split regex, byte-level) with <|endoftext|>/<|im_start|>/<|im_end|> at 151643-151645, wrapped in
``Qwen2TokenizerFast``. It then checks the ids against the expected encoding of transformers'
``tests/models/qwen2/test_tokenization_qwen2.py::test_tokenizer_integration`` (three sequences, English, Chinese with an
emoji, code, padded with <|endoftext|>; ids produced by the real Qwen/Qwen-tokenizer), and that Qwen-Image's prompt
template head is 34 tokens (the pipeline's ``prompt_template_encode_start_idx``). Needs no tiktoken.
"""

from __future__ import annotations

import base64
import sys

PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SEQUENCES = [
    "Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
    "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
    "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
    "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
    "🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
    """```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\n"""
    """tokenizer("世界，你好！")```""",
]
EXPECTED = [  # transformers' test_tokenizer_integration, before padding
    [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8, 5707,
     4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11, 27604, 321, 33,
     529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448, 11434, 23470, 320, 30042,
     38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10, 15459, 323, 5538, 94130, 2897, 1948,
     619, 706, 11, 5355, 51, 21584, 323, 94986, 13],
    [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034, 104949,
     9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997, 33108, 100912,
     105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773],
    [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841, 3135, 1138,
     85593, 445, 99489, 3837, 108386, 6313, 899, 73594],
]


def build(rank_file: str):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import Qwen2TokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks: dict[bytes, int] = {}
    for line in open(rank_file, "rb").read().splitlines():
        if line:
            tok, r = line.split()
            ranks[base64.b64decode(tok)] = int(r)
    assert sorted(ranks.values()) == list(range(len(ranks))) == list(range(151643))
    b2u = bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    def bpe(token: bytes, max_rank: int) -> list[bytes]:
        parts = [bytes([b]) for b in token]
        while True:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < max_rank and (best is None or r < best[1]):
                    best = (i, r)
            if best is None:
                return parts
            i = best[0]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]

    merges = []
    for t, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(t) > 1:
            p = bpe(t, r)
            assert len(p) == 2, t
            merges.append((enc(p[0]), enc(p[1])))
    tk = Tokenizer(models.BPE({enc(t): r for t, r in ranks.items()}, merges, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PAT), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    tok = Qwen2TokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                             unk_token=None, bos_token=None)
    assert tok.convert_tokens_to_ids(list(SPECIAL)) == [151643, 151644, 151645]
    return tok


def main() -> None:
    tok = build(sys.argv[1])
    got = tok(SEQUENCES, padding=True)["input_ids"]
    n = max(map(len, EXPECTED))
    want = [e + [151643] * (n - len(e)) for e in EXPECTED]
    print("transformers' Qwen2 integration ids reproduced:", got == want)
    from lorakit.models.qwenimage import configs
    head = len(tok(configs.PROMPT_TEMPLATE.split("{}")[0])["input_ids"])
    print(f"Qwen-Image template head: {head} tokens (the pipeline drops {configs.DROP_IDX})")
    if len(sys.argv) > 2:
        tok.save_pretrained(sys.argv[2])


if __name__ == "__main__":
    main()
