"""`lorakit plan` as a user meets it (planwalk): what the plan's table says about each setting, the keys the user
set, and what the run would do. SD 1.5's full-size U-Net on the meta device (well under a second)."""

from __future__ import annotations

from lorakit.config.load import load_config
from lorakit.train import cards, planview


def sd15(tmp_path, family: str = "sd15", **sections):
    data = {"model": {"family": family, "checkpoint": str(tmp_path / "m.safetensors")}, "data": {"dir": str(tmp_path)},
            "network": {"rank": 8}, "training": {"mixed_precision": "bf16"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_config(None, data=data)


def row(text: str, key: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(key + " "))


def test_a_batch_split_to_fit_is_shown_as_the_planners_not_yours(tmp_path):
    """training.batch_size = 16 on a 4 GiB budget is split into a smaller batch with accumulation; the table said
    "you" beside the planner's batch size."""
    cfg = sd15(tmp_path, training={"batch_size": 16}, memory={"vram_gb": 3.5})
    text, plan = planview.planned(cfg, cards.card("rtx3060-12g"), "run.toml")
    b, acc = plan.applied.training.batch_size, plan.applied.training.gradient_accumulation
    assert b < 16 and b * acc == 16, text
    assert row(text, "training.batch_size").split()[1:] == [str(b), "planner", "(you", "set", "16;", "the", "same",
                                                            "effective", "batch)"], text
    assert row(text, "training.gradient_accumulation").split()[1:] == [str(acc), "planner"], text


def test_cuda_graphs_with_a_swap_you_set_is_the_runs_refusal_not_a_plan_that_runs_as_written(tmp_path):
    """memory.cuda_graphs = true with memory.blocks_to_swap = 4: `lorakit plan` said "no setting lorakit plans keeps
    memory.blocks_to_swap = 4 together; remove one of them ... the [memory] settings run as written", naming one key;
    the run then stopped where block swap is installed. Both now refuse it up front, naming both keys."""
    import pytest

    from lorakit.errors import ConfigError

    cfg = sd15(tmp_path, "zimage", memory={"cuda_graphs": True, "blocks_to_swap": 4})
    with pytest.raises(ConfigError) as exc:
        planview.planned(cfg, cards.card("rtx4090"), "run.toml")
    assert str(exc.value) == ("memory.cuda_graphs: CUDA graphs replay fixed weight addresses, which block swap changes "
                              "every step; set memory.cuda_graphs = false or memory.blocks_to_swap = 0")
    with pytest.raises(ConfigError) as exc:
        planview.planned(sd15(tmp_path, "zimage", memory={"gradient_checkpointing": False, "blocks_to_swap": 4}),
                         cards.card("rtx4090"), "run.toml")
    assert str(exc.value).startswith("memory.blocks_to_swap: needs memory.gradient_checkpointing = true")


def test_text_encoder_training_says_the_estimate_leaves_the_text_encoders_out(tmp_path):
    """network.train_text_encoder = true keeps CLIP-L on the GPU through training; the plan's estimate (the denoiser's
    parts) was the same as without it, and nothing said so."""
    text, plan = planview.planned(sd15(tmp_path, network={"train_text_encoder": True}), cards.card("rtx3060-12g"),
                                  "run.toml")
    te = dict(planview.meta_model(sd15(tmp_path))[0].component_gib)["text encoders"]
    assert f"  warning: network.train_text_encoder: the text encoders (~{te:.2f} GiB as loaded) stay on the GPU" in text
    assert "warning: network.train_text_encoder" not in planview.planned(sd15(tmp_path), cards.card("rtx3060-12g"),
                                                                         "run.toml")[0]


def test_text_encoder_training_counts_the_encoders_trained_not_t5():
    """FLUX.1 trains CLIP-L only (T5-XXL's 8.9 GiB is not kept for training): the warning names CLIP-L's size."""
    from torch import nn

    from lorakit.models.registry import get_family
    from lorakit.train import autoplan, swap

    from .test_autoplan import sizes_of

    cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "/nonexistent/model.safetensors"},
                                  "data": {"dir": "/tmp"}, "network": {"rank": 16, "train_text_encoder": True},
                                  "training": {"mixed_precision": "bf16"}})
    lines: list[str] = []
    autoplan.choose(cfg, get_family("flux1").SPEC, nn.Module(), [], [], swap.LOOKAHEAD, cards.card("h100"),
                    log=lines.append, sizes=sizes_of("flux1"))
    assert any(line.startswith("warning: network.train_text_encoder: the text encoders (~0.23 GiB") for line in lines)


