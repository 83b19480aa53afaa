"""lorakit.fsutil: the one atomic writer (modes from the umask, atomicity, fsync, temp clean-up) and the one
file identity; checked through the real writers that use it (LoRA files, config/JSON, metrics, images, caches)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import lorakit.fsutil as fsutil
from lorakit.data.cache import _save as save_cache_entry
from lorakit.data.images import save_image
from lorakit.errors import LorakitError
from lorakit.lora.io import load_lora_file, save_safetensors_atomic
from lorakit.train import checkpoint
from lorakit.train.metrics import MetricsWriter, plot_loss, read_metrics
from tests.unit.read_spy import spy_reads

REPO = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_every_kind(folder: Path) -> list[Path]:
    """One file through each user-visible writer; returns their paths."""
    lora = folder / "out" / "a.safetensors"
    save_safetensors_atomic(lora, {"x.lora_down.weight": torch.ones(2, 3)}, {"ss_network_dim": "2"})
    cfg = fsutil.write_text(folder / "run" / "config.toml", "[training]\nmax_steps = 1\n")
    rep = fsutil.write_json(folder / "run" / "data_report.json", {"usable": 3})
    png = save_image(Image.new("RGB", (8, 8), "red"), folder / "run" / "samples" / "s.png")
    cache = folder / "cache" / "e.safetensors"
    save_cache_entry(cache, {"latent": torch.zeros(4)}, {"key": "k"})
    (folder / "run" / "metrics.jsonl").write_text("".join(f'{{"step": {i}, "loss": {1.0 / i}}}\n' for i in (1, 2, 3)))
    m = MetricsWriter(folder / "run", tensorboard=False, resume_step=2)   # rewrites metrics.jsonl atomically
    m.close()
    loss = plot_loss(read_metrics(folder / "run" / "metrics.jsonl"), folder / "run" / "loss.png")
    assert loss is not None
    state = folder / "run" / "state" / "step00000001"
    lora_state = {"unet": {"a.b": checkpoint.LoraModule(down=torch.ones(2, 3), up=torch.zeros(3, 2), alpha=1.0)}}
    checkpoint.save_state(state, lora=lora_state, optimizer_state={"state": {}, "param_groups": []},
                          scheduler_state={}, rng={}, data_state={}, step=1, config_fingerprint={})
    state_files = sorted(state.iterdir())
    assert {p.name for p in state_files} >= {"lora.safetensors", "optimizer.pt", "manifest.json", "COMPLETE"}
    return [lora, cfg, rep, png, cache, folder / "run" / "metrics.jsonl", loss, *state_files]


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_asks_for(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        paths = _write_every_kind(tmp_path)
    finally:
        os.umask(old)
    assert {str(p): oct(_mode(p)) for p in paths} == {str(p): oct(expected) for p in paths}
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert load_lora_file(paths[0])[1] == {"ss_network_dim": "2"}


def test_replacing_a_private_file_takes_the_umask_mode(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("{}")
    path.chmod(0o600)
    old = os.umask(0o022)
    try:
        fsutil.write_json(path, {"a": 1})
    finally:
        os.umask(old)
    assert _mode(path) == 0o644 and path.read_text() == '{\n  "a": 1\n}\n'


def test_an_error_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "model.safetensors"
    fsutil.write_bytes(path, b"old content")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with fsutil.atomic_path(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    fsutil.write_text(path, "a = 1\n")

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, "replace", no_space)
    with pytest.raises(OSError):
        fsutil.write_text(path, "a = 2\n")
    assert path.read_text() == "a = 1\n" and os.listdir(tmp_path) == ["c.toml"]


def test_a_killed_writer_leaves_the_old_file_and_a_temp_that_cleanup_finds(tmp_path):
    """SIGKILL between writing the temp file and the rename: the target is untouched; the leftover is named
    with the dead writer's pid, so remove_stale_temps deletes it and nothing else."""
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"previous LoRA")
    child = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        import lorakit.fsutil as f
        def pause(src, dst):
            open({str(tmp_path / "ready")!r}, "w").close()
            time.sleep(60)
        f.os.replace = pause
        f.write_bytes({str(target)!r}, b"new LoRA that never lands")
    """)
    proc = subprocess.Popen([sys.executable, "-c", child])
    try:
        for _ in range(600):
            if (tmp_path / "ready").exists():
                break
            assert proc.poll() is None, "the child writer ended early"
            import time

            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert target.read_bytes() == b"previous LoRA"
    leftovers = [p for p in tmp_path.iterdir() if fsutil.TEMP_RE.match(p.name)]
    assert len(leftovers) == 1 and leftovers[0].read_bytes() == b"new LoRA that never lands"
    assert leftovers[0].name.startswith(".lora.safetensors.lk") and f"lk{proc.pid}-" in leftovers[0].name
    live = tmp_path / f".other.json.lk{os.getpid()}-0123abcd.tmp"     # a temp of a writer still running
    live.write_text("{}")
    user = tmp_path / ".notes.lk1-zzzz.tmp"                            # not one of ours: wrong shape
    user.write_text("mine")
    assert fsutil.remove_stale_temps(tmp_path) == leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".notes.lk1-zzzz.tmp", live.name, "lora.safetensors",
                                                                 "ready"])
    os.utime(live, (0, 0))                                             # a day old: the pid may have been reused
    assert fsutil.remove_stale_temps(tmp_path) == [live]


def test_caches_and_run_folders_clear_dead_writers_temps(tmp_path):
    from lorakit.data.cache import LatentCache, TextCache
    from lorakit.train.rundir import RunDir

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)                                            # a pid that has exited
    run = RunDir(tmp_path / "run", "x")
    run.create()
    folders = [tmp_path / "cache" / "latents", tmp_path / "cache" / "text", run.root, run.samples]
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
        (f / f".e.safetensors.lk{dead}-00aa11bb.tmp").write_bytes(b"partial")
        (f / "kept.safetensors").write_bytes(b"whole")
    LatentCache(tmp_path / "cache", "id")
    TextCache(tmp_path / "cache", "id")
    run.prune(keep_last=1)
    run.unlock()  # the run folder's lock file (.lorakit.lock) is the run's own, not a temp
    assert {f.name: sorted(p.name for p in f.iterdir() if p.is_file() and p.name != ".lorakit.lock")
            for f in folders} == {f.name: ["kept.safetensors"] for f in folders}


def test_no_overwrite_refuses_and_keeps_the_file(tmp_path):
    path = tmp_path / "mine.safetensors"
    path.write_bytes(b"the user's file")
    with pytest.raises(LorakitError, match=r"mine\.safetensors: already exists"):
        fsutil.write_bytes(path, b"x", overwrite=False)
    with pytest.raises(LorakitError, match="already exists"):
        save_safetensors_atomic(path, {"a": torch.zeros(1)}, {}, overwrite=False)
    assert path.read_bytes() == b"the user's file" and os.listdir(tmp_path) == ["mine.safetensors"]
    fresh = fsutil.write_bytes(tmp_path / "new.bin", b"abc", overwrite=False)
    assert fresh.read_bytes() == b"abc" and sorted(os.listdir(tmp_path)) == ["mine.safetensors", "new.bin"]


def test_the_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.append("dir" if stat.S_ISDIR(st.st_mode) else f"file:{st.st_size}")
        real(fd)

    monkeypatch.setattr(fsutil.os, "fsync", spy)
    fsutil.write_bytes(tmp_path / "sub" / "a.bin", b"12345")
    assert synced == ["file:5", "dir"]


# ------------------------------------------------------------------------------------------------ identity


def _weights(path: Path, payload: bytes) -> Path:
    header = b'{"w":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (len(payload), len(payload))
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    return path


def _same_mtime(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns))


def test_identity_is_stable_and_follows_the_content(tmp_path):
    payload = bytes(range(256)) * 1024                                   # 256 KiB: 16 chunks cover every byte
    f = _weights(tmp_path / "base.safetensors", payload)
    ns = f.stat().st_mtime_ns
    first = fsutil.file_identity(f)
    assert fsutil.file_identity(f) == first == fsutil.path_identity(f)
    renamed = f.rename(tmp_path / "renamed.safetensors")
    assert fsutil.file_identity(renamed) == first                         # the name is not part of it
    edited = bytearray(payload)
    edited[100_000] ^= 0xFF                                               # same size, same mtime, new byte
    _weights(renamed, bytes(edited))
    _same_mtime(renamed, ns)
    assert fsutil.file_identity(renamed) != first
    _weights(renamed, payload)
    _same_mtime(renamed, ns)
    assert fsutil.file_identity(renamed) == first                         # back to the same bytes and time
    _same_mtime(renamed, ns + 1_000_000)
    assert fsutil.file_identity(renamed) != first                         # touched in place
    other = _weights(tmp_path / "other.safetensors", payload[:-1] + b"\0")
    assert fsutil.file_identity(other) != first


def test_identity_of_a_big_file_reads_about_a_mebibyte(tmp_path, monkeypatch):
    f = tmp_path / "big.safetensors"
    with open(f, "wb") as fh:
        fh.truncate(64 << 20)
    reads = spy_reads(monkeypatch, fsutil)
    fsutil.file_identity(f)
    assert sum(reads) <= 16 * (1 << 16) + 8


def test_folder_identity_follows_weights_and_configs_only(tmp_path):
    root = tmp_path / "model"
    (root / "vae").mkdir(parents=True)
    (root / "unet").mkdir()
    _weights(root / "vae" / "diffusion_pytorch_model.safetensors", b"\1" * 64)
    (root / "vae" / "config.json").write_text('{"scaling_factor": 0.13}')
    _weights(root / "unet" / "diffusion_pytorch_model.safetensors", b"\2" * 64)
    vae = fsutil.path_identity(root, "vae")
    whole = fsutil.path_identity(root)
    (root / "vae" / "notes.png").write_bytes(b"not a weight")
    assert fsutil.path_identity(root, "vae") == vae and fsutil.path_identity(root) == whole
    _weights(root / "unet" / "diffusion_pytorch_model.safetensors", b"\3" * 64)
    assert fsutil.path_identity(root, "vae") == vae and fsutil.path_identity(root) != whole
    (root / "vae" / "config.json").write_text('{"scaling_factor": 0.2}')
    assert fsutil.path_identity(root, "vae") != vae
    with pytest.raises(FileNotFoundError):
        fsutil.path_identity(root, "text_encoder")


def test_both_families_use_the_one_identity():
    import lorakit.models.flux1.adapter as flux
    import lorakit.models.sdxl.adapter as sdxl
    import lorakit.models.unet as unet  # SDXL's and SD 1.5's shared adapter

    assert unet.path_identity is fsutil.path_identity and flux.path_identity is fsutil.path_identity
    assert not hasattr(sdxl, "file_fingerprint") and not hasattr(unet, "file_fingerprint")
    assert not hasattr(flux, "file_identity")
