"""``python -m tests.unit.stop_child CASE MARKER``: ``lorakit train`` through ``lorakit.cli.main`` in a process started
with ``-m``, as ``python -m lorakit`` runs it, with stand-ins for the config load, the training and the third-party
log setup (no torch).

The stand-in stops itself the way a signal stops a run: ``os.kill`` of its own process runs the handler at once, so
where the stop arrives is fixed, not a matter of timing. After the stop it does what the loop does (writes MARKER as
the loop writes run.json, then raises ``Interrupted`` naming the checkpoint). CASE:

- ``exec``: SIGTERM arrives while code from a string runs (``exec`` of a string, as in every dataclass and namedtuple
  created during the first import of matplotlib, which draws loss.png after the first save);
- ``echo``: a SIGINT follows the SIGTERM at once, while the stop is being recorded (a terminal's Ctrl-C and a
  launcher's SIGTERM);
- ``after``: a SIGINT arrives after ``main`` has returned 130, before the interpreter exits;
- ``abort``: with ``ECHO_S = 0`` a second signal is a late one: the process must end at once, with 130.
"""

from __future__ import annotations

import os
import signal
import sys
import types
from pathlib import Path

CASE, MARKER = sys.argv[1], Path(sys.argv[2])
MESSAGE = "interrupted at step 2: the last complete checkpoint is step 2 (stand-in)"


def fake_load_config(path, overrides):
    return types.SimpleNamespace(save=types.SimpleNamespace(dir=str(MARKER.parent), name="run"),
                                 distributed=types.SimpleNamespace(num_machines=1))


def fake_train(cfg, **kwargs):
    from lorakit.errors import Interrupted

    try:
        if CASE == "exec":
            exec("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", {})
        else:
            os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the SIGTERM did not stop the stand-in")
    except KeyboardInterrupt:
        if CASE in ("echo", "abort"):
            os.kill(os.getpid(), signal.SIGINT)
        MARKER.write_text("interrupted")
        raise Interrupted(MESSAGE) from None


sys.modules["lorakit.config.load"] = types.SimpleNamespace(load_config=fake_load_config, cfg_notes=lambda cfg: [])
sys.modules["lorakit.train.loop"] = types.SimpleNamespace(train=fake_train)
sys.modules["lorakit.logs"] = types.SimpleNamespace(quiet_third_party=lambda: None)  # it imports diffusers
import lorakit.interrupts  # noqa: E402
from lorakit.cli import main  # noqa: E402

if CASE == "abort":
    lorakit.interrupts.ECHO_S = 0.0
rc = main(["train", "run.toml"])
if CASE == "after":
    os.kill(os.getpid(), signal.SIGINT)
sys.exit(rc)
