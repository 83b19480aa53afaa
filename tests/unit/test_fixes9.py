"""Ninth session's fixes: config checks (scheduler names, kohya import), sample sizes, prompt files, captioning."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.config.kohya_import import import_kohya_files
from lorakit.config.load import load_config
from lorakit.errors import ConfigError

BASE = {"model": {"family": "sdxl", "checkpoint": "/models/sdxl.safetensors"}, "data": {"dir": "/data/ohwx"}}


def _load(**sections):
    data = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_config(data=data)


def _refused(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        _load(**sections)
    return str(info.value)


def _kohya(tmp_path: Path, body: str):
    path = tmp_path / "kohya.toml"
    path.write_text('pretrained_model_name_or_path = "/m/sd_xl_base_1.0.safetensors"\n'
                    'network_module = "networks.lora"\ntrain_data_dir = "/data/img"\n' + body)
    return import_kohya_files(path)


# ------------------------------------------------------------------------------------------- scheduler names

def test_other_tools_scheduler_names_get_their_lorakit_equivalent():
    # cosine_with_restarts is a lorakit schedule now (leftovers9: tests/unit/test_leftovers9.py)
    assert _load(optimizer={"scheduler": "cosine_with_restarts"}).optimizer.num_cycles == 1
    assert 'use "constant"' in _refused(optimizer={"scheduler": "constant_with_warmup"})
    assert 'use "linear"' in _refused(optimizer={"scheduler": "polynomial"})
    assert "did you mean cosine?" in _refused(optimizer={"scheduler": "cosin"})   # a typo still gets difflib's hint


def test_kohya_cosine_with_restarts_of_one_cycle_imports_as_cosine(tmp_path):
    text, mapped, dropped, notes = _kohya(tmp_path, 'lr_scheduler = "cosine_with_restarts"\n'
                                          "network_train_unet_only = true\n")
    assert 'scheduler = "cosine"' in text and not any("refuses" in n for n in notes)
    assert any("cosine_with_restarts with 1 cycle" in n for n in notes)
    text, mapped, dropped, _ = _kohya(tmp_path, 'lr_scheduler = "cosine_with_restarts"\nlr_scheduler_num_cycles = 1\n'
                                      "network_train_unet_only = true\n")
    assert 'scheduler = "cosine"' in text and "lr_scheduler_num_cycles" not in dict(dropped)
    text, mapped, dropped, notes = _kohya(tmp_path, 'lr_scheduler = "cosine_with_restarts"\n'
                                          "lr_scheduler_num_cycles = 3\nnetwork_train_unet_only = true\n")
    # more cycles are carried over (leftovers9): lorakit's cosine_with_restarts with optimizer.num_cycles
    assert 'scheduler = "cosine_with_restarts"' in text and "num_cycles = 3" in text
    assert ("lr_scheduler_num_cycles", "optimizer.num_cycles") in mapped and "lr_scheduler_num_cycles" not in dict(dropped)


# ------------------------------------------------------------------------ kohya import: sd-scripts' TE default

def test_kohya_without_unet_only_trains_the_text_encoder_as_sd_scripts(tmp_path):
    """sd-scripts' train_network.py: is_train_text_encoder = not network_train_unet_only (store_true, default off)."""
    text, _, _, notes = _kohya(tmp_path, "learning_rate = 1e-4\n")
    cfg = load_config(data=__import__("tomllib").loads(text))
    assert cfg.network.train_text_encoder is True and cfg.network.text_encoder_lr is None  # at optimizer.lr, 1e-4
    assert any(n.startswith("network_train_unet_only is not set, so sd-scripts trains a LoRA on the text encoder too")
               and "at lr 0.0001" in n for n in notes)
    # unet_lr alone: sd-scripts trains the text encoder at its default learning_rate, 2e-6
    text, _, _, notes = _kohya(tmp_path, "unet_lr = 1e-4\n")
    cfg = load_config(data=__import__("tomllib").loads(text))
    assert cfg.optimizer.lr == 1e-4 and cfg.network.text_encoder_lr == 2e-6
    assert any("sd-scripts' default learning_rate" in n for n in notes)
    # both: learning_rate reaches the text encoder
    text, _, _, _ = _kohya(tmp_path, "unet_lr = 1e-4\nlearning_rate = 5e-5\n")
    cfg = load_config(data=__import__("tomllib").loads(text))
    assert (cfg.optimizer.lr, cfg.network.text_encoder_lr) == (1e-4, 5e-5)
    # set: as written
    text, _, _, notes = _kohya(tmp_path, "network_train_unet_only = true\n")
    assert "train_text_encoder = false" in text and not any("network_train_unet_only" in n for n in notes)


