"""Issue 28: the automatic plan (cards, s/step model, autoplan.choose), `lorakit plan --card`, the caching batch, the
compile cache folder and the compile fallback.

The planner tests use the byte counts of the full-size FLUX.1-dev transformer and SDXL U-Net (rank 16 / 32 LoRA) as
`lorakit plan` takes them from the meta-device models (tests/unit/data/planner_sizes.json; the slow test at the end
checks them against the models), so each plan is a pure function of a config, those sizes and a CardFacts."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from lorakit.config.load import load_config
from lorakit.errors import ConfigError
from lorakit.models.registry import get_family
from lorakit.train import autoplan, budget, cards, speed, swap

DATA = json.loads((Path(__file__).parent / "data" / "planner_sizes.json").read_text())
GIB = 2**30


def sizes_of(family: str) -> budget.Sizes:
    d = DATA[family]
    return budget.Sizes(tuple(d["outside"]), [tuple(b) for b in d["blocks"]], d["lora_params"], d["host_linears"])


def config(family: str, **memory):
    data = {"model": {"family": family, "checkpoint": "/nonexistent/model.safetensors"}, "data": {"dir": "/tmp"},
            "network": {"rank": DATA[family]["rank"]}, "training": {"mixed_precision": "bf16"}}
    if memory:
        data["memory"] = memory
    return load_config(None, data=data)


def plan(family: str, card: cards.CardFacts, **memory):
    lines: list[str] = []
    cfg = config(family, **memory)
    chosen = autoplan.choose(cfg, get_family(family).SPEC, nn.Module(), [], [], swap.LOOKAHEAD, card,
                             log=lines.append, sizes=sizes_of(family))
    return chosen, lines


def custom(free_gib: float, *, fp8: bool, link: float = 25.0, like: str = "h100", ram_gib: float = 128):
    """A card with ``like``'s throughput and the given free memory, float8 support and host link."""
    base = cards.card(like)
    return dataclasses.replace(base, name=f"test card {free_gib:g} GiB", free_bytes=int(free_gib * GIB),
                               total_bytes=int((free_gib + 1) * GIB), fp8=fp8, host_link_gbs=link,
                               capability=(9, 0) if fp8 else (8, 6), host_ram_bytes=int(ram_gib * GIB), key="")


def knobs(p: budget.Plan) -> dict:
    m = p.applied.memory
    return {"compile": m.compile, "cuda_graphs": m.cuda_graphs, "gradient_checkpointing": m.gradient_checkpointing,
            "fp8_base": m.fp8_base, "fp8_compute": bool(m.fp8_compute), "blocks_to_swap": m.blocks_to_swap,
            "modulation_on_cpu": bool(m.modulation_on_cpu), "activation_budget": m.activation_budget}


