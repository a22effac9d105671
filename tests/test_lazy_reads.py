"""Opening a checkpoint reads headers and pickles only: never the tensor bytes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import detect

from .conftest import proc_read_bytes

BIG = SampleSpec(layers=4, hidden=1024, heads=16, kv_heads=4, ffn=4096, vocab=32000, dtype=torch.bfloat16)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("big")
    return {
        "megatron-torch": write_megatron_torch(BIG, base / "mt", tp=2, pp=2),
        "hf": write_hf(BIG, base / "hf", shards=3),
    }


@pytest.mark.parametrize("kind", ["megatron-torch", "hf"])
def test_open_reads_no_tensor_bytes(big: dict[str, Path], kind: str) -> None:
    path = big[kind]
    total = _dir_bytes(path)
    assert total > 200 * 2**20  # a multi-hundred-MB checkpoint
    before = proc_read_bytes()
    ckpt = detect(path)
    ckpt.to_json()
    read = proc_read_bytes() - before
    assert ckpt.kind == kind and ckpt.model_tensors()
    assert sum(t.nbytes for t in ckpt.model_tensors()) > 200 * 2**20
    assert read < 2**20 + total // 200, f"read {read} bytes of {total}"
    # loading one tensor reads about that tensor's bytes, not the file
    info = max(ckpt.model_tensors(), key=lambda t: t.nbytes)
    before = proc_read_bytes()
    ckpt.load(info)
    if kind == "megatron-torch":  # safetensors loads through mmap, which rchar does not count
        assert proc_read_bytes() - before < info.nbytes + 2**20


def test_open_time_does_not_grow_with_tensor_size(tmp_path: Path) -> None:
    small = SampleSpec(layers=4, hidden=64, heads=16, kv_heads=4, ffn=256, vocab=32000 // 16, dtype=torch.bfloat16)
    write_megatron_torch(small, tmp_path / "small", tp=2, pp=2)
    write_megatron_torch(BIG, tmp_path / "big", tp=2, pp=2)
    ratio = _dir_bytes(tmp_path / "big") / _dir_bytes(tmp_path / "small")
    times = {}
    for name in ("small", "big"):
        start = time.perf_counter()
        for _ in range(3):
            detect(tmp_path / name)
        times[name] = time.perf_counter() - start
    assert ratio > 50
    assert times["big"] < times["small"] * 5 + 0.5, times
