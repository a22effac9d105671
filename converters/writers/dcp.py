"""Stream a torch.distributed.checkpoint folder: chunks appended as they are made, metadata last.

Each chunk is serialised the way DCP's FileSystemWriter does (`torch.save` of the chunk) into a
`__<rank>_0.distcp` file; `.metadata` (a pickled DCP `Metadata` with every chunk's box and byte
range) is written by `finish`. No process group is needed.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from .output import open_output


class DcpStreamWriter:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, io.BufferedWriter] = {}
        self._chunks: dict[str, list] = {}
        self._tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        self._bytes_keys: list[str] = []
        self._storage: dict = {}
        self.bytes_written = 0

    def _file(self, rank: int) -> tuple[str, io.BufferedWriter]:
        name = f"__{rank}_0.distcp"
        if name not in self._files:
            self._files[name] = open_output(self.folder / name)
        return name, self._files[name]

    def _append(self, rank: int, payload: bytes | memoryview) -> tuple[str, int, int]:
        name, fh = self._file(rank)
        offset = fh.tell()
        fh.write(payload)
        self.bytes_written += len(payload)
        return name, offset, len(payload)

    def declare(self, key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        self._tensors[key] = (dtype, tuple(shape))
        self._chunks.setdefault(key, [])

    def add_chunk(self, key: str, offsets: tuple[int, ...], chunk: torch.Tensor, rank: int = 0) -> None:
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

        buf = io.BytesIO()
        torch.save(chunk.detach().cpu().contiguous().clone(), buf)
        name, offset, length = self._append(rank, buf.getbuffer())
        self._chunks[key].append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(chunk.shape)))
        self._storage[MetadataIndex(key, torch.Size(offsets))] = _StorageInfo(name, offset, length)

    def add_bytes(self, key: str, payload: bytes, rank: int = 0) -> None:
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        from torch.distributed.checkpoint.metadata import MetadataIndex

        name, offset, length = self._append(rank, payload)
        self._bytes_keys.append(key)
        self._storage[MetadataIndex(key)] = _StorageInfo(name, offset, length)

    def finish(self) -> None:
        from torch.distributed.checkpoint.metadata import (
            BytesStorageMetadata,
            Metadata,
            StorageMeta,
            TensorProperties,
            TensorStorageMetadata,
        )

        for fh in self._files.values():
            fh.close()
        state: dict[str, object] = {}
        for key, (dtype, shape) in self._tensors.items():
            state[key] = TensorStorageMetadata(TensorProperties(dtype=dtype), torch.Size(shape), self._chunks[key])
        for key in self._bytes_keys:
            state[key] = BytesStorageMetadata()
        meta = Metadata(state_dict_metadata=state, planner_data=None, storage_data=self._storage,
                        storage_meta=StorageMeta(checkpoint_id=str(self.folder), save_id="ckptscope", load_id=None, modules=[]))
        (self.folder / ".metadata").write_bytes(pickle.dumps(meta))

    def close_files(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
