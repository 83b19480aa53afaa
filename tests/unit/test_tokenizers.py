"""Tokenizers built from package data give the real tokenizers' ids (no Hub)."""

from pathlib import Path

import pytest

from lorakit.models.tokenizers import clip_tokenizer, clip_vocab_and_merges, t5_tokenizer, write_clip_tokenizer_files

SPIECE = Path(__file__).resolve().parents[2] / "lorakit" / "assets" / "tokenizers" / "t5" / "spiece.model"


@pytest.fixture(scope="module")
def clip():
    return clip_tokenizer()


def test_clip_known_ids(clip):
    # ids of openai/clip-vit-large-patch14 for this prompt (bos 49406, eos 49407)
    assert clip("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(clip) == 49408
    assert clip.model_max_length == 77


def test_clip_vocab_structure():
    vocab, merges = clip_vocab_and_merges()
    assert len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["a</w>"] == 320  # byte symbols first, then their end-of-word forms
    assert vocab["".join(merges[0])] == 512  # the first merge follows the 2 × 256 byte symbols


def test_clip_truncates_at_77(clip):
    ids = clip("cat " * 300, truncation=True, max_length=clip.model_max_length).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


def test_tokenizer_2_pads_with_bang():
    tok2 = clip_tokenizer(pad_token="!")
    ids = tok2("a cat", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407] and ids[4:] == [0] * 73


def test_folder_round_trip_and_precedence(tmp_path, clip):
    text = "A Photo of <|endoftext|> a café 🐈, 300 × words!"
    plain = clip_tokenizer(folder=write_clip_tokenizer_files(tmp_path / "tok"))
    assert plain(text).input_ids == clip(text).input_ids
    bang = clip_tokenizer(folder=write_clip_tokenizer_files(tmp_path / "tok2", pad_token="!"))
    assert bang.pad_token == "!"  # the folder's own settings win
    # "!" is then a special token (as in SDXL's tokenizer_2), identical to the in-memory build
    assert bang(text).input_ids == clip_tokenizer(pad_token="!")(text).input_ids


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="tokenizer_dir"):
        clip_tokenizer(folder=tmp_path / "nope")


def test_t5_facts_and_ids_match_sentencepiece():
    import sentencepiece

    tok = t5_tokenizer()
    assert len(tok) == 32100
    assert tok.convert_tokens_to_ids("</s>") == 1 and tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert tok.convert_tokens_to_ids("<extra_id_0>") == 32099
    sp = sentencepiece.SentencePieceProcessor(model_file=str(SPIECE))
    for text in ("a photo of a cat", "A red Bicycle, leaning on a wall at dusk."):
        assert tok(text).input_ids == sp.encode(text) + [1]
