"""Property-based fuzzing of the two parsers that see untrusted bytes first.

- `read_header` (safetensors): random files, mutated valid files, random JSON headers. It may
  accept or refuse, but refuses only with `CheckpointError`, and what it accepts is consistent
  (entries tile the data section, which ends at end of file).
- The restricted unpickler: random bytes and mutated valid pickles (with exploit payloads in the
  seeds). `safe_loads` may raise any `Exception` (it is the raw parser; callers wrap it in
  `reading()`), never a `BaseException` like SystemExit, never runs code (canary), never hangs
  (hypothesis deadline). Through `open_torch_file` (zip container) only `CheckpointError` escapes.

Examples are derandomized and bounded so the whole file runs in well under a minute.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import math
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptscope.inspectors import CheckpointError
from ckptscope.inspectors.safe_pickle import safe_loads
from ckptscope.inspectors.safetensors_header import ST_DTYPES, read_header
from ckptscope.inspectors.torchfile import iter_lazy_tensors, open_torch_file

CANARY = Path(os.environ.get("TMPDIR", "/tmp")) / f"ckptscope-fuzz-canary-{os.getpid()}"
FUZZ = settings(max_examples=250, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _valid_safetensors() -> bytes:
    from safetensors.torch import save

    return save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16),
                 "c": torch.zeros(0, dtype=torch.int64)}, metadata={"format": "pt"})


VALID_ST = _valid_safetensors()


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


def check_header(path: Path) -> None:
    try:
        header = read_header(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    size = path.stat().st_size
    end = header.data_start
    for entry in sorted(header.entries.values(), key=lambda e: e.begin):
        assert entry.begin == end and entry.end >= entry.begin
        end = entry.end
    assert end == size


@FUZZ
@given(data=st.binary(max_size=512))
def test_safetensors_random_bytes(work: Path, data: bytes) -> None:
    path = work / "random.safetensors"
    path.write_bytes(data)
    check_header(path)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID_ST) - 1), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(VALID_ST))))
def test_safetensors_mutated(work: Path, edits: list[tuple[int, int]], cut: int | None) -> None:
    path = work / "mutated.safetensors"
    path.write_bytes(mutate(VALID_ST, edits, cut))
    check_header(path)


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=8))
entry = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(sorted(ST_DTYPES)), json_scalar),
    "shape": st.one_of(st.lists(st.integers(-2, 2**63), max_size=4), json_scalar),
    "data_offsets": st.one_of(st.lists(st.integers(-2, 64), min_size=2, max_size=2), st.lists(json_scalar, max_size=3)),
})


@FUZZ
@given(header=st.dictionaries(st.text(max_size=12), st.one_of(entry, json_scalar), max_size=5),
       data=st.binary(max_size=64), declared=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_safetensors_random_headers(work: Path, header: dict, data: bytes, declared: int | None) -> None:
    raw = json.dumps(header).encode()
    path = work / "header.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if declared is None else declared) + raw + data)
    check_header(path)


# ----- restricted unpickler ---------------------------------------------------------------------
class _Shell:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {CANARY}",))


SEEDS = [
    pickle.dumps({"args": argparse.Namespace(num_layers=2, dtype=torch.bfloat16, evil=_Shell()),
                  "od": collections.OrderedDict(a=[1, 2.5, "x"]), "size": torch.Size([2, 3]),
                  "np": np.arange(3, dtype=np.int16), "b": b"\x00\xff", "set": {1, 2}}, protocol=p)
    for p in (0, 2, 4, 5)
]


def assert_inert() -> None:
    assert not CANARY.exists(), "a fuzzed pickle ran code"


@FUZZ
@given(data=st.binary(max_size=512))
def test_unpickler_random_bytes(data: bytes) -> None:
    with contextlib.suppress(Exception):  # any ordinary exception is an acceptable refusal
        safe_loads(data)
    assert_inert()


@FUZZ
@given(seed=st.sampled_from(range(len(SEEDS))),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_unpickler_mutated(seed: int, edits: list[tuple[int, int]], cut: int | None) -> None:
    data = mutate(SEEDS[seed], edits, None if cut is None else cut % (len(SEEDS[seed]) + 1))
    with contextlib.suppress(Exception):
        safe_loads(data)
    assert_inert()


def _torch_zip_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0), "args": argparse.Namespace(x=1), "evil": _Shell()}, buf)
    return buf.getvalue()


TORCH_ZIP = _torch_zip_bytes()


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
def test_torch_file_mutated_pickle(work: Path, edits: list[tuple[int, int]]) -> None:
    """Mutate data.pkl inside an otherwise valid torch zip: only CheckpointError may escape."""
    with zipfile.ZipFile(io.BytesIO(TORCH_ZIP)) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    path = work / "mutated.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, raw in members.items():
            zf.writestr(name, mutate(raw, edits, None) if name.endswith("data.pkl") else raw)
    try:
        tf = open_torch_file(path)
        for tensor in iter_lazy_tensors(tf.obj):
            tensor.load()
    except CheckpointError as exc:
        assert "\n" not in str(exc)
    assert_inert()


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_torch_file_mutated_container(work: Path, edits: list[tuple[int, int]], cut: int | None) -> None:
    """Mutate or cut the zip container itself (headers, directory): only CheckpointError may escape."""
    path = work / "container.pt"
    path.write_bytes(mutate(TORCH_ZIP, edits, None if cut is None else cut % (len(TORCH_ZIP) + 1)))
    try:
        tf = open_torch_file(path)
        for tensor in iter_lazy_tensors(tf.obj):
            tensor.load()
    except CheckpointError as exc:
        assert "\n" not in str(exc)
    assert_inert()


# ----- zip central directory: the member a reader picks must be the one torch picks -------------
def _zip_members(state: dict) -> list[tuple[str, bytes]]:
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(buf) as zf:
        return [(i.filename, zf.read(i.filename)) for i in zf.infolist()]


BASE_MEMBERS = _zip_members({"w": torch.arange(4.0)})


def _member_pool() -> list[tuple[str, bytes]]:
    """Members of a different torch file with the same names, plus a decoy archive folder."""
    other = _zip_members({"w": torch.arange(4.0) + 100, "x": torch.ones(2)})
    decoy = [(name.replace("archive/", "decoy/", 1), raw) for name, raw in BASE_MEMBERS if name.endswith(("data.pkl", "data/0"))]
    return BASE_MEMBERS + other + decoy


MEMBER_POOL = _member_pool()


def _flat_tensors(obj: object) -> dict[str, torch.Tensor]:
    from ckptscope.inspectors.torchfile import LazyTensor, flatten

    out = {}
    for name, value in flatten(obj):
        if isinstance(value, (LazyTensor, torch.Tensor)):
            out[name] = value.load() if isinstance(value, LazyTensor) else value
    return out


@FUZZ
@given(inserts=st.lists(st.tuples(st.integers(0, 20), st.sampled_from(range(len(MEMBER_POOL)))), max_size=4),
       drops=st.lists(st.integers(0, 20), max_size=2))
def test_zip_directory_reads_what_torch_reads(work: Path, inserts: list[tuple[int, int]], drops: list[int]) -> None:
    """A valid torch file with members of another file (same names), decoy folders inserted
    anywhere and members dropped: we refuse with a CheckpointError, or we show exactly the
    tensors torch.load shows (duplicate names once made us read the last copy, torch the first)."""
    order = list(range(len(BASE_MEMBERS)))
    for pos in drops:
        if len(order) > 1:
            order.pop(pos % len(order))
    for pos, member in inserts:
        order.insert(pos % (len(order) + 1), member)
    path = work / "members.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for i in order:
                zf.writestr(*MEMBER_POOL[i])
    try:
        ours = _flat_tensors(open_torch_file(path).obj)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    try:
        theirs = _flat_tensors(torch.load(path, weights_only=True))
    except Exception:  # noqa: BLE001 - torch refusing is fine; we opened something torch cannot
        return
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


# ----- DCP chunk table: chunks must tile each tensor exactly ---------------------------------------
def _write_dcp(folder: Path, value: torch.Tensor, boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
    """A DCP folder whose chunks are the given boxes of `value`, stored as raw bytes in one file."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    folder.mkdir(parents=True, exist_ok=True)
    storage, chunks, blob = {}, [], b""
    for offsets, sizes in boxes:
        data = value[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))].contiguous().numpy().tobytes()
        storage[MetadataIndex("w", torch.Size(offsets))] = _StorageInfo("__0_0.distcp", len(blob), len(data))
        chunks.append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)))
        blob += data
    (folder / "__0_0.distcp").write_bytes(blob)
    meta = Metadata({"w": TensorStorageMetadata(TensorProperties(dtype=value.dtype), value.shape, chunks)}, storage_data=storage)
    (folder / ".metadata").write_bytes(pickle.dumps(meta))


