"""Apply an NxD rule row in both directions: canonical tensors <-> per-rank (TP, EP) shards.

The one non-obvious piece is attention under `kv_size_multiplier` (reference §1.5): when TP
exceeds the KV head count NxD tiles the KV heads `m` times (`[K0..K{kv-1}] * m`) before the
contiguous TP split, and reorders the Q heads (and `o_proj` columns) so that every rank's Q heads
belong to the KV head it holds. `HeadMap` records which heads each rank holds, so scatter and
gather are exact inverses, and fused per-rank `[q_r; k_r; v_r]` is cut at the true q/k/v row
counts (NxD's converter cuts it in equal thirds, which is wrong for GQA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ops import pack_swiglu, split, unpack_swiglu
from .rules.nxd import Layout, NxdParam
from .spec import ModelSpec, SpecError


@dataclass(frozen=True)
class HeadMap:
    """Q heads and KV heads held by each TP rank."""

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
    """What the cutting needs: the model, the degrees and the KV replication."""

    spec: ModelSpec
    tp: int = 1
    ep: int = 1
    kv_mult: int = 1

    @property
    def heads(self) -> HeadMap:
        return HeadMap.build(self.spec.heads, self.spec.kv_heads, self.tp, self.kv_mult)

    @property
    def local_experts(self) -> int:
        return self.spec.experts // self.ep


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


# ----- TP (non-expert rows) -------------------------------------------------------------------
def scatter(param: NxdParam, canon: list[torch.Tensor], geo: Geometry) -> list[torch.Tensor]:
    """Canonical tensors (param.canon order) -> one shard per TP rank."""
    lay, tp, d = param.layout, geo.tp, geo.spec.head_dim
    if lay is Layout.REPLICATED:
        return [canon[0]] * tp
    if lay is Layout.COLUMN:
        return split(canon[0], 0, tp)
    if lay is Layout.ROW:
        return split(canon[0], 1, tp)
    if lay is Layout.GATE_UP:
        return pack_swiglu(canon[0], canon[1], tp)
    heads = geo.heads
    if lay is Layout.Q:
        return [_rows(canon[0], q, d) for q in heads.q]
    if lay is Layout.KV:
        return [_rows(canon[0], kv, d) for kv in heads.kv]
    if lay is Layout.O:
        return [_rows(canon[0], q, d, dim=1) for q in heads.q]
    if lay is Layout.QKV:
        return [torch.cat([_rows(canon[0], q, d), _rows(canon[1], kv, d), _rows(canon[2], kv, d)])
                for q, kv in zip(heads.q, heads.kv)]
    if lay is Layout.KV_PAIR:
        return [torch.cat([_rows(canon[0], kv, d), _rows(canon[1], kv, d)]) for kv in heads.kv]
    raise ValueError(f"{lay} is an expert layout")


def gather(param: NxdParam, shards: list[torch.Tensor], geo: Geometry) -> list[torch.Tensor]:
    """One shard per TP rank -> canonical tensors (param.canon order)."""
    lay, spec, d = param.layout, geo.spec, geo.spec.head_dim
    if lay is Layout.REPLICATED:
        return [shards[0]]
    if lay is Layout.COLUMN:
        return [torch.cat(shards, dim=0)]
    if lay is Layout.ROW:
        return [torch.cat(shards, dim=1)]
    if lay is Layout.GATE_UP:
        return list(unpack_swiglu(shards))
    heads = geo.heads
    if lay is Layout.Q:
        return [_place(shards, heads.q, spec.heads, d)]
    if lay is Layout.KV:
        return [_place(shards, heads.kv, spec.kv_heads, d)]
    if lay is Layout.O:
        return [_place(shards, heads.q, spec.heads, d, dim=1)]
    if lay is Layout.QKV:
        parts = [torch.split(s, [len(q) * d, len(kv) * d, len(kv) * d]) for s, q, kv in zip(shards, heads.q, heads.kv)]
        return [_place([p[0] for p in parts], heads.q, spec.heads, d),
                _place([p[1] for p in parts], heads.kv, spec.kv_heads, d),
                _place([p[2] for p in parts], heads.kv, spec.kv_heads, d)]
    if lay is Layout.KV_PAIR:
        parts = [torch.split(s, [len(kv) * d, len(kv) * d]) for s, kv in zip(shards, heads.kv)]
        return [_place([p[0] for p in parts], heads.kv, spec.kv_heads, d),
                _place([p[1] for p in parts], heads.kv, spec.kv_heads, d)]
    raise ValueError(f"{lay} is an expert layout")


def kv_multiplier(param: NxdParam, shard_rows: int, geo: Geometry) -> int | None:
    """kv_size_multiplier implied by one shard's row count (None when the row does not tell).

    KV rows per rank × TP = kv_heads × head_dim × multiplier; fused rows add the rank's Q rows.
    """
    spec, d, tp = geo.spec, geo.spec.head_dim, geo.tp
    kv_rows = {Layout.KV: shard_rows, Layout.KV_PAIR: shard_rows / 2,
               Layout.QKV: (shard_rows - spec.heads * d / tp) / 2}.get(param.layout)
    if kv_rows is None:
        return None
    mult = kv_rows * tp / (spec.kv_heads * d)
    if mult < 1 or mult != int(mult):
        raise SpecError(f"{param.hf}: {shard_rows} rows per rank do not fit {spec.heads} heads / {spec.kv_heads} KV heads "
                        f"of size {d} at TP={tp}")
    return int(mult)


# ----- experts (TP × EP) ----------------------------------------------------------------------
def expert_canon(param: NxdParam, spec: ModelSpec, prefix: str) -> list[str]:
    """Canonical names of an expert row, expert-major (gate_0, up_0, gate_1, ...)."""
    return [prefix + c.format(e=e) for e in range(spec.experts) for c in param.canon]


def scatter_experts(param: NxdParam, canon: list[torch.Tensor], geo: Geometry) -> list[list[torch.Tensor]]:
    """Expert-major canonical tensors -> shards[ep][tp] of `[E_local, in, out]`."""
    per, tp, n = geo.local_experts, geo.tp, len(param.canon)
    out = []
    for ep in range(geo.ep):
        local = [canon[e * n:(e + 1) * n] for e in range(ep * per, (ep + 1) * per)]
        if param.layout is Layout.EXPERT_GATE_UP:
            ranks = [torch.stack([torch.cat([split(w.t(), 1, tp)[r] for w in ws], dim=1) for ws in local]) for r in range(tp)]
        else:
            ranks = [torch.stack([split(ws[0].t(), 0, tp)[r] for ws in local]) for r in range(tp)]
        out.append([t.contiguous() for t in ranks])
    return out


def gather_experts(param: NxdParam, shards: list[list[torch.Tensor]], geo: Geometry) -> list[torch.Tensor]:
    """shards[ep][tp] -> expert-major canonical tensors."""
    out: list[torch.Tensor] = []
    for by_tp in shards:
        for j in range(by_tp[0].shape[0]):
            pieces = [s[j] for s in by_tp]
            if param.layout is Layout.EXPERT_GATE_UP:
                halves = [torch.chunk(p, 2, dim=1) for p in pieces]
                out += [torch.cat([h[k] for h in halves], dim=1).t().contiguous() for k in range(2)]
            else:
                out.append(torch.cat(pieces, dim=0).t().contiguous())
    return out
