"""The node classes (ComfyUI's node API: INPUT_TYPES, RETURN_TYPES, RETURN_NAMES, FUNCTION, CATEGORY, OUTPUT_NODE,
IS_CHANGED). Each FUNCTION returns a tuple as long as RETURN_TYPES (the Train node: a dict with "ui" and "result").

Custom types passed between these nodes: LORAKIT_DATASET (:class:`lorakit.comfy.build.DatasetHandle`),
LORAKIT_CONFIG (:class:`ConfigHandle`: the run's TOML) and LORAKIT_RUN (:class:`lorakit.comfy.train.RunHandle`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.comfy import host

log = logging.getLogger("lorakit.comfy")
CATEGORY = "lorakit"
SAMPLE_CHOICES = ("before/after grid", "last samples", "all samples")
_NAN = float("nan")  # IS_CHANGED: never equal to itself, so ComfyUI runs the node again each time (it reads files)


@dataclass(frozen=True)
class ConfigHandle:
    toml: str


def _presets() -> list[str]:
    from lorakit.comfy.build import PRESET_NONE
    from lorakit.config.toml_io import list_presets

    return [PRESET_NONE, *list_presets()]


def _families() -> list[str]:
    from lorakit.config.families import installed

    return list(installed())


def _choices(key: str) -> list[str]:
    """A config field's allowed values, from the schema (the web UI's drop-downs use the same)."""
    from lorakit.config.load import field_specs

    section, name = key.split(".")
    return [str(c) for c in field_specs()[section][name].meta.get("choices", ())]


def _model_widget(key: str, toy: bool = False) -> tuple:
    from lorakit.comfy.build import NONE, TOY

    first = [NONE, TOY] if toy else [NONE]
    return (first + host.model_choices(key),
            {"tooltip": f"model.{key}: a file of ComfyUI's {' / '.join(host.MODEL_FOLDERS[key])} folder"
                        + ("; (toy model) is lorakit's tiny shipped model of the family" if toy else "")})


def _int(default: int, lo: int, hi: int, tip: str, step: int = 1) -> tuple:
    return ("INT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})


def _float(default: float, lo: float, hi: float, step: float, tip: str) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})


class LorakitDataset:
    """A training set: a kohya folder, a plain folder of images + captions, or an IMAGE batch with captions."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("LORAKIT_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "report")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "folder": ("STRING", {"default": "", "tooltip": "a folder of `10_trigger class` subfolders (kohya), "
                                      "or of images with .txt captions; empty when images are connected"}),
                "repeats": _int(10, 1, 1000, "repeats per image (a plain folder or connected images)"),
                "trigger": ("STRING", {"default": "", "tooltip": "data.trigger: the word the LoRA learns"}),
                "class_word": ("STRING", {"default": "", "tooltip": "class tokens after the trigger (e.g. woman)"}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "training images from the graph instead of a folder"}),
                "captions": ("STRING", {"multiline": True, "default": "",
                                        "tooltip": "one caption per line, one per image (or one for all)"}),
                "resolution": _int(1024, 64, 4096, "the training resolution the report checks sizes against "
                                   "(the Config node sets the run's)", 64),
            },
        }

    @classmethod
    def IS_CHANGED(cls, folder: str = "", **_: Any) -> str:
        """A fingerprint of the folder's files (names, sizes, times): edits made outside ComfyUI are seen."""
        import hashlib
        import os

        root = Path(os.path.expanduser(str(folder or "")))
        h = hashlib.sha256(str(root).encode())
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                try:
                    st = p.stat()
                except OSError:
                    continue
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def load(self, folder: str, repeats: int, trigger: str, class_word: str, images: Any = None,
             captions: str = "", resolution: int = 1024) -> tuple:
        from lorakit.comfy.build import make_dataset

        ds = make_dataset(folder, repeats, trigger, class_word, host.lorakit_home(), images=images, captions=captions,
                          resolution=resolution)
        return (ds, ds.report)


