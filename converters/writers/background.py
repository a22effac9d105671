"""Start slow, independent work early on a daemon thread and collect it when needed.

Writing `config.json` for an HF target builds a `transformers` config object; the first
`import transformers` costs seconds (more with a cold page cache). Started when the writer
opens, it overlaps with the tensor I/O instead of adding to the end of the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ckptscope-background", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread by result()
            self._error = exc

    def result(self) -> T:
        """Wait for the work; its exception, if any, is raised here, in the caller's thread."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
