"""Inspect a ≥2 GB Megatron TP2×PP2 checkpoint vs `torch.load` of every shard, in one run.

    python bench/inspect_bench.py [--workdir DIR] [--keep] [--json OUT]

Generates a 1B-shape Llama checkpoint (hidden 2048, 16 layers, 32 heads / 8 query groups,
ffn 5632, vocab 32000, bf16 ≈ 2.2 GB) split over TP=2 × PP=2 rank files, then measures:
- ckptscope: `detect()` + the full JSON index, in-process (time, bytes read via /proc rchar);
- the same through the CLI (`ckptscope inspect --json`, a fresh process, startup included);
- baseline: `torch.load` of every rank file (what scripts that "just look" do).
Both sides see the same page cache (the files were just written). `--drop-caches` tries to
empty it before each measurement (root only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import detect

ONE_B = SampleSpec(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=5632, vocab=32000, dtype=torch.bfloat16)


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def drop_caches(enabled: bool) -> bool:
    if not enabled:
        return False
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(fn) -> tuple[float, int]:
    start_bytes, start = rchar(), time.perf_counter()
    fn()
    return time.perf_counter() - start, rchar() - start_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    parser.add_argument("--json", type=Path, default=Path("bench/results/inspect.json"))
    parser.add_argument("--drop-caches", action="store_true")
    opts = parser.parse_args()

    work = opts.workdir or Path(tempfile.mkdtemp(prefix="ckptscope-bench-"))
    root = work / "megatron_1b_tp2pp2"
    try:
        if not root.exists():
            t0 = time.perf_counter()
            write_megatron_torch(ONE_B, root, tp=2, pp=2, iterations=(1000,))
            print(f"generated {root} in {time.perf_counter() - t0:.1f}s")
        files = sorted(root.rglob("model_optim_rng.pt"))
        total = sum(f.stat().st_size for f in files)

        cold = drop_caches(opts.drop_caches)
        t_ours, b_ours = measure(lambda: detect(root).to_json())
        drop_caches(opts.drop_caches)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ckptscope.app.cli", "inspect", "--json", str(root)], check=True, stdout=subprocess.DEVNULL)
        t_cli = time.perf_counter() - start
        drop_caches(opts.drop_caches)

        def load_all() -> None:
            with torch.serialization.safe_globals([argparse.Namespace]):
                for f in files:
                    torch.load(f, map_location="cpu", weights_only=True)

        t_base, b_base = measure(load_all)

        result = {
            "checkpoint": {"layout": "megatron-torch TP2xPP2", "files": len(files), "bytes": total, "params": int(ONE_B.nbytes() / 2)},
            "cold_cache": cold,
            "ckptscope_detect": {"seconds": t_ours, "bytes_read": b_ours},
            "ckptscope_cli_process": {"seconds": t_cli},
            "torch_load_all": {"seconds": t_base, "bytes_read": b_base},
            "ratios": {
                "speedup_in_process": t_base / t_ours,
                "speedup_cli_process": t_base / t_cli,
                "bytes_read_fraction": b_ours / total,
                "bytes_read_budget_ok": b_ours <= 2**20 + total * 0.005,
            },
        }
        print(f"\ncheckpoint: {len(files)} rank files, {total / 2**30:.2f} GiB ({'cold' if cold else 'warm'} page cache)")
        print(f"{'':28}{'seconds':>10}{'bytes read':>16}")
        print(f"{'ckptscope detect (in-proc)':28}{t_ours:>10.3f}{b_ours:>16,}")
        print(f"{'ckptscope inspect (CLI)':28}{t_cli:>10.3f}{'':>16}")
        print(f"{'torch.load every shard':28}{t_base:>10.3f}{b_base:>16,}")
        print(f"\nspeed-up vs torch.load: {result['ratios']['speedup_in_process']:.1f}x in-process, "
              f"{result['ratios']['speedup_cli_process']:.1f}x as a CLI process (Python+torch start-up included)")
        print(f"bytes read by ckptscope: {b_ours / total:.4%} of the checkpoint "
              f"(budget 1 MiB + 0.5%: {'met' if result['ratios']['bytes_read_budget_ok'] else 'MISSED'})")
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {opts.json}")
    finally:
        if not opts.keep and opts.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
