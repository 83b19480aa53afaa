"""Data-parallel training over several processes (GPUs, machines) on torch.distributed: the one place that knows.

How a run is spread (docs/multi-gpu.md):

* Every process builds the same *global* batch stream (``training.batch_size`` × processes, same seed), draws the
  same noise and timesteps for the whole global batch from the same generator, and then keeps only its slice
  (:func:`local_part`: rank r takes samples ``r·b … (r+1)·b``). Its loss is scaled by its share of the batch and
  the LoRA gradients are summed over all processes (:func:`exchange`), so N processes with batch b take exactly
  the step one process with batch N·b takes (up to float summation order).
* Caches are split (:func:`split`): each process encodes a different part of the images and captions into the
  shared cache folder, then all wait for each other; every image is encoded once.
* Rank 0 runs the whole run (train/loop.py): it alone writes the run folder (config, LoRA files, checkpoints,
  previews, metrics, TensorBoard, run.json). The other ranks run :func:`follow`: the same preparation and the same
  optimizer steps, nothing written.
* Faults: before each gradient exchange a process records the step it reached in the rendezvous store; a process
  whose exchange fails (a peer died, or hung past ``distributed.timeout_s``) stops with one line naming the ranks
  that did not arrive and their last step. lorakit's own launcher (:func:`launch`, ``lorakit train --gpus N``)
  watches its processes, stops the others when one ends badly and names the rank.

A process is one of several when ``WORLD_SIZE`` > 1 in its environment: set by :func:`launch`, by ``accelerate
launch`` or by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from lorakit.errors import ConfigError, TrainingError
from lorakit.train import sharding

AGENT_STORE = "LORAKIT_AGENT_STORE"  # set by launch(): the rendezvous store is the launcher's (it outlives ranks)
TEST_FAULT = "LORAKIT_TEST_FAULT"  # TEST ONLY: "RANK:STEP:exit" or "RANK:STEP:hang" (a dead or hung rank)
CACHING_WAIT = 10  # caching may take this many times distributed.timeout_s before a missing rank is reported
GRACE_S = 5.0  # after one process ends badly, the launcher gives the others this long to stop by themselves


@dataclass
class Group:
    rank: int = 0
    world: int = 1
    timeout_s: float = 600.0
    step: int = 0           # the optimizer step whose gradients are exchanged next
    store: Any = None       # the rendezvous store (heartbeats)
    ctrl: Any = None        # a gloo group for barriers and checks (None: the default group, when it is gloo)
    sharded: bool = False   # distributed.shard = "base": every forward runs on every process (train/sharding.py)
    overlap: Any = None     # distributed.overlap: the LoRA gradients' buckets, summed while backward runs (Buckets)


_G = Group()


def rank() -> int:
    return _G.rank


def world() -> int:
    return _G.world


def is_main() -> bool:
    return _G.rank == 0


def env_world() -> int:
    """Processes of the run this process belongs to, from the launcher's environment (1 alone)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} in the environment is not a number") from None


def backend_of(cfg) -> str:
    backend, device = cfg.distributed.backend, cfg.training.device
    if backend == "auto":
        return "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
    return backend


def check_config(cfg, processes: int) -> None:
    """What several processes cannot do, refused in one line before anything starts."""
    backend, device = backend_of(cfg), cfg.training.device
    if device.startswith("cuda:"):
        raise ConfigError(f"training.device = {device!r}: with several processes each one uses the card of its "
                          "LOCAL_RANK; set training.device = \"auto\" (or \"cuda\")")
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"{processes} processes with training.device = {device!r}: this machine has no CUDA GPU; "
                          "for CPU processes (tests, debugging) set training.device = \"cpu\" (the backend is gloo)")
    if backend == "gloo" and device != "cpu":
        raise ConfigError("distributed.backend = \"gloo\" runs CPU processes (tests, debugging): set training.device "
                          "= \"cpu\", or distributed.backend = \"auto\" for GPUs (nccl)")
    if backend == "nccl" and device == "cpu":
        raise ConfigError("distributed.backend = \"nccl\" needs GPUs and training.device = \"cpu\": set "
                          "distributed.backend = \"auto\" (gloo on the CPU)")
    sharding.check_config(cfg, processes)
    if cfg.memory.fused_backward:
        raise ConfigError("memory.fused_backward = true steps each LoRA weight inside backward, before the gradients "
                          "of the other processes arrive: set it false for a multi-process run")


