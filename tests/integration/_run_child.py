"""Run `lorakit <args>` in this process, pausing forever at a chosen point so that a test can SIGKILL it there.

Why a wrapper instead of a hook inside lorakit: the pause points are test-only, and keeping them here means the
shipped code has no switch that changes its behaviour. The wrapper patches functions lorakit calls anyway
(``os.replace``, ``torch.save``, the loop's ``train_step``) and then runs the real CLI.

Environment:
  LORAKIT_PAUSE_AT  one of
      ``step:N``            at the start of the N-th call of train_step (mid-step)
      ``replace:SUBSTR``    just before the first os.replace whose destination contains SUBSTR (a temporary
                            file or folder is fully written but not yet moved into place: mid-save)
      ``torchsave:SUBSTR``  just before the first torch.save to a path containing SUBSTR (some files of a
                            resume state are written, others not: mid-save)
  LORAKIT_PAUSE_MARKER  a file to create once the pause point is reached (the test waits for it, then kills)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def _pause(marker: str) -> None:
    Path(marker).write_text(f"{os.getpid()}\n")
    while True:  # wait for SIGKILL
        time.sleep(60)


def _install(point: str, marker: str) -> None:
    kind, _, arg = point.partition(":")
    if kind == "step":
        import lorakit.train.steps as loop

        real_step, calls = loop.train_step, {"n": 0}

        def paused_step(*a, **k):
            calls["n"] += 1
            if calls["n"] == int(arg):
                _pause(marker)
            return real_step(*a, **k)

        loop.train_step = paused_step
    elif kind == "replace":
        real_replace = os.replace

        def paused_replace(src, dst, *a, **k):
            if arg in str(dst):
                _pause(marker)
            return real_replace(src, dst, *a, **k)

        os.replace = paused_replace
    elif kind == "torchsave":
        import torch

        real_save = torch.save

        def paused_save(obj, f, *a, **k):
            if arg in str(f):
                _pause(marker)
            return real_save(obj, f, *a, **k)

        torch.save = paused_save
    else:
        raise SystemExit(f"_run_child: unknown LORAKIT_PAUSE_AT {point!r}")


if __name__ == "__main__":
    if os.environ.get("LORAKIT_PAUSE_AT"):
        _install(os.environ["LORAKIT_PAUSE_AT"], os.environ["LORAKIT_PAUSE_MARKER"])
    from lorakit.cli import main

    sys.exit(main(sys.argv[1:]))
