"""Building indexes of 100k objects without the cyclic garbage collector in the way."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic collection while a big index is built. Making 100k TensorInfos or tree items
    otherwise triggers collections that rescan everything made so far: 40 % of opening a big
    MoE. Nothing built here forms cycles that need collecting; the collector resumes after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
