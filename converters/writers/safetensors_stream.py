"""Write a safetensors file tensor by tensor: the header (known from the plan) goes first.

The header lists every tensor with its byte range, so the file can be filled in order as the
tensors are produced without holding a whole shard in memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ckptscope.inspectors.safetensors_header import TORCH_TO_ST

from .output import open_output


class SafetensorsStreamWriter:
    def __init__(self, path: str | Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        self.path = path if hasattr(path, "open_write") else Path(path)  # remote_output.OutPath streams
        self._order = [name for name, _, _ in entries]
        self._expect = {name: (dtype, tuple(shape)) for name, dtype, shape in entries}
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for name, dtype, shape in entries:
            size = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": TORCH_TO_ST[str(dtype).removeprefix("torch.")], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data section starts 8-byte aligned
        self._fh = open_output(self.path)
        self._fh.write(len(raw).to_bytes(8, "little") + raw)
        self._next = 0
        self.bytes_written = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order) or self._order[self._next] != name:
            want = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"{self.path.name}: got {name}, expected {want}")
        dtype, shape = self._expect[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise RuntimeError(f"{self.path.name}: {name} is {tuple(tensor.shape)} {tensor.dtype}, planned {shape} {dtype}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        self._fh.write(data.numpy().data)
        self.bytes_written += data.numel()
        self._next += 1

    @property
    def done(self) -> bool:
        return self._next == len(self._order)

    def close(self) -> None:
        self._fh.close()
        if not self.done:
            raise RuntimeError(f"{self.path.name}: closed after {self._next} of {len(self._order)} tensors")
