"""Labels for a directory browser: which folders are checkpoints, roots or iterations.

Probing uses file names only (`detect.probe`), so a folder tree can be labelled without
unpickling anything; sizes are summed from `stat`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .detect import label_text, probe
from .errors import CheckpointError
from .storage import RemotePath, as_path


@dataclass(frozen=True)
class FolderLabel:
    kind: str  # checkpoint kind, or "" when not a checkpoint
    role: str  # root | iteration | file | ""
    iteration: int | str | None
    layout: str
    complete: bool
    size: int
    problem: str = ""

    def text(self) -> str:
        if self.problem:
            return f"⚠ {self.problem}"
        if not self.kind:
            return ""
        return label_text(self.kind, self.iteration, self.layout, self.complete)


def folder_size(path: Path, limit: int = 20000) -> int:
    """Bytes under `path` (stops counting after `limit` entries so huge trees stay cheap)."""
    if path.is_file():
        return path.stat().st_size
    if isinstance(path, RemotePath):  # one listing per folder, cached by the storage layer
        return sum(p.stat().st_size for _, p in zip(range(limit), (q for q in path.rglob("*") if q.is_file())))
    total, seen = 0, 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
            seen += 1
            if seen >= limit:
                return total
    return total


def label_path(path: str | Path) -> FolderLabel:
    """Recognise a folder or file from names only; never raises."""
    path = as_path(path)
    try:
        found = probe(path)
    except CheckpointError as exc:
        return FolderLabel("", "", None, "", False, 0, exc.problem)
    except OSError:
        return FolderLabel("", "", None, "", True, 0)
    if found is None:
        return FolderLabel("", "", None, "", True, 0)
    role = "root" if found.root is not None else "file" if path.is_file() else "iteration"
    return FolderLabel(found.kind, role, found.iteration, found.layout, found.complete, folder_size(path))
