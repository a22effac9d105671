"""How tensor parallelism cuts one stored tensor: the TP half of a mapping row.

A row's op (`layouts.py`) turns canonical tensors into the whole stored tensor; its `Shard`
cuts that whole tensor into one piece per TP rank and glues the pieces back. Every cut has
`scatter` and its inverse `gather`, and `boxes` (the offsets and sizes of each piece inside the
whole tensor, which is how torch_dist stores chunks). Megatron, NxD, DeepSpeed and Meta rows all
use these; an HF row is not cut (`REPLICATED` at TP 1).

The one non-obvious cut is NxD attention under `kv_size_multiplier` (reference §1.5): when TP
exceeds the KV head count NxD tiles the KV heads `m` times before the contiguous split, and
reorders the Q heads (and `o_proj` columns) so every rank's Q heads belong to the KV head it
holds. `HeadMap` records which heads each rank holds, so scatter and gather are exact inverses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

from .ops import qkv_from_version
from .row_runs import RowRuns, joined_rows
from .spec import ModelSpec, SpecError

Shape = tuple[int, ...]
Box = tuple[Shape, Shape]  # (offsets, sizes) inside the whole tensor


@dataclass(frozen=True)
class HeadMap:
    """Q heads and KV heads held by each TP rank (NxD's KV replication included)."""

    q: tuple[tuple[int, ...], ...]
    kv: tuple[tuple[int, ...], ...]

    @classmethod
    def build(cls, heads: int, kv_heads: int, tp: int, kv_mult: int) -> HeadMap:
        """Tiled slot t holds KV head `t % kv` (replica `t // kv`) and that replica's share of its Q group."""
        replicated = kv_heads * kv_mult
        if kv_mult < 1 or replicated % tp or heads % replicated:
            raise SpecError(f"TP={tp} must divide kv_heads×kv_size_multiplier={kv_heads}×{kv_mult}, "
                            f"which must divide the {heads} attention heads")
        group, chunk, per_rank = heads // kv_heads, heads // replicated, replicated // tp
        q_out, kv_out = [], []
        for rank in range(tp):
            q: list[int] = []
            kv: list[int] = []
            for slot in range(rank * per_rank, (rank + 1) * per_rank):
                head, replica = slot % kv_heads, slot // kv_heads
                kv.append(head)
                q.extend(range(head * group + replica * chunk, head * group + (replica + 1) * chunk))
            q_out.append(tuple(q))
            kv_out.append(tuple(kv))
        return cls(tuple(q_out), tuple(kv_out))


@dataclass(frozen=True)
class Geometry:
    """What cutting needs: the model, the degrees and NxD's KV replication."""

    spec: ModelSpec
    tp: int = 1
    ep: int = 1
    kv_mult: int = 1

    @cached_property
    def heads(self) -> HeadMap:
        """Built once per geometry: every head-cut row of every layer asks for it."""
        return HeadMap.build(self.spec.heads, self.spec.kv_heads, self.tp, self.kv_mult)

    @property
    def local_experts(self) -> int:
        return self.spec.experts // self.ep


class Shard(ABC):
    @abstractmethod
    def scatter(self, full: torch.Tensor, geo: Geometry) -> list[torch.Tensor]:
        """The whole stored tensor -> one piece per TP rank."""

    @abstractmethod
    def gather(self, shards: list[torch.Tensor], geo: Geometry) -> torch.Tensor:
        """Inverse of `scatter` (the number of pieces is the source's TP)."""

    def boxes(self, shape: Shape, tp: int) -> list[Box]:
        """Where each piece sits in the whole tensor (torch_dist chunks); rank = box index % tp."""
        return [((0,) * len(shape), shape)]

    def kv_rows(self, shard_rows: int, geo: Geometry) -> float | None:
        """KV rows per rank implied by a piece's row count (None when this cut does not tell)."""
        return None


@dataclass(frozen=True)
class Replicated(Shard):
    """Every rank holds the whole tensor."""

    def scatter(self, full: torch.Tensor, geo: Geometry) -> list[torch.Tensor]:
        return [full] * geo.tp

    def gather(self, shards: list[torch.Tensor], geo: Geometry) -> torch.Tensor:
        return shards[0]


def box_slices(box: Box) -> tuple[slice, ...]:
    """The index of a box (offsets, sizes) in the whole tensor."""
    return tuple(slice(o, o + s) for o, s in zip(*box))


def _cut_boxes(shape: Shape, dim: int, parts: int) -> list[Box]:
    if shape[dim] % parts:
        raise ValueError(f"dimension {dim} of size {shape[dim]} does not split into {parts} equal parts")
    size = shape[dim] // parts
    out = []
    for b in range(parts):
        offsets, sizes = [0] * len(shape), list(shape)
        offsets[dim], sizes[dim] = b * size, size
        out.append((tuple(offsets), tuple(sizes)))
    return out


class JoinedBoxes(Shard):
    """A rank's piece is its `boxes` of the whole side by side along `dim`, in box order (box b
    belongs to rank b % TP). `row.scatter` cuts those boxes straight from the canonical tensors
    (`Layout.cut`) and joins them; `scatter` does the same from the whole."""

    dim: int

    def scatter(self, full: torch.Tensor, geo: Geometry) -> list[torch.Tensor]:
        return self.join([full[box_slices(b)] for b in self.boxes(tuple(full.shape), geo.tp)], geo.tp)

    def join(self, pieces: list[torch.Tensor], tp: int, *, runs: bool = False) -> list[torch.Tensor | RowRuns]:
        """Each rank's boxes, in box order, as its piece (one box: a contiguous view or copy).
        `runs`: a piece whose boxes are whole rows of it comes back unjoined, as `RowRuns`."""
        by_rank = [pieces[r::tp] for r in range(tp)]
        if self.dim == 0:
            return [mine[0].contiguous() if len(mine) == 1 and not isinstance(mine[0], RowRuns) else joined_rows(mine, runs=runs)
                    for mine in by_rank]
        by_rank = [[p.join() if isinstance(p, RowRuns) else p for p in mine] for mine in by_rank]  # rows of a box cut across
        return [mine[0].contiguous() if len(mine) == 1 else torch.cat(mine, dim=self.dim) for mine in by_rank]


@dataclass(frozen=True)
class Cut(JoinedBoxes):
    """Contiguous equal pieces along `dim` (column parallel: 0, row parallel: 1)."""

    dim: int = 0

    def gather(self, shards: list[torch.Tensor], geo: Geometry) -> torch.Tensor:
        return torch.cat(shards, dim=self.dim) if len(shards) > 1 else shards[0]

    def boxes(self, shape: Shape, tp: int) -> list[Box]:
        return _cut_boxes(shape, self.dim, tp) if tp > 1 else super().boxes(shape, tp)


@dataclass(frozen=True)
class QkvCut(Cut):
    """Megatron's fused QKV cut by query groups; a legacy source (checkpoint_version < 2, MHA)
    stored each rank's heads in an older order, undone per rank on read (writers write the current one)."""

    def gather(self, shards: list[torch.Tensor], geo: Geometry) -> torch.Tensor:
        if geo.spec.qkv_version < 2:
            local = geo.spec.heads // len(shards)
            shards = [qkv_from_version(s, geo.spec.qkv_version, local) for s in shards]
        return super().gather(shards, geo)


@dataclass(frozen=True)
class Blocks(JoinedBoxes):
    """The whole tensor is `parts` equal blocks along `dim` (`[gate; up]`); each rank holds its
    piece of every block, side by side (`[gate_r; up_r]`). torch_dist keeps parts·TP boxes, even
    at TP 1 (megatron-core's SwiGLU factory always separates the halves)."""

    dim: int = 0
    parts: int = 2

    def gather(self, shards: list[torch.Tensor], geo: Geometry) -> torch.Tensor:
        halves = [torch.chunk(s, self.parts, dim=self.dim) for s in shards]  # one cat: every block of every rank in place
        return torch.cat([h[k] for k in range(self.parts) for h in halves], dim=self.dim)

    def boxes(self, shape: Shape, tp: int) -> list[Box]:
        return _cut_boxes(shape, self.dim, self.parts * tp)


def _rows(t: torch.Tensor, heads: tuple[int, ...], d: int, dim: int = 0) -> torch.Tensor:
    return torch.cat([t.narrow(dim, h * d, d) for h in heads], dim=dim).contiguous()


def _place(shards: list[torch.Tensor], per_rank: tuple[tuple[int, ...], ...], total: int, d: int, dim: int = 0) -> torch.Tensor:
    """Inverse of `_rows` over all ranks; a head held by several ranks is taken from the first."""
    shape = list(shards[0].shape)
    shape[dim] = total * d
    out = shards[0].new_empty(shape)
    seen: set[int] = set()
    for shard, heads in zip(shards, per_rank):
        for j, h in enumerate(heads):
            if h not in seen:
                seen.add(h)
                out.narrow(dim, h * d, d).copy_(shard.narrow(dim, j * d, d))
    if len(seen) != total:
        raise SpecError(f"shards hold {len(seen)} of {total} heads")
    return out


def _held(kind: str, geo: Geometry) -> tuple[tuple[tuple[int, ...], ...], int]:
    """Heads each rank holds of this kind ("q" or "kv"), and the model's count of them."""
    heads = geo.heads
    return (heads.q, geo.spec.heads) if kind == "q" else (heads.kv, geo.spec.kv_heads)


@dataclass(frozen=True)
class Heads(Shard):
    """Each rank holds its own Q (or KV) heads along `dim` (NxD; `o_proj` columns: q on dim 1)."""

    kind: str = "q"  # q | kv
    dim: int = 0

    def scatter(self, full: torch.Tensor, geo: Geometry) -> list[torch.Tensor]:
        held, _ = _held(self.kind, geo)
        return [_rows(full, h, geo.spec.head_dim, self.dim) for h in held]

    def gather(self, shards: list[torch.Tensor], geo: Geometry) -> torch.Tensor:
        held, total = _held(self.kind, geo)
        return _place(shards, held, total, geo.spec.head_dim, self.dim)

    def kv_rows(self, shard_rows: int, geo: Geometry) -> float | None:
        return float(shard_rows) if self.kind == "kv" and self.dim == 0 else None

    def as_cut(self, geo: Geometry) -> Cut | None:
        """This cut as a plain `Cut` along `dim` when each rank holds the next heads, each once
        (no KV replication), so in-place reads of the shards apply (`tp_read`)."""
        held, total = _held(self.kind, geo)
        return Cut(self.dim) if tuple(h for rank in held for h in rank) == tuple(range(total)) else None


@dataclass(frozen=True)
class HeadBlocks(Shard):
    """The whole tensor is blocks of heads (`[q; k; v]`, `[k; v]`); each rank holds its heads of
    every block, side by side (`[q_r; k_r; v_r]`), cut at the true row counts (NxD's own
    converter cuts fused GQA in equal thirds, which is wrong)."""

    kinds: tuple[str, ...] = ("q", "kv", "kv")

    def _totals(self, geo: Geometry) -> list[int]:
        return [_held(k, geo)[1] * geo.spec.head_dim for k in self.kinds]

    def scatter(self, full: torch.Tensor, geo: Geometry) -> list[torch.Tensor]:
        blocks = torch.split(full, self._totals(geo))
        d = geo.spec.head_dim
        per_kind = [_held(k, geo)[0] for k in self.kinds]
        return [torch.cat([_rows(b, held[r], d) for b, held in zip(blocks, per_kind)]) for r in range(geo.tp)]

    def gather(self, shards: list[torch.Tensor], geo: Geometry) -> torch.Tensor:
        d = geo.spec.head_dim
        per_kind = [_held(k, geo) for k in self.kinds]
        parts = [torch.split(s, [len(held[r]) * d for held, _ in per_kind]) for r, s in enumerate(shards)]
        return torch.cat([_place([p[k] for p in parts], held, total, d) for k, (held, total) in enumerate(per_kind)])

    def kv_rows(self, shard_rows: int, geo: Geometry) -> float | None:
        kv = self.kinds.count("kv")
        q_rows = self.kinds.count("q") * geo.spec.heads * geo.spec.head_dim / geo.tp
        return (shard_rows - q_rows) / kv if kv else None


REPLICATED = Replicated()
COLUMN = Cut(0)
ROW = Cut(1)
GATE_UP = Blocks(0, 2)

# The vocabulary's own word for how TP cuts a canonical tensor alone (`vocab.Canonical.tp`).
BY_VOCAB_TP: dict[str, Shard] = {"column": COLUMN, "row": ROW, "vocab": COLUMN, "replicated": REPLICATED}
