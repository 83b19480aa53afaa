"""Ninth-session leftovers: preview seeds, prompt TOML types, package preview settings, restarts, imports, UI."""

import pytest

from lorakit.errors import ConfigError
from lorakit.models.base import SamplePrompt


def test_preview_prompts_walk_the_base_seed(tmp_path):
    from lorakit.train.sampling import load_prompts

    txt = tmp_path / "p.txt"
    txt.write_text("a dog\na cat --d 3\n# note\na bird\n", encoding="utf-8")
    toml = tmp_path / "p.toml"
    toml.write_text('[[prompts]]\nprompt = "a fox"\n[[prompts]]\nprompt = "an owl"\nseed = 1\n', encoding="utf-8")
    d = SamplePrompt(prompt="", seed=100)
    got = [(p.prompt, p.seed) for p in load_prompts(["one", "two"], str(txt), d)]
    assert got == [("one", 100), ("two", 101), ("a dog", 102), ("a cat", 3), ("a bird", 104)]
    again = [(p.prompt, p.seed) for p in load_prompts(["one", "two"], str(txt), d)]
    assert again == got   # the same seeds at every load (every sampling step, every resume)
    assert [(p.prompt, p.seed) for p in load_prompts(["x"], str(toml), d)] == [("x", 100), ("a fox", 101),
                                                                                ("an owl", 1)]


@pytest.mark.parametrize("line, key", [('width = "1024"', "width"), ('seed = "3"', "seed"),
                                       ('cfg_scale = "7.5"', "cfg_scale")])
