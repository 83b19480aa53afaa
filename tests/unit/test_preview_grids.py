"""Outputs you can judge (issue 26): each preview PNG carries its prompt and settings as PNG text, every draw
writes a labelled grid (prompt, step, seed) enlarged to see, the before/after grid is labelled too, and with
TensorBoard on the grids are in its images tab."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from PIL import Image

from lorakit.config.load import load_config
from lorakit.models.base import SamplePrompt
from lorakit.train.metrics import MetricsWriter
from lorakit.train.previews import CELL_MIN, Previews


class FakeAdapter:
    """Draws a flat 64x64 image whose colour follows the seed (what previews do with it is under test)."""

    def sample(self, prompt: SamplePrompt, generator) -> Image.Image:
        return Image.new("RGB", (prompt.width, prompt.height), (prompt.seed * 40 % 256, 90, 200))


def previews(tmp_path: Path, metrics=None) -> Previews:
    cfg = load_config(None, ["model.family=sdxl", "model.checkpoint=x.safetensors", f"data.dir={tmp_path}",
                             "data.resolution=64", "data.min_bucket_reso=64", "save.name=toy", "network.rank=4",
                             'sample.prompts=["a red zkx on a blue background --d 3", "a zkx at night --d 5"]'])
    run = SimpleNamespace(samples=tmp_path / "samples")
    run.samples.mkdir()
    spec = SimpleNamespace(default_cfg_scale=7.0)
    watchdog = SimpleNamespace(beat=lambda *_: None)
    pv = Previews(cfg, spec, FakeAdapter(), run, __import__("torch").device("cpu"), None, watchdog, print)
    pv.metrics = metrics
    return pv


def _has_text(img: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """Whether the white caption band in ``box`` holds dark (text) pixels."""
    band = img.convert("L").crop(box)
    return min(band.getdata()) < 100


def test_each_sample_carries_its_prompt_step_seed_and_settings(tmp_path):
    pv = previews(tmp_path)
    paths = pv.draw(0, tag="before")
    assert [p.name for p in paths] == ["toy_before_00_3.png", "toy_before_01_5.png"]
    info = Image.open(paths[1]).info
    assert info["prompt"] == "a zkx at night" and info["seed"] == "5" and info["step"] == "0"
    settings = json.loads(info["lorakit"])
    assert (settings["width"], settings["height"], settings["rank"], settings["run"]) == (64, 64, 4, "toy")


def test_grids_are_labelled_and_large_enough_to_see(tmp_path):
    pv = previews(tmp_path)
    pv.draw(0, tag="before")
    pv.draw(10)
    step_grid = Image.open(tmp_path / "samples" / "grid_step00000010.png")
    cell = 64 * -(-CELL_MIN // 64)                                   # 64 px enlarged by a whole factor to >= 256
    assert step_grid.width == 2 * cell and step_grid.height > cell
    assert step_grid.getpixel((cell // 2, cell // 2)) == (3 * 40, 90, 200)          # nearest: colours kept exactly
    assert _has_text(step_grid, (0, cell, cell, step_grid.height))
    pv.draw(20, tag="after")
    grid = Image.open(pv.grid())
    assert grid.width == 2 * cell and grid.height > 2 * cell
    row = grid.height // 2
    assert _has_text(grid, (0, cell, cell, row)) and _has_text(grid, (cell, row + cell, 2 * cell, grid.height))
    # a different caption changes the band: the labels are drawn from the prompt, step and seed
    from lorakit.train.previews import labelled_grid

    img = Image.new("RGB", (64, 64))
    a, b = labelled_grid([[(img, "step 1 · seed 3\nx")]]), labelled_grid([[(img, "step 2 · seed 3\nx")]])
    assert a.size == b.size and a.tobytes() != b.tobytes()


def test_tensorboard_gets_the_grids(tmp_path):
    metrics = MetricsWriter(tmp_path, tensorboard=True)
    pv = previews(tmp_path, metrics)
    pv.draw(10)
    metrics.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert "samples/step" in acc.Tags()["images"]
    event = acc.Images("samples/step")[0]
    assert event.step == 10 and event.width == 2 * 64 * -(-CELL_MIN // 64)