# ====================================================================== joining the group


@contextlib.contextmanager
def joined(cfg):
    """The process group for the length of a run when this process is one of several (nothing when alone)."""
    global _G
    size = env_world()
    if size == 1:
        sharding.check_config(cfg, 1)
        yield _G
        return
    import torch.distributed as dist

    check_config(cfg, size)
    me, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    backend, timeout = backend_of(cfg), timedelta(seconds=cfg.distributed.timeout_s)
    if backend == "nccl":
        torch.cuda.set_device(local)
    store = None
    try:
        if os.environ.get(AGENT_STORE):
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=timeout)
        dist.init_process_group(backend, rank=me, world_size=size, timeout=timeout,
                                **({"store": store} if store is not None else {}))  # else env:// (torchrun, accelerate)
    except Exception as exc:  # the others never came (another machine not started, a wrong address or port)
        raise TrainingError(f"rank {me}: the {size} processes did not meet at {os.environ.get('MASTER_ADDR')}:"
                            f"{os.environ.get('MASTER_PORT')} within distributed.timeout_s = "
                            f"{cfg.distributed.timeout_s:g} s ({_first_line(exc)})") from None
    store = store or dist.distributed_c10d._get_default_store()
    store.set(f"lorakit/arrived/{me}", "0")
    ctrl = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    _G = Group(me, size, cfg.distributed.timeout_s, 0, store, ctrl)
    ok = False
    try:
        yield _G
        ok = True
    finally:
        _G = Group()
        if ok:  # after a fault a peer may be gone: the process just ends
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


# ====================================================================== the parts of a run


def split(ensure: Callable, items: Sequence, key: Callable[[Any], Path], **kwargs) -> None:
    """``ensure(items, **kwargs)`` of a cache, each entry encoded by one process only: this process encodes its
    share of the distinct entries, then all wait for each other (up to CACHING_WAIT × distributed.timeout_s) and
    check that every entry is visible here (several machines need a shared cache folder)."""
    if _G.world == 1:
        ensure(items, **kwargs)
        return
    distinct = {str(key(it)): it for it in items}
    names = sorted(distinct)
    ensure([distinct[n] for n in names[_G.rank::_G.world]], **{**kwargs, "progress": False})  # rank 0 reports
    barrier("caching", _G.timeout_s * CACHING_WAIT)
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        raise TrainingError(f"rank {_G.rank}: {missing[0]} (cached by another process) is not visible here: the "
                            "caches (data.cache_dir) and the run folder (save.dir) must be on storage every machine "
                            "of the run shares")