def test_prompt_toml_quoted_numbers_are_refused_naming_file_and_key(tmp_path, line, key):
    from lorakit.train.sampling import load_prompts

    toml = tmp_path / "p.toml"
    toml.write_text(f'[[prompts]]\nprompt = "a fox"\n{line}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_prompts([], str(toml), SamplePrompt(prompt="", width=512, height=512), 16)
    value = line.split('"')[1]
    assert str(info.value) == (f"sample.prompts_file: {toml}: prompts[0].{key} needs a number, got text '{value}'; "
                               f"write {key} = {value} without quotes")
    assert "\n" not in str(info.value)
    toml.write_text(f'[[prompts]]\nprompt = "a fox"\n{line.replace(chr(34), "")}\n', encoding="utf-8")
    assert load_prompts([], str(toml), SamplePrompt(prompt="", width=512, height=512), 16)[0].prompt == "a fox"


@pytest.mark.parametrize("variant, steps, cfg_scale, guidance", [
    ("klein-4b", 4, 1.0, None), ("klein-base-9b", 50, 4.0, None), ("dev", 50, 1.0, 3.5)])
def test_package_writes_the_flux2_variants_own_preview_settings(tmp_path, variant, steps, cfg_scale, guidance):
    # Klein has no guidance input: its package previews carry none (was sample.guidance's 3.5); steps / CFG are the
    # variant's own defaults, as its previews were drawn
    import json

    from PIL import Image

    from lorakit.cli import main
    from tests.unit.test_lora_publish import _as_family, _family_meta, _run_dir

    run = _run_dir(tmp_path)
    _as_family(run, "flux2", _family_meta("flux2", variant))
    assert main(["package", str(run), "-o", str(tmp_path / "pkg")]) == 0
    with Image.open(tmp_path / "pkg" / "preview_00.png") as im:
        settings, params = json.loads(im.text["lorakit"]), im.text["parameters"]
    assert (settings["steps"], settings["cfg_scale"], settings["guidance"]) == (steps, cfg_scale, guidance)
    assert ("Guidance:" in params) == (guidance is not None)
    civ = json.loads((tmp_path / "pkg" / "civitai.json").read_text())
    assert (civ["images"][0]["meta"]["steps"], civ["images"][0]["meta"]["cfgScale"]) == (steps, cfg_scale)
    assert ("guidance" in (tmp_path / "pkg" / "README.md").read_text()) == (guidance is not None)


@pytest.mark.parametrize("warmup, total, cycles", [(0, 40, 3), (5, 37, 4), (3, 20, 1)])
def test_cosine_with_restarts_follows_diffusers_hard_restarts(warmup, total, cycles):
    # after the warmup, every step's lr multiplier is diffusers' (what sd-scripts runs for lr_scheduler_num_cycles);
    # the warmup is lorakit's (step + 1) / warmup, as for every schedule
    import torch
    from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

    from lorakit.train.optim import build_scheduler

    def lrs(make):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
        sched, out = make(opt), []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ours = lrs(lambda o: build_scheduler(o, "cosine_with_restarts", warmup, total, num_cycles=cycles))
    ref = lrs(lambda o: get_cosine_with_hard_restarts_schedule_with_warmup(o, warmup, total, cycles))
    assert ours[warmup:] == pytest.approx(ref[warmup:], abs=1e-12)
    assert ours[:warmup] == pytest.approx([0.5 * (s + 1) / warmup for s in range(warmup)])
    assert sum(1 for a, b in zip(ours[warmup:], ours[warmup + 1:]) if b > a) == cycles - 1   # the restarts


def test_num_cycles_is_a_key_and_refused_without_restarts():
    from lorakit.config.load import load_config

    base = {"model": {"family": "sdxl", "checkpoint": "/m/sdxl.safetensors"}, "data": {"dir": "/d"}}
    cfg = load_config(data={**base, "optimizer": {"scheduler": "cosine_with_restarts", "num_cycles": 3}})
    assert (cfg.optimizer.scheduler, cfg.optimizer.num_cycles) == ("cosine_with_restarts", 3)
    with pytest.raises(ConfigError) as info:
        load_config(data={**base, "optimizer": {"scheduler": "cosine", "num_cycles": 3}})
    assert str(info.value).startswith('optimizer.num_cycles: only has an effect with optimizer.scheduler = '
                                      '"cosine_with_restarts"')
    with pytest.raises(ConfigError, match=r"^optimizer.num_cycles: "):
        load_config(data={**base, "optimizer": {"scheduler": "cosine_with_restarts", "num_cycles": 0}})


@pytest.mark.parametrize("scheduler", ['lr_scheduler = "constant"\n', ""])   # "constant" is sd-scripts' default
def test_kohya_import_drops_warmup_with_a_constant_schedule(tmp_path, scheduler):
    from lorakit.config.kohya_import import import_kohya_files

    path = tmp_path / "kohya.toml"
    head = ('pretrained_model_name_or_path = "/m/sd_xl_base_1.0.safetensors"\nnetwork_module = "networks.lora"\n'
            'train_data_dir = "/data/img"\nnetwork_train_unet_only = true\n')
    path.write_text(head + scheduler + "lr_warmup_steps = 100\n")
    text, mapped, dropped, notes = import_kohya_files(path)
    assert "warmup_steps" not in text
    assert dict(dropped)["lr_warmup_steps"].startswith("lr_scheduler is constant (sd-scripts' default), which "
                                                       "sd-scripts refuses with a warmup")
    path.write_text(head + 'lr_scheduler = "constant_with_warmup"\nlr_warmup_steps = 100\n')
    text, mapped, dropped, notes = import_kohya_files(path)
    assert "warmup_steps = 100" in text and "lr_warmup_steps" not in dict(dropped)


def test_ui_metrics_are_reread_only_when_the_file_changes(tmp_path, monkeypatch):
    import json

    from lorakit.ui import runs

    reads = []
    real = runs.read_metrics
    monkeypatch.setattr(runs, "read_metrics", lambda path: reads.append(path) or real(path))
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    for _ in range(3):   # the Jobs table's 2 s refresh, in one or more tabs
        assert [r["step"] for r in runs.metrics(tmp_path)] == [1]
    assert len(reads) == 1
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": 2, "loss": 0.4}) + "\n")
    assert [r["step"] for r in runs.metrics(tmp_path)] == [1, 2]
    assert [r["step"] for r in runs.metrics(tmp_path)] == [1, 2]
    assert len(reads) == 2
    runs.metrics(tmp_path).append({"step": 99})   # a caller's list is its own
    assert [r["step"] for r in runs.metrics(tmp_path)] == [1, 2]
    assert runs.metrics(tmp_path / "nowhere") == [] and len(reads) == 2


def test_cpu_estimate_divides_earlier_runs_steps_by_their_own_accumulation(tmp_path):
    # an earlier run with accumulation 4 took 8 s per optimizer step = 2 s per batch; the form's accumulation 2 and
    # 10 steps: 10 x 2 x 2 s = 40 s (was 8 s x 10 x 2 = 160 s, the earlier accumulation counted twice)
    import json

    from lorakit.config.load import dump_toml, load_config
    from lorakit.ui import runs
    from lorakit.ui.plan import CPU, estimate, measured_cpu_seconds, run_accumulation

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.toml").write_text(dump_toml({"training": {"gradient_accumulation": 4}}))
    (old / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1, "seconds": 30.0 if s == 1 else 8.0})
                                               + "\n" for s in range(1, 6)))
    plain = tmp_path / "plain"   # no config.toml readable: accumulation 1
    plain.mkdir()
    (plain / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1, "seconds": 2.0}) + "\n"
                                                 for s in range(1, 4)))
    assert (run_accumulation(old), run_accumulation(plain)) == (4, 1)
    cpu = measured_cpu_seconds((runs.metrics(d), run_accumulation(d)) for d in (old, plain))
    assert cpu == 2.0
    cfg = load_config(data={"model": {"family": "sdxl", "checkpoint": "/m/sdxl.safetensors"}, "data": {"dir": "/d"},
                            "training": {"max_steps": 10, "gradient_accumulation": 2}})
    text = estimate(cfg, CPU, cpu_seconds=cpu)
    assert "time: ≈ 40s (2.00 s per batch" in text
    assert "2.00 s per batch" in text