# per card tier, what benchmarks/RESULTS.md measured fastest within that memory (see each comment)
TIERS = [
    # H100, 78 GiB: everything fits; CUDA graphs (SDXL 0.139 against 0.509 s without, issue 28 / run 4), and every
    # block checkpointed: under compile + CUDA graphs that ran 0.114 s against 0.127 s with none (RESULTS.md round 14)
    ("sdxl", cards.card("h100"), {"compile": True, "cuda_graphs": True, "gradient_checkpointing": True,
                                  "fp8_base": False, "blocks_to_swap": 0}),
    ("flux1", cards.card("h100"), {"compile": True, "cuda_graphs": True, "gradient_checkpointing": False,
                                   "fp8_base": False, "blocks_to_swap": 0, "modulation_on_cpu": False}),
    # 24 GB with float8 matmuls: fp8 compute with activation_budget 0.25 (0.47 s at 20.6 GiB; 0.35 needs 24.1 GiB)
    ("flux1", cards.card("rtx4090"), {"compile": True, "cuda_graphs": False, "fp8_base": True, "fp8_compute": True,
                                      "activation_budget": 0.25, "blocks_to_swap": 0}),
    # 32 GB with float8 matmuls: fp8 compute with activation_budget 0.35, the fastest FLUX.1-dev row measured
    # (0.423 s at 24.1 GiB, RESULTS.md round 11), ahead of bf16 with 96 % of the blocks checkpointed
    ("flux1", cards.card("rtx5090"), {"compile": True, "fp8_base": True, "fp8_compute": True,
                                      "activation_budget": 0.35, "blocks_to_swap": 0}),
    # 24 GB without float8: no fp8 compute, nothing swapped (fp8 storage or bf16 with the modulations on the host
    # both fit; both measured 0.607 s on the H200)
    ("flux1", cards.card("rtx3090"), {"compile": True, "fp8_compute": False, "blocks_to_swap": 0}),
    # 12 GB: fp8 storage + swapped blocks (RESULTS.md round 4, vram_gb = 12), hence no CUDA graphs
    ("flux1", cards.card("rtx3060-12g"), {"compile": True, "cuda_graphs": False, "fp8_base": True,
                                          "fp8_compute": False}),
    # SDXL on 12 GB: bf16 with graphs, part of the blocks checkpointed (no checkpointing needs ~13.6 GiB)
    ("sdxl", cards.card("rtx3060-12g"), {"compile": True, "cuda_graphs": True, "gradient_checkpointing": True,
                                         "fp8_base": False}),
    # SDXL on an 8 GB float8 card: fp8 compute with graphs (RESULTS.md: vram_gb = 8, 0.235 s at 6.1 GiB)
    ("sdxl", custom(7.2, fp8=True), {"compile": True, "cuda_graphs": True, "fp8_base": True, "fp8_compute": True}),
]


@pytest.mark.parametrize("family,card,expected", TIERS, ids=[f"{f}-{c.name}" for f, c, _ in TIERS])
def test_the_plan_per_card_tier_is_the_fastest_measured_setting_that_fits(family, card, expected):
    chosen, lines = plan(family, card)
    got = knobs(chosen)
    assert {k: got[k] for k in expected} == expected, lines
    assert chosen.estimate_gib <= card.free_gib  # fits the tier
    assert sum(chosen.parts.values()) + budget.RESERVE_GIB == pytest.approx(chosen.estimate_gib)
    if family == "flux1" and got["blocks_to_swap"]:
        assert chosen.estimate_gib > 0.9 * card.free_gib  # the fewest swapped blocks that fit, not more


def test_one_line_says_what_was_chosen_on_which_card():
    chosen, lines = plan("flux1", cards.card("rtx4090"))
    assert len(lines) == 1 and lines[0] == chosen.line and chosen.line in chosen.notes
    line = lines[0]
    assert line.startswith("plan for NVIDIA GeForce RTX 4090")
    assert "activation_budget = 0.25" in line and "fp8 compute" in line and f"{chosen.estimate_gib:.1f} of 22.5" in line
    assert f"~{chosen.step.seconds:.2f} s/step (extrapolated)" in line and "next best:" in line


@pytest.mark.parametrize("keys", [
    {"cuda_graphs": False},
    {"compile": False},
    {"fp8_base": True, "cuda_graphs": False},
    {"gradient_checkpointing": True, "checkpoint_fraction": 1.0},
    {"blocks_to_swap": 10},
    {"fp8_compute": False},
])
def test_keys_the_user_set_are_never_overridden(keys):
    chosen, lines = plan("flux1", cards.card("rtx4090"), **keys)
    got = chosen.applied.memory
    for k, v in keys.items():
        assert getattr(got, k) == v or (k == "fp8_compute" and not got.fp8_compute)
    assert "kept as you set: " + ", ".join(f"memory.{k}" for k in keys if k != "checkpoint_fraction") in lines[0] \
        or all(f"memory.{k}" in lines[0] for k in keys)


def test_a_user_budget_is_the_room_and_nothing_fitting_it_is_an_error_naming_it():
    chosen, _ = plan("sdxl", cards.card("h100"), vram_gb=12)
    assert chosen.estimate_gib <= 12 and chosen.applied.memory.vram_gb == 12
    with pytest.raises(ConfigError, match="vram_gb = 2"):
        plan("flux1", cards.card("h100"), vram_gb=2, blocks_to_swap=0)


