"""lorakit.safetensors_header: the one header reader refuses corrupt, huge and deeply nested headers in one
line naming the file, reads a real file's header exactly, and everything that reads headers goes through it."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

import lorakit.safetensors_header as sth
from lorakit.errors import ModelLoadError


def _file(path: Path, raw: bytes, length: int | None = None, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _refused(path: Path) -> str:
    with pytest.raises(ModelLoadError) as e:
        sth.read_safetensors_header(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg) < 400, msg
    return msg


def test_a_real_file_reads_back_exactly(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    path = tmp_path / "ok.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"ss_network_dim": "4"})
    header, meta = sth.read_safetensors_header(path)
    assert meta == {"ss_network_dim": "4"}
    assert {k: (v["dtype"], v["shape"]) for k, v in header.items()} == {"a": ("F32", [2, 3]), "b": ("BF16", [4])}
    spans = sorted(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
    assert spans == [4 * 2, 6 * 4]


@pytest.mark.parametrize("raw, length, data, expected", [
    (b"", None, b"", "not JSON"),
    (b"{not json", None, b"", "not JSON"),
    (b"[1, 2]", None, b"", "not a JSON object"),
    (b"\xff\xfe{}", None, b"", "not JSON"),
    (b"{}", 1 << 40, b"", "header length 1099511627776 is over"),
    (b"{}", 4096, b"", "header of 4096 bytes, file of"),
    (json.dumps({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}}).encode(), None, b"\0" * 4,
     "is F32[1099511627776] = 4398046511104 bytes but spans 4"),
    (json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 50]}}).encode(), None, b"\0" * 16,
     "truncated file"),
])
def test_corrupt_and_huge_headers_are_one_line(tmp_path, raw, length, data, expected):
    path = _file(tmp_path / "bad.safetensors", raw, length, data)
    assert expected in _refused(path)


def test_a_file_shorter_than_the_length_field(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\1\2\3")
    assert "(3 bytes, too short for a header)" in _refused(path)


@pytest.mark.parametrize("depth", [9, 200, 100_000])
def test_nested_headers_are_refused_without_recursing(tmp_path, depth):
    """Depth 9 (over the limit of 8) is caught after parsing; 100 000 would exhaust Python's recursion."""
    nest = "[" * depth + "]" * depth
    raw = ('{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": %s}}' % nest).encode()
    path = _file(tmp_path / "deep.safetensors", raw, data=b"\0")
    assert "nested more than 8 deep" in _refused(path)


def test_the_deepest_valid_nesting_passes(tmp_path):
    raw = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": [[[[[[]]]]]]}}'  # depth 8
    header, _ = sth.read_safetensors_header(_file(tmp_path / "ok.safetensors", raw, data=b"\0"))
    assert header["w"]["shape"] == [1]


@pytest.mark.parametrize("blob, size, expected", [
    (struct.pack("<Q", 2) + b"{}", 10, b"{}"),
    (struct.pack("<Q", 0) + b"", 8, None),
    (struct.pack("<Q", 1 << 40) + b"{}", 10, None),
    (struct.pack("<Q", 50) + b"{}", 10, None),
    (b"\1\2", 2, None),
])
def test_raw_header_bounds(blob, size, expected):
    assert sth.raw_header(io.BytesIO(blob), size) == expected


def test_every_header_read_goes_through_the_one_reader(tmp_path, monkeypatch):
    """The LoRA loader, the SDXL checkpoint check, FLUX.1's encoder check and variant detection all call it."""
    from lorakit.lora import io as lio
    from lorakit.models.flux1 import adapter as flux_adapter
    from lorakit.models.flux1 import load as flux_load
    from lorakit.models.sdxl import load as sdxl_load

    path = _file(tmp_path / "x.safetensors", b"[[[[[[[[[[1]]]]]]]]]]")
    assert lio.read_safetensors_header is sth.read_safetensors_header
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        lio.load_lora_file(path)
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        sdxl_load.read_header(path)
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        flux_load.check_encoder_file(path, "ae", allow_pickle=False)
    assert flux_adapter.variant_from_header(path) is None
    dev = _file(tmp_path / "dev.safetensors",
                b'{"guidance_in.in_layer.weight": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', data=b"\0")
    assert flux_adapter.variant_from_header(dev) == "dev"
    # a header whose claimed length is huge is refused before it is read, never allocated
    huge = _file(tmp_path / "huge.safetensors", b"{}", length=(1 << 63))
    assert flux_adapter.variant_from_header(huge) is None
