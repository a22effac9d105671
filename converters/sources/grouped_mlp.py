"""megatron-core's legacy `GroupedMLP` experts, read as `SequentialMLP`'s per-expert tensors.

`--moe-grouped-gemm` without Transformer Engine (megatron-core up to 0.16; removed in 0.17)
stores a rank's local experts as two tensors per MoE layer in the `torch` format:

- `mlp.experts.weight1`, shape `[hidden, E_local * X]` (X = 2 * ffn / TP with a GLU, else
  ffn / TP), whose memory is `E_local` blocks `[hidden, X]`: the forward views it as
  `(E_local, hidden, X)` and computes `x @ w1[j]`, the GLU chunk being `[gate | up]` along X;
- `mlp.experts.weight2`, shape `[E_local * ffn / TP, hidden]`, memory `E_local` blocks
  `[ffn / TP, hidden]`, used as `h @ w2[j]`.

Expert j's `linear_fc1.weight` is block j of weight1 transposed (`[gate_r; up_r]` rows, as
SequentialMLP stores it per TP rank) and its `linear_fc2.weight` block j of weight2 transposed
(`megatron/core/transformer/moe/experts.py`, `GroupedMLP.forward` and `sharded_state_dict`,
core_v0.12.0). Each becomes a `LazyTensor` over exactly that block's bytes with transposed
strides: nothing else is read, and the rest of the engine sees the per-expert names it knows.
A torch_dist checkpoint needs none of this: GroupedMLP saves the per-expert keys there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.formats.hf import LazySource
from ckptscope.inspectors.model import TensorInfo
from ckptscope.inspectors.torchfile import LazyTensor

from .tp_read import lazy_tensor

GROUPED_RE = re.compile(r"^(?P<stem>.*\.mlp\.experts\.)weight(?P<which>[12])$")
EXPERT_NAME = "{stem}local_experts.{e}.linear_fc{which}.weight"


def is_grouped(info: TensorInfo) -> bool:
    return GROUPED_RE.match(info.global_name) is not None


def per_expert(tensors: Iterable[TensorInfo], experts: int) -> list[TensorInfo]:
    """`tensors` with every GroupedMLP `weight1` / `weight2` replaced by its experts' tensors,
    named by their global expert index (`ep_rank * E_local + j`); the rest unchanged."""
    tensors = list(tensors)
    grouped = [t for t in tensors if is_grouped(t)]
    if not grouped:
        return tensors
    ep = 1 + max((t.ranks.ep or 0) for t in tensors)
    if experts <= 0 or experts % ep:
        raise CheckpointError(grouped[0].file, f"GroupedMLP experts: {experts} experts do not split over {ep} expert-parallel ranks")
    local = experts // ep
    out = [t for t in tensors if not is_grouped(t)]
    for t in grouped:
        out.extend(_split(t, local))
    return out


def _split(info: TensorInfo, local: int) -> list[TensorInfo]:
    """One stored weight1 / weight2 as its `local` experts' tensors (transposed block views)."""
    match = GROUPED_RE.match(info.global_name)
    assert match is not None
    which = match["which"]
    lazy = lazy_tensor(info)
    rows, cols = info.shape if len(info.shape) == 2 else (0, 0)
    plain = isinstance(lazy, LazyTensor) and lazy.shape == info.shape and lazy.stride == (cols, 1)
    size = cols if which == "1" else rows  # the dim that holds the experts side by side
    if not plain or not rows or not cols or size % local:
        raise CheckpointError(info.file, f"{info.name}: GroupedMLP weight{which} of shape {list(info.shape)} is not "
                                         f"{local} contiguous expert blocks")
    assert isinstance(lazy, LazyTensor)
    width = size // local  # X of weight1's [hidden, X] blocks, ffn/TP of weight2's [ffn/TP, hidden]
    block = rows * cols // local
    first = (info.ranks.ep or 0) * local
    out = []
    for j in range(local):
        if which == "1":  # block [hidden, X] -> fc1 [X, hidden]
            shape, stride = (width, rows), (1, width)
        else:  # block [ffn/TP, hidden] -> fc2 [hidden, ffn/TP]
            shape, stride = (cols, width), (1, cols)
        view = LazyTensor(lazy.storage, lazy.storage_offset + j * block, shape, stride, lazy.dtype)
        name = EXPERT_NAME.format(stem=match["stem"], e=first + j, which=which)
        out.append(dataclasses.replace(info, name=f"{info.name}[{j}]", global_name=name, shape=shape, source=LazySource(view)))
    return out
