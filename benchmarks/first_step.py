"""Time from `lorakit train` to the first training step (issue 6), on full-size random-weight checkpoints.

What it does:
1. writes, once, random-weight base model files in the real layouts under ``--dir``/models (skipped when
   already there): SDXL as one ``sd_xl_base_1.0.safetensors`` (SGM keys: UNet, VAE, both text encoders,
   fp16 like the real file), FLUX.1-dev as ``flux1-dev.safetensors`` (BFL keys, bf16) + ``clip_l.safetensors``
   + ``t5xxl_fp16.safetensors`` (fp16) + ``ae.safetensors``. Weights are drawn on the GPU when there is one
   and streamed to disk tensor by tensor (values do not change speed: weights ~ N(0, 1/fan_in), norm
   scales 1, biases 0, so the step stays finite);
2. writes a small dataset (8 images 1024x1024 with captions, kohya folder layout);
3. runs the real CLI (``python -m lorakit train run.toml``, in a subprocess) twice with the same config:
   run 1 fills the latent and text caches; run 2 (complete caches, model files in the page cache) is the
   measurement: seconds from spawning the process to the first line of ``<run>/metrics.jsonl``
   (``log.every_n_steps = 1``: the loop writes it right after step 1), watched from outside;
4. prints one markdown table row per measurement (and appends it to ``$OUT/first_step.md`` when OUT is set),
   with a phase breakdown read from the run's own output: import, config + dataset scan, model load,
   caches, LoRA injection (+ placement / compile set-up), and the rest up to the first step (optimizer,
   metrics, the step itself, whose own seconds are in brackets).

Usage (repository root)::

    python benchmarks/first_step.py --dir /data/first-step                   # SDXL, full size
    python benchmarks/first_step.py --dir /data/first-step --family flux1    # FLUX.1-dev (34 GB of files)
    python benchmarks/first_step.py --dir /tmp/fs --tiny                     # tiny models, CPU smoke test
    python benchmarks/first_step.py --dir /tmp/fs --toy                      # the shipped toy SDXL

On a CUDA machine a run.toml without ``[memory]`` keys now plans itself (issue 28: compile and CUDA graphs included,
so run 2 also compiles or loads compiled blocks); ``--set memory.auto=false`` measures the eager path as before.

``--compile-start`` (issue 28: compile cost, cold and warm): four runs of the same config, each timed from spawning
``lorakit train`` to its first step: (1) fills the data caches, eager (``memory.compile=false``); (2) eager again, caches
filled (the eager start); (3) compiled, with an empty inductor / Triton cache of its own (``TORCHINDUCTOR_CACHE_DIR``
under the run folder: the cold start); (4) the same again (the warm start: same shapes, the compiled blocks read from
that cache). The issue's targets: warm within 10 s of eager, cold FLUX.1-dev under 60 s. One table row each.

Other options: ``--steps`` (1-3), ``--repeats`` (run 2 repeated, same caches), ``--set key=value`` (config
overrides, e.g. ``--set memory.compile=true``), ``--build-only``, ``--repo`` (the lorakit tree to run, for
before/after comparisons), ``--device auto|cuda|cpu``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shlex
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TABLE_HEADER = ("| family | settings | run 1 (fills caches) s | run 2 start → first step s | run-2 phases s "
                "| device | torch | commit |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
IMPORT_MARK = "[first_step] imported"
POOL = 1 << 24        # random values drawn once and reused (with random offsets) for every tensor


# ============================================================================== random-weight files

_ST_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "int64": "I64"}


def write_random_safetensors(path: Path, shapes: dict[str, tuple[tuple[int, ...], Any]], device: str,
                             seed: int = 0, metadata: Optional[dict[str, str]] = None) -> Path:
    """Write a .safetensors file holding ``shapes`` (name -> (shape, torch dtype)) with random values,
    tensor by tensor (memory stays at one tensor), through a temp file renamed at the end. ``metadata``: the
    header's ``__metadata__`` (transformers wants ``{"format": "pt"}``)."""
    import torch

    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (shape, dtype) in shapes.items():
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _ST_DTYPES[str(dtype).removeprefix("torch.")], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator(device).manual_seed(seed)
    pool = torch.randn(POOL, generator=gen, device=device)
    pick = random.Random(seed)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for name, (shape, dtype) in shapes.items():
                t = _values(name, shape, pool, pick, device).to(dtype)
                fh.write(t.reshape(-1).view(torch.uint8).cpu().numpy())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _values(name: str, shape: tuple[int, ...], pool: Any, pick: random.Random, device: str) -> Any:
    import torch

    n = math.prod(shape)
    if name.endswith("bias") or n == 0:
        return torch.zeros(shape, device=device)
    if len(shape) <= 1:                                   # norm weights / scales
        return torch.ones(shape, device=device)
    if n <= POOL:
        start = pick.randrange(0, POOL - n + 1)
        flat = pool[start:start + n]
    else:
        flat = pool.repeat(-(-n // POOL))[:n]
    return flat.view(shape) * (1.0 / math.sqrt(math.prod(shape[1:])))


def _clean(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype")}


def _shapes(sd: dict[str, Any], dtype: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {k: (tuple(v.shape), dtype) for k, v in sd.items()}


def sdxl_layout(tiny: bool, dtype: Any) -> tuple[dict[str, tuple[tuple[int, ...], Any]], Optional[dict]]:
    """SGM key → (shape, dtype) of an SDXL single file (the models built on the meta device, named with
    lorakit's SGM converters), and the tiny configs (None at full size: lorakit's shipped configs apply)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorakit.models.sdxl import configs
    from lorakit.models.sdxl.convert import te2_to_sgm
    from lorakit.models.unet_parts import te1_to_sgm, unet_to_sgm, vae_to_sgm
    from lorakit.models.sdxl.load import tiny_configs

    cfgs = tiny_configs() if tiny else {"unet": configs.UNET, "vae": configs.VAE, "te1": configs.TE1,
                                        "te2": configs.TE2}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**_clean(cfgs["unet"]))
        vae = AutoencoderKL(**_clean(cfgs["vae"]))
        te1 = CLIPTextModel(CLIPTextConfig(**_clean(cfgs["te1"])))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_clean(cfgs["te2"])))
    sd: dict[str, Any] = {}
    sd.update(unet_to_sgm(unet.state_dict(), unet.config))
    sd.update(vae_to_sgm(vae.state_dict(), vae.config))
    sd.update(te1_to_sgm({k: v for k, v in te1.state_dict().items() if not k.endswith("position_ids")}))
    sd.update(te2_to_sgm(te2.state_dict()))
    return _shapes(sd, dtype), (cfgs if tiny else None)


def flux_layout(tiny: bool, dtype: Any) -> dict[str, dict[str, tuple[tuple[int, ...], Any]]]:
    """role → {key: (shape, dtype)} of the FLUX.1-dev files as ComfyUI has them (what save_bfl_files writes)."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lorakit.models.flux1 import configs, load
    from lorakit.models.flux1.convert import diffusers_to_bfl
    from lorakit.models.ldm_vae import ae_diffusers_to_bfl

    if tiny:
        tcfg, ccfg, t5cfg, aecfg = ({**load.TINY_TRANSFORMER, "guidance_embeds": True}, load.TINY_CLIP,
                                    load.TINY_T5, load.TINY_AE)
    else:
        tcfg, ccfg, t5cfg, aecfg = (configs.transformer_config("dev"), configs.clip_l_config(), configs.t5_config(),
                                    configs.ae_config())
    with torch.device("meta"):
        tr = FluxTransformer2DModel(**_clean(tcfg))
        clip = CLIPTextModel(CLIPTextConfig(**_clean(ccfg)))
        t5 = T5EncoderModel(T5Config(**_clean(t5cfg)))
        ae = AutoencoderKL(**_clean(aecfg))
    clip_sd = {("text_model." + k if not k.startswith("text_model.") else k): v
               for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    t5_sd = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    return {"checkpoint": _shapes(diffusers_to_bfl(tr.state_dict()), dtype),
            "clip_l": _shapes(clip_sd, torch.float16), "t5xxl": _shapes(t5_sd, torch.float16),
            "ae": _shapes(ae_diffusers_to_bfl(ae.state_dict()), dtype)}


def flux2_layout(size: str, dtype: Any) -> dict[str, dict[str, tuple[tuple[int, ...], Any]]]:
    """role → {key: (shape, dtype)} of FLUX.2 files as ComfyUI users keep them: the BFL transformer of ``size``
    (klein-4b / klein-9b), the Qwen3 text encoder (HF causal-LM names, no lm_head) and the BFL ``ae.safetensors``."""
    import torch
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from lorakit.models.flux2 import configs
    from lorakit.models.flux2.convert import ae_diffusers_to_bfl, diffusers_to_bfl

    with torch.device("meta"):
        tr = Flux2Transformer2DModel(**_clean(configs.transformer_config(size)))
        te = Qwen3ForCausalLM(Qwen3Config(**_clean({k: v for k, v in configs.qwen3_config(size).items()
                                                    if k != "model_type"})))
        ae = AutoencoderKLFlux2(**_clean(configs.ae_config()))
    te_sd = {k: v for k, v in te.state_dict().items() if k != "lm_head.weight"}
    ae_sd = {k: v for k, v in ae_diffusers_to_bfl(ae.state_dict()).items() if not k.endswith("num_batches_tracked")}
    return {"checkpoint": _shapes(diffusers_to_bfl(tr.state_dict()), dtype), "text_encoder": _shapes(te_sd, dtype),
            "ae": _shapes(ae_sd, dtype)}


FLUX2_SIZES = {"flux2": "klein-4b", "flux2-9b": "klein-9b"}  # --family: the Klein size written


def build_models(family: str, root: Path, tiny: bool, device: str) -> dict[str, Path]:
    """Write the family's files under ``root`` once (a ``done.json`` marks a complete set); role -> path."""
    import torch

    folder = root / "models" / f"{family}-{'tiny' if tiny else 'full'}"
    done = folder / "done.json"
    if done.is_file():
        return {k: Path(v) for k, v in json.loads(done.read_text())["paths"].items()}
    t0 = time.perf_counter()
    paths: dict[str, Path] = {}
    if family == "sdxl":
        layout, tiny_cfgs = sdxl_layout(tiny, torch.float16)
        paths["checkpoint"] = write_random_safetensors(folder / "sd_xl_base_1.0.safetensors", layout, device)
        if tiny_cfgs is not None:
            from lorakit.models.sdxl import configs
            paths["config"] = configs.write_config_folder(folder / "config", unet=tiny_cfgs["unet"],
                                                          vae=tiny_cfgs["vae"], te1=tiny_cfgs["te1"],
                                                          te2=tiny_cfgs["te2"])
    elif family in FLUX2_SIZES:
        if tiny:
            raise SystemExit("first_step: --tiny is not offered for FLUX.2; use --toy (the shipped toy FLUX.2)")
        size = FLUX2_SIZES[family]
        names = {"checkpoint": f"flux2-{size.replace('klein-', 'klein-base-')}.safetensors",
                 "text_encoder": f"qwen_3_{size.split('-')[1]}.safetensors", "ae": "flux2-ae.safetensors"}
        for i, (role, shapes) in enumerate(flux2_layout(size, torch.bfloat16).items()):
            paths[role] = write_random_safetensors(folder / names[role], shapes, device, seed=i)
        # a Qwen3 tokenizer folder: the toy world's (a real Qwen3 tokenizer class; its ids index the full-size table)
        from lorakit.toy.paths import toy_paths
        paths["tokenizer_dir"] = toy_paths("flux2")["tokenizer_dir"]
    else:
        names = {"checkpoint": "flux1-dev.safetensors", "clip_l": "clip_l.safetensors",
                 "t5xxl": "t5xxl_fp16.safetensors", "ae": "ae.safetensors"}
        for i, (role, shapes) in enumerate(flux_layout(tiny, torch.bfloat16).items()):
            paths[role] = write_random_safetensors(folder / names[role], shapes, device, seed=i)
        if tiny:
            from lorakit.models.flux1 import configs, load
            paths["config"] = configs.write_config_folder(folder / "config", "dev", transformer=load.TINY_TRANSFORMER,
                                                          clip_l=load.TINY_CLIP, t5=load.TINY_T5, ae=load.TINY_AE)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in paths.values() if p.is_file())
    done.write_text(json.dumps({"paths": {k: str(v) for k, v in paths.items()}, "seconds": seconds,
                                "bytes": size}, indent=2))
    print(f"wrote {family} files ({size / 2**30:.2f} GiB) to {folder} in {seconds:.1f} s", flush=True)
    return paths


def toy_model(family: str) -> dict[str, Path]:
    from lorakit.toy.paths import toy_paths

    return toy_paths(family)


def write_dataset(folder: Path, n: int, size: int) -> Path:
    """n smooth random RGB images of size x size with captions in ``folder/1_bench``, once."""
    import numpy as np
    from PIL import Image

    sub = folder / "1_bench"
    if sub.is_dir() and len(list(sub.glob("*.png"))) == n:
        return folder
    sub.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(sub / f"{i:03d}.png")
        (sub / f"{i:03d}.txt").write_text(f"a photo of bench subject, picture number {i}\n", encoding="utf-8")
    return folder


# ============================================================================== running `lorakit train`

def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class RunTiming:
    """One `lorakit train` process, timed from spawn (seconds since spawn)."""

    name: str
    returncode: Optional[int] = None
    first_step: Optional[float] = None       # first line of metrics.jsonl seen
    total: Optional[float] = None            # process exit
    step_seconds: Optional[float] = None     # the first step's own duration (metrics row "seconds")
    marks: dict[str, float] = field(default_factory=dict)
    log: Path = Path()

    def phases(self) -> dict[str, float]:
        """Phase durations from the output markers (absent markers leave their phase out)."""
        order = [("import", "imported"), ("config+scan", "report"), ("model load", "caching_start"),
                 ("caches", "caching_end"), ("LoRA", "lora"), ("→ step 1", "first_step")]
        marks = dict(self.marks)
        if self.first_step is not None:
            marks["first_step"] = self.first_step
        out: dict[str, float] = {}
        last = 0.0
        for label, key in order:
            if key in marks and marks[key] >= last:
                out[label] = marks[key] - last
                last = marks[key]
        return out


class OutputWatcher(threading.Thread):
    """Reads the child's merged stdout/stderr, splits it on \\r and \\n (tqdm redraws with \\r), timestamps
    the markers of each phase and copies everything to a log file."""

    def __init__(self, stream: Any, log: Path, t0: float) -> None:
        super().__init__(daemon=True)
        self.stream, self.log_path, self.t0 = stream, log, t0
        self.marks: dict[str, float] = {}
        self.tail: list[str] = []

    def run(self) -> None:
        buf = b""
        with open(self.log_path, "wb") as log:
            while True:
                chunk = os.read(self.stream.fileno(), 65536)
                if not chunk:
                    break
                now = time.perf_counter() - self.t0
                log.write(chunk)
                buf += chunk
                parts = re.split(rb"[\r\n]", buf)
                buf = parts.pop()
                for part in parts:
                    self.segment(part.decode("utf-8", "replace"), now)
            if buf:
                self.segment(buf.decode("utf-8", "replace"), time.perf_counter() - self.t0)

    def segment(self, text: str, now: float) -> None:
        if not text.strip():
            return
        self.tail = (self.tail + [text])[-40:]
        if text.startswith(IMPORT_MARK):
            self.marks.setdefault("imported", now)
        elif "usable images:" in text:
            self.marks.setdefault("report", now)
        elif text.startswith("caching latents") or text.startswith("caching text"):
            self.marks.setdefault("caching_start", now)
            self.marks["caching_end"] = now
        elif re.match(r"LoRA: \d+ modules", text):
            self.marks.setdefault("lora", now)


# The child: import the libraries' top levels, lorakit's CLI and training loop, print a marker (the end of
# the import phase), then run `python -m lorakit` with the given arguments (runpy: exactly what
# `python -m lorakit train run.toml` does; the modules it imports are simply imported a little earlier).
CHILD = (f"import runpy, sys\nimport diffusers, transformers, lorakit.cli, lorakit.train.loop\n"
         f"print({IMPORT_MARK!r}, flush=True)\n"
         "sys.argv = ['lorakit'] + sys.argv[1:]\nrunpy.run_module('lorakit', run_name='__main__', alter_sys=True)\n")


def run_train(python: str, repo: Path, config: Path, overrides: list[str], run_dir: Path, name: str,
              timeout: float, extra_env: Optional[dict[str, str]] = None) -> RunTiming:
    """Spawn `lorakit train config overrides` and time it; the first step is the first line of metrics.jsonl."""
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(repo)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    metrics = run_dir / "metrics.jsonl"
    timing = RunTiming(name=name, log=run_dir.parent / f"{name}.log")
    cmd = [python, "-c", CHILD, "train", str(config), *overrides]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(repo),
                            start_new_session=True)
    watcher = OutputWatcher(proc.stdout, timing.log, t0)
    watcher.start()
    try:
        while proc.poll() is None:
            now = time.perf_counter() - t0
            if timing.first_step is None and _first_line(metrics) is not None:
                timing.first_step = now
            if now > timeout:
                os.killpg(proc.pid, 9)
                proc.wait()
                break
            time.sleep(0.005)
    except BaseException:
        os.killpg(proc.pid, 9)
        raise
    timing.total = time.perf_counter() - t0
    watcher.join(10)
    timing.returncode = proc.returncode
    timing.marks = dict(watcher.marks)
    row = _first_line(metrics)
    if timing.first_step is None and row is not None:      # the run ended between two polls
        timing.first_step = timing.total
    if row is not None:
        timing.step_seconds = row.get("seconds")
    if proc.returncode != 0:
        tail = "\n".join(watcher.tail[-25:])
        raise SystemExit(f"first_step: {name} failed (exit {proc.returncode}, log {timing.log}):\n{tail}")
    return timing


def _first_line(path: Path) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline()
    except OSError:
        return None
    if not line.endswith("\n"):
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def warm_page_cache(paths: list[Path]) -> float:
    """Read every model file once (the measurement is for a warm page cache); seconds taken."""
    t0 = time.perf_counter()
    for p in paths:
        if p.is_file():
            with open(p, "rb") as fh:
                while fh.read(64 << 20):
                    pass
    return time.perf_counter() - t0


# ============================================================================== reporting

def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} CPUs)"


def commit_label(repo: Path) -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = os.environ.get("BENCH_COMMIT") or git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = os.environ.get("BENCH_DIRTY")
    if dirty is None:
        dirty = "dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    return commit + (f"+{dirty}" if dirty else "")


def format_phases(t: RunTiming) -> str:
    parts = [f"{label} {sec:.1f}" for label, sec in t.phases().items()]
    if t.step_seconds is not None:
        parts.append(f"(step 1 itself {t.step_seconds:.1f})")
    return " · ".join(parts) if parts else "n/a"


def table_row(family: str, settings: str, run1: RunTiming, run2s: list[RunTiming], device: str, torch_version: str,
              commit: str) -> str:
    firsts = [t.first_step for t in run2s if t.first_step is not None]
    if len(firsts) > 1:
        second = f"**{statistics.median(firsts):.1f}** (median of {len(firsts)}, min {min(firsts):.1f})"
    else:
        second = f"**{firsts[0]:.1f}**" if firsts else "n/a"
    best = min(run2s, key=lambda t: t.first_step if t.first_step is not None else math.inf)
    run1_text = f"{run1.total:.1f} (first step at {run1.first_step:.1f})" if run1.first_step else f"{run1.total:.1f}"
    return (f"| {family} | {settings} | {run1_text} | {second} | {format_phases(best)} | {device} | {torch_version} "
            f"| {commit} |")


def append_out(row: str, extra: str = "") -> None:
    out = os.environ.get("OUT")
    if not out:
        return
    path = Path(out) / "first_step.md"
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as fh:
        if new:
            fh.write(TABLE_HEADER + "\n")
        fh.write(row + "\n")
        if extra:
            fh.write(extra + "\n")


# ============================================================================== main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time from `lorakit train` to the first training step (issue 6).")
    p.add_argument("--dir", required=True, help="folder for the model files (written once), dataset and runs")
    p.add_argument("--family", choices=("sdxl", "flux1", "flux2", "flux2-9b"), default="sdxl",
                   help="flux2 / flux2-9b: FLUX.2 Klein base 4B / 9B")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="tiny models and 64 px images (CPU smoke test)")
    size.add_argument("--toy", action="store_true", help="lorakit's shipped toy model (64 px) instead of random files")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu (training, and where weights are drawn)")
    p.add_argument("--steps", type=int, default=2, help="training steps per run (1-3 is enough)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--resolution", type=int, default=None, help="default 1024 (64 with --tiny/--toy)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="how many times run 2 is measured (same caches)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to `lorakit train` (repeatable)")
    p.add_argument("--timeout", type=float, default=540.0, help="seconds one `lorakit train` may take")
    p.add_argument("--python", default=sys.executable, help="the Python that runs `lorakit train`")
    p.add_argument("--repo", default=str(REPO), help="the lorakit source tree to run (default: this one)")
    p.add_argument("--label", default="", help="text added to the settings column")
    p.add_argument("--build-only", action="store_true", help="write the model files and dataset, then stop")
    p.add_argument("--compile-start", action="store_true",
                   help="time the start eager, compiled with a cold inductor cache and with a warm one (see above)")
    args = p.parse_args(argv)
    if not 1 <= args.steps <= 100:
        p.error("--steps: give 1-3 (at most 100)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("first_step: --device cuda asked for, but torch sees no CUDA device")
    small = args.tiny or args.toy
    resolution = args.resolution or (64 if small else 1024)
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)

    paths = toy_model(args.family) if args.toy else build_models(args.family, root, args.tiny, device)
    data = write_dataset(root / f"data-{resolution}-{args.images}", args.images, resolution)
    if args.build_only:
        return 0

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = root / "runs" / f"{args.family}-{'toy' if args.toy else 'tiny' if args.tiny else 'full'}-{stamp}"
    runs.mkdir(parents=True, exist_ok=True)
    model = {"family": "flux2" if args.family in FLUX2_SIZES else args.family,
             **{role: str(p) for role, p in paths.items() if role != "config"}}
    if "config" in paths:
        model["config_dir"] = str(paths["config"])
    mixed = "bf16" if device == "cuda" else "no"
    config = write_config(runs / "run.toml", {
        "model": model,
        "data": {"dir": str(data), "resolution": resolution, "min_bucket_reso": min(256, resolution),
                 "cache_dir": str(runs / "cache")},
        "network": {"rank": args.rank, "alpha": float(args.rank)},
        "optimizer": {"name": "adamw", "lr": 1e-4},
        "training": {"max_steps": args.steps, "batch_size": 1, "seed": 42, "mixed_precision": mixed,
                     "device": device},
        "save": {"dir": str(runs), "name": "run1", "every_n_steps": 0},
        "log": {"every_n_steps": 1, "progress": True},
    })
    overrides = list(args.overrides)
    repo = Path(args.repo).resolve()
    model_files = [p for role, p in paths.items() if role != "config"]

    if args.compile_start:
        return compile_start(args, config, overrides, runs, repo, model_files, device, mixed, resolution)
    warm = warm_page_cache(model_files)
    print(f"run 1 (fills the caches; page cache warmed in {warm:.1f} s): {runs / 'run1'}", flush=True)
    run1 = run_train(args.python, repo, config, overrides + ["save.name=run1"], runs / "run1", "run1", args.timeout)
    print(f"  exit after {run1.total:.1f} s; first step at {run1.first_step}", flush=True)
    run2s = []
    for i in range(args.repeats):
        name = f"run2-{i + 1}" if args.repeats > 1 else "run2"
        warm = warm_page_cache(model_files)
        t = run_train(args.python, repo, config, overrides + [f"save.name={name}"], runs / name, name, args.timeout)
        print(f"{name} (warm caches; page cache warmed in {warm:.1f} s): first step at {t.first_step:.2f} s, "
              f"exit after {t.total:.1f} s; phases: {format_phases(t)}", flush=True)
        run2s.append(t)

    size = "toy" if args.toy else "tiny" if args.tiny else "full-size"
    settings = (f"{size}, {args.images} img {resolution}², rank {args.rank}, {args.steps} steps, {mixed}"
                + (f", {' '.join(overrides)}" if overrides else "") + (f", {args.label}" if args.label else ""))
    row = table_row(args.family, settings, run1, run2s, device_name(device), torch.__version__, commit_label(repo))
    print()
    print(TABLE_HEADER)
    print(row)
    append_out(row)
    summary = {"family": args.family, "settings": settings, "run1_total": run1.total,
               "run1_first_step": run1.first_step, "run2_first_step": [t.first_step for t in run2s],
               "run2_phases": [t.phases() for t in run2s], "run2_step_seconds": [t.step_seconds for t in run2s],
               "runs": str(runs), "command": " ".join(shlex.quote(a) for a in sys.argv)}
    (runs / "first_step.json").write_text(json.dumps(summary, indent=2))
    return 0


def compile_start(args: argparse.Namespace, config: Path, overrides: list[str], runs: Path, repo: Path,
                  model_files: list[Path], device: str, mixed: str, resolution: int) -> int:
    """``--compile-start``: fill / eager / cold compile / warm compile, each from spawn to the first step."""
    import torch

    cache = runs / "inductor-cache"  # empty: run 3 compiles cold; run 4 reads what run 3 wrote
    env = {"TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}
    plan = [("fill", ["memory.compile=false"], None), ("eager", ["memory.compile=false"], None),
            ("cold compile", ["memory.compile=true"], env), ("warm compile", ["memory.compile=true"], env)]
    timings: dict[str, RunTiming] = {}
    for i, (what, keys, extra) in enumerate(plan, 1):
        name = f"run{i}-{what.replace(' ', '-')}"
        warm = warm_page_cache(model_files)
        t = run_train(args.python, repo, config, overrides + keys + [f"save.name={name}"], runs / name, name,
                      args.timeout, extra)
        timings[what] = t
        print(f"{name} (page cache warmed in {warm:.1f} s): first step at {t.first_step:.2f} s, exit after "
              f"{t.total:.1f} s; phases: {format_phases(t)}", flush=True)
    size = "toy" if args.toy else "tiny" if args.tiny else "full-size"
    base = (f"{size}, {args.images} img {resolution}², rank {args.rank}, {mixed}"
            + (f", {' '.join(overrides)}" if overrides else "") + (f", {args.label}" if args.label else ""))
    print()
    print(TABLE_HEADER)
    rows = []
    for what in ("eager", "cold compile", "warm compile"):
        rows.append(table_row(args.family, f"{base}, start {what}", timings["fill"], [timings[what]],
                              device_name(device), torch.__version__, commit_label(repo)))
        print(rows[-1])
        append_out(rows[-1])
    eager, cold, warm_t = (timings[w].first_step for w in ("eager", "cold compile", "warm compile"))
    verdict = (f"warm compile start - eager start = {warm_t - eager:+.1f} s (target within 10 s); cold compile start "
               f"{cold:.1f} s (FLUX.1-dev target: under 60 s)")
    print(verdict)
    append_out("", verdict)
    summary = {"family": args.family, "settings": base, **{f"{w}_first_step": t.first_step for w, t in timings.items()},
               "phases": {w: t.phases() for w, t in timings.items()}, "runs": str(runs),
               "command": " ".join(shlex.quote(a) for a in sys.argv)}
    (runs / "first_step.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
