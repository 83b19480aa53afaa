"""The toy world: determinism, captions, the demo dataset layout, and the detector's separation."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lorakit.errors import DataError
from lorakit.toy import detector, world
from lorakit.toy.world import Scene


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_same_seed_same_bytes_and_different_seed_differs():
    a = [_png_bytes(world.render(s)) for s in world.sample_scenes(6, seed=7)]
    b = [_png_bytes(world.render(s)) for s in world.sample_scenes(6, seed=7)]
    c = [_png_bytes(world.render(s)) for s in world.sample_scenes(6, seed=8)]
    assert a == b
    assert a != c


def test_render_draws_the_named_colours_where_expected():
    img = np.asarray(world.render(Scene("square", "red", "blue")))
    assert img.shape == (64, 64, 3)
    assert tuple(img[32, 32]) == world.COLOURS["red"]          # centre of the shape
    assert tuple(img[1, 1]) == world.COLOURS["blue"]           # corner is background
    # a large square covers its 38 px side: about 38*38 pixels differ from the background
    fg = (np.abs(img.astype(int) - world.COLOURS["blue"]).sum(-1) > 60).sum()
    assert abs(fg - 38 * 38) < 3 * 38


def test_cross_has_empty_corners_circle_does_not():
    cross = np.asarray(world.render_mask("cross", 48.0))
    circle = np.asarray(world.render_mask("circle", 48.0))
    # point at (0.6, 0.6) of the half-side from the centre: outside the cross arms, inside the circle
    y = x = 32 + int(0.6 * 24)
    assert cross[y, x] == 0 and circle[y, x] == 255


@pytest.mark.parametrize("scene, text", [
    (Scene("circle", "red", "blue"), "a red circle on a blue background"),
    (Scene("square", "green", "white", size="small"), "a small green square on a white background"),
    (Scene("triangle", "black", "yellow", position="top left"), "a black triangle at the top left on a yellow background"),
    (Scene("cross", "red", "green"), "a red zkx on a green background"),
])
def test_captions(scene, text):
    assert world.caption(scene) == text


def test_base_sampling_never_draws_the_concept_and_covers_all_base_shapes():
    scenes = world.sample_scenes(300, seed=0)
    shapes = {s.shape for s in scenes}
    assert shapes == set(world.BASE_SHAPES)
    assert all(s.colour != s.background for s in scenes)


def test_bad_scene_is_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="Scene.shape"):
        Scene("hexagon", "red", "blue")
    with pytest.raises(ValueError, match="both 'red'"):
        Scene("circle", "red", "red")


def test_demo_dataset_layout(tmp_path):
    folder = world.write_demo_dataset(tmp_path, n=12, seed=3)
    assert folder == tmp_path / "10_zkx shape"
    pngs = sorted(folder.glob("*.png"))
    txts = sorted(folder.glob("*.txt"))
    assert len(pngs) == 12 and [p.stem for p in pngs] == [t.stem for t in txts]
    for png, txt in zip(pngs, txts):
        cap = txt.read_text().strip()
        assert cap.startswith("a ") and " zkx" in cap and cap.endswith(" background")
        assert Image.open(png).size == (64, 64)
        assert detector.shape_of(Image.open(png)) == "cross"
    colours = {t.read_text().split(" zkx")[0].split()[-1] for t in txts}
    assert colours == set(world.COLOURS)                       # every colour appears
    # reproducible bytes, and never overwrites an existing dataset
    again = world.write_demo_dataset(tmp_path / "again", n=12, seed=3)
    h = lambda d: [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())]
    assert h(folder) == h(again)
    with pytest.raises(DataError, match="not empty"):
        world.write_demo_dataset(tmp_path, n=12, seed=3)


def _degrade(img: Image.Image, rng: np.random.Generator, blur: float, noise: float) -> Image.Image:
    img = img.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(img).astype(np.float32) + rng.normal(0, noise, (64, 64, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_detector_separates_concept_from_every_base_shape_with_margin():
    rng = np.random.default_rng(0)
    scenes = world.sample_scenes(160, seed=11, shapes=world.ALL_SHAPES, positions=tuple(world.POSITIONS))
    scores: dict[str, list[float]] = {s: [] for s in world.ALL_SHAPES}
    shape_hits = []
    for i, scene in enumerate(scenes):
        img = world.render(scene)
        if i % 2:
            img = _degrade(img, rng, blur=1.5, noise=12.0)
        r = detector.read(img)
        scores[scene.shape].append(r.concept_score)
        assert (r.colour, r.background) == (scene.colour, scene.background), scene
        if i % 2 == 0:                                         # sharp: the class is always right
            assert r.shape == scene.shape, scene
        shape_hits.append(r.shape == scene.shape)
    assert np.mean(shape_hits) > 0.95                          # blur rounds small squares now and then
    worst_base = max(max(scores[s]) for s in world.BASE_SHAPES)
    assert min(scores["cross"]) > 0.55 > 0.45 > worst_base
    assert min(scores["cross"]) - worst_base > 0.2


def test_detector_on_plain_image_and_noise():
    plain = Image.new("RGB", (64, 64), world.COLOURS["green"])
    r = detector.read(plain)
    assert r.shape == "none" and r.concept_score == 0.0 and r.background == "green"
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert detector.concept_score(noise) < 0.7                  # noise is not a confident cross