def test_the_leanest_setting_named_is_the_one_tried_under_the_keys_you_fixed():
    """With memory.fp8_base = false set, "even the leanest setting (checkpointing, fp8 storage, …)" named a setting
    the plan never tried; the refusal names what it tried (bf16 weights)."""
    import pytest
    from torch import nn

    from lorakit.errors import ConfigError
    from lorakit.models.registry import get_family
    from lorakit.train import budget, swap

    from .test_autoplan import sizes_of

    def refusal(**memory) -> str:
        cfg = load_config(None, data={"model": {"family": "flux1", "checkpoint": "/nonexistent/model.safetensors"},
                                      "data": {"dir": "/tmp"}, "network": {"rank": 16},
                                      "training": {"mixed_precision": "bf16"}, "memory": {"vram_gb": 12, **memory}})
        with pytest.raises(ConfigError) as exc:
            budget.apply_budget(cfg, get_family("flux1").SPEC, nn.Module(), [], [], swap.LOOKAHEAD, log=lambda _: None,
                                sizes=sizes_of("flux1"), fp8_matmuls=False)
        return str(exc.value)

    assert "even the leanest setting (checkpointing, bf16 weights, 0 swapped blocks) needs about" in \
        refusal(fp8_base=False, blocks_to_swap=0, modulation_on_cpu=False)
    assert "even the leanest setting (checkpointing, fp8 storage, 0 swapped blocks)" in \
        refusal(blocks_to_swap=0, vram_gb=6)
    # the leanest of the settings tried, not the last: with activation_budget = 0.5 set, the last was bf16 with the
    # modulations on the host (51.1 GiB), the leanest fp8 storage
    import re

    text = refusal(activation_budget=0.5, gradient_checkpointing=False, compile=True, vram_gb=20)
    assert "even the leanest setting (activation_budget = 0.5, fp8 storage, 0 swapped blocks)" in text, text
    assert float(re.search(r"needs about ([\d.]+) GiB", text).group(1)) < 50, text


def test_a_phase_over_the_budget_is_named_with_what_to_lower(tmp_path):
    """Previews at 2048² (CFG batch of 2) need more than the card: the warning said "a phase needs ~13.7 GiB" without
    naming the phase or what to change, and rounded 22.52 to "~22.5 GiB, more than the 22.5 GiB"."""
    from lorakit.train import autoplan

    phases = autoplan.Phases(22.5, {"latent_batch": 1, "vae_tiling": False, "text_encoders": "GPU", "peak_gib": 23.1},
                             20.0, {"width": 2048, "height": 2048, "batch": 2, "vae_tiling": True, "peak_gib": 22.52})
    lines = phases.lines()
    assert lines[3:] == [
        "warning: caching needs ~23.10 GiB, more than the 22.5 GiB planned for; lower data.max_bucket_reso if it runs "
        "out of memory",
        "warning: previews need ~22.52 GiB, more than the 22.5 GiB planned for; set sample.width / sample.height below "
        "2048x2048 if it runs out of memory"]
    assert len(autoplan.Phases(22.5, dict(phases.cache, peak_gib=9.0), 20.0, dict(phases.previews, peak_gib=9.0))
               .lines()) == 3


def test_fp8_compute_you_set_on_a_card_without_float8_is_refused_as_the_run_refuses_it(tmp_path):
    """memory.fp8_compute = true with --card rtx3060-12g planned "fp8 compute ... kept as you set" where the run stops
    before loading (no float8 tensor cores); on an RTX 4090 it plans as before."""
    import pytest

    from lorakit.errors import ConfigError

    cfg = sd15(tmp_path, memory={"fp8_compute": True})
    with pytest.raises(ConfigError) as exc:
        planview.planned(cfg, cards.card("rtx3060-12g"), "run.toml")
    assert str(exc.value) == ("memory.fp8_compute: NVIDIA GeForce RTX 3060 has no float8 tensor cores (needs compute "
                              "capability 8.9+, e.g. RTX 40xx, L4, H100); set it to false and keep memory.fp8_base for "
                              "the memory saving")
    assert planview.planned(cfg, cards.card("rtx4090"), "run.toml")[1].applied.memory.fp8_compute is True


