"""Safe, lazy reading of torch.distributed.checkpoint (DCP) folders: `.metadata` + `*.distcp`.

`FileSystemReader.read_metadata` unpickles `.metadata` with plain `pickle`, which runs whatever
the file names. Here `.metadata` goes through `RestrictedUnpickler` (DCP dataclasses are on its
allowlist; Megatron's `MCoreMetadata` maps to plain `Metadata`), and tensor bytes are read
chunk by chunk: every chunk is a byte range in a `.distcp` file holding either a `torch.save`
zip (decoded with `torch.load(weights_only=True)`) or raw little-endian bytes (DCP's
safetensors serialization). A sub-box read touches only the chunks that overlap the box and
copies each one straight into a preallocated destination, so a converter can pull one layer
(or one expert of one layer) of a layer-stacked Megatron tensor without reading the rest.
"""

from __future__ import annotations

import io
import json
import math
import stat
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dcp_meta import BytesStorageMetadata, Metadata, TensorStorageMetadata
from .dtypes import DType
from .errors import CheckpointError, reading
from .files import file_size, inside, lexists, open_regular
from .safe_pickle import RestrictedUnpickler
from .safetensors_header import StEntry, StHeader, read_header
from .torchfile import _rebuild_hooks, check_view, storage_id, zip_pickle
from .storage import as_path

if TYPE_CHECKING:
    import torch
else:
    from .lazy import torch  # imported by the first tensor read; indexing `.metadata` never needs it

METADATA_FILE = ".metadata"
_ZIP_MAGIC = b"PK"
_MAX_METADATA_BYTES = 4 << 30
_MAX_OBJECT_BYTES = 1 << 30
_MAX_OVERLAP_TESTS = 10_000_000  # pairwise chunk comparisons per tensor (real tensors have a few hundred chunks)


@dataclass(frozen=True)
class DcpChunk:
    """One stored piece of a global tensor: its box in the global shape and its byte range."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str  # relative to the checkpoint folder; "" when `.metadata` has no storage entry
    byte_offset: int
    length: int
    transforms: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


@dataclass(frozen=True)
class DcpTensor:
    """A tensor key of the checkpoint with its global shape, dtype and chunks."""

    key: str
    shape: tuple[int, ...]
    dtype_info: DType  # torch-free: name and itemsize
    chunks: tuple[DcpChunk, ...]

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype (imports torch: for code that reads the tensor)."""
        return self.dtype_info.torch


@dataclass(frozen=True)
class DcpBytes:
    """A bytes entry (BytesStorageMetadata): ShardedObjects, `_extra_state`, `common_state`, rng."""

    key: str
    file: str
    byte_offset: int
    length: int
    transforms: tuple[str, ...] = ()


def load_metadata(path: Path) -> tuple[Any, set[str]]:
    """Unpickle a DCP `.metadata` file with the allowlist. Returns (Metadata, placeholder names);
    the DCP classes are torch-free records (dcp_meta.py)."""
    if not path.exists():
        raise CheckpointError(path, "missing DCP metadata file (.metadata)")
    with reading(path, "garbled DCP metadata"), open_regular(path, "DCP metadata file") as fh:
        size = file_size(fh)
        if size == 0:
            raise CheckpointError(path, "DCP metadata file is empty")
        if size > _MAX_METADATA_BYTES:
            raise CheckpointError(path, f"DCP metadata claims {size} bytes; refusing")
        seen: set[str] = set()
        meta = RestrictedUnpickler(fh, seen=seen).load()
    if not isinstance(meta, Metadata) or not isinstance(getattr(meta, "state_dict_metadata", None), dict):
        raise CheckpointError(path, f"garbled DCP metadata: expected a Metadata object, found {type(meta).__name__}")
    return meta, seen


