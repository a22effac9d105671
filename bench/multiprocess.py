"""The multi-process table of `python -m bench`: one CLI process against `torchrun --nproc-per-node 2`.

    ckptscope convert SRC DST ...                                              (one process, --workers 2)
    torchrun --standalone --nproc-per-node 2 -m ckptscope.app.cli convert SRC DST ... --distributed

Both are whole CLI processes started cold (page cache dropped), so the table reports the process
wall time (interpreter, imports, and for torchrun its launcher and the gloo rendezvous included)
and the engine time the CLI prints in `--json` (`seconds`: from the first read to the committed
output; under torchrun rank 0's, which ends after every rank has voted). A CPU-bound path (a
bf16 -> fp32 cast with resharding; a torch_dist source, whose chunks are decoded) is where a
second process can pay; I/O-bound paths are reported too. HF targets get 400 MB shards so that
both ranks own files (a single 5 GB shard would be one unit, written by one rank).

The CPU-bound paths run a second time pinned (`bench/pin_rank.py`): one process on one core
against two ranks on a core each. One unpinned process already keeps most of this machine's two
cores busy, so the unpinned pair can only show what is left; the pinned pair shows how the split
scales when each rank has cores of its own, as ranks on separate nodes have.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.generate import CachedSpec, data_bytes

REPO = Path(__file__).resolve().parent.parent
CLI = "ckptscope.app.cli"
PINNED = "bench.pin_rank"  # the CLI on one core: the LOCAL_RANK-th

# label, layout, CLI arguments after SRC DST ({vocab} and {config} are filled in), kind
PATHS = [
    ("Megatron TP2PP2 -> Megatron TP4PP2 fp32", "megatron-torch",
     ["--to", "megatron", "--tp", "4", "--pp", "2", "--dtype", "fp32", "--true-vocab-size", "{vocab}"], "CPU"),
    ("torch_dist TP2PP2 -> HF", "torch_dist", ["--to", "hf", "--max-shard-size", "400MB", "--true-vocab-size", "{vocab}"], "CPU"),
    ("Megatron TP2PP2 -> HF", "megatron-torch", ["--to", "hf", "--max-shard-size", "400MB", "--true-vocab-size", "{vocab}"], "I/O"),
    ("HF -> NxD TP2PP2", "hf", ["--to", "nxd", "--tp", "2", "--pp", "2"], "I/O"),
]


def _run(cmd: list[str], drop: bool) -> dict[str, Any]:
    from bench.run import drop_caches

    cold = drop_caches(drop)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:8])}... failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout
    summary = json.JSONDecoder().raw_decode(out[out.index("{"):])[0] if "{" in out else {}  # rank 0's --json summary
    return {"process_seconds": wall, "seconds": summary.get("seconds", wall), "cpu_seconds": summary.get("cpu_seconds"),
            "cold_cache": cold, "load_average": os.getloadavg()[0]}


def measure_multiprocess(ckpts: dict[str, Path], spec: CachedSpec, config: Path, out: Path, drop: bool) -> list[dict[str, Any]]:
    """Each path with one process and with two torchrun ranks, cold cache, same files."""
    del config  # every path here finds its architecture in the source
    rows = []
    for label, layout, args, kind in PATHS:
        src = ckpts[layout]
        tail = ["convert", str(src), str(out), *(a.format(vocab=spec.vocab) for a in args), "--json"]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        runs = [("one", [sys.executable, "-m", CLI, *tail]), ("two", [*torchrun, "-m", CLI, *tail, "--distributed"])]
        if kind == "CPU":  # and pinned: one core against a core per rank (bench/pin_rank.py)
            runs += [("one_pinned", [sys.executable, "-m", PINNED, *tail]),
                     ("two_pinned", [*torchrun, "-m", PINNED, *tail, "--distributed"])]
        row: dict[str, Any] = {"path": label, "kind": kind, "source_bytes": data_bytes(src)}
        for name, cmd in runs:
            shutil.rmtree(out, ignore_errors=True)
            row[name] = _run(cmd, drop)
            shutil.rmtree(out, ignore_errors=True)
            print(f"  {label:42} {name}: engine {row[name]['seconds']:6.2f} s, process {row[name]['process_seconds']:6.2f} s "
                  f"(load {row[name]['load_average']:.1f})", flush=True)
        row["speedup"] = row["one"]["seconds"] / row["two"]["seconds"]
        if "two_pinned" in row:
            row["speedup_pinned"] = row["one_pinned"]["seconds"] / row["two_pinned"]["seconds"]
        if row["one"]["cpu_seconds"]:  # cores one process keeps busy: two processes on 2 cores gain at most 2 / that
            row["cores_busy"] = row["one"]["cpu_seconds"] / row["one"]["seconds"]
            row["speedup_bound"] = (os.cpu_count() or 1) / max(1.0, row["cores_busy"])
        row["speedup_process"] = row["one"]["process_seconds"] / row["two"]["process_seconds"]
        rows.append(row)
    return rows


def print_multiprocess(rows: list[dict[str, Any]]) -> None:
    print("\nmulti-process (cold)                        kind  GiB  1 proc s  2 ranks s  speed-up  "
          "1 proc cores busy  bound  1 proc process s  2 ranks process s  speed-up  target (CPU >= 1.6x)  "
          "pinned: 1 core s  a core per rank s  speed-up  target")
    for r in rows:
        ok = "" if r["kind"] != "CPU" else ("ok" if r["speedup"] >= 1.6 else "MISS")
        busy = f"{r['cores_busy']:17.2f} {r['speedup_bound']:5.2f}x" if "cores_busy" in r else f"{'-':>17} {'-':>6}"
        pinned = ""
        if "speedup_pinned" in r:
            pinned = (f"{r['one_pinned']['seconds']:16.2f} {r['two_pinned']['seconds']:18.2f} {r['speedup_pinned']:8.2f}x  "
                      f"{'ok' if r['speedup_pinned'] >= 1.6 else 'MISS'}")
        print(f"{r['path']:42} {r['kind']:4} {r['source_bytes'] / 2**30:4.2f} {r['one']['seconds']:9.2f} {r['two']['seconds']:10.2f} "
              f"{r['speedup']:8.2f}x {busy} {r['one']['process_seconds']:17.2f} {r['two']['process_seconds']:18.2f} {r['speedup_process']:8.2f}x  "
              f"{ok:20} {pinned}")


if __name__ == "__main__":  # python -m bench.multiprocess [--quick]: this table alone (generates what it needs)
    from bench.generate import generate
    from bench.run import drop_caches, specs

    models, _ = specs("--quick" in sys.argv)
    work = Path(tempfile.mkdtemp(prefix="ckptscope-mp-"))
    try:
        dense = models["dense"]
        made = generate(dense, work / "dense", ["hf", "megatron-torch", "torch_dist", "nxd"])
        print_multiprocess(measure_multiprocess(made, dense, made["hf"] / "config.json", work / "out", drop_caches(True)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
