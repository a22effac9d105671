"""`detect(path)`: sniff a root, an iteration folder or a single file and open it lazily.

Each format registers one reader with a cheap `probe` (file names only; used by the TUI's
browse tree too) and an `open` that builds the full lazy index. Probing order matters only
where layouts overlap: a Megatron-DeepSpeed root has both `latest` and a Megatron tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .bulk import paused_gc
from .errors import CheckpointError, NotACheckpoint, reading
from .model import Checkpoint


@dataclass
class Probe:
    """What a reader recognised from names alone."""

    kind: str
    path: Path  # the folder or file the reader will open (iteration folder for roots)
    root: Path | None = None
    iteration: int | str | None = None
    iterations: list[int | str] = field(default_factory=list)
    complete: bool = True
    layout: str = ""  # e.g. "TP2×PP2" when the file names tell
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    def label(self) -> str:
        return label_text(self.kind, self.iteration, self.layout, self.complete)


def label_text(kind: str, iteration: int | str | None, layout: str, complete: bool) -> str:
    """One-line description shared by probes and the browse view: `megatron-torch · iter 200 · TP2×PP2`."""
    parts = [kind]
    if iteration is not None:
        parts.append(f"iter {iteration}")
    if layout:
        parts.append(layout)
    if not complete:
        parts.append("INCOMPLETE")
    return " · ".join(parts)


class FormatReader(Protocol):
    kind: str

    def probe(self, path: Path) -> Probe | None:
        """Return a Probe when `path` looks like this format (names only, no unpickling)."""

    def open(self, probe: Probe) -> Checkpoint:
        """Build the lazy index for what `probe` found."""


def _readers() -> list[FormatReader]:
    from .formats import READERS

    return READERS


def probe(path: str | Path) -> Probe | None:
    """Cheap recognition used by browse views; never raises for unknown folders."""
    path = Path(path)
    for reader in _readers():
        try:
            found = reader.probe(path)
        except CheckpointError:
            raise
        except OSError:
            return None
        if found is not None:
            return found
    return None


def detect(path: str | Path) -> Checkpoint:
    """Open any supported checkpoint lazily (headers and pickles only, no tensor bytes)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    if path.is_dir() and not any(path.iterdir()):
        raise NotACheckpoint(path, "folder is empty")
    for reader in _readers():
        found = reader.probe(path)
        if found is not None:
            # Readers check what they know; anything else a hostile file provokes (a TypeError
            # deep in an index walk) still becomes one line naming the checkpoint.
            with reading(found.path, f"malformed {reader.kind} checkpoint"), paused_gc():
                ckpt = reader.open(found)
            if found.problems:
                ckpt.warnings[:0] = found.problems
            return ckpt
    hint = ""
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())[:6]
        hint = f" (found: {', '.join(names)})"
    raise NotACheckpoint(path, f"not a recognised checkpoint{hint}")
