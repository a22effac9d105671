"""Small messages that workers post to screens (thread-safe via post_message)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class CheckpointOpened(Message):
    """A checkpoint was indexed (and its module tree built) off the UI thread."""

    opened: Any  # app.tui.opening.Opened


@dataclass
class CheckpointExplained(Message):
    """The canonical view and totals of the open checkpoint (second step of opening)."""

    explained: Any  # app.tui.opening.Explained


@dataclass
class TreeFiltered(Message):
    query: str
    root: Any  # inspectors.tree.ModuleNode


@dataclass
class FolderLabelled(Message):
    labels: dict  # Path -> FolderLabel


@dataclass
class StatsReady(Message):
    name: str
    stats: list  # list[TensorStats], one per shard


@dataclass
class SpecReady(Message):
    spec: Any  # ModelSpec or None
    problem: str = ""
    origin: str = ""  # where the architecture came from when not the checkpoint itself (a found config.json)


@dataclass
class PlanReady(Message):
    plan: Any


@dataclass
class ConvertProgress(Message):
    """Coalescing: a newer progress event replaces an unprocessed older one in the queue."""

    event: Any  # converters.run.Progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ConvertProgress)


@dataclass
class LayerDone(Message):
    """Not coalesced: every finished group ticks the per-layer list."""

    index: int
    label: str
    seconds: float


@dataclass
class ConvertFinished(Message):
    output: str
    seconds: float
    nbytes: int
    cancelled: bool = False
    error: str | None = None  # the conversion failed: one line, already escaped


@dataclass
class VerifyDone(Message):
    report: Any
    error: str | None = None  # the verification could not run: one line, already escaped


@dataclass
class DiffDone(Message):
    report: Any
    kind: str  # diff | check
