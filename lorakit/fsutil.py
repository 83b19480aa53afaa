"""Files lorakit writes, and how it recognises the files it reads: one atomic writer, one file identity.

Layer-neutral (standard library only): config, data, lora, models and train all import it.

Atomic writes (:func:`atomic_path`, :func:`write_bytes`, :func:`write_text`, :func:`write_json`):

* The content goes to a temporary file in the target's folder, named ``.<name>.lk<pid>-<8 hex>.tmp`` (hidden,
  so dataset scans skip it; the pid lets :func:`remove_stale_temps` tell a dead writer's leftover from a
  live one's file). The temp file is flushed and fsynced, renamed over the target (``os.replace``), and the
  folder is fsynced: a crash at any point leaves the old file or the whole new one, never half of one.
* The file gets the mode the user's umask asks for (``0o666 & ~umask``: 0644 under umask 022, 0600 under
  077), like any file ``open(..., "w")`` creates. ``tempfile.mkstemp`` would make it 0600, which a ComfyUI or
  Forge running as another user (Docker, a NAS share) cannot read.
* ``overwrite=False`` never replaces an existing file, race-free (a hard link publishes the temp file only
  where the name is free).

File identity (:func:`path_identity`): a cheap content fingerprint of a (possibly 24 GB) weights file or a
diffusers folder, for cache keys; see its docstring.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from lorakit.errors import LorakitError

PathLike = Union[str, os.PathLike]

TEMP_RE = re.compile(r"^\..+\.lk(\d+)-[0-9a-f]{8}\.tmp$")
"""Names of the temporary files the writer makes (``.<name>.lk<pid>-<hex>.tmp``)."""

_O_BINARY = getattr(os, "O_BINARY", 0)


# ------------------------------------------------------------------------------------------------ durability


def fsync_file(path: PathLike) -> None:
    """Flush a written file to disk."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(folder: PathLike) -> None:
    """Make a rename inside ``folder`` durable (POSIX); skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------- writing


def temp_path_for(path: Path) -> Path:
    """A fresh temp-file name beside ``path`` (not created)."""
    return path.with_name(f".{path.name}.lk{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _create_temp(path: Path) -> Path:
    """Create an empty temp file beside ``path`` with mode 0o666 (the kernel applies the umask)."""
    for _ in range(100):
        tmp = temp_path_for(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path}: could not create a temporary file beside it")


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name is taken, atomically
    except FileExistsError:
        raise LorakitError(f"{path}: already exists; nothing was overwritten (choose another name or move it away)"
                           ) from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise LorakitError(f"{path}: already exists; nothing was overwritten (choose another name or move it "
                               "away)") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on a clean exit it replaces ``path``.

    Any writer that takes a file name works (``safetensors.torch.save_file``, ``torch.save``, Pillow with an
    explicit ``format=``). On an exception the temp file is removed and ``path`` is untouched. The parent
    folder is created if missing. With ``overwrite=False`` an existing ``path`` is a :class:`LorakitError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise LorakitError(f"{path}: already exists; nothing was overwritten (choose another name or move it away)")
    tmp = _create_temp(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 less the umask, as the kernel applied it
    try:
        yield tmp
        if stat.S_IMODE(tmp.stat().st_mode) != mode:  # a writer that replaced the file (safetensors makes 0600)
            os.chmod(tmp, mode)
        fsync_file(tmp)
        _publish(tmp, path, overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes(path: PathLike, payload: bytes, *, overwrite: bool = True) -> Path:
    """Write ``payload`` to ``path`` atomically (see the module docstring); returns ``path``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
    return Path(path)


def write_text(path: PathLike, text: str, *, overwrite: bool = True, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode(encoding), overwrite=overwrite)


def write_json(path: PathLike, obj: Any, *, overwrite: bool = True, **dumps: Any) -> Path:
    """Write ``json.dumps(obj, **dumps)`` and a newline to ``path`` atomically (``indent=2`` unless given)."""
    dumps.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **dumps) + "\n", overwrite=overwrite)


