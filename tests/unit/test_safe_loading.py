"""Safe loading: pickle files refused unless model.allow_pickle (SDXL base loader and LoRA loader); crafted or
truncated safetensors headers give a one-line ModelLoadError naming the file before any tensor is read."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

import lorakit.safetensors_header as sth
from lorakit.config.schema import ModelCfg
from lorakit.errors import ConfigError, LorakitError, ModelLoadError
from lorakit.lora.io import load_lora_file, read_safetensors_header
from lorakit.models.sdxl.load import load_components, write_tiny_checkpoint
from tests.unit.read_spy import spy_reads


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sdxl"))


def crafted(path: Path, header: dict, data: bytes = b"", header_len: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def one_line_naming(exc: BaseException, path: Path) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.removeprefix("model.checkpoint: ").startswith(f"{path}: "), msg
    return msg


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Fail the test if tensor data is ever loaded (the header check must come first)."""
    def boom(*a, **k):
        raise AssertionError("tensor data was read before the header was validated")

    monkeypatch.setattr(safetensors.torch, "load_file", boom)


# ------------------------------------------------------------------------------------------ pickle files


def test_sdxl_loader_refuses_pickle_unless_allowed(tiny, tmp_path):
    sd = safetensors.torch.load_file(str(tiny["checkpoint"]))
    ckpt = tmp_path / "base.ckpt"
    torch.save({"state_dict": sd}, ckpt)
    with pytest.raises(ConfigError) as e:
        load_components(ModelCfg(checkpoint=str(ckpt), config_dir=str(tiny["config"])))
    msg = str(e.value)
    assert msg.startswith(f"model.checkpoint: {ckpt} is a pickle file, which can run code when loaded")
    assert "model.allow_pickle = true" in msg and "\n" not in msg
    # allowed: the same weights come out as from the safetensors file
    from_pickle = load_components(ModelCfg(checkpoint=str(ckpt), config_dir=str(tiny["config"]), allow_pickle=True))
    from_st = load_components(ModelCfg(checkpoint=str(tiny["checkpoint"]), config_dir=str(tiny["config"])))
    a, b = from_pickle.unet.state_dict(), from_st.unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth", ".CKPT"])
def test_sdxl_vae_and_lora_loader_refuse_pickle(tiny, tmp_path, suffix):
    f = tmp_path / f"thing{suffix}"
    torch.save({"w": torch.ones(2)}, f)
    with pytest.raises(ConfigError, match=r"^model\.vae: .* is a pickle file"):
        load_components(ModelCfg(checkpoint=str(tiny["checkpoint"]), config_dir=str(tiny["config"]), vae=str(f)))
    with pytest.raises(ModelLoadError) as e:
        load_lora_file(f)
    msg = one_line_naming(e.value, f)
    assert "Python pickles that can run code" in msg and "model.allow_pickle = true" in msg
    tensors, meta = load_lora_file(f, allow_pickle=True)
    assert meta == {} and torch.equal(tensors["w"], torch.ones(2))


class _Payload:
    """Unpickling this would run code (create a file); weights_only loading must refuse it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_allowed_pickle_still_runs_no_code(tmp_path):
    target = tmp_path / "pwned"
    f = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": _Payload(str(target))}, f)
    with pytest.raises(ModelLoadError) as e:
        load_lora_file(f, allow_pickle=True)
    assert "holds more than tensors" in one_line_naming(e.value, f)
    assert not target.exists()


# ------------------------------------------------------------------------------------- crafted headers


GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize("header, data, header_len, expected", [
    (GOOD, b"\0" * 16, 2**40, "header length 1099511627776 is over"),
    (GOOD, b"\0" * 16, 10_000, "truncated or not a safetensors file (header of 10000 bytes"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8, None,
     "truncated file: tensor 'w' ends at byte 16 of a 8-byte data section"),
    ({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}}, b"\0" * 16, None,
     "tensor 'w' is F32[4, 4] = 64 bytes but spans 16"),
    ({"w": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 16, None,
     "tensor 'w' is F16[2, 2] = 8 bytes but spans 16"),
    ({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16, None,
     "tensor 'w' has unsupported dtype 'F128'"),
    ({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, b"\0" * 16, None,
     "tensor 'w' has shape [-1, 4]"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16, None,
     "tensor 'w' has offsets [16, 0]"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, None, "overlap"),
    ({"__metadata__": {"k": 1}, **GOOD}, b"\0" * 16, None, "__metadata__ must map strings to strings"),
    ({"w": {"dtype": "F32"}}, b"", None, "entry 'w' lacks dtype/shape/data_offsets"),
])
def test_crafted_headers_rejected_before_any_read(tmp_path, no_tensor_reads, monkeypatch, header, data,
                                                   header_len, expected):
    f = crafted(tmp_path / "lora.safetensors", header, data, header_len)
    reads = spy_reads(monkeypatch, sth)
    with pytest.raises(ModelLoadError) as e:
        load_lora_file(f)
    assert expected in one_line_naming(e.value, f)
    assert max(reads) <= max(8, len(json.dumps(header))), reads  # never the claimed header length


def test_not_json_and_too_short(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{]")
    with pytest.raises(ModelLoadError, match="not JSON"):
        read_safetensors_header(f)
    f.write_bytes(b"abc")
    with pytest.raises(ModelLoadError, match=r"too short for a header"):
        read_safetensors_header(f)
    missing = tmp_path / "gone.safetensors"  # the LoRA reader's words (lora/io.py), not the OS error's
    with pytest.raises(ModelLoadError) as err:
        read_safetensors_header(missing)
    assert str(err.value) == f"{missing}: no such file"


def test_good_header_still_loads(tmp_path):
    f = tmp_path / "ok.safetensors"
    safetensors.torch.save_file({"w": torch.arange(4.0).reshape(2, 2)}, str(f), metadata={"a": "b"})
    header, meta = read_safetensors_header(f)
    assert header["w"]["shape"] == [2, 2] and meta == {"a": "b"}
    tensors, meta = load_lora_file(f)
    assert torch.equal(tensors["w"], torch.arange(4.0).reshape(2, 2))


# ----------------------------------------------------------------------------------- base checkpoints


def test_truncated_base_checkpoint_is_a_clear_error(tiny, tmp_path, no_tensor_reads):
    cut = tmp_path / "cut.safetensors"
    raw = tiny["checkpoint"].read_bytes()
    cut.write_bytes(raw[: int(len(raw) * 0.6)])
    with pytest.raises(ModelLoadError) as e:
        load_components(ModelCfg(checkpoint=str(cut), config_dir=str(tiny["config"])))
    assert "truncated file: tensor " in one_line_naming(e.value, cut)


def test_base_checkpoint_with_wrong_shapes_is_refused(tiny, tmp_path):
    """A consistent header whose shapes do not fit the architecture: refused with the file named."""
    sd = safetensors.torch.load_file(str(tiny["checkpoint"]))
    key = next(k for k in sorted(sd) if k.startswith("model.diffusion_model.") and k.endswith(".weight")
               and sd[k].ndim == 2)
    sd[key] = torch.zeros(sd[key].shape[0] + 3, sd[key].shape[1])
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(sd, str(bad))
    with pytest.raises(LorakitError) as e:
        load_components(ModelCfg(checkpoint=str(bad), config_dir=str(tiny["config"])))
    msg = str(e.value)
    assert msg.startswith(f"{bad}: could not be loaded as SDXL") and "expected shape" in msg and "\n" not in msg
