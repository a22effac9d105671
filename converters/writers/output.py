"""Atomic output folders: build in a temporary sibling, rename into place only when complete.

An interrupted conversion leaves no folder at the destination that any reader accepts: the
temporary sibling is removed on failure and, if a crash prevents that, it keeps a name
(`.<dst>.ckptscope-partial-*`) that no reader recognises as a checkpoint.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

PARTIAL_TAG = ".ckptscope-partial-"


class OutputExists(FileExistsError):
    pass


def check_destination(dst: Path, force: bool) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not force:
        raise OutputExists(f"{dst} exists and is not empty (use --force to replace it)")


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the folder is renamed or removed; they are delivered right after.

    A second Ctrl-C must not leave half a cleanup, and a signal between the two renames of a
    `--force` replacement must not leave neither the old nor the new output in place.
    """
    deferred = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class AtomicFolder:
    """`with AtomicFolder(dst, force) as tmp:` write into tmp; renamed to dst on success.

    `reuse` continues in an existing partial folder (`--resume`); `keep_on_error` leaves the
    partial folder in place when the block fails, so it can be resumed later.
    """

    def __init__(self, dst: str | Path, force: bool = False, *, reuse: Path | None = None, keep_on_error: bool = False) -> None:
        self.dst = Path(dst).expanduser().resolve()
        self.force = force
        self.reuse = reuse
        self.keep_on_error = keep_on_error
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        check_destination(self.dst, self.force)
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        if self.reuse is not None:
            self.tmp = self.reuse
        else:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dst.name}{PARTIAL_TAG}", dir=self.dst.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        assert self.tmp is not None
        if exc_type is not None:
            if not self.keep_on_error:
                with signals_deferred():
                    shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self.commit()

    def commit(self) -> None:
        assert self.tmp is not None
        with signals_deferred():
            old = None
            if self.dst.exists():
                old = self.dst.with_name(f".{self.dst.name}.ckptscope-old")
                shutil.rmtree(old, ignore_errors=True)
                self.dst.rename(old)
            self.tmp.rename(self.dst)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
