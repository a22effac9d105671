"""Conversion and inspection at disk speed? Measured against `cp -r` and a load-everything baseline.

    python -m bench [--quick] [--workdir DIR] [--keep] [--workers N] [--json OUT] [--no-drop-caches]

Generates synthetic bf16 checkpoints (a 1B-shape Llama: hidden 2048, 16 layers, 32 heads / 8
query groups, ffn 5632, vocab 32000, ≈1.7 GB; a Mixtral-shape MoE with 32 experts) in four
layouts (HF sharded safetensors, Megatron `torch` TP2×PP2, `torch_dist` TP2×PP2, NxD TP2×PP2),
then measures, all in this one run on the same files:

- inspect: `detect()` + the full JSON index vs loading every shard whole (wall time, bytes read);
- convert: each path with ckptscope, with `cp -r` of the source folder, and with the naive
  baseline of `bench/naive.py` (load all, convert in memory, save all) - wall time and peak RSS;
- scaling: Megatron TP2PP2 -> HF at four model sizes (layers and vocab scaled together);
- remote: the 64-expert MoE HF checkpoint in a local S3 server (bench/remote_bench.py): inspect
  requests and bytes, and HF -> Megatron TP2 straight from s3:// against download-then-convert.

Every measurement runs in its own process (peak RSS = VmHWM / ru_maxrss). As root, page caches
are dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before each one (by the measured child
itself, after its imports), so every run reads its source cold; the report says whether that
happened. Results: a printed table and bench/results/*.json.
`--quick` runs the same on a ≈0.3 GB model in about two minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.generate import CachedSpec, bf16, data_bytes, generate
from bench.naive import layer_bytes

REPO = Path(__file__).resolve().parent.parent
MB = 2**20

# Targets from issues 7 and 17
CP_RATIO = 1.3  # ours / cp -r
NAIVE_SPEEDUP = 2.0  # naive / ours, time
NAIVE_MEMORY = 5.0  # naive / ours, peak RSS
RSS_LAYERS, RSS_SLACK = 3, 400 * MB  # peak RSS <= 3 x largest layer + 400 MB
INSPECT_SPEEDUP = 50.0


@dataclass(frozen=True)
class Path_:
    """One conversion path of the bench."""

    label: str
    model: str  # a key of specs(): "dense" | "moe" | "zero" | "moe64" | "moe256"
    layout: str
    fmt: str
    tp: int = 1
    pp: int = 1
    ep: int = 1
    megatron_source: bool = False  # give --true-vocab-size (Megatron pads the vocabulary)
    config: bool = False  # give --config (the model's HF config.json): NxD and ZeRO sources carry none
    xser: bool = False
    from_fp32: bool = False  # ZeRO: rebuild fp32 weights from the optimizer partitions
    naive: bool = True  # the load-everything baseline applies (it cannot unpickle DeepSpeed's optimizer classes)


PATHS = [
    Path_("Megatron torch TP2PP2 -> HF", "dense", "megatron-torch", "hf", megatron_source=True),
    Path_("HF -> Megatron TP4PP1", "dense", "hf", "megatron", tp=4),
    Path_("HF -> torch_dist TP2PP2", "dense", "hf", "megatron-dist", tp=2, pp=2),
    Path_("torch_dist TP2PP2 -> HF", "dense", "torch_dist", "hf", megatron_source=True),
    Path_("HF -> NxD TP2PP2", "dense", "hf", "nxd", tp=2, pp=2),
    Path_("HF -> NxD TP2PP2 xser", "dense", "hf", "nxd", tp=2, pp=2, xser=True),
    Path_("NxD TP2PP2 -> HF", "dense", "nxd", "hf", config=True),
    Path_("Megatron TP2PP2 -> TP4PP1", "dense", "megatron-torch", "megatron", tp=4, megatron_source=True),
    Path_("ZeRO-2 fp32 rebuild -> HF", "zero", "zero", "hf", config=True, from_fp32=True, naive=False),
    Path_("MoE HF -> Megatron TP2EP2", "moe", "hf", "megatron", tp=2, ep=2),
    Path_("MoE Megatron TP2EP2 -> HF", "moe", "megatron-torch-ep", "hf", megatron_source=True),
    Path_("MoE64 HF -> Megatron TP2EP2", "moe64", "hf", "megatron", tp=2, ep=2),
    Path_("MoE256 HF -> Megatron TP2EP2", "moe256", "hf", "megatron", tp=2, ep=2),
]

LAYOUTS = {"dense": ["hf", "megatron-torch", "torch_dist", "nxd"], "moe": ["hf", "megatron-torch-ep"], "zero": ["zero"],
           "moe64": ["hf"], "moe256": ["hf"]}


def specs(quick: bool) -> tuple[dict[str, CachedSpec], list[CachedSpec]]:
    """(model key -> spec, scaling sizes); the largest scaling size is the dense model itself."""
    if quick:
        dense = dict(hidden=768, heads=12, kv_heads=4, ffn=2048)
        moe = bf16(layers=2, hidden=512, heads=8, kv_heads=2, ffn=256, experts=16, expert_ffn=256, vocab=8000)
        many = dict(layers=2, hidden=256, heads=4, kv_heads=2, ffn=128, vocab=4000)
        layers = [2, 4, 8, 16]
    else:
        dense = dict(hidden=2048, heads=32, kv_heads=8, ffn=5632)
        moe = bf16(layers=6, hidden=1024, heads=16, kv_heads=4, ffn=512, experts=32, expert_ffn=512, vocab=32000)
        many = dict(layers=3, hidden=1024, heads=16, kv_heads=4, ffn=512, vocab=16000)
        layers = [2, 4, 8, 16]
    sizes = [bf16(layers=n, vocab=2000 * n, **dense) for n in layers]  # vocab scales too: bytes double each step
    models = {"dense": sizes[-1], "moe": moe, "zero": sizes[0],  # ZeRO: weights + fp32 master + two Adam moments = 7x
              "moe64": bf16(experts=64, expert_ffn=many["hidden"] // 4, **many),  # DeepSeek-like: many small experts
              "moe256": bf16(experts=256, expert_ffn=many["hidden"] // 16, **many)}
    return models, sizes


# ----- measuring ------------------------------------------------------------------------------
def drop_caches(enabled: bool) -> bool:
    """Flush dirty pages and empty the page cache (root only); False if not done."""
    os.sync()
    if not enabled:
        return False
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


class ForkServer:
    """`python -m bench.child --serve`, started once: measurements fork from it (bench/child.py)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.child", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd=REPO, text=True)

    def run(self, argv: list[str]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the bench's fork server died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


_SERVER: ForkServer | None = None
_FRESH_BASE_RSS: int | None = None


def fresh_base_rss() -> int:
    """VmRSS of a fresh `bench.child` process after its imports (measured once)."""
    global _FRESH_BASE_RSS
    if _FRESH_BASE_RSS is None:
        out = subprocess.run([sys.executable, "-m", "bench.child", "--baseline"], cwd=REPO, capture_output=True, text=True, check=True)
        _FRESH_BASE_RSS = int(json.loads(out.stdout.strip().splitlines()[-1])["base_rss"])
    return _FRESH_BASE_RSS


def fork_server() -> ForkServer:
    global _SERVER
    if _SERVER is None or _SERVER.proc.poll() is not None:
        _SERVER = ForkServer()
    return _SERVER


def run_measured(cmd: list[str], drop: bool) -> dict[str, Any]:
    """Run one child with a cold cache; wall time and peak RSS of the process, plus its JSON line.

    A `bench.child` measurement is forked from the fork server (imports done once) and empties
    the cache itself: what is measured (the source's bytes) starts cold as before, while ~60
    children no longer pay 2-3 s each of a cold `import torch` that no measurement included."""
    if cmd[1:3] == ["-m", "bench.child"]:
        os.sync()
        argv = cmd[3:] + ["--drop-caches"] * drop
        reply = fork_server().run(argv)
        if reply["code"]:
            raise RuntimeError(f"bench.child {' '.join(argv[:4])}... failed:\n{reply['stderr']}")
        result = _measured(reply["stdout"].encode(), reply["wall"], False)  # the child says whether it dropped the cache
        if result.get("peak_rss") and result.get("base_rss"):  # as a fresh process would show it (see child.baseline)
            result["peak_rss_forked"] = result["peak_rss"]
            result["peak_rss"] += max(0, fresh_base_rss() - result["base_rss"])
        return result
    cold = drop_caches(drop)
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        out = proc.stdout.read() if proc.stdout else b""  # type: ignore[union-attr]
        _, status = os.waitpid(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd[:6])}... failed:\n{err.read().decode(errors='replace')[-3000:]}")
    return _measured(out, wall, cold)


