"""Loop-side pieces: prompt syntax, metrics files, the run folder, health checks."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.errors import ConfigError, TrainingError
from lorakit.models.base import SamplePrompt
from lorakit.train.health import StallWatchdog, image_problem, is_finite
from lorakit.train.metrics import MetricsWriter, plot_loss, read_metrics
from lorakit.train.rundir import RunDir
from lorakit.train.sampling import load_prompts, parse_prompt, sample_filename

DEFAULTS = SamplePrompt(prompt="", negative="ugly", width=512, height=512, steps=None, seed=7, cfg_scale=7.0)


def test_kohya_prompt_flags():
    p = parse_prompt("a photo of ohwx, smiling --n blurry, bad --w 832 --h 1216 --s 28 --d 42 --l 5.5 --g 3.5 "
                     "--ss dpmpp_2m", DEFAULTS)
    assert p.prompt == "a photo of ohwx, smiling"
    assert (p.negative, p.width, p.height, p.steps, p.seed, p.cfg_scale, p.guidance, p.sampler) == \
        ("blurry, bad", 832, 1216, 28, 42, 5.5, 3.5, "dpmpp_2m")


def test_prompt_defaults_kept_and_bad_number():
    p = parse_prompt("a cat", DEFAULTS)
    assert (p.negative, p.width, p.seed, p.cfg_scale) == ("ugly", 512, 7, 7.0)
    with pytest.raises(ConfigError, match=r"--w needs a number"):
        parse_prompt("a cat --w big", DEFAULTS)


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("\ufeff# comment\na dog --d 3\n\n  a cat --s 10\n", encoding="utf-8")
    toml = tmp_path / "p.toml"
    toml.write_text('[[prompts]]\nprompt = "a bird"\nseed = 9\nwidth = 640\n', encoding="utf-8")
    got = load_prompts(["inline --d 1"], str(txt), DEFAULTS)
    assert [(p.prompt, p.seed, p.steps) for p in got] == [("inline", 1, None), ("a dog", 3, None), ("a cat", 9, 10)]  # 7 + its index 2
    got = load_prompts([], str(toml), DEFAULTS)
    assert (got[0].prompt, got[0].seed, got[0].width) == ("a bird", 9, 640)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[prompts]]\ntext = "x"\n')
    with pytest.raises(ConfigError, match="needs 'prompt'"):
        load_prompts([], str(bad), DEFAULTS)
    assert sample_filename("ohwx", 500, 2, 42) == "ohwx_step00000500_02_42.png"


def test_metrics_resume_truncates_and_plot(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 11):
        w.write({"step": step, "loss": 1.0 / step})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 11, "lo')  # a torn line from a kill mid-write
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 11))
    w = MetricsWriter(tmp_path, tensorboard=False, resume_step=6)
    w.write({"step": 7, "loss": 0.5})
    w.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6, 7]
    out = plot_loss(read_metrics(tmp_path / "metrics.jsonl"), tmp_path / "loss.png")
    img = Image.open(out)
    assert img.size == (640, 360)
    assert np.asarray(img).std() > 5  # something was drawn


def test_rundir_refuses_existing_and_finds_complete_state(tmp_path):
    run = RunDir(tmp_path / "r", "ohwx")
    run.create()
    (run.root / "ohwx.safetensors").write_bytes(b"x")
    with pytest.raises(TrainingError, match="already holds a run"):
        RunDir(tmp_path / "r", "ohwx").create()
    assert (run.root / "ohwx.safetensors").read_bytes() == b"x"
    for step, complete in ((100, True), (200, True), (300, False)):
        d = run.state_path(step)
        d.mkdir(parents=True)
        if complete:
            (d / "COMPLETE").write_text("")
    assert run.latest_state() == run.state_path(200)
    for step in (100, 200, 300):
        run.lora_path(step).write_bytes(b"l")
    run.prune(keep_last=1)
    assert sorted(p.name for p in run.root.glob("ohwx-step*")) == ["ohwx-step00000300.safetensors"]
    assert not run.state_path(100).exists() and run.state_path(200).exists()


def test_health_checks():
    assert is_finite(torch.tensor(1.0)) and not is_finite(torch.tensor(float("nan")))
    assert not is_finite(float("inf"))
    assert image_problem(Image.new("RGB", (8, 8), (0, 0, 0))) == "black"
    assert image_problem(Image.new("RGB", (8, 8), (120, 30, 40))) == "constant"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    assert image_problem(noise) is None


def test_watchdog_reports_stall():
    lines = []
    dog = StallWatchdog(0.2, log=lines.append).start()
    dog.beat("caching latents")
    import time

    time.sleep(1.0)
    dog.stop()
    assert lines and "caching latents" in lines[0] and dog.stalls == 1
