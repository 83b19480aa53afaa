"""Each family's toy recipe (``TOY`` in its package): the toy world finds toys through the registry alone, names
no family, and reaches the families' maths only through their adapters (per-sample guidance, attach)."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.errors import ModelLoadError
from lorakit.models.base import ToyRecipe
from lorakit.toy import build, paths

FAMILY_WORDS = re.compile(r"""["'](sdxl|flux1|flux2|sd3|sd15|qwen_image|qwenimage|zimage)["']""")


def test_toy_world_and_cli_name_no_family():
    root = Path(lorakit.__file__).parent
    files = sorted((root / "toy").glob("*.py")) + [root / "cli.py"]
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            assert not FAMILY_WORDS.search(line.split("#", 1)[0]), f"{f.name}:{i}: {line.strip()}"
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                assert parts[:2] != ["lorakit", "models"] or parts[2:3] in ([], ["base"], ["registry"], ["tokenizers"]), \
                    f"{f.name}:{node.lineno} imports {node.module}"


def test_toys_come_from_the_registry(monkeypatch):
    """A family package without TOY has no toy; one with TOY is a toy family with no edit in lorakit/toy."""
    from lorakit.models import registry

    real_families, real_get = registry.families, registry.get_family
    fake_recipe = ToyRecipe(files={"checkpoint": "x.safetensors", "config": "config"}, configs=dict,
                            make=lambda seed: {}, vae="vae", adapter=lambda m, c: None, save=lambda m, f, o: {})
    fakes = {"nottoy": types.SimpleNamespace(), "newfam": types.SimpleNamespace(TOY=fake_recipe)}
    monkeypatch.setattr(registry, "families", lambda: real_families() + sorted(fakes))
    monkeypatch.setattr(registry, "get_family", lambda n: fakes[n] if n in fakes else real_get(n))
    with_toy = {f for f in real_families() if getattr(real_get(f), "TOY", None) is not None}  # sd15 has none yet
    assert set(paths.toy_families()) == with_toy | {"newfam"} and {"sdxl", "flux1"} <= with_toy
    assert paths.toy_recipe("newfam") is fake_recipe
    with pytest.raises(ModelLoadError, match="no toy model for 'nottoy'; toy families are"):
        paths.toy_recipe("nottoy")
    with pytest.raises(ModelLoadError, match=r"toy newfam base model is missing \(checkpoint\).*--family newfam"):
        paths.toy_paths("newfam")


def test_default_demo_family_is_the_recipes_choice():
    chosen = [f for f in paths.toy_families() if paths.toy_recipe(f).default_demo]
    assert paths.default_toy_family() == chosen[0] == "sdxl"


def test_model_section_maps_the_file_table_to_model_keys():
    m = paths.model_section("flux1")
    assert m["family"] == "flux1" and m["config_dir"].endswith("flux1/config")
    assert {k: Path(v).name for k, v in m.items() if k not in ("family", "config_dir")} == {
        "checkpoint": "flux1-dev.safetensors", "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors",
        "ae": "ae.safetensors"}


def test_flux_per_sample_guidance_equals_one_call_per_sample():
    """FLUX.1's pretraining guidance (one value per sample) through Adapter.predict: each row as if alone."""
    recipe = paths.toy_recipe("flux1")
    torch.manual_seed(0)
    adapter = recipe.adapter(recipe.make(0), build.toy_config("flux1", pretraining=True))
    x0, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        text = adapter.encode_text(["a red circle on a blue background", "a green square on a white background"])
    assert text["t5"].shape[1] == 64                       # the recipe's t5_max_length, not dev's 512
    batch = build.toy_batch(x0, text)
    noised = adapter.noise(x0, noise, batch, build.toy_config("flux1", pretraining=True).training,
                           torch.Generator().manual_seed(1))
    g = torch.tensor([1.5, 4.0])
    with torch.no_grad():
        both = adapter.predict(noised, batch, guidance=g)
        rows = []
        for i in range(2):
            one = build.toy_batch(x0[i:i + 1], {k: v[i:i + 1] for k, v in text.items()})
            n1 = type(noised)(noised.model_input[i:i + 1], noised.timesteps[i:i + 1], noised.target[i:i + 1],
                              noised.weight[i:i + 1])
            rows.append(adapter._forward(n1.model_input, n1.timesteps, one.text, float(g[i])))
        other = adapter.predict(noised, batch, guidance=torch.tensor([4.0, 4.0]))
    assert torch.allclose(both, torch.cat(rows), atol=1e-5)
    assert not torch.allclose(both[0], other[0], atol=1e-5)         # the guidance input is really read


def test_sdxl_toy_adapter_encodes_empty_negative_prompts():
    """The toy learned "" from caption dropout: its adapter must not replace the empty negative with zeros."""
    recipe = paths.toy_recipe("sdxl")
    adapter = recipe.adapter(recipe.make(0), build.toy_config("sdxl"))
    assert adapter.force_zeros_for_empty_prompt is False
    assert all(not p.requires_grad for p in adapter.denoiser().parameters())
    assert build.toy_config("sdxl", pretraining=True).training.noise_offset == 0.15
    assert build.toy_config("sdxl").training.noise_offset == 0.0       # pretraining knobs stay out of LoRA runs
