"""Ctrl-C / SIGTERM of a long command: the first stops it with exit status 130 wherever it lands, a second one right
after is ignored, a later one ends a hanging stop at once (lorakit/interrupts.py; the CI flake where a run exited
with -2 after printing the right message)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lorakit import interrupts
from lorakit.cli import main
from lorakit.errors import Interrupted

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = "lorakit: interrupted at step 2: the last complete checkpoint is step 2 (stand-in)"


def run_child(case: str, tmp_path: Path) -> tuple[int, str, Path]:
    marker = tmp_path / "run.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "tests.unit.stop_child", case, str(marker)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr, marker


def test_a_stop_that_lands_in_code_run_from_a_string_still_exits_130(tmp_path):
    # CPython remembers a bare KeyboardInterrupt leaving exec("...") as unhandled and, under `python -m`, kills the
    # process with SIGINT at exit: -2 here before the fix, whatever lorakit caught and printed
    rc, err, marker = run_child("exec", tmp_path)
    assert (rc, marker.read_text()) == (130, "interrupted"), err
    assert err.strip().splitlines() == [MESSAGE]


def test_a_second_signal_right_after_the_first_does_not_cut_the_stop_short(tmp_path):
    rc, err, marker = run_child("echo", tmp_path)  # SIGTERM, then at once SIGINT while run.json is written
    assert (rc, marker.read_text()) == (130, "interrupted"), err
    assert err.strip().splitlines() == [MESSAGE]


def test_a_signal_after_main_returned_does_not_change_the_exit_status(tmp_path):
    rc, err, marker = run_child("after", tmp_path)
    assert (rc, marker.read_text()) == (130, "interrupted"), err
    assert err.strip().splitlines() == [MESSAGE]


def test_a_later_second_signal_ends_a_hanging_stop_at_once_with_130(tmp_path):
    rc, err, marker = run_child("abort", tmp_path)
    assert rc == 130 and not marker.exists(), err  # it ended inside the stop, before run.json was written
    assert err.strip().splitlines() == ["lorakit: SIGINT while stopping: exiting now without waiting for the stop to "
                                        "finish; the last complete checkpoint is kept"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_handler_raises_once_ignores_an_echo_and_exits_130_on_a_later_signal(capsys):
    clock, exits = Clock(), []
    handler = interrupts.StopHandler(clock=clock, exit=exits.append, echo_s=1.0)
    with pytest.raises(Interrupted) as info:
        handler(signal.SIGTERM)
    assert type(info.value) is not KeyboardInterrupt  # the exact type CPython would remember as unhandled
    clock.now += 0.5
    assert handler(signal.SIGINT) is None and exits == []  # the same stop, arriving twice: ignored
    clock.now += 0.5
    assert handler(signal.SIGINT) is None and exits == [130]  # one second after the first: give up waiting
    assert "SIGINT while stopping: exiting now" in capsys.readouterr().err


def test_a_stop_inside_a_deferred_block_is_raised_when_the_block_ends():
    clock, exits, done = Clock(), [], []
    handler = interrupts.StopHandler(clock=clock, exit=exits.append, echo_s=1.0)
    with pytest.raises(Interrupted):
        with handler.deferred():
            with handler.deferred():  # nested: the outer end raises
                assert handler(signal.SIGTERM) is None  # an import under way is not broken off
                done.append("inner")
            done.append("outer")
    assert done == ["inner", "outer"] and exits == [] and not handler.pending
    clock.now += 5
    with handler.deferred():  # a second signal a while later still ends a block that hangs
        handler(signal.SIGINT)
    assert exits == [130]
    assert interrupts.deferred().__enter__() is None  # nothing installed: a plain block


def test_a_stop_that_a_library_swallowed_is_raised_before_the_next_step(monkeypatch):
    handler = interrupts.StopHandler()
    monkeypatch.setattr(interrupts, "_active", handler)
    interrupts.check()  # no stop yet: nothing
    try:
        handler(signal.SIGTERM)
    except KeyboardInterrupt:
        pass  # e.g. "Exception ignored in: <weakref callback>": the run went on
    with handler.deferred():
        interrupts.check()  # inside a deferred block: the block's end is where a stop is raised
    with pytest.raises(Interrupted):
        interrupts.check()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signal handlers: main thread")
def test_main_gives_the_callers_handlers_back_after_a_command(tmp_path, monkeypatch):
    monkeypatch.setattr("lorakit.logs.quiet_third_party", lambda: None)  # (it imports diffusers: seconds)

    def mine(signum, frame):
        raise AssertionError("not called")

    before = {s: signal.signal(s, mine) for s in interrupts.SIGNALS}
    try:
        assert main(["train", str(tmp_path / "missing.toml")]) == 2  # installs, fails on the config, releases
        assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == {s: mine for s in interrupts.SIGNALS}
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_stop_during_a_checkpoint_save_is_raised_after_the_save(monkeypatch):
    """save_checkpoint runs inside deferred(): a stop that lands while the LoRA and the resume state are written (the
    first save imports torch's serialisation code) waits for the save, so the run stops with this checkpoint whole."""
    from lorakit.train import resume

    handler = interrupts.StopHandler()
    monkeypatch.setattr(interrupts, "_active", handler)
    written = []

    def save(*args):
        handler(signal.SIGTERM)  # arrives mid-save: not raised here
        written.append(args[9])  # step
        return Path("lora.safetensors")

    monkeypatch.setattr(resume, "_save_checkpoint", save)
    with pytest.raises(Interrupted):
        resume.save_checkpoint(*([None] * 9), 7, {}, None)
    assert written == [7]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signal handlers: main thread")
def test_caption_installs_the_stop_handler_and_keeps_what_it_wrote(tmp_path, monkeypatch, capsys):
    """`lorakit caption` takes Ctrl-C/SIGTERM as train does (Interrupted, not a bare KeyboardInterrupt: no -2 exit
    under python -m), also while its model loads, and says that a rerun resumes."""
    import lorakit.caption.backends as backends

    monkeypatch.setattr("lorakit.logs.quiet_third_party", lambda: None)
    (tmp_path / "a.png").write_bytes(b"")

    def load(*args, **kwargs):
        # (without the handler a SIGTERM would end the test process: check it is there first)
        assert isinstance(signal.getsignal(signal.SIGTERM), interrupts.StopHandler), "caption did not install()"
        os.kill(os.getpid(), signal.SIGTERM)  # the installed handler raises at once
        raise AssertionError("the SIGTERM did not stop the caption command")

    monkeypatch.setattr(backends, "load_captioner", load)
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    try:
        assert main(["caption", str(tmp_path), "--captioner", "toy"]) == 130
    finally:
        interrupts._active = None
        for s, h in before.items():
            signal.signal(s, h)
    err = capsys.readouterr().err
    assert "interrupted; the captions written are kept" in err and "run the same command again to resume" in err