def test_kohya_ss_import_carries_restart_cycles_over(tmp_path):
    import json
    import tomllib

    from lorakit.config.kohya_ss_import import import_kohya_ss_gui
    from tests.unit.test_importers import _sdxl_gui

    (tmp_path / "img" / "10_ohwx woman").mkdir(parents=True)
    gui = {**_sdxl_gui(tmp_path / "img"), "lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 3}
    (tmp_path / "gui.json").write_text(json.dumps(gui))
    res = import_kohya_ss_gui(tmp_path / "gui.json", tmp_path / "run.toml")
    opt = tomllib.loads(res.text)["optimizer"]
    assert (opt["scheduler"], opt["num_cycles"]) == ("cosine_with_restarts", 3)
    assert ("lr_scheduler_num_cycles", "optimizer.num_cycles") in res.mapped
    assert "lr_scheduler_num_cycles" not in dict(res.dropped)


def test_musubi_import_carries_restart_cycles_over(tmp_path):
    import tomllib

    from lorakit.config.musubi_import import import_musubi
    from tests.unit.test_import_cmdline import _QWEN_DATASET, _QWEN_SH, _images

    a, b = _images(tmp_path / "a"), _images(tmp_path / "b")
    dataset = tmp_path / "qwen_dataset.toml"
    dataset.write_text(_QWEN_DATASET.format(a=a, b=b))
    script = tmp_path / "qwen.txt"
    script.write_text(_QWEN_SH.format(dataset=dataset).replace(
        "--learning_rate 5e-5", "--learning_rate 5e-5 --lr_scheduler cosine_with_restarts --lr_scheduler_num_cycles 2"))
    res = import_musubi(script, tmp_path / "qwen.toml")
    opt = tomllib.loads(res.text)["optimizer"]
    assert (opt["scheduler"], opt["num_cycles"]) == ("cosine_with_restarts", 2)
    assert "lr_scheduler_num_cycles" not in dict(res.dropped)
