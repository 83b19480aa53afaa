"""`lorakit plan` with LoHa / DoRA (planwalk): the trainable parameters the planner counts are those peft and lorakit
make for the same targets (LoHa: two low-rank pairs; DoRA: a LoRA pair plus one magnitude per input column), so the
plan counts their optimizer state as the run does."""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from lorakit.lora import variants
from lorakit.train import planview


def tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(24, 40), nn.Conv2d(8, 12, 3), nn.Linear(40, 16))


TARGETS = {"0": 4, "1": 4, "2": 4}


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "base_layer" not in n)


def test_loha_counts_two_pairs_as_peft_makes_them():
    model = tiny().requires_grad_(False)
    cfg = variants.peft_lycoris_config("loha", r=4, alpha=4, target_modules=["0", "1", "2"], rank_pattern={},
                                       alpha_pattern={}, factor=-1)
    inject_adapter_in_model(cfg, model)
    assert planview.lora_parameters(tiny(), TARGETS, "loha") == trainable(model)
    assert planview.lora_parameters(tiny(), TARGETS, "loha") == 2 * planview.lora_parameters(tiny(), TARGETS)


def test_dora_counts_its_magnitude_per_input_column():
    model = tiny().requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["0", "1", "2"]), model)
    for name in TARGETS:
        variants.add_dora(model.get_submodule(name))
    magnitudes = sum(getattr(model.get_submodule(n), variants.DORA_ATTR).numel() for n in TARGETS)
    assert magnitudes == 24 + 8 + 40
    assert planview.lora_parameters(tiny(), TARGETS, "dora") == trainable(model)  # the magnitudes included
    assert planview.lora_parameters(tiny(), TARGETS, "dora") == planview.lora_parameters(tiny(), TARGETS) + 72


def test_plan_says_why_a_variant_runs_eager(tmp_path):
    """The planner's note that LoHa / DoRA / LoKr layers run eager without fp8 was logged by `lorakit train` but left
    out of `lorakit plan`, whose table then showed memory.compile false with no reason."""
    from lorakit.config.load import load_config
    from lorakit.train import cards

    cfg = load_config(None, data={"model": {"family": "sd15", "checkpoint": str(tmp_path / "m.safetensors")},
                                  "data": {"dir": str(tmp_path)}, "network": {"rank": 8, "type": "loha"},
                                  "training": {"mixed_precision": "bf16"}})
    text, plan = planview.planned(cfg, cards.card("rtx4090"), "run.toml")
    assert '  plan: network.type = "loha" runs eager without fp8 weights' in text, text
    assert not plan.applied.memory.compile and not plan.applied.memory.fp8_base


def test_loha_and_lokr_plans_checkpoint_every_block(tmp_path):
    """peft's LoHa / LoKr layers build their full-size delta weight in fp32 and keep it for the backward (4 bytes per
    base weight of every block left out of checkpointing, which the activation rates do not count): the plan had
    SDXL-like partial checkpointing (0.885) for them; now every block is checkpointed, and the plan says why."""
    from lorakit.config.load import load_config
    from lorakit.train import cards

    for algo in ("loha", "lokr"):
        cfg = load_config(None, data={"model": {"family": "sd15", "checkpoint": str(tmp_path / "m.safetensors")},
                                      "data": {"dir": str(tmp_path)}, "network": {"rank": 8, "type": algo},
                                      "training": {"mixed_precision": "bf16"}})
        text, plan = planview.planned(cfg, cards.card("rtx4090"), "run.toml")
        m = plan.applied.memory
        assert m.gradient_checkpointing and m.checkpoint_fraction == 1.0 and m.activation_budget is None, text
        assert f'plan: network.type = "{algo}" keeps each layer\'s full-size delta weight (fp32)' in text
    cfg = load_config(None, data={"model": {"family": "sd15", "checkpoint": str(tmp_path / "m.safetensors")},
                                  "data": {"dir": str(tmp_path)}, "network": {"rank": 8, "type": "loha"},
                                  "memory": {"gradient_checkpointing": False}, "training": {"mixed_precision": "bf16"}})
    assert not planview.planned(cfg, cards.card("rtx4090"), "run.toml")[1].applied.memory.gradient_checkpointing


def test_a_variant_is_never_planned_with_fp8_storage(tmp_path):
    """LoHa on a 3.3-3.6 GiB budget was planned with fp8 storage, which the run refuses for its layers ("memory.fp8_base:
    not built for network.type = loha"); it is planned in bf16 weights (or refused as not fitting)."""
    from lorakit.config.load import load_config
    from lorakit.train import cards

    cfg = load_config(None, data={"model": {"family": "sd15", "checkpoint": str(tmp_path / "m.safetensors")},
                                  "data": {"dir": str(tmp_path)}, "network": {"rank": 8, "type": "loha"},
                                  "memory": {"vram_gb": 3.6}, "training": {"mixed_precision": "bf16"}})
    text, plan = planview.planned(cfg, cards.card("rtx3060-12g"), "run.toml")
    assert not plan.applied.memory.fp8_base and plan.estimate_gib <= 3.6, text
    import dataclasses

    import pytest

    from lorakit.errors import ConfigError

    tight = dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, vram_gb=3.3))  # fp8 storage was planned
    with pytest.raises(ConfigError, match=r"leanest setting \(checkpointing, bf16 weights") as exc:
        planview.planned(tight, cards.card("rtx3060-12g"), "run.toml")
    # the keys the plan fixed itself (bf16 weights, every block checkpointed) are not "you fixed …"
    assert "you fixed" not in str(exc.value), exc.value
