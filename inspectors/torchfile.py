"""Lazy reading of `torch.save` files without executing them and without reading tensor bytes.

Zip format (torch >= 1.6): `<prefix>/data.pkl` is unpickled with the restricted unpickler; every
storage becomes a `StorageRef` (zip member, dtype, element count) and every tensor a
`LazyTensor` (storage, offset, size, stride). Bytes are read only in `LazyTensor.load()`, with
one positioned read from the stored (uncompressed) zip member.

Legacy format (torch < 1.6, `_use_new_zipfile_serialization=False`): a run of pickles followed
by raw storages; we walk the storage headers (8-byte counts) with seeks to learn the offsets.
"""

from __future__ import annotations

import io
import math
import operator
import pickle
import struct
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .crc import crc32
from .dtypes import DTYPES, STORAGE_DTYPES, DType, DTypeField, as_torch
from .errors import CheckpointError, reading
from .files import file_size, open_regular
from .safe_pickle import RestrictedUnpickler
from .storage import as_path

if TYPE_CHECKING:
    import torch

# Storage class names (as pickled in the persistent id) -> dtype
_STORAGE_DTYPES: dict[str, DType] = {name: DTYPES[dtype] for name, dtype in STORAGE_DTYPES.items()}


def __getattr__(name: str) -> Any:
    """`STORAGE_TYPE_NAMES` (torch dtype -> storage class name, as torch.save pickles it; the first
    name wins for uint8) is built on first use: it needs torch, which readers do not import."""
    if name == "STORAGE_TYPE_NAMES":
        table: dict[Any, str] = {}
        for storage, dtype in _STORAGE_DTYPES.items():
            table.setdefault(as_torch(dtype), storage)
        globals()[name] = table
        return table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MAX_PICKLE_BYTES = 1 << 30
# torch.save stores every member uncompressed; a deflated member is hand-made. A small one is
# inflated (torch would read it), within a budget per archive: 1 MB must not inflate to 1 GiB.
MAX_INFLATE = 4 << 20
# A view may have more elements than its storage (an `expand`ed tensor is saved with stride 0),
# but not vastly more: a 4-byte storage viewed as [25000, 25000] costs 2.5 GB to read.
MAX_VIEW_EXPANSION = 1 << 24


class StorageType:
    """What `torch.FloatStorage` & co. resolve to: just a dtype."""

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage type {self.dtype}>"


@dataclass
class StorageRef:
    """Where one storage's bytes live: absolute byte offset in the file and element count."""

    file: Path
    key: str
    dtype: DType = DTypeField()  # type: ignore[assignment]  # the stand-in; torch's once torch is imported
    numel: int
    offset: int = -1  # absolute file offset of element 0, resolved lazily for zip members
    archive: _ZipIndex | None = field(default=None, repr=False)

    def data_offset(self) -> int:
        if self.offset < 0:
            assert self.archive is not None
            self.offset = self.archive.member_offset(self.key)
        return self.offset

    def read_into(self, element_offset: int, itemsize: int, pieces: list[memoryview]) -> None:
        """Read the storage's bytes from `element_offset` on, in file order, into `pieces` (one
        buffer, or the rows of a larger tensor they belong in). A read that covers the whole zip
        member is checked against its CRC-32, computed over the pieces: a bit flip must not pass;
        a view of part of a storage has no CRC of its own."""
        total = sum(len(p) for p in pieces)
        with reading(self.file, "cannot read tensor data"):
            start = self.data_offset() + element_offset * itemsize
            whole = self.archive is not None and element_offset == 0 and total == self.archive.member_size(self.key)
            crc = got = 0
            with open_regular(self.file, "torch file") as fh:
                fh.seek(start)
                for piece in pieces:
                    n = fh.readinto(piece)
                    if n != len(piece):
                        raise CheckpointError(self.file, f"truncated: storage {self.key} needs {total} bytes at {start}, file has {got + n}")
                    got += n
                    if whole:
                        crc = crc32(piece, crc)
            if whole:
                self.archive.check_crc(self.key, got, crc)  # type: ignore[union-attr]


