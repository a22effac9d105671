"""Apply a Megatron rule row in both directions: gather TP shards into canonical tensors, and
scatter canonical tensors into TP shards (or the TP-independent torch_dist global tensor).

The `Pack` of a row decides how several canonical tensors share one stored tensor; its `Split`
decides how TP cuts it. Everything layout-specific lives here and in `ops.py`.
"""

from __future__ import annotations

import torch

from .ops import (fuse_qkv, pack_swiglu, pad_rows, qkv_from_version, rotary_to_half, rotary_to_interleaved, split,
                  split_qkv, unpack_swiglu)
from .rules.megatron import Pack, Param, Split
from .spec import ModelSpec


def _norm_in(t: torch.Tensor, param: Param, spec: ModelSpec) -> torch.Tensor:
    """Stored -> true gamma (layernorm-1p stores gamma - 1)."""
    return t + 1 if param.pack is Pack.NORM and spec.layernorm_1p and not spec.norm_zero_centered else t


def _norm_out(t: torch.Tensor, param: Param, spec: ModelSpec) -> torch.Tensor:
    return t - 1 if param.pack is Pack.NORM and spec.layernorm_1p and not spec.norm_zero_centered else t


def _rotary_dim(spec: ModelSpec) -> int:
    return int(spec.head_dim * spec.rotary_percent)


def gather(param: Param, shards: list[torch.Tensor], spec: ModelSpec) -> list[torch.Tensor]:
    """TP shards of one stored tensor (rank order) -> its canonical tensors (param.canon order).

    A legacy source's pre-2 QKV ordering is undone per rank (each rank holds its own heads);
    writers always write the current ordering."""
    if param.pack is Pack.QKV and spec.qkv_version < 2:
        local = spec.heads // len(shards)
        shards = [qkv_from_version(s, spec.qkv_version, local) for s in shards]
    if param.pack is Pack.SWIGLU:
        gate, up = unpack_swiglu(shards)
        return [gate, up]
    if param.split is Split.REPLICATED:
        full = shards[0]
    else:
        full = torch.cat(shards, dim=1 if param.split is Split.ROW else 0) if len(shards) > 1 else shards[0]
    return _unpack_full(param, full, spec)


def from_global(param: Param, full: torch.Tensor, spec: ModelSpec) -> list[torch.Tensor]:
    """A torch_dist global tensor (TP-independent) -> canonical tensors."""
    if param.pack is Pack.SWIGLU:
        gate, up = torch.chunk(full, 2, dim=0)
        return [gate.contiguous(), up.contiguous()]
    return _unpack_full(param, full, spec)


def _unpack_full(param: Param, full: torch.Tensor, spec: ModelSpec) -> list[torch.Tensor]:
    if param.pack is Pack.QKV:
        q, k, v = split_qkv(full, spec.heads, spec.kv_heads)
        if spec.rotary_interleaved:  # canonical q/k are rotate-half
            q, k = rotary_to_half(q, spec.heads, _rotary_dim(spec)), rotary_to_half(k, spec.kv_heads, _rotary_dim(spec))
        return [q, k, v]
    if param.split is Split.VOCAB and full.shape[0] != spec.vocab:
        full = pad_rows(full, spec.vocab)  # trim Megatron's padding, or pad up to a larger tokenizer
    return [_norm_in(full, param, spec).contiguous()]


def to_global(param: Param, canon: list[torch.Tensor], spec: ModelSpec, padded_vocab: int) -> torch.Tensor:
    """Canonical tensors -> the full stored tensor (what torch_dist keeps, and what TP cuts)."""
    if param.pack is Pack.QKV:
        q, k = canon[0], canon[1]
        if spec.rotary_interleaved:  # a Megatron target of an interleaved spec keeps its layout
            q, k = rotary_to_interleaved(q, spec.heads, _rotary_dim(spec)), rotary_to_interleaved(k, spec.kv_heads, _rotary_dim(spec))
        return fuse_qkv(q, k, canon[2], spec.heads, spec.kv_heads)
    if param.pack is Pack.SWIGLU:
        return torch.cat(canon, dim=0)
    full = _norm_out(canon[0], param, spec)
    if param.split is Split.VOCAB:
        full = pad_rows(full, padded_vocab)
    return full


def scatter(param: Param, canon: list[torch.Tensor], spec: ModelSpec, tp: int, padded_vocab: int) -> list[torch.Tensor]:
    """Canonical tensors -> one stored shard per TP rank (the `torch` format layout)."""
    if param.pack is Pack.SWIGLU:
        return pack_swiglu(canon[0], canon[1], tp)
    full = to_global(param, canon, spec, padded_vocab)
    if param.split is Split.REPLICATED:
        return [full] * tp
    return split(full, 1 if param.split is Split.ROW else 0, tp)


def tp_boxes(param: Param, shape: tuple[int, ...], tp: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(offsets, sizes) of each TP rank's piece of a global tensor, as Megatron chunks torch_dist.

    SwiGLU fc1 is cut into 2·TP row blocks, even at TP=1 (megatron-core's swiglu factory always
    separates the halves): rank r's gate half is block r, its up half TP + r.
    """
    if param.pack is Pack.SWIGLU:
        rows = shape[0] // (2 * tp)
        return [((b * rows,) + (0,) * (len(shape) - 1), (rows,) + shape[1:]) for b in range(2 * tp)]
    if param.split is Split.REPLICATED or tp == 1:
        return [((0,) * len(shape), shape)]
    dim = 1 if param.split is Split.ROW else 0
    size = shape[dim] // tp
    boxes = []
    for r in range(tp):
        offsets = [0] * len(shape)
        sizes = list(shape)
        offsets[dim], sizes[dim] = r * size, size
        boxes.append((tuple(offsets), tuple(sizes)))
    return boxes
