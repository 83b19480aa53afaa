"""`memory.vram_gb` and `lorakit plan` for SD3.5, Qwen-Image, Z-Image and SD 1.5 (issue 29's card tiers; issue 28's
automatic plan): each family's planning table (lorakit/models/<family>/planning.py) is what the planner counts, every
tier gets a plan whose predicted peak is within the cap, a cap below the family's floor is refused in one line naming
memory.vram_gb, SD3.5's and Qwen-Image's shapes come from the checkpoint's header, and the weights the planner counts
are the full-size models' own parameters (built on the meta device, as `lorakit plan` builds them).

The numbers are estimates until GPU rows replace them (benchmarks/PENDING.md): the plans say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.config.load import load_config
from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.qwenimage import planning as qwen_planning
from lorakit.models.sd3 import planning as sd3_planning
from lorakit.models.sd15 import planning as sd15_planning
from lorakit.models.zimage import planning as zimage_planning
from lorakit.train import budget, cards, planview

from .test_identify import write_header_file

GIB = 2**30


def sd3_header(depth: int, width: int, dual: range | tuple = ()) -> dict[str, list[int]]:
    """The tensors of an SD3 transformer (original names) that tell its shape."""
    shapes = {"model.diffusion_model.x_embedder.proj.weight": [width, 16, 2, 2],
              "model.diffusion_model.context_embedder.weight": [width, 4096],
              "model.diffusion_model.y_embedder.mlp.0.weight": [width, 2048],
              "model.diffusion_model.pos_embed": [1, (384 if dual else 192) ** 2, width],
              "model.diffusion_model.final_layer.linear.weight": [64, width]}
    for i in range(depth):
        shapes[f"model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv.weight"] = [3 * width, width]
        shapes[f"model.diffusion_model.joint_blocks.{i}.x_block.attn.ln_q.weight"] = [64]
        if i in dual:
            shapes[f"model.diffusion_model.joint_blocks.{i}.x_block.attn2.qkv.weight"] = [3 * width, width]
    return shapes


def qwen_header(layers: int = 60, dim: int = 3072) -> dict[str, list[int]]:
    """The tensors of a Qwen-Image transformer (ComfyUI / diffusers names) that tell its shape."""
    shapes = {"img_in.weight": [dim, 64], "txt_in.weight": [dim, 3584], "txt_norm.weight": [3584],
              "proj_out.weight": [64, dim]}
    for i in range(layers):
        shapes[f"transformer_blocks.{i}.img_mod.1.weight"] = [6 * dim, dim]
        shapes[f"transformer_blocks.{i}.attn.norm_q.weight"] = [128]
    return shapes


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planning_headers")
    return {"sd35m": write_header_file(root / "sd3.5_medium.safetensors", sd3_header(24, 1536, range(13))),
            "sd35l": write_header_file(root / "sd3.5_large.safetensors", sd3_header(38, 2432)),
            "qwen": write_header_file(root / "qwen_image_bf16.safetensors", qwen_header()),
            "qwen10": write_header_file(root / "qwen_image_10_blocks.safetensors", qwen_header(layers=10)),
            "none": root / "unused.safetensors"}


FAMILY = {"sd35m": "sd3", "sd35l": "sd3", "qwen": "qwenimage", "qwen10": "qwenimage", "zimage": "zimage",
          "sd15": "sd15"}
TABLE = {"sd35m": sd3_planning.RATES["medium"], "sd35l": sd3_planning.RATES["large"], "qwen": qwen_planning.RATES,
         "zimage": zimage_planning.RATES, "sd15": sd15_planning.RATES}


def config(files: dict[str, Path], key: str, **memory):
    family = FAMILY[key]
    checkpoint = files.get(key, files["none"])
    data = {"model": {"family": family, "checkpoint": str(checkpoint)}, "data": {"dir": str(checkpoint.parent)},
            "network": {"rank": 32 if family == "sd15" else 16}, "optimizer": {"name": "adamw"},
            "training": {"mixed_precision": "bf16"}}
    return load_config(None, data={**data, **({"memory": memory} if memory else {})})


# issue 29's tiers: (model, GiB) on the card the tier stands for
TIERS = [("sd35m", 12, "rtx4070-12g"), ("sd35l", 24, "rtx4090"), ("qwen", 24, "rtx4090"), ("qwen", 16, "rtx4060ti-16g"),
         ("zimage", 12, "rtx3060-12g"), ("sd15", 6, "rtx3060-12g")]


@pytest.mark.parametrize("key,tier,card", TIERS, ids=[f"{k}-{t}" for k, t, _ in TIERS])
def test_each_tier_gets_a_plan_within_the_cap_from_the_family_table(files, key, tier, card):
    cfg = config(files, key, vram_gb=tier)
    text, plan = planview.planned(cfg, cards.card(card), "run.toml")
    assert plan is not None and plan.estimate_gib <= tier, text
    assert plan.estimate_gib == pytest.approx(sum(plan.parts.values()) + budget.RESERVE_GIB)
    # the activations counted are the family table's rate for the chosen setting, times the batch's 1024² images
    m = plan.applied.memory
    gc, nogc = TABLE[key]["compiled" if m.compile else "eager"]
    share = (m.checkpoint_fraction if m.gradient_checkpointing else 0.0)
    pixels = (512 * 512 if key == "sd15" else 1024 * 1024) / 1024**2
    assert m.activation_budget is None
    assert plan.parts["activations"] == pytest.approx((share * gc + (1 - share) * nogc) * pixels, rel=1e-6), text
    # estimates until GPU rows replace them, and the plan says so (in the log line lorakit train prints too)
    estimated = {"sd35m": "medium" in sd3_planning.ESTIMATED, "sd35l": "large" in sd3_planning.ESTIMATED,
                 "qwen": qwen_planning.ESTIMATED, "zimage": zimage_planning.ESTIMATED,
                 "sd15": sd15_planning.ESTIMATED}[key]
    assert ("memory and speed are not measured" in plan.line) == estimated, plan.line
    if key == "qwen" and tier == 16:  # 20 B: float8 storage and swapped blocks (musubi-tuner: 45 at 12 GB)
        assert m.fp8_base and m.blocks_to_swap > 0, text


@pytest.mark.parametrize("key", ["sd35m", "sd35l", "qwen", "zimage", "sd15"])
def test_a_cap_below_the_floor_is_refused_in_one_line_naming_vram_gb(files, key):
    with pytest.raises(ConfigError) as err:
        planview.plan_for(config(files, key, vram_gb=1.5), cards.card("h100"))
    text = str(err.value)
    assert text.startswith("memory.vram_gb = 1.5: ") and "\n" not in text and "needs about" in text, text


def test_sd35_size_and_qwen_image_shape_come_from_the_checkpoint_header(files):
    rates = {}
    for key, width, depth in (("sd35m", 1536, 24), ("sd35l", 2432, 38)):
        spec, model, blocks, _ = planview.meta_model(config(files, key))
        assert (model.config.num_attention_heads * model.config.attention_head_dim, model.config.num_layers) == \
            (width, depth) and len(blocks) == depth
        mine = budget.for_model(spec, model)
        rates[key] = mine.activation_gib
        assert ("Medium" if key == "sd35m" else "Large") in mine.planning_estimate
    assert rates == {"sd35m": sd3_planning.RATES["medium"]["eager"], "sd35l": sd3_planning.RATES["large"]["eager"]}
    # a Qwen-Image file of another depth: its own block count, rates scaled by width x blocks and said so
    spec, model, blocks, _ = planview.meta_model(config(files, "qwen10"))
    mine = budget.for_model(spec, model)
    assert model.config.num_layers == 10 and len(blocks) == 10
    assert mine.activation_gib == pytest.approx(tuple(r * 10 / 60 for r in qwen_planning.RATES["eager"]))
    assert "width 3072, 10 blocks" in mine.planning_estimate


def test_a_missing_or_foreign_checkpoint_is_refused_naming_model_checkpoint(files):
    with pytest.raises(ConfigError, match=r"model.checkpoint: .* reads SD3.5's size \(Medium / Large\) from its header"):
        planview.meta_model(config({**files, "sd35m": files["none"]}, "sd35m"))
    with pytest.raises(ModelLoadError, match="model.checkpoint: this is an SD3 transformer, not a Qwen-Image"):
        planview.meta_model(config({**files, "qwen": files["sd35m"]}, "qwen"))


@pytest.mark.parametrize("key", ["sd35m", "sd35l", "qwen", "zimage", "sd15"])
def test_the_weights_counted_are_the_models_own_parameters_in_bf16(files, key):
    cfg = config(files, key, vram_gb=400, gradient_checkpointing=True, fp8_base=False, blocks_to_swap=0)
    spec, model, blocks, trainable = planview.meta_model(cfg)
    plan = budget.apply_budget(cfg, spec, model, blocks, trainable, 2, log=lambda _: None, fp8_matmuls=False)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert plan.parts["weights"] * GIB == pytest.approx(params * 2 + buffers, rel=1e-9)
    # and the LoRA's fp32 weights, gradients and AdamW state: 16 bytes per trainable parameter
    assert plan.parts["LoRA+optimizer"] * GIB == pytest.approx(16 * sum(t.numel() for t in trainable))


@pytest.mark.slow  # ~2-3 min of CPU: every full-size denoiser run once on the meta device (run with -m slow)
def test_the_tables_are_the_accounting_of_benchmarks_estimate_activations():
    """Each family table's rates and step scale are what benchmarks/estimate_activations.py derives from the
    architecture; and the same accounting, calibrated on FLUX.1-dev alone, predicts FLUX.2 Klein 4B / 9B's measured
    rates without checkpointing (compiled: 12.53 / 21.15 GiB, RESULTS.md round 12) within 6 %."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "estimate_activations.py"
    spec = importlib.util.spec_from_file_location("estimate_activations", path)
    est = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(est)
    for size, measured in (("klein-4b", 12.53), ("klein-9b", 21.15)):
        assert abs(est.rates("flux2", size)["compiled"][1] - measured) / measured < 0.06
    derived = {("sd3", "medium"): (sd3_planning.RATES["medium"], sd3_planning.STEP_SCALE["medium"]),
               ("sd3", "large"): (sd3_planning.RATES["large"], sd3_planning.STEP_SCALE["large"]),
               ("qwenimage", ""): (qwen_planning.RATES, qwen_planning.STEP_SCALE),
               ("zimage", ""): (zimage_planning.RATES, zimage_planning.STEP_SCALE),
               ("sd15", ""): (sd15_planning.RATES, sd15_planning.STEP_SCALE)}
    for (family, size), (table, step) in derived.items():
        r = est.rates(family, size)
        assert {k: r[k] for k in ("eager", "compiled")} == table and r["step_scale"] == step, (family, size, r)
