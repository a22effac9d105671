"""Overlap reading with writing: groups are read (and checked) on worker threads ahead of the writer.

A conversion is I/O and memcpy bound, and both release the GIL (file reads, `torch.cat`, tensor
reductions, file writes), so one thread reading layer i+1 while the main thread scatters and
writes layer i keeps the disk and both cores busy. The look-ahead is bounded: at most `depth`
groups are read but not yet handed to the writer, so peak memory stays a few layers whatever
the model size. Exceptions raised by a read surface in the main thread, at `take`, unchanged.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

# Every group allocates fresh multi-MB buffers (reads, gathers, splits): with transparent huge
# pages for torch's large allocations there are 512x fewer page faults, and copies into new
# tensors run ~1.8x faster. torch reads this once, at its first large allocation; set it to 0
# to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _fixed_mmap_threshold(nbytes: int = 4 * 2**20) -> None:
    """glibc raises its mmap threshold (up to 32 MB) each time a large block is freed, after which
    layer-sized tensors come from fragmented heaps that never shrink: peak RSS grew ~60 % and
    runs slowed. A fixed threshold keeps every buffer >= 4 MB in its own mapping, returned to
    the system when freed. No-op off glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


_fixed_mmap_threshold()


@contextlib.contextmanager
def streaming_runtime() -> Iterator[None]:
    """The process settings a streaming conversion runs under, restored when it ends or fails
    (a verification or an app that converts next must not inherit them):

    - torch ops on the calling threads only. The pipeline's own threads (reads, scatter, one
      writer per file) are the parallelism; torch's intra-op pool on top woke for every small
      op (a 256-expert layer's copies and sums) and spun on the same two cores (py-spy).
      Measured, cold, alternating on the same files: 256 experts 1.12-1.33 s against 1.32-1.41,
      64 experts 0.88-0.94 against 0.98-1.05; large-copy paths unchanged. Worker threads started
      inside take the count at their first parallel op.
    - the objects alive at the start (torch's, transformers' and ckptscope's modules: ~10^6)
      frozen out of the garbage collector (`gc.freeze`). A full collection walks them all:
      one came during the final pickling of a 4,608-record rank file and took 0.15 s of a
      1.25 s conversion; with them frozen every collection of the run took 0.014 s in all.
      Unfrozen afterwards unless the caller had frozen objects itself (the CLI does, at import
      torch, for its whole process: there is nothing to unfreeze selectively).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    frozen_by_caller = gc.get_freeze_count() > 0  # the CLI froze torch for its whole process: keep that
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_by_caller:
            gc.unfreeze()
        torch.set_num_threads(before)


class Prefetcher(Generic[T]):
    """`take(g)` returns `read(g)` for the groups in the given order, reading up to `depth` ahead.

    `workers` threads read concurrently (parallel layer processing); `depth` defaults to
    `workers`, so each worker holds at most one finished group the writer has not taken yet.
    """

    def __init__(self, read: Callable[[int], T], groups: Iterable[int], *, workers: int = 1, depth: int | None = None) -> None:
        self._read = read
        self._todo = iter(list(groups))
        self._depth = max(1, depth if depth is not None else workers)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ckptscope-read")
        self._pending: deque[tuple[int, Future[T]]] = deque()
        for _ in range(self._depth):
            self._submit()

    def _submit(self) -> None:
        group = next(self._todo, None)
        if group is not None:
            self._pending.append((group, self._pool.submit(self._read, group)))

    def take(self, group: int) -> T:
        """The next group's result (groups must be taken in the order given)."""
        if not self._pending:
            raise RuntimeError(f"group {group} was not scheduled for reading")
        got, future = self._pending.popleft()
        if got != group:
            raise RuntimeError(f"read order mismatch: expected group {got}, asked for {group}")
        self._submit()  # keep the look-ahead full while this group is written
        return future.result()

    def close(self) -> None:
        """Cancel reads not started and wait for running ones (no thread touches files after this)."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
