"""lorakit's ComfyUI node pack without ComfyUI: the node API contract (re-derived from ComfyUI's source, commits in
tests/unit/comfyui_rederived.py), loading as a custom-node folder, the registry metadata, the example workflows,
the Dataset and Config nodes' outputs, and the Train node's job handling with a stand-in run (Cancel, resume,
refusals). The real 20-step run through a graph is tests/integration/test_comfy_graph.py."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lorakit.comfy as pack
from lorakit.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, nodes
from lorakit.comfy import train as tr
from lorakit.errors import ConfigError, DataError, LorakitError
from lorakit.toy.world import write_demo_dataset
from tests.unit import comfyui_rederived as cu
from tests.unit.test_ui_jobs import _settle, _toml, _wait_running, fake  # noqa: F401  (fake is a fixture)

CORE_TYPES = {"MODEL", "CLIP", "VAE", "IMAGE", "LATENT", "CONDITIONING", "MASK"}
PACK = pack.pack_dir()


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """ComfyUI's modules over a models folder with a few files, and a lorakit home of its own."""
    models = tmp_path / "ComfyUI" / "models"
    for rel in ("checkpoints/sd_xl_base_1.0.safetensors", "checkpoints/sub/other.safetensors",
                "diffusion_models/flux1-dev.safetensors", "vae/ae.safetensors", "text_encoders/clip_l.safetensors",
                "text_encoders/t5xxl_fp16.safetensors", "loras/mine.safetensors", "checkpoints/notes.txt"):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"x")
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    state = cu.install_fake_comfy(monkeypatch, models)
    state.models = models
    return state


# ------------------------------------------------------------------------------------------ the node API

def test_every_node_class_keeps_comfyuis_node_api(comfy):
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    produced = {t for cls in NODE_CLASS_MAPPINGS.values() for t in cls.RETURN_TYPES}
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert cu.contract_problems(name, cls) == [], name
        assert cls.CATEGORY.split("/")[0] == "lorakit" and cls.DESCRIPTION.strip()
        for section in ("required", "optional"):
            for inp, entry in cls.INPUT_TYPES().get(section, {}).items():
                kind = entry[0]
                if isinstance(kind, str) and kind not in cu.PRIMITIVES:  # a link: made by some node
                    assert kind in produced | CORE_TYPES, (name, inp, kind)
    assert [n for n, c in NODE_CLASS_MAPPINGS.items() if getattr(c, "OUTPUT_NODE", False)] == ["LorakitTrain"]
    # the model-file widgets list ComfyUI's files (relative names, extension-filtered, both checkpoint folders)
    ckpt = nodes.LorakitConfig.INPUT_TYPES()["required"]["checkpoint"][0]
    assert ckpt == ["(none)", "(toy model)", "flux1-dev.safetensors", "sd_xl_base_1.0.safetensors",
                    os.path.join("sub", "other.safetensors")]
    assert nodes.LorakitConfig.INPUT_TYPES()["optional"]["clip_l"][0] == ["(none)", "clip_l.safetensors",
                                                                        "t5xxl_fp16.safetensors"]


def test_the_contract_check_fails_broken_nodes():
    class Broken:
        CATEGORY = "x"
        FUNCTION = "go"
        RETURN_TYPES = ("IMAGE",)
        RETURN_NAMES = ("a", "b")
        OUTPUT_NODE = "yes"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"n": ("INT", {"default": 5, "min": 0, "max": 3}), "c": ([],), "l": ("lower",)},
                    "optional": {"o": ("STRING",)}, "bogus": {}}

        def go(self, n, c, l, o, extra):
            return (None,)

        def IS_CHANGED(self, **kw):
            return ""

    problems = "\n".join(cu.contract_problems("Broken", Broken))
    for needle in ("unknown INPUT_TYPES section 'bogus'", "default 5 outside", "non-empty list", "upper-case",
                   "RETURN_NAMES", "OUTPUT_NODE", "'extra' is no input", "'o' needs a default", "classmethod"):
        assert needle in problems


# ------------------------------------------------------------------------------------------ installing

