"""Open a checkpoint for the inspect screen: index, module tree, canonical view (worker side)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckptscope.converters.canonical_view import CanonicalView, canonical_view
from ckptscope.inspectors import Checkpoint, detect
from ckptscope.inspectors.tree import ModuleNode


@dataclass
class Opened:
    ckpt: Checkpoint
    tree: ModuleNode
    view: CanonicalView


def open_checkpoint(path: str | Path) -> Opened:
    """Blocking: call from a thread worker."""
    ckpt = detect(path)
    from .inspect import tensor_tree

    return Opened(ckpt, tensor_tree(ckpt.tensors), canonical_view(ckpt))
