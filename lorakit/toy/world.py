"""The toy world: seeded procedural scenes (one shape on a plain background) with plain-word captions.

Why: real base weights cannot be downloaded, so lorakit pretrains tiny base models on this world and
teaches LoRAs a shape the base never saw (the *concept*, a plus-shaped cross bound to a trigger word).
Everything here is deterministic: the same seed gives the same scenes and the same PNG bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

from lorakit.data.images import save_image
from lorakit.errors import DataError
from lorakit.fsutil import write_text

IMAGE_SIZE = 64
SUPERSAMPLE = 4                      # draw 4x larger, then downsample: smooth (antialiased) edges

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 215, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
BASE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
CONCEPT_SHAPE = "cross"              # never drawn in base pretraining
ALL_SHAPES: tuple[str, ...] = BASE_SHAPES + (CONCEPT_SHAPE,)
SIZES: dict[str, int] = {"small": 24, "large": 38}          # bounding-box side in pixels
POSITIONS: dict[str, tuple[int, int]] = {                    # shape centre (x, y) in pixels
    "center": (32, 32),
    "top left": (21, 21),
    "top right": (43, 21),
    "bottom left": (21, 43),
    "bottom right": (43, 43),
}
CROSS_ARM = 0.36                     # arm width of the cross as a fraction of its side
DEFAULT_TRIGGER = "zkx"
DEMO_CLASS = "shape"
DEMO_REPEATS = 10                    # 12 images x 10 repeats = 120 samples per epoch


@dataclass(frozen=True)
class Scene:
    """One picture: a shape of a colour and size at a position, on a plain background."""

    shape: str
    colour: str
    background: str
    size: str = "large"
    position: str = "center"
    jitter: tuple[int, int] = (0, 0)   # small pixel offset of the centre (not in the caption)

    def __post_init__(self) -> None:
        checks = ((self.shape, ALL_SHAPES, "shape"), (self.colour, COLOURS, "colour"),
                  (self.background, COLOURS, "background"), (self.size, SIZES, "size"),
                  (self.position, POSITIONS, "position"))
        for value, allowed, name in checks:
            if value not in allowed:
                raise ValueError(f"Scene.{name}: {value!r} is not one of {sorted(allowed)}")
        if self.colour == self.background:
            raise ValueError(f"Scene: colour and background are both {self.colour!r}; pick two colours")


def shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape centred on (cx, cy) inside a side×side box (None for the circle)."""
    h = side / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":            # apex up, base at the bottom of the box
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "cross":               # plus sign with arms CROSS_ARM * side wide
        a = CROSS_ARM * side / 2
        return [(cx - a, cy - h), (cx + a, cy - h), (cx + a, cy - a), (cx + h, cy - a),
                (cx + h, cy + a), (cx + a, cy + a), (cx + a, cy + h), (cx - a, cy + h),
                (cx - a, cy + a), (cx - h, cy + a), (cx - h, cy - a), (cx - a, cy - a)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; expected one of {ALL_SHAPES}")


def render_mask(shape: str, side: float, size: int = 64, center: tuple[float, float] | None = None) -> Image.Image:
    """The shape alone as an antialiased 'L' mask (255 inside): used by the detector's templates."""
    s = SUPERSAMPLE
    cx, cy = center if center is not None else (size / 2, size / 2)
    big = Image.new("L", (size * s, size * s), 0)
    _draw(ImageDraw.Draw(big), shape, cx * s, cy * s, side * s, 255)
    return big.resize((size, size), Image.Resampling.BOX)


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, fill) -> None:
    poly = shape_polygon(shape, cx, cy, side)
    if poly is None:
        h = side / 2
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def render(scene: Scene) -> Image.Image:
    """Draw a scene as a 64×64 RGB image (supersampled 4× then box-filtered, so edges are smooth)."""
    s = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), COLOURS[scene.background])
    cx, cy = POSITIONS[scene.position]
    cx, cy = cx + scene.jitter[0], cy + scene.jitter[1]
    _draw(ImageDraw.Draw(big), scene.shape, cx * s, cy * s, SIZES[scene.size] * s, COLOURS[scene.colour])
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def caption(scene: Scene, trigger: str = DEFAULT_TRIGGER) -> str:
    """Plain words: 'a [small] red circle [at the top left] on a blue background'.

    Large and centred are the defaults and go unsaid, so 'a red circle on a blue background' asks for a
    large centred circle. The concept shape is named by the trigger word instead of its real name.
    """
    noun = trigger if scene.shape == CONCEPT_SHAPE else scene.shape
    size = "small " if scene.size == "small" else ""
    where = f" at the {scene.position}" if scene.position != "center" else ""
    return f"a {size}{scene.colour} {noun}{where} on a {scene.background} background"


