"""Write a `torch.save`-compatible zip file incrementally: tensors first, the pickle last.

`torch.save(obj)` needs every tensor in memory at once. Here each tensor's bytes go to the
archive as soon as it is produced (`add`), and only its shape/dtype are remembered; `finish`
pickles the object tree with those records in place of tensors. The result loads with
`torch.load` (including `weights_only=True` and `mmap=True`) like any other checkpoint.

The archive is torch's byte for byte, written by `zip_layout` (ISA-L CRC-32, one write per
record from the tensor's memory) rather than torch's own writer.

With `background=True` the records are written by a thread of the file's own (the CRC-32 and
the write release the GIL): a writer of several rank
files hands a shard to each file's thread and goes on scattering, so the files are written
concurrently instead of one after another on the caller's thread. Records are handed over in
batches (`BATCH_BYTES`, `BATCH_RECORDS`); the queue is bounded by bytes
(`writer_thread.QUEUE_BYTES`), so a slow disk stalls the caller rather than growing memory;
records keep their order, so the bytes are those of the synchronous writer.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._utils

from ckptscope.inspectors.torchfile import STORAGE_TYPE_NAMES

from ..row_runs import RowRuns
from .output import open_output
from .writer_thread import WriterThread
from .zip_layout import ZipLayoutWriter, archive_name


class _Storage:
    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class TensorRecord:
    """Stands in for a written tensor inside the object tree passed to `finish`."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage = storage
        self.shape = shape

    def __reduce__(self) -> Any:
        stride, n = [], 1  # C order, in plain ints: building a torch.Size per dim cost ~20 % of pickling many records
        for d in reversed(self.shape):
            stride.append(n)
            n *= d
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, torch.Size(self.shape), tuple(reversed(stride)), False, OrderedDict())


def _reduce_ordered_dict(od: OrderedDict) -> Any:
    """What `OrderedDict.__reduce_ex__(2)` returns, without its cost for the empty backward-hooks
    dict of every tensor record: CPython asks `copyreg._slotnames` each time, which fails to cache
    on the C type and raises inside (py-spy: a third of pickling thousands of expert records)."""
    if type(od) is OrderedDict and not od and not od.__dict__:
        return OrderedDict, (), None, None, iter(())
    return od.__reduce_ex__(2)


class _LayoutRecords:
    """What `torch.serialization._save` writes its records to, as it would to torch's writer:
    torch pickles and orders the records, our layout writer writes them."""

    def __init__(self, archive: ZipLayoutWriter) -> None:
        self._archive = archive

    def write_record(self, name: str, data: Any, nbytes: int) -> None:
        if isinstance(data, str):
            data = data.encode()
        elif isinstance(data, torch.UntypedStorage):
            data = torch.empty(0, dtype=torch.uint8).set_(data).numpy() if nbytes else b""
        self._archive.write_record(name, data)


def save_tensor(tensor: torch.Tensor, write: Callable[[memoryview], Any]) -> None:
    """Write exactly what `torch.save(tensor, f)` writes to a stream (tests/test_zip_layout.py),
    through our layout writer: ISA-L CRC and no per-write Python callback from torch's writer."""
    archive = ZipLayoutWriter(write, "archive")
    torch.serialization._save(tensor, _LayoutRecords(archive), pickle, torch.serialization.DEFAULT_PROTOCOL, False)
    archive.write_end_of_file()


# Records reach the file's thread in batches: one hand-over per record woke the thread (a queue
# put, a condition, a GIL switch) ~3,000 times for a 256-expert model, 0.26-0.30 s of the main
# thread's wall time against 0.03-0.05 s of its CPU (helper's measurement, issue 17).
BATCH_BYTES = 4 * 2**20
BATCH_RECORDS = 64


class TorchZipWriter:
    def __init__(self, path: str | Path, *, background: bool = False) -> None:
        self.path = path if hasattr(path, "open_write") else Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open_output(self.path)
        remote = hasattr(path, "open_write")  # torch names a streamed archive "archive", a file's by its name
        self._zip = ZipLayoutWriter(self._stream.write, "archive" if remote else archive_name(str(self.path)))
        self._count = 0
        self.bytes_written = 0
        self._thread = WriterThread(self._write_records, str(path)) if background else None
        self._batch: list[tuple[str, torch.Tensor | RowRuns]] = []
        self._batch_bytes = 0

    def add(self, tensor: torch.Tensor | RowRuns) -> TensorRecord:
        """Write the tensor's bytes now (or hand them to the file's thread); return the record to
        place in the object tree. A `RowRuns` piece is written run after run, never joined."""
        key = str(self._count)
        self._count += 1
        if self._thread is not None:
            t = tensor if isinstance(tensor, RowRuns) else tensor.detach()
            self._batch.append((f"data/{key}", t))
            self._batch_bytes += t.nbytes
            if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_RECORDS:
                self.flush()
        else:
            t = tensor
            self._write_record((f"data/{key}", t))
        self.bytes_written += t.nbytes
        return TensorRecord(_Storage(key, t.dtype, t.numel()), tuple(t.shape))

    def flush(self) -> None:
        """Queue the records gathered so far as one item for the file's thread (writers call it
        after each group, so a batch never keeps a group's read buffer alive past its write)."""
        if self._batch and self._thread is not None:
            self._thread.put(self._batch, self._batch_bytes)
            self._batch, self._batch_bytes = [], 0

    def _write_records(self, items: list[tuple[str, torch.Tensor | RowRuns]]) -> None:
        for item in items:
            self._write_record(item)

    def _write_record(self, item: tuple[str, torch.Tensor | RowRuns]) -> None:
        if isinstance(item[1], RowRuns):
            self._zip.write_record(item[0], item[1].buffers())
            return
        t = item[1].detach().cpu().contiguous()
        self._zip.write_record(item[0], t.reshape(-1).view(torch.uint8).numpy() if t.nbytes else b"")

    def abort(self) -> None:
        """Stop the file's thread after a failure (the file itself is removed with its folder)."""
        self._batch = []
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.stop()

    def finish(self, obj: Any) -> None:
        if self._thread is not None:
            self.flush()
            thread, self._thread = self._thread, None
            thread.drain()
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, protocol=2)
        pickler.persistent_id = self._persistent_id  # type: ignore[method-assign]
        pickler.dispatch_table = {**copyreg.dispatch_table, OrderedDict: _reduce_ordered_dict}
        pickler.dump(obj)
        data = buf.getvalue()
        self._zip.write_record("data.pkl", data)
        self._zip.write_record(".format_version", b"1")
        self._zip.write_record(".storage_alignment", b"64")
        self._zip.write_record("byteorder", b"little")
        self._zip.write_end_of_file()
        self._stream.close()

    @staticmethod
    def _persistent_id(obj: Any) -> Any:
        if isinstance(obj, _Storage):
            storage_type = getattr(torch, STORAGE_TYPE_NAMES[obj.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None