def write_folder_once(target: PathLike, write: Callable[[Path], Any], marker: str) -> bool:
    """Make the folder ``target`` once, whole: ``write(tmp)`` fills a temporary folder beside it, which is then
    renamed into place. A folder already there (its ``marker`` file present) is kept, as is an identical one a
    racing process renamed first. True when this call made it."""
    target = Path(target)
    if (target / marker).is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        write(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: its folder is identical
            if not (target / marker).is_file():
                raise
            return False
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process (or a platform that cannot tell): keep its file
    return True


def remove_stale_temps(folder: PathLike, *, max_age_s: float = 24 * 3600, others_dead: bool = False) -> list[Path]:
    """Delete the writer's temp files in ``folder`` left by a crashed writer: their pid is not running, or
    they are older than ``max_age_s`` (a pid may be reused). ``others_dead``: the caller knows no other process
    writes there (it holds the folder's lock), so every pid but its own is a dead writer's. Returns what was
    removed; other files are never touched."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        m = TEMP_RE.match(p.name)
        if not m or not p.is_file():
            continue
        try:
            old = now - p.stat().st_mtime > max_age_s
        except OSError:
            continue
        pid = int(m.group(1))
        if old or not _pid_alive(pid) or (others_dead and pid != os.getpid()):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


# ------------------------------------------------------------------------------------------- disk errors


def disk_problem(exc: BaseException) -> Union[str, None]:
    """What a failed write says about the disk, or None when it failed for another reason.

    "disk full" for ENOSPC / EDQUOT, "file too large for this file system or the file-size limit (ulimit -f)"
    for EFBIG. Python raises OSError with the errno; safetensors' Rust writer and torch's zip writer raise their
    own errors whose text carries the OS message ("No space left on device", "StorageFull", "os error 28",
    "File too large", "os error 27").
    """
    import errno

    full = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    if isinstance(exc, OSError) and exc.errno in full:
        return "disk full"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "file too large for this file system or the file-size limit (ulimit -f)"
    text = str(exc)
    if any(s in text for s in ("No space left on device", "StorageFull", "os error 28", "Disk quota exceeded",
                               "os error 122")):
        return "disk full"
    if any(s in text for s in ("File too large", "os error 27", "FileTooLarge")):
        return "file too large for this file system or the file-size limit (ulimit -f)"
    return None


def is_disk_full(exc: BaseException) -> bool:
    """True when a write failed for lack of room: a full disk, a quota, or a file-size limit (EFBIG)."""
    return disk_problem(exc) is not None


def printable(path: PathLike) -> str:
    """A path as text any UTF-8 writer takes: bytes of a Linux name that are not UTF-8 become \\xNN escapes."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def utf8_name(path: PathLike) -> bool:
    """Whether a path's text is valid UTF-8 (on Linux a name is bytes; Python keeps undecodable ones as
    surrogates, which no UTF-8 file, header or tokenizer can take)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inside_folder(path: PathLike, folder: PathLike) -> bool:
    """Whether ``path``, with every symlink resolved, lies inside ``folder`` (resolved too)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ identity


def file_identity(path: PathLike, samples: int = 16, chunk: int = 1 << 16) -> str:
    """A cheap content fingerprint of a (possibly 24 GB) weights file, for cache keys (sha256 hex).

    sha256 over: the file size, its mtime (ns), the safetensors header (when the file has a sane one), and
    ``samples`` chunks of ``chunk`` bytes spread evenly over the file. The header and size pin the layout;
    the sampled chunks tell apart fine-tunes with the same layout; mtime makes an in-place edit invalidate the
    caches. About 1 MiB of reads instead of a full hash; a copied file (new mtime) re-encodes its caches once.
    The file's name is not part of it: a renamed file keeps its caches.
    """
    from lorakit.safetensors_header import raw_header  # local: keeps this module standard-library only at import

    path = Path(path)
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as fh:
        h.update(raw_header(fh, st.st_size) or b"")
        for i in range(samples):
            fh.seek(max(0, (st.st_size - chunk) * i // max(1, samples - 1)))
            h.update(fh.read(chunk))
    return h.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt")
"""What :func:`path_identity` fingerprints in a folder: weights, configs, tokenizer files."""


def path_identity(path: PathLike, sub: str = "") -> str:
    """:func:`file_identity` of a file, or of a folder (``path / sub``): every weights/config/tokenizer file
    below it, by relative name and a 4-chunk file identity. Raises ``FileNotFoundError`` for a missing path."""
    path = Path(path)
    if path.is_file():
        return file_identity(path)
    root = path / sub if sub else path
    if not root.is_dir():
        raise FileNotFoundError(str(root))
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.suffix in WEIGHT_SUFFIXES):
        h.update(str(p.relative_to(root)).encode())
        h.update(file_identity(p, samples=4).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- locking


class LockHeld(LorakitError):
    """Another process holds the lock; ``holder`` is what it wrote into the lock file (may be empty)."""

    def __init__(self, path: Path, holder: dict) -> None:
        self.path, self.holder = path, holder
        super().__init__(f"{path} is locked by {describe_holder(holder)}")


def describe_holder(holder: dict) -> str:
    """``pid 123 on host gpu1, started 2026-12-07 01:23:45 UTC`` (what is known of it)."""
    if not holder.get("pid"):
        return "another process (it has not written its details yet)"
    when = holder.get("started")
    when_s = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when)) if isinstance(when, (int, float)) else "?"
    return f"pid {holder['pid']} on host {holder.get('host', '?')}, started {when_s}"


class FileLock:
    """An OS lock (``fcntl.flock``, exclusive, non-blocking) on ``path``, held until :meth:`release` or the
    process ends in any way (the kernel drops it with the file descriptor, SIGKILL included). The holder's pid,
    host and start time are written into the file so that a refused process can name it. Where ``fcntl`` does not
    exist (Windows) :attr:`supported` is False and nothing is locked."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def supported(self) -> bool:
        try:
            import fcntl  # noqa: F401
        except ImportError:
            return False
        return True

    def acquire(self, **info: Any) -> "FileLock":
        """Take the lock or raise :class:`LockHeld` naming the holder."""
        if self._fd is not None or not self.supported:
            return self
        import fcntl
        import socket

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_lock_holder(self.path)
            os.close(fd)
            raise LockHeld(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), **info}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale holder for the next reader
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def read_lock_holder(path: PathLike) -> dict:
    """What the holder wrote into a lock file ({} when nothing readable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
