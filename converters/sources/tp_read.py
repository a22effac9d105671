"""Gather TP shards from rank files by reading each one straight into its place in the whole tensor.

Gathering by loading every shard and concatenating them (`row.gather`) holds each tensor twice
or three times (the shards, `Blocks`' per-part concatenations, the whole), and an MoE layer's
hundreds of expert weights are each a separate allocation of 1-2 MB, below glibc's mmap
threshold, so the read threads' heaps fragment and never shrink: MoE Megatron TP2EP2 -> HF
peaked above its memory budget. Here a group's whole stored tensors are laid out in one buffer
(one mapping, returned whole when the group is written) and each TP shard's bytes are read into
its rows of it; a shard cut along a later dim (row-parallel columns) is read whole into a small
scratch buffer and copied into its columns. Every member read whole is still checked against
its zip CRC-32, computed over the pieces in file order.

Only plain cuts are read this way (`Cut` along any dim, `Blocks`: `[gate_r; up_r]`), of shards
stored as one contiguous span (what `torch.save` writes for a parameter); anything else returns
None and is gathered the usual way. The values are those of `row.gather`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ckptscope.inspectors.dtypes import as_torch
from ckptscope.inspectors.model import TensorInfo
from ckptscope.inspectors.torchfile import LazyTensor

from ..row import Row, from_stored, gather
from ..shards import Blocks, Cut, Geometry, Heads, QkvCut
from ..spec import ModelSpec

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on the first read: `inspect` opens sources too

ALIGN = 64  # each whole tensor starts on a cache line of the group buffer
_BITS = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}  # same-size integer views for numpy copies


@dataclass(frozen=True)
class WholeRead:
    """How one row's shards make its whole stored tensor."""

    shards: tuple[LazyTensor, ...]  # TP rank order
    shape: tuple[int, ...]  # the whole tensor
    dtype: torch.dtype
    dim: int  # the cut dim
    parts: int  # blocks along it (`Blocks`: [gate_r; up_r] per rank), else 1

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_whole(row: Row, infos: list[TensorInfo], spec: ModelSpec, geo: Geometry | None = None) -> WholeRead | None:
    """The whole-tensor read of a row's shards, or None where it is not a plain cut of plain shards
    (NxD's per-rank heads are one when no KV head is replicated: `Heads.as_cut`, with `geo`)."""
    shard = row.shard
    if type(shard) is Heads and geo is not None and geo.tp == len(infos):
        shard = shard.as_cut(geo) or shard
    if type(shard) is Cut or (type(shard) is QkvCut and spec.qkv_version >= 2):  # a legacy QKV reorders each rank
        dim, parts = shard.dim, 1
    elif type(shard) is Blocks:
        dim, parts = shard.dim, shard.parts
    else:
        return None
    lazies = [lazy_tensor(i) for i in infos]
    if not lazies or not all(isinstance(t, LazyTensor) and _plain(t) for t in lazies):
        return None
    shapes = [t.shape for t in lazies]  # type: ignore[union-attr]
    dtypes = {as_torch(t.dtype) for t in lazies}  # type: ignore[union-attr]
    if len(dtypes) != 1 or len({len(s) for s in shapes}) != 1 or not 0 <= dim < len(shapes[0]):
        return None
    dtype = dtypes.pop()
    if dtype.itemsize not in _BITS or len({s[:dim] + s[dim + 1:] for s in shapes}) != 1 or any(s[dim] % parts for s in shapes):
        return None
    whole = list(shapes[0])
    whole[dim] = sum(s[dim] for s in shapes)
    return WholeRead(tuple(lazies), tuple(whole), dtype, dim, parts)  # type: ignore[arg-type]


def lazy_tensor(info: TensorInfo) -> LazyTensor | None:
    """The rank file's tensor: the info's source itself (NxD) or inside its `LazySource` (Megatron)."""
    return info.source if isinstance(info.source, LazyTensor) else getattr(info.source, "tensor", None)


