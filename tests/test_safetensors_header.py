"""Header-only safetensors parsing: agrees with the library and refuses lying headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.safetensors_header import read_header


def _write_raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_matches_safetensors_library(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(5, dtype=torch.int64),
               "s": torch.tensor(2.0), "e": torch.empty(0, 3)}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    with safe_open(str(path), "pt") as fh:
        for name in fh.keys():
            entry = header.entries[name]
            t = fh.get_tensor(name)
            assert entry.shape == tuple(t.shape)
            assert entry.dtype == str(t.dtype).removeprefix("torch.")


GOOD = {"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        ({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 20, "trailing"),
        ({"x": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 16]}}, b"\0" * 16, "needs 24 bytes"),
        ({"x": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
        ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "non-negative"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "data_offsets"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "gap"),
        ({"x": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8, "needs"),
        ({"__metadata__": {"k": 1}, **GOOD}, b"\0" * 16, "__metadata__"),
        ({"x": "nope"}, b"", "not an object"),
    ],
)
def test_lying_headers(tmp_path: Path, header: dict, data: bytes, message: str) -> None:
    path = _write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=message):
        read_header(path)


def test_header_length_beyond_file_and_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CheckpointError, match="exceeds"):
        read_header(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="at least 8"):
        read_header(path)


def test_typed_fast_path_and_careful_validator_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid file takes the typed decode (no Python validation) and gives what the validator gives."""
    import ckptscope.inspectors.safetensors_header as sh

    tensors = {f"layers.{i}.w": torch.randn(i + 1, 3).to(torch.bfloat16 if i % 2 else torch.float32) for i in range(12)}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "x"})
    fast = read_header(path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    careful = sh._validate(path, json.loads(raw[8:8 + n]), 8 + n, len(raw))
    assert fast.metadata == careful.metadata == {"format": "pt", "note": "x"}
    assert {k: (e.dtype, e.shape, e.begin, e.end) for k, e in fast.entries.items()} == \
        {k: (e.dtype, e.shape, e.begin, e.end) for k, e in careful.entries.items()}

    def refuse(*args: object) -> None:
        raise AssertionError("valid header fell back to the slow validator")

    monkeypatch.setattr(sh, "_validate", refuse)
    read_header(path)


def test_names_colliding_with_internal_fields_are_ignored(tmp_path: Path) -> None:
    header = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "ckptscope:name": "evil", "ckptscope:begin": 999}}
    entry = read_header(_write_raw(tmp_path / "c.safetensors", header, b"\0" * 8)).entries["x"]
    assert (entry.name, entry.begin, entry.end) == ("x", entry.end - 8, entry.end)
