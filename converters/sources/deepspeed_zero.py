"""fp32 master weights rebuilt from DeepSpeed ZeRO-1/2/3 optimizer partitions, like `zero_to_fp32`.

Layouts (DeepSpeed `zero_to_fp32.py`, reference §2.4):
- ZeRO-1/2 and BF16_Optimizer: per param group, every data-parallel rank holds one contiguous
  slice of the group's flat fp32 vector (`single_partition_of_fp32_groups`, padding removed);
  concatenated over ranks they give the parameters of `param_shapes[group]` back to back.
- ZeRO-3: every parameter is cut into `ceil(numel / world)` pieces, one per rank; a rank's
  `fp32_flat_groups` hold its pieces of all parameters in `param_shapes` order.

Nothing is concatenated up front: each rebuilt parameter is a `TensorInfo` whose source reads
exactly its byte ranges from the partition files when (and only when) it is loaded, so a
conversion holds one parameter of the rebuild at a time (never a flat partition group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.formats.deepspeed import ds_files, param_shape_map
from ckptscope.inspectors.model import Checkpoint, Ranks, TensorInfo, dtype_name
from ckptscope.inspectors.safe_pickle import Placeholder
from ckptscope.inspectors.torchfile import LazyTensor, open_torch_file

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

OPTIM_KEY = "optimizer_state_dict"
STAGE12_GROUPS = "single_partition_of_fp32_groups"
STAGE3_GROUPS = "fp32_flat_groups"


@dataclass
class FlatSlices:
    """A parameter made of 1-D pieces of several partitions (reads only those bytes)."""

    pieces: list[LazyTensor]
    shape: tuple[int, ...]

    def load(self) -> torch.Tensor:
        flat = torch.cat([p.load() for p in self.pieces]) if len(self.pieces) > 1 else self.pieces[0].load()
        return flat.reshape(self.shape)


class VirtualFlat:
    """Several 1-D lazy tensors seen as one concatenated vector."""

    def __init__(self, parts: list[LazyTensor], path: Path) -> None:
        for p in parts:
            if len(p.shape) != 1:
                raise CheckpointError(path, f"flat fp32 partition has shape {p.shape}, expected 1-D")
        self.parts = parts
        self.numel = sum(p.numel for p in parts)

    def slice(self, start: int, length: int) -> list[LazyTensor]:
        out, at = [], 0
        for p in self.parts:
            lo, hi = max(start, at), min(start + length, at + p.numel)
            if lo < hi:
                out.append(LazyTensor(p.storage, p.storage_offset + (lo - at) * p.stride[0], (hi - lo,), p.stride, p.dtype))
            at += p.numel
        return out


def _stage(osd: dict[str, Any]) -> int:
    """`zero_stage` is an int or DeepSpeed's ZeroStageEnum; BF16_Optimizer files have none (1/2 layout)."""
    value = osd.get("zero_stage")
    if isinstance(value, Placeholder):
        value = value.args[0] if value.args else None
    try:
        return int(value) if value is not None else 2 if STAGE12_GROUPS in osd else 3
    except (TypeError, ValueError):
        return 2


def _open_dict(path: Path, key: str | None = None) -> dict[str, Any]:
    obj = open_torch_file(path).obj
    if key is not None:
        obj = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"expected a dict{' under ' + key if key else ''}, found {type(obj).__name__}")
    return obj


@dataclass
class _Rank:
    """What one model-parallel rank needs: its param shapes and its optimizer partitions by DP rank."""

    mp: int
    states: Path | None = None
    optim: dict[int, Path] = field(default_factory=dict)
    zero3_states: dict[int, Path] = field(default_factory=dict)


def _ranks(folder: Path) -> list[_Rank]:
    by_mp: dict[int, _Rank] = {}
    for path, role, g in ds_files(folder):
        rank = by_mp.setdefault(g.get("mp", 0), _Rank(g.get("mp", 0)))
        if role == "optim":
            rank.optim[g["dp"]] = path
        elif role == "model_states":
            rank.states = path
        elif role == "zero3_model_states":
            rank.zero3_states[g["dp"]] = path
    ranks = [r for _, r in sorted(by_mp.items()) if r.optim]
    if not ranks:
        raise CheckpointError(folder, "no ZeRO optimizer partitions (*zero_pp_rank_*_optim_states.pt) to rebuild fp32 weights from")
    return ranks


