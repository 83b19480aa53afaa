"""`lorakit toy path FAMILY` prints the [model] table a run needs, and a config written from it trains (issue 26)."""

from __future__ import annotations

import tomllib

import pytest

from lorakit.cli import main
from lorakit.toy.world import write_demo_dataset

RUN = """
[data]
dir = "{data}"
resolution = 64
min_bucket_reso = 64
max_bucket_reso = 64
cache_dir = "{cache}"
[training]
max_steps = 1
device = "cpu"
mixed_precision = "no"
[sample]
prompts = []
[save]
dir = "{out}"
name = "toy"
"""


def _config_from_toy_path(tmp_path, capsys, family: str, drop: str = "") -> str:
    capsys.readouterr()
    assert main(["toy", "path", family]) == 0
    printed = capsys.readouterr().out
    model = tomllib.loads(printed)["model"]
    assert model["family"] == family and "config_dir" in model
    table = "\n".join(line for line in printed.splitlines() if not (drop and line.startswith(drop + " =")))
    write_demo_dataset(tmp_path / "data", n=2, repeats=1)
    (tmp_path / "run.toml").write_text(table + RUN.format(data=tmp_path / "data", cache=tmp_path / "cache",
                                                          out=tmp_path / "out"))
    return str(tmp_path / "run.toml")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sdxl", "flux1", "flux2"])
def test_a_config_written_from_toy_path_trains(tmp_path, capsys, family):
    run = _config_from_toy_path(tmp_path, capsys, family)
    assert main(["train", run]) == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "out" / "toy" / "toy.safetensors").is_file()


@pytest.mark.parametrize("family", ["sdxl", "flux1"])
def test_without_config_dir_a_toy_says_so_in_one_line(tmp_path, capsys, family):
    run = _config_from_toy_path(tmp_path, capsys, family, drop="config_dir")
    assert main(["train", run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lorakit: error: model.config_dir: ") and "of another size" in err[-1], err[-3:]
    assert f"`lorakit toy path {family}`" in err[-1]
    assert not any("size mismatch" in line or "Traceback" in line for line in err)


def test_the_printed_sdxl_table_passes_the_loaders_checks(tmp_path, capsys):
    """The fast variant: the table's files pass the one detector and the SDXL loader's source check."""
    from types import SimpleNamespace

    from lorakit.models.sdxl.load import _source

    capsys.readouterr()
    assert main(["toy", "path", "sdxl"]) == 0
    model = tomllib.loads(capsys.readouterr().out)["model"]
    kind, path, cfg_dir = _source(SimpleNamespace(allow_pickle=False, **model))
    assert (kind, str(path), str(cfg_dir)) == ("file", model["checkpoint"], model["config_dir"])


@pytest.mark.parametrize("family, prefixes", [
    ("sd15", ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")),
    ("zimage", ("lora_unet_layers_", "lora_unet_noise_refiner_", "lora_unet_context_refiner_"))])
def test_the_new_toys_tables_train_two_steps(tmp_path, capsys, family, prefixes):
    """The fast variant for the SD 1.5 and Z-Image toys (seconds): the printed table's files load through the family
    loader and two LoRA steps run through `lorakit train`, with finite losses and the LoRA under the family's kohya
    names. The SD 1.5 toy's CLIP is 16 wide, so the rank is the demo's 8 (the default 32 is refused in one line)."""
    import json

    from safetensors.torch import load_file

    run = _config_from_toy_path(tmp_path, capsys, family)
    assert main(["train", run, "training.max_steps=2", "network.rank=8"]) == 0, \
        capsys.readouterr().err[-2000:]
    folder = tmp_path / "out" / "toy"
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)
    names = {k.rsplit(".", 2)[0] for k in load_file(folder / "toy.safetensors") if k.endswith(".lora_up.weight")}
    assert names and all(n.startswith(prefixes) for n in names)
