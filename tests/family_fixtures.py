"""Pieces the families' tests share (tests/unit/test_<family>*.py, tests/integration/test_<family>*.py, the contract
test): a LoRA given random weights as if trained on a tiny model, the Linears' output widths, a family's adapter
loaded on the CPU from its tiny files, an fp8 copy of a checkpoint as ComfyUI stores them, a run's losses, and a run
interrupted in the middle of a step, its run.json and what `lorakit inspect` says of its LoRA. Each family's own numbers (targets, roles, settings) stay in its test."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def train_like(model: torch.nn.Module, targets: dict[str, int], alpha_of: Callable[[str], float],
               seed: int = 0) -> dict[str, Any]:
    """Inject LoRA (lorakit's injector) at ``targets`` {path: rank} and give it random non-zero weights (seeded), as if
    trained; returns {path: LoraModule}."""
    from lorakit.lora.inject import inject_lora, load_lora_into
    from lorakit.models.base import LoraModule

    inject_lora(model, targets, {p: alpha_of(p) for p in targets}, 0.0, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    mods = dict(model.named_modules())
    lora = {}
    for p, r in targets.items():
        base = mods[p].base_layer
        lora[p] = LoraModule(down=torch.randn(r, base.in_features, generator=g) * 0.3,
                             up=torch.randn(base.out_features, r, generator=g) * 0.3, alpha=alpha_of(p))
    load_lora_into(model, lora)
    return lora


def linear_outs(model: torch.nn.Module) -> dict[str, int]:
    """Module path -> output width of every Linear (a LoRA-wrapped one under its module's own path)."""
    return {n.removesuffix(".base_layer"): m.out_features for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)}


def loaded_adapter(family: str, model: dict[str, Any], data_dir: Path, **training: Any) -> Any:
    """The family's Adapter for a config of ``[model]`` keys (paths) and ``[training]`` settings, loaded in fp32 on
    the CPU."""
    from lorakit.config.load import load_config
    from lorakit.models.registry import get_family

    cfg = load_config(None, data={"model": {"family": family, **{k: str(v) for k, v in model.items()}},
                                  "data": {"dir": str(data_dir)},
                                  "training": {"device": "cpu", "mixed_precision": "no", **training}})
    adapter = get_family(family).Adapter(cfg)
    adapter.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    return adapter


def exported_metadata(adapter: Any, lora: dict[str, Any], path: Path) -> dict[str, str]:
    """The metadata in the header of the file lorakit's exporter (train/export.py export_lora, as a run's end calls it)
    writes for ``lora`` with the adapter's own config; no dataset (the ss_* data keys come out empty)."""
    from types import SimpleNamespace

    from lorakit.safetensors_header import read_safetensors_header
    from lorakit.train.export import export_lora

    data = SimpleNamespace(items=[], subsets=[], groups=[])
    stream = SimpleNamespace(steps_per_epoch=1, batch_size=1)
    export_lora(path, adapter, lora, adapter.cfg, data, stream, 1, ("1", 0.0))
    return read_safetensors_header(path)[1]


def flow_scheduler(config: dict[str, Any]) -> Any:
    """diffusers' FlowMatchEulerDiscreteScheduler from a family's shipped scheduler config, for its pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**{k: v for k, v in config.items() if not k.startswith("_")})


def fp8_copy(src: Path, dst: Path) -> Path:
    """``src`` with every 2-D tensor stored as float8 e4m3, as ComfyUI's ``*_fp8_e4m3fn`` files."""
    from safetensors.torch import load_file

    from lorakit.lora.io import save_safetensors_atomic

    save_safetensors_atomic(dst, {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v)
                                  for k, v in load_file(str(src)).items()}, {})
    return dst


def check_fp8_upcast(load_components: Callable[..., Any], model_cfg: Callable[[dict], Any], files: dict[str, Path],
                     dst: Path, ref: dict[str, torch.Tensor], key: str) -> None:
    """The family's tiny checkpoint stored as fp8 (:func:`fp8_copy` at ``dst``) loads with its weights upcast: tensor
    ``key`` of the transformer equals the reference ``ref[key]`` through float8 e4m3."""
    fp8 = fp8_copy(files["checkpoint"], dst)
    c8 = load_components(model_cfg({**files, "checkpoint": fp8}), torch.float32, lambda _m: None)
    assert torch.equal(c8.transformer.state_dict()[key], ref[key].to(torch.float8_e4m3fn).float())


def finished_status(run: Path) -> dict[str, Any]:
    """A run folder's run.json, asserted to say the run finished and its export had no problem."""
    status = json.loads((Path(run) / "run.json").read_text())
    assert status["status"] == "finished" and status["export_problems"] == []
    return status


def inspected(capsys: Any, lora_file: Path, family: str, modules: int) -> str:
    """`lorakit inspect` on a LoRA file, asserted to match all ``modules`` of it to ``family``; what it printed."""
    from lorakit.cli import main

    capsys.readouterr()
    assert main(["inspect", str(lora_file)]) == 0
    shown = capsys.readouterr().out
    assert f"fits {family}: {modules}/{modules} modules" in shown
    return shown


def run_losses(run: Path) -> list[float]:
    """The training losses a run folder's metrics.jsonl recorded, in order."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("loss") is not None]


@contextlib.contextmanager
def interrupted_at_call(monkeypatch: Any, n: int = 5) -> Iterator[None]:
    """While inside, the engine's ``train_step`` raises KeyboardInterrupt on its ``n``-th call (5: after the step-3
    checkpoint, in the middle of step 5), as Ctrl-C would."""
    import lorakit.train.steps as steps

    real_step, calls = steps.train_step, {"n": 0}

    def dying_step(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(steps, "train_step", dying_step)
    try:
        yield
    finally:
        monkeypatch.setattr(steps, "train_step", real_step)