class LorakitToyDataset:
    """The toy world's demo set (a shape the toy model has never drawn, bound to the trigger "zkx"): a dataset that
    needs no files, for trying the nodes on lorakit's toy model in seconds."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY + "/toy"
    FUNCTION = "load"
    RETURN_TYPES = ("LORAKIT_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "report")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"images": _int(12, 2, 48, "how many images"),
                             "repeats": _int(10, 1, 100, "repeats per image")}}

    def load(self, images: int, repeats: int) -> tuple:
        from lorakit.comfy.build import DatasetHandle, check_keys, data_report
        from lorakit.toy.world import DEFAULT_TRIGGER, write_demo_dataset

        root = host.lorakit_home() / "comfy" / "toy" / f"demo-{images}x{repeats}"
        if not root.is_dir():
            tmp = root.with_name(root.name + ".partial")
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            write_demo_dataset(tmp, n=int(images), repeats=int(repeats))
            tmp.rename(root)
        data = {"dir": str(root), "trigger": DEFAULT_TRIGGER}
        table, usable = data_report(data, {**check_keys(64), "max_bucket_reso": 128})  # the toy trains at 64 px
        ds = DatasetHandle(data=data, folder=str(root), report=f"toy world demo set {root}\n{table}", usable=usable)
        return (ds, ds.report)


class LorakitConfig:
    """The run's settings as lorakit's TOML: family, model files from ComfyUI's model folders, a preset, the usual
    keys (0 or empty = the preset's / lorakit's default), a TOML file or text, and section.key=value lines."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = ("LORAKIT_CONFIG", "STRING")
    RETURN_NAMES = ("config", "toml")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        zero = "0 = the preset's value, else lorakit's default"
        return {
            "required": {
                "dataset": ("LORAKIT_DATASET",),
                "family": (_families(), {"tooltip": "model.family"}),
                "preset": (_presets(), {"tooltip": "a shipped recipe (family/purpose) under the keys below"}),
                "checkpoint": _model_widget("checkpoint", toy=True),
                "resolution": _int(0, 0, 4096, f"data.resolution; {zero}", 64),
                "rank": _int(0, 0, 1024, f"network.rank; {zero}"),
                "alpha": _float(0.0, 0.0, 1024.0, 0.5, f"network.alpha; {zero}"),
                "learning_rate": _float(0.0, 0.0, 1.0, 0.000001, f"optimizer.lr; {zero}"),
                "optimizer": (["(preset)", *_choices("optimizer.name")], {"tooltip": "optimizer.name"}),
                "max_steps": _int(0, 0, 1_000_000, f"training.max_steps; {zero}"),
                "batch_size": _int(0, 0, 256, f"training.batch_size; {zero}"),
                "training_seed": _int(-1, -1, 2**31 - 1, "training.seed; -1 = the preset's, else lorakit's default"),
                "save_every": _int(0, 0, 1_000_000, f"save.every_n_steps; {zero}"),
                "sample_every": _int(0, 0, 1_000_000, f"sample.every_n_steps; {zero}"),
                "sample_prompts": ("STRING", {"multiline": True, "default": "",
                                              "tooltip": "sample.prompts, one per line (kohya's --w --h --d --s)"}),
                "name": ("STRING", {"default": "", "tooltip": "save.name; empty = a name from the settings, so the "
                                    "same settings find the same run again"}),
                "output_dir": ("STRING", {"default": "", "tooltip": "save.dir; empty = <lorakit home>/runs, where "
                                          "the web UI keeps its runs"}),
                "train_text_encoder": (["(preset)", "true", "false"], {"tooltip": "network.train_text_encoder"}),
            },
            "optional": {
                "vae": _model_widget("vae"),
                "ae": _model_widget("ae"),
                "clip_l": _model_widget("clip_l"),
                "t5xxl": _model_widget("t5xxl"),
                "text_encoder": _model_widget("text_encoder"),
                "toml": ("STRING", {"multiline": True, "default": "",
                                    "tooltip": "a path to a run.toml, or TOML text: the layer under the widgets"}),
                "overrides": ("STRING", {"multiline": True, "default": "",
                                         "tooltip": "section.key=value lines, applied last (as on the CLI)"}),
                "clip_g": _model_widget("clip_g"),  # SD3.5's split files (last: saved workflows keep their values)
            },
        }

    def build(self, dataset: Any, family: str, preset: str, checkpoint: str, resolution: int, rank: int,
              alpha: float, learning_rate: float, optimizer: str, max_steps: int, batch_size: int,
              training_seed: int, save_every: int, sample_every: int, sample_prompts: str, name: str,
              output_dir: str, train_text_encoder: str, vae: str = "", ae: str = "", clip_l: str = "",
              t5xxl: str = "", text_encoder: str = "", toml: str = "", overrides: str = "", clip_g: str = "") -> tuple:
        import os

        from lorakit.comfy.build import build_toml

        prompts = [ln.strip() for ln in (sample_prompts or "").splitlines() if ln.strip()]
        widgets = {"data.resolution": resolution, "network.rank": rank, "network.alpha": alpha,
                   "optimizer.lr": learning_rate, "optimizer.name": None if optimizer == "(preset)" else optimizer,
                   "training.max_steps": max_steps, "training.batch_size": batch_size,
                   "save.every_n_steps": save_every, "sample.every_n_steps": sample_every,
                   "sample.prompts": prompts or None,
                   "network.train_text_encoder": (None if train_text_encoder == "(preset)"
                                                  else train_text_encoder == "true"),
                   "save.name": (name or "").strip() or None,
                   "save.dir": os.path.abspath(os.path.expanduser(output_dir.strip())) if output_dir.strip() else None}
        text = build_toml(family=family, preset=preset, toml=toml, widgets=widgets,
                          picks={"checkpoint": checkpoint, "vae": vae, "ae": ae, "clip_l": clip_l, "t5xxl": t5xxl,
                                 "text_encoder": text_encoder, "clip_g": clip_g},
                          dataset=dataset, overrides=(overrides or "").splitlines(),
                          runs_dir=host.lorakit_home() / "runs", seed=None if training_seed < 0 else training_seed)
        return (ConfigHandle(text), text)


