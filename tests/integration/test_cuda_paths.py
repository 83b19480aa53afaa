"""`lorakit train` through its CUDA-only paths (block swap, fp8 storage and fp8 compute under compile, selective
recomputation, VRAM budgets, CUDA graphs, bitsandbytes' 8-bit AdamW) on the tiny models. Needs a CUDA GPU: skipped on
CPU-only machines (CI), run on the lent GPU with ``python3 tests/integration/test_cuda_paths.py`` (no pytest there).
The full-size speed and memory of the same paths are measured by benchmarks/bench.py."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

try:
    import pytest
except ImportError:  # the lent GPU machine runs this file as a script
    pytest = None

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lorakit.cli import main  # noqa: E402
from tests.integration.test_train_e2e import tiny_model, write_run_toml  # noqa: E402

if pytest is not None:
    pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent GPU)")


_MODELS: dict[tuple[Path, str], dict] = {}


def train(tmp: Path, family: str, name: str, memory: dict, optimizer: str = "adamw",
          overrides: tuple[str, ...] = ()) -> list[float]:
    if (tmp, family) not in _MODELS:
        _MODELS[(tmp, family)] = tiny_model(family, tmp / f"model-{family}")
    paths = _MODELS[(tmp, family)]
    toml = write_run_toml(tmp, family, paths, name=name)
    text = toml.read_text().replace('mixed_precision = "no"', 'mixed_precision = "bf16"').replace(
        'device = "cpu"', 'device = "cuda"').replace('name = "adamw"', f'name = "{optimizer}"')
    memory = {"auto": False, **memory}  # each test runs its path exactly (the automatic plan: its own tests)
    text += "\n[memory]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in memory.items()) + "\n"
    toml.write_text(text)
    assert main(["train", str(toml), *overrides]) == 0, (name, memory)
    run = tmp / "out" / name
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["export_problems"] == [], status
    assert (run / f"{name}.safetensors").stat().st_size > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and all(x == x for x in losses), losses
    return losses


def close(a: list[float], b: list[float], rel: float) -> bool:
    return all(abs(x - y) <= rel * max(abs(y), 1e-6) for x, y in zip(a, b))


def test_flux_block_swap_fp8_and_budget_train_and_export(tmp_path):
    plain = train(tmp_path, "flux1", "plain", {"gradient_checkpointing": True})
    swapped = train(tmp_path, "flux1", "swap", {"gradient_checkpointing": True, "blocks_to_swap": 2})
    assert close(swapped, plain, 1e-3), (swapped, plain)  # same maths, weights streamed in
    compiled = train(tmp_path, "flux1", "swapc", {"gradient_checkpointing": True, "blocks_to_swap": 2,
                                                  "compile": True})
    assert close(compiled, plain, 5e-2), (compiled, plain)
    fp8c = train(tmp_path, "flux1", "fp8c", {"fp8_base": True, "compile": True})
    assert close(fp8c, plain, 0.1), (fp8c, plain)
    fp8mm = train(tmp_path, "flux1", "fp8mm", {"fp8_base": True, "fp8_compute": True, "compile": True})
    assert close(fp8mm, plain, 0.1), (fp8mm, plain)  # float8 matmuls on the tensor cores
    selective = train(tmp_path, "flux1", "amb", {"gradient_checkpointing": False, "compile": True,
                                                 "activation_budget": 0.3})
    assert close(selective, plain, 5e-2), (selective, plain)  # the compiler's selective recomputation
    train(tmp_path, "flux1", "vram", {"vram_gb": 8, "compile": True})


def test_flux_modulation_on_cpu_trains_eager_and_compiled(tmp_path):
    """memory.modulation_on_cpu on CUDA: the host-computed modulations reach the compiled blocks through one device
    buffer rewritten each step (no recompilation per step), eager and compiled, and with selective recomputation."""
    plain = train(tmp_path, "flux1", "plain", {"gradient_checkpointing": True})
    eager = train(tmp_path, "flux1", "modcpu", {"gradient_checkpointing": True, "modulation_on_cpu": True})
    assert close(eager, plain, 2e-2), (eager, plain)
    compiled = train(tmp_path, "flux1", "modcpuc", {"gradient_checkpointing": True, "modulation_on_cpu": True,
                                                    "compile": True})
    assert close(compiled, plain, 5e-2), (compiled, plain)
    selective = train(tmp_path, "flux1", "modcpua", {"gradient_checkpointing": False, "modulation_on_cpu": True,
                                                     "compile": True, "activation_budget": 0.3})
    assert close(selective, plain, 5e-2), (selective, plain)


def test_flux_modulation_on_cpu_with_cuda_graphs_trains_like_the_plain_model(tmp_path):
    """memory.modulation_on_cpu + cuda_graphs: inductor replays each compiled block as graphs around the modulation
    op, which stays eager, so every step's new modulations reach the blocks (a replayed copy would train on the first
    step's timestep for ever); the losses follow the plain eager run, with attention saved under the budget."""
    plain = train(tmp_path, "flux1", "plain", {"gradient_checkpointing": True})
    graphs = train(tmp_path, "flux1", "modcpug", {"gradient_checkpointing": False, "modulation_on_cpu": True,
                                                  "compile": True, "cuda_graphs": True, "activation_budget": 0.3})
    assert close(graphs, plain, 5e-2), (graphs, plain)


