"""A real `lorakit train` process killed with SIGKILL mid-step, mid-save and mid-caching leaves the previous
complete checkpoint readable and resumes to the end; a resume through a kill is bit-exact (with caption
shuffle/dropout and flips on); resume refuses changed settings; an existing run folder is never reused.

The child process (tests/integration/_run_child.py) runs the real CLI and pauses at a named point so the kill
lands exactly there; the parent waits for the pause marker, then sends SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.lora.io import load_lora_file
from lorakit.train import checkpoint
from lorakit.train.rundir import RunDir
from tests.integration.test_train_e2e import tiny_model, write_run_toml

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("_run_child.py")
NO_SAMPLES = "sample.prompts=[]"
AUGMENT = ("data.shuffle_caption=true", "data.caption_dropout_rate=0.2", "data.flip_aug=true")
# everything that draws random numbers at once: LoRA dropout, previews at the save step (whose dropout must be off
# and whose generators must be their own), caption shuffle and dropout, flips, noise offset, min-SNR weighting
STRESS = (*AUGMENT, "network.dropout=0.25", "sample.every_n_steps=3", "training.noise_offset=0.05",
          "training.min_snr_gamma=5")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", **extra)
    env.pop("LORAKIT_PAUSE_AT", None)
    env.update(extra)
    return env


def resume(run: Path, capsys) -> tuple[int, str, str]:
    """`lorakit train --resume RUN` in this process (the kill needs a real process; the resume does not, and
    in-process saves the ~5 s import of a fresh interpreter). Returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main(["train", "--resume", str(run)])
    out, err = capsys.readouterr()
    return rc, out, err


def kill_at(point: str, tmp: Path, *args: str) -> str:
    """Start `lorakit ARGS` in a child that pauses at ``point``; SIGKILL it there. Returns its stderr."""
    marker = tmp / f"paused-{point.replace(':', '_').replace('/', '_')}"
    err_path = tmp / f"{marker.name}.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, str(CHILD), *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=err, env=_env(LORAKIT_PAUSE_AT=point, LORAKIT_PAUSE_MARKER=str(marker)))
        deadline = time.monotonic() + 300  # a loaded 2-core machine takes minutes to get there
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"child ended (rc {proc.returncode}) before {point}: {err_path.read_text()}")
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"child never reached {point}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    return err_path.read_text()


def assert_consistent(run: Path, name: str, complete_steps: list[int]) -> None:
    """The invariant after any kill: every visible LoRA loads, exactly ``complete_steps`` have a complete
    state, each verifies (COMPLETE + manifest checksums), and nothing half-written is mistaken for complete."""
    for f in run.glob("*.safetensors"):
        tensors, _ = load_lora_file(f)
        assert tensors and all(torch.isfinite(t.float()).all() for t in tensors.values()), f
    rd = RunDir(run, name)
    assert [int(p.name[4:]) for p in rd.complete_states()] == complete_steps
    for p in rd.complete_states():
        state = checkpoint.load_state(p, verify=True)
        assert state["step"] == int(p.name[4:])