class DcpReader:
    """Index of one DCP folder; reads whole tensors, sub-boxes of them, and bytes entries."""

    def __init__(self, folder: str | Path, metadata_name: str = METADATA_FILE) -> None:
        self.folder = as_path(folder)
        self.metadata_path = self.folder / metadata_name
        self.metadata, self.placeholders = load_metadata(self.metadata_path)
        self.tensors: dict[str, DcpTensor] = {}
        self.objects: dict[str, DcpBytes] = {}
        self.problems: list[str] = []
        self._st_headers: dict[str, StHeader | None] = {}
        self._sizes: dict[str, int] = {}  # data file -> bytes on disk (from `_check_files`)
        self._index()
        self._check_files()

    # ----- index -----------------------------------------------------------------------
    def _index(self) -> None:
        storage = self._storage_table()
        with reading(self.metadata_path, "garbled DCP metadata"):
            for key, entry in self.metadata.state_dict_metadata.items():
                key = str(key)
                if isinstance(entry, TensorStorageMetadata):
                    self.tensors[key] = self._tensor_entry(key, entry, storage)
                elif isinstance(entry, BytesStorageMetadata):
                    where = storage.get((key, None))
                    self.objects[key] = DcpBytes(key, *where) if where else DcpBytes(key, "", 0, 0)
                    if where is None:
                        self.problems.append(f"{key}: no storage entry in .metadata")
                else:
                    raise CheckpointError(self.metadata_path, f"garbled DCP metadata: {key!r} has entry type {type(entry).__name__}")

    def _storage_table(self) -> dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int, tuple[str, ...]]]:
        """storage_data as {(fqn, chunk offsets or None): (file, byte offset, length, transforms)}."""
        table: dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int, tuple[str, ...]]] = {}
        raw = getattr(self.metadata, "storage_data", None) or {}
        if not isinstance(raw, dict):
            raise CheckpointError(self.metadata_path, "garbled DCP metadata: storage_data is not a mapping")
        with reading(self.metadata_path, "garbled DCP metadata"):
            for index, info in raw.items():
                offset = None if index.offset is None else tuple(int(o) for o in index.offset)
                transforms = tuple(str(t) for t in (getattr(info, "transform_descriptors", None) or ()))
                rel = str(info.relative_path)
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise CheckpointError(self.metadata_path, f"storage path {rel[:80]!r} points outside the checkpoint folder")
                table[(str(index.fqn), offset)] = (rel, int(info.offset), int(info.length), transforms)
        return table

    def _tensor_entry(self, key: str, entry: Any, storage: dict[Any, Any]) -> DcpTensor:
        shape = tuple(int(s) for s in entry.size)
        dtype = entry.properties.dtype
        if not isinstance(dtype, DType):
            raise CheckpointError(self.metadata_path, f"garbled DCP metadata: {key!r} has dtype {dtype!r}")
        chunks = []
        for chunk in entry.chunks:
            offsets = tuple(int(o) for o in chunk.offsets)
            sizes = tuple(int(s) for s in chunk.sizes)
            if len(offsets) != len(shape) or len(sizes) != len(shape) or any(
                o < 0 or s < 0 or o + s > g for o, s, g in zip(offsets, sizes, shape)
            ):
                raise CheckpointError(self.metadata_path, f"garbled DCP metadata: chunk {offsets}+{sizes} of {key!r} is outside {shape}")
            where = storage.get((key, offsets))
            if where is None:
                self.problems.append(f"{key}: chunk at {list(offsets)} has no storage entry in .metadata")
                where = ("", 0, 0, ())
            chunk = DcpChunk(offsets, sizes, *where)
            if chunk.file and chunk.length < chunk.numel * dtype.itemsize:
                raise CheckpointError(self.metadata_path, f"garbled DCP metadata: chunk {list(offsets)}+{list(sizes)} of {key!r} "
                                                          f"needs {chunk.numel * dtype.itemsize} bytes, its storage entry holds {chunk.length}")
            chunks.append(chunk)
        hole = check_tiling(self.metadata_path, key, shape, chunks)
        if hole:
            self.problems.append(hole)
        return DcpTensor(key, shape, dtype, tuple(chunks))

    def _check_files(self) -> None:
        """Cheap stats: a chunk file that is missing or shorter than its ranges makes the folder
        incomplete; one that is not a regular file inside the folder (a symlink out of it, a FIFO,
        a device) is refused."""
        need: dict[str, int] = {}
        for rel, end in self._ranges():
            need[rel] = max(need.get(rel, 0), end)
        for rel, end in sorted(need.items()):
            path = self.folder / rel
            if not lexists(path):
                self.problems.append(f"data file {rel} is missing")
                continue
            real = inside(path, self.folder, "data file", path)
            mode = real.stat().st_mode
            if not stat.S_ISREG(mode):
                raise CheckpointError(path, "data file is not a regular file (FIFO, device or folder); refusing to read it")
            size = real.stat().st_size
            self._sizes[rel] = size
            if size < end:
                self.problems.append(f"data file {rel} is truncated: {size} bytes, chunks need {end}")

    def _ranges(self) -> Iterable[tuple[str, int]]:
        for tensor in self.tensors.values():
            for chunk in tensor.chunks:
                if chunk.file:
                    yield chunk.file, chunk.byte_offset + chunk.length
        for obj in self.objects.values():
            if obj.file:
                yield obj.file, obj.byte_offset + obj.length

    # ----- lookups ---------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self.metadata.state_dict_metadata)

    def files(self) -> list[str]:
        """Relative paths of every data file the metadata points at, in first-use order."""
        seen: dict[str, None] = {}
        for rel, _ in self._ranges():
            seen.setdefault(rel, None)
        return list(seen)

    def tensor(self, key: str) -> DcpTensor:
        found = self.tensors.get(key)
        if found is None:
            what = "a bytes entry, not a tensor" if key in self.objects else "not in the checkpoint"
            raise CheckpointError(self.metadata_path, f"key {key!r} is {what}")
        return found

    def overlapping(self, key: str, offsets: Sequence[int], sizes: Sequence[int]) -> list[DcpChunk]:
        """The chunks of `key` that intersect the box (offsets, sizes)."""
        return [c for c in self.tensor(key).chunks if _intersect(c.offsets, c.sizes, offsets, sizes) is not None]

    # ----- tensor reads ----------------------------------------------------------------
    def read_tensor(self, key: str) -> torch.Tensor:
        """The whole global tensor, assembled from all its chunks."""
        info = self.tensor(key)
        return self.read_box(key, (0,) * len(info.shape), info.shape)

    def read_index(self, key: str, index: Sequence[int]) -> torch.Tensor:
        """The sub-tensor at `index` along the leading axes: `[i]` = layer i, `[i, e]` = layer i expert e."""
        info = self.tensor(key)
        index = tuple(int(i) for i in index)
        if len(index) > len(info.shape):
            raise CheckpointError(self.metadata_path, f"{key!r} has {len(info.shape)} axes; index {list(index)} is too long")
        for axis, (i, n) in enumerate(zip(index, info.shape)):
            if not 0 <= i < n:
                raise CheckpointError(self.metadata_path, f"index {i} on axis {axis} of {key!r} is outside 0..{n - 1}")
        offsets = index + (0,) * (len(info.shape) - len(index))
        sizes = (1,) * len(index) + info.shape[len(index):]
        return self.read_box(key, offsets, sizes).reshape(info.shape[len(index):])

    def read_box(self, key: str, offsets: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
        """Read the box (offsets, sizes) of the global tensor, touching only overlapping chunks."""
        info = self.tensor(key)
        offsets = tuple(int(o) for o in offsets)
        sizes = tuple(int(s) for s in sizes)
        if len(offsets) != len(info.shape) or len(sizes) != len(info.shape) or any(
            o < 0 or s < 0 or o + s > g for o, s, g in zip(offsets, sizes, info.shape)
        ):
            raise CheckpointError(self.metadata_path, f"box {list(offsets)}+{list(sizes)} is outside {key!r} {list(info.shape)}")
        parts = [(c, o) for c in info.chunks if (o := _intersect(c.offsets, c.sizes, offsets, sizes)) is not None]
        for chunk, _ in parts:  # before allocating the box: the bytes must be there (a shape of 2**40 is not)
            if not chunk.file or self._sizes.get(chunk.file, 0) < chunk.byte_offset + chunk.length:
                path = self.folder / chunk.file if chunk.file else self.metadata_path
                raise CheckpointError(path, f"chunk of {key!r} at {list(chunk.offsets)} is missing or truncated")
        out = torch.empty(sizes, dtype=info.dtype)
        covered = 0
        for chunk, (start, stop) in parts:
            src = tuple(slice(a - c, b - c) for a, b, c in zip(start, stop, chunk.offsets))
            dst = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, offsets))
            self.copy_chunk(key, chunk, info.dtype, out, src, dst)
            covered += math.prod(b - a for a, b in zip(start, stop))
        if covered != math.prod(sizes):
            raise CheckpointError(
                self.metadata_path, f"{key!r}: stored chunks cover {covered} of the {math.prod(sizes)} requested elements"
            )
        return out

    def copy_chunk(self, key: str, chunk: DcpChunk, dtype: torch.dtype, out: torch.Tensor,
                   src: tuple[slice, ...], dst: tuple[slice, ...]) -> None:
        """`out[dst] = chunk[src]`: straight from the file when the chunk is plain, else decoded."""
        if not self._read_into(key, chunk, dtype, out, src, dst):  # decoding path: odd payloads, and their errors
            out[dst].copy_(self.read_chunk(key, chunk, dtype)[src])

    def _read_into(self, key: str, chunk: DcpChunk, dtype: torch.dtype, out: torch.Tensor,
                   src: tuple[slice, ...], dst: tuple[slice, ...]) -> bool:
        """Read the overlap `src` of a chunk straight from the file into `out[dst]`: no payload
        read, no `torch.load` of it, no staging copy (each was a full copy of the chunk). Works
        when the chunk's elements are one plain C-order storage at a known place in the file and
        `src` is one contiguous span of it (a layer of a layer-stacked chunk, rows of a TP
        shard); False leaves the chunk to `read_chunk`, which decodes anything else."""
        at = self._chunk_data_offset(key, chunk, dtype)
        span = _contiguous_span(chunk.sizes, src)
        if at is None or span is None:
            return False
        first, count = span
        size = dtype.itemsize
        runs = _runs(tuple(out.shape), dst)
        target = memoryview(out.view(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(b"")
        path = self.folder / chunk.file
        real = inside(path, self.folder, "data file", path)
        with reading(path, f"cannot read {key!r}"), open_regular(real, "data file", nofollow=True) as fh:
            offset = at + first * size
            if len(runs) == 1:  # the destination slice is contiguous too: one read straight into it
                start, length = runs[0]
                fh.seek(offset)
                got = fh.readinto(target[start * size:(start + length) * size])
            else:
                got = _read_runs(fh, offset, target, [(s * size, n * size) for s, n in runs])
        if got != count * size:
            raise CheckpointError(path, f"truncated: {key!r} needs bytes {offset}..{offset + count * size}, file ends at {offset + got}")
        return True

    def _chunk_data_offset(self, key: str, chunk: DcpChunk, dtype: torch.dtype) -> int | None:
        """File offset of the chunk's first element, when its bytes are one plain C-order storage;
        found once per chunk (payloads are located by their zip directory and pickle, which
        must describe exactly this chunk: one contiguous tensor of its shape and dtype)."""
        where = (key, chunk.offsets, chunk.file, chunk.byte_offset, chunk.length)  # safetensors DCP: ranges are not unique
        cache: dict[tuple, int | None] = self.__dict__.setdefault("_data_offsets", {})
        if where in cache:
            return cache[where]
        found = None
        need = chunk.numel * dtype.itemsize
        if chunk.file and not chunk.transforms:
            entry = self._safetensors_entry(key, chunk)
            if entry is not None:
                found = entry.begin if entry.end - entry.begin == need else None
            else:
                found = _payload_data_offset(self.folder / chunk.file, self.folder, chunk, dtype)
        cache[where] = found
        return found

    def read_chunk(self, key: str, chunk: DcpChunk, dtype: torch.dtype) -> torch.Tensor:
        """Decode one chunk: a `torch.save` zip (weights_only) or raw little-endian bytes.

        Raw bytes come from DCP's safetensors serialization, where each .distcp is a safetensors
        file and `.metadata` byte ranges are not usable: the chunk is found by key in its header.
        """
        path = self.folder / chunk.file
        entry = self._safetensors_entry(key, chunk) if chunk.file else None
        if entry is not None:
            buf = self._read_range(key, chunk.file, entry.begin, entry.end - entry.begin, chunk.transforms)
        else:
            buf = self._read_range(key, chunk.file, chunk.byte_offset, chunk.length, chunk.transforms)
        if buf[:2] == _ZIP_MAGIC and entry is None:
            with reading(path, f"cannot decode chunk of {key!r}"):
                data = torch.load(io.BytesIO(buf), weights_only=True, map_location="cpu")
        elif len(buf) == chunk.numel * dtype.itemsize:
            data = torch.frombuffer(bytearray(buf), dtype=dtype).reshape(chunk.sizes) if buf else torch.empty(chunk.sizes, dtype=dtype)
        else:
            raise CheckpointError(path, f"chunk of {key!r} at {list(chunk.offsets)} is neither a torch.save payload nor {chunk.numel} raw elements")
        if not isinstance(data, torch.Tensor) or tuple(data.shape) != chunk.sizes or data.dtype != dtype:
            got = f"{type(data).__name__} {tuple(data.shape)} {data.dtype}" if isinstance(data, torch.Tensor) else type(data).__name__
            raise CheckpointError(path, f"chunk of {key!r} at {list(chunk.offsets)} holds {got}, expected {chunk.sizes} {dtype}")
        return data

    def _safetensors_entry(self, key: str, chunk: DcpChunk) -> StEntry | None:
        """The header entry of `key` when the chunk's file is a safetensors container, else None."""
        rel = chunk.file
        if rel not in self._st_headers:
            self._st_headers[rel] = _sniff_safetensors(self.folder / rel)
        header = self._st_headers[rel]
        if header is None:
            return None
        entry = header.entries.get(key)
        if entry is None:
            raise CheckpointError(header.path, f"safetensors-serialized DCP file has no entry {key!r}")
        saved = _saved_offsets(header).get(key)
        if tuple(entry.shape) != chunk.sizes or (saved is not None and tuple(saved) != chunk.offsets):
            raise CheckpointError(header.path, f"entry {key!r} is {list(entry.shape)} at {saved}, .metadata expects {list(chunk.sizes)} at {list(chunk.offsets)}")
        return entry

    # ----- bytes entries ---------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        """The raw payload of a bytes entry (usually a torch.save of a one-element list)."""
        obj = self.objects.get(key)
        if obj is None:
            what = "a tensor, not a bytes entry" if key in self.tensors else "not in the checkpoint"
            raise CheckpointError(self.metadata_path, f"key {key!r} is {what}")
        if obj.length > _MAX_OBJECT_BYTES:
            raise CheckpointError(self.folder / obj.file, f"bytes entry {key!r} claims {obj.length} bytes; refusing")
        return self._read_range(key, obj.file, obj.byte_offset, obj.length, obj.transforms)

    def read_object(self, key: str, seen: set[str] | None = None) -> Any:
        """A bytes entry decoded safely: torch.save payloads via the allowlist, other bytes as is."""
        buf = self.read_bytes(key)
        if buf[:2] != _ZIP_MAGIC:
            return buf
        obj = self.objects[key]
        with reading(self.folder / obj.file, f"cannot decode bytes entry {key!r}"):
            return safe_torch_loads(buf, seen)

    # ----- raw IO ----------------------------------------------------------------------
    def _read_range(self, key: str, rel: str, offset: int, length: int, transforms: tuple[str, ...]) -> bytes:
        if not rel:
            raise CheckpointError(self.metadata_path, f"{key!r}: no storage entry in .metadata")
        path = self.folder / rel
        if transforms:
            raise CheckpointError(path, f"{key!r} is stored with transforms {list(transforms)} (e.g. compression), which are not supported")
        if not lexists(path):
            raise CheckpointError(path, f"data file for {key!r} is missing")
        real = inside(path, self.folder, "data file", path)
        with reading(path, f"cannot read {key!r}"):
            with open_regular(real, "data file", nofollow=True) as fh:
                fh.seek(offset)
                buf = fh.read(length)  # straight into the bytes object returned (no second copy)
            got = len(buf)
        if got != length:
            raise CheckpointError(path, f"truncated: {key!r} needs bytes {offset}..{offset + length}, file ends at {offset + got}")
        return buf


def _contiguous_span(shape: tuple[int, ...], box: tuple[slice, ...]) -> tuple[int, int] | None:
    """(first element, count) when the box is one contiguous C-order run of a `shape` array:
    single indices, then one range, then whole axes; None otherwise."""
    ranges = [(s.start, s.stop) for s in box]
    wide = next((d for d, (a, b) in enumerate(ranges) if b - a > 1), len(ranges))
    if any(a != 0 or b != n for (a, b), n in zip(ranges[wide + 1:], shape[wide + 1:])):
        return None
    stride, first = 1, 0
    for (a, _), n in zip(reversed(ranges), reversed(shape)):
        first += a * stride
        stride *= n
    return first, math.prod(b - a for a, b in ranges)


def _runs(shape: tuple[int, ...], box: tuple[slice, ...]) -> list[tuple[int, int]]:
    """The box of a C-order `shape` array as (first element, count) runs, in C order."""
    ranges = [(s.start, s.stop) for s in box]
    inner = len(ranges)  # axes from `inner` on are whole: they join the run
    while inner > 0 and ranges[inner - 1] == (0, shape[inner - 1]):
        inner -= 1
    if inner == 0:
        return [(0, math.prod(shape))]
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    length = (ranges[inner - 1][1] - ranges[inner - 1][0]) * strides[inner - 1]
    starts = [ranges[inner - 1][0] * strides[inner - 1]]
    for d in range(inner - 2, -1, -1):  # outer axes: every index of their ranges
        a, b = ranges[d]
        starts = [i * strides[d] + s for i in range(a, b) for s in starts]
    return [(s, length) for s in starts]


def _read_runs(fh: Any, offset: int, target: memoryview, runs: list[tuple[int, int]]) -> int:
    """Read consecutive file bytes from `offset` into the byte runs of `target` (strided
    destination, e.g. a column block of a row-parallel weight): `preadv` in batches of up to
    1024 buffers where there is a descriptor, else one read and a copy per run."""
    import os

    views = [target[s:s + n] for s, n in runs]
    try:
        fd = fh.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    got = 0
    if fd is not None and hasattr(os, "preadv"):
        for i in range(0, len(views), 1024):
            batch = views[i:i + 1024]
            want = sum(len(v) for v in batch)
            n = os.preadv(fd, batch, offset + got)
            got += n
            if n != want:
                return got
        return got
    fh.seek(offset)
    for view in views:
        n = fh.readinto(view)
        got += n
        if n != len(view):
            return got
    return got


class _Window(io.RawIOBase):
    """A byte range of an open file as a seekable file of its own (one DCP payload for zipfile).

    zipfile and the pickle need only the payload's first and last few KB (data.pkl and the
    central directory): both are read once, so locating a chunk costs two reads, not a dozen
    (each read drops the GIL and waits to get it back while other threads run)."""

    EDGE = 8192

    def __init__(self, fh: Any, start: int, length: int) -> None:
        self._fh, self._start, self._length, self._pos = fh, start, length, 0
        self._head = self._tail = b""
        fh.seek(start)
        self._head = fh.read(min(length, self.EDGE))
        tail_at = max(len(self._head), length - self.EDGE)
        fh.seek(start + tail_at)
        self._tail_at, self._tail = tail_at, fh.read(length - tail_at)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf: Any) -> int:
        n = max(0, min(len(buf), self._length - self._pos))
        if not n:
            return 0
        for at, edge in ((0, self._head), (self._tail_at, self._tail)):
            if at <= self._pos and self._pos + n <= at + len(edge):
                memoryview(buf)[:n] = edge[self._pos - at:self._pos - at + n]
                self._pos += n
                return n
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(memoryview(buf)[:n])
        self._pos += got
        return got


class _Storage:
    def __init__(self, dtype: torch.dtype, key: str, numel: int) -> None:
        self.dtype, self.key, self.numel = dtype, key, numel


def _payload_data_offset(path: Path, folder: Path, chunk: DcpChunk, dtype: torch.dtype) -> int | None:
    """File offset of a `torch.save` payload's tensor bytes, when the payload holds exactly one
    contiguous tensor of the chunk's shape and dtype at storage offset 0, in a stored (not
    compressed) member inside the payload's byte range; raw payloads start at their offset.
    Anything else (or anything malformed) is None: the decoding path reads it and names the problem."""
    import pickle

    need = chunk.numel * dtype.itemsize
    try:
        real = inside(path, folder, "data file", path)
        with open_regular(real, "data file", nofollow=True) as fh:
            window = _Window(fh, chunk.byte_offset, chunk.length)
            if window.read(2) != _ZIP_MAGIC:
                return chunk.byte_offset if chunk.length == need else None
            with zipfile.ZipFile(window) as zf:  # type: ignore[arg-type]
                index, data = zip_pickle(path, zf)

            def persistent(pid: Any) -> _Storage:
                return _Storage(*storage_id(path, pid))

            def make(storage: Any, offset: Any, size: Any, stride: Any, dt: Any) -> tuple:
                return ("tensor", storage, int(offset), tuple(int(s) for s in size), None if stride is None else tuple(stride), dt)

            obj = RestrictedUnpickler(io.BytesIO(data), hooks=_rebuild_hooks(make), persistent=persistent, seen=set(),
                                      atoms=frozenset({_Storage})).load()
            if not (isinstance(obj, tuple) and len(obj) == 6 and obj[0] == "tensor" and isinstance(obj[1], _Storage)):
                return None
            _, storage, offset, shape, stride, dt = obj
            contiguous = [math.prod(shape[d + 1:]) for d in range(len(shape))]  # C order (a size-1 axis may have any stride)
            if (offset or shape != chunk.sizes
                    or (stride is not None and any(n > 1 and st != c for n, st, c in zip(shape, stride, contiguous)))
                    or (dt if isinstance(dt, torch.dtype) else storage.dtype) != dtype or storage.dtype != dtype
                    or storage.numel * dtype.itemsize < need):
                return None
            info = index.infos.get(f"{index.prefix}data/{storage.key}")
            if info is None or info.compress_type != zipfile.ZIP_STORED or info.file_size < need:
                return None
            window.seek(info.header_offset)
            header = window.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            return chunk.byte_offset + start if start + need <= chunk.length else None
    except (CheckpointError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, TypeError, KeyError,
            AttributeError, EOFError, IndexError):
        return None


def check_tiling(blame: Path, key: str, shape: tuple[int, ...], chunks: Sequence[DcpChunk]) -> str | None:
    """The chunks of a tensor must not overlap: overlaps plus a hole of the same size would read
    as complete and leave rows uninitialised, so they are refused. Without overlaps, chunks that
    hold fewer elements than the tensor leave a hole: returned as a problem (an incomplete save,
    which `convert` refuses), while reads of the stored part still work."""
    boxes = sorted((c.offsets, c.sizes) for c in chunks if c.numel)
    active: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    tests = 0
    for offsets, sizes in boxes if shape else ():  # sweep along axis 0: only boxes still open there can overlap
        active = [(o, s) for o, s in active if o[0] + s[0] > offsets[0]]
        tests += len(active)
        if tests > _MAX_OVERLAP_TESTS:
            raise CheckpointError(blame, f"garbled DCP metadata: {len(boxes)} chunks of {key!r} are too many to check; refusing")
        for o, s in active:
            if _intersect(o, s, offsets, sizes) is not None:
                raise CheckpointError(blame, f"garbled DCP metadata: chunks {list(o)}+{list(s)} and {list(offsets)}+{list(sizes)} of {key!r} overlap")
        active.append((offsets, sizes))
    held, total = sum(math.prod(sizes) for _, sizes in boxes), math.prod(shape)
    if held > total:  # only a scalar can get here: two chunks of one element
        raise CheckpointError(blame, f"garbled DCP metadata: the chunks of {key!r} hold {held} elements, the tensor {list(shape)} has {total}")
    return f"{key}: chunks hold {held} of its {total} elements" if held < total else None


def _intersect(
    c_off: Sequence[int], c_size: Sequence[int], b_off: Sequence[int], b_size: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Global [start, stop) of the overlap of two boxes, or None when they do not meet."""
    if math.prod(b_size) == 0:
        return None
    start = tuple(max(a, b) for a, b in zip(c_off, b_off))
    stop = tuple(min(a + s, b + t) for a, s, b, t in zip(c_off, c_size, b_off, b_size))
    if any(lo >= hi for lo, hi in zip(start, stop)):
        return None
    return start, stop


def _sniff_safetensors(path: Path) -> StHeader | None:
    """Parse the file as safetensors when it starts like one (8-byte length, then a JSON object)."""
    try:
        with open_regular(path, "data file") as fh:
            head = fh.read(9)
            size = file_size(fh)
    except (OSError, CheckpointError):
        return None
    if len(head) < 9 or head[8:9] != b"{" or int.from_bytes(head[:8], "little") + 8 > size:
        return None
    return read_header(path)


def _saved_offsets(header: StHeader) -> dict[str, list[int]]:
    """DCP records each chunk's global offsets in the safetensors metadata (DCP_SHARDING_INFO)."""
    try:
        info = json.loads(header.metadata.get("DCP_SHARDING_INFO", "{}"))
        return {str(k): [int(o) for o in v["saved_offsets"]] for k, v in info.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def safe_torch_loads(buf: bytes, seen: set[str] | None = None) -> Any:
    """Decode an in-memory `torch.save` zip with the allowlist unpickler (tensors materialised).

    Used for DCP bytes entries (common_state with an `argparse.Namespace`, rng state, TE extra
    state), where `weights_only=True` would reject Megatron's classes and plain pickle is unsafe.
    Unknown classes become placeholders and are added to `seen`.
    """
    zf = zipfile.ZipFile(io.BytesIO(buf))
    index, data = zip_pickle("<bytes>", zf)  # duplicate members, inflate budget: as for files
    storages: dict[str, torch.Tensor] = {}

    def persistent(pid: Any) -> torch.Tensor:
        stored, key, numel = storage_id("<bytes>", pid)
        dtype = stored.torch
        if key not in storages:
            raw = bytearray(index.read(zf, f"{index.prefix}data/{key}"))
            if len(raw) < numel * dtype.itemsize:
                raise CheckpointError("<bytes>", f"storage {key} holds {len(raw)} bytes, needs {numel * dtype.itemsize}")
            flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            storages[key] = flat[: numel * dtype.itemsize].view(dtype) if numel else torch.empty(0, dtype=dtype)
        return storages[key]

    def make(storage: Any, offset: Any, size: Any, stride: Any, dtype: Any) -> torch.Tensor:
        shape = tuple(int(s) for s in size)
        dtype = dtype.torch if isinstance(dtype, DType) else None
        if not isinstance(storage, torch.Tensor):
            return torch.empty(shape, dtype=dtype or torch.float32)
        flat = storage if dtype is None or dtype == storage.dtype else storage.view(dtype)
        if stride is None or len(stride) != len(shape):
            stride = tuple(int(math.prod(shape[i + 1:])) for i in range(len(shape)))
        stride = tuple(int(s) for s in stride)
        check_view("<bytes>", "", flat.numel() * flat.dtype.itemsize, int(offset), shape, stride, flat.dtype.itemsize)
        return flat.as_strided(shape, stride, int(offset)).clone()

    unpickler = RestrictedUnpickler(io.BytesIO(data), hooks=_rebuild_hooks(make), persistent=persistent, seen=seen)
    return unpickler.load()
