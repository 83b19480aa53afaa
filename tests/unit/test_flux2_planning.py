"""FLUX.2's planning numbers per size (issue 19: `memory.vram_gb` for FLUX.2; issue 28: the automatic plan).

The planner's predicted peak for each setting measured on the GPU must be within 10 % of the measured peak. Source of
the measured numbers: benchmarks/RESULTS.md round 12 (NVIDIA H100 80GB HBM3, commit f9bed5f, `benchmarks/bench.py`
rows flux2-4b/* and flux2-9b/*: 1024², batch 1, rank 16 on every FLUX.2 target, AdamW, bf16 autocast, peak =
torch.cuda.max_memory_allocated). The measured peak is allocated memory, so it is compared with the planner's estimate
less its reserve for the CUDA context and fragmentation (budget.RESERVE_GIB), which allocated memory does not count.

The models are the full-size transformers built on the meta device from a header-only checkpoint (sparse data, real
BFL names and shapes), as `lorakit plan` builds them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lorakit.config.load import load_config
from lorakit.errors import ConfigError
from lorakit.models.flux2 import configs
from lorakit.train import budget, cards, planview, swap

from .test_identify import write_header_file

# (size, [memory] settings, measured s/step, measured peak allocated GiB): RESULTS.md round 12, H100
MEASURED = [
    ("klein-4b", {"compile": False, "gradient_checkpointing": True}, 0.409, 9.17),
    ("klein-4b", {"compile": True, "gradient_checkpointing": True}, 0.236, 9.54),
    ("klein-4b", {"compile": True, "gradient_checkpointing": True, "fp8_base": True, "fp8_compute": True}, 0.213, 6.01),
    ("klein-4b", {"compile": True, "gradient_checkpointing": False}, 0.171, 20.11),
    ("klein-9b", {"compile": True, "gradient_checkpointing": True}, 0.447, 20.34),
    ("klein-9b", {"compile": True, "gradient_checkpointing": True, "fp8_base": True, "fp8_compute": True}, 0.405, 12.03),
    ("klein-9b", {"compile": True, "gradient_checkpointing": False}, 0.337, 38.71),
]


def bfl_header(size: str) -> dict[str, list[int]]:
    """The tensors of a BFL FLUX.2 transformer that tell its size (widths, block counts, guidance)."""
    hidden = {v: k for k, v in configs.HIDDEN_TO_SIZE.items()}[size]
    nd, ns, ctx, guidance = configs.SIZE_FACTS[size]
    shapes = {"img_in.weight": [hidden, 128], "txt_in.weight": [hidden, ctx],
              "double_stream_modulation_img.lin.weight": [1], "double_blocks.0.img_attn.norm.query_norm.scale": [128]}
    shapes.update({f"double_blocks.{i}.img_mlp.0.weight": [1] for i in range(nd)})
    shapes.update({f"single_blocks.{i}.linear1.weight": [1] for i in range(ns)})
    if guidance:
        shapes["guidance_in.in_layer.weight"] = [1]
    return shapes


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux2_headers")
    return {size: write_header_file(root / f"flux2-{size}.safetensors", bfl_header(size)) for size in configs.SIZES}


def config(checkpoint: Path, **memory):
    return load_config(None, data={"model": {"family": "flux2", "checkpoint": str(checkpoint)},
                                   "data": {"dir": str(checkpoint.parent)}, "network": {"rank": 16},
                                   "optimizer": {"name": "adamw"}, "training": {"mixed_precision": "bf16"},
                                   **({"memory": memory} if memory else {})})


@pytest.mark.parametrize("size,settings,seconds,peak", MEASURED,
                         ids=[f"{s}-{'+'.join(k for k, v in m.items() if v)}" for s, m, _, _ in MEASURED])
def test_predicted_peak_within_10_percent_of_the_measured_one(checkpoints, size, settings, seconds, peak):
    fixed = dict(settings, cuda_graphs=False, fp8_base=settings.get("fp8_base", False))
    if settings["gradient_checkpointing"]:
        fixed["checkpoint_fraction"] = 1.0  # every block, as the benchmark row ran
    cfg = config(checkpoints[size], vram_gb=80, **fixed)
    spec, model, blocks, trainable = planview.meta_model(cfg)
    plan = budget.apply_budget(cfg, spec, model, blocks, trainable, swap.LOOKAHEAD, log=lambda _: None,
                               fp8_matmuls=True)
    m = plan.applied.memory
    assert (m.gradient_checkpointing, m.fp8_base, bool(m.fp8_compute), m.blocks_to_swap) == \
        (settings["gradient_checkpointing"], settings.get("fp8_base", False), settings.get("fp8_compute", False), 0)
    if m.gradient_checkpointing:
        assert m.checkpoint_fraction == 1.0
    predicted = plan.estimate_gib - budget.RESERVE_GIB
    assert abs(predicted - peak) / peak < 0.10, (predicted, peak, plan.parts)
    # the weights counted are the model's own: bf16 (2 bytes) or float8 storage (1 byte + row scales)
    params = sum(p.numel() for p in model.parameters())
    per = 1 if m.fp8_base else 2
    assert plan.parts["weights"] == pytest.approx(params * per / 2**30, rel=0.02)


def test_measured_settings_estimate_their_measured_step_on_the_card_they_ran(checkpoints):
    h100 = cards.card("h100")
    for size, settings, seconds, _ in MEASURED:
        spec = budget.for_model(planview.meta_model(config(checkpoints[size]))[0],
                                planview.meta_model(config(checkpoints[size]))[1])
        s = {"compile": settings["compile"], "fp8_base": settings.get("fp8_base", False),
             "fp8_compute": settings.get("fp8_compute", False),
             "checkpoint_fraction": 1.0 if settings["gradient_checkpointing"] else 0.0}
        step = cards.step_seconds("flux2", s, h100, rows=cards.rows_for(spec))
        assert step.seconds == pytest.approx(seconds) and not step.extrapolated, (size, settings)


def test_sizes_get_their_own_rates_and_dev_is_said_to_be_an_estimate(checkpoints):
    rates = {}
    for size in configs.SIZES:
        spec, model, _, _ = planview.meta_model(config(checkpoints[size]))
        mine = budget.for_model(spec, model)
        rates[size] = mine.activation_gib_compiled
        assert bool(mine.planning_estimate) == (size == "dev")
    assert rates["klein-4b"][1] < rates["klein-9b"][1] < rates["dev"][1]
    # dev without checkpointing: 9B's rate times the width x block-count ratio (6144 x 56 against 4096 x 32), estimated
    k = 6144 * 56 / (4096 * 32)
    assert rates["dev"][1] == pytest.approx(rates["klein-9b"][1] * k, abs=0.01)
    # with checkpointing: measured (RESULTS.md round 13, fp8 compute, every block resident): the peak less the fp8
    # weights and the LoRA's AdamW state the planner counts for the full-size model
    cfg = config(checkpoints["dev"], vram_gb=80)
    spec, model, blocks, trainable = planview.meta_model(cfg)
    sizes = planview.sizes_of(cfg)
    fp8_weights = (sizes.outside[1] + sum(b[1] for b in sizes.blocks)) / 2**30
    lora = sum(t.numel() for t in trainable) * 16 / 2**30
    assert rates["dev"][0] == pytest.approx(37.14 - fp8_weights - lora, abs=0.02)


def test_vram_gb_plans_flux2_per_size_and_says_when_it_estimates(checkpoints):
    # Klein 4B at 8 GiB: measured 6.01 GiB with fp8 compute and checkpointing (RESULTS.md round 12), which fits
    lines: list[str] = []
    cfg = config(checkpoints["klein-4b"], vram_gb=8, compile=True)
    spec, model, blocks, trainable = planview.meta_model(cfg)
    plan = budget.apply_budget(cfg, spec, model, blocks, trainable, swap.LOOKAHEAD, log=lines.append,
                               fp8_matmuls=True)
    assert plan.applied.memory.fp8_base and plan.applied.memory.fp8_compute and plan.estimate_gib <= 8
    assert not any("not measured" in line for line in lines)
    # dev at 24 GiB: 30 GiB of float8 weights, so blocks are swapped: measured (RESULTS.md round 15), not said estimated
    cfg = config(checkpoints["dev"], vram_gb=24, compile=True)
    spec, model, blocks, trainable = planview.meta_model(cfg)
    plan = budget.apply_budget(cfg, spec, model, blocks, trainable, swap.LOOKAHEAD, log=lines.append,
                               fp8_matmuls=True)
    assert plan.applied.memory.fp8_base and plan.applied.memory.blocks_to_swap > 0 and plan.estimate_gib <= 24
    assert not any("not measured" in line for line in lines), lines
    # dev in bf16 weights (no row measured it): the notes say what is estimated
    cfg = config(checkpoints["dev"], vram_gb=80, compile=True, fp8_base=False)
    plan = budget.apply_budget(cfg, spec, model, blocks, trainable, swap.LOOKAHEAD, log=lines.append,
                               fp8_matmuls=True)
    assert not plan.applied.memory.fp8_base
    assert any("FLUX.2 dev: this setting's memory and speed are not measured" in line for line in lines), lines


def test_lorakit_plan_for_flux2_names_the_size_and_the_estimate(checkpoints):
    # dev on a 32 GB card: fp8 storage and swapped blocks, the kind rounds 13 / 15 measured: no "not measured"
    text = planview.report(config(checkpoints["dev"]), cards.card("rtx5090"), "dev.toml")
    assert "not measured" not in text and "estimated peak" in text and "RESULTS.md round 15 (H100): flux2-dev/" in text
    # dev on an H100 / H200: partial or no checkpointing, whose activations without checkpointing are scaled: said so
    for card in ("h100", "h200"):
        text = planview.report(config(checkpoints["dev"]), cards.card(card), "dev.toml")
        assert "FLUX.2 dev: this setting's memory and speed are not measured" in text, text
    text = planview.report(config(checkpoints["klein-9b"]), cards.card("h100"), "9b.toml")
    assert "not measured" not in text and re.search(r"RESULTS.md round 1[25] \(H100\): flux2-9b/", text), text


def test_planning_a_flux2_config_without_its_checkpoint_says_what_to_set(tmp_path):
    cfg = config(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="model.checkpoint: .* reads FLUX.2.s size .* from its header"):
        planview.meta_model(cfg)
