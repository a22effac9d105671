"""One output file's writer thread: items written in the order they were handed over.

A writer of several files (TP rank files of a Megatron / NxD / torch_dist target) hands each
item to its file's thread and goes on scattering, so the files are written concurrently and
the caller does not wait for CRC-32s and writes (torch's zip writer and file writes release the
GIL). The queue is bounded by bytes (`QUEUE_BYTES`), so a slow disk stalls the caller rather
than growing memory; items keep their order, so the file's bytes are those of a synchronous
writer. A failure on the thread is raised in the caller's thread at its next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

QUEUE_BYTES = 16 * 2**20  # per thread: bytes handed over but not yet written

T = TypeVar("T")


class WriterThread(Generic[T]):
    """Runs `write(item)` for every item `put`, in order, at most QUEUE_BYTES queued."""

    def __init__(self, write: Callable[[T], None], name: str) -> None:
        self._write = write
        self._queue: queue.Queue[tuple[T, int] | None] = queue.Queue()
        self._room = threading.Condition()
        self._queued = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"ckptscope-writer {name}", daemon=True)
        self._thread.start()

    def put(self, item: T, nbytes: int) -> None:
        """Queue `item` (holding `nbytes`); wait while the queue is full; raise the thread's failure."""
        with self._room:  # one item always fits: an item larger than the bound waits for an empty queue
            while self._queued and self._queued + nbytes > QUEUE_BYTES and self.error is None:
                self._room.wait()
            self._queued += nbytes
        self._check()
        self._queue.put((item, nbytes))

    def _run(self) -> None:
        while (entry := self._queue.get()) is not None:
            item, size = entry
            try:
                if self.error is None:
                    self._write(item)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread at its next call
                self.error = exc
            del entry, item  # the item's memory goes before the caller is told there is room
            with self._room:
                self._queued -= size
                self._room.notify_all()

    def drain(self) -> None:
        """Wait for every queued item; stop the thread; raise what it raised."""
        self._queue.put(None)
        self._thread.join()
        self._check()

    def stop(self) -> None:
        """After a failure elsewhere: write nothing more, let the thread end (not waited for)."""
        if self.error is None:
            self.error = RuntimeError("aborted")
        with self._room:
            self._room.notify_all()
        self._queue.put(None)

    def join(self) -> None:
        """Wait for a stopped thread (it finishes at most the item it is writing)."""
        self._thread.join()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