def loss_rows(run: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"], r["epoch"]) for r in rows if "loss" in r]


def assert_same_lora(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def assert_finished(run: Path, name: str, rc: int, err: str) -> None:
    assert rc == 0, err[-3000:]
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 6 and status["export_problems"] == []
    assert_consistent(run, name, [3, 6])
    assert [r[0] for r in loss_rows(run)] == [1, 2, 3, 4, 5, 6]
    assert not list((run / "state").glob("*.tmp-*")) and not list((run / "state").glob("*.old-*"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    paths = tiny_model("sdxl", tmp / "model")
    return tmp, paths


def assert_same_samples(a: Path, b: Path, name_a: str, name_b: str) -> None:
    """The same preview images (pixel for pixel) under the same step/prompt names."""
    from PIL import Image
    import numpy as np

    sa = {p.name.removeprefix(name_a): p for p in (a / "samples").glob("*.png") if p.name.startswith(name_a + "_")}
    sb = {p.name.removeprefix(name_b): p for p in (b / "samples").glob("*.png") if p.name.startswith(name_b + "_")}
    assert sa.keys() == sb.keys() and sa, (sorted(sa), sorted(sb))
    for k in sa:
        assert np.array_equal(np.asarray(Image.open(sa[k])), np.asarray(Image.open(sb[k]))), k


def test_kill_mid_step_resumes_exactly_with_augmentation(world, capsys):
    """SIGKILL in step 5 (after the step-3 preview and checkpoint); the resumed run equals an uninterrupted one
    bitwise, loss curve and previews included, with LoRA dropout, previews, caption shuffle and dropout, flips,
    noise offset and min-SNR on (so no text-encoder cache)."""
    tmp, paths = world
    toml = write_run_toml(tmp, "sdxl", paths, name="aug")
    assert main(["train", str(toml), *STRESS, "save.name=full"]) == 0
    full = tmp / "out" / "full"
    assert not (tmp / "cache" / "text").exists() or not any((tmp / "cache" / "text").iterdir())

    kill_at("step:5", tmp, "train", str(toml), *STRESS)
    run = tmp / "out" / "aug"
    assert_consistent(run, "aug", [3])
    assert [r[0] for r in loss_rows(run)] == [1, 2, 3, 4]
    rc, out, err = resume(run, capsys)
    assert "resumed from" in out and "step00000003 at step 3" in out
    assert_finished(run, "aug", rc, err)
    assert_same_lora(full / "full.safetensors", run / "aug.safetensors")
    assert_same_lora(full / "full-step00000003.safetensors", run / "aug-step00000003.safetensors")
    assert loss_rows(full) == loss_rows(run)
    assert_same_samples(full, run, "full", "aug")


# the save points of the step-3 checkpoint of a stress run, in the order a save passes them, and the checkpoints
# complete at each (every kill resumes bitwise equal to the uninterrupted run)
SAVE_POINTS = [
    ("replace:stress-step00000003.safetensors", []),       # the step-3 LoRA written to its temp name, not renamed
    ("torchsave:step00000003.tmp-", []),                    # the state half written in its temporary folder
    ("replace:state/step00000003", []),                     # the state complete in its temporary folder
    ("step:4", [3]),                                        # the checkpoint complete, the next step begins
    ("torchsave:step00000006.tmp-", [3]),                   # the final save half written
]


@pytest.mark.slow
@pytest.mark.parametrize("point, survivors", SAVE_POINTS, ids=[p for p, _ in SAVE_POINTS])
def test_kill_at_each_save_point_resumes_bitwise(world, point, survivors, capsys):
    """A SIGKILL at each point of a save in a run with everything random on resumes bitwise equal to an
    uninterrupted run (in another folder), loss curve and previews included; the kill's temp files are gone."""
    import shutil

    tmp, paths = world
    toml = write_run_toml(tmp, "sdxl", paths, name="stress")
    full = tmp / "out" / "stressfull"
    if not (full / "run.json").exists():
        assert main(["train", str(toml), *STRESS, "save.name=stressfull"]) == 0
    run = tmp / "out" / "stress"
    shutil.rmtree(run, ignore_errors=True)
    kill_at(point, tmp, "train", str(toml), *STRESS)
    assert_consistent(run, "stress", survivors)
    rc, out, err = resume(run, capsys)
    assert_finished(run, "stress", rc, err)
    assert_same_lora(full / "stressfull.safetensors", run / "stress.safetensors")
    assert_same_lora(full / "stressfull-step00000003.safetensors", run / "stress-step00000003.safetensors")
    assert loss_rows(full) == loss_rows(run)
    assert_same_samples(full, run, "stressfull", "stress")
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("point, survivors", [
    # the final save's state: lora.safetensors written into the temporary folder, optimizer.pt not yet
    ("torchsave:step00000006.tmp-", [3]),
    # the step-3 LoRA file fully written to its temporary name, not yet renamed: no checkpoint exists yet
    ("replace:tiny-step00000003.safetensors", []),
])
def test_kill_mid_save_keeps_previous_checkpoint(world, point, survivors, capsys):
    tmp, paths = world
    toml = write_run_toml(tmp, "sdxl", paths, name="tiny")
    run = tmp / "out" / "tiny"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    kill_at(point, tmp, "train", str(toml), NO_SAMPLES)
    assert_consistent(run, "tiny", survivors)
    if survivors:
        assert list((run / "state").glob("step00000006.tmp-*")), "the kill should leave a partial state"
        assert not (run / "state" / "step00000006").exists()
    else:
        assert list(run.glob(".tiny-step00000003.safetensors.*.tmp")), "the kill should leave a temp file"
        assert not (run / "tiny-step00000003.safetensors").exists()
    rc, out, err = resume(run, capsys)
    if survivors:
        assert "resumed from" in out and "step00000003 at step 3" in out
    else:
        assert "has no complete checkpoint" in out and "starting again from step 0" in out
    assert_finished(run, "tiny", rc, err)


def test_kill_mid_caching_then_resume(world, capsys):
    """Killed while the first latent is being written: no checkpoint, a config.toml, a resumable folder."""
    tmp, paths = world
    toml = write_run_toml(tmp, "sdxl", paths, name="cachekill")
    cache = tmp / "cache-kill"
    kill_at("replace:latents", tmp, "train", str(toml), NO_SAMPLES, f"data.cache_dir={json.dumps(str(cache))}")
    run = tmp / "out" / "cachekill"
    assert (run / "config.toml").is_file()
    assert_consistent(run, "cachekill", [])
    assert not list((cache / "latents").glob("*.safetensors")), "no latent was complete at the kill"
    assert list((cache / "latents").glob(".*.tmp"))
    rc, out, err = resume(run, capsys)
    assert "has no complete checkpoint" in out
    assert_finished(run, "cachekill", rc, err)
    assert len(list((cache / "latents").glob("*.safetensors"))) == 4


def test_partial_state_is_never_taken_for_complete(tmp_path, monkeypatch):
    """A step folder without COMPLETE, or with COMPLETE but a damaged file, is skipped with a warning."""
    run = RunDir(tmp_path / "r", "x")
    run.create()
    lora = {"unet": {"a.b": checkpoint.LoraModule(down=torch.ones(2, 3), up=torch.zeros(3, 2), alpha=1.0)}}
    for step in (3, 6):
        checkpoint.save_state(run.state_path(step), lora=lora, optimizer_state={"state": {}, "param_groups": []},
                              scheduler_state={}, step=step, config_fingerprint={"s": step},
                              rng={**checkpoint.capture_rng(), "loop_generator": torch.Generator().get_state()},
                              data_state={"epoch": 0, "position": step})
    (run.state_path(9)).mkdir()
    (run.state_path(9) / "lora.safetensors").write_bytes(b"partial")
    assert run.latest_state() == run.state_path(6)
    with open(run.state_path(6) / "optimizer.pt", "r+b") as fh:
        fh.seek(40)
        fh.write(b"\x00\xff")
    import lorakit.train.resume as loop

    lines: list[str] = []
    chosen = []

    def stop(saved, current):  # restore() compares fingerprints right after picking a state: stop there
        chosen.append(saved)
        raise RuntimeError("stop after choosing")

    monkeypatch.setattr(checkpoint, "fingerprint_diff", stop)
    with pytest.raises(RuntimeError, match="stop after choosing"):
        loop.restore(run, {"k": 3}, False, {}, {}, None, None, None, None, lines.append)
    assert len(lines) == 1 and "step00000006: optimizer.pt is damaged" in lines[0], lines
    assert "trying the checkpoint before it" in lines[0] and chosen == [{"s": 3}]
    # no complete state at all: restore says so and starts at 0
    for step in (3, 6):
        (run.state_path(step) / "COMPLETE").unlink()
    lines.clear()
    assert loop.restore(run, {}, False, {}, {}, None, None, None, None, lines.append) == 0
    assert "has no complete checkpoint" in lines[0] and "starting again from step 0" in lines[0]


def test_resume_refuses_changed_dataset_and_rank(world, capsys):
    tmp, paths = world
    data = tmp / "data-changed"
    from lorakit.toy.world import write_demo_dataset

    write_demo_dataset(data, n=4, repeats=2)
    toml = write_run_toml(tmp, "sdxl", paths, name="changed")
    assert main(["train", str(toml), NO_SAMPLES, "training.max_steps=3", f"data.dir={json.dumps(str(data))}"]) == 0
    run = tmp / "out" / "changed"
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "network.rank=8", "training.max_steps=4"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("lorakit: error: cannot resume") and "(network.rank: 4 → 8)" in err
    assert "Use --force-resume to continue anyway" in err
    # --force-resume cannot load a rank-4 LoRA into a rank-8 network: a clear error, no traceback
    assert main(["train", "--resume", str(run), "network.rank=8", "training.max_steps=4", "--force-resume"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("lorakit: error: ") and "do not fit the injected (8, 64) / (64, 8)" in err

    imgs = sorted(p for p in data.rglob("*.png"))
    extra = imgs[0].with_name("added.png")
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 200, 30)).save(extra)
    extra.with_suffix(".txt").write_text("a green square")
    cached = sorted((tmp / "cache" / "latents").iterdir())
    assert main(["train", "--resume", str(run), "training.max_steps=4"]) == 2
    assert sorted((tmp / "cache" / "latents").iterdir()) == cached  # refused before any model work
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"lorakit: error: cannot resume {run / 'state' / 'step00000003'}: the run's settings "
                          "changed (dataset_hash: changed (") and "--force-resume" in err
    before = load_file(run / "changed.safetensors")
    assert main(["train", "--resume", str(run), "training.max_steps=4", "--force-resume"]) == 0
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 4
    after = load_file(run / "changed.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_new_run_into_existing_folder_is_refused(world, capsys):
    tmp, paths = world
    toml = write_run_toml(tmp, "sdxl", paths, name="taken")
    run = tmp / "out" / "taken"
    run.mkdir(parents=True)
    (run / "my-notes.txt").write_text("mine")
    assert main(["train", str(toml), NO_SAMPLES]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorakit: error: ") and err.count("\n") == 1
    assert f"{run} already holds a run; nothing was overwritten" in err and f"--resume {run}" in err
    assert sorted(p.name for p in run.iterdir()) == ["my-notes.txt"]
    assert (run / "my-notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_kill_at_random_times_then_resume(world, capsys):
    """SIGKILL a real `python -m lorakit train` at random moments, resuming each time; after every kill the
    invariant holds (visible LoRAs load, complete states verify); the last resume finishes the run."""
    import random
    import shutil

    tmp, paths = world
    toml = write_run_toml(tmp, "sdxl", paths, name="random")
    run = tmp / "out" / "random"
    rng = random.Random()
    args = ["train", str(toml), NO_SAMPLES, "training.max_steps=12", "save.every_n_steps=2"]
    kills: list[float] = []
    for attempt in range(4):
        if not (run / "config.toml").exists():  # killed before the run folder was set up: start it afresh
            shutil.rmtree(run, ignore_errors=True)
            cmd = args
        else:
            cmd = ["train", "--resume", str(run)]
        proc = subprocess.Popen([sys.executable, "-m", "lorakit", *cmd], cwd=REPO, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(3.0, 9.0)  # a whole run takes ~10-15 s, its imports ~4 s
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            kills.append(round(delay, 1))
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, (attempt, delay, proc.returncode)
        if run.exists():
            states = [int(p.name[4:]) for p in RunDir(run, "random").complete_states()]
            assert_consistent(run, "random", states)
    if not (run / "run.json").exists() or json.loads((run / "run.json").read_text()).get("status") != "finished":
        rc, out, err = resume(run, capsys) if (run / "config.toml").exists() else (main(args), "", "")
        assert rc == 0, err[-2000:]
    assert kills, "no kill happened: the test proved nothing"
    print("killed after", kills, "s")
    st = json.loads((run / "run.json").read_text())
    assert st["status"] == "finished" and st["step"] == 12 and st["export_problems"] == []
    assert [r[0] for r in loss_rows(run)] == list(range(1, 13))
    assert_consistent(run, "random", [10, 12])