def test_flux_modulation_streams_and_prefetches_on_the_gpu():
    """On CUDA every modulation Linear is applied on the device from weights copied over on a side stream; each
    backward (the hook on the last double block's LoRA) copies the first blocks' weights for the next call, which
    uses them instead of copying again. Outputs and LoRA gradients match the unchanged model over three calls."""
    import copy

    from lorakit.models.flux1.modulation import PREFETCH_BLOCKS, HostModulations
    from tests.unit.test_flux1_modulation import lora_everywhere
    from tests.unit.test_swap import flux_with_blocks

    plain, kwargs = flux_with_blocks(2, 3)
    host = copy.deepcopy(plain)
    params = {"plain": lora_everywhere(plain), "host": lora_everywhere(host)}
    mods = HostModulations.install(host, lambda _: None)
    plain.cuda()
    host.cuda()
    device = torch.device("cuda")
    first = {m.index for members in mods.groups[:PREFETCH_BLOCKS] for m in members}
    for f in (1.0, 0.5, 0.2):
        call = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        call["timestep"] = call["timestep"] * f
        results = {}
        for name, model in (("plain", plain), ("host", host)):
            if name == "host":
                mods.prepare(kwargs["timestep"] * f, kwargs["guidance"], kwargs["pooled_projections"], device)
                assert all(m.streamed for m in mods.modules) and not mods._prefetched  # prefetched ones: used
            for p in params[name]:
                p.grad = None
            out = model(**call)[0]
            out.square().mean().backward()
            results[name] = (out.detach(), *[p.grad for p in params[name]])
        assert set(mods._prefetched) == first  # copied during that backward, for the next call
        for got, want in zip(results["host"], results["plain"]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_sdxl_budget_with_cuda_graphs_trains_and_exports(tmp_path):
    plain = train(tmp_path, "sdxl", "plain", {"gradient_checkpointing": True})
    graphs = train(tmp_path, "sdxl", "graphs", {"vram_gb": 8, "compile": True, "cuda_graphs": True})
    assert close(graphs, plain, 5e-2), (graphs, plain)
    fp8mm = train(tmp_path, "sdxl", "fp8mm", {"vram_gb": 8, "fp8_compute": True, "compile": True, "cuda_graphs": True})
    assert close(fp8mm, plain, 0.1), (fp8mm, plain)  # SDXL's permuted proj_in inputs included
    # bitsandbytes' AdamW8bit (the presets' optimizer) on its CUDA kernels, alone and stepped inside backward
    eight = train(tmp_path, "sdxl", "adamw8bit", {"gradient_checkpointing": True}, optimizer="adamw8bit")
    assert close(eight, plain, 5e-2), (eight, plain)
    # (no clipping in either: clipping by the global norm needs every gradient, which fused_backward never holds)
    eight = train(tmp_path, "sdxl", "adamw8bit-noclip", {"gradient_checkpointing": True}, optimizer="adamw8bit",
                  overrides=("optimizer.max_grad_norm=0",))
    eight_fb = train(tmp_path, "sdxl", "adamw8bit-fb", {"gradient_checkpointing": True, "fused_backward": True},
                     optimizer="adamw8bit", overrides=("optimizer.max_grad_norm=0",))
    assert close(eight_fb, eight, 1e-2), (eight_fb, eight)


def test_host_copies_do_not_wait_for_the_gpu():
    """models.base.to_gpu (every host-to-device copy of a training step): queued behind a second-long kernel, copies
    of ordinary (pageable) 64 MiB tensors return while the GPU is still busy, each through its own staging buffer,
    and the values arrive intact and in the asked dtype. (The first round also fills the device allocator's cache:
    a fresh cudaMalloc may itself wait for the GPU, which a training step's steady state never does.)"""
    import time

    from lorakit.models import base

    tensors = [torch.randn(16, 1024, 1024) for _ in range(3)]
    assert not tensors[0].is_pinned()
    warm = [base.to_gpu(t, "cuda", torch.bfloat16) for t in tensors]  # staging buffers, device blocks: allocated
    torch.cuda.synchronize()
    del warm
    stream = torch.cuda.current_stream()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU time on any current card
    start = time.perf_counter()
    outs = [base.to_gpu(t, "cuda", torch.bfloat16) for t in tensors]
    host_s = time.perf_counter() - start
    busy = not stream.query()
    torch.cuda.synchronize()
    gpu_s = time.perf_counter() - start
    assert busy and host_s < 0.5 * gpu_s, (host_s, gpu_s)  # the host did not wait for the kernel
    for t, out in zip(tensors, outs):
        assert out.dtype == torch.bfloat16 and torch.equal(out.cpu(), t.to(torch.bfloat16))
    slots = base._STAGING[((16, 1024, 1024), torch.float32)]
    # three copies in flight at once need three buffers
    assert len(slots) == 3, [(buffer.data_ptr(), event.query()) for buffer, event in slots]


def test_auto_plan_on_this_card_trains_and_records_it(tmp_path):
    """Issue 28: no [memory] key set, so the run plans itself for this card (compile and CUDA graphs fit the tiny
    models anywhere); plan.json records the card, the chosen settings and the s/step estimate, and both families
    train and export."""
    for family in ("sdxl", "flux1"):
        train(tmp_path, family, f"auto-{family}", {"auto": True})
        plan = json.loads((tmp_path / "out" / f"auto-{family}" / "plan.json").read_text())
        assert plan["card"] and torch.cuda.get_device_name() in plan["card"], plan
        assert plan["settings"]["memory.compile"] is True and plan["chosen_by"]["memory.compile"] == "plan", plan
        assert plan["settings"]["memory.cuda_graphs"] is True, plan
        assert sum(n.startswith("plan for ") for n in plan["notes"]) == 1, plan["notes"]
        assert plan["s_step_estimate"] > 0, plan


if __name__ == "__main__":  # `python3 tests/integration/test_cuda_paths.py [host|flux|sdxl]`: all, or the ones named
    failed = 0
    chosen = sys.argv[1:] or ["flux", "sdxl", "host", "auto"]
    for test in (test_host_copies_do_not_wait_for_the_gpu, test_flux_modulation_streams_and_prefetches_on_the_gpu,
                 test_flux_modulation_on_cpu_trains_eager_and_compiled,
                 test_flux_modulation_on_cpu_with_cuda_graphs_trains_like_the_plain_model,
                 test_flux_block_swap_fp8_and_budget_train_and_export,
                 test_sdxl_budget_with_cuda_graphs_trains_and_exports, test_auto_plan_on_this_card_trains_and_records_it):
        if not any(test.__name__.startswith(f"test_{name}") for name in chosen):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                test(Path(tmp)) if test.__code__.co_argcount else test()
                print(f"PASS {test.__name__}", flush=True)
            except Exception as exc:  # report every test, then fail
                import traceback

                traceback.print_exc()
                print(f"FAIL {test.__name__}: {exc!r}"[:2000], flush=True)
                failed += 1
    sys.exit(1 if failed else 0)
