"""Stream a torch.distributed.checkpoint folder: chunks appended as they are made, metadata last.

Each chunk is serialised the way DCP's FileSystemWriter does (`torch.save` of the chunk) into a
`__<rank>_0.distcp` file; `.metadata` (a pickled DCP `Metadata` with every chunk's box and byte
range) is written by `finish`. No process group is needed.

Every `.distcp` file has a writer thread (`WriterThread`): the caller hands it the chunk, a view
of the tensor it cut it from, and goes on; the thread writes the bytes `torch.save` would straight
into the file (`torchzip.save_tensor`: torch pickles, our layout writer computes the CRC-32s with
the GIL released and writes each record from the tensor's memory). The chunk is saved through a
tensor over exactly its bytes - the slice of the view's storage, which shares memory - so the
payload is the one `torch.save(chunk.clone())` makes, without the clone or a `BytesIO` copy.
Payloads land in each file in the order they were added; their offsets, counted as the thread
writes, go into `.metadata`.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from .output import open_output
from .torchzip import save_tensor
from .writer_thread import WriterThread


@dataclass
class _Place:
    """Where a payload went: filled in by the file's thread once written."""

    name: str
    offset: int = -1
    length: int = -1


def saved_as_is(chunk: torch.Tensor) -> torch.Tensor:
    """A tensor that `torch.save` writes exactly as it writes `chunk.contiguous().clone()`:
    same shape, strides and dtype, storage offset 0, a storage of exactly its bytes - here the
    slice of the chunk's own storage (no copy unless the chunk is not contiguous)."""
    t = chunk.detach().cpu().contiguous()
    storage = t.untyped_storage()
    if not t.storage_offset() and storage.nbytes() == t.nbytes:
        return t
    start = t.storage_offset() * t.element_size()
    return torch.empty((0,), dtype=t.dtype).set_(storage[start:start + t.nbytes], 0, t.shape, t.stride())


class _DistcpFile:
    """One `.distcp` file and its writer thread; `at` counts the bytes written so far."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path, self.name, self.at = folder / name, name, 0
        self.fh: BinaryIO = open_output(self.path)
        self._failed: OSError | None = None
        self.thread: WriterThread[tuple[torch.Tensor | bytes, _Place]] = WriterThread(self._write_payload, self.name)

    def write(self, data: bytes | memoryview) -> int:
        """The layout writer writes through this (on the thread)."""
        try:
            self.fh.write(data)
        except OSError as exc:  # keep the real cause, whatever the layers above make of it
            self._failed = exc
            raise
        n = memoryview(data).nbytes
        self.at += n
        return n

    def _write_payload(self, item: tuple[torch.Tensor | bytes, _Place]) -> None:
        payload, place = item
        start = self.at
        try:
            if isinstance(payload, torch.Tensor):
                save_tensor(saved_as_is(payload), self.write)
            else:
                self.write(payload)
        except Exception:
            if self._failed is None:
                raise
            if self._failed.filename is None:
                self._failed.filename = str(self.path)
            raise self._failed from None
        place.offset, place.length = start, self.at - start

    def stop(self) -> None:
        """After a failure: write nothing more, wait for the item being written, close the file."""
        self.thread.stop()
        self.thread.join()
        with contextlib.suppress(OSError):  # a full disk fails the flush too; the file goes with its folder
            self.fh.close()


class DcpStreamWriter:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, _DistcpFile] = {}
        self._chunks: dict[str, list] = {}
        self._tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        self._bytes_keys: list[str] = []
        self._storage: dict = {}  # MetadataIndex -> _Place, in the order payloads were added
        self.bytes_written = 0

    def _file(self, rank: int) -> _DistcpFile:
        name = f"__{rank}_0.distcp"
        if name not in self._files:
            self._files[name] = _DistcpFile(self.folder, name)
        return self._files[name]

    def declare(self, key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        self._tensors[key] = (dtype, tuple(shape))
        self._chunks.setdefault(key, [])

    def add_chunk(self, key: str, offsets: tuple[int, ...], chunk: torch.Tensor, rank: int = 0) -> None:
        """Queue `chunk` (the box at `offsets` of `key`) for rank file `rank`; the caller must not
        modify the tensor afterwards (the thread reads it later)."""
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

        file = self._file(rank)
        place = _Place(file.name)
        self._chunks[key].append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(chunk.shape)))
        self._storage[MetadataIndex(key, torch.Size(offsets))] = place
        chunk = chunk.detach().cpu()
        file.thread.put((chunk, place), chunk.nbytes)
        self.bytes_written += chunk.nbytes

    def add_bytes(self, key: str, payload: bytes, rank: int = 0) -> None:
        """Queue a raw bytes entry (a pickled `_extra_state`) for rank file `rank`."""
        from torch.distributed.checkpoint.metadata import MetadataIndex

        file = self._file(rank)
        place = _Place(file.name)
        self._bytes_keys.append(key)
        self._storage[MetadataIndex(key)] = place
        file.thread.put((bytes(payload), place), len(payload))
        self.bytes_written += len(payload)

    def finish(self) -> None:
        """Wait for every file's thread (raising what failed there), close the files, write `.metadata`."""
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        from torch.distributed.checkpoint.metadata import (
            BytesStorageMetadata,
            Metadata,
            StorageMeta,
            TensorProperties,
            TensorStorageMetadata,
        )

        for file in self._files.values():
            file.thread.drain()
        for file in self._files.values():
            file.fh.close()
        state: dict[str, object] = {}
        for key, (dtype, shape) in self._tensors.items():
            state[key] = TensorStorageMetadata(TensorProperties(dtype=dtype), torch.Size(shape), self._chunks[key])
        for key in self._bytes_keys:
            state[key] = BytesStorageMetadata()
        storage = {index: _StorageInfo(p.name, p.offset, p.length) for index, p in self._storage.items()}
        meta = Metadata(state_dict_metadata=state, planner_data=None, storage_data=storage,
                        storage_meta=StorageMeta(checkpoint_id=str(self.folder), save_id="ckptscope", load_id=None, modules=[]))
        (self.folder / ".metadata").write_bytes(pickle.dumps(meta))

    def close_files(self) -> None:
        """After a failure: stop the threads and close the files (the folder is removed by the caller)."""
        files, self._files = list(self._files.values()), {}
        for file in files:
            file.stop()


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
