"""Ctrl-C and SIGTERM for the long commands (``train``, ``sweep``): the first stops the work cleanly, a later one
ends a stop that hangs (docs/resume.md, "Stopping a run").

The first SIGINT or SIGTERM raises :class:`lorakit.errors.Interrupted` in the main thread: the training loop marks
run.json "interrupted", the command prints which checkpoint a resume continues from, and the process exits with 130.
From then on the handlers stay installed and never raise again, so nothing of that stop (the run.json write, the
message, the interpreter's exit) is cut short by another signal:

- one within ``ECHO_S`` seconds of the first is the same stop arriving twice (a terminal's Ctrl-C reaches every
  process of its group while a launcher forwards SIGTERM to its ranks) and is ignored;
- a later one means "stop waiting": one line on stderr, and the process ends at once with 130 (``os._exit``).
  Checkpoints are written whole (temp file, then rename), so the last complete one is kept; run.json may still say
  "running" and the metrics of the last steps may be missing (a resume handles both).

Inside :func:`deferred` (third-party imports and drawing in the loop) the first stop waits for the block's end; one
that a library swallowed is raised again before the next step (:func:`check`).

Why :class:`~lorakit.errors.Interrupted` and never a bare KeyboardInterrupt: CPython (3.10 to 3.13 at least)
remembers a KeyboardInterrupt of exactly that type that leaves code run from a string (``exec``/``eval`` of a string:
every dataclass and namedtuple created, e.g. while matplotlib is first imported to draw loss.png after the first
save) as "unhandled", even when lorakit catches it a moment later. A process started as ``python -m lorakit`` (the
web UI's, the sweep's and the launcher's children, the tests) then kills itself with SIGINT at exit: status -2
instead of 130, after the correct message and run.json. A subclass is not remembered. Python's own SIGINT handler
raises the bare type, which is why SIGINT is handled here too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Optional

from lorakit.errors import Interrupted

ECHO_S = 1.0  # a second signal sooner than this after the first is the same stop, delivered twice
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopHandler:
    """The signal handler of one long command. ``clock`` and ``exit`` are parameters so that tests can drive it
    without sending signals."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, exit: Callable[[int], object] = os._exit,
                 echo_s: Optional[float] = None) -> None:
        self.clock, self.exit, self.echo_s = clock, exit, echo_s
        self.first: Optional[tuple[int, float]] = None  # (signal, when) of the stop under way
        self.deferring, self.pending = 0, False  # inside deferred(); a stop waiting for its end

    def __call__(self, signum: int, frame=None) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (signum, now)
            if self.deferring:
                self.pending = True
                return
            raise Interrupted()  # no message: the loop names the checkpoint, cli.main prints the generic line
        if now - self.first[1] < (ECHO_S if self.echo_s is None else self.echo_s):
            return  # the same stop delivered twice: the first is being handled
        try:
            sys.stdout.flush()
            print(f"lorakit: {signal.Signals(signum).name} while stopping: exiting now without waiting for the stop "
                  "to finish; the last complete checkpoint is kept", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - a closed or broken stderr must not keep the process alive
            pass
        self.exit(130)


    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
        if self.pending and not self.deferring:
            self.pending = False
            raise Interrupted()


_active: Optional[StopHandler] = None
_previous: dict[int, object] = {}


def install() -> None:
    """Handle SIGINT and SIGTERM as above until :func:`release`. Only the main thread can install signal handlers:
    called from another one (a caller running a command in a thread), the caller's own handling stays."""
    global _active, _previous
    if _active is not None or threading.current_thread() is not threading.main_thread():
        return
    _active = StopHandler()
    _previous = {s: signal.signal(s, _active) for s in SIGNALS}


def release() -> None:
    """After the command (``cli.main`` calls it): the handlers it replaced come back, so a caller that ran a command
    in its own process (tests, a notebook) gets its Ctrl-C back. After a stop they stay installed, never raising:
    the process is ending, and a signal during its exit must neither turn into a late KeyboardInterrupt nor kill it
    with a status other than 130."""
    global _active, _previous
    if _active is None:
        return
    if _active.first is None:
        for s, handler in _previous.items():
            signal.signal(s, handler)
    _active, _previous = None, {}


def deferred() -> contextlib.AbstractContextManager:
    """A stop that arrives inside the block is raised when the block ends, not inside it. For third-party imports and
    drawing inside the loop (loss.png after a save: matplotlib's first import): CPython turns an exception raised while
    a class is created into a RuntimeError (3.11), one inside a C extension's import into an ImportError, and drops
    one raised in a callback ("Exception ignored"), so a stop landing there failed the run (exit 1) or was lost. A
    second signal a second later still ends the process at once. Nothing happens here without :func:`install`."""
    return _active.deferred() if _active is not None else contextlib.nullcontext()


def check() -> None:
    """Raise a stop that came but was swallowed on its way (CPython drops an exception raised inside a ``__del__`` or
    a weakref callback with "Exception ignored in ..."), so the run does not go on as if nothing had happened:
    ``steps.update_step`` calls it before each step."""
    if _active is not None and _active.first is not None and not _active.deferring:
        raise Interrupted()
