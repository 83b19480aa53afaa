"""The shipped toy captioner (a tiny BLIP trained on the toy world) reads shape, colour and background."""

import pytest

from lorakit.caption.toy import TOY_CAPTIONER, caption_demo_dataset, heldout_scenes, measure, parse_caption, \
    scene_caption, train_scenes
from lorakit.toy import world


def test_caption_parser_reads_back_every_attribute():
    for s in world.sample_scenes(50, 5, shapes=world.ALL_SHAPES, positions=tuple(world.POSITIONS)):
        got = parse_caption(scene_caption(s))
        assert got == {"shape": s.shape, "colour": s.colour, "background": s.background, "size": s.size}
    assert parse_caption("a red thing somewhere") is None


def test_heldout_scenes_are_not_training_scenes():
    train = set(train_scenes(12000))
    held = heldout_scenes(200, list(train))
    assert len(held) == 200 and not train & set(held)


def test_shipped_toy_captioner_is_at_least_90_percent_right_per_attribute():
    assert (TOY_CAPTIONER / "model.safetensors").stat().st_size < 5_000_000
    result = measure(TOY_CAPTIONER, n=64)
    for attribute in ("shape", "colour", "background"):
        assert result["accuracy"][attribute] >= 0.9, result


def test_demo_captions_name_the_concept_by_the_trigger(tmp_path):
    train = world.write_demo_dataset(tmp_path / "train")
    world.write_reg_dataset(tmp_path / "reg", n=6)
    truth = {p.relative_to(tmp_path): p.read_text().strip() for p in sorted(train.glob("*.txt"))}
    keep = tmp_path / "reg" / "1_shape" / "000.txt"
    for p in tmp_path.rglob("*.txt"):
        if p != keep:
            p.unlink()
    keep.write_text("my own caption\n")
    caption_demo_dataset(tmp_path, world.DEFAULT_TRIGGER, log=lambda _: None)
    assert keep.read_text() == "my own caption\n"
    got = {p.relative_to(tmp_path): p.read_text().strip() for p in sorted(train.glob("*.txt"))}
    assert len(got) == 12
    same = sum(got[n] == truth[n] for n in got)
    assert same >= 11, (got, truth)          # e.g. "a red zkx on a blue background", as the world says
    assert all(world.DEFAULT_TRIGGER in t.split() for t in got.values())
    reg = sorted((tmp_path / "reg" / "1_shape").glob("*.txt"))
    assert len(reg) == 6 and not any(world.DEFAULT_TRIGGER in p.read_text() for p in reg)


@pytest.mark.gpu
def test_toy_captioner_batches_on_the_gpu_like_on_the_cpu():
    import torch

    from lorakit.caption.backends import load_captioner

    assert torch.cuda.is_available()
    images = [world.render(s) for s in heldout_scenes(32)]
    gpu = load_captioner("toy", max_new_tokens=16)                 # device auto: CUDA, bf16
    assert gpu.device == "cuda" and gpu.model.dtype == torch.bfloat16
    cpu = load_captioner("toy", device="cpu", max_new_tokens=16)
    got, want = gpu.caption(images), cpu.caption(images)
    assert sum(g == w for g, w in zip(got, want)) >= 30, list(zip(got, want))
