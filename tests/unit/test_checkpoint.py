"""Resume state: bitwise round trip, identical continuation, incomplete/damaged folders, RNG, fingerprints."""

import os
import random

import numpy as np
import pytest
import torch

from lorakit.models.base import LoraModule
from lorakit.train import checkpoint as ck
from lorakit.train.optim import build_scheduler


def _lora():
    g = torch.Generator().manual_seed(0)
    return {"unet": {"a.to_q": LoraModule(down=torch.randn(4, 8, generator=g), up=torch.randn(6, 4, generator=g),
                                          alpha=3.5),
                     "conv": LoraModule(down=torch.randn(2, 3, 3, 3, generator=g),
                                        up=torch.randn(5, 2, 1, 1, generator=g).to(torch.bfloat16), alpha=1.0)},
            "te1": {"text_model.encoder.layers.0.self_attn.q_proj": LoraModule(
                down=torch.randn(2, 4, generator=g), up=torch.zeros(4, 2), alpha=2.0)}}


def _save(folder, step=5, lora=None, opt_state=None, sched_state=None, data=None):
    ck.save_state(folder, lora=lora or _lora(), optimizer_state=opt_state or {"state": {}, "param_groups": []},
                  scheduler_state=sched_state or {"last_epoch": step}, rng=ck.capture_rng(),
                  data_state=data or {"epoch": 1, "index": 7}, step=step,
                  config_fingerprint={"network": {"rank": 4}, "dataset_hash": "ab" * 32})


def test_round_trip_bitwise(tmp_path):
    folder = tmp_path / "state-step00000005"
    lora = _lora()
    _save(folder, lora=lora)
    assert sorted(os.listdir(tmp_path)) == ["state-step00000005"]
    st = ck.load_state(folder)
    assert st["step"] == 5 and st["data_state"] == {"epoch": 1, "index": 7}
    assert st["config_fingerprint"] == {"network": {"rank": 4}, "dataset_hash": "ab" * 32}
    assert set(st["lora"]) == {"unet", "te1"}
    for comp, mods in lora.items():
        for path, lm in mods.items():
            got = st["lora"][comp][path]
            assert got.down.dtype == lm.down.dtype and torch.equal(got.down, lm.down)
            assert got.up.dtype == lm.up.dtype and torch.equal(got.up, lm.up)
            assert got.alpha == lm.alpha


def _model_and_opt():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8))
    opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=0.01)
    sched = build_scheduler(opt, "cosine", 1, 10)
    return w, opt, sched


def _step(w, opt, sched, i):
    x = torch.linspace(-1, 1, 8) * (i + 1)
    opt.zero_grad()
    ((w @ x) ** 2).mean().backward()
    opt.step()
    sched.step()


def test_optimizer_continues_identically(tmp_path):
    w, opt, sched = _model_and_opt()
    for i in range(4):
        _step(w, opt, sched, i)
    ref = w.detach().clone()

    w1, opt1, sched1 = _model_and_opt()
    for i in range(2):
        _step(w1, opt1, sched1, i)
    lora = {"unet": {"w": LoraModule(down=w1.detach(), up=torch.zeros(1, 16), alpha=1.0)}}
    _save(tmp_path / "s", step=2, lora=lora, opt_state=opt1.state_dict(), sched_state=sched1.state_dict())
    del w1, opt1, sched1

    st = ck.load_state(tmp_path / "s")
    w2, opt2, sched2 = _model_and_opt()
    with torch.no_grad():
        w2.copy_(st["lora"]["unet"]["w"].down)
    opt2.load_state_dict(st["optimizer_state"])
    sched2.load_state_dict(st["scheduler_state"])
    for i in range(2, 4):
        _step(w2, opt2, sched2, i)
    assert torch.equal(w2.detach(), ref)


def test_incomplete_folder_detected(tmp_path):
    folder = tmp_path / "s"
    _save(folder)
    (folder / "COMPLETE").unlink()
    assert not ck.is_complete(folder)
    with pytest.raises(ck.IncompleteStateError, match="incomplete state"):
        ck.load_state(folder)
    with pytest.raises(ck.IncompleteStateError, match="no such"):
        ck.load_state(tmp_path / "nothing")


def test_damaged_file_detected(tmp_path):
    folder = tmp_path / "s"
    _save(folder)
    data = bytearray((folder / "optimizer.pt").read_bytes())
    data[-5] ^= 0xFF
    (folder / "optimizer.pt").write_bytes(bytes(data))
    with pytest.raises(ck.IncompleteStateError, match="optimizer.pt is damaged"):
        ck.load_state(folder)
    _save(folder)
    (folder / "rng.pt").unlink()
    with pytest.raises(ck.IncompleteStateError, match="rng.pt is missing"):
        ck.load_state(folder)


def test_overwrite_keeps_old_until_new_complete(tmp_path, monkeypatch):
    folder = tmp_path / "state-latest"
    _save(folder, step=5)
    real_save = torch.save

    def failing(obj, f, *a, **k):
        if str(f).endswith("rng.pt"):
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError):
        _save(folder, step=10)
    monkeypatch.undo()
    assert ck.load_state(folder)["step"] == 5
    assert sorted(os.listdir(tmp_path)) == ["state-latest"]  # temp folder cleaned up
    _save(folder, step=10)
    assert ck.load_state(folder)["step"] == 10
    assert sorted(os.listdir(tmp_path)) == ["state-latest"]


def test_rng_round_trip_through_disk(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    _save(tmp_path / "s")
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ck.restore_rng(ck.load_state(tmp_path / "s")["rng"])
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_fingerprint_diff():
    saved = {"model": "a.safetensors", "network": {"rank": 16, "alpha": 8.0}, "dataset_hash": "0" * 64,
             "resolution": [1024, 1024]}
    same = {"model": "a.safetensors", "network": {"rank": 16, "alpha": 8.0}, "dataset_hash": "0" * 64,
            "resolution": (1024, 1024)}
    assert ck.fingerprint_diff(saved, same) == []
    cur = {"model": "b.safetensors", "network": {"rank": 32, "alpha": 8.0}, "dataset_hash": "1" * 64, "seed": 1,
           "resolution": [1024, 1024]}
    lines = ck.fingerprint_diff(saved, cur)
    assert lines[0].startswith("dataset_hash: changed")
    assert "model: 'a.safetensors' → 'b.safetensors'" in lines
    assert "network.rank: 16 → 32" in lines
    assert any(l.startswith("seed: not in the saved state") for l in lines)
    assert len(lines) == 4
