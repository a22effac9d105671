"""What a format reader recognises from names alone (`Probe`) and what a reader provides.

Kept apart from `detect.py` so that the readers in `inspectors/formats/` and `detect` both depend
on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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
