"""Typed, reversible ops: the canonical half of a mapping row (`row.py`), for every format.

An op says how the canonical tensors of one row (in `canon` order) become the one whole
tensor stored under the row's name, and back. Every op has `pack` and its inverse `unpack`,
plus `shape` so writers can plan files before reading anything. How tensor parallelism then
cuts the whole tensor is the row's other half (`shards.py`). GPT-2's `Conv1D` keeps weights as
`[in, out]`, the transpose of `nn.Linear`: that is `Transposed(...)`, not a special case;
Megatron's SwiGLU fc1 is `ConcatRows` (`[gate; up]`) cut by `shards.Blocks`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

from .ops import fuse_qkv, pad_rows, rotary_to_half, rotary_to_interleaved, split_qkv
from .row_runs import RowRuns, joined_rows
from .spec import ModelSpec

Shape = tuple[int, ...]


class Layout(ABC):
    @abstractmethod
    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        """Canonical tensors -> the stored tensor."""

    @abstractmethod
    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        """Inverse of `pack`; `shapes` are the canonical shapes (for splitting)."""

    @abstractmethod
    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        """Stored shape from the canonical shapes."""

    def cut(self, parts: list[torch.Tensor], spec: ModelSpec, boxes: list[tuple[slice, ...]], *,
            runs: bool = False) -> list[torch.Tensor | RowRuns]:
        """Boxes of the stored tensor (torch_dist chunks): `pack(parts)[box]` for each box. Layouts
        whose boxes can be cut from the parts themselves override this to skip the packed copy;
        with `runs` one whose rows come from several parts may return them unjoined (`RowRuns`)."""
        whole = self.pack(parts, spec)
        return [whole[box] for box in boxes]


@dataclass(frozen=True)
class Identity(Layout):
    """One canonical tensor stored as is."""

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        return parts[0]

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        return [stored]

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        return shapes[0]


@dataclass(frozen=True)
class ConcatRows(Layout):
    """Canonical tensors stacked along dim 0 (GPT-2 `c_attn` is `[Q | K | V]`)."""

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        return torch.cat(parts, dim=0)

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        return [p.contiguous() for p in torch.split(stored, [s[0] for s in shapes], dim=0)]

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def cut(self, parts: list[torch.Tensor], spec: ModelSpec, boxes: list[tuple[slice, ...]], *,
            runs: bool = False) -> list[torch.Tensor | RowRuns]:
        """A box's rows taken from the parts they lie in: a view when inside one part (SwiGLU fc1's
        TP pieces are each inside gate or up), so the [gate; up] copy is never made."""
        starts = [0]
        for p in parts:
            starts.append(starts[-1] + p.shape[0])
        out = []
        for rows, *rest in boxes:
            start, stop, _ = rows.indices(starts[-1])
            pieces = [p[(slice(max(start, at) - at, min(stop, end) - at), *rest)]
                      for p, at, end in zip(parts, starts, starts[1:]) if max(start, at) < min(stop, end)]
            out.append(pieces[0] if len(pieces) == 1 else joined_rows(pieces or [parts[0][(slice(0, 0), *rest)]], runs=runs))
        return out


@dataclass(frozen=True)
class GroupedQKV(Layout):
    """q, k, v fused per query group `[q.., k, v]` (Megatron's layout; BLOOM's per-head
    `[heads, 3, d]` is the case groups == heads, Falcon multi-query the case groups == 1).

    `keeps_rotary`: the stored q/k rows keep the spec's rotary layout (a Megatron target of a
    Meta or Megatron-LLM source stays interleaved); canonical q/k are always rotate-half."""

    keeps_rotary: bool = False

    def _rotary(self, spec: ModelSpec) -> int | None:
        return int(spec.head_dim * spec.rotary_percent) if self.keeps_rotary and spec.rotary_interleaved else None

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        q, k, v = parts
        if (r := self._rotary(spec)) is not None:
            q, k = rotary_to_interleaved(q, spec.heads, r), rotary_to_interleaved(k, spec.kv_heads, r)
        return fuse_qkv(q, k, v, spec.heads, spec.kv_heads)

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        q, k, v = split_qkv(stored, spec.heads, spec.kv_heads)
        if (r := self._rotary(spec)) is not None:
            q, k = rotary_to_half(q, spec.heads, r), rotary_to_half(k, spec.kv_heads, r)
        return [q, k, v]

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def cut(self, parts: list[torch.Tensor], spec: ModelSpec, boxes: list[tuple[slice, ...]], *,
            runs: bool = False) -> list[torch.Tensor | RowRuns]:
        """A box of whole query groups is runs of q, k and v rows, `[q_g; k_g; v_g]` per group:
        taken from them (one copy, or none with `runs`), not cut from the fused whole."""
        q, k, v = parts
        groups = spec.kv_heads
        d = k.shape[0] // groups if groups else 0
        per = q.shape[0] // groups if groups else 0  # q rows per group
        block = per + 2 * d
        if self._rotary(spec) is not None or not d or any(b[0].step not in (None, 1) for b in boxes):
            return super().cut(parts, spec, boxes, runs=runs)
        out = []
        for rows, *rest in boxes:
            start, stop, _ = rows.indices(groups * block)
            if start % block or stop % block:  # not whole groups: cut from the fused tensor
                return super().cut(parts, spec, boxes, runs=runs)
            index = tuple(rest)
            pieces = [t[(slice(g * n, (g + 1) * n), *index)] for g in range(start // block, stop // block)
                      for t, n in ((q, per), (k, d), (v, d))]
            out.append(joined_rows(pieces, runs=runs))
        return out


@dataclass(frozen=True)
class NormOffset(Layout):
    """A norm weight stored as `gamma - 1` under Megatron's layernorm-1p. A zero-centred norm
    (Gemma-style `w + 1` in the forward) is already stored as `w`: kept as is."""

    def _offset(self, spec: ModelSpec) -> bool:
        return spec.layernorm_1p and not spec.norm_zero_centered

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        return parts[0] - 1 if self._offset(spec) else parts[0]

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        return [(stored + 1).contiguous() if self._offset(spec) else stored]

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        return shapes[0]


@dataclass(frozen=True)
class PadVocab(Layout):
    """Vocabulary rows stored padded to `spec.padded_vocab` (Megatron repeats the last row);
    read back trimmed to the canonical vocabulary, or padded up to a larger tokenizer."""

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        return pad_rows(parts[0], spec.padded_vocab or spec.vocab)

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        return [pad_rows(stored, shapes[0][0]) if stored.shape[0] != shapes[0][0] else stored.contiguous()]

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        return (spec.padded_vocab or shapes[0][0], *shapes[0][1:])

    def cut(self, parts: list[torch.Tensor], spec: ModelSpec, boxes: list[tuple[slice, ...]], *,
            runs: bool = False) -> list[torch.Tensor | RowRuns]:
        """A box's rows straight from the canonical rows (a view); only a box that reaches the
        padding is copied, with the last row repeated, so the padded embedding and head are never
        made whole."""
        t = parts[0]
        real, total = t.shape[0], spec.padded_vocab or t.shape[0]
        out = []
        for rows, *rest in boxes:
            start, stop, _ = rows.indices(total)
            inside = t[(slice(min(start, real), min(stop, real)), *rest)]
            extra = stop - max(start, real)
            if extra <= 0:
                out.append(inside)
                continue
            last = t[(slice(real - 1, real), *rest)]
            out.append(torch.cat([inside, last.expand(extra, *last.shape[1:])], dim=0))
        return out


@dataclass(frozen=True)
class Transposed(Layout):
    """`Conv1D`: the inner layout's 2-D result stored as `[in, out]` (1-D biases are untouched)."""

    inner: Layout = field(default_factory=Identity)

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        packed = self.inner.pack(parts, spec)
        return packed.t().contiguous() if packed.dim() == 2 else packed

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        return self.inner.unpack(stored.t().contiguous() if stored.dim() == 2 else stored, shapes, spec)

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        inner = self.inner.shape(shapes, spec)
        return tuple(reversed(inner)) if len(inner) == 2 else inner


