"""`lorakit data check` on captions: empty, duplicated across images, missing the trigger, over the limit."""

import json

from PIL import Image

from lorakit.cli import main
from lorakit.models.registry import get_family
from lorakit.models.tokenizers import clip_tokenizer


def test_data_check_flags_caption_problems(tmp_path, capsys):
    folder = tmp_path / "data" / "5_ohwx woman"
    folder.mkdir(parents=True)
    captions = {"a": "ohwx woman, red dress", "b": "ohwx woman, red dress", "c": "", "d": "a woman in a park",
                "e": "ohwx woman, " + ", ".join(f"word{i}" for i in range(80)), "f": "ohwx woman, blue hat"}
    for i, (name, text) in enumerate(captions.items()):
        Image.new("RGB", (64, 64), (30 * i, 100, 100)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(text + "\n")
    out_json = tmp_path / "report.json"
    main(["data", "check", str(tmp_path / "data"), "--json", str(out_json)])
    problems = {(p["file"].rsplit("/", 1)[-1], p["reason"]) for p in json.loads(out_json.read_text())["problems"]
                if not p["reason"].startswith("too small")}
    n = len(clip_tokenizer()(captions["e"] + "\n", truncation=False)["input_ids"])
    limit = get_family("sdxl").SPEC.max_caption_tokens
    assert problems == {
        ("a.png", "same caption as 1 other image(s) (e.g. b.png); say what differs between them"),
        ("b.png", "same caption as 1 other image(s) (e.g. a.png); say what differs between them"),
        ("c.png", "empty caption: class tokens 'ohwx woman' used"),
        ("d.png", "trigger word 'ohwx' not in the caption"),
        ("e.png", f"caption is {n} tokens; the text encoder only sees the first {limit}"),
    }
