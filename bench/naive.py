"""The load-everything baseline: what conversion scripts commonly do, for comparison only.

Every source shard is loaded whole (`torch.load`, `safetensors.load_file`, a full DCP load),
every output file is built as an in-memory state dict, and each is saved at the end with
`torch.save` / `safetensors.save_file`. The tensor mapping itself is ckptscope's (same rules,
same transforms), so the difference to the streaming engine is purely how data moves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ckptscope.converters.plan import Plan
from ckptscope.converters.row_runs import RowRuns
from ckptscope.inspectors.torchfile import flatten


class _InMemory:
    """Stands in for a TensorInfo.source: the tensor was loaded with its whole file."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def load(self) -> torch.Tensor:
        return self.tensor


def load_everything(plan: Plan) -> dict[str, Any]:
    """Load every model file of the source fully and point the plan's tensors at the copies."""
    ckpt = plan.ckpt
    paths = {f.rel: f.path for f in ckpt.files}
    loaded: dict[str, Any] = {}
    if ckpt.kind == "megatron-dist":
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

        state: dict[str, Any] = {}
        folder = next(p.parent for rel, p in paths.items() if rel.endswith(".distcp"))
        _load_state_dict(state, storage_reader=FileSystemReader(folder), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
        loaded["dcp"] = state
        plan.source._slice = lambda info, *index: state[info.name][index] if index else state[info.name]  # type: ignore[attr-defined]
        return loaded
    for info in ckpt.model_tensors():
        if info.file not in loaded:
            path = paths[info.file]
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                loaded[info.file] = load_file(str(path))
            else:
                obj = torch.load(path, map_location="cpu", weights_only=False)
                loaded[info.file] = dict(flatten(obj.get("model", obj) if isinstance(obj, dict) else obj))
        table = loaded[info.file]
        tensor = table.get(info.name)
        if tensor is None:
            tensor = table[f"model.{info.name}"]
        info.source = _InMemory(tensor)
    return loaded


class _MemoryZip:
    """Replaces TorchZipWriter: keeps tensors, `torch.save`s the whole object at the end."""

    saved: list[tuple[Path, Any]] = []

    def __init__(self, path: str | Path, **_: object) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bytes_written = 0

    def add(self, tensor: torch.Tensor | RowRuns) -> torch.Tensor:
        self.bytes_written += tensor.nbytes
        return tensor.join() if isinstance(tensor, RowRuns) else tensor.contiguous()  # a naive converter joins its pieces

    def flush(self) -> None:
        """Nothing is written before the end."""

    def finish(self, obj: Any) -> None:
        _MemoryZip.saved.append((self.path, obj))


class _MemorySafetensors:
    """Replaces SafetensorsStreamWriter: collects one shard's tensors, saved at the end."""

    saved: list[tuple[Path, dict[str, torch.Tensor]]] = []

    def __init__(self, path: str | Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict | None = None) -> None:
        self.path = Path(path)
        self.names = [name for name, _, _ in entries]
        self.tensors: dict[str, torch.Tensor] = {}
        self._fh = open(self.path, "wb")  # HfWriter.abort() closes this

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name] = tensor.contiguous()

    @property
    def done(self) -> bool:
        return len(self.tensors) == len(self.names)

    def close(self) -> None:
        self._fh.close()
        _MemorySafetensors.saved.append((self.path, self.tensors))


def naive_convert(plan: Plan, dst: Path) -> dict[str, float]:
    """Load all, convert all in memory, save all; returns the seconds of each phase."""
    import time

    from safetensors.torch import save_file

    from ckptscope.converters.writers import hf as hf_mod
    from ckptscope.converters.writers import megatron_torch as mt_mod
    from ckptscope.converters.writers import nxd as nxd_mod
    from ckptscope.converters.writers import xser as xser_mod

    hf_mod.SafetensorsStreamWriter = _MemorySafetensors  # type: ignore[misc,assignment]
    mt_mod.TorchZipWriter = _MemoryZip  # type: ignore[misc,assignment]
    nxd_mod.TorchZipWriter = _MemoryZip  # type: ignore[misc,assignment]
    xser_mod.TorchZipWriter = _MemoryZip  # type: ignore[misc,assignment]
    t0 = time.perf_counter()
    loaded = load_everything(plan)
    t1 = time.perf_counter()
    dst.mkdir(parents=True)
    writer = plan.writer
    writer.open(dst)
    for group in plan.groups:
        writer.write(group, plan.source.read(group))
    writer.close()
    t2 = time.perf_counter()
    for path, obj in _MemoryZip.saved:
        torch.save(obj, path)
    for path, tensors in _MemorySafetensors.saved:
        save_file(tensors, str(path), metadata={"format": "pt"})
    t3 = time.perf_counter()
    del loaded
    return {"load": t1 - t0, "convert": t2 - t1, "save": t3 - t2}


def layer_bytes(shapes: dict[str, tuple[int, ...]], itemsize: int) -> int:
    """Bytes of the largest streaming group (a layer, or the embeddings / the head)."""
    groups: dict[str, int] = {}
    for name, shape in shapes.items():
        key = name.split(".")[1] if name.startswith("layers.") else name
        groups[key] = groups.get(key, 0) + math.prod(shape) * itemsize
    return max(groups.values())
