"""The one mapping row every table uses: a stored name <-> canonical tensors, with a typed op
(`layouts.py`: how the canonical tensors make the whole stored tensor) and a typed TP cut
(`shards.py`: how ranks share that tensor). The same row gathers on read and scatters on write,
for HF, Megatron (`torch`, `torch_dist`, Megatron-LLM), DeepSpeed, NxD and Meta alike.

Names are relative to the table's layer prefix for layer rows; canonical names are relative to
`layers.{i}.` for layer rows, and `{e}` marks a per-expert row (expanded over experts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

from . import vocab
from .layouts import IDENTITY, Layout
from .row_runs import RowRuns
from .shards import REPLICATED, Box, Geometry, JoinedBoxes, Shard, box_slices
from .spec import ModelSpec

Shape = tuple[int, ...]


def _always(spec: ModelSpec) -> bool:
    return True


@dataclass(frozen=True)
class Row:
    """One stored tensor of a format or family table."""

    name: str  # stored name; `{e}` for a per-expert name
    canon: tuple[str, ...]  # the canonical tensors it holds, in the op's order
    op: Layout = IDENTITY  # canonical tensors <-> the whole stored tensor
    when: Callable[[ModelSpec], bool] = _always  # does this model have it
    shard: Shard = REPLICATED  # how TP ranks share the whole tensor
    variants: Mapping[str, str] = field(default_factory=dict)  # naming variant -> spelling (`{variant}_moe` for MoE)
    aliases: tuple[str, ...] = ()  # other spellings accepted on read
    stacked: bool = False  # a rank's experts stacked on a new dim 0 under one name (NxD)
    # naming variant -> its own TP cut, where specs cut one tensor differently (megatron-core's MLA
    # down-projections: column-parallel in the local spec, duplicated on every rank under TE)
    shards: Mapping[str, Shard] = field(default_factory=dict)

    @property
    def per_expert(self) -> bool:
        """One stored tensor per expert (`{e}` in the name)."""
        return "{e}" in self.name

    @property
    def expert(self) -> bool:
        """The row holds expert weights (stored per expert or stacked)."""
        return any("{e}" in c for c in self.canon)

    def name_for(self, variant: str, spec: ModelSpec) -> str:
        """The spelling a naming variant writes (the row's `name` when the variant has none);
        `{variant}_mla` / `{variant}_moe` spell it for a latent-attention / MoE layer's spec."""
        for kind, has in (("mla", spec.mla), ("moe", spec.moe)):
            if has and f"{variant}_{kind}" in self.variants:
                return self.variants[f"{variant}_{kind}"]
        return self.variants.get(variant, self.name)

    def for_variant(self, variant: str) -> Row:
        """This row with the TP cut the naming variant uses."""
        return replace(self, shard=self.shards[variant]) if variant in self.shards else self

    def read_names(self) -> tuple[str, ...]:
        """Every spelling a reader accepts."""
        return tuple(dict.fromkeys((self.name, *self.variants.values(), *self.aliases)))


def canon_shapes(row: Row, spec: ModelSpec) -> list[Shape]:
    """The shapes of a row's canonical tensors (the vocabulary's, for any layer and expert)."""
    return [vocab.declared[vocab.pattern_of(c)].shape(spec) for c in row.canon]


def stored_shape(row: Row, spec: ModelSpec) -> Shape:
    """The whole stored tensor's shape (before any TP cut)."""
    return row.op.shape(canon_shapes(row, spec), spec)


def to_stored(row: Row, canon: list[torch.Tensor], spec: ModelSpec) -> torch.Tensor:
    """Canonical tensors -> the whole stored tensor (what torch_dist keeps and TP cuts)."""
    return row.op.pack(canon, spec)


def from_stored(row: Row, whole: torch.Tensor, spec: ModelSpec) -> list[torch.Tensor]:
    """Inverse of `to_stored`."""
    return [t.contiguous() for t in row.op.unpack(whole, canon_shapes(row, spec), spec)]


def scatter(row: Row, canon: list[torch.Tensor], geo: Geometry, *, runs: bool = False) -> list[torch.Tensor | RowRuns]:
    """Canonical tensors -> one stored piece per TP rank.

    Where a rank's piece is its boxes side by side (`JoinedBoxes`: Cut, Blocks), the boxes are
    cut from the canonical tensors (`Layout.cut`), so SwiGLU fc1's `[gate_r; up_r]` is one copy
    instead of the packed `[gate; up]` and then a second (py-spy: the pack was a fifth of an
    HF -> NxD conversion's main thread). Same values either way; other shards cut the whole.
    `runs`: a piece whose boxes are runs of its rows is not joined (`RowRuns`): the torch zip
    writers write it run after run."""
    if not isinstance(row.shard, JoinedBoxes):
        return row.shard.scatter(to_stored(row, canon, geo.spec), geo)
    return row.shard.join([piece for _, piece in stored_boxes(row, canon, geo.spec, geo.tp, runs=runs)], geo.tp, runs=runs)


def gather(row: Row, shards: list[torch.Tensor], geo: Geometry) -> list[torch.Tensor]:
    """One stored piece per TP rank (rank order) -> the row's canonical tensors."""
    return from_stored(row, row.shard.gather(shards, geo), geo.spec)


def boxes(row: Row, shape: Shape, tp: int) -> list[Box]:
    """(offsets, sizes) of each TP piece inside the whole tensor, as torch_dist chunks it."""
    return row.shard.boxes(shape, tp)


def stored_boxes(row: Row, canon: list[torch.Tensor], spec: ModelSpec, tp: int, *,
                 runs: bool = False) -> list[tuple[Box, torch.Tensor | RowRuns]]:
    """Canonical tensors -> each TP box of the whole stored tensor with its piece (torch_dist
    chunks), the whole tensor packed only where the op cannot cut the boxes from its parts
    (`runs`: a box made of rows of several parts may come back as `RowRuns`)."""
    found = boxes(row, row.op.shape([tuple(t.shape) for t in canon], spec), tp)
    return list(zip(found, row.op.cut(canon, spec, [box_slices(b) for b in found], runs=runs)))


# ----- experts stacked per rank (NxD) ---------------------------------------------------------
def expert_canon(row: Row, spec: ModelSpec, prefix: str) -> list[str]:
    """Canonical names of an expert row, expert-major (gate_0, up_0, gate_1, ...)."""
    return [prefix + c.format(e=e) for e in range(spec.experts) for c in row.canon]


def scatter_stacked(row: Row, canon: list[torch.Tensor], geo: Geometry) -> list[list[torch.Tensor]]:
    """Expert-major canonical tensors -> pieces[ep][tp]: each rank's local experts stacked on dim 0."""
    n, per = len(row.canon), geo.local_experts
    by_expert = [scatter(row, canon[e * n:(e + 1) * n], geo) for e in range(geo.spec.experts)]
    return [[torch.stack([by_expert[e][r] for e in range(ep * per, (ep + 1) * per)]).contiguous() for r in range(geo.tp)]
            for ep in range(geo.ep)]


def gather_stacked(row: Row, shards: list[list[torch.Tensor]], geo: Geometry) -> list[torch.Tensor]:
    """Inverse of `scatter_stacked` (pieces[ep][tp] -> expert-major canonical tensors)."""
    out: list[torch.Tensor] = []
    for by_tp in shards:
        for j in range(by_tp[0].shape[0]):
            out += gather(row, [s[j] for s in by_tp], geo)
    return out
