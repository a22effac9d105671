"""A piece of a stored tensor kept as runs of its rows, written without joining them.

When a rank's piece of a stored tensor is made of whole rows of other tensors - SwiGLU fc1's
`[gate_r; up_r]`, Megatron's fused QKV `[q_g; k_g; v_g]` per query group - its bytes are the
runs' bytes one after another. A torch zip record can be written from them in order (one CRC
chained over them, `writers.zip_layout`), so the copy that joins them into one tensor is never
made: half or more of the bytes an HF -> Megatron or NxD scatter used to copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch


@dataclass(frozen=True)
class RowRuns:
    """The piece `torch.cat(runs)` left unjoined (each run contiguous, all of one dtype and row
    shape). Stands in for that tensor where the writers need its dtype, shape and size."""

    runs: tuple[torch.Tensor, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.runs[0].dtype

    @property
    def shape(self) -> torch.Size:
        first = self.runs[0].shape
        return torch.Size((sum(r.shape[0] for r in self.runs), *first[1:]))

    def numel(self) -> int:
        return sum(r.numel() for r in self.runs)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.runs)

    def to(self, dtype: torch.dtype) -> RowRuns | torch.Tensor:
        """Itself in its own dtype; else the joined piece, cast."""
        return self if dtype == self.dtype else self.join().to(dtype)

    def join(self) -> torch.Tensor:
        return torch.cat(self.runs)

    def buffers(self) -> list[memoryview]:
        """The record's bytes, run after run."""
        return [memoryview(r.reshape(-1).view(torch.uint8).numpy()) for r in self.runs if r.numel()]


def joined_rows(pieces: list[torch.Tensor | RowRuns], *, runs: bool) -> torch.Tensor | RowRuns:
    """Pieces side by side along dim 0: with `runs`, unjoined (`RowRuns`, nested runs flattened)
    where there are several and each is contiguous; else one copy."""
    flat = [t for p in pieces for t in (p.runs if isinstance(p, RowRuns) else (p,))]
    if runs and len(flat) > 1 and all(t.is_contiguous() for t in flat):
        return RowRuns(tuple(flat))
    return torch.cat(flat, dim=0)
