"""One measurement in a fresh process; prints one JSON line.

    python -m bench.child ours|naive SRC DST FORMAT [--tp N --pp N --ep N --workers N --true-vocab N
                                                     --config F --xser --from-optimizer-fp32]
    python -m bench.child inspect|loadall SRC
    python -m bench.child --serve      # fork server: one JSON argv per stdin line, one JSON reply each

Timing starts after the interpreter, torch and ckptscope are imported (a `cp -r` has no such
start-up; whole-process start-up is measured by bench/startup.py). `python -m bench` runs its
measurements through the fork server: each is a process forked from one that imported
everything once, so ~60 measurements do not each pay 2-3 s of `import torch`. Peak RSS is the process's VmHWM,
counting everything the process ever held, imports included. Bytes read/written come from
/proc/self/io (rchar/wchar: what the process asked of the kernel, cache hits included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch  # noqa: F401 - imported before the clock starts, like ckptscope itself
import torch.distributed.checkpoint  # noqa: F401 - the torch_dist reader's (and the DCP baseline's) ~20 MB of modules

from ckptscope.converters import families, sources
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import convert
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.formats import READERS  # noqa: F401

# A CLI process imports readers, families and sources as it first needs them; here all of them
# are imported before the clock starts, like the rest of ckptscope, so that a measurement counts
# the checkpoint's bytes and work, not .pyc reads (the inspect rows' bytes read).
_ALL = (families.FAMILIES, [sources.source_class(kind) for kind in sources.SOURCES])


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


def main(argv: list[str] | None = None) -> None:
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
    a = parser.parse_args(argv)
    cold = False
    if a.drop_caches:
        from bench.run import drop_caches

        cold = drop_caches(True)
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
    print(json.dumps({"seconds": seconds, "peak_rss": status["VmHWM"], "base_rss": base, "cold_cache": cold,
                      "read_bytes": io1["rchar"] - io0["rchar"], "written_bytes": io1["wchar"] - io0["wchar"], **extra}))


def _forked(argv: list[str]) -> dict:
    """Run `main(argv)` in a forked child; its stdout, exit code, stderr tail and wall time."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the measured process: nothing but imports before it, no threads yet
        code = 1
        try:
            os.close(out_r), os.close(err_r)
            os.dup2(out_w, 1), os.dup2(err_w, 2)
            main(argv)
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the bench as the child's stderr
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(out_w), os.close(err_w)
    with os.fdopen(err_r, "rb") as err_pipe, os.fdopen(out_r, "rb") as out_pipe:
        import threading

        err: list[bytes] = []
        drain = threading.Thread(target=lambda: err.append(err_pipe.read()))  # stderr must not fill and block the child
        drain.start()
        out = out_pipe.read()
        drain.join()
    _, status = os.waitpid(pid, 0)
    return {"code": os.waitstatus_to_exitcode(status), "stdout": out.decode(errors="replace"),
            "stderr": b"".join(err).decode(errors="replace")[-3000:], "wall": time.perf_counter() - start}


def serve() -> None:
    """Fork server: read one JSON argv per line, answer one JSON line per measurement."""
    for line in sys.stdin:
        reply = _forked(json.loads(line))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def baseline() -> None:
    """The resident size of a fresh process after these imports (VmRSS): a forked measurement
    starts smaller (the parent's file pages it never touches are not counted in its RSS), so the
    bench adds the difference back to report what `ckptscope convert` itself would show."""
    print(json.dumps({"base_rss": proc_status()["VmRSS"]}))


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    elif sys.argv[1:] == ["--baseline"]:
        baseline()
    else:
        main()