def test_a_resumed_run_plans_with_the_budget_it_started_with(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"settings": {}, "budget_gib": 7.5}))
    room = autoplan.recorded_room(tmp_path)
    assert room == 7.5 and autoplan.recorded_room(tmp_path / "none") is None
    cfg = config("sdxl")
    chosen = autoplan.choose(cfg, get_family("sdxl").SPEC, nn.Module(), [], [], swap.LOOKAHEAD, cards.card("h100"),
                             log=lambda s: None, sizes=sizes_of("sdxl"), room=room)
    fresh, _ = plan("sdxl", cards.card("h100"))
    assert chosen.applied.memory.vram_gb == 7.5 and chosen.estimate_gib <= 7.5 < fresh.estimate_gib


def test_nothing_fitting_the_free_memory_runs_as_written_with_one_line():
    chosen, lines = plan("flux1", custom(3.0, fp8=False))
    assert chosen is None and len(lines) == 1 and "the [memory] settings run as written" in lines[0]


def test_a_family_without_measured_rows_is_not_planned():
    assert not cards.has_rows("tinydit") and cards.has_rows("flux1") and cards.has_rows("sdxl")


def test_the_host_link_decides_between_streaming_and_keeping_weights_on_the_card():
    # 30 GiB, no float8 (bf16 weights): over a 55 GB/s link the 6 GiB of modulation weights streamed each step hide
    # behind the forward (RESULTS.md: modulation_on_cpu + graphs + activation_budget 0.12-0.15, 0.44-0.46 s); over a
    # PCIe-4 x8 link (12.5 GB/s) they take 6.46e9 / 12.5e9 / 0.35 = 1.48 s, so the card keeps its weights instead
    fast, _ = plan("flux1", custom(30, fp8=False, link=55))
    slow, _ = plan("flux1", custom(30, fp8=False, link=12.5))
    # (0.12: 0.15 fit 30 GiB before the planner kept budget.MARGIN of the activations and graph pool free)
    assert knobs(fast)["modulation_on_cpu"] and knobs(fast)["activation_budget"] == 0.12
    assert not knobs(slow)["modulation_on_cpu"] and slow.step.seconds < 6.457e9 / 12.5e9 / cards.FORWARD_SHARE
    # too little host RAM to pin them: not planned either
    small, _ = plan("flux1", custom(30, fp8=False, link=55, ram_gib=8))
    assert not knobs(small)["modulation_on_cpu"]


def test_step_seconds_scales_a_measured_row_by_throughput_and_bandwidth():
    row = {"compile": True, "cuda_graphs": True, "fp8_base": False, "fp8_compute": False, "checkpoint_fraction": 1.0,
           "activation_budget": None, "modulation_on_cpu": False, "blocks_to_swap": 0}
    h100, r4090 = cards.card("h100"), cards.card("rtx4090")
    same = cards.step_seconds("sdxl", row, h100)
    assert same.seconds == pytest.approx(0.114) and same.extrapolated == ()  # the measured row itself
    other = cards.step_seconds("sdxl", row, r4090)
    ratio = 0.8 * 989 / 165 + 0.2 * 3350 / 1008
    assert other.seconds == pytest.approx(0.114 * ratio) and other.extrapolated
    # between two measured swap depths: linear
    swap24 = cards.step_seconds("flux1", {**row, "cuda_graphs": False, "fp8_base": True, "blocks_to_swap": 24},
                                cards.card("h200"))
    swap34 = cards.step_seconds("flux1", {**row, "cuda_graphs": False, "fp8_base": True, "blocks_to_swap": 34},
                                cards.card("h200"))
    assert swap24.seconds == pytest.approx(0.65) and swap34.seconds == pytest.approx(0.65 + 10 / 21 * 0.06)
    assert cards.step_seconds("tinydit", row, h100) is None


def test_unknown_card_name_lists_the_table():
    with pytest.raises(ConfigError, match="rtx4090"):
        cards.card("rtx9999")