def barrier(what: str, timeout_s: float) -> None:
    """All processes meet here; one missing after ``timeout_s`` is named (gloo's monitored barrier)."""
    import torch.distributed as dist

    try:
        dist.monitored_barrier(group=_G.ctrl, timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
    except Exception as exc:
        raise TrainingError(f"rank {_G.rank}: the other processes did not finish {what} within {timeout_s:.0f} s "
                            f"({_first_line(exc)})") from None


def global_batch(settings: dict, processes: Optional[int] = None) -> dict:
    """A memory plan's settings with training.batch_size as the global batch (× processes, default: this run's):
    what a resume on another number of processes must keep."""
    processes = _G.world if processes is None else processes
    if processes == 1 or not isinstance(settings.get("training.batch_size"), int):
        return settings
    return {**settings, "training.batch_size": settings["training.batch_size"] * processes}


def check_start(trainable, plan: dict, start_step: int) -> None:
    """Every process starts from the same LoRA weights, the same memory plan and the same step (asserted: a
    difference would train a different LoRA on each rank); the plan records the number of processes."""
    if _G.world == 1:
        return
    import torch.distributed as dist

    plan["processes"] = _G.world  # plan.json: a resume compares the global batch (resume.check_plan)
    _G.step = start_step
    sums = [[float(p.detach().double().sum()), float(p.detach().double().pow(2).sum())] for p in trainable]
    mine = (sums, json.dumps(plan.get("settings", plan), sort_keys=True, default=str), start_step)
    everyone: list = [None] * _G.world
    dist.all_gather_object(everyone, mine, group=_G.ctrl)
    for other, (weights, settings, step) in enumerate(everyone):
        if step != start_step:
            raise TrainingError(f"rank {other} starts at step {step}, rank {_G.rank} at step {start_step}: the "
                                "processes do not see the same checkpoints (a shared save.dir is needed)")
        if settings != mine[1]:
            raise TrainingError(f"rank {other}'s memory plan differs from rank {_G.rank}'s ({settings} vs "
                                f"{mine[1]}): set memory.vram_gb to the smallest card's memory, or use equal cards")
        if weights != sums:
            raise TrainingError(f"rank {other}'s LoRA weights start different from rank {_G.rank}'s: the LoRA is "
                                "initialised from training.seed, so this is a bug; please report it")


def local_part(batch, noised) -> tuple[Any, Any, float]:
    """This process's slice of the global batch and of its noised input, with the slice's share of the batch (the
    loss is scaled by it and the gradients summed, so the step equals one process's step on the whole batch).
    Alone: everything, share 1."""
    k = batch.latents.shape[0]
    if _G.world == 1:
        return batch, noised, 1.0
    lo, hi = _G.rank * k // _G.world, (_G.rank + 1) * k // _G.world
    share = (hi - lo) / k
    if hi == lo and _G.sharded:  # every process must run the forward (it gathers shards): one sample, weight 0
        lo, hi = k - 1, k

    def cut(v):
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == k:
            return v[lo:hi]
        if isinstance(v, list) and len(v) == k:
            return v[lo:hi]
        if isinstance(v, dict):
            return {name: cut(t) for name, t in v.items()}
        return v

    def part(obj):
        return replace(obj, **{f.name: cut(getattr(obj, f.name)) for f in fields(obj) if f.init})

    return part(batch), part(noised), share


def arm(cfg, trainable) -> None:
    """Before a step's last backward: with ``distributed.overlap`` the LoRA gradients are summed in buckets as
    backward produces them (:class:`Buckets`); nothing alone or with overlap off."""
    if _G.world == 1 or not cfg.distributed.overlap:
        return
    if _G.overlap is None:
        _G.overlap = Buckets(trainable)
    _G.overlap.arm()


def exchange(trainable, total: torch.Tensor) -> None:
    """Sum the LoRA gradients and the step's loss over all processes (one all-reduce per dtype, and one of the
    has-a-gradient flags on the CPU: no GPU wait); a parameter no process computed a gradient for keeps none, as
    alone. With ``distributed.overlap`` the buckets backward launched are awaited instead. A failed exchange stops
    with the missing ranks named."""
    if _G.world == 1:
        return
    import torch.distributed as dist

    _G.step += 1
    _test_fault(_G.step)
    _G.store.set(f"lorakit/arrived/{_G.rank}", str(_G.step))
    if _G.overlap is not None and _G.overlap.armed:
        try:
            _G.overlap.finish(total)
        except TrainingError:
            raise
        except Exception as exc:
            raise lost(exc) from None
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trainable]
    has = torch.tensor([float(p.grad is not None) for p in trainable])  # on the host: read without a GPU wait
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in [*grads, total.reshape(1)]:
        by_dtype.setdefault(t.dtype, []).append(t)
    try:
        dist.all_reduce(has, group=_G.ctrl)  # gloo, on the CPU
        for ts in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in ts])
            dist.all_reduce(flat)
            offset = 0
            for t in ts:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
    except Exception as exc:
        raise lost(exc) from None
    for p, g, any_grad in zip(trainable, grads, has.tolist()):
        p.grad = g if any_grad else None


def least(value: int) -> int:
    """The smallest ``value`` of all processes (an all-reduce MIN on the CPU group), ``value`` alone: so that every
    rank plans, and decides ``distributed.shard = "auto"``, from the same free memory (the cards' differ)."""
    if _G.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_G.ctrl)
    return int(t.item())


