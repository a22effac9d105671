"""torch's zip archive layout, written byte for byte without torch's writer.

`torch._C.PyTorchFileWriter` (miniz underneath) computes every record's CRC-32 with miniz's
table code and writes through a C++ stream: a 256 MiB record took 0.27-0.38 s through it
against 0.19-0.24 s for the plain write, the largest avoidable cost of a torch-format target
(docs/performance.md). Here each record's CRC is ISA-L's (`inspectors.crc`, ~9 GiB/s, the GIL
released) and its bytes go to the file in one write from the tensor's own memory (one per run
of rows for a piece whose rows were never joined).

The bytes are those torch writes, and a test holds them to it (tests/test_zip_layout.py),
records and offsets past 4 GiB included:
- a local header (version 0, flags 0x0808: UTF-8 names, sizes in a data descriptor; method 0,
  DOS time 0, CRC and sizes 0), the name `<archive>/<record>`, a zip64 extra when the record
  starts at or past 4 GiB or holds 4 GiB or more (uncompressed size, a compressed size of 0,
  the header offset: each only when it overflows), then an `FB` extra that pads the data to a
  multiple of 64 bytes;
- the data, then a data descriptor (`PK\\x07\\x08`, CRC, sizes: 8 bytes each when the header
  had a zip64 extra, else 4); a record of no bytes has neither the descriptor nor its flag;
- at the end `version` ("3\\n"), `.data/serialization_id`, the central directory (0xFFFFFFFF
  and a zip64 extra for what overflows), a zip64 end record and its locator (always), and the
  end record (counts and offsets capped at their field's maximum).

The serialization id is two 20-digit numbers: a hash of the record names and a hash of the
CRCs in the order they were written. The name hash folds over a C++ `unordered_set`, whose
order only the installed torch knows, so a dry run of torch's own writer (records of no
bytes, written nowhere) computes it; it depends only on the record names, so it is cached by
them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from ckptscope.inspectors.crc import crc32

ALIGNMENT = 64  # torch's default storage alignment: every record's data starts at a multiple of it
U32_MAX = 0xFFFFFFFF
U16_MAX = 0xFFFF
VERSION_RECORD = ("version", b"3\n")  # what torch's writer adds when no version record was written
SERIALIZATION_ID = ".data/serialization_id"
SMALL = 1 << 16  # data below this size joins the pending header bytes: one write instead of two

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_DESCRIPTOR32 = struct.Struct("<4sIII")
_DESCRIPTOR64 = struct.Struct("<4sIQQ")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_LOCATOR = struct.Struct("<4sIQI")
_EOCD = struct.Struct("<4sHHHHIIH")
_FLAGS = 0x0808  # UTF-8 names; CRC and sizes in the descriptor after the data
_FLAGS_EMPTY = 0x0800  # a record of no bytes has no descriptor
_DOS_FOLDER = 0x10  # the external attribute miniz gives a name ending in '/'
_DESCRIPTOR_SIG = b"PK\x07\x08"
_MASK64 = (1 << 64) - 1


def hash_combine(seed: int, value: int) -> int:
    """c10::hash_combine on 64-bit size_t: how torch folds each record's CRC into the id."""
    return (seed ^ ((value + 0x9E3779B9 + ((seed << 6) & _MASK64) + (seed >> 2)) & _MASK64)) & _MASK64


def archive_name(file_name: str) -> str:
    """torch's archive folder for a file path: its last component up to its last '.'."""
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    name = base.rsplit(".", 1)[0] if "." in base else base
    if not name:
        raise ValueError(f"invalid file name for a torch archive: {file_name!r}")
    return name


def _zip64_extra(size: int | None, offset: int | None, *, comp_size: int | None = None) -> bytes:
    """The zip64 extended-information field (id 1) with the values that overflowed, in the
    order the format fixes: uncompressed size, compressed size, header offset."""
    values = [v for v in ((size, comp_size) if size is not None else ()) + (offset,) if v is not None]
    if not values:
        return b""
    return struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values)


def _padding(cursor: int, name_size: int, size: int) -> bytes:
    """The `FB` extra that puts the data on an ALIGNMENT boundary (torch's getPadding)."""
    start = cursor + _LOCAL.size + name_size + 4
    if size >= U32_MAX or cursor >= U32_MAX:
        start += 4 + (16 if size >= U32_MAX else 0) + (8 if cursor >= U32_MAX else 0)
    pad = -start % ALIGNMENT
    return b"FB" + struct.pack("<H", pad) + b"Z" * pad


class _NullSink:
    """Where the dry run writes: nowhere."""

    @staticmethod
    def write(data: Any) -> int:
        return memoryview(data).nbytes


