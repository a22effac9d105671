"""Open a checkpoint for the inspect screen, in two steps run by thread workers.

`open_checkpoint` is what the first screen needs: the index and the module tree root (children
are grouped lazily). `explain` is slower and can follow: the canonical mapping of every stored
tensor and the parameter totals, shown in the details and summary panes when ready.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

from ckptscope.converters.canonical_view import CanonicalView, canonical_view
from ckptscope.inspectors import Checkpoint, detect
from ckptscope.inspectors.summary import logical_param_count
from ckptscope.inspectors.tree import ModuleNode, build_tree


@dataclass
class Opened:
    ckpt: Checkpoint
    tree: ModuleNode


@dataclass
class Explained:
    view: CanonicalView
    parameters: int
    bytes_by_dtype: dict[str, int]


def open_checkpoint(path: str | Path) -> Opened:
    """Blocking: call from a thread worker."""
    ckpt = detect(path)
    opened = Opened(ckpt, build_tree(ckpt.tensors, separate_non_model=True))
    _keep_out_of_gc()
    return opened


def _keep_out_of_gc() -> None:
    """Move what exists now (the new index) out of the collector's sight. A 100k-tensor index is
    ~400k long-lived objects; every full collection would rescan them and stall the UI by
    0.1-0.2 s (measured while the inspect screen mounts). Objects of a checkpoint opened before
    go back to the collector first, so closing one still frees its cycles."""
    gc.unfreeze()
    gc.freeze()


def explain(ckpt: Checkpoint) -> Explained:
    """Blocking: call from a thread worker once the screen is up."""
    return Explained(canonical_view(ckpt), logical_param_count(ckpt), ckpt.bytes_by_dtype())
