"""Run the ckptscope CLI on one core: the LOCAL_RANK-th this process may use (the first without torchrun).

    python -m bench.pin_rank convert SRC DST ...                                   (one process, one core)
    torchrun --nproc-per-node 2 -m bench.pin_rank convert SRC DST ... --distributed (two ranks, a core each)

On this 2-core machine one unpinned process already keeps 1.5-1.7 cores busy (read threads, a
writer thread per file, the main thread), so a second process has almost nothing left to use.
Pinned, the two runs compare one core against two, one per rank: how the split scales when every
rank has cores of its own, as ranks on separate nodes do. Threads inherit the affinity.
"""

from __future__ import annotations

import os
import runpy
import sys

if __name__ == "__main__":
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[int(os.environ.get("LOCAL_RANK", "0")) % len(cores)]})
    sys.argv = ["ckptscope", *sys.argv[1:]]
    runpy.run_module("ckptscope.app.cli", run_name="__main__", alter_sys=True)
