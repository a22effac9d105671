"""Value statistics for one tensor at a time (used by `inspect --stats` and the TUI details)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .model import Checkpoint, TensorInfo

if TYPE_CHECKING:
    import torch

_BLOCK = 1 << 22  # elements per pass: bounds the float64 working copy to 32 MB


@dataclass
class TensorStats:
    name: str
    file: str
    numel: int
    min: float
    max: float
    mean: float
    std: float
    nan: int
    inf: int
    zeros: int
    histogram: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        out = asdict(self)
        for key in ("min", "max", "mean", "std"):
            if not math.isfinite(out[key]):
                out[key] = str(out[key])
        return out


def tensor_stats(values: torch.Tensor, name: str = "", file: str = "", bins: int = 32) -> TensorStats:
    """Streaming moments over finite values in blocks; NaN/Inf are counted, not mixed in."""
    import torch

    flat = values.reshape(-1)
    n_finite = nan = inf = zeros = 0
    total = 0.0
    lo, hi = math.inf, -math.inf
    for start in range(0, flat.numel(), _BLOCK):
        block = flat[start : start + _BLOCK]
        if block.is_complex():
            block = block.abs()
        block = block.to(torch.float64)
        finite = torch.isfinite(block)
        nan += int(torch.isnan(block).sum())
        inf += int(torch.isinf(block).sum())
        zeros += int((block == 0).sum())
        good = block[finite]
        if good.numel():
            n_finite += good.numel()
            total += float(good.sum())
            lo, hi = min(lo, float(good.min())), max(hi, float(good.max()))
    mean = total / n_finite if n_finite else math.nan
    sq = 0.0
    hist = torch.zeros(bins, dtype=torch.float64)
    for start in range(0, flat.numel(), _BLOCK):
        block = flat[start : start + _BLOCK]
        block = (block.abs() if block.is_complex() else block).to(torch.float64)
        good = block[torch.isfinite(block)]
        if good.numel():
            sq += float(((good - mean) ** 2).sum())
            if hi > lo:
                hist += torch.histc(good, bins=bins, min=lo, max=hi)
            else:
                hist[0] += good.numel()
    std = math.sqrt(sq / (n_finite - 1)) if n_finite > 1 else 0.0 if n_finite else math.nan
    return TensorStats(name, file, flat.numel(), lo if n_finite else math.nan, hi if n_finite else math.nan,
                       mean, std, nan, inf, zeros, [int(x) for x in hist.tolist()])


def iter_stats(ckpt: Checkpoint, tensors: Iterable[TensorInfo]) -> Iterator[TensorStats]:
    """Load, summarise and drop one tensor at a time."""
    for info in tensors:
        if info.source is None:
            continue
        values = ckpt.load(info)
        yield tensor_stats(values, info.name, info.file)
        del values
