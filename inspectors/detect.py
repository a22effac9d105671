"""`detect(path)`: sniff a root, an iteration folder or a single file and open it lazily.

Each format registers one reader with a cheap `probe` (file names only; used by the TUI's
browse tree too) and an `open` that builds the full lazy index. Probing order matters only
where layouts overlap: a Megatron-DeepSpeed root has both `latest` and a Megatron tracker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .bulk import paused_gc
from .errors import CheckpointError, NotACheckpoint, reading
from .model import Checkpoint
from .probing import FormatReader, Probe, label_text
from .storage import as_path

__all__ = ["FormatReader", "Probe", "detect", "label_text", "probe"]


def _readers() -> Iterator[FormatReader]:
    from .formats import readers

    return readers()


def probe(path: str | Path) -> Probe | None:
    """Cheap recognition used by browse views; never raises for unknown folders."""
    path = as_path(path)
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
    path = as_path(path).expanduser()
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