def test_kohya_without_unet_only_text_encoder_lr_zero_and_te_cache(tmp_path):
    text, _, dropped, notes = _kohya(tmp_path, "text_encoder_lr = 0\n")
    assert "train_text_encoder = false" in text and dict(dropped)["text_encoder_lr"].startswith("0: sd-scripts trains no")
    assert not any("refuses" in n for n in notes)
    text, _, dropped, notes = _kohya(tmp_path, "cache_text_encoder_outputs = true\n")
    assert "train_text_encoder = true" in text and "cache_text_encoder_outputs" not in text
    assert "keeps the text encoders loaded" in dict(dropped)["cache_text_encoder_outputs"]
    assert not any("refuses" in n for n in notes)


def test_kohya_without_unet_only_for_a_family_without_text_encoder_lora_says_so(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text('pretrained_model_name_or_path = "/m/z.safetensors"\nnetwork_module = "networks.lora_zimage"\n'
                    'train_data_dir = "/d"\n')
    text, _, _, notes = import_kohya_files(path)
    assert "train_text_encoder" not in text and not any("refuses" in n for n in notes)
    assert any("offers no text-encoder LoRA for zimage: the denoiser alone is trained" in n for n in notes)


def test_spec_text_encoder_lora_matches_what_each_family_refuses():
    """ModelSpec.text_encoder_lora (read by the import) says what the family's own check says."""
    import torch

    from lorakit.models.registry import families, get_family

    for name in families():
        family = get_family(name)
        data = {"model": {"family": name, "checkpoint": "/m/x.safetensors"}, "data": {"dir": "/d"}}
        cfg = load_config(data=data)  # familywalk: the loader refuses the key itself for a family without it
        cfg.network.train_text_encoder = True
        try:
            family.Adapter.check_config(cfg, torch.device("cpu"))
            refused = ""
        except ConfigError as e:
            refused = str(e)
        assert family.SPEC.text_encoder_lora == (not refused.startswith("network.train_text_encoder")), (name, refused)


# ------------------------------------------------------------------------------------------ sample sizes

def test_sample_size_not_a_multiple_of_the_family_s_is_refused_once_for_every_family():
    from lorakit.models.registry import get_family

    assert (get_family("sdxl").SPEC.sample_multiple, get_family("sd15").SPEC.sample_multiple,
            get_family("flux1").SPEC.sample_multiple) == (32, 64, 16)
    assert _refused(sample={"width": 1000}) == ("sample.width: must be a multiple of 32 for sdxl (the sampler's "
                                                "latent grid), got 1000; use 992")
    msg = _refused(model={"family": "flux1"}, sample={"height": 1010})
    assert msg.startswith("sample.height: must be a multiple of 16 for flux1") and msg.endswith("use 1008")
    assert _load(model={"family": "flux1"}, sample={"height": 1008}).sample.height == 1008
    # a prompt's --w / --h: the same rule, naming the line
    from lorakit.models.base import SamplePrompt
    from lorakit.train.sampling import parse_prompt

    with pytest.raises(ConfigError) as info:
        parse_prompt("a cat --w 1000", SamplePrompt(prompt=""), "p.txt:3", multiple=32)
    assert str(info.value) == ("p.txt:3: --w in 'a cat --w 1000' must be a multiple of 32 between 32 and 16384 (the "
                               "sampler's latent grid), got 1000; use 992")
    assert parse_prompt("a cat --w 992 --h 1024", SamplePrompt(prompt=""), multiple=32).width == 992


def test_previews_round_a_default_size_from_the_resolution_with_a_note(tmp_path):
    from types import SimpleNamespace

    from lorakit.models.registry import get_family
    from lorakit.train.previews import Previews

    cfg = _load(data={"resolution": 1000}, sample={"prompts": ["a cat", "a dog --w 512"]})
    logged: list[str] = []
    pv = Previews(cfg, get_family("sdxl").SPEC, None, SimpleNamespace(), None, None, None, logged.append)
    assert [(p.width, p.height) for p in pv.prompts] == [(992, 992), (512, 992)]
    assert logged == ["note: previews are drawn at 992x992: the training resolution 1000x1000 is not a multiple of "
                      "32, which the sampler needs (set sample.width / sample.height to choose)"]
    logged.clear()
    Previews(_load(data={"resolution": 1024}, sample={"prompts": ["a"]}), get_family("sdxl").SPEC, None, SimpleNamespace(), None, None, None,
             logged.append)
    assert logged == []


# ------------------------------------------------------------------------------------------ prompt files

def _prompts(tmp_path: Path, name: str, data: bytes | str, inline=()):
    from lorakit.models.base import SamplePrompt
    from lorakit.train.sampling import load_prompts

    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return load_prompts(list(inline), str(path), SamplePrompt(prompt="", width=512, height=512), 16)


def _prompt_error(tmp_path: Path, name: str, data: bytes | str) -> str:
    with pytest.raises(ConfigError) as info:
        _prompts(tmp_path, name, data)
    return str(info.value)


def test_prompt_file_in_utf16_is_read_and_undecodable_or_huge_ones_are_one_line(tmp_path):
    got = _prompts(tmp_path, "p.txt", "a zkx café --d 3\n".encode("utf-16"))   # Notepad's "Unicode" (BOM)
    assert [(p.prompt, p.seed) for p in got] == [("a zkx café", 3)]
    msg = _prompt_error(tmp_path, "p.txt", "a zkx caf\xe9\n".encode("latin-1"))
    assert msg.startswith("sample.prompts_file: ") and msg.endswith("is not UTF-8 (nor UTF-16 with a BOM) text; save "
                                                                    "it as UTF-8")
    msg = _prompt_error(tmp_path, "p.txt", b"a zkx\n" * 200_000)
    assert msg.endswith("is 1.1 MiB, not a prompt file (a few lines of text, at most 1 MiB); check the path")
    assert _prompts(tmp_path, "p.toml", "[[prompts]]\nprompt = 'a'\n".encode("utf-16"))[0].prompt == "a"


def test_prompt_file_without_a_prompt_is_refused_not_silently_empty(tmp_path):
    msg = _prompt_error(tmp_path, "p.txt", "# only a comment\n\n")
    assert msg.endswith("holds no prompt (only blank or # lines); write one prompt per line, or remove the key")
    assert "holds no prompt (no [[prompts]] table)" in _prompt_error(tmp_path, "p.toml", "")
    from lorakit.models.base import SamplePrompt
    from lorakit.train.sampling import load_prompts

    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_prompts([], str(tmp_path), SamplePrompt(prompt=""))


def test_prompt_toml_in_sd_scripts_layout_or_with_other_tables_is_refused(tmp_path):
    kohya = '[prompt]\nwidth = 1024\n[[prompt.subset]]\nprompt = "a zkx"\n'
    msg = _prompt_error(tmp_path, "p.toml", kohya)
    assert "is in sd-scripts' [prompt] / [[prompt.subset]] layout; lorakit reads [[prompts]] tables" in msg
    msg = _prompt_error(tmp_path, "p.toml", '[[prompt]]\nprompt = "a"\n[[prompts]]\nprompt = "b"\n')
    assert msg.endswith("only [[prompts]] tables are read, got prompt")


@pytest.mark.parametrize("table, expect", [
    ('width = "big"', "prompts[0].width needs a whole number, got 'big'"),
    ("width = 1000", "prompts[0].width must be a multiple of 16 between 16 and 16384"),
    ("steps = 0", "prompts[0].steps (steps) must be between 1 and 1000, got 0"),
    ("seed = -1", "prompts[0].seed (seed) must be a whole number ≥ 0, got -1"),
    ("seed = 1.5", "prompts[0].seed needs a whole number, got 1.5"),
    ("cfg_scale = true", "prompts[0].cfg_scale needs a number, got True"),
    ("sampler = 3", "prompts[0].sampler must be text, got 3"),
    ("negative_prompt = ['x']", "prompts[0].negative_prompt must be text"),
])
def test_prompt_toml_values_are_checked_as_the_sample_keys(tmp_path, table, expect):
    msg = _prompt_error(tmp_path, "p.toml", f'[[prompts]]\nprompt = "a zkx"\n{table}\n')
    assert expect in msg and msg.startswith("sample.prompts_file: ")
    msg = _prompt_error(tmp_path, "p.toml", "[[prompts]]\nprompt = 5\n")
    assert msg.endswith("prompts[0].prompt must be text, got 5")


@pytest.mark.parametrize("flags, expect", [("--s 0", "(steps) must be between 1 and 1000, got 0"),
                                           ("--d -1", "(seed) must be a whole number ≥ 0, got -1"),
                                           ("--l -2", "must be between 0 and 100, got -2.0"),
                                           ("--w 0", "must be a multiple of 16 between 16 and 16384"),
                                           ("--s 2.5", "needs a whole number, got '2.5'")])
def test_prompt_flag_values_out_of_range_are_refused(flags, expect):
    from lorakit.models.base import SamplePrompt
    from lorakit.train.sampling import parse_prompt

    with pytest.raises(ConfigError) as info:
        parse_prompt(f"a zkx {flags}", SamplePrompt(prompt=""), "sample.prompts[0]", 16)
    assert str(info.value).startswith("sample.prompts[0]: --") and expect in str(info.value)


def test_prompt_flags_are_read_in_any_case_as_sd_scripts_does():
    from lorakit.models.base import SamplePrompt
    from lorakit.train.sampling import parse_prompt

    p = parse_prompt("a zkx --W 768 --H 512 --D 4 --N blurry --SS euler", SamplePrompt(prompt=""), multiple=16)
    assert (p.prompt, p.width, p.height, p.seed, p.negative, p.sampler) == ("a zkx", 768, 512, 4, "blurry", "euler")


# ------------------------------------------------------------------------- notes said before training

def test_previews_without_prompts_say_so_once(tmp_path):
    from types import SimpleNamespace

    from lorakit.models.registry import get_family
    from lorakit.train.previews import Previews

    logged: list[str] = []
    Previews(_load(sample={"every_n_steps": 250}), get_family("sdxl").SPEC, None, SimpleNamespace(), None, None,
             None, logged.append)
    assert logged == ["note: no previews are drawn (no samples every 250 steps, no before/after grid): set "
                      "sample.prompts or sample.prompts_file, e.g. sample.prompts = [\"a photo of <trigger> ...\"]"]
    logged.clear()
    Previews(_load(sample={"prompts": ["a zkx"]}), get_family("sdxl").SPEC, None, SimpleNamespace(), None, None,
             None, logged.append)
    assert logged == []


def test_lorakit_train_prints_the_config_notes_before_training(tmp_path, monkeypatch, capsys):
    """cfg_notes (e.g. memory.cache_text_encoder_outputs turned off) were printed by `config show` only."""
    import lorakit.train.loop as loop
    from lorakit.cli import main

    seen = []
    monkeypatch.setattr(loop, "train", lambda cfg, **kw: seen.append(cfg))
    run = tmp_path / "run.toml"
    run.write_text('[model]\nfamily = "sdxl"\ncheckpoint = "/m/x.safetensors"\n[data]\ndir = "/d"\nshuffle_caption = '
                   f'true\n[save]\ndir = "{tmp_path.as_posix()}"\n')
    assert main(["train", str(run)]) == 0 and seen
    out = capsys.readouterr().out
    assert "note: memory.cache_text_encoder_outputs: turned off because data.shuffle_caption makes" in out


# -------------------------------------------------------------------------------- package: preview settings

def test_package_previews_name_the_family_s_sampler_and_the_drawn_size(tmp_path):
    """SD 1.5 previews were labelled 'Sampler: flow-match euler' (only sdxl was named) and sized from data.resolution."""
    import json

    from PIL import Image

    from lorakit.cli import main
    from lorakit.config.load import dump_toml
    from tests.unit.test_lora_publish import _run_dir

    run = _run_dir(tmp_path)
    cfg = {"model": {"family": "sd15", "checkpoint": "/m/v1-5-pruned-emaonly.safetensors"},
           "data": {"dir": "/d", "resolution": 512}, "save": {"name": "ohwx"},
           "sample": {"prompts": ["ohwx woman, portrait --d 7", "ohwx woman on a bike"], "sampler": "dpmpp_2m"}}
    (run / "config.toml").write_text(dump_toml(cfg))
    meta = run / "ohwx.safetensors"
    from safetensors.torch import load_file, safe_open, save_file

    with safe_open(str(meta), "pt") as f:
        md = {**f.metadata(), "modelspec.architecture": "stable-diffusion-v1/lora", "ss_base_model_version": "sd_v1"}
    save_file(load_file(str(meta)), meta, metadata=md)
    assert main(["package", str(run), "-o", str(tmp_path / "pkg")]) == 0
    with Image.open(tmp_path / "pkg" / "preview_00.png") as im:
        params, settings = im.text["parameters"], json.loads(im.text["lorakit"])
    assert "Sampler: dpmpp_2m" in params and settings["sampler"] == "dpmpp_2m"
    assert "Size: 16x16" in params and (settings["width"], settings["height"]) == (16, 16)   # as drawn


# ------------------------------------------------------------------------------------------------ captioning

def test_caption_thresholds_and_generation_lengths_out_of_range_are_refused(tmp_path, capsys):
    from PIL import Image

    from lorakit.cli import main

    (tmp_path / "plain").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "plain" / "a.png")
    for args, expect in ((["--captioner", "wd14", "--general-threshold", "35"],
                          "--general-threshold: a probability in (0, 1], e.g. 0.35, got 35"),
                         (["--captioner", "wd14", "--character-threshold", "0"],
                          "--character-threshold: a probability in (0, 1], e.g. 0.35, got 0"),
                         (["--captioner", "toy", "--max-new-tokens", "0"], "--max-new-tokens: must be at least 1, got 0"),
                         (["--captioner", "toy", "--num-beams", "-1"], "--num-beams: must be at least 1, got -1")):
        assert main(["caption", str(tmp_path / "plain"), "--model", str(tmp_path / "none"), *args]) == 2
        assert expect in capsys.readouterr().err
    assert not list((tmp_path / "plain").glob("*.txt"))