class LorakitTrain:
    """Trains a LoRA as an ordinary lorakit job (the web UI's job list, an ordinary run folder, resumable with
    `lorakit train --resume`). ComfyUI waits with a progress bar; Cancel stops the run resumably, or leaves it
    training. Queueing the same settings again returns the finished run, or resumes a stopped one."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("LORAKIT_RUN", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("run", "lora_path", "lora_name", "summary")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from lorakit.comfy.train import KEEP_RUNNING, STOP_RUN

        return {"required": {
            "config": ("LORAKIT_CONFIG",),
            "wait": ("BOOLEAN", {"default": True, "tooltip": "wait for the LoRA (progress on this node); off: queue "
                                 "the job and go on at once"}),
            "on_cancel": ([STOP_RUN, KEEP_RUNNING], {"tooltip": "what ComfyUI's Cancel does to the run"}),
            "step": _int(0, 0, 1_000_000, "0 = the final LoRA; N = the checkpoint saved at step N (returned as "
                         "soon as it is written)"),
            "free_comfy_memory": ("BOOLEAN", {"default": True, "tooltip": "unload ComfyUI's models before the run "
                                              "starts, so training has the GPU memory"}),
        }}

    @classmethod
    def IS_CHANGED(cls, wait: bool = True, **_: Any) -> Any:
        return "" if wait else _NAN  # not waiting: look at the job again on every queue

    def train(self, config: ConfigHandle, wait: bool, on_cancel: str, step: int, free_comfy_memory: bool) -> dict:
        from lorakit.comfy import train as tr

        store = tr.job_store(host.lorakit_home())
        if free_comfy_memory:
            host.free_memory()
        job = tr.start_or_attach(store, config.toml)
        if wait:
            job = tr.follow(store, job, step=step, on_cancel=on_cancel, bar=host.progress_bar(1),
                            check=host.check_interrupted)
            problem = tr.ended_error(job, step)
            if problem:
                from lorakit.errors import LorakitError

                raise LorakitError(problem)
        run = tr.handle(store, job, step, host.loras_dir())
        text = tr.summary(run)
        return {"ui": {"text": [text]}, "result": (run, run.lora_path, run.lora_name, text)}


def _run_dir(run: Any) -> Path:
    """The run folder of a LORAKIT_RUN, after letting the job store start what waits (as the web UI does)."""
    from lorakit.comfy.train import job_store

    try:
        job_store(Path(run.home)).schedule()
    except Exception as exc:  # reading a run folder never depends on the store
        log.warning("lorakit: job store %s: %s", run.home, exc)
    return Path(run.run_dir)


class LorakitSamples:
    """The run's preview images as an IMAGE batch: the before/after grid, the last step's samples, or all."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    FUNCTION = "samples"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"run": ("LORAKIT_RUN",), "which": (list(SAMPLE_CHOICES),)}}

    @classmethod
    def IS_CHANGED(cls, **_: Any) -> float:
        return _NAN

    def samples(self, run: Any, which: str) -> tuple:
        from lorakit.comfy.images import load_pngs
        from lorakit.errors import LorakitError
        from lorakit.ui import runs

        run_dir = _run_dir(run)
        if which == SAMPLE_CHOICES[0]:
            grid = runs.grid(run_dir)
            if grid is None:
                raise LorakitError(f"{run_dir}: no before/after grid yet (it is drawn when the run finishes; job "
                                   f"{run.job_id} is {run.state}); pick 'last samples' while it trains")
            return (load_pngs([grid]),)
        found = runs.samples(run_dir)
        if not found:
            raise LorakitError(f"{run_dir}: no sample images yet (sample.prompts and sample.every_n_steps decide "
                               "when they are drawn)")
        if which == SAMPLE_CHOICES[1]:
            last = found[-1].label
            found = [s for s in found if s.label == last]
        return (load_pngs([s.path for s in found]),)