def rebuild_fp32(ckpt: Checkpoint, folder: Path) -> list[TensorInfo]:
    """Every parameter (and buffer) of the checkpoint as a lazily rebuilt fp32 tensor."""
    tp = ckpt.parallel.tp or 1
    out: list[TensorInfo] = []
    for rank in _ranks(folder):
        ranks = Ranks(tp=rank.mp % tp, pp=rank.mp // tp)
        states_path = rank.states or rank.zero3_states.get(0)
        if states_path is None:
            raise CheckpointError(folder, f"no model-states file for mp rank {rank.mp} (param_shapes live there)")
        states = _open_dict(states_path)
        dps = sorted(rank.optim)
        osds = [_open_dict(rank.optim[dp], OPTIM_KEY) for dp in dps]
        stage = _stage(osds[0])
        shapes = states.get("param_shapes")
        groups = shapes if isinstance(shapes, (list, tuple)) else [shapes]
        rel = rank.optim[dps[0]].name
        params = _stage3(osds, groups, rank, folder) if stage == 3 else _stage12(osds, groups, rank, folder)
        out += [TensorInfo(n, s, "float32", rel, ranks, source=src) for n, s, src in params]
        out += _frozen(states, rank, stage, ranks)
        out += _aliases_and_buffers(ckpt, states, out, ranks)
    return out


Rebuilt = tuple[str, tuple[int, ...], FlatSlices]


def _stage12(osds: list[dict[str, Any]], groups: list[Any], rank: _Rank, folder: Path) -> list[Rebuilt]:
    out: list[Rebuilt] = []
    world = len(osds)
    for g, shapes in enumerate(groups):
        flat = VirtualFlat([osd[STAGE12_GROUPS][g] for osd in osds], folder)
        offset = 0
        for name, shape in param_shape_map(shapes).items():
            n = math.prod(shape)
            out.append((name, shape, FlatSlices(flat.slice(offset, n), shape)))
            offset += n
        align = 2 * world  # zero_to_fp32's tolerance for end-of-group padding
        if -(-offset // align) * align != -(-flat.numel // align) * align:
            raise CheckpointError(folder, f"mp rank {rank.mp}, param group {g}: consumed {offset} of {flat.numel} fp32 elements; partitions do not match param_shapes")
    return out


def _stage3(osds: list[dict[str, Any]], groups: list[Any], rank: _Rank, folder: Path) -> list[Rebuilt]:
    world = len(osds)
    flats = [VirtualFlat(list(osd[STAGE3_GROUPS]), folder) for osd in osds]
    shapes: dict[str, tuple[int, ...]] = {}
    for group in groups:
        shapes.update(param_shape_map(group))
    out: list[Rebuilt] = []
    offset = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        part = -(-n // world)
        pieces = [p for flat in flats for p in flat.slice(offset, part)]
        out.append((name, shape, FlatSlices(_trim(pieces, n), shape)))
        offset += part
    if offset * world != flats[0].numel * world:
        raise CheckpointError(folder, f"ZeRO-3 mp rank {rank.mp}: consumed {offset} of {flats[0].numel} fp32 elements per rank")
    return out


def _trim(pieces: list[LazyTensor], numel: int) -> list[LazyTensor]:
    """Drop the partition padding at the end of a ZeRO-3 parameter."""
    out, left = [], numel
    for p in pieces:
        if left <= 0:
            break
        take = min(left, p.numel)
        out.append(p if take == p.numel else LazyTensor(p.storage, p.storage_offset, (take,), p.stride, p.dtype))
        left -= take
    return out


def _frozen(states: dict[str, Any], rank: _Rank, stage: int, ranks: Ranks) -> list[TensorInfo]:
    """Frozen params are not in the optimizer: whole in `frozen_param_fragments` (ZeRO-1/2),
    one piece per DP rank's model-states file (ZeRO-3)."""
    shapes = param_shape_map(states.get("frozen_param_shapes") or {})
    if not shapes:
        return []
    states_name = (rank.states or rank.zero3_states[0]).name
    if stage != 3:
        fragments = states.get("frozen_param_fragments") or {}
        return [TensorInfo(n, s, dtype_name(fragments[n].dtype), states_name, ranks,
                           source=FlatSlices([_flat(fragments[n])], s)) for n, s in shapes.items() if n in fragments]
    per_dp = [(_open_dict(rank.zero3_states[dp]).get("frozen_param_fragments") or {}) for dp in sorted(rank.zero3_states)]
    out = []
    for n, s in shapes.items():
        pieces = _trim([_flat(frag[n]) for frag in per_dp], math.prod(s))
        out.append(TensorInfo(n, s, dtype_name(pieces[0].dtype), states_name, ranks, source=FlatSlices(pieces, s)))
    return out


def _flat(t: LazyTensor) -> LazyTensor:
    return LazyTensor(t.storage, t.storage_offset, (t.numel,), (1,), t.dtype)


def _aliases_and_buffers(ckpt: Checkpoint, states: dict[str, Any], rebuilt: list[TensorInfo], ranks: Ranks) -> list[TensorInfo]:
    """Tied aliases (`shared_params`: alias -> source) and buffers kept in the module (zero_to_fp32 does both)."""
    by_name = {t.name: t for t in rebuilt if t.ranks == ranks}
    out = [TensorInfo(alias, by_name[src].shape, "float32", by_name[src].file, ranks, source=by_name[src].source)
           for alias, src in (states.get("shared_params") or {}).items() if src in by_name]
    buffers = set(states.get("buffer_names") or ())
    out += [t for t in ckpt.model_tensors() if t.name in buffers and (t.ranks.tp or 0, t.ranks.pp or 0) == (ranks.tp, ranks.pp)]
    return out
