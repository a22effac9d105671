"""torch_xla "xser" files written without torch_xla (reference §1.2).

For a logical file `P`: every tensor goes to `P.tensors/tensor_<tid>.pt` as soon as it is
produced (tids in insertion order, as torch_xla's depth-first walk numbers them); `P` itself is
an ordinary torch file whose structure holds objects that pickle as
`torch_xla.utils.serialization.TensorReference` (state `{"tid": n}`); NxD's `P.info.pt` maps each
tid to its dtype, shape and whether it is an expert-parallel tensor.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..row_runs import RowRuns
from .torchzip import TorchZipWriter
from .writer_thread import WriterThread

_MISSING = object()


def stub_class(module: str, qualname: str, namespace: dict[str, Any] | None = None) -> type:
    """A class that pickles as GLOBAL `module qualname` (use inside `pickled_as`)."""
    attrs = {"__module__": module, "__qualname__": qualname, **(namespace or {})}
    return type(qualname, (object,), attrs)


def _ensure_module(dotted: str, added: list[str]) -> types.ModuleType:
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], sys.modules[name])
    return sys.modules[dotted]


@contextlib.contextmanager
def pickled_as(*classes: type) -> Iterator[None]:
    """Temporarily make each stub resolvable at `__module__.__qualname__`, so pickle can
    write its GLOBAL (pickle checks that the name imports back to the same object)."""
    added: list[str] = []
    patched: list[tuple[types.ModuleType, str, Any]] = []
    try:
        for cls in classes:
            module = _ensure_module(cls.__module__, added)
            patched.append((module, cls.__qualname__, getattr(module, cls.__qualname__, _MISSING)))
            setattr(module, cls.__qualname__, cls)
        yield
    finally:
        for module, name, old in reversed(patched):
            if old is _MISSING:
                delattr(module, name)
            else:
                setattr(module, name, old)
        for name in reversed(added):
            sys.modules.pop(name, None)


def _ref_init(self: Any, tid: int) -> None:
    self.tid = tid


TensorReference = stub_class("torch_xla.utils.serialization", "TensorReference", {"__init__": _ref_init})


def tensors_dir(path: Path) -> Path:
    return path.with_name(path.name + ".tensors")


def info_path(path: Path) -> Path:
    return path.with_name(path.name + ".info.pt")


class XserFileWriter:
    """One xser file: `add` writes the tensor's own file; `finish` writes refs and info.

    With `background=True` the tensor files are written by a thread of this xser file's own,
    in order, at most `writer_thread.QUEUE_BYTES` queued (NxD targets: one per rank file, as
    the plain format has). On the caller's thread they took a fifth of an HF -> NxD xser
    conversion's main thread (py-spy: CRC and write of each `tensor_<tid>.pt`) while the scatter
    waited. The caller must not modify a tensor after handing it over.
    """

    def __init__(self, path: str | Path, *, with_info: bool = True, background: bool = False) -> None:
        self.path = Path(path)
        self.folder = tensors_dir(self.path)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.with_info = with_info
        self.info: dict[int, dict[str, Any]] = {}
        self.bytes_written = 0
        self._thread = WriterThread(self._write_tensor, str(self.path)) if background else None

    def add(self, tensor: torch.Tensor | RowRuns, *, expert: bool = False) -> Any:
        """Write `tensor_<tid>.pt` (now, or on the file's thread); return the reference to place
        in the structure."""
        tid = len(self.info)
        self.info[tid] = {"dtype": tensor.dtype, "shape": tensor.shape, "expert_model_parallel": expert}
        if self._thread is not None:
            t = tensor if isinstance(tensor, RowRuns) else tensor.detach()
            self._thread.put((tid, t), t.nbytes)
        else:
            self._write_tensor((tid, tensor))
        self.bytes_written += tensor.nbytes
        return TensorReference(tid)

    def _write_tensor(self, item: tuple[int, torch.Tensor | RowRuns]) -> None:
        tid, tensor = item
        writer = TorchZipWriter(self.folder / f"tensor_{tid}.pt")
        writer.finish(writer.add(tensor))

    def flush(self) -> None:
        """Tensor files are handed over one by one: nothing is gathered."""

    def abort(self) -> None:
        """Stop the file's thread after a failure (the files go with their folder)."""
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.stop()

    def finish(self, obj: Any) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.drain()
        with pickled_as(TensorReference):
            torch.save(obj, self.path)
        if self.with_info:
            torch.save(self.info, info_path(self.path))


def save_xser(state: dict[str, tuple[torch.Tensor, bool]], path: Path, *, with_info: bool = True) -> None:
    """Whole-dict convenience: {name: (tensor, expert_model_parallel)} -> one xser file."""
    writer = XserFileWriter(path, with_info=with_info)
    refs = OrderedDict((name, writer.add(t, expert=expert)) for name, (t, expert) in state.items())
    writer.finish(dict(refs))