def test_a_captioner_answering_for_fewer_images_fails_the_batch_and_writes_nothing(tmp_path):
    from PIL import Image

    from lorakit.caption.run import caption_dataset, list_targets
    from lorakit.caption.text import TextOptions

    for i in range(3):
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(tmp_path / f"{i}.png")

    class Short:
        name, kind = "short", "sentence"

        def caption(self, images):
            return ["a red square"] * (len(images) - 1)

    targets, progress, _ = list_targets(tmp_path)
    summary = caption_dataset(targets, Short(), TextOptions(trigger="zkx"), progress_file=progress, batch_size=3,
                              log=lambda s: None)
    assert [o.status for o in summary.outcomes] == ["failed"] * 3   # was: KeyError (a traceback)
    assert summary.outcomes[0].reason == ("captioner error: 2 caption(s) for 3 image(s) in this batch; none written "
                                          "(try --batch-size 1)")
    assert not list(tmp_path.glob("*.txt"))


def test_a_blacklist_tag_the_tagger_does_not_have_is_refused_with_the_nearest(tmp_path):
    from lorakit.caption.tagger import TagOptions, WD14Tagger
    from tests.unit.caption_models import build_tagger

    folder = build_tagger(tmp_path / "wd14")
    with pytest.raises(ConfigError) as info:
        WD14Tagger(folder, TagOptions(blacklist=("1girl", "red theme", "simple_backgrund")))
    csv_path = folder / "selected_tags.csv"
    assert str(info.value) == (f"--blacklist: 'simple backgrund' is not a tag of this tagger ({csv_path}); did you "
                               "mean 'simple background'?")
    assert WD14Tagger(folder, TagOptions(blacklist=("1girl", "Red_Theme")))._black == {"1girl", "red theme"}