@dataclass(frozen=True)
class Constant(Layout):
    """A stored buffer that carries no learned value (xIELU's `beta` / `eps`): no canonical
    tensor; written from the spec so loaders find every key, ignored on read."""

    value: float = 0.0

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        return torch.tensor(self.value, dtype=torch.float32)

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        return []

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        return ()


@dataclass(frozen=True)
class Interleave(Layout):
    """Canonical tensors interleaved row by row along dim 0 (gpt-oss `gate_up_proj`: gate rows at
    even positions, up rows at odd ones; its bias the same)."""

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        return torch.stack(parts, dim=1).reshape(-1, *parts[0].shape[1:])

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        n = len(shapes)
        return [stored[k::n].contiguous() for k in range(n)]

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        return (sum(s[0] for s in shapes), *shapes[0][1:])


@dataclass(frozen=True)
class Stacked(Layout):
    """One stored tensor holding every expert on dim 0 (gpt-oss `mlp.experts.*`): `inner` packs
    each expert's `per` canonical tensors; the parts come expert-major."""

    inner: Layout = field(default_factory=Identity)
    per: int = 1

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        n = self.per
        return torch.stack([self.inner.pack(parts[i:i + n], spec) for i in range(0, len(parts), n)])

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        n = self.per
        return [t for e in range(stored.shape[0]) for t in self.inner.unpack(stored[e], shapes[e * n:(e + 1) * n], spec)]

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        return (len(shapes) // self.per, *self.inner.shape(shapes[:self.per], spec))


IDENTITY = Identity()
CONV1D = Transposed()


@dataclass(frozen=True)
class InterleavedRotary(Layout):
    """q or k rows (or their bias) stored with the rotary channels of each head in interleaved
    pairs (GLM4); canonical rows are rotate-half. Only the first `head_dim × rotary_percent`
    channels of a head rotate, so only those are permuted."""

    keys: bool = False  # False: q rows (`heads`), True: k rows (`kv_heads`)

    def _heads(self, spec: ModelSpec) -> int:
        return spec.kv_heads if self.keys else spec.heads

    def pack(self, parts: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
        return rotary_to_interleaved(parts[0], self._heads(spec), int(spec.head_dim * spec.rotary_percent))

    def unpack(self, stored: torch.Tensor, shapes: list[Shape], spec: ModelSpec) -> list[torch.Tensor]:
        return [rotary_to_half(stored, self._heads(spec), int(spec.head_dim * spec.rotary_percent))]

    def shape(self, shapes: list[Shape], spec: ModelSpec) -> Shape:
        return shapes[0]
