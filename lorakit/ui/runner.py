"""``python -m lorakit.ui.runner JOB_DIR ATTEMPT -- python -m lorakit train ...``: runs one job attempt.

The web UI starts this in a session of its own (``start_new_session``), so closing, killing or restarting the UI
never reaches the run. It starts the given command with its output appended to ``JOB_DIR/train.log``, records both
process ids in ``runner.json`` and, when the command ends, its exit status in ``exit.json`` (both written
atomically and tagged with ATTEMPT, so a restarted UI can tell this attempt's files from an earlier one's).
SIGTERM and SIGINT sent to the runner are passed on to the command (the run then saves what it can and stops).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    """Temp file + rename, like :func:`lorakit.data.cache.atomic_write_bytes`, which is not used here because its
    module imports torch: this process only waits, and must start in milliseconds and stay small."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux: field 22 of /proc/PID/stat); None when unknown or gone.
    Together with the pid it names one process: a pid reused by another program has another start time."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    if fields and fields[0] in ("Z", "X"):  # a zombie has finished: it only waits to be reaped
        return None
    return fields[19] if len(fields) > 19 else None


def main(argv: list[str]) -> int:
    if len(argv) < 4 or "--" not in argv:
        print("usage: python -m lorakit.ui.runner JOB_DIR ATTEMPT -- COMMAND ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    job_dir, attempt = Path(argv[0]), int(argv[1])
    command = argv[split + 1:]
    children: list[subprocess.Popen] = []
    stop: list[int] = []

    def forward(signum, _frame):  # installed before the command starts: a stop that comes early is not lost
        stop.append(signum)
        for child in children:
            try:
                child.send_signal(signum)
            except OSError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log = open(job_dir / "train.log", "ab", buffering=0)
    log.write(f"\n=== attempt {attempt}: {' '.join(command)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
    started = time.time()  # before the run can write anything: its run.json is this attempt's when updated since
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             cwd=job_dir)
    children.append(child)
    if stop:
        child.send_signal(stop[0])
    write_json(job_dir / "runner.json", {"attempt": attempt, "runner_pid": os.getpid(),
                                         "runner_start": process_start(os.getpid()), "child_pid": child.pid,
                                         "child_start": process_start(child.pid), "started_at": started})
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:  # pragma: no cover - Python retries waits itself (PEP 475)
            continue
    write_json(job_dir / "exit.json", {"attempt": attempt, "rc": rc, "ended_at": time.time()})
    log.write(f"=== attempt {attempt} ended with exit status {rc}\n".encode())
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