def test_plan_caching_batch_from_free_memory():
    per = autoplan.ENCODE_GIB_PER_IMAGE
    big = autoplan.plan_caching(40 * GIB, 1024 * 1024)
    assert big.latent_batch == autoplan.LATENT_BATCH
    mid = autoplan.plan_caching(int((budget.RESERVE_GIB + 2.5 * per) * GIB), 1024 * 1024)
    assert mid.latent_batch == 2
    small = autoplan.plan_caching(2 * GIB, 2048 * 2048)
    assert small.latent_batch == 1 and "even one may not fit" in small.line


# ---------------------------------------------------------------------------------------------- lorakit plan


def test_lorakit_plan_for_two_cards(capsys, monkeypatch):
    from lorakit.train import planview

    monkeypatch.setattr(planview, "meta_model", lambda cfg: (get_family(cfg.model.family).SPEC, nn.Module(), [],
                                                            []))
    real_choose = autoplan.choose
    monkeypatch.setattr(autoplan, "choose", lambda *a, **k: real_choose(*a, **{**k, "sizes": sizes_of("flux1")}))
    toml = Path(os.environ.get("TMPDIR", "/tmp")) / "lorakit-plan-test.toml"
    toml.write_text('preset = "flux1/character"\n[model]\ncheckpoint = "/nonexistent/flux1-dev.safetensors"\n'
                    '[data]\ndir = "/tmp"\n[memory]\ncuda_graphs = false\n')
    out = {}
    for name in ("rtx4090", "rtx3060-12g"):
        assert planview.main(str(toml), [], name) == 0
        out[name] = capsys.readouterr().out
    a, b = out["rtx4090"], out["rtx3060-12g"]
    assert a.splitlines()[0].startswith(f"lorakit plan: {toml} on NVIDIA GeForce RTX 4090, 22.5 of 23.6 GiB free")
    rows = {line.split()[0]: line.split()[1:] for line in a.splitlines() if line.startswith("  memory.")}
    assert rows["memory.cuda_graphs"] == ["false", "you"]
    assert rows["memory.fp8_compute"] == ["true", "planner"] and rows["memory.activation_budget"] == ["0.25", "planner"]
    assert rows["memory.compile"] == ["true", "planner"]
    rows_b = {line.split()[0]: line.split()[1:] for line in b.splitlines() if line.startswith("  memory.")}
    assert rows_b["memory.fp8_base"] == ["true", "planner"] and int(rows_b["memory.blocks_to_swap"][0]) > 0
    assert rows_b["memory.fp8_compute"][0] in ("false", "none")  # an RTX 3060 has no float8 matmuls
    for text in (a, b):
        assert "estimated peak:" in text and "estimated step: ~" in text and "extrapolated" in text


def test_lorakit_plan_without_a_gpu_names_the_card_list(monkeypatch, tmp_path):
    from lorakit.train import planview

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nfamily = "sdxl"\ncheckpoint = "/x.safetensors"\n[data]\ndir = "/tmp"\n')
    with pytest.raises(ConfigError, match="--card.*rtx3060-12g"):
        planview.main(str(toml), [], None)


# ---------------------------------------------------------------------------------------------- compile


def test_compile_cache_under_xdg_and_a_set_one_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(speed.CACHE_ENV, raising=False)
    where = speed.configure_compile_cache(log=lambda s: None)
    assert where == tmp_path / "xdg" / "lorakit" / "inductor" and where.is_dir()
    assert os.environ[speed.CACHE_ENV] == str(where)
    monkeypatch.setenv(speed.CACHE_ENV, str(tmp_path / "mine"))
    assert speed.configure_compile_cache(log=lambda s: None) == tmp_path / "mine"
    # inductor's own /tmp default counts as unset
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv(speed.CACHE_ENV, default_cache_dir())
    assert speed.configure_compile_cache(log=lambda s: None) == where
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert speed.compile_cache_dir() == tmp_path / "home" / ".cache" / "lorakit" / "inductor"


