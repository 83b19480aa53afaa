"""Where the shipped toy base models live (``lorakit/toy/assets/<family>/``), by role."""

from __future__ import annotations

from pathlib import Path

from lorakit.errors import ModelLoadError

ASSETS = Path(__file__).resolve().parent / "assets"
FAMILIES = ("sdxl", "flux1", "flux2")
_FILES: dict[str, dict[str, str]] = {
    "sdxl": {"checkpoint": "toy_sdxl.safetensors", "config": "config"},
    "flux1": {"checkpoint": "flux1-dev.safetensors", "clip_l": "clip_l.safetensors",
              "t5xxl": "t5xxl_fp16.safetensors", "ae": "ae.safetensors", "config": "config"},
    "flux2": {"checkpoint": "flux2-klein-base-toy.safetensors", "text_encoder": "qwen_3_toy.safetensors",
              "ae": "flux2-ae.safetensors", "tokenizer": "tokenizer", "config": "config"},
}
# Text length the toy FLUX was trained with (T5 padding); adapters sampling the toy should use it.
TOY_T5_MAX_LENGTH = 64


def toy_paths(family: str, root: Path | None = None) -> dict[str, Path]:
    """role → path of the toy base model files (checkpoint, clip_l, t5xxl, ae, config as the family has them).

    Raises ModelLoadError naming the missing file and the command that builds it.
    """
    if family not in _FILES:
        raise ModelLoadError(f"model.family: no toy model for {family!r}; toy families are {', '.join(FAMILIES)}")
    base = (root or ASSETS) / family
    paths = {role: base / name for role, name in _FILES[family].items()}
    for role, p in paths.items():
        ok = ((p / "model_index.json").is_file() if role == "config" else
              (p / "tokenizer_config.json").is_file() if role == "tokenizer" else p.is_file())
        if not ok:
            raise ModelLoadError(f"{p}: the toy {family} base model is missing ({role}); "
                                 f"run `python -m lorakit.toy build --family {family}`")
    return paths
