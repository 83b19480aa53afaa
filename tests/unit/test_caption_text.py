"""Caption text rules: trigger first, replace, prefix/suffix, tags vs sentence, the family's token limit."""

import pytest

from lorakit.caption.text import TextOptions, family_limit, finish
from lorakit.errors import ConfigError


def words(text: str) -> int:
    return len(text.replace(",", " ").split())


def test_trigger_and_class_come_first_in_a_sentence():
    out = finish("a woman in a red dress, standing in a park.", TextOptions(trigger="ohwx", class_word="woman"),
                 "sentence")
    assert out.text == "ohwx woman, a woman in a red dress, standing in a park."


def test_tags_put_the_trigger_first_and_drop_repeats_of_it():
    out = finish(["1girl", "OHWX", "smile", "woman", "smile"], TextOptions(trigger="ohwx", class_word="woman"), "tags")
    assert out.text == "ohwx woman, 1girl, smile"


def test_replace_names_the_subject_by_the_trigger_without_a_second_lead():
    out = finish("a red cross on a blue background", TextOptions(trigger="zkx", replace=("cross",)), "sentence")
    assert out.text == "a red zkx on a blue background"
    # whole words only: "crossing" stays
    out = finish("a cross crossing a road", TextOptions(trigger="zkx", replace=("cross",)), "sentence")
    assert out.text == "a zkx crossing a road"


def test_folder_class_tokens_lead_when_no_trigger_is_given():
    assert finish("a dog", TextOptions(), "sentence", lead="ohwx dog").text == "ohwx dog, a dog"
    assert finish("ohwx dog on grass", TextOptions(), "sentence", lead="ohwx dog").text == "ohwx dog on grass"
    assert finish("a dog", TextOptions(trigger="sks"), "sentence", lead="ohwx dog").text == "sks, a dog"


def test_prefix_and_suffix_wrap_everything_and_a_sentence_becomes_tags_in_tag_mode():
    opts = TextOptions(trigger="ohwx", prefix="photo", suffix="high quality", mode="tags")
    out = finish("A cat on a sofa. Sunlight, warm", opts, "sentence")
    assert out.text == "photo, ohwx, A cat on a sofa, Sunlight, warm, high quality"


def test_control_characters_never_reach_the_file():
    assert finish("a\x01 cat\n\ton a mat", TextOptions(), "sentence").text == "a cat on a mat"


def test_tag_mode_drops_the_least_confident_tags_to_fit_the_limit():
    tags = [f"tag{i}" for i in range(10)]
    out = finish(tags, TextOptions(trigger="ohwx", max_tokens=5), "tags", count_tokens=words)
    assert out.text == "ohwx, tag0, tag1, tag2, tag3"
    assert out.tokens == 5 and out.notes == ["6 least confident tag(s) dropped to fit 5 tokens"]


def test_sentence_mode_keeps_the_text_and_says_it_is_too_long():
    text = "one two three four five six"
    out = finish(text, TextOptions(max_tokens=4), "sentence", count_tokens=words)
    assert out.text == text and out.tokens == 6
    assert out.notes == ["caption is 6 tokens; the text encoder only sees the first 4"]


def test_family_limits_come_from_the_model_spec():
    from lorakit.models.registry import get_family
    from lorakit.models.tokenizers import clip_tokenizer

    limit, count = family_limit("sdxl")
    assert limit == get_family("sdxl").SPEC.max_caption_tokens
    assert count("a photo of ohwx") == len(clip_tokenizer()("a photo of ohwx")["input_ids"]) == 6
    limit, _ = family_limit("flux1")
    assert limit == get_family("flux1").SPEC.max_caption_tokens
    with pytest.raises(ConfigError, match="^--family: unknown family 'nope'"):
        family_limit("nope")
