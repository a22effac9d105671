"""The streaming run: read one group from every shard that holds it, map, scatter, write.

`convert(plan, dst)` is a generator of `Progress` events; the CLI and the TUI render the same
stream. Peak memory is one group (a layer, or the embeddings) plus what the writers buffer,
never the whole model. Output is built in a temporary sibling folder and renamed into place at
the end; stopping the generator early (Ctrl-C, cancel) removes the temporary folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .plan import Plan
from .sources import group_label
from .writers.output import AtomicFolder


class PlanRefused(RuntimeError):
    pass


@dataclass(frozen=True)
class Progress:
    stage: str  # start | layer | finalize | done
    index: int  # groups finished so far
    total: int  # groups in all
    label: str  # e.g. "layer 3"
    tensor: str
    bytes_done: int
    bytes_total: int
    elapsed: float
    output: str = ""

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0


def convert(plan: Plan, dst: str | Path, *, force: bool = False) -> Iterator[Progress]:
    if not plan.ok:
        raise PlanRefused("; ".join(plan.errors))
    spec, writer, source = plan.spec, plan.writer, plan.source
    groups = plan.groups
    total_bytes = plan.total_bytes
    itemsize = writer.dtype.itemsize
    start = time.perf_counter()
    done_bytes = 0
    atomic = AtomicFolder(dst, force)
    with atomic as tmp:
        writer.open(tmp)
        try:
            yield Progress("start", 0, len(groups), group_label(spec, groups[0]), "", 0, total_bytes, 0.0)
            for n, group in enumerate(groups):
                tensors = source.read(group)
                writer.write(group, tensors)
                done_bytes += sum(t.numel() for t in tensors.values()) * itemsize
                last = next(reversed(tensors)) if tensors else ""
                del tensors
                yield Progress("layer", n + 1, len(groups), group_label(spec, group), last, done_bytes, total_bytes,
                               time.perf_counter() - start)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        yield Progress("finalize", len(groups), len(groups), "finalize", "", done_bytes, total_bytes, time.perf_counter() - start)
    yield Progress("done", len(groups), len(groups), "done", "", done_bytes, total_bytes, time.perf_counter() - start,
                   str(atomic.dst))


def run_to_end(plan: Plan, dst: str | Path, *, force: bool = False) -> Progress:
    """Convenience for tests and scripts: run the generator and return the final event."""
    last = None
    for event in convert(plan, dst, force=force):
        last = event
    assert last is not None
    return last