def _plain(t: LazyTensor) -> bool:
    """Stored as one C-order span inside its storage, with data."""
    if t.storage is None or t.numel == 0:
        return False
    stride, n = [], 1
    for d in reversed(t.shape):
        stride.append(n)
        n *= d
    return tuple(reversed(stride)) == tuple(t.stride) and t.storage_offset + t.numel <= t.storage.numel


def layout(reads: list[WholeRead]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One buffer for all the whole tensors, and each whole tensor as a view of it. The gaps are
    zeroed, so a check of the buffer's span (`run.non_finite`) never reads stale memory."""
    offsets, total = [], 0
    for r in reads:
        total += -total % ALIGN
        offsets.append(total)
        total += r.nbytes
    buf = torch.empty(total, dtype=torch.uint8)
    views, end = [], 0
    for r, at in zip(reads, offsets):
        if at > end:
            buf[end:at].zero_()
        views.append(buf[at:at + r.nbytes].view(r.dtype).view(r.shape))
        end = at + r.nbytes
    return buf, views


def read_whole(plan: WholeRead, out: torch.Tensor) -> None:
    """Fill `out` (the whole tensor, contiguous) with every shard's bytes."""
    size = plan.dtype.itemsize
    target = memoryview(out.view(-1).view(torch.uint8).numpy())
    if len(plan.shards) == 1:  # TP 1: the shard is the whole tensor
        _read_span(plan.shards[0], [target])
        return
    rows_before = 1 if plan.dim == 0 else math.prod(plan.shape[:plan.dim])
    scratch: torch.Tensor | None = None
    placed = 0  # along the cut dim, per block: the ranks before this one
    block_whole = plan.shape[plan.dim] // plan.parts
    for t in plan.shards:
        m = t.shape[plan.dim] // plan.parts  # this shard's size of each block along the cut dim
        inner = math.prod(t.shape[plan.dim + 1:])  # elements per index along the cut dim
        if rows_before == 1:  # each block of the shard is a row range of the whole: read it in place
            pieces = [target[(k * block_whole + placed) * inner * size:(k * block_whole + placed + m) * inner * size]
                      for k in range(plan.parts)]
            _read_span(t, pieces)
        else:  # columns of the whole: read the shard whole, then copy each block into its columns
            n = t.numel * size
            if scratch is None or scratch.numel() < n:
                scratch = torch.empty(n, dtype=torch.uint8)
            _read_span(t, [memoryview(scratch.numpy())[:n]])
            bits = getattr(torch, _BITS[size])
            src = scratch[:n].view(bits).view(t.shape)
            dst = out.view(bits)
            for k in range(plan.parts):
                dst.narrow(plan.dim, k * block_whole + placed, m).numpy()[...] = src.narrow(plan.dim, k * m, m).numpy()
        placed += m


def _read_span(t: LazyTensor, pieces: list[memoryview]) -> None:
    """The shard's bytes, in file order, into the given pieces (CRC-checked when whole)."""
    assert t.storage is not None
    t.storage.read_into(t.storage_offset, as_torch(t.dtype).itemsize, pieces)


def read_rows(rows: list[tuple[Row, list[str], list[TensorInfo]]], spec: ModelSpec,
              load: Callable[[TensorInfo], torch.Tensor], geo: Geometry | None = None) -> dict[str, torch.Tensor]:
    """A group's canonical tensors from its rows (row, canonical names, shard infos in TP rank
    order): the plain cuts read in place into one buffer for the group, the rest loaded with
    `load` and gathered (with `geo`, else the shards' own TP)."""
    plans = [plan_whole(row, infos, spec, geo) for row, _, infos in rows]
    direct = [plan for plan in plans if plan is not None]
    placed = iter(layout(direct)[1] if direct else [])
    out: dict[str, torch.Tensor] = {}
    for (row, canon, infos), plan in zip(rows, plans):
        if plan is not None:
            whole = next(placed)
            read_whole(plan, whole)
            out.update(zip(canon, from_stored(row, whole, spec)))
        else:
            shards = [load(info) for info in infos]
            out.update(zip(canon, gather(row, shards, geo or Geometry(spec, len(shards)))))
    return out