def shard(cfg, denoiser, blocks, device, log) -> bool:
    """distributed.shard = "base": the denoiser placed on ``device`` with its frozen weights sharded over the
    processes (train/sharding.py); False (nothing done) otherwise."""
    if sharding.shard_base(cfg, denoiser, blocks, device, _G.world, log):
        _G.sharded = True
    return _G.sharded


BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


class Buckets:
    """``distributed.overlap``: the LoRA gradients summed over the processes while backward still runs, as DDP's
    buckets do. The parameters are grouped, in reverse order (backward reaches the last layers first), into buckets of
    at most :data:`BUCKET_BYTES` of one dtype and device; a hook (``register_post_accumulate_grad_hook``) counts the
    gradients of a bucket as backward accumulates them, and a bucket whose gradients are all there is all-reduced
    asynchronously, strictly in bucket order (the same order of collectives on every process), on a process group of
    its own (apart from a sharded base's gathers). :meth:`finish`, before clipping, launches the buckets backward did
    not complete (a parameter without a gradient here counts as zeros), sums the has-a-gradient flags and the loss,
    and waits. Each gradient is the same sum of the same numbers as :func:`exchange`'s single all-reduce computes."""

    def __init__(self, trainable, bucket_bytes: int = BUCKET_BYTES) -> None:
        import torch.distributed as dist

        self.params = list(trainable)
        self.buckets: list[list[int]] = []
        size, kind = 0, None
        for i in reversed(range(len(self.params))):
            p = self.params[i]
            nbytes = p.numel() * p.element_size()
            if not self.buckets or (p.dtype, p.device) != kind or size + nbytes > bucket_bytes:
                self.buckets.append([])
                size, kind = 0, (p.dtype, p.device)
            self.buckets[-1].append(i)
            size += nbytes
        self.where = {i: b for b, members in enumerate(self.buckets) for i in members}
        self.group = dist.new_group()  # every process builds its buckets at the same (first) step
        self.hooks = [p.register_post_accumulate_grad_hook(functools.partial(self._ready, i))
                      for i, p in enumerate(self.params)]
        self.armed, self.twice = False, False

    def arm(self) -> None:
        self.armed, self.twice = True, False
        self.seen: set[int] = set()
        self.waiting = [len(b) for b in self.buckets]
        self.launched = 0
        self.works: list[tuple[int, torch.Tensor, Any]] = []

    def _ready(self, i: int, _p) -> None:
        if not self.armed:  # an earlier micro-batch of gradient accumulation
            return
        if i in self.seen:  # (a reentrant checkpoint would accumulate twice: refused in finish)
            self.twice = True
            return
        self.seen.add(i)
        self.waiting[self.where[i]] -= 1
        while self.launched < len(self.buckets) and self.waiting[self.launched] == 0:
            self._launch(self.launched)

    def _launch(self, b: int) -> None:
        import torch.distributed as dist

        grads = [self.params[i].grad if self.params[i].grad is not None else torch.zeros_like(self.params[i])
                 for i in self.buckets[b]]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.works.append((b, flat, dist.all_reduce(flat, group=self.group, async_op=True)))
        self.launched = b + 1

    def finish(self, total: torch.Tensor) -> None:
        import torch.distributed as dist

        while self.launched < len(self.buckets):
            self._launch(self.launched)
        self.armed = False
        has = torch.tensor([float(p.grad is not None) for p in self.params])
        dist.all_reduce(has, group=_G.ctrl)
        dist.all_reduce(total, group=self.group)
        for b, flat, work in self.works:
            work.wait()
            offset = 0
            for i in self.buckets[b]:
                p = self.params[i]
                p.grad = flat[offset:offset + p.numel()].view_as(p) if has[i] else None
                offset += p.numel()
        if self.twice:
            raise TrainingError("distributed.overlap: a LoRA gradient was accumulated twice in one backward "
                                "(reentrant checkpointing?); set distributed.overlap = false")


