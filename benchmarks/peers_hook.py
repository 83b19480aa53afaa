"""Run a peer's training script unchanged, recording its step times and peak GPU memory (benchmarks/peers.py).

    python3 benchmarks/peers_hook.py SCRIPT.py [script arguments...]

Environment: ``PEER_STATS`` (JSON file written at the end), ``PEER_STEPS`` (stop the process right after that many
optimizer steps: the saving and final inference the script does afterwards are not what is compared).

What it adds around the script, nothing inside its step:
- a global ``torch.optim`` step post-hook (every optimizer, also behind accelerate's wrapper): after each update the
  host waits for the GPU (``torch.cuda.synchronize``) and notes the clock and ``max_memory_allocated``. Step time =
  the clock between two consecutive updates. The scripts read the loss with ``.item()`` every step already, so this
  wait adds no new stall between steps.
- ``accelerate.Accelerator.prepare`` wrapped: after each call the peak-memory counter is reset (the peak so far is
  kept as ``peak_before_prepare_gib``). The training loop starts after the last ``prepare``; text encoders and VAE
  have done their caching and left the GPU by then in every script compared (they are counted in the process peak).
- where ``torchvision`` or ``cv2`` cannot be imported (the lent GPU machine has neither wheel), an ``import`` of them
  gets the minimal stand-ins in ``benchmarks/peers_shim``; they only serve data loading (image resize / crop / flip /
  to-tensor / normalise), outside the timed step. Availability probes (``importlib.util.find_spec``, which
  transformers and diffusers use to pick optional code paths) still see the package as absent until the script
  itself imports it.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import runpy
import sys
import time
from pathlib import Path

SHIM = Path(__file__).resolve().parent / "peers_shim"
STATS: dict = {"step_end_s": [], "step_peak_gib": [], "prepare_calls": 0, "peak_before_prepare_gib": 0.0,
               "shims": [], "t_start": time.time()}
_written = False


def _cuda():
    import torch

    return torch.cuda.is_available()


def _gib(x: int) -> float:
    return x / 2**30


def write_stats() -> None:
    global _written
    if _written or not os.environ.get("PEER_STATS"):
        return
    _written = True
    import torch

    if _cuda():
        STATS["final_peak_gib"] = _gib(torch.cuda.max_memory_allocated())
        STATS["final_reserved_gib"] = _gib(torch.cuda.max_memory_reserved())
        STATS["device"] = torch.cuda.get_device_name(0)
    STATS["torch"] = torch.__version__
    for name in ("diffusers", "transformers"):  # the versions the peer really ran with (labels only)
        try:
            STATS[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            pass
    tmp = Path(os.environ["PEER_STATS"] + ".tmp")
    tmp.write_text(json.dumps(STATS, indent=1))
    os.replace(tmp, os.environ["PEER_STATS"])


def _after_step(optimizer, args, kwargs) -> None:  # noqa: ARG001 - torch's hook signature
    import torch

    if _cuda():
        torch.cuda.synchronize()
        STATS["step_peak_gib"].append(_gib(torch.cuda.max_memory_allocated()))
    STATS["step_end_s"].append(time.perf_counter())
    n = len(STATS["step_end_s"])
    if n == 1:
        STATS["optimizer"] = f"{type(optimizer).__module__}.{type(optimizer).__name__}"
        STATS["optimizer_defaults"] = {k: v for k, v in getattr(optimizer, "defaults", {}).items()
                                       if isinstance(v, (int, float, bool, str, type(None)))}
        STATS["lora_params"] = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    if os.environ.get("PEER_STEPS") and n >= int(os.environ["PEER_STEPS"]):
        STATS["stopped_after_steps"] = n
        write_stats()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _wrap_prepare() -> None:
    import accelerate

    original = accelerate.Accelerator.prepare

    def prepare(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        import torch

        STATS["prepare_calls"] += 1
        if _cuda():
            torch.cuda.synchronize()
            STATS["peak_before_prepare_gib"] = max(STATS["peak_before_prepare_gib"],
                                                   _gib(torch.cuda.max_memory_allocated()))
            torch.cuda.reset_peak_memory_stats()
        return out

    accelerate.Accelerator.prepare = prepare


class ShimFinder:
    """Serves the stand-ins to ``import`` statements only (not to availability probes)."""

    def __init__(self, names: list[str]) -> None:
        self.names = set(names)

    def find_spec(self, name, path, target=None):  # noqa: ARG002 - the meta path finder protocol
        if name not in self.names:
            return None
        frame = sys._getframe(1)  # importlib's _find_spec; who called it decides
        caller = frame.f_back.f_code.co_name if frame.f_back is not None else ""
        if caller != "_find_and_load_unlocked":  # importlib.util.find_spec: a probe
            return None
        from importlib.machinery import PathFinder

        return PathFinder.find_spec(name, [str(SHIM)])


def install_shims() -> list[str]:
    """Serve the stand-ins for whichever of torchvision / cv2 is missing (at most once per process)."""
    if any(isinstance(f, ShimFinder) for f in sys.meta_path):
        return STATS["shims"]
    for mod in ("torchvision", "cv2"):
        if importlib.util.find_spec(mod) is None:
            STATS["shims"].append(mod)
    if STATS["shims"]:
        sys.meta_path.append(ShimFinder(STATS["shims"]))
    return STATS["shims"]


# names sd-scripts imports that transformers 5 (on the GPU machine) no longer has: {missing: present equivalent}.
# CLIPFeatureExtractor is only imported by sd-scripts' sampling pipelines (library/lpw_stable_diffusion.py), never
# used by the training step.
ALIASES = {"CLIPFeatureExtractor": "CLIPImageProcessor"}


def install_aliases() -> list[str]:
    import transformers

    added = []
    for missing, present in ALIASES.items():
        try:
            getattr(transformers, missing)
        except (AttributeError, ImportError, ModuleNotFoundError):
            value = getattr(transformers, present)
            # the lookup can swap the lazy module in sys.modules: set the name on what `from transformers import` reads
            for module in (transformers, sys.modules["transformers"]):
                setattr(module, missing, value)
            added.append(missing)
    STATS["aliases"] = added
    return added


def install() -> None:
    install_shims()
    install_aliases()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(_after_step)
    _wrap_prepare()
    atexit.register(write_stats)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: peers_hook.py SCRIPT.py [arguments...]")
    script = Path(sys.argv[1]).resolve()
    install()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path[0] = str(script.parent)  # as `python3 SCRIPT.py` would have it (not benchmarks/)
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