class LorakitLossPlot:
    """The run's loss curve as an IMAGE (the run's loss.png once finished, drawn from its metrics while training)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    FUNCTION = "plot"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"run": ("LORAKIT_RUN",)}}

    @classmethod
    def IS_CHANGED(cls, **_: Any) -> float:
        return _NAN

    def plot(self, run: Any) -> tuple:
        import tempfile

        from lorakit.comfy.images import load_pngs
        from lorakit.errors import LorakitError
        from lorakit.train.metrics import plot_loss
        from lorakit.ui import runs

        run_dir = _run_dir(run)
        png = run_dir / "loss.png"
        if png.is_file() and runs.status(run_dir).get("status") == "finished":
            return (load_pngs([png]),)
        with tempfile.TemporaryDirectory() as tmp:
            out = plot_loss(runs.metrics(run_dir), Path(tmp) / "loss.png")
            if out is None:
                raise LorakitError(f"{run_dir}: fewer than two logged steps; nothing to plot yet")
            return (load_pngs([out]),)


class LorakitLoadLoRA:
    """Applies the run's trained LoRA to a MODEL and CLIP, as ComfyUI's Load LoRA does (comfy.sd.load_lora_for_models)
    — no file to pick, straight from the Train node."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL",), "clip": ("CLIP",), "run": ("LORAKIT_RUN",),
            "strength_model": _float(1.0, -100.0, 100.0, 0.01, "how strongly to change the diffusion model"),
            "strength_clip": _float(1.0, -100.0, 100.0, 0.01, "how strongly to change the text encoder(s)"),
        }}

    def apply(self, model: Any, clip: Any, run: Any, strength_model: float, strength_clip: float) -> tuple:
        from lorakit.errors import LorakitError

        path = Path(run.lora_path) if run.lora_path else None
        if path is None or not path.is_file():
            raise LorakitError(f"job {run.job_id} ({run.name}) has no LoRA file yet ({run.state}); let the Train "
                               "node wait for it")
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        import comfy.sd  # type: ignore[import-not-found]
        import comfy.utils  # type: ignore[import-not-found]

        lora = comfy.utils.load_torch_file(str(path), safe_load=True)
        model_lora, clip_lora = comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)
        return (model_lora, clip_lora)


NODE_CLASS_MAPPINGS = {
    "LorakitDataset": LorakitDataset,
    "LorakitToyDataset": LorakitToyDataset,
    "LorakitConfig": LorakitConfig,
    "LorakitTrain": LorakitTrain,
    "LorakitSamples": LorakitSamples,
    "LorakitLossPlot": LorakitLossPlot,
    "LorakitLoadLoRA": LorakitLoadLoRA,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LorakitDataset": "lorakit Dataset",
    "LorakitToyDataset": "lorakit Toy Dataset",
    "LorakitConfig": "lorakit Config",
    "LorakitTrain": "lorakit Train LoRA",
    "LorakitSamples": "lorakit Samples",
    "LorakitLossPlot": "lorakit Loss Plot",
    "LorakitLoadLoRA": "lorakit Load Trained LoRA",
}

