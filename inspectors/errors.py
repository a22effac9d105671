"""Errors a reader raises for bad input.

Every problem with a checkpoint becomes a `CheckpointError` that names the file and says
what is wrong in one line, so the CLI and the TUI can show it without a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


class CheckpointError(Exception):
    """A checkpoint (or one of its files) cannot be read as claimed."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}")


class NotACheckpoint(CheckpointError):
    """The path exists but holds nothing ckptscope recognises."""


@contextlib.contextmanager
def reading(path: str | Path, what: str = "cannot read") -> Iterator[None]:
    """Turn any low-level failure while parsing `path` into a one-line CheckpointError."""
    try:
        yield
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError(path, f"{what}: out of memory (corrupt size field?)") from None
    except RecursionError:
        raise CheckpointError(path, f"{what}: structure nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is bad input here
        detail = str(exc) or type(exc).__name__
        raise CheckpointError(path, f"{what}: {type(exc).__name__}: {detail}") from exc