@dataclass
class LazyTensor:
    """A tensor whose bytes stay on disk until `load()`."""

    storage: StorageRef | None
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: DType = DTypeField()  # type: ignore[assignment]  # the stand-in; torch's once torch is imported

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def load(self) -> torch.Tensor:
        """Read exactly the byte range this view covers and return a contiguous CPU tensor."""
        import torch

        if self.storage is None:
            raise CheckpointError("<meta>", "tensor was saved without data (meta tensor)")
        ref = self.storage
        dtype = as_torch(self.dtype)
        if self.numel == 0:
            return torch.empty(self.shape, dtype=dtype)
        extent = 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride) if s > 0)
        if self.storage_offset + extent > ref.numel:
            raise CheckpointError(ref.file, f"tensor view exceeds storage {ref.key} ({ref.numel} elements)")
        size = self.dtype.itemsize
        raw = torch.empty(extent * size, dtype=torch.uint8)  # read straight into a tensor: no bytearray copy
        ref.read_into(self.storage_offset, size, [memoryview(raw.numpy())])
        flat = raw.view(dtype)
        return flat.as_strided(self.shape, self.stride).contiguous() if self.shape else flat[0].clone()


class _ZipIndex:
    """Zip central directory of a torch file: member -> absolute data offset (stored members).

    Reads the members torch reads: the archive folder is the folder of the first entry (as in
    `PyTorchFileReader`), and a name that occurs twice is refused (torch and Python's zipfile
    would each pick a different copy: what we show would not be what torch loads).
    """

    def __init__(self, path: Path, zf: zipfile.ZipFile) -> None:
        self.path = path
        infos = zf.infolist()
        self.infos = {info.filename: info for info in infos}
        if len(self.infos) != len(infos):
            seen: set[str] = set()
            dup = next(i.filename for i in infos if i.filename in seen or seen.add(i.filename))  # type: ignore[func-returns-value]
            raise CheckpointError(path, f"zip archive holds two members named {dup[:80]!r}; refusing an ambiguous file")
        if not infos:
            raise CheckpointError(path, "not a torch checkpoint: zip archive is empty")
        archive = infos[0].filename.split("/", 1)[0] if "/" in infos[0].filename else ""
        self.pkl = f"{archive}/data.pkl" if archive else "data.pkl"
        if self.pkl not in self.infos:
            raise CheckpointError(path, "not a torch checkpoint: zip archive has no data.pkl")
        self.prefix = self.pkl[: -len("data.pkl")]
        self.inflated = 0
        self._lock = threading.Lock()

    def read(self, zf: zipfile.ZipFile, name: str) -> bytes:
        """One member's bytes; a compressed one only within the inflate budget, in bounded steps."""
        info = self.infos.get(name)
        if info is None:
            raise CheckpointError(self.path, f"zip archive is missing member {name!r}")
        if info.compress_type == zipfile.ZIP_STORED:
            return zf.read(info)
        self.inflated += info.file_size
        if self.inflated > MAX_INFLATE:
            raise CheckpointError(self.path, f"member {name!r} is compressed and inflates to {info.file_size} bytes; "
                                             f"torch files are stored uncompressed, refusing to inflate more than {MAX_INFLATE}")
        parts = []
        with zf.open(info) as fh:  # stops at the declared size; a lying size fails the CRC
            while chunk := fh.read(1 << 20):
                parts.append(chunk)
        return b"".join(parts)

    def member_offset(self, key: str) -> int:
        name = f"{self.prefix}data/{key}"
        info = self.infos.get(name)
        if info is None:
            raise CheckpointError(self.path, f"zip archive is missing member {name!r}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(self.path, f"member {name!r} is compressed; torch files are stored uncompressed")
        with self._lock, open_regular(self.path, "torch file") as fh:
            fh.seek(info.header_offset)
            header = fh.read(30)
            if len(header) != 30 or header[:4] != _ZIP_MAGIC:
                raise CheckpointError(self.path, f"corrupt zip local header for {name!r}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len

    def check_crc(self, key: str, length: int, crc: int) -> None:
        """A read of a whole member against the zip's CRC-32: `crc` is that of its first `length` bytes."""
        info = self.infos.get(f"{self.prefix}data/{key}")
        if info is not None and length == info.file_size and crc != info.CRC:
            raise CheckpointError(self.path, f"CRC-32 mismatch in member {info.filename!r}: tensor bytes are corrupt")

    def member_size(self, key: str) -> int:
        info = self.infos.get(f"{self.prefix}data/{key}")
        return -1 if info is None else info.file_size


LAZY_ATOMS = frozenset({StorageType, StorageRef, LazyTensor})  # hold no pickled containers: depth 0


def _rebuild_hooks(make: Any) -> dict[tuple[str, str], Any]:
    """Map torch's tensor-rebuild functions to constructors of LazyTensor."""

    def v2(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> Any:
        return make(storage, offset, size, stride, None)

    def v3(storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *_: Any) -> Any:
        return make(storage, offset, size, stride, dtype)

    def parameter(data: Any, *_: Any) -> Any:
        return data

    def from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
        # torch passes its own rebuild function here; any other callable would run unbudgeted.
        if not any(func is hook for hook in hooks.values()) or not isinstance(args, tuple):
            raise pickle.UnpicklingError("_rebuild_from_type_v2 with a function other than a tensor rebuild refused")
        return func(*args)

    def meta(dtype: Any, size: Any, stride: Any, *_: Any) -> Any:
        return make(None, 0, size, stride, dtype)

    hooks: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor"): lambda storage, offset, size, stride: make(storage, offset, size, stride, None),
        ("torch._utils", "_rebuild_tensor_v2"): v2,
        ("torch._utils", "_rebuild_tensor_v3"): v3,
        ("torch._utils", "_rebuild_parameter"): parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): parameter,
        ("torch._utils", "_rebuild_meta_tensor_no_storage"): meta,
        ("torch._tensor", "_rebuild_from_type_v2"): from_type_v2,
        ("torch.nn.parameter", "Parameter"): lambda data=None, *a: data,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        hooks[("torch", name)] = StorageType(dtype)
    return hooks


@dataclass
class TorchFile:
    """A lazily opened torch file: the unpickled object tree with LazyTensor leaves."""

    path: Path
    obj: Any
    placeholders: set[str]
    legacy: bool = False


def _make_lazy(storage: Any, offset: Any, size: Any, stride: Any, dtype: Any) -> LazyTensor:
    shape = tuple(int(s) for s in size)
    if stride is None or len(stride) != len(shape):
        stride = tuple(int(math.prod(shape[i + 1 :])) for i in range(len(shape)))
    ref = storage if isinstance(storage, StorageRef) else None
    if not isinstance(dtype, DType):
        dtype = ref.dtype if ref is not None else DTYPES["uint8"]
    stride = tuple(int(s) for s in stride)
    if ref is not None:
        check_view(ref.file, ref.key, ref.numel * ref.dtype.itemsize, int(offset), shape, stride, dtype.itemsize)
    return LazyTensor(ref, int(offset), shape, stride, dtype)


def check_view(file: Path | str, key: str, storage_bytes: int, offset: int, shape: tuple[int, ...],
               stride: tuple[int, ...], itemsize: int) -> None:
    """Refuse a tensor view torch would not read from its own storage: a negative offset (we
    would read the zip header), dimensions or strides below zero, a last element past the end of
    the storage, or vastly more elements than the storage holds (a stride-0 memory bomb)."""
    if offset < 0 or min(shape, default=0) < 0 or min(stride, default=0) < 0:  # C-level scans: 100k tensors
        raise CheckpointError(file, f"tensor view of storage {key} has a negative offset, size or stride "
                                    f"(offset {offset}, size {list(shape)[:8]}, stride {list(stride)[:8]}); refusing")
    count = math.prod(shape)
    if count == 0:
        return
    end = (offset + 1 + sum(map(operator.mul, shape, stride)) - sum(stride)) * itemsize  # sum of (size - 1) * stride
    if end > storage_bytes:
        raise CheckpointError(file, f"tensor view of storage {key} ends at byte {end}, outside its {storage_bytes}-byte storage; refusing")
    if count * itemsize > max(storage_bytes, MAX_VIEW_EXPANSION * itemsize):
        raise CheckpointError(file, f"tensor view of {count} elements over storage {key} of {storage_bytes} bytes "
                                    f"(overlapping, stride {list(stride)[:8]}); refusing")


def open_torch_file(path: str | Path) -> TorchFile:
    """Unpickle a torch file lazily and safely. Raises CheckpointError on anything malformed."""
    path = as_path(path)
    with reading(path, "cannot read torch file"), open_regular(path, "torch file") as fh:
        if file_size(fh) == 0:
            raise CheckpointError(path, "file is empty")
        magic = fh.read(4)
        fh.seek(0)
        if magic == _ZIP_MAGIC:
            return _open_zip(path, fh)
        return _open_legacy(path, fh)


def zip_pickle(path: Path | str, zf: zipfile.ZipFile) -> tuple[_ZipIndex, bytes]:
    """The `data.pkl` of a torch.save zip, after the checks every reader makes (size cap, little
    endian). `path` names the file in errors ("<bytes>" for in-memory payloads)."""
    index = _ZipIndex(as_path(path), zf)
    info = index.infos[index.pkl]
    if info.file_size > _MAX_PICKLE_BYTES:
        raise CheckpointError(path, f"data.pkl claims {info.file_size} bytes; refusing")
    data = index.read(zf, index.pkl)
    byteorder = index.prefix + "byteorder"
    if byteorder in index.infos and index.read(zf, byteorder).strip() not in (b"little", b""):
        raise CheckpointError(path, "big-endian torch files are not supported")
    return index, data


def storage_id(path: Path | str, pid: Any) -> tuple[DType, str, int]:
    """(dtype, key, numel) of a torch.save storage persistent id; any other id is refused."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise CheckpointError(path, f"unexpected persistent id {str(pid)[:80]!r}")
    _, stype, key, _location, numel = pid[:5]
    return (stype.dtype if isinstance(stype, StorageType) else DTYPES["uint8"]), str(key), int(numel)


def _open_zip(path: Path, fh: Any) -> TorchFile:
    try:
        zf = zipfile.ZipFile(fh)
    except zipfile.BadZipFile as exc:
        raise CheckpointError(path, f"corrupt or truncated zip archive ({exc})") from None
    with zf:
        index, data = zip_pickle(path, zf)
    storages: dict[str, StorageRef] = {}

    def persistent(pid: Any) -> StorageRef:
        dtype, key, numel = storage_id(path, pid)
        ref = storages.get(key)
        if ref is None:
            member = index.member_size(key)
            if member < 0:
                raise CheckpointError(path, f"zip archive is missing member {index.prefix}data/{key}")
            ref = StorageRef(path, key, dtype, numel, archive=index)
            if member < numel * dtype.itemsize:
                raise CheckpointError(path, f"storage {key} holds {member} bytes, needs {numel * dtype.itemsize}")
            storages[key] = ref
        return ref

    seen: set[str] = set()
    unpickler = RestrictedUnpickler(io.BytesIO(data), hooks=_rebuild_hooks(_make_lazy), persistent=persistent, seen=seen,
                                    atoms=LAZY_ATOMS)
    obj = unpickler.load()
    return TorchFile(path, obj, seen)


def _open_legacy(path: Path, fh: Any) -> TorchFile:
    hooks = _rebuild_hooks(_make_lazy)
    seen: set[str] = set()
    storages: dict[str, StorageRef] = {}

    def load_one(**kw: Any) -> Any:
        return RestrictedUnpickler(fh, hooks=hooks, seen=seen, **kw).load()

    try:
        magic = load_one()
    except Exception:  # noqa: BLE001
        raise CheckpointError(path, "not a torch checkpoint (neither zip nor legacy pickle format)") from None
    if magic != _LEGACY_MAGIC:
        raise CheckpointError(path, "not a torch checkpoint (no torch magic number)")
    protocol = load_one()
    if protocol != 1001:
        raise CheckpointError(path, f"unsupported legacy torch protocol {protocol!r}")
    sys_info = load_one()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError(path, "big-endian torch files are not supported")

    def persistent(pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(path, f"unexpected persistent id {str(pid)[:80]!r}")
        _, stype, key, _location, numel = pid[:5]
        dtype = stype.dtype if isinstance(stype, StorageType) else DTYPES["uint8"]
        key = str(key)
        ref = storages.setdefault(key, StorageRef(path, key, dtype, int(numel)))
        view = pid[5] if len(pid) > 5 else None
        if view:  # (view_key, offset, numel): a slice of the storage
            _vkey, voffset, vnumel = (int(v) if i else v for i, v in enumerate(view))
            if voffset < 0 or vnumel < 0 or voffset + vnumel > ref.numel:
                raise CheckpointError(path, f"storage view {voffset}+{vnumel} is outside storage {key} ({ref.numel} elements)")
            return StorageRef(path, key, dtype, vnumel, offset=-2 - voffset)
        return ref

    obj = load_one(persistent=persistent)
    keys = load_one()
    end = file_size(fh)
    offsets: dict[str, int] = {}
    for key in keys:
        header = fh.read(8)
        if len(header) != 8:
            raise CheckpointError(path, f"truncated: storage {key} header missing")
        (count,) = struct.unpack("<q", header)
        ref = storages.get(str(key))
        itemsize = ref.dtype.itemsize if ref else 1
        if count < 0 or (ref is not None and count < ref.numel):
            raise CheckpointError(path, f"storage {key} holds {count} elements, its tensors need {ref.numel if ref else 0}")
        offsets[str(key)] = fh.tell()
        fh.seek(count * itemsize, io.SEEK_CUR)
        if fh.tell() > end:
            raise CheckpointError(path, f"truncated: storage {key} runs past end of file")
    for ref in storages.values():
        ref.offset = offsets.get(ref.key, -1)
        if ref.offset < 0:
            raise CheckpointError(path, f"storage {ref.key} has no data")
    _fix_legacy_views(obj, offsets)
    return TorchFile(path, obj, seen, legacy=True)


def _fix_legacy_views(obj: Any, offsets: dict[str, int]) -> None:
    """Legacy storage views were recorded with offset = -2 - element offset; resolve them."""
    for tensor in iter_lazy_tensors(obj):
        ref = tensor.storage
        if ref is not None and ref.offset <= -2:
            element_offset = -2 - ref.offset
            tensor.storage = StorageRef(ref.file, ref.key, ref.dtype, ref.numel + element_offset, offset=offsets[ref.key])
            tensor.storage_offset += element_offset


def iter_lazy_tensors(obj: Any, _depth: int = 0, _seen: set[int] | None = None) -> Any:
    """Every LazyTensor in a tree; a container reached twice (pickle memo: shared or cyclic) is walked once."""
    if _depth > 64:
        return
    if isinstance(obj, LazyTensor):
        yield obj
    elif isinstance(obj, (dict, list, tuple)):
        seen = set() if _seen is None else _seen
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for value in obj.values() if isinstance(obj, dict) else obj:
            yield from iter_lazy_tensors(value, _depth + 1, seen)


def flatten(obj: Any, prefix: str = "", _depth: int = 0, _seen: set[int] | None = None) -> list[tuple[str, Any]]:
    """Flatten nested dicts/lists into dotted names (legacy Megatron nests `language_model`).

    A pickle can share one container many times (memo references), so a few kilobytes could
    describe 2**60 paths; each container is expanded once, later references stay leaves.
    """
    out: list[tuple[str, Any]] = []
    if _depth > 64:
        return [(prefix, obj)]
    seen = set() if _seen is None else _seen
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in seen:
            return [(prefix, obj)]
        seen.add(id(obj))
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.extend(flatten(value, name, _depth + 1, seen))
    elif isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple, LazyTensor)) for v in obj):
        for i, value in enumerate(obj):
            name = f"{prefix}.{i}" if prefix else str(i)
            out.extend(flatten(value, name, _depth + 1, seen))
    else:
        out.append((prefix, obj))
    return out
