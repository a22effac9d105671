"""Headless, lazy checkpoint readers: `detect(path)` returns a `Checkpoint` index.

Never imports textual or the app (enforced by import-linter in CI).
"""

from .detect import Probe, detect, probe
from .errors import CheckpointError, NotACheckpoint
from .model import Checkpoint, ParallelLayout, Ranks, ShardFile, TensorInfo

__all__ = [
    "Checkpoint", "CheckpointError", "NotACheckpoint", "ParallelLayout", "Probe", "Ranks", "ShardFile",
    "TensorInfo", "detect", "probe",
]
