"""One measurement in a fresh process; prints one JSON line.

    python -m bench.child ours|naive SRC DST FORMAT [--tp N --pp N --ep N --workers N --true-vocab N
                                                     --config F --xser --from-optimizer-fp32]
    python -m bench.child inspect|loadall SRC

Timing starts after the interpreter, torch and ckptscope are imported (a `cp -r` has no such
start-up; the bench reports the process time separately). Peak RSS is the process's VmHWM,
counting everything the process ever held, imports included. Bytes read/written come from
/proc/self/io (rchar/wchar: what the process asked of the kernel, cache hits included).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch  # noqa: F401 - imported before the clock starts, like ckptscope itself
import torch.distributed.checkpoint  # noqa: F401 - the torch_dist reader's (and the DCP baseline's) ~20 MB of modules

from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import convert
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect


def proc_status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def proc_io() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value)
    return out


def load_all(src: Path) -> None:
    """The inspect baseline: load every tensor file whole (what "just look" scripts do)."""
    ckpt = detect(src)
    from bench.naive import load_everything
    from ckptscope.converters.sources import open_source

    class _Plan:  # load_everything needs only .ckpt (and .source for torch_dist)
        pass

    plan = _Plan()
    plan.ckpt = ckpt  # type: ignore[attr-defined]
    if ckpt.kind == "megatron-dist":
        plan.source = open_source(ckpt)  # type: ignore[attr-defined]
    load_everything(plan)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["ours", "naive", "inspect", "loadall"])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path, nargs="?")
    parser.add_argument("fmt", nargs="?", default="hf")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--true-vocab", type=int, default=None)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--xser", action="store_true")
    parser.add_argument("--from-optimizer-fp32", action="store_true")
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache after the imports")
    a = parser.parse_args()
    if a.drop_caches:
        from bench.run import drop_caches

        drop_caches(True)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on (imports stay resident)
    base = proc_status()["VmRSS"]
    io0 = proc_io()
    start = time.perf_counter()
    extra: dict = {}
    if a.mode == "inspect":
        json.dumps(detect(a.src).to_json())
    elif a.mode == "loadall":
        load_all(a.src)
    else:
        opts = TargetOptions(a.fmt, tp=a.tp, pp=a.pp, ep=a.ep, workers=a.workers, xser=a.xser)
        plan = make_plan(a.src, opts, true_vocab=a.true_vocab, config=a.config, from_optimizer_fp32=a.from_optimizer_fp32)
        assert plan.ok, plan.errors
        if a.mode == "ours":
            for _ in convert(plan, a.dst):
                pass
        else:
            from bench.naive import naive_convert

            extra["phases"] = naive_convert(plan, a.dst)
    seconds = time.perf_counter() - start
    io1 = proc_io()
    status = proc_status()
    print(json.dumps({"seconds": seconds, "peak_rss": status["VmHWM"], "base_rss": base,
                      "read_bytes": io1["rchar"] - io0["rchar"], "written_bytes": io1["wchar"] - io0["wchar"], **extra}))


if __name__ == "__main__":
    main()
