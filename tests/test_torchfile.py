"""Lazy torch-file reading agrees with torch.load and rejects damaged files with one line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.torchfile import LazyTensor, flatten, open_torch_file


def _sample() -> dict:
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    return {
        "a": base,
        "view": base[1:4, 2:7],
        "transposed": base.t(),
        "bf16": torch.randn(5, 3).to(torch.bfloat16),
        "int": torch.arange(7, dtype=torch.int64),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "nested": {"list": [torch.ones(2), {"deep": torch.full((2, 2), 7, dtype=torch.float16)}]},
        "param": torch.nn.Parameter(torch.randn(3)),
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_lazy_tensors_equal_torch_load(tmp_path: Path, zip_format: bool) -> None:
    data = _sample()
    path = tmp_path / "file.with.dots.pt"
    torch.save(data, path, _use_new_zipfile_serialization=zip_format)
    tf = open_torch_file(path)
    assert tf.legacy is (not zip_format)
    ref = dict(flatten(torch.load(path, weights_only=True)))
    lazy = dict(flatten(tf.obj))
    assert lazy.keys() == ref.keys()
    for name, value in lazy.items():
        assert isinstance(value, LazyTensor), name
        assert value.shape == tuple(ref[name].shape) and value.dtype == ref[name].dtype
        assert torch.equal(value.load(), ref[name].detach()), name


def test_truncated_zip_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model_optim_rng.pt"
    torch.save({"w": torch.randn(1000)}, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError) as err:
        open_torch_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_storage_member(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    torch.save({"w": torch.randn(10)}, src)
    dst = tmp_path / "dst.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if "/data/" not in info.filename:
                zout.writestr(info, zin.read(info))
    with pytest.raises(CheckpointError, match="missing member"):
        open_torch_file(dst)


def test_not_a_torch_file(tmp_path: Path) -> None:
    for content in (b"", b"hello world, not a pickle", b"PK\x03\x04garbage"):
        path = tmp_path / "x.pt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError):
            open_torch_file(path)


def test_truncated_data_detected_on_load(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.randn(4096)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    path.write_bytes(raw[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        open_torch_file(path).obj["w"].load()
