"""Exact tensor layout operations shared by Megatron-style formats.

Each op has its inverse next to it. Layouts follow ../shared/reference/megatron-and-hf.md §4:
fused QKV grouped per query group `[q_g0..q_g(g-1), k, v]`, SwiGLU fc1 `[gate; up]` (per TP rank
in the `torch` format), column/row splits, and vocab padding by repeating the last row.
"""

from __future__ import annotations
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too


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
    """Per-rank `[gate_r; up_r]`, the `torch`-format packing of SwiGLU fc1 (the fixture writers'
    spelling; the converter cuts and glues it as `shards.Blocks`)."""
    return [torch.cat([g, u], dim=0) for g, u in zip(split(gate, 0, tp), split(up, 0, tp))]


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad (repeating the last row, as Megatron's saver does) or trim to `rows` rows."""
    if t.shape[0] >= rows:
        return t[:rows].contiguous()
    pad = t[-1:].expand(rows - t.shape[0], *t.shape[1:])
    return torch.cat([t, pad], dim=0)


# ----- rotary layouts -------------------------------------------------------------------------
def _per_head(t: torch.Tensor, heads: int) -> tuple[torch.Tensor, int]:
    d = t.shape[0] // heads
    return t.reshape(heads, d, *t.shape[1:]), d


def rotary_to_half(t: torch.Tensor, heads: int, rotary_dim: int | None = None) -> torch.Tensor:
    """q or k rows (`[heads*d, ...]`): Meta's interleaved pairs `(x0, x1), (x2, x3)..` -> the
    rotate-half order `x0, x2, .. | x1, x3, ..` HF and Megatron-Core use (per head; only the
    first `rotary_dim` channels rotate, the rest stay)."""
    h, d = _per_head(t, heads)
    r = rotary_dim or d
    rot = h[:, :r].reshape(heads, r // 2, 2, *t.shape[1:]).transpose(1, 2).reshape(heads, r, *t.shape[1:])
    return torch.cat([rot, h[:, r:]], dim=1).reshape(t.shape).contiguous()


def rotary_to_interleaved(t: torch.Tensor, heads: int, rotary_dim: int | None = None) -> torch.Tensor:
    """Inverse of `rotary_to_half`."""
    h, d = _per_head(t, heads)
    r = rotary_dim or d
    rot = h[:, :r].reshape(heads, 2, r // 2, *t.shape[1:]).transpose(1, 2).reshape(heads, r, *t.shape[1:])
    return torch.cat([rot, h[:, r:]], dim=1).reshape(t.shape).contiguous()


# ----- legacy Megatron QKV orderings (checkpoint_version < 2, multi-head attention) ----------
def qkv_from_version(t: torch.Tensor, version: int, heads: int) -> torch.Tensor:
    """One TP rank's fused QKV in a pre-2 ordering -> the current per-head `[heads, 3, d]`.
    Version 0 stores `[3, heads, d]` (all q, all k, all v); version 1 `[heads, d, 3]`."""
    if version >= 2:
        return t
    d = t.shape[0] // (3 * heads)
    rest = t.shape[1:]
    if version == 0:
        return t.reshape(3, heads, d, *rest).transpose(0, 1).reshape(t.shape).contiguous()
    return t.reshape(heads, d, 3, *rest).transpose(1, 2).reshape(t.shape).contiguous()


def qkv_to_version(t: torch.Tensor, version: int, heads: int) -> torch.Tensor:
    """Inverse of `qkv_from_version`."""
    if version >= 2:
        return t
    d = t.shape[0] // (3 * heads)
    rest = t.shape[1:]
    if version == 0:
        return t.reshape(heads, 3, d, *rest).transpose(0, 1).reshape(t.shape).contiguous()
    return t.reshape(heads, 3, d, *rest).transpose(1, 2).reshape(t.shape).contiguous()
