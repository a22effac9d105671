"""Write a `torch.save`-compatible zip file incrementally: tensors first, the pickle last.

`torch.save(obj)` needs every tensor in memory at once. Here each tensor's bytes go to the
archive as soon as it is produced (`add`), and only its shape/dtype are remembered; `finish`
pickles the object tree with those records in place of tensors. The result loads with
`torch.load` (including `weights_only=True` and `mmap=True`) like any other checkpoint.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch._utils

from ckptscope.inspectors.torchfile import STORAGE_TYPE_NAMES

from .output import open_output, refuse_special


class _Storage:
    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class TensorRecord:
    """Stands in for a written tensor inside the object tree passed to `finish`."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage = storage
        self.shape = shape

    def __reduce__(self) -> Any:
        stride = tuple(int(torch.Size(self.shape)[i + 1 :].numel()) for i in range(len(self.shape)))
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, torch.Size(self.shape), stride, False, OrderedDict())


class TorchZipWriter:
    def __init__(self, path: str | Path) -> None:
        self.path = path if hasattr(path, "open_write") else Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_special(self.path)
        self._stream = open_output(self.path) if hasattr(path, "open_write") else None  # a remote destination
        self._zip = torch._C.PyTorchFileWriter(self._stream if self._stream is not None else str(self.path))
        self._count = 0
        self.bytes_written = 0

    def add(self, tensor: torch.Tensor) -> TensorRecord:
        """Write the tensor's bytes now; return the record to place in the object tree."""
        t = tensor.detach().cpu().contiguous()
        if t.storage_offset() or t.untyped_storage().nbytes() != t.nbytes:
            t = t.clone()
        key = str(self._count)
        self._count += 1
        self._zip.write_record(f"data/{key}", t.untyped_storage(), t.nbytes)
        self.bytes_written += t.nbytes
        return TensorRecord(_Storage(key, t.dtype, t.numel()), tuple(t.shape))

    def finish(self, obj: Any) -> None:
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, protocol=2)
        pickler.persistent_id = self._persistent_id  # type: ignore[method-assign]
        pickler.dump(obj)
        data = buf.getvalue()
        self._zip.write_record("data.pkl", data, len(data))
        self._zip.write_record(".format_version", b"1", 1)
        self._zip.write_record(".storage_alignment", b"64", 2)
        self._zip.write_record("byteorder", b"little", 6)
        self._zip.write_end_of_file()
        del self._zip
        if self._stream is not None:
            self._stream.close()

    @staticmethod
    def _persistent_id(obj: Any) -> Any:
        if isinstance(obj, _Storage):
            storage_type = getattr(torch, STORAGE_TYPE_NAMES[obj.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None
