"""`lorakit package` and `lorakit push`: a finished run folder -> a CivitAI-ready folder -> the Hugging Face Hub.

The package holds the chosen LoRA (the final one or ``--step N``), the preview images drawn at that step with
their prompt, seed and settings written into PNG text chunks (A1111's ``parameters`` chunk, which CivitAI
reads, plus a ``lorakit`` JSON chunk), a model card ``README.md`` and ``civitai.json`` with the fields CivitAI's
upload form asks for. Everything is read from the run folder (config.toml, the LoRA's metadata, samples/);
no path from the user's machine is written, only folder and file names.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from lorakit.errors import LorakitError

# what CivitAI's form calls the base models lorakit trains
CIVITAI_BASE = {"sdxl": "SDXL 1.0", "flux1/dev": "Flux.1 D", "flux1/schnell": "Flux.1 S"}
LICENSES = {"sdxl": "CreativeML Open RAIL++-M (the SDXL 1.0 base licence)",
            "flux1/dev": "FLUX.1 [dev] Non-Commercial License (the base model's)",
            "flux1/schnell": "Apache-2.0 (the FLUX.1 [schnell] base licence)"}
# the families after SDXL / FLUX.1: CivitAI's base-model names and their licences as CivitAI lists them
# (packages/civitai-shared/src/basemodel.constants.ts, civitai/civitai @ ebed661; its SD 3 / 3.5 entries are hidden
# and disabled there), and the Hub repository of each base model (for the model card)
_MORE = {  # variant: (CivitAI base model, licence, Hub repository)
    "sd15": ("SD 1.5", "CreativeML Open RAIL-M", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "flux2/klein-4b": ("Flux.2 Klein 4B", "Apache 2.0", "black-forest-labs/FLUX.2-klein-4B"),
    "flux2/klein-4b-base": ("Flux.2 Klein 4B-base", "Apache 2.0", "black-forest-labs/FLUX.2-klein-base-4B"),
    "flux2/klein-9b": ("Flux.2 Klein 9B", "FLUX.2 Klein 9B Non-Commercial License", "black-forest-labs/FLUX.2-klein-9B"),
    "flux2/klein-9b-base": ("Flux.2 Klein 9B-base", "FLUX.2 Klein 9B Non-Commercial License",
                            "black-forest-labs/FLUX.2-klein-base-9B"),
    "flux2/dev": ("Flux.2 D", "FLUX.2 [dev] Non-Commercial License", "black-forest-labs/FLUX.2-dev"),
    "sd3/large": ("SD 3.5 Large", "Stability AI Community License Agreement", "stabilityai/stable-diffusion-3.5-large"),
    "sd3/large-turbo": ("SD 3.5 Large Turbo", "Stability AI Community License Agreement",
                        "stabilityai/stable-diffusion-3.5-large-turbo"),
    "sd3/medium": ("SD 3.5 Medium", "Stability AI Community License Agreement",
                   "stabilityai/stable-diffusion-3.5-medium"),
    "sd3/sd3-medium": ("SD 3", "Stability AI Community License Agreement", "stabilityai/stable-diffusion-3-medium"),
    "qwenimage": ("Qwen", "Apache 2.0", "Qwen/Qwen-Image"),
    "zimage/turbo": ("ZImageTurbo", "Apache 2.0", "Tongyi-MAI/Z-Image-Turbo"),
    "zimage/base": ("ZImageBase", "Apache 2.0", "Tongyi-MAI/Z-Image"),
}
CIVITAI_BASE.update({v: m[0] for v, m in _MORE.items()})
LICENSES.update({v: f"{m[1]} (the base model's)" for v, m in _MORE.items()})
SAMPLE_RE = re.compile(r"^(?P<name>.+)_(?P<label>step\d{8}|before|after|final)_(?P<idx>\d{2})_(?P<seed>\d+)\.png$")


def _run_files(run_dir: Path, step: Optional[int], log: Callable[[str], None] = print) -> tuple[Any, Path, str]:
    from lorakit.config.load import load_config

    cfg_path = run_dir / "config.toml"
    if not run_dir.is_dir():
        raise LorakitError(f"{run_dir}: " + ("is a file; give the run folder that holds it"
                                             if run_dir.exists() else "no such folder; give a run folder"))
    if not cfg_path.is_file():
        if (run_dir / "sweep.json").is_file():  # walk8: a sweep folder was "is it a lorakit run folder?"
            best = _sweep_best(run_dir)
            raise LorakitError(f"{run_dir}: a sweep folder; package one of its points' run folders"
                               + (f", e.g. its best: {run_dir / best}" if best else ""))
        raise LorakitError(f"{run_dir}: no config.toml; is it a lorakit run folder?")
    if step is not None and step < 1:
        raise LorakitError(f"--step {step}: give the step number of a checkpoint (1 or more)")
    cfg = load_config(cfg_path)
    name = cfg.save.name
    if step is None:
        lora = run_dir / f"{name}.safetensors"
        label = "final"
        if not lora.is_file():
            steps = sorted(run_dir.glob(f"{glob_escape(name)}-step*.safetensors"))
            if not steps:
                raise LorakitError(f"{run_dir}: no LoRA file ({name}.safetensors or {name}-stepNNNNNNNN.safetensors)")
            lora = steps[-1]
            label = lora.stem.rsplit("-", 1)[1]
            log(f"note: {run_dir} has no final LoRA ({name}.safetensors: the run has not finished); packaged its "
                f"newest checkpoint, step {int(label.removeprefix('step'))} (--step N picks another)")
    else:
        from lorakit.sweep.report import step_lora  # the step's checkpoint, or -best / the final LoRA holding it
        from lorakit.train.rundir import RunDir

        done = RunDir(run_dir, name).read_status()  # {} when missing or damaged
        lora = step_lora(run_dir, name, step, done.get("step") if done.get("status") == "finished" else None)
        label = f"step{step:08d}"
        if lora is None:
            lora = run_dir / f"{name}-step{step:08d}.safetensors"
            have = ", ".join(p.stem.rsplit("-step", 1)[1].lstrip("0") or "0"
                             for p in sorted(run_dir.glob(f"{glob_escape(name)}-step*.safetensors")))
            raise LorakitError(f"--step {step}: {lora.name} not in {run_dir} (step checkpoints: {have or 'none'})")
    return cfg, lora, label


def _sweep_best(root: Path) -> Optional[str]:
    """The point the sweep's comparison picked (comparison/ranking.json), None when there is none yet."""
    try:
        return json.loads((root / "comparison" / "ranking.json").read_text())["best"]["best"]["point"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _previews(run_dir: Path, name: str, label: str) -> list[tuple[Path, int, int]]:
    """(file, prompt index, seed) of the samples drawn at ``label`` (the final LoRA: the last step's)."""
    found: dict[str, list[tuple[Path, int, int]]] = {}
    for p in sorted((run_dir / "samples").glob("*.png")):
        m = SAMPLE_RE.match(p.name)
        if m and m["name"] == name:
            found.setdefault(m["label"], []).append((p, int(m["idx"]), int(m["seed"])))
    if label in found:
        return found[label]
    if label == "final":
        for key in ("after", "final"):
            if key in found:
                return found[key]
        steps = sorted(k for k in found if k.startswith("step"))
        if steps:
            return found[steps[-1]]
    return []


def _prompts(cfg: Any, meta: Optional[dict[str, str]] = None) -> list[Any]:
    """The run's preview prompts with the settings they were drawn with: a family with ``package_preview_settings``
    (FLUX.2: per variant, Klein without guidance) says them, else the sample.* keys and the spec's defaults."""
    from lorakit.config import families
    from lorakit.models.base import SamplePrompt
    from lorakit.models.registry import get_family
    from lorakit.train.sampling import load_prompts

    family = get_family(cfg.model.family)
    spec, own = family.SPEC, getattr(family, "package_preview_settings", None)
    res = cfg.data.resolution if isinstance(cfg.data.resolution, (list, tuple)) else [cfg.data.resolution] * 2
    defaults = SamplePrompt(prompt="", negative=cfg.sample.negative_prompt, width=cfg.sample.width or int(res[0]),
                            height=cfg.sample.height or int(res[1]), steps=cfg.sample.steps,
                            seed=cfg.sample.seed,
                            cfg_scale=spec.default_cfg_scale if cfg.sample.cfg_scale is None else cfg.sample.cfg_scale,
                            guidance=cfg.sample.guidance if cfg.model.family in families.applies_to("sample.guidance")
                            else None,   # the families that take these keys say so (was: flux1 / sdxl by name)
                            sampler=cfg.sample.sampler if cfg.model.family in families.applies_to("sample.sampler")
                            else "flow-match euler")
    prompts = load_prompts(cfg.sample.prompts, cfg.sample.prompts_file, defaults, spec.sample_multiple,
                           cfg.model.family)
    if own is None:
        return [dataclasses.replace(p, steps=p.steps or spec.default_sample_steps) for p in prompts]
    out = []
    for p in prompts:
        steps, cfg_scale, guidance = own(meta or {}, p, cfg.sample)
        out.append(dataclasses.replace(p, steps=steps, cfg_scale=cfg_scale, guidance=guidance))
    return out


def parameters_text(p: Any, seed: int, model: str) -> str:
    """A1111's ``parameters`` text (what CivitAI reads from a PNG to fill prompt, seed and settings)."""
    lines = [p.prompt]
    if p.negative:
        lines.append(f"Negative prompt: {p.negative}")
    settings = [f"Steps: {p.steps}", f"Sampler: {p.sampler}", f"CFG scale: {p.cfg_scale:g}", f"Seed: {seed}",
                f"Size: {p.width}x{p.height}", f"Model: {model}"]
    if p.guidance is not None:
        settings.append(f"Guidance: {p.guidance:g}")
    return "\n".join(lines + [", ".join(settings)])


def _write_png(src: Path, dst: Path, text: dict[str, str]) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():
        info.add_itxt(k, v)
    with Image.open(src) as img:
        img.save(dst, pnginfo=info)


def _meta(lora: Path) -> dict[str, str]:
    from lorakit.lora.io import read_safetensors_header

    return read_safetensors_header(lora)[1]


def _triggers(meta: dict[str, str], cfg: Any) -> list[str]:
    if cfg.data.trigger:
        return [cfg.data.trigger]
    phrase = meta.get("modelspec.trigger_phrase", "")
    if phrase:
        return [t.strip() for t in phrase.split(",") if t.strip()]
    out = []
    for folder in json.loads(meta.get("ss_dataset_dirs", "{}") or "{}"):
        words = folder.split("_", 1)[1].split() if "_" in folder else []
        if words and words[0] not in out:
            out.append(words[0])
    return out


def _variant(meta: dict[str, str], family: str) -> str:
    arch = meta.get("modelspec.architecture", "")
    if family == "flux1":
        return "flux1/schnell" if "schnell" in arch else "flux1/dev"
    if family == "flux2":  # the size from ss_base_model_version, base vs distilled from lorakit's own key
        size = str(meta.get("ss_base_model_version", "")).replace("flux_2_", "").replace("_", "-")
        base = size != "dev" and "base" in meta.get("lorakit_flux2_variant", "")
        variant = f"flux2/{size}" + ("-base" if base else "")
    elif family in ("sd3", "zimage"):
        variant = f"{family}/{meta.get(f'lorakit_{family}_variant', '')}"
    else:
        variant = family
    if variant not in CIVITAI_BASE:
        raise LorakitError(f"{family} LoRA of variant {variant.partition('/')[2] or '?'}: no CivitAI base model "
                           "to name for it (a tiny or custom model?); upload it by hand")
    return variant


def package_run(run_dir: Path, out: Optional[Path] = None, *, step: Optional[int] = None,
                license_text: Optional[str] = None, log: Callable[[str], None] = print) -> Path:
    run_dir = Path(run_dir)
    cfg, lora, label = _run_files(run_dir, step, log)
    out = Path(out) if out else run_dir / "package" / (cfg.save.name + ("" if step is None else f"-step{step}"))
    if out.exists() and any(out.iterdir()):
        raise LorakitError(f"{out}: already exists and is not empty; choose another -o or move it away")
    meta = _meta(lora)
    variant = _variant(meta, cfg.model.family)  # before the folder is made: a refusal leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lora, out / lora.name)  # not its mode: the package follows the user's umask
    from lorakit.lora.io import file_sha256
    sha = file_sha256(out / lora.name)
    prompts = _prompts(cfg, meta)
    model_name = Path(cfg.model.checkpoint or "").name or variant
    images = []
    for i, (src, idx, seed) in enumerate(_previews(run_dir, cfg.save.name, label)):
        if idx >= len(prompts):
            raise LorakitError(f"{src.name}: prompt {idx} is not in the run's config (it lists {len(prompts)})")
        from PIL import Image

        with Image.open(src) as drawn:  # the size it was drawn at (the run's resolution, rounded to the sampler's grid)
            p = dataclasses.replace(prompts[idx], width=drawn.width, height=drawn.height)
        dst = out / f"preview_{i:02d}.png"
        settings = {"prompt": p.prompt, "negative_prompt": p.negative, "seed": seed, "steps": p.steps,
                    "cfg_scale": p.cfg_scale, "guidance": p.guidance, "sampler": p.sampler,
                    "width": p.width, "height": p.height, "lora": lora.name, "base_model": model_name}
        _write_png(src, dst, {"parameters": parameters_text(p, seed, model_name),
                              "lorakit": json.dumps(settings)})
        images.append({"file": dst.name, **settings})
    if not images:  # said, not left for the upload form to find out
        at = "the end of the run" if label == "final" else f"step {int(label.removeprefix('step'))}"
        log(f"note: no preview image was drawn at {at} "
            "(sample.prompts and sample.every_n_steps decide when they are drawn); the package has no images, and "
            "CivitAI asks for at least one")
    triggers = _triggers(meta, cfg)
    licence = license_text or meta.get("modelspec.license") or LICENSES[variant]
    info = _summary(meta)
    card = _model_card(cfg, lora.name, variant, triggers, licence, info, images, label)
    (out / "README.md").write_text(card, encoding="utf-8")
    civitai = {
        "name": cfg.save.name, "type": "LORA", "baseModel": CIVITAI_BASE[variant],
        "trainedWords": triggers, "description": card, "license": licence,
        "recommendedWeight": {"min": 0.6, "max": 1.0, "default": 0.8}, "nsfw": False, "tags": [],
        "files": [{"name": lora.name, "sizeKB": round((out / lora.name).stat().st_size / 1024, 1), "sha256": sha,
                   "autov3": meta.get("sshs_model_hash", ""), "format": "SafeTensor"}],
        "images": [{"file": im["file"], "meta": {"prompt": im["prompt"], "negativePrompt": im["negative_prompt"],
                                                  "seed": im["seed"], "steps": im["steps"], "cfgScale": im["cfg_scale"],
                                                  "sampler": im["sampler"], "Size": f"{im['width']}x{im['height']}"}}
                   for im in images],
        "trainingDetails": info,
    }
    (out / "civitai.json").write_text(json.dumps(civitai, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def _summary(meta: dict[str, str]) -> dict[str, Any]:
    def get(key: str, default: Any = "") -> Any:
        return meta.get(key, default)

    tags = json.loads(get("ss_tag_frequency", "{}") or "{}")
    merged: dict[str, int] = {}
    for folder in tags.values():
        for t, n in folder.items():
            merged[t] = merged.get(t, 0) + int(n)
    dirs = json.loads(get("ss_dataset_dirs", "{}") or "{}")
    return {"steps": get("ss_steps"), "epochs": get("ss_epoch"), "rank": get("ss_network_dim"),
            "alpha": get("ss_network_alpha"), "optimizer": get("ss_optimizer"), "learning_rate": get("ss_learning_rate"),
            "scheduler": get("ss_lr_scheduler"), "batch_size": get("ss_batch_size_per_device"),
            "resolution": get("ss_resolution"), "mixed_precision": get("ss_mixed_precision"),
            "images": sum(int(d.get("img_count", 0)) for d in dirs.values()),
            "images_with_repeats": get("ss_num_train_images"),
            "folders": {k: {"images": v.get("img_count"), "repeats": v.get("n_repeats")} for k, v in dirs.items()},
            "top_tags": [t for t, _ in sorted(merged.items(), key=lambda kv: -kv[1])[:15]]}


def _model_card(cfg: Any, lora_name: str, variant: str, triggers: list[str], licence: str, info: dict[str, Any],
                images: list[dict[str, Any]], label: str) -> str:
    base = {"sdxl": "stabilityai/stable-diffusion-xl-base-1.0", "flux1/dev": "black-forest-labs/FLUX.1-dev",
            "flux1/schnell": "black-forest-labs/FLUX.1-schnell", **{v: m[2] for v, m in _MORE.items()}}[variant]
    lines = ["---", f"base_model: {base}", "library_name: diffusers", "tags: [lora, lorakit, text-to-image]",
             f"license: other" if "Apache" not in licence else "license: apache-2.0",
             f"instance_prompt: {', '.join(triggers)}" if triggers else "", "---", "",
             f"# {cfg.save.name}", "", f"A LoRA for **{CIVITAI_BASE[variant]}** ({base}), trained with lorakit"
             f" ({'final checkpoint' if label == 'final' else label}).", ""]
    lines += ["## Use", "", f"- File: `{lora_name}` (kohya/ComfyUI layout; loads in ComfyUI, Forge/A1111, diffusers"
              " and sd-scripts)",
              f"- Trigger words: {', '.join(f'`{t}`' for t in triggers) if triggers else 'none'}",
              "- Recommended weight: 0.6 – 1.0 (0.8 to start)", ""]
    lines += ["## Training", ""]
    for key in ("steps", "epochs", "rank", "alpha", "optimizer", "learning_rate", "scheduler", "batch_size",
                "resolution", "mixed_precision"):
        if info.get(key) not in ("", None):
            lines.append(f"- {key.replace('_', ' ')}: {info[key]}")
    lines += ["", "## Dataset", "", f"- {info['images']} images ({info['images_with_repeats']} with repeats)"]
    for folder, d in info["folders"].items():
        lines.append(f"- `{folder}`: {d['images']} images × {d['repeats']} repeats")
    if info["top_tags"]:
        lines.append(f"- most frequent tags: {', '.join(info['top_tags'])}")
    if images:
        lines += ["", "## Previews", ""]
        for im in images:
            lines.append(f"![{im['file']}]({im['file']})  \n`{im['prompt']}` — seed {im['seed']}, {im['steps']} steps, "
                         f"CFG {im['cfg_scale']:g}" + (f", guidance {im['guidance']:g}" if im["guidance"] is not None else ""))
    lines += ["", "## Licence", "", licence, ""]
    return "\n".join(line for line in lines if line is not None)


def valid_repo_id(repo: str) -> bool:
    """``user/name`` as the Hub accepts it (huggingface_hub's own ``validate_repo_id``, with the namespace required):
    walk8, a --dry-run said "would upload" for names (``user/-name``, ``user/a..b``) the real push is refused for."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo.count("/") != 1:
        return False
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return True


def push_run(run_dir: Path, repo: str, *, private: bool = False, dry_run: bool = False,
             step: Optional[int] = None) -> int:
    """Package (into a temporary folder unless a package exists) and upload to ``repo`` on the Hub."""
    import os
    import tempfile

    if not valid_repo_id(repo):
        raise LorakitError(f"--repo {repo!r}: use user/name (ASCII letters, digits, '-', '_', '.'; neither part "
                           "starting or ending with '-' or '.', no '--' or '..', a name of at most 96 characters: "
                           "the Hub's rules)")
    with tempfile.TemporaryDirectory() as tmp:
        pkg = package_run(Path(run_dir), Path(tmp) / "pkg", step=step)
        files = sorted(p for p in pkg.rglob("*") if p.is_file())
        if dry_run:
            print(f"would upload to https://huggingface.co/{repo} ({'private' if private else 'public'}):")
            for f in files:
                print(f"  {f.relative_to(pkg)}  ({f.stat().st_size / 1024:.1f} KiB)")
            return 0
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise LorakitError("push: offline (HF_HUB_OFFLINE is set); nothing uploaded — unset it or use --dry-run")
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise LorakitError("push: needs huggingface_hub (pip install huggingface_hub)") from None
        from huggingface_hub import get_token

        if not get_token():
            raise LorakitError("push: no Hugging Face token (run `hf auth login` or set HF_TOKEN); nothing uploaded")
        api = HfApi()
        try:
            api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo, folder_path=str(pkg), repo_type="model",
                              commit_message=f"lorakit push of {Path(run_dir).name}")
        except Exception as exc:  # network, auth: one line
            kind = type(exc).__name__
            if any(s in kind for s in ("Connect", "Offline", "Timeout", "Network")):
                raise LorakitError(f"push: the Hub cannot be reached ({kind}); nothing uploaded") from None
            raise LorakitError(f"push: upload to {repo} failed ({kind}: {str(exc).splitlines()[0][:200]})") from None
        print(f"uploaded {len(files)} files to https://huggingface.co/{repo}")
    return 0