def test_the_test_suite_and_the_toy_world_keep_their_own_compile_cache():
    assert "lorakit-test-inductor" in os.environ[speed.CACHE_ENV]  # tests/conftest.py
    import inspect

    from lorakit.toy import demo

    for fn in (demo.run_demo, demo.run_eval):
        assert 'os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(out) / "inductor-cache"))' in \
            inspect.getsource(fn)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x).relu()


class Net(nn.Module):
    _repeated_blocks = ["Block"]

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_a_compile_that_raises_falls_back_to_eager_in_one_line(monkeypatch):
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 4)
    want = net(x)

    def broken(self, *a, **k):
        raise RuntimeError("no working C compiler\nsecond line")

    monkeypatch.setattr(nn.Module, "compile", broken)
    lines: list[str] = []
    assert speed.compile_regions(net, log=lines.append) == 0
    assert lines == ["compile: failed (RuntimeError: no working C compiler); training runs eagerly "
                     "(memory.compile = false skips it)"]
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in net.blocks)
    assert torch.equal(net(x), want)
    lines.clear()
    assert speed.compile_whole(net, log=lines.append) == 0 and len(lines) == 1


@pytest.mark.slow
def test_recorded_sizes_are_those_of_the_meta_models():
    """The sizes the tests above plan with, against the full-size models lorakit plan builds (slow: ~30 s)."""
    from lorakit.train import planview

    for family in ("flux1", "sdxl"):
        spec, model, blocks, trainable = planview.meta_model(config(family))
        got = budget.Sizes.of(model, blocks, trainable, spec.host_linears)
        assert got == sizes_of(family)


@pytest.mark.slow  # a whole tiny run (~20 s of CPU); the fast variant: test_one_line_says_what_was_chosen_on_which_card
def test_lorakit_train_plans_once_and_records_the_card(tmp_path, capsys, monkeypatch):
    """The train path with the automatic plan on (CUDA faked: a card without Triton support, so the plan is eager and
    runs on the CPU): one plan line, the caching line, plan.json with the card and the estimate."""
    import re

    from lorakit.cli import main
    from lorakit.train import memory
    from tests.integration.test_train_e2e import tiny_model, write_run_toml

    card = dataclasses.replace(custom(20, fp8=False), capability=(6, 1), name="Old Card")
    monkeypatch.setattr(autoplan, "wanted", lambda cfg, device: bool(cfg.memory.auto))
    monkeypatch.setattr(cards, "local_card", lambda device: card)
    checks = memory.check_supported
    monkeypatch.setattr(memory, "check_supported", lambda cfg, device, planned=False: checks(
        dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, vram_gb=None)), device))
    run_toml = write_run_toml(tmp_path, "sdxl", tiny_model("sdxl", tmp_path / "model"), name="auto")
    assert main(["train", str(run_toml), "sample.prompts=[]", "training.max_steps=2"]) == 0
    text = capsys.readouterr().out
    assert len(re.findall(r"^plan for Old Card", text, re.M)) == 1, text
    assert re.search(r"^caching: \d+ images? per VAE call", text, re.M), text
    plan = json.loads((tmp_path / "out" / "auto" / "plan.json").read_text())
    assert plan["card"].startswith("Old Card") and plan["s_step_estimate"] > 0
    assert plan["settings"]["memory.compile"] is False and plan["settings"]["memory.gradient_checkpointing"] is False
    assert plan["chosen_by"]["memory.gradient_checkpointing"] == "plan"


def test_local_card_reads_the_driver_the_table_and_a_per_process_cap(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * GIB, 24 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0, raising=False)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * GIB)
    c = cards.local_card("cuda")
    assert (c.free_bytes, c.total_bytes, c.capability, c.key) == (20 * GIB, 24 * GIB, (8, 9), "rtx4090")
    assert c.fp8 and c.host_link_gbs == 25 and c.tflops_bf16 == 165 and not c.notes
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 0.5, raising=False)
    assert cards.local_card("cuda").free_bytes == 12 * GIB - 2 * GIB  # half the card, less what torch holds
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    odd = cards.local_card("cuda")
    assert odd.key == "" and odd.host_link_gbs == cards.DEFAULT_LINK_GBS and "not in lorakit's card table" in odd.notes[0]