@lru_cache(maxsize=64)
def _name_hash(names: tuple[str, ...]) -> str:
    """The first half of torch's serialization id for these record names, written in this
    order: torch's own writer, run on records of no bytes."""
    import torch  # only when an archive is finished; the caller has torch loaded already

    dry = torch._C.PyTorchFileWriter(_NullSink())
    for name in names:
        dry.write_record(name, b"", 0)
    dry.write_end_of_file()
    return dry.serialization_id()[:20]


class ZipLayoutWriter:
    """Writes records to `write` (a callable that writes all of a buffer) in torch's layout.

    `write_record` and `write_end_of_file` mirror PyTorchFileWriter's. Small pieces (headers,
    descriptors, small records) are gathered and written with the next large record.
    """

    def __init__(self, write: Callable[[memoryview], None], archive: str) -> None:
        self._write = write
        self._prefix = archive + "/"
        self._pos = 0
        self._pending = bytearray()
        self._central = bytearray()
        self._names: list[str] = []
        self._crc_hash = 0
        self._count = 0

    def write_record(self, name: str, data: Any) -> None:
        """Append one stored (uncompressed) record; `data` is any contiguous buffer, or a list of
        them holding the record's bytes in order (a piece whose rows were never joined: the
        same archive as their concatenation's)."""
        views = [memoryview(d).cast("B") for d in data] if isinstance(data, list) else [memoryview(data).cast("B")]
        views = views or [memoryview(b"")]
        size = sum(v.nbytes for v in views)
        full = (self._prefix + name).encode()
        if full.endswith(b"/") and size:
            raise ValueError(f"a zip folder entry cannot hold data: {name!r}")
        offset = self._pos
        crc = 0
        for v in views:
            crc = crc32(v, crc)
        wide = size >= U32_MAX or offset >= U32_MAX
        extra = _zip64_extra(size if size >= U32_MAX else None, offset if offset >= U32_MAX else None, comp_size=0)
        extra += _padding(offset, len(full), size)
        flags = _FLAGS if size else _FLAGS_EMPTY
        header = _LOCAL.pack(b"PK\x03\x04", 0, flags, 0, 0, 0, 0, 0, 0, len(full), len(extra)) + full + extra
        descriptor = (_DESCRIPTOR64 if wide else _DESCRIPTOR32).pack(_DESCRIPTOR_SIG, crc, size, size) if size else b""
        self._pending += header
        if size < SMALL:
            for v in views:
                self._pending += v
        else:
            self._flush()
            for v in views:
                self._write(v)
        self._pending += descriptor
        self._pos = offset + len(header) + size + len(descriptor)
        head = views[0][:8] if views[0].nbytes >= 8 else b"".join(bytes(v[:8]) for v in views)[:8]
        if size >= 8 and head[:4] == _DESCRIPTOR_SIG:  # torch's writer reads any write that starts like a descriptor as one
            self._crc_hash = hash_combine(self._crc_hash, int.from_bytes(head[4:8], "little"))
        if size:  # torch's writer folds the CRC in as it sees the descriptor go by
            self._crc_hash = hash_combine(self._crc_hash, crc)
        self._add_central(full, size, crc, offset, flags)
        self._names.append(name)

    def _add_central(self, full: bytes, size: int, crc: int, offset: int, flags: int) -> None:
        big, far = size >= U32_MAX, offset >= U32_MAX
        extra = _zip64_extra(size if big else None, offset if far else None, comp_size=size if big else None)
        self._central += _CENTRAL.pack(
            b"PK\x01\x02", 0, 0, flags, 0, 0, 0, crc,
            U32_MAX if big else size, U32_MAX if big else size,
            len(full), len(extra), 0, 0, 0, _DOS_FOLDER if full.endswith(b"/") else 0, U32_MAX if far else offset,
        ) + full + extra
        self._count += 1

    def write_end_of_file(self) -> None:
        """The records torch adds at the end, the central directory and the end records."""
        if "version" not in self._names and ".data/version" not in self._names:
            self.write_record(*VERSION_RECORD)
        if "byteorder" not in self._names:
            self.write_record("byteorder", b"little")
        ident = _name_hash(tuple(self._names)) + f"{self._crc_hash:020d}"
        self.write_record(SERIALIZATION_ID, ident.encode())
        cd_offset, cd_size = self._pos, len(self._central)
        eocd64_offset = cd_offset + cd_size
        self._pending += self._central
        self._pending += _EOCD64.pack(b"PK\x06\x06", _EOCD64.size - 12, 0x031E, 0x2D, 0, 0, self._count, self._count, cd_size, cd_offset)
        self._pending += _LOCATOR.pack(b"PK\x06\x07", 0, eocd64_offset, 1)
        self._pending += _EOCD.pack(
            b"PK\x05\x06", 0, 0, min(self._count, U16_MAX), min(self._count, U16_MAX),
            min(cd_size, U32_MAX), min(cd_offset, U32_MAX), 0,
        )
        self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._write(memoryview(self._pending))
            self._pending = bytearray()