def _measured(out: bytes, wall: float, cold: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    lines = out.decode().strip().splitlines()
    if lines and lines[-1].startswith("{"):
        result = json.loads(lines[-1])
    result["process_seconds"] = wall
    result.setdefault("cold_cache", cold)
    result.setdefault("seconds", wall)
    # ru_maxrss would include the forked bench process before exec; children that matter report VmHWM
    result.setdefault("peak_rss", None)
    return result


def child(mode: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench.child", mode, *args]


def convert_cmd(mode: str, path: Path_, src: Path, dst: Path, spec: CachedSpec, workers: int, config: Path | None = None) -> list[str]:
    cmd = child(mode, str(src), str(dst), path.fmt, "--tp", str(path.tp), "--pp", str(path.pp), "--ep", str(path.ep),
                "--workers", str(workers))
    if path.megatron_source:
        cmd += ["--true-vocab", str(spec.vocab)]
    if path.config:
        cmd += ["--config", str(config)]
    cmd += ["--xser"] * path.xser + ["--from-optimizer-fp32"] * path.from_fp32
    return cmd


def measure_path(path: Path_, src: Path, spec: CachedSpec, out: Path, drop: bool, workers: int, naive: bool,
                 config: Path | None = None, warm: bool = True) -> dict[str, Any]:
    """ckptscope, cp -r and (optionally) the naive baseline on the same source, each cold; then
    cp -r and ckptscope again with the source in the page cache (warm)."""
    row: dict[str, Any] = {"path": path.label, "source_bytes": data_bytes(src),
                           "largest_layer_bytes": layer_bytes(spec.canonical_shapes(), spec.dtype.itemsize)}
    ours_cmd = convert_cmd("ours", path, src, out, spec, workers, config)
    runs = [("cp", ["cp", "-r", str(src), str(out)], drop), ("ours", ours_cmd, drop)]
    if naive and path.naive:
        runs.append(("naive", convert_cmd("naive", path, src, out, spec, workers, config), drop))
    if warm:
        runs += [("cp_warm", ["cp", "-r", str(src), str(out)], False), ("ours_warm", ours_cmd, False)]
    for name, cmd, cold in runs:
        shutil.rmtree(out, ignore_errors=True)
        row[name] = run_measured(cmd, cold)
        row[name]["load_average"] = os.getloadavg()[0]
        if name == "ours":
            row["output_bytes"] = data_bytes(out)
        shutil.rmtree(out, ignore_errors=True)
        peak = row[name]["peak_rss"]
        print(f"  {path.label:30} {name:9} {row[name]['seconds']:7.2f} s" + (f"  peak {peak / MB:7.0f} MiB" if peak else "")
              + f"  (load {row[name]['load_average']:.1f})", flush=True)
    ours, cp = row["ours"], row["cp"]
    budget = RSS_LAYERS * row["largest_layer_bytes"] + RSS_SLACK
    row["ratios"] = {"ours_over_cp": ours["seconds"] / cp["seconds"],
                     "ours_process_over_cp": ours["process_seconds"] / cp["seconds"],
                     "peak_over_largest_layer": ours["peak_rss"] / row["largest_layer_bytes"],
                     "peak_budget_bytes": budget}
    row["targets"] = {"time_vs_cp": ours["seconds"] <= CP_RATIO * cp["seconds"], "peak_rss": ours["peak_rss"] <= budget}
    if warm:
        row["ratios"]["ours_over_cp_warm"] = row["ours_warm"]["seconds"] / row["cp_warm"]["seconds"]
        row["targets"]["time_vs_cp_warm"] = row["ratios"]["ours_over_cp_warm"] <= CP_RATIO
    if "naive" in row:
        nv = row["naive"]
        row["ratios"] |= {"naive_over_ours_time": nv["seconds"] / ours["seconds"], "naive_over_ours_peak": nv["peak_rss"] / ours["peak_rss"]}
        row["targets"] |= {"faster_than_naive": nv["seconds"] >= NAIVE_SPEEDUP * ours["seconds"],
                           "less_memory_than_naive": nv["peak_rss"] >= NAIVE_MEMORY * ours["peak_rss"]}
    return row


def measure_inspect(layout: str, src: Path, drop: bool) -> dict[str, Any]:
    size = data_bytes(src)
    ours = run_measured(child("inspect", str(src)), drop)
    base = run_measured(child("loadall", str(src)), drop)
    print(f"  inspect {layout:16} ours {ours['seconds']:.3f} s {ours['read_bytes']:>12,} B   load-all {base['seconds']:.2f} s", flush=True)
    budget = MB + 0.005 * size
    return {"layout": layout, "bytes": size, "ours": ours, "load_all": base,
            "ratios": {"speedup": base["seconds"] / ours["seconds"], "bytes_read_fraction": ours["read_bytes"] / size},
            "targets": {"bytes_read": ours["read_bytes"] <= budget, "speedup": base["seconds"] >= INSPECT_SPEEDUP * ours["seconds"]}}


# ----- report -----------------------------------------------------------------------------------
def _ok(flag: bool | None) -> str:
    return "" if flag is None else ("ok" if flag else "MISS")


def print_report(result: dict[str, Any]) -> None:
    print(f"\n{result['machine']}; page cache dropped before each run: {result['cold_cache']}; workers {result['workers']}")
    print("\ninspect                 size GiB   ours s   bytes read   load-all s  speed-up  read %   targets")
    for r in result["inspect"]:
        t = r["targets"]
        print(f"{r['layout']:22} {r['bytes'] / 2**30:9.2f} {r['ours']['seconds']:8.3f} {r['ours']['read_bytes']:12,} "
              f"{r['load_all']['seconds']:11.2f} {r['ratios']['speedup']:8.1f}x {100 * r['ratios']['bytes_read_fraction']:6.3f}  "
              f"bytes {_ok(t['bytes_read'])}, speed {_ok(t['speedup'])}")
    nan = float("nan")
    print("\nconvert (cold, then warm)       GiB   cp s  ours s  ours/cp  cp warm  ours warm  ours/cp warm  naive s  naive/ours  "
          "peak MiB  naive MiB  mem x  peak/layer  budget MiB  load  targets (cp, cp warm, rss, 2x, 5x)")
    for r in result["convert"]:
        ra, t = r["ratios"], r["targets"]
        nv, cw, ow = r.get("naive"), r.get("cp_warm"), r.get("ours_warm")
        print(f"{r['path']:30} {r['source_bytes'] / 2**30:5.2f} {r['cp']['seconds']:6.2f} {r['ours']['seconds']:7.2f} "
              f"{ra['ours_over_cp']:8.2f} {(cw['seconds'] if cw else nan):8.2f} {(ow['seconds'] if ow else nan):10.2f} "
              f"{ra.get('ours_over_cp_warm', nan):13.2f} {(nv['seconds'] if nv else nan):8.2f} {ra.get('naive_over_ours_time', nan):11.2f} "
              f"{r['ours']['peak_rss'] / MB:9.0f} {(nv['peak_rss'] / MB if nv else nan):10.0f} "
              f"{ra.get('naive_over_ours_peak', nan):6.1f} {ra['peak_over_largest_layer']:11.1f} {ra['peak_budget_bytes'] / MB:11.0f} "
              f"{r['ours'].get('load_average', nan):5.1f}  "
              f"{_ok(t['time_vs_cp'])}, {_ok(t.get('time_vs_cp_warm'))}, {_ok(t['peak_rss'])}, {_ok(t.get('faster_than_naive'))}, "
              f"{_ok(t.get('less_memory_than_naive'))}")
    print("\nscaling (Megatron TP2PP2 -> HF)  GiB   cp s  ours s  ours/cp  s per GiB  peak MiB")
    for r in result["scaling"]:
        gib = r["source_bytes"] / 2**30
        print(f"{r['layers']:3} layers, vocab {r['vocab']:6}     {gib:5.2f} {r['cp']['seconds']:6.2f} {r['ours']['seconds']:7.2f} "
              f"{r['ratios']['ours_over_cp']:8.2f} {r['ours']['seconds'] / gib:10.2f} {r['ours']['peak_rss'] / MB:9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="≈0.3 GB model: the whole run in about two minutes")
    parser.add_argument("--workdir", type=Path, default=None, help="where checkpoints are generated (kept and reused)")
    parser.add_argument("--keep", action="store_true", help="keep a temporary workdir")
    parser.add_argument("--workers", type=int, default=2, help="ckptscope --workers for every conversion")
    parser.add_argument("--no-naive", action="store_true", help="skip the load-everything baseline")
    parser.add_argument("--no-drop-caches", action="store_true", help="keep the page cache between measurements")
    parser.add_argument("--no-multiprocess", action="store_true", help="skip the torchrun --nproc-per-node 2 table")
    parser.add_argument("--paths", nargs="*", default=None, help="only the convert paths whose label contains one of these words")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/bench[-quick].json")
    opts = parser.parse_args()
    drop = not opts.no_drop_caches
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="ckptscope-bench-"))
    out = work / "out"
    began = time.perf_counter()
    try:
        models, sizes = specs(opts.quick)
        dense = models["dense"]
        print(f"generating in {work} ...", flush=True)
        t0 = time.perf_counter()
        ckpts = {key: generate(models[key], work / (f"dense-{dense.layers}" if key == "dense" else key), layouts)
                 for key, layouts in LAYOUTS.items()}
        scaled = [generate(s, work / f"scale-{s.layers}", ["megatron-torch"])["megatron-torch"] for s in sizes[:-1]]
        scaled.append(ckpts["dense"]["megatron-torch"])
        configs = {"dense": ckpts["dense"]["hf"] / "config.json", "zero": ckpts["zero"]["zero"] / "config.json"}
        print(f"generated in {time.perf_counter() - t0:.0f} s", flush=True)
        result: dict[str, Any] = {
            "command": "python -m bench" + (" --quick" if opts.quick else "") + ("" if opts.workers == 2 else f" --workers {opts.workers}"),
            "machine": f"{os.cpu_count()} cores, {_mem_gib():.0f} GiB RAM, Python {platform.python_version()}, torch {torch.__version__}, "
                       f"load average at start {os.getloadavg()[0]:.2f}",
            "workers": opts.workers, "specs": {key: _spec(spec) for key, spec in models.items()},
            "cold_cache": drop_caches(drop), "inspect": [], "convert": [], "scaling": []}
        for layout, src in ckpts["dense"].items():
            result["inspect"].append(measure_inspect(layout, src, drop))
        only = [p for p in PATHS if not opts.paths or any(w.lower() in p.label.lower() for w in opts.paths)]
        for path in only:
            result["convert"].append(measure_path(path, ckpts[path.model][path.layout], models[path.model], out, drop, opts.workers,
                                                  not opts.no_naive, config=configs.get(path.model)))
        for spec, src in zip(sizes, scaled) if not opts.paths else ():
            if spec is dense and result["convert"] and result["convert"][0]["path"] == PATHS[0].label:
                row = dict(result["convert"][0])
            else:
                row = measure_path(PATHS[0], src, spec, out, drop, opts.workers, naive=False, warm=False)
            row |= {"layers": spec.layers, "vocab": spec.vocab}
            result["scaling"].append(row)
        if not opts.no_multiprocess:
            from bench.multiprocess import measure_multiprocess, print_multiprocess

            result["multiprocess"] = measure_multiprocess(ckpts["dense"], dense, configs["dense"], out, drop)
        else:
            print_multiprocess = None  # type: ignore[assignment]
        from bench.remote_bench import measure_remote, print_row

        result["remote"] = measure_remote(ckpts["moe64"]["hf"], work, workers=opts.workers, model="MoE64 HF")  # skipped without moto/s3fs
        print_row(result["remote"])
        from bench.startup import measure as measure_startup, print_table  # issue 17: --help, inspect, fixed cost

        result["startup"] = measure_startup(5, work / "startup")
        print_table(result["startup"])
        result["seconds_total"] = time.perf_counter() - began
        result["load_average_end"] = os.getloadavg()[0]
        print_report(result)
        if print_multiprocess is not None:
            print_multiprocess(result["multiprocess"])
        target = opts.json or REPO / "bench" / "results" / ("bench-quick.json" if opts.quick else "bench.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {target} ({result['seconds_total']:.0f} s in all)")
    finally:
        if _SERVER is not None:
            _SERVER.close()
        shutil.rmtree(out, ignore_errors=True)
        if opts.workdir is None and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)


def _spec(spec: CachedSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["dtype"] = str(spec.dtype)
    d["bytes"] = spec.nbytes()
    d["params"] = spec.nbytes() // spec.dtype.itemsize
    return d


def _mem_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return math.nan


if __name__ == "__main__":
    main()