def _load_like_comfyui(folder: Path, name: str):
    """nodes.load_custom_node: <folder>/__init__.py imported as the top-level module ``name``."""
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_pack_folder_loads_as_a_custom_node_under_any_name_but_lorakit(tmp_path, monkeypatch):
    link = tmp_path / "custom_nodes" / "lorakit-nodes"
    link.parent.mkdir()
    os.symlink(PACK, link)
    monkeypatch.delitem(sys.modules, "lorakit-nodes", raising=False)
    module = _load_like_comfyui(link, "lorakit-nodes")
    assert module.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert module.NODE_DISPLAY_NAME_MAPPINGS is NODE_DISPLAY_NAME_MAPPINGS
    monkeypatch.setitem(sys.modules, "lorakit", sys.modules["lorakit"])  # load_custom_node would replace it
    with pytest.raises(ImportError, match="must not be named 'lorakit'"):
        _load_like_comfyui(link, "lorakit")


def test_registry_metadata():
    meta = tomllib.loads((PACK / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert len(project["name"]) < 100 and project["name"][0].isalpha() and "comfyui" not in project["name"].lower()
    assert all(c.isalnum() or c in "-_." for c in project["name"])
    assert [int(x) for x in project["version"].split(".")] and len(project["version"].split(".")) == 3
    assert [d.split(">")[0].split("=")[0] for d in project["dependencies"]] == ["lorakit"]
    assert project["urls"]["Repository"].startswith("https://")
    assert {"PublisherId", "DisplayName", "Icon"} <= set(comfy)


def test_install_links_the_pack_and_replaces_nothing(tmp_path, capsys):
    from lorakit.comfy.__main__ import main

    comfy_root = tmp_path / "ComfyUI"
    (comfy_root / "custom_nodes" / "taken").mkdir(parents=True)
    assert main(["install", str(comfy_root)]) == 0
    assert (comfy_root / "custom_nodes" / "lorakit-nodes").resolve() == PACK.resolve()
    assert main(["install", str(comfy_root)]) == 0  # again: the same link, fine
    assert main(["install", str(comfy_root), "--name", "taken"]) == 2
    assert main(["install", str(comfy_root), "--name", "lorakit"]) == 2
    assert main(["install", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not lorakit's pack" in err and "hide the lorakit package" in err and "no custom_nodes/" in err
    assert list((comfy_root / "custom_nodes" / "taken").iterdir()) == []


# ------------------------------------------------------------------------------------------ example workflows

def _classes(comfy_state) -> dict:
    return {**NODE_CLASS_MAPPINGS, **cu.core_nodes(sys.modules["folder_paths"])}


def test_example_workflows_are_valid_prompts_and_match_their_api_files(comfy):
    ui_files = sorted((PACK / "example_workflows").glob("*.json"))
    assert [p.stem for p in ui_files] == ["compare_learning_rates_toy", "train_character_toy",
                                          "train_then_generate_sdxl"]
    classes = _classes(comfy)
    for path in ui_files:
        wf = json.loads(path.read_text())
        for link in wf["links"]:  # [id, from node, from slot, to node, to slot, type]
            src = next(n for n in wf["nodes"] if n["id"] == link[1])
            dst = next(n for n in wf["nodes"] if n["id"] == link[3])
            assert classes[src["type"]].RETURN_TYPES[link[2]] == link[5] == dst["inputs"][link[4]]["type"]
        prompt = cu.ui_to_api(wf, classes)
        assert cu.validate_prompt(prompt, classes) == [], path.name
        assert prompt == json.loads((PACK / "workflows_api" / path.name).read_text()), path.name
    wrong = json.loads((PACK / "workflows_api" / "compare_learning_rates_toy.json").read_text())
    first = next(v for v in wrong.values() if v["class_type"] == "LorakitConfig")
    first["inputs"]["rank"] = -3
    first["inputs"]["family"] = "sd9"
    assert len(cu.validate_prompt(wrong, classes)) == 2


# ------------------------------------------------------------------------------------------ dataset and config

def test_dataset_node_kohya_plain_folder_and_image_batch(comfy, tmp_path):
    node = nodes.LorakitDataset()
    kohya = tmp_path / "kohya"
    write_demo_dataset(kohya, n=3, repeats=2)
    ds, report = node.load(str(kohya), 10, "zkx", "")
    assert ds.data == {"dir": str(kohya.resolve()), "trigger": "zkx"} and "usable images: 3" in report
    # a plain folder: linked into the lorakit home as `<repeats>_<trigger> <class>`, the folder itself untouched
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in sorted((kohya / "2_zkx shape").iterdir()):
        (plain / p.name).write_bytes(p.read_bytes())
    before = sorted(os.listdir(plain))
    ds, report = node.load(str(plain), 5, "zkx", "shape")
    sub = Path(ds.folder) / "5_zkx shape"
    assert sorted(os.listdir(sub)) == before and all((sub / n).resolve() == plain / n for n in before)
    assert sorted(os.listdir(plain)) == before and "usable images: 3" in report and "samples/epoch: 15" in report
    inode = sub.stat().st_ino
    assert Path(node.load(str(plain), 5, "zkx", "shape")[0].folder) == sub.parent and sub.stat().st_ino == inode
    (plain / "003.png").write_bytes((plain / "000.png").read_bytes()[:-1] + b"\0")  # a new image: linked too
    node.load(str(plain), 5, "zkx", "shape")
    assert (sub / "003.png").resolve() == plain / "003.png"
    # an IMAGE batch with one caption per line: PNGs holding those pixels
    images = torch.rand(2, 64, 64, 3)
    ds, report = node.load("", 3, "zkx", "", images=images, captions="a zkx\nanother zkx")
    sub = Path(ds.folder) / "3_zkx"
    assert (sub / "0001.txt").read_text() == "another zkx\n"
    got = np.asarray(Image.open(sub / "0000.png"), dtype=np.float32)
    assert np.abs(got - (images[0].numpy() * 255)).max() <= 0.5 + 1e-4
    with pytest.raises(ConfigError, match="captions: 3 lines for 2 images"):
        node.load("", 3, "zkx", "", images=images, captions="a\nb\nc")
    with pytest.raises(ConfigError, match="folder: empty"):
        node.load("  ", 3, "zkx", "")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither"):
        node.load(str(tmp_path / "empty"), 1, "", "")
    assert nodes.LorakitDataset.IS_CHANGED(folder=str(plain)) == nodes.LorakitDataset.IS_CHANGED(folder=str(plain))
    (plain / "new.txt").write_text("x")
    assert nodes.LorakitDataset.IS_CHANGED(folder=str(plain)) != nodes.LorakitDataset.IS_CHANGED(folder=str(kohya))


def _config(ds, **kw):
    args = dict(dataset=ds, family="sdxl", preset="(none)", checkpoint="(toy model)", resolution=0, rank=0,
                alpha=0.0, learning_rate=0.0, optimizer="(preset)", max_steps=0, batch_size=0, training_seed=-1,
                save_every=0, sample_every=0, sample_prompts="", name="", output_dir="",
                train_text_encoder="(preset)")
    args.update(kw)
    handle, text = nodes.LorakitConfig().build(**args)
    assert handle.toml == text
    return tomllib.loads(text)


def test_config_node_layers_and_names(comfy, tmp_path):
    from lorakit.config.toml_io import preset_path
    from lorakit.toy.paths import toy_paths

    kohya = tmp_path / "kohya"
    write_demo_dataset(kohya, n=2, repeats=1)
    ds, _ = nodes.LorakitDataset().load(str(kohya), 1, "zkx", "")
    preset = tomllib.loads(preset_path("sdxl/character").read_text())
    cfg = _config(ds, preset="sdxl/character", training_seed=0)
    assert cfg["preset"] == "sdxl/character" and "rank" not in cfg.get("network", {})  # 0 = the preset's
    assert cfg["training"]["seed"] == 0  # a seed of 0 is a seed
    assert cfg["model"]["checkpoint"] == str(toy_paths("sdxl")["checkpoint"])
    assert cfg["data"] == {"dir": str(kohya.resolve()), "trigger": "zkx"}
    assert cfg["save"]["dir"] == str(tmp_path / "home" / "runs")
    assert cfg["save"]["name"].startswith("comfy-zkx-")
    assert "rank" in preset.get("network", {})
    assert "train_text_encoder" not in cfg.get("network", {})
    assert _config(ds, train_text_encoder="false")["network"]["train_text_encoder"] is False
    cfg2 = _config(ds, preset="sdxl/character", training_seed=0, rank=8, learning_rate=0.0002,
                   sample_prompts="a zkx\n\nb zkx", overrides="network.alpha=2\n# a comment\noptimizer.lr=0.0003")
    assert cfg2["network"] == {"rank": 8, "alpha": 2.0} and cfg2["optimizer"]["lr"] == 0.0003
    assert cfg2["sample"]["prompts"] == ["a zkx", "b zkx"]
    assert cfg2["save"]["name"] != cfg["save"]["name"]  # other settings, another run folder
    assert _config(ds, preset="sdxl/character", training_seed=0)["save"]["name"] == cfg["save"]["name"]
    assert _config(ds, name="mine", output_dir=str(tmp_path / "o"))["save"] == {"dir": str(tmp_path / "o"),
                                                                             "name": "mine"}
    # model files from ComfyUI's folders, as full paths; a file not there names the key
    cfg = _config(ds, checkpoint="sd_xl_base_1.0.safetensors", vae="ae.safetensors")
    assert cfg["model"]["checkpoint"] == str(comfy.models / "checkpoints" / "sd_xl_base_1.0.safetensors")
    assert cfg["model"]["vae"] == str(comfy.models / "vae" / "ae.safetensors")
    with pytest.raises(ConfigError, match=r"^model.checkpoint: 'gone.safetensors' is not in ComfyUI's checkpoints"):
        _config(ds, checkpoint="gone.safetensors")
    with pytest.raises(ConfigError, match=r"clip_l"):  # the loader's own refusal of a FLUX-only key for SDXL
        _config(ds, clip_l="clip_l.safetensors")
    # a TOML file under the widgets: its relative paths resolved against its folder
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "run.toml").write_text('[network]\nrank = 6\n[sample]\nprompts_file = "p.txt"\n')
    (tmp_path / "cfgs" / "p.txt").write_text("a zkx\n")
    cfg = _config(ds, toml=str(tmp_path / "cfgs" / "run.toml"))
    assert cfg["network"]["rank"] == 6 and cfg["sample"]["prompts_file"] == str(tmp_path / "cfgs" / "p.txt")
    assert _config(ds, toml="[network]\nrank = 5", rank=7)["network"]["rank"] == 7  # widgets over the TOML
    with pytest.raises(ConfigError, match="^toml: invalid TOML"):
        _config(ds, toml="[network\nrank=")
    with pytest.raises(ConfigError, match="^network.rnk"):
        _config(ds, overrides="network.rnk=4")


def test_images_are_comfyui_image_tensors(tmp_path):
    from lorakit.comfy.images import comfy_to_pil, load_pngs, pil_to_comfy

    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr[:4]).save(tmp_path / "b.png")
    x = load_pngs([tmp_path / "a.png", tmp_path / "b.png"])  # b has another size: left out, with a warning
    assert x.shape == (1, 5, 7, 3) and x.dtype == torch.float32
    assert torch.equal(x[0], torch.from_numpy(arr.astype(np.float32) / 255.0))
    assert np.array_equal(np.asarray(comfy_to_pil(x)[0]), arr)
    assert torch.equal(pil_to_comfy(comfy_to_pil(x)), x)


# ------------------------------------------------------------------------------------------ the Train node

@pytest.fixture
def train_node(fake, comfy, tmp_path, monkeypatch):
    """The Train node over a store whose runs are the stand-in process of the job-store tests."""
    stores = {}

    def make(mode="finish"):
        stores["s"] = fake(mode)
        monkeypatch.setattr(tr, "job_store", lambda home: stores["s"])
        return stores["s"]

    return make


def _train(toml: str, **kw):
    args = dict(wait=True, on_cancel=tr.STOP_RUN, step=0, free_comfy_memory=False)
    args.update(kw)
    return nodes.LorakitTrain().train(nodes.ConfigHandle(toml), **args)


def test_cancel_stops_the_run_resumably_and_queueing_again_resumes(train_node, comfy, tmp_path, monkeypatch):
    store = train_node("sigint")
    monkeypatch.setattr(time, "sleep", lambda s, _real=time.sleep: _real(min(s, 0.05)))
    toml = _toml(tmp_path, "a")
    job = tr.start_or_attach(store, toml)
    _wait_running(job)
    comfy.interrupt = True  # Cancel pressed in ComfyUI
    with pytest.raises(cu.InterruptProcessingException):
        _train(toml)
    job = _settle(store, job.id)
    assert job.state == "stopped" and job.stop_requested and "Resume continues" in job.note
    assert comfy.bars[-1].seen and comfy.bars[-1].seen[-1] == (0, 10)
    # queued again with the same settings: the stopped job is resumed, not duplicated
    again = tr.start_or_attach(store, toml)
    assert again.id == job.id and again.resume and len(store.list()) == 1
    _wait_running(store.get(job.id))
    store.stop(job.id)
    _settle(store, job.id)
    # other settings into the same run folder are refused, nothing changed
    with pytest.raises(ConfigError, match="^save.name: .* is the run of job 1 with other settings"):
        tr.start_or_attach(store, toml.replace('device = "cpu"', 'device = "cuda:1"'))


def test_cancel_can_leave_the_run_training(train_node, comfy, tmp_path, monkeypatch):
    store = train_node("hang")
    monkeypatch.setattr(time, "sleep", lambda s, _real=time.sleep: _real(min(s, 0.05)))
    toml = _toml(tmp_path, "b")
    job = tr.start_or_attach(store, toml)
    _wait_running(job)
    comfy.interrupt = True
    with pytest.raises(cu.InterruptProcessingException):
        _train(toml, on_cancel=tr.KEEP_RUNNING)
    time.sleep(0.3)
    assert store.reconcile_one(store.get(job.id)).state == "running"
    store.stop(job.id)
    assert _settle(store, job.id).state == "stopped"


def test_not_waiting_returns_at_once_and_failures_are_one_line(train_node, comfy, tmp_path, monkeypatch):
    store = train_node("hang")
    toml = _toml(tmp_path, "c")
    out = _train(toml, wait=False)
    run = out["result"][0]
    assert run.state in ("queued", "running") and out["result"][1] == "" and "not written yet" in out["result"][3]
    assert out["ui"]["text"] == [out["result"][3]]
    assert nodes.LorakitTrain.IS_CHANGED(wait=False) != nodes.LorakitTrain.IS_CHANGED(wait=False)
    with pytest.raises(LorakitError, match="has no LoRA file yet"):
        nodes.LorakitLoadLoRA().apply(object(), object(), run, 1.0, 1.0)
    _wait_running(store.get(run.job_id))
    store.stop(run.job_id)
    _settle(store, run.job_id)
    store = train_node("failed")
    with pytest.raises(LorakitError, match=r"^job \d+ \(d\) failed: step 3: loss nan"):
        _train(_toml(tmp_path, "d"))
    with pytest.raises(LorakitError, match="Nothing was restarted"):
        _train(_toml(tmp_path, "d"))
    store = train_node("finish")
    with pytest.raises(LorakitError, match=r"step: e-step00000005.safetensors was not saved"):
        _train(_toml(tmp_path, "e"), step=5)


def test_samples_and_loss_plot_read_the_run_folder_while_it_trains(comfy, tmp_path):
    from lorakit.train.metrics import plot_loss

    run_dir = tmp_path / "runs" / "r"
    (run_dir / "samples").mkdir(parents=True)
    rng = np.random.default_rng(1)
    made = {}
    for name in ("r_before_00_1.png", "r_step00000005_00_1.png", "r_step00000010_01_2.png",
                 "r_step00000010_00_1.png", "r_step00000010_02_3.png", "notes.png"):
        arr = rng.integers(0, 256, (8, 6 if name != "r_step00000010_02_3.png" else 5, 3), dtype=np.uint8)
        Image.fromarray(arr).save(run_dir / "samples" / name)
        made[name] = torch.from_numpy(arr.astype(np.float32) / 255.0)
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-4, "seconds": 0.5} for s in range(1, 11)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "run.json").write_text(json.dumps({"status": "running", "step": 10, "max_steps": 20}))
    run = tr.RunHandle(job_id=7, name="r", run_dir=str(run_dir), home=str(tmp_path / "home"), state="running")
    last = nodes.LorakitSamples().samples(run, "last samples")[0]
    assert torch.equal(last, torch.stack([made["r_step00000010_00_1.png"], made["r_step00000010_01_2.png"]]))
    everything = nodes.LorakitSamples().samples(run, "all samples")[0]  # the 5-wide one left out (another size)
    assert torch.equal(everything, torch.stack([made[n] for n in ("r_before_00_1.png", "r_step00000005_00_1.png",
                                                                  "r_step00000010_00_1.png",
                                                                  "r_step00000010_01_2.png")]))
    with pytest.raises(LorakitError, match="no before/after grid yet .* job 7 is running"):
        nodes.LorakitSamples().samples(run, "before/after grid")
    plot = nodes.LorakitLossPlot().plot(run)[0]  # drawn from metrics.jsonl: the same picture the run draws
    plot_loss(rows, tmp_path / "want.png")
    assert torch.equal(plot[0], torch.from_numpy(np.asarray(Image.open(tmp_path / "want.png").convert("RGB"),
                                                            dtype=np.float32) / 255.0))
    (run_dir / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(LorakitError, match="fewer than two logged steps"):
        nodes.LorakitLossPlot().plot(run)


def test_two_train_nodes_in_one_graph_train_two_runs_side_by_side(comfy, tmp_path, monkeypatch):
    """The comparison graph as ComfyUI runs it, over stand-in runs that write a LoRA file: two jobs, two folders."""
    import textwrap

    from tests.unit.test_ui_jobs import FAKE

    script = tmp_path / "fake_python.py"
    script.write_text(FAKE.replace('status(status="finished", step=10)', textwrap.dedent(
        'status(status="finished", step=10); (run / (run.name + ".safetensors")).write_bytes(run.name.encode())')))
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("LORAKIT_SRC", str(Path(__file__).resolve().parents[2]))
    from lorakit.ui.jobs import JobStore

    store = JobStore(tmp_path / "home", python=str(wrapper), env=dict(os.environ, FAKE_MODE="finish"))
    monkeypatch.setattr(tr, "job_store", lambda home: store)
    monkeypatch.setattr(time, "sleep", lambda s, _real=time.sleep: _real(min(s, 0.05)))
    write_demo_dataset(tmp_path / "data", n=2, repeats=1)
    config = {"dataset": ["1", 0], "family": "sdxl", "preset": "(none)", "checkpoint": "(toy model)",
              "resolution": 64, "rank": 4, "alpha": 4.0, "learning_rate": 0.001, "optimizer": "adamw", "max_steps": 10,
              "batch_size": 1, "training_seed": 1, "save_every": 0, "sample_every": 0, "sample_prompts": "",
              "name": "", "output_dir": "", "train_text_encoder": "(preset)",
              "overrides": "data.min_bucket_reso=64\ndata.max_bucket_reso=128"}
    train = {"wait": True, "on_cancel": tr.STOP_RUN, "step": 0, "free_comfy_memory": True}
    prompt = {"1": {"class_type": "LorakitDataset", "inputs": {"folder": str(tmp_path / "data"), "repeats": 1,
                                                               "trigger": "zkx", "class_word": ""}},
              "2": {"class_type": "LorakitConfig", "inputs": config},
              "3": {"class_type": "LorakitConfig", "inputs": {**config, "learning_rate": 0.0003}},
              "4": {"class_type": "LorakitTrain", "inputs": {"config": ["2", 0], **train}},
              "5": {"class_type": "LorakitTrain", "inputs": {"config": ["3", 0], **train}}}
    out = cu.run_prompt(prompt, _classes(comfy))
    a, b = out["4"][0][0], out["5"][0][0]
    assert [j.state for j in store.list()] == ["finished", "finished"] and a.run_dir != b.run_dir
    assert tomllib.loads(Path(a.run_dir, "config.toml").read_text())["optimizer"]["lr"] == 0.001
    assert tomllib.loads(Path(b.run_dir, "config.toml").read_text())["optimizer"]["lr"] == 0.0003
    for run, name in ((a, out["4"][2][0]), (b, out["5"][2][0])):
        assert Path(run.lora_path).read_bytes() == run.name.encode()
        assert (comfy.models / "loras" / name).resolve() == Path(run.lora_path).resolve()
    assert comfy.unloaded == 2