def test_memory_auto_false_shows_what_the_run_does_not_the_automatic_plan(tmp_path):
    """memory.auto = false: `lorakit plan` showed the automatic plan (compile and CUDA graphs switched on by the
    planner) that lorakit train does not apply. Without memory.vram_gb it now says nothing is planned; with it, it shows
    memory.vram_gb's plan with compile / cuda_graphs as written (train/placement.py's budget.apply_budget)."""
    text, plan = planview.planned(sd15(tmp_path, memory={"auto": False}), cards.card("rtx4090"), "run.toml")
    assert plan is None
    assert text.splitlines()[1] == ("  memory.auto = false: lorakit train runs the [memory] settings as written "
                                    "(nothing is planned); remove it, or set memory.vram_gb, for a plan")
    text, plan = planview.planned(sd15(tmp_path, memory={"auto": False, "vram_gb": 4}), cards.card("rtx4090"),
                                  "run.toml")
    m = plan.applied.memory
    assert not m.compile and not m.cuda_graphs and plan.estimate_gib <= 4, text
    assert row(text, "memory.compile").split()[1] == "false"
    assert "  log line: memory.auto = false: memory.vram_gb = 4 plans eager, " in text


def test_ema_counts_its_fp32_copy_of_the_lora(tmp_path):
    """training.ema keeps an fp32 copy of every LoRA parameter on the GPU (lorakit/train/ema.py); the plan counted
    LoRA + AdamW (16 bytes a parameter) without it."""
    import pytest

    plain = planview.planned(sd15(tmp_path), cards.card("rtx4090"), "run.toml")[1]
    ema = planview.planned(sd15(tmp_path, training={"ema": True}), cards.card("rtx4090"), "run.toml")[1]
    assert ema.parts["LoRA+optimizer"] == pytest.approx(plain.parts["LoRA+optimizer"] * (16 + 4) / 16)


def test_cuda_graphs_you_set_with_compile_false_is_the_runs_refusal(tmp_path):
    """memory.compile = false with memory.cuda_graphs = true: `lorakit plan` showed an "eager, cuda_graphs" plan; the
    run checks the planned config and stops (CUDA graphs replay the compiled blocks)."""
    import pytest

    from lorakit.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        planview.planned(sd15(tmp_path, memory={"compile": False, "cuda_graphs": True}), cards.card("rtx4090"), "run")
    assert str(exc.value) == "memory.cuda_graphs: CUDA graphs replay the compiled blocks; set memory.compile = true too"


def test_keys_you_set_that_conflict_are_the_runs_refusal_not_nothing_fits(tmp_path):
    """activation_budget with compile = false (or gradient_checkpointing = true), checkpoint_fraction < 1 with
    gradient_checkpointing = false: `lorakit plan` planned the first ("eager, activation_budget = 0.25") and said
    "nothing lorakit plans fits … the [memory] settings run as written" for the others; the run refuses all three."""
    import pytest

    from lorakit.errors import ConfigError

    for memory, message in (
            ({"compile": False, "activation_budget": 0.25}, "memory.activation_budget: the compiler chooses what to "
             "recompute; set memory.compile = true or remove it"),
            ({"gradient_checkpointing": True, "activation_budget": 0.25}, "memory.activation_budget: replaces block "
             "checkpointing; set memory.gradient_checkpointing = false, or remove it and use "
             "memory.checkpoint_fraction"),
            ({"gradient_checkpointing": False, "checkpoint_fraction": 0.5}, "memory.checkpoint_fraction: only has an "
             "effect with memory.gradient_checkpointing = true; remove it or turn checkpointing on")):
        with pytest.raises(ConfigError) as exc:
            planview.planned(sd15(tmp_path, memory=memory), cards.card("h100"), "run.toml")
        assert str(exc.value) == message, memory
    plan = planview.planned(sd15(tmp_path, memory={"activation_budget": 0.25}), cards.card("h100"), "run.toml")[1]
    assert plan.applied.memory.activation_budget == 0.25 and plan.applied.memory.compile