def sample_scenes(n: int, seed: int, shapes: tuple[str, ...] = BASE_SHAPES,
                  sizes: tuple[str, ...] = tuple(SIZES), positions: tuple[str, ...] = ("center",),
                  max_jitter: int = 3) -> list[Scene]:
    """n random scenes from a private RNG seeded with ``seed`` (same seed → same scenes)."""
    rng = random.Random(seed)
    names = list(COLOURS)
    scenes = []
    for _ in range(n):
        colour, background = rng.sample(names, 2)
        scenes.append(Scene(shape=rng.choice(shapes), colour=colour, background=background,
                            size=rng.choice(sizes), position=rng.choice(positions),
                            jitter=(rng.randint(-max_jitter, max_jitter), rng.randint(-max_jitter, max_jitter))))
    return scenes


def _new_folder(folder: Path) -> Path:
    """``folder``, made (empty or new): one that holds files is refused, as is one that cannot be made (a file where a
    folder is asked for, no permission): nothing the user made is overwritten, and no traceback."""
    if folder.is_dir() and any(folder.iterdir()):
        raise DataError(f"{folder}: already exists and is not empty; choose another dataset directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create it ({exc.strerror or exc}: {exc.filename or folder}); choose a "
                        "dataset directory you can write") from None
    return folder


def write_demo_dataset(dir: str | Path, n: int = 12, seed: int = 1234, trigger: str = DEFAULT_TRIGGER,
                       repeats: int = DEMO_REPEATS) -> Path:
    """Write n concept images + captions as ``<dir>/<repeats>_<trigger> shape/NNN.png|.txt``; returns that folder.

    Repeats default to 10 so that a short demo run (a few hundred steps) still sees each image many times.
    Refuses to write into an existing non-empty image folder (nothing the user made is overwritten).
    """
    folder = _new_folder(Path(dir) / f"{repeats}_{trigger} {DEMO_CLASS}")
    scenes = sample_scenes(n, seed, shapes=(CONCEPT_SHAPE,))
    # vary the colours evenly: cycle the foreground colour so every colour appears
    names = list(COLOURS)
    for i, scene in enumerate(scenes):
        colour = names[i % len(names)]
        background = scene.background if scene.background != colour else names[(i + 3) % len(names)]
        scene = replace(scene, colour=colour, background=background)
        save_image(render(scene), folder / f"{i:03d}.png")
        write_text(folder / f"{i:03d}.txt", caption(scene, trigger) + "\n")
    return folder


def write_all_pairs_dataset(dir: str | Path, seed: int = 1234, trigger: str = DEFAULT_TRIGGER,
                            repeats: int = DEMO_REPEATS) -> Path:
    """Opt-in concept set of issue 23 (not the demo's): 30 *large* crosses, one per ordered (colour, background) pair
    of the six colours, as ``<dir>/<repeats>_<trigger> shape/NNN.png|.txt``; returns that folder.

    The demo's 12 images show red and green crosses only small (blurred into blobs by the toy VAEs) and one of the
    learning benchmark's six colour pairs; the rectified-flow toys bind the new shape to the pairs they were shown
    (benchmarks/RESULTS.md, "Issue 23, sixth session"). Refuses to write into an existing non-empty folder.
    """
    folder = _new_folder(Path(dir) / f"{repeats}_{trigger} {DEMO_CLASS}")
    pairs = [(c, b) for c in COLOURS for b in COLOURS if c != b]
    for i, (scene, (colour, background)) in enumerate(zip(sample_scenes(len(pairs), seed, shapes=(CONCEPT_SHAPE,)),
                                                          pairs)):
        scene = replace(scene, colour=colour, background=background, size="large")
        save_image(render(scene), folder / f"{i:03d}.png")
        write_text(folder / f"{i:03d}.txt", caption(scene, trigger) + "\n")
    return folder


def write_reg_dataset(dir: str | Path, n: int = 24, seed: int = 999, repeats: int = 1) -> Path:
    """Write n base-world scenes (no concept) as regularisation images: ``<dir>/<repeats>_shape/NNN.png|.txt``.

    Training on these beside the concept images (prior preservation, ``data.reg_dir``) keeps prompts without
    the trigger drawing what the base model drew: the demo's drift stays near zero.
    """
    folder = _new_folder(Path(dir) / f"{repeats}_{DEMO_CLASS}")
    for i, scene in enumerate(sample_scenes(n, seed)):
        save_image(render(scene), folder / f"{i:03d}.png")
        write_text(folder / f"{i:03d}.txt", caption(scene) + "\n")
    return folder