def lost(exc: BaseException) -> TrainingError:
    """The one line for a failed exchange: which ranks did not reach this step and the last step each reached."""
    behind = []
    try:
        _G.store.set_timeout(timedelta(seconds=5))
        for other in range(_G.world):
            reached = int(_G.store.get(f"lorakit/arrived/{other}"))
            if reached < _G.step:
                behind.append(f"rank {other} (last step reached: {reached})")
    except Exception:
        behind = ["the rendezvous store is gone (rank 0 or the launcher stopped)"]
    who = ", ".join(behind) or "another process stopped during the exchange"
    return TrainingError(f"step {_G.step}: the gradient exchange failed on rank {_G.rank}: {who} did not arrive "
                         f"(dead, or hung past distributed.timeout_s = {_G.timeout_s:g} s; {_first_line(exc)}). "
                         "The last complete checkpoint is kept: `lorakit train --resume RUN_FOLDER --gpus N` "
                         "continues from it")


def follow(cfg, resume_: bool, force: bool, log, watchdog, run_dir: Optional[Path]):
    """A rank other than 0: the same preparation and the same optimizer steps as rank 0, writing nothing and
    printing nothing (rank 0 reports; ``log`` is not used)."""
    from lorakit.train import loop, steps

    def quiet(_line: str) -> None:
        return None

    r = loop.start(cfg, resume_, quiet, run_dir)
    run_cfg, generator, optimizer, scheduler, scaler, start_step = loop.prepare_model(r, resume_, force, quiet,
                                                                                      watchdog)
    next_batch = loop.batches(r, run_cfg)
    # a sharded base: rank 0's other forwards (previews, validation, the LoRA check) are run here too
    forwards = sharding.Lockstep(r, run_cfg, start_step, watchdog) if _G.sharded else None
    for step in range(start_step + 1, run_cfg.training.max_steps + 1):
        watchdog.beat(f"training step {step}")
        steps.update_step(r.adapter, next_batch, run_cfg, generator, optimizer, r.placed.trainable, scaler,
                          r.device, r.compute_dtype)
        if r.ema is not None:
            r.ema.update()
        scheduler.step()
        if forwards is not None:
            forwards.after_step(step)
    if forwards is not None:
        forwards.finish(next_batch)
    return loop.RunResult(r.run.root, r.run.lora_path(), run_cfg.training.max_steps, float("nan"), [])


def _test_fault(step: int) -> None:
    """TEST ONLY (tests/integration/test_multi_gpu.py): LORAKIT_TEST_FAULT="RANK:STEP:exit|hang" makes that rank
    die (os._exit, as a crash: no cleanup) or hang when it reaches that step's gradient exchange."""
    spec = os.environ.get(TEST_FAULT)
    if not spec:
        return
    who, at, how = spec.split(":")
    if int(who) == _G.rank and int(at) == step:
        if how == "exit":
            os._exit(17)
        while True:
            time.sleep(60)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# ====================================================================== the launcher (lorakit train --gpus N)


