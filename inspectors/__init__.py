"""Headless, lazy checkpoint readers: `detect(path)` returns a `Checkpoint` index.

Never imports textual or the app (enforced by import-linter in CI). The readers load on first
use of a name below, so `ckptscope --help` importing `inspectors.errors` costs nothing more.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, NotACheckpoint

if TYPE_CHECKING:
    from .detect import Probe, detect, probe
    from .model import Checkpoint, ParallelLayout, Ranks, ShardFile, TensorInfo

_LAZY = {"Probe": "detect", "detect": "detect", "probe": "detect", "Checkpoint": "model", "ParallelLayout": "model",
         "Ranks": "model", "ShardFile": "model", "TensorInfo": "model"}

__all__ = [
    "Checkpoint", "CheckpointError", "NotACheckpoint", "ParallelLayout", "Probe", "Ranks", "ShardFile",
    "TensorInfo", "detect", "probe",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