def test_class_without_trigger_keeps_the_folder_s_trigger_in_front():
    from lorakit.caption.text import TextOptions, finish

    lead = "ohwx woman"
    assert finish("a woman in a red coat", TextOptions(class_word="woman"), "sentence", lead=lead).text == \
        "ohwx woman, a woman in a red coat"                               # was: "woman, a woman in a red coat"
    assert finish(["smile", "red coat"], TextOptions(class_word="person"), "tags", lead=lead).text == \
        "ohwx woman person, smile, red coat"
    assert finish(["smile"], TextOptions(trigger="zkx", class_word="woman"), "tags", lead=lead).text == \
        "zkx woman, smile"
    assert finish(["smile"], TextOptions(class_word="woman"), "tags").text == "woman, smile"   # a plain folder


def test_toy_captioner_with_a_wrong_model_path_says_to_leave_it_out(tmp_path):
    from lorakit.caption.backends import load_captioner
    from lorakit.errors import ModelLoadError

    with pytest.raises(ModelLoadError) as info:
        load_captioner("toy", tmp_path / "nope", device="cpu")
    assert str(info.value) == (f"--model: {tmp_path / 'nope'} not found; --captioner toy uses the toy captioner "
                               "lorakit ships (leave --model out)")


# ------------------------------------------------------------------------------------------ preview grids

