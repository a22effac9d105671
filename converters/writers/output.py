"""Atomic output folders: build in a temporary sibling, rename into place only when complete.

An interrupted conversion leaves no folder at the destination that any reader accepts: the
temporary sibling is removed on failure and, if a crash prevents that, it keeps a name
(`.<dst>.ckptscope-partial-*`) that no reader recognises as a checkpoint.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

PARTIAL_TAG = ".ckptscope-partial-"


class OutputExists(FileExistsError):
    pass


def check_destination(dst: Path, force: bool) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not force:
        raise OutputExists(f"{dst} exists and is not empty (use --force to replace it)")


class AtomicFolder:
    """`with AtomicFolder(dst, force) as tmp:` write into tmp; renamed to dst on success."""

    def __init__(self, dst: str | Path, force: bool = False) -> None:
        self.dst = Path(dst).expanduser().resolve()
        self.force = force
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        check_destination(self.dst, self.force)
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dst.name}{PARTIAL_TAG}", dir=self.dst.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self.commit()

    def commit(self) -> None:
        assert self.tmp is not None
        old = None
        if self.dst.exists():
            old = self.dst.with_name(f".{self.dst.name}.ckptscope-old")
            shutil.rmtree(old, ignore_errors=True)
            self.dst.rename(old)
        self.tmp.rename(self.dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
