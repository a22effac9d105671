"""Exact tensor layout operations shared by Megatron-style formats.

Each op has its inverse next to it. Layouts follow ../shared/reference/megatron-and-hf.md §4:
fused QKV grouped per query group `[q_g0..q_g(g-1), k, v]`, SwiGLU fc1 `[gate; up]` (per TP rank
in the `torch` format), column/row splits, and vocab padding by repeating the last row.
"""

from __future__ import annotations

import torch


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int) -> torch.Tensor:
    """HF q/k/v (`[heads*d, ...]`, `[groups*d, ...]`) -> Megatron grouped `[(heads+2*groups)*d, ...]`."""
    d = k.shape[0] // groups
    per = heads // groups
    rest = q.shape[1:]
    qg = q.reshape(groups, per * d, *rest)
    kg = k.reshape(groups, d, *rest)
    vg = v.reshape(groups, d, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape((heads + 2 * groups) * d, *rest)


def split_qkv(fused: torch.Tensor, heads: int, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_qkv`."""
    per = heads // groups
    d = fused.shape[0] // (heads + 2 * groups)
    rest = fused.shape[1:]
    g = fused.reshape(groups, per + 2, d, *rest)
    q = g[:, :per].reshape(heads * d, *rest)
    k = g[:, per].reshape(groups * d, *rest)
    v = g[:, per + 1].reshape(groups * d, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def split(t: torch.Tensor, dim: int, parts: int) -> list[torch.Tensor]:
    """Contiguous equal split along `dim` (column parallel: 0; row parallel: 1)."""
    if t.shape[dim] % parts:
        raise ValueError(f"dimension {dim} of size {t.shape[dim]} does not split into {parts} equal parts")
    return [c.contiguous() for c in torch.chunk(t, parts, dim=dim)]


def pack_swiglu(gate: torch.Tensor, up: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """Per-rank `[gate_r; up_r]`, the `torch`-format packing of SwiGLU fc1."""
    return [torch.cat([g, u], dim=0) for g, u in zip(split(gate, 0, tp), split(up, 0, tp))]


def unpack_swiglu(shards: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_swiglu`: halve each rank's shard, then gather gates and ups separately."""
    halves = [torch.chunk(s, 2, dim=0) for s in shards]
    return torch.cat([h[0] for h in halves], dim=0), torch.cat([h[1] for h in halves], dim=0)


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad (repeating the last row, as Megatron's saver does) or trim to `rows` rows."""
    if t.shape[0] >= rows:
        return t[:rows].contiguous()
    pad = t[-1:].expand(rows - t.shape[0], *t.shape[1:])
    return torch.cat([t, pad], dim=0)
