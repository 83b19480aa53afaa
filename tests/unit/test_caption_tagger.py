"""The WD14-style tagger back-end on a tiny ONNX graph whose outputs the test computes independently."""

import numpy as np
import pytest
from PIL import Image

from lorakit.caption.tagger import TagOptions, WD14Tagger
from lorakit.errors import ModelLoadError
from tests.unit.caption_models import TAGGER_TAGS, build_tagger, tagger_probs


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return build_tagger(tmp_path_factory.mktemp("wd14"))


def expected_tags(probs, general=0.35, character=0.85, keep_rating=False, black=()):
    """Independent selection: character tags then general tags, each by falling probability."""
    chars = sorted(((p, n) for (n, c, _, _), p in zip(TAGGER_TAGS, probs) if c == 4 and p >= character
                    and n not in black), reverse=True)
    gen = sorted(((p, n) for (n, c, _, _), p in zip(TAGGER_TAGS, probs) if c == 0 and p >= general
                  and n not in black), reverse=True)
    tags = [n for _, n in chars + gen]
    if keep_rating:
        tags.append(max((p, n) for (n, c, _, _), p in zip(TAGGER_TAGS, probs) if c == 9)[1])
    return [t if t == "^_^" else t.replace("_", " ") for t in tags]


def solid(rgb, size=(32, 32)):
    return Image.new("RGB", size, rgb)


def test_probabilities_match_the_graph_maths(tagger_dir):
    t = WD14Tagger(tagger_dir)
    img = solid((200, 30, 60))
    got = t.probabilities([img])[0]
    np.testing.assert_allclose(got, tagger_probs(np.asarray(img)), rtol=1e-5, atol=1e-6)


def test_a_wide_picture_is_padded_white_to_a_square(tagger_dir):
    t = WD14Tagger(tagger_dir)
    img = solid((0, 0, 255), (32, 16))
    square = np.full((32, 32, 3), 255, np.uint8)
    square[8:24] = (0, 0, 255)
    np.testing.assert_allclose(t.probabilities([img])[0], tagger_probs(square), rtol=1e-5, atol=1e-6)


def test_default_selection_drops_ratings_and_replaces_underscores(tagger_dir):
    t = WD14Tagger(tagger_dir)
    red, blue = solid((230, 10, 10)), solid((10, 10, 230))
    got = t.caption([red, blue])
    assert got[0] == expected_tags(tagger_probs(np.asarray(red)))
    assert got[1] == expected_tags(tagger_probs(np.asarray(blue)))
    assert got[0][0] == "hatsune miku" and "red theme" in got[0] and "blue theme" not in got[0]
    assert "^_^" in got[0] and "other character" not in got[0] and "general" not in got[0]


def test_thresholds_blacklist_and_rating_are_honoured(tagger_dir):
    img = solid((230, 10, 10))
    probs = tagger_probs(np.asarray(img))
    t = WD14Tagger(tagger_dir, TagOptions(general_threshold=0.5, character_threshold=0.7,
                                          blacklist=("1girl", "hatsune miku"), keep_rating=True))
    assert t.caption([img])[0] == expected_tags(probs, 0.5, 0.7, True, black=("1girl", "hatsune_miku"))
    assert "other character" in t.caption([img])[0] and t.caption([img])[0][-1] == "general"
    kept = WD14Tagger(tagger_dir, TagOptions(underscores=True)).caption([img])[0]
    assert "simple_background" in kept and "1girl" in kept


def test_missing_files_are_one_line_naming_the_file(tmp_path, tagger_dir):
    with pytest.raises(ModelLoadError, match=r"wd14: not found; put the WD14 tagger there .*SmilingWolf"):
        WD14Tagger(tmp_path / "wd14")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes((tagger_dir / "model.onnx").read_bytes())
    with pytest.raises(ModelLoadError) as e:
        WD14Tagger(tmp_path / "half")
    assert str(e.value).startswith(f"{tmp_path / 'half' / 'selected_tags.csv'}: missing")
    assert "\n" not in str(e.value)


def test_a_tag_list_of_another_model_is_refused(tmp_path, tagger_dir):
    folder = build_tagger(tmp_path / "t")
    lines = (folder / "selected_tags.csv").read_text().splitlines()
    (folder / "selected_tags.csv").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(ModelLoadError, match=r"selected_tags.csv: 7 tags but model.onnx outputs 9"):
        WD14Tagger(folder)