def test_local_card_gives_torch_an_indexed_device(monkeypatch):
    """torch.cuda.get_per_process_memory_fraction refuses a bare "cuda" (found on an H100: the automatic plan
    stopped every shipped preset there); local_card asks about the current card by its index."""
    seen = []

    def fraction(device):
        if not isinstance(device, int) and getattr(device, "index", None) is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        seen.append(device)
        return 0.5

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * GIB, 24 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", fraction, raising=False)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    assert cards.local_card("cuda").free_bytes == 12 * GIB
    assert seen == [torch.device("cuda", 3)]


def test_full_checkpointing_is_planned_on_its_own_and_a_hand_set_choice_is_kept():
    """Round 14 (H100): under compile + CUDA graphs SDXL ran 0.114 s with every block checkpointed, 0.118 s with
    1 % and 0.127 s with none; the plan compares full checkpointing by the s/step model instead of taking the least
    checkpointing that fits, and keeps a hand-set memory.gradient_checkpointing."""
    chosen, lines = plan("sdxl", cards.card("h100"))
    m = chosen.applied.memory
    assert m.gradient_checkpointing and m.checkpoint_fraction == 1.0
    assert "every block checkpointed" in lines[0] and "~0.11 s/step (measured)" in lines[0]
    # the runner-up is slower; fp8 compute under graphs (one measured row, 0.165 s) is extrapolated along checkpointing
    # by the slope measured for bf16 under graphs (0.114 s all, 0.127 none), not by the 20 % prior
    runner = re.search(r"next best: ([^;]*?) ~([0-9.]+) s/step", lines[0])
    assert runner and float(runner.group(2)) > 0.114 and "fp8 compute" in runner.group(1), lines[0]
    kept, lines = plan("sdxl", cards.card("h100"), gradient_checkpointing=False)
    assert not kept.applied.memory.gradient_checkpointing and "~0.13 s/step (measured)" in lines[0]
    assert "kept as you set: memory.gradient_checkpointing" in lines[0]
    # FLUX.1-dev (rows measured faster without recomputation): full checkpointing is considered but not chosen
    flux, lines = plan("flux1", cards.card("h100"))
    assert not flux.applied.memory.gradient_checkpointing


def test_a_kind_with_one_measured_point_follows_the_slope_measured_for_another_kind():
    """Along checkpoint_fraction, a setting whose kind has one measured row is extrapolated by the slope the nearest
    kind with two measured points shows (its widest pair), not by the 20 % prior: there partial checkpointing measured
    slower than full, so the one-row kind must not plan less checkpointing as faster."""
    def row(s, fraction, **flags):
        return {"s_step": s, "card": "h100", "compile": True, "checkpoint_fraction": fraction, "source": "t", **flags}

    rows = [row(0.20, 1.0), row(0.23, 0.5), row(0.25, 0.0), row(0.10, 1.0, cuda_graphs=True)]
    graphs_none = {"compile": True, "cuda_graphs": True, "checkpoint_fraction": 0.0}
    share, pair = cards.measured_slope(rows, graphs_none, lambda r: float(r.get("checkpoint_fraction", 1.0)))
    assert share == pytest.approx((0.20 - 0.25) / 0.20) and [r["checkpoint_fraction"] for r in pair] == [0.0, 1.0]
    step = cards.step_seconds("sdxl", graphs_none, cards.card("h100"), rows=rows)
    assert step.seconds == pytest.approx(0.10 * (1 + 0.25)), step.describe()
    assert any("as measured" in why for why in step.extrapolated)
    # without a kind of two points the prior stays: 20 % of a step per share recomputed
    prior = cards.step_seconds("sdxl", graphs_none, cards.card("h100"), rows=rows[:1] + rows[3:])
    assert prior.seconds == pytest.approx(0.10 * (1 - cards.RECOMPUTE))