def launch(cfg, gpus: int, machine_rank: int, argv: list[str], run_folder: Path, log=print) -> int:
    """Start ``gpus`` processes of ``lorakit <argv>`` on this machine (ranks ``machine_rank·gpus …``) and watch
    them. The rendezvous store lives here on machine 0 (it outlives any rank, so a dead rank's last step can be
    read). One that ends badly stops the others (after GRACE_S to stop by themselves); one line names it."""
    d = cfg.distributed
    if gpus < 1:
        raise ConfigError(f"--gpus {gpus}: give 1 or more")
    if not 0 <= machine_rank < d.num_machines:
        raise ConfigError(f"--machine-rank {machine_rank}: distributed.num_machines = {d.num_machines} allows 0 "
                          f"to {d.num_machines - 1}")
    check_config(cfg, gpus * d.num_machines)
    if backend_of(cfg) == "nccl" and torch.cuda.device_count() < gpus:
        raise ConfigError(f"--gpus {gpus}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    port = d.main_process_port
    if port == 0:
        if d.num_machines > 1:
            raise ConfigError("distributed.main_process_port = 0 (any free port) works on one machine only: set the "
                              "port machine 0 listens on")
        with socket.socket() as s:
            s.bind((d.main_process_ip, 0))
            port = s.getsockname()[1]
    from torch.distributed import TCPStore

    try:
        # machine 0 serves the store on every interface (its ranks reach it at main_process_ip); another machine
        # waits up to distributed.timeout_s for machine 0 to be up
        store = TCPStore("127.0.0.1" if machine_rank == 0 else d.main_process_ip, port, is_master=machine_rank == 0,
                         wait_for_workers=False, timeout=timedelta(seconds=30 if machine_rank == 0 else d.timeout_s))
    except Exception as exc:  # a port in use or not allowed, an address that is not this machine's
        where = "listen on" if machine_rank == 0 else "reach machine 0's rendezvous store at"
        raise ConfigError(f"distributed.main_process_ip / main_process_port: cannot {where} {d.main_process_ip}:"
                          f"{port} ({_first_line(exc)})") from None
    return _run_ranks(cfg, gpus, machine_rank, argv, run_folder, store, port, log)


def _run_ranks(cfg, gpus: int, machine_rank: int, argv: list[str], run_folder: Path, store, port: int, log) -> int:
    """Start this machine's ranks, watch them until all end; the exit code of the whole."""
    d = cfg.distributed
    size = gpus * d.num_machines
    procs: dict[int, subprocess.Popen] = {}
    for local in range(gpus):
        me = machine_rank * gpus + local
        env = dict(os.environ, RANK=str(me), WORLD_SIZE=str(size), LOCAL_RANK=str(local),
                   LOCAL_WORLD_SIZE=str(gpus), MASTER_ADDR=d.main_process_ip, MASTER_PORT=str(port),
                   **{AGENT_STORE: "1"})
        procs[me] = subprocess.Popen([sys.executable, "-m", "lorakit", *argv], env=env)
    log(f"lorakit: {gpus} process(es) started on this machine (ranks {min(procs)}-{max(procs)} of {size}, "
        f"{backend_of(cfg)})")

    interrupted: list[int] = []

    def forward(signum, frame):  # Ctrl-C or SIGTERM: every rank stops as one process would
        interrupted.append(signum)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    main_thread = threading.current_thread() is threading.main_thread()  # (signal handlers: the main thread only)
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    try:
        first = _watch(procs)
        if interrupted:
            log(f"lorakit: interrupted; the last complete checkpoint is kept: `lorakit train --resume {run_folder} "
                f"--gpus {gpus}` continues from it")
            return 130
        if first is None:
            return 0
        log(_blame(first, store, size, gpus, run_folder))
        return 1
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _watch(procs: dict[int, subprocess.Popen]) -> Optional[tuple[int, int]]:
    """Wait until every rank has ended; after the first that ends badly, give the others GRACE_S to stop by
    themselves, then SIGTERM, then (10 s on) SIGKILL. That first one (rank, exit code), None when all succeeded."""
    first: Optional[tuple[int, int]] = None
    stop_at = kill_at = float("inf")
    while True:
        codes = {me: p.poll() for me, p in procs.items()}
        if first is None:
            first = next(((me, c) for me, c in codes.items() if c not in (None, 0)), None)
            if first is not None:
                stop_at = time.monotonic() + GRACE_S
        if all(c is not None for c in codes.values()):
            break
        if time.monotonic() > stop_at:
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
            stop_at, kill_at = float("inf"), time.monotonic() + 10
        if time.monotonic() > kill_at:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    return first


def _blame(first: tuple[int, int], store, size: int, gpus: int, run_folder: Path) -> str:
    """One line: the rank that stopped the run (one that fell behind the others — hung — or else the first to end
    badly), how, and the last step it reached."""
    reached: dict[int, int] = {}
    for other in range(size):
        with contextlib.suppress(Exception):
            if store.check([f"lorakit/arrived/{other}"]):
                reached[other] = int(store.get(f"lorakit/arrived/{other}"))
    me, code = first
    if reached and min(reached.values()) < max(reached.values()):
        behind = min(reached, key=lambda k: (reached[k], k))
        if behind != me:
            me, code = behind, None
    how = ("did not reach the next gradient exchange (hung, or ended on another machine)" if code is None else
           f"was killed ({signal.Signals(-code).name})" if code < 0 else f"exited with code {code}")
    last = f"its last step reached: {reached[me]}" if me in reached else "before its first step"
    return (f"lorakit: rank {me} {how}, {last}; the other ranks were stopped. The last complete checkpoint is kept: "
            f"`lorakit train --resume {run_folder} --gpus {gpus}` continues from it")
