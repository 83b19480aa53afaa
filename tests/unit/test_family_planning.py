"""`memory.vram_gb` and `lorakit plan` for SD3.5, Qwen-Image, Z-Image and SD 1.5 (issue 29's card tiers; issue 28's
automatic plan): each family's planning table (lorakit/models/<family>/planning.py) is what the planner counts, every
tier gets a plan whose predicted peak is within the cap, a cap below the family's floor is refused in one line naming
memory.vram_gb, SD3.5's and Qwen-Image's shapes come from the checkpoint's header, and the weights the planner counts
are the full-size models' own parameters (built on the meta device, as `lorakit plan` builds them).

SD3.5's and Qwen-Image's checkpointed rates and s/step rows are measured (benchmarks/RESULTS.md round 14, H100): the
planner re-predicts each measured peak and s/step; their other settings, Z-Image and SD 1.5 are estimates until GPU
rows replace them (benchmarks/PENDING.md), and the plans say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.config.load import load_config
from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.qwenimage import planning as qwen_planning
from lorakit.models.sd3 import planning as sd3_planning
from lorakit.models.sd15 import planning as sd15_planning
from lorakit.models.zimage import planning as zimage_planning
from lorakit.models import estimates
from lorakit.models.registry import get_family
from lorakit.train import autoplan, budget, cards, planview, swap

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
                 # SD 1.5: measured only under compile + CUDA graphs in bf16 (round 18), which this tier plans
                 "sd15": sd15_planning.ESTIMATED and not (m.compile and m.cuda_graphs and not m.fp8_base)}[key]
    assert ("(estimates;" in plan.line) == estimated, plan.line
    # Z-Image's activations are measured under compile (round 17): the line says which numbers are estimates
    assert ("memory and speed are not measured" in plan.line) == (estimated and key != "zimage"), plan.line
    if key in MEASURED_SETTINGS:  # a measured size: "measured" only where a measured row has the chosen setting
        chosen = autoplan.settings_of(m)
        covered = any(all(chosen[k] == v for k, v in row.items()) for row in MEASURED_SETTINGS[key])
        assert ("s/step (measured)" in plan.line) == covered and bool(plan.step.extrapolated) == (not covered), text
        if not covered:  # and what is not measured is said where lorakit plan shows the step
            assert any("not measured" in why or "nearest measured" in why for why in plan.step.extrapolated), text
    if key == "qwen" and tier == 16:  # 20 B: float8 storage and swapped blocks (musubi-tuner: 45 at 12 GB)
        assert m.fp8_base and m.blocks_to_swap > 0, text


# benchmarks/RESULTS.md round 14 (NVIDIA H100 80GB HBM3, bench.py rows; full-size random weights, 1024², batch 1, rank
# 16, AdamW): (model, row, [memory] settings as the row ran them, s/step, peak allocated GiB)
ROUND14 = [
    ("sd35m", "sd35m/gc", {"compile": False}, 0.397, 5.95),
    ("sd35m", "sd35m/gc+compile", {"compile": True}, 0.172, 5.91),
    ("sd35l", "sd35l/gc+compile", {"compile": True}, 0.297, 18.02),
    ("sd35l", "sd35l/fp8+compile", {"compile": True, "fp8_base": True}, 0.522, 10.02),
    ("qwen", "qwenimage/fp8+swap16", {"compile": False, "fp8_base": True, "blocks_to_swap": 16}, 1.267, 18.68),
    ("qwen", "qwenimage/fp8+swap45", {"compile": False, "fp8_base": True, "blocks_to_swap": 45}, 1.307, 9.49),
]
# what the s/step model reads of each (autoplan.settings_of): every block checkpointed, no graphs, bf16 matmuls
MEASURED_SETTINGS: dict[str, list[dict]] = {}
for _key, _row, _m, _s, _p in ROUND14:
    MEASURED_SETTINGS.setdefault(_key, []).append(
        {"compile": _m["compile"], "cuda_graphs": False, "fp8_base": _m.get("fp8_base", False), "fp8_compute": False,
         "checkpoint_fraction": 1.0, "activation_budget": None, "modulation_on_cpu": False,
         "blocks_to_swap": _m.get("blocks_to_swap", 0)})


@pytest.mark.parametrize("key,row,settings,seconds,peak", ROUND14, ids=[r for _, r, _, _, _ in ROUND14])
def test_each_measured_row_is_re_predicted_by_the_planner(files, key, row, settings, seconds, peak):
    """The planner's peak for the row's settings (less its reserve for the CUDA context, which allocated memory does not
    count) is within 3 % of the measured peak, and the s/step model gives the measured s/step, not extrapolated."""
    fixed = dict(settings, gradient_checkpointing=True, checkpoint_fraction=1.0, cuda_graphs=False,
                 fp8_base=settings.get("fp8_base", False), fp8_compute=False,
                 blocks_to_swap=settings.get("blocks_to_swap", 0))
    cfg = config(files, key, vram_gb=80, **fixed)
    spec, model, blocks, trainable = planview.meta_model(cfg)
    plan = budget.apply_budget(cfg, spec, model, blocks, trainable, swap.LOOKAHEAD, log=lambda _: None,
                               fp8_matmuls=True)
    m = plan.applied.memory
    assert (m.gradient_checkpointing, m.checkpoint_fraction, m.fp8_base, bool(m.fp8_compute), m.blocks_to_swap) == \
        (True, 1.0, fixed["fp8_base"], False, fixed["blocks_to_swap"])
    predicted = plan.estimate_gib - budget.RESERVE_GIB
    assert abs(predicted - peak) / peak < 0.03, (predicted, peak, plan.parts)
    # the weights counted: the parameters of the resident blocks and the rest in bf16 (2 bytes) or fp8 storage (1 byte
    # + row scales), and the buffers (SD3's position embedding) as they are
    swapped = set(swap.spread(len(blocks), m.blocks_to_swap))
    resident = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for i, b in enumerate(blocks) if i in swapped for p in b.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert plan.parts["weights"] * GIB == pytest.approx(resident * (1 if m.fp8_base else 2) + buffers, rel=0.02)
    mine = budget.for_model(spec, model)
    step = cards.step_seconds(mine.family, autoplan.settings_of(m), cards.card("h100"), rows=cards.rows_for(mine),
                              swapped_bytes=autoplan._swapped(plan, budget.Sizes.of(model, blocks, trainable)))
    assert step.seconds == pytest.approx(seconds) and not step.extrapolated, step.describe()
    assert f"RESULTS.md round 14: bench.py {row} " in step.source


def test_settings_beyond_the_measured_rows_are_marked_estimated():
    """SD3.5's rows without checkpointing and Qwen-Image's compiled rows are derived from the measured ones (s/step: the
    s/step model's own recomputation share, or the eager row's), carry no peak and say what is not measured."""
    assert estimates.RECOMPUTE == cards.RECOMPUTE
    for size, measured in sd3_planning.MEASURED.items():
        rows = sd3_planning.steps(size)
        derived = [r for r in rows if r.get("estimated")]
        bf16 = [r for r in measured if not r.get("fp8_base") and r["checkpoint_fraction"] == 1.0
                and not r.get("cuda_graphs")]
        assert len(rows) == len(measured) + len(bf16) and len(derived) == len(bf16)
        for r, base in zip(derived, bf16):
            assert r["checkpoint_fraction"] == 0.0 and r["peak_gib"] is None and "not measured" in r["estimated"]
            assert r["s_step"] == pytest.approx(base["s_step"] * (1 - cards.RECOMPUTE), abs=1e-4)
            assert bool(r.get("compile")) == bool(base.get("compile"))
    rows = qwen_planning.steps()
    derived = [r for r in rows if r.get("estimated")]
    assert [r["blocks_to_swap"] for r in derived] == [16, 45] and all(r["compile"] for r in derived)
    assert [r["s_step"] for r in derived] == [r["s_step"] for r in qwen_planning.MEASURED]


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
        assert mine.planning_estimate == ""  # measured (RESULTS.md round 14)
        assert {r["source"] for r in mine.measured_steps if not r.get("estimated")} == \
            {r["source"] for r in sd3_planning.MEASURED["medium" if key == "sd35m" else "large"]}
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
        if family == "sd15":  # measured without checkpointing under compile (RESULTS.md round 15): the rest estimated
            assert {k: r[k][0] for k in ("eager", "compiled")} == {k: table[k][0] for k in ("eager", "compiled")}
            assert r["step_scale"] == step, (family, size, r)
            continue
        if family in ("sd3", "qwenimage"):  # measured with checkpointing (RESULTS.md round 14): the rest estimated
            assert {k: r[k][1] for k in ("eager", "compiled")} == {k: table[k][1] for k in ("eager", "compiled")}
            assert r["step_scale"] == step, (family, size, r)
            continue
        assert {k: r[k] for k in ("eager", "compiled")} == table and r["step_scale"] == step, (family, size, r)


def test_the_reference_rows_are_rows_of_the_card_table():
    """estimates.REFERENCE copies rows of lorakit/train/cards.toml (the models layer does not read the trainer's
    table): each must equal one of the table's rows of that family in card, s/step and settings, so a re-measured row
    cannot leave a stale copy behind."""
    from lorakit.models import estimates
    from lorakit.train import cards

    keys = ("card", "s_step", "compile", "cuda_graphs", "fp8_base", "fp8_compute", "blocks_to_swap")
    for name, family in (("FLUX.1-dev", "flux1"), ("SDXL", "sdxl")):
        table = {tuple(r.get(k) or None for k in keys) + (float(r.get("checkpoint_fraction", 1.0)),)
                 for r in cards.measured_rows(family)}
        for row in estimates.REFERENCE[name]:
            got = tuple(row.get(k) or None for k in keys) + (float(row.get("checkpoint_fraction", 1.0)),)
            assert got in table, (name, row["source"])


def test_qwen_image_plan_reads_model_config_dir_as_the_loader_does(tmp_path):
    """A model whose rotary axes are not the full-size ones (the toy: head width 32) plans with `model.config_dir`'s
    transformer config, as loading does; without it the header alone is refused naming model.config_dir."""
    from lorakit.toy.paths import toy_paths

    paths = toy_paths("qwenimage")
    data = {"model": {"family": "qwenimage", "checkpoint": str(paths["checkpoint"])}, "data": {"dir": str(tmp_path)},
            "network": {"rank": 4}, "optimizer": {"name": "adamw"}}
    with pytest.raises(ModelLoadError, match="model.config_dir"):
        planview.meta_model(load_config(None, data=data))
    data["model"]["config_dir"] = str(paths["config"])
    _spec, model, blocks, _ = planview.meta_model(load_config(None, data=data))
    folder = json.loads((paths["config"] / "transformer" / "config.json").read_text())
    assert list(model.config.axes_dims_rope) == list(folder["axes_dims_rope"]) and \
        sum(folder["axes_dims_rope"]) == model.config.attention_head_dim
    assert len(blocks) == model.config.num_layers == folder["num_layers"]


def test_sd35_medium_plans_its_measured_cuda_graphs_row_with_every_block_checkpointed(files):
    """Round 18 (H100, beside sd-scripts at 0.401 s / 6.10 GiB): compile + CUDA graphs with every block checkpointed ran
    0.131 s at 5.88 GiB, the same without graphs 0.186 s. The automatic plan takes it, says "measured", and does not
    trade it for less checkpointing (measured slower without graphs, rounds 14-15)."""
    text, plan = planview.planned(config(files, "sd35m"), cards.card("h100"), "run.toml")
    m = plan.applied.memory
    assert m.compile and m.cuda_graphs and m.gradient_checkpointing and m.checkpoint_fraction == 1.0, text
    assert not m.fp8_base, text
    assert "~0.13 s/step (measured)" in plan.line and "sd35m/gc+compile-graphs" in plan.step.source, plan.line


def test_sd15_estimates_are_calibrated_by_its_measured_rows():
    """SD 1.5's s/step rows beyond its measured kind are SDXL's scaled by forward FLOPs, then by how far SD 1.5's two
    measured rows (round 18) sit from the estimates of their own settings; the automatic plan on an H100 is the
    measured compile + CUDA graphs row with every block checkpointed (0.058 s at 512²), not an estimated kind."""
    unet = type("U", (), {"config": type("C", (), {"block_out_channels": [320, 640, 1280, 1280]})()})()
    spec = sd15_planning.spec_for(get_family("sd15").SPEC, unet)
    measured = [r for r in spec.measured_steps if not r.get("estimated")]
    assert [r["s_step"] for r in measured] == [round(0.058 * 4, 3), round(0.062 * 4, 3)]
    plain = estimates.scaled_rows("sd15", "SDXL", sd15_planning.STEP_SCALE)
    graphs = {r["checkpoint_fraction"]: r["s_step"] for r in plain if r.get("cuda_graphs") and not r.get("fp8_base")}
    k = ((0.232 / graphs[1.0]) * (0.248 / graphs[0.0])) ** 0.5  # geometric mean over the two measured rows
    fp8 = next(r for r in spec.measured_steps if r.get("fp8_compute"))
    plain_fp8 = next(r for r in plain if r.get("fp8_compute"))
    assert fp8["s_step"] == pytest.approx(plain_fp8["s_step"] * k, abs=1e-4) and "calibrated" in fp8["estimated"]
    text, plan = planview.planned(config({"none": Path("unused.safetensors")}, "sd15"), cards.card("h100"), "run.toml")
    m = plan.applied.memory
    assert m.compile and m.cuda_graphs and m.checkpoint_fraction == 1.0 and not m.fp8_base, plan.line
    assert "~0.06 s/step (measured)" in plan.line, plan.line


def test_sd15_fp8_storage_counts_and_converts_its_convolutions():
    """SD 1.5's U-Net is two thirds convolution (589 M conv against 270 M Linear parameters at full size), so its
    family spec has fp8 storage convert the frozen convs too (``ModelSpec.fp8_convs``): the planner's fp8 bytes are
    1 byte per converted value plus a float32 scale per output channel, re-counted here from the modules, and
    ``swap.place_denoiser`` converts exactly the Conv2d / Linear layers the planner counted."""
    import torch
    from torch import nn

    from lorakit.train import fp8

    spec = get_family("sd15").SPEC
    assert spec.fp8_convs and not get_family("sdxl").SPEC.fp8_convs
    with torch.device("meta"):
        unet, _ = sd15_planning.planning_model(config({"none": Path("unused.safetensors")}, "sd15"))
    unet.requires_grad_(False).to(torch.bfloat16)
    convs = [m for p, m in unet.named_modules() if type(m) is nn.Conv2d and not fp8.keep_full_precision(p)]
    linears = [m for p, m in unet.named_modules() if type(m) is nn.Linear and not fp8.keep_full_precision(p)]
    conv_params = sum(m.weight.numel() for m in convs)
    assert conv_params > 2 * sum(m.weight.numel() for m in linears)  # why the switch exists

    def saving(mods):  # bf16 → fp8: one byte per value, minus one float32 scale per output row / channel
        return sum(m.weight.numel() - 4 * m.weight.shape[0] for m in mods)

    whole = budget.Sizes.of(unet, [], [], spec=spec).outside
    linear_only = budget.Sizes.of(unet, [], []).outside
    assert whole[0] == linear_only[0]
    assert whole[0] - whole[1] == saving(convs + linears)
    assert linear_only[0] - linear_only[1] == saving(linears)

    swap.place_denoiser(unet, [], torch.device("meta"), fp8_base=True, fp8_convs=spec.fp8_convs, log=lambda _: None)
    assert all(type(m) is fp8.Fp8Conv2d for m in convs) and all(type(m) is fp8.Fp8Linear for m in linears)
    assert all(m.weight.dtype == fp8.FP8 for m in convs)
