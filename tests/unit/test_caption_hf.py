"""transformers captioners on tiny random models of the real classes (Florence-2, Qwen2.5-VL, Qwen3-VL, BLIP)."""

import json
import shutil

import pytest
from PIL import Image

from lorakit.caption.backends import load_captioner
from lorakit.caption.hf import INSTRUCTIONS
from lorakit.caption.run import caption_dataset, list_targets
from lorakit.caption.text import TextOptions
from lorakit.errors import ModelLoadError
from tests.unit import caption_models as cm

BUILDERS = {
    "blip": (cm.build_blip, "blip", {"max_new_tokens": 6}),
    "florence2": (cm.build_florence2, "florence2", {"max_new_tokens": 6, "num_beams": 2}),
    "qwen2_5_vl": (lambda f: cm.build_qwen_vl(f, "qwen2_5_vl"), "vlm", {"max_new_tokens": 6}),
    "qwen3_vl": (lambda f: cm.build_qwen_vl(f, "qwen3_vl"), "vlm", {"max_new_tokens": 6}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: build(root / name) for name, (build, _, _) in BUILDERS.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_captioner_writes_trigger_first_captions_in_batches(name, models, tmp_path):
    _, kind, kw = BUILDERS[name]
    folder = tmp_path / "20_ohwx woman"
    folder.mkdir()
    for i, size in enumerate([(40, 56), (64, 48), (50, 50)]):
        Image.new("RGB", size, (40 * i, 200, 90)).save(folder / f"{i}.png")
    (folder / "2.txt").write_text("mine\n")
    captioner = load_captioner(kind, models[name], device="cpu", **kw)
    assert captioner.kind == "sentence" and captioner.name == kind
    targets, progress, _ = list_targets(tmp_path)
    summary = caption_dataset(targets, captioner, TextOptions(trigger="ohwx", class_word="woman"),
                              progress_file=progress, batch_size=2, log=lambda _: None)
    assert [o.status for o in summary.outcomes] == ["kept", "captioned", "captioned"]
    assert (folder / "2.txt").read_text() == "mine\n"
    for i in (0, 1):
        text = (folder / f"{i}.txt").read_text()
        assert text.startswith("ohwx woman") and text.endswith("\n") and "\n" not in text[:-1]
        assert text == summary.outcomes[i + 1].text + "\n"


def test_missing_weights_are_named_with_where_to_get_them(models, tmp_path):
    for name, (_, kind, _) in BUILDERS.items():
        broken = tmp_path / name
        shutil.copytree(models[name], broken)
        (broken / "model.safetensors").unlink()
        with pytest.raises(ModelLoadError) as e:
            load_captioner(kind, broken, device="cpu")
        msg = str(e.value)
        assert msg.startswith(f"{broken / 'model.safetensors'}: missing") and "\n" not in msg, msg
        assert {"blip": "Salesforce/blip", "florence2": "Florence-2", "vlm": "Qwen"}[kind] in msg


def test_remote_code_florence_and_wrong_families_are_refused(models, tmp_path):
    remote = tmp_path / "remote"
    shutil.copytree(models["florence2"], remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="remote code.*lorakit runs no remote code"):
        load_captioner("florence2", remote, device="cpu")
    with pytest.raises(ModelLoadError, match="model_type 'blip' is not one of qwen2_vl"):
        load_captioner("vlm", models["blip"], device="cpu")
    with pytest.raises(ModelLoadError, match="--task: '<OD>' is not a captioning task"):
        load_captioner("florence2", models["florence2"], device="cpu", task="<OD>")


def test_vlm_instruction_per_purpose_is_editable(models):
    c = load_captioner("vlm", models["qwen2_5_vl"], device="cpu", purpose="product", subject="the bottle")
    assert c.instruction == INSTRUCTIONS["product"].replace("{subject}", "the bottle")
    prompt = c.prompt()
    assert c.instruction in prompt and prompt.index("<|image_pad|>") < prompt.index(c.instruction)
    c = load_captioner("vlm", models["qwen2_5_vl"], device="cpu", instruction="Say what {subject} wears.",
                       subject="ohwx")
    assert c.instruction == "Say what ohwx wears."
