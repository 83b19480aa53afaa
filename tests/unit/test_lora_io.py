"""Atomic writes, header validation of crafted files, pickle refusal, hashes vs hashlib."""

import hashlib
import json
import os
import struct

import pytest
import safetensors.torch
import torch

from lorakit.errors import LorakitError, ModelLoadError
from lorakit.lora import io as lio


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"lora_unet_x.lora_down.weight": torch.randn(4, 8, generator=g).half(),
            "lora_unet_x.lora_up.weight": torch.randn(8, 4, generator=g).half(),
            "lora_unet_x.alpha": torch.tensor(4.0)}


def test_atomic_save_round_trip_leaves_no_temp(tmp_path):
    path = tmp_path / "out" / "a.safetensors"
    t = _tensors()
    t["nc"] = torch.randn(4, 6).t()  # non-contiguous is fine
    t["shared"] = t["lora_unet_x.lora_down.weight"]  # so is a tensor stored twice
    lio.save_safetensors_atomic(path, t, {"ss_network_dim": "4", "k": "v"})
    assert os.listdir(path.parent) == ["a.safetensors"]
    back, md = lio.load_lora_file(path)
    assert md == {"ss_network_dim": "4", "k": "v"}
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)
    with pytest.raises(AssertionError, match="must be str"):
        lio.save_safetensors_atomic(path, t, {"ss_network_dim": 4})
    with pytest.raises(LorakitError, match="already exists"):
        lio.save_safetensors_atomic(path, t, {}, overwrite=False)


def test_crash_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    lio.save_safetensors_atomic(path, _tensors(), {"v": "1"})
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x10\x00\x00\x00partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        lio.save_safetensors_atomic(path, {"x": torch.zeros(3)}, {"v": "2"})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.safetensors"]


def _craft(path, header: dict, data: bytes = b"", raw_len: int | None = None):
    h = json.dumps(header).encode()
    n = len(h) if raw_len is None else raw_len
    path.write_bytes(struct.pack("<Q", n) + h + data)
    return path


@pytest.fixture
def no_alloc(monkeypatch):
    """Fail the test if tensor loading is ever reached."""
    def boom(*a, **k):
        raise AssertionError("tensor data was loaded before the header was validated")
    monkeypatch.setattr(safetensors.torch, "load_file", boom)


@pytest.mark.parametrize("header,data,raw_len,msg", [
    ({}, b"", 2 ** 40, "header length"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"", 10 ** 6, "truncated"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None, "ends at byte 16"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "spans 8"),
    ({"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, None, "spans 16"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}, b"\0" * 8, None, "unsupported dtype"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, None, "offsets"),
    ({"__metadata__": {"x": 1}}, b"", None, "strings to strings"),
])
def test_bad_headers_rejected_before_allocation(tmp_path, no_alloc, header, data, raw_len, msg):
    path = _craft(tmp_path / "bad.safetensors", header, data, raw_len)
    with pytest.raises(ModelLoadError, match=msg) as e:
        lio.load_lora_file(path)
    assert str(e.value).startswith(f"{path}: ")


def test_bad_json_and_short_file(tmp_path, no_alloc):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(ModelLoadError, match="not JSON"):
        lio.load_lora_file(p)
    p.write_bytes(b"abc")
    with pytest.raises(ModelLoadError, match="too short"):
        lio.read_safetensors_header(p)


def test_read_header_of_valid_file(tmp_path):
    path = tmp_path / "ok.safetensors"
    t = _tensors()
    safetensors.torch.save_file(t, str(path), metadata={"a": "b"})
    header, md = lio.read_safetensors_header(path)
    assert md == {"a": "b"}
    assert header["lora_unet_x.lora_down.weight"]["dtype"] == "F16"
    assert header["lora_unet_x.lora_down.weight"]["shape"] == [4, 8]
    assert header["lora_unet_x.alpha"]["shape"] == []


def test_pickle_refused_unless_allowed(tmp_path):
    p = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, p)
    with pytest.raises(ModelLoadError, match="pickles that can run code.*allow_pickle"):
        lio.load_lora_file(p)
    t, md = lio.load_lora_file(p, allow_pickle=True)
    assert torch.equal(t["w"], torch.ones(2)) and md == {}
    q = tmp_path / "obj.ckpt"
    torch.save({"w": torch.ones(2), "fn": print}, q)
    with pytest.raises(ModelLoadError, match="more than tensors"):
        lio.load_lora_file(q, allow_pickle=True)


def test_model_hashes_vs_hashlib(tmp_path):
    g = torch.Generator().manual_seed(1)
    t = {"big.lora_down.weight": torch.randn(320, 1000, generator=g), "big.alpha": torch.tensor(8.0)}
    md = {"ss_network_dim": "320", "ss_output_name": "x", "modelspec.title": "x"}
    model_hash, legacy = lio.model_hashes(t, md)
    # independent: write the ss_*-only serialisation to disk and hash its bytes with hashlib
    ref = tmp_path / "ref.safetensors"
    safetensors.torch.save_file(t, str(ref), metadata={"ss_network_dim": "320", "ss_output_name": "x"})
    raw = ref.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert model_hash == hashlib.sha256(raw[8 + n:]).hexdigest()
    assert legacy == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    assert len(raw) > 0x110000 and len(legacy) == 8
    # data-only hash: metadata does not move it; the legacy hash sees ss_* changes but not other keys
    mh2, lg2 = lio.model_hashes(t, {**md, "ss_output_name": "a much longer output name", "modelspec.title": "y"})
    assert mh2 == model_hash and lg2 != legacy
    assert lio.model_hashes(t, {**md, "modelspec.title": "other"}) == (model_hash, legacy)


def test_small_file_legacy_hash_is_empty_hash():
    _, legacy = lio.model_hashes(_tensors(), {})
    assert legacy == hashlib.sha256(b"").hexdigest()[:8]


def test_file_hashes(tmp_path):
    p = tmp_path / "m.bin"
    data = os.urandom(0x100000 + 0x10000 + 123)
    p.write_bytes(data)
    assert lio.file_sha256(p, chunk_size=4096) == hashlib.sha256(data).hexdigest()
    assert lio.file_legacy_hash(p) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