def test_grid_cells_of_other_sizes_keep_their_aspect(tmp_path):
    from PIL import Image

    from lorakit.train.previews import labelled_grid

    wide, tall = Image.new("RGB", (128, 64), (255, 0, 0)), Image.new("RGB", (64, 128), (0, 0, 255))
    grid = labelled_grid([[(wide, "a\nwide"), (tall, "b\ntall")]])
    k = 4                                                    # 64 px sides enlarged to CELL_MIN (256)
    assert grid.width == 2 * 128 * k                         # boxes of the largest width and height
    assert grid.getpixel((2, 128 * k // 2)) == (255, 0, 0)   # the wide one spans its box's width ...
    assert grid.getpixel((128 * k // 2, 5)) == (255, 255, 255)   # ... and is centred in its height (not stretched)
    assert grid.getpixel((128 * k + 10, 128 * k // 2)) == (255, 255, 255)   # the tall one is centred in its width
    assert grid.getpixel((128 * k + 64 * k, 128 * k // 2)) == (0, 0, 255)


def test_before_after_grid_labels_each_image_with_its_own_prompt(tmp_path):
    """A resume may change sample.prompts: the 'before' row is labelled with what drew it, not today's prompts."""
    from lorakit.train.previews import before_after_grid
    from tests.unit.test_preview_grids import previews

    pv = previews(tmp_path)
    pv.draw(0, tag="before")
    pv.draw(20, tag="after")
    labels: list[str] = []
    import lorakit.train.previews as previews_module

    real = previews_module.labelled_grid
    try:
        previews_module.labelled_grid = lambda rows: (labels.extend(t for row in rows for _, t in row), real(rows))[1]
        from lorakit.models.base import SamplePrompt

        before_after_grid(pv.run, "toy", 2, [SamplePrompt(prompt="edited later", seed=1)] * 2)
    finally:
        previews_module.labelled_grid = real
    assert labels[0] == "before (step 0) · seed 3\na red zkx on a blue background"
    assert labels[3] == "after (step 20) · seed 5\na zkx at night"


def test_guidance_and_sampler_flags_are_refused_where_the_family_s_previews_ignore_them(tmp_path):
    from lorakit.models.base import SamplePrompt
    from lorakit.train.sampling import load_prompts, parse_prompt

    d = SamplePrompt(prompt="")
    with pytest.raises(ConfigError) as info:
        parse_prompt("a zkx --ss dpmpp_2m", d, "p.txt:1", 16, "flux1")
    assert str(info.value) == ("p.txt:1: --ss in 'a zkx --ss dpmpp_2m': flux1's previews take no sampler (only sd15, "
                               "sdxl do); remove it")
    with pytest.raises(ConfigError, match=r"--g in 'a zkx --g 3.5': sdxl's previews take no guidance \(only flux1, "):
        parse_prompt("a zkx --g 3.5", d, "p.txt:1", 32, "sdxl")
    with pytest.raises(ConfigError, match=r"the sampler must be one of euler, dpmpp_2m, got 'ddim'"):
        parse_prompt("a zkx --ss ddim", d, "p.txt:1", 32, "sdxl")
    assert parse_prompt("a zkx --ss dpmpp_2m", d, "p.txt:1", 32, "sdxl").sampler == "dpmpp_2m"
    assert parse_prompt("a zkx --g 2.5", d, "p.txt:1", 16, "flux1").guidance == 2.5
    toml = tmp_path / "p.toml"
    toml.write_text('[[prompts]]\nprompt = "a zkx"\nsampler = "euler"\n')
    with pytest.raises(ConfigError, match=r"prompts\[0\]\.sampler: zimage's previews take no sampler"):
        load_prompts([], str(toml), d, 16, "zimage")