@st.composite
def chunk_tables(draw: st.DrawFn) -> tuple[tuple[int, ...], list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """A grid tiling of a small shape, then maybe one box moved, dropped or doubled."""
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    cuts = [sorted(set(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=2))) - {n}) for n in shape]
    edges = [[0, *c, n] for c, n in zip(cuts, shape)]
    grid = [[(e[i], e[i + 1] - e[i]) for i in range(len(e) - 1)] for e in edges]
    boxes = [(tuple(p[0] for p in parts), tuple(p[1] for p in parts)) for parts in _product(grid)]
    action = draw(st.sampled_from(["none", "move", "drop", "double"]))
    k = draw(st.integers(0, len(boxes) - 1))
    if action == "drop" and len(boxes) > 1:
        boxes.pop(k)
    elif action == "double":
        boxes.append(boxes[k])
    elif action == "move":
        axis = draw(st.integers(0, len(shape) - 1))
        offsets, sizes = boxes[k]
        new = draw(st.integers(0, shape[axis] - sizes[axis]))
        boxes[k] = (offsets[:axis] + (new,) + offsets[axis + 1:], sizes)
    return shape, boxes


def _product(grid: list[list[tuple[int, int]]]) -> list[tuple[tuple[int, int], ...]]:
    import itertools

    return list(itertools.product(*grid))


@FUZZ
@given(table=chunk_tables())
def test_dcp_chunk_table_must_tile(work: Path, table: tuple) -> None:
    """Opened complete => every element stored exactly once and read back right; overlaps refused."""
    from ckptscope.inspectors.dcp import DcpReader

    shape, boxes = table
    value = torch.arange(math.prod(shape), dtype=torch.int32).reshape(shape)
    folder = work / f"dcp{abs(hash(repr(table)))}"
    _write_dcp(folder, value, boxes)
    count = np.zeros(shape, dtype=np.int64)
    for offsets, sizes in boxes:
        count[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))] += 1
    try:
        reader = DcpReader(folder)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        assert count.max() > 1, "refused a chunk table without overlaps"
        return
    assert count.max() <= 1, "opened a chunk table with overlapping chunks"
    if not reader.problems:
        assert (count == 1).all(), "opened as complete with a hole"
        assert torch.equal(reader.read_tensor("w"), value)
    else:
        assert (count == 0).any()
