"""The remote row of `python -m bench`: a checkpoint in a local S3 server (moto, 127.0.0.1).

- inspect: requests and bytes the server sent for `detect()` of the bucket's checkpoint, against
  the budget of 1 MiB + 0.5 % of the checkpoint;
- convert: ckptscope straight from `s3://` against the usual route, a full download (s3fs `get`,
  what `aws s3 cp --recursive` does) followed by a local conversion, in the same run.

Both sides run in this process against the same server, so the numbers compare the routes, not
the machines. Run alone: `python -m bench.remote_bench [--quick]`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

MB = 2**20
BUCKET = "bench"


def measure_remote(src: Path, work: Path, fmt: str = "megatron", tp: int = 2, workers: int = 2, model: str = "HF") -> dict[str, Any]:
    """Upload `src` (an HF folder) to a fresh local S3 server and measure both routes. The bench
    uses its smallest model (a 64-expert MoE, 0.36 GiB): the server is moto in one Python process,
    whose throughput, not ckptscope's, would set the time of a larger upload."""
    try:
        import s3fs  # noqa: F401

        from tests.remote_servers import S3Server
    except ImportError as exc:
        return {"skipped": f"needs moto[server] and s3fs: {exc}"}
    from ckptscope.converters.plan import make_plan
    from ckptscope.converters.run import run_to_end
    from ckptscope.converters.writers import TargetOptions
    from ckptscope.inspectors import detect, storage

    server = S3Server().start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        server.upload_tree(BUCKET, src, "ckpt")
        storage.configure({"s3.endpoint_url": server.endpoint, "s3.key": "bench", "s3.secret": "bench"})
        url = f"s3://{BUCKET}/ckpt"
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        storage.forget()
        server.counter.reset()
        t0 = time.perf_counter()
        detect(url).to_json()
        inspect = {"seconds": time.perf_counter() - t0, "requests": server.counter.requests, "bytes": server.counter.body_bytes,
                   "budget": MB + 0.005 * size}
        inspect["within_budget"] = inspect["bytes"] <= inspect["budget"]

        out = work / "remote-out"
        shutil.rmtree(out, ignore_errors=True)
        storage.forget()
        server.counter.reset()
        t0 = time.perf_counter()
        run_to_end(make_plan(url, TargetOptions(fmt, tp=tp, workers=workers)), out)
        direct = {"seconds": time.perf_counter() - t0, "bytes": server.counter.body_bytes, "requests": server.counter.requests}
        shutil.rmtree(out, ignore_errors=True)

        copy = work / "remote-download"
        shutil.rmtree(copy, ignore_errors=True)
        fs = storage.RemotePath(url).fs
        t0 = time.perf_counter()
        fs.get(f"{BUCKET}/ckpt/", str(copy), recursive=True)
        downloaded = time.perf_counter() - t0
        t1 = time.perf_counter()
        run_to_end(make_plan(copy, TargetOptions(fmt, tp=tp, workers=workers)), out)
        local = time.perf_counter() - t1
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
    finally:
        server.stop()
        storage.forget()
    baseline = downloaded + local
    return {"path": f"s3:// {model} -> {fmt} TP{tp}", "source_bytes": size, "inspect": inspect, "direct": direct,
            "download_seconds": downloaded, "local_convert_seconds": local, "download_then_convert_seconds": baseline,
            "ratios": {"direct_over_download_then_convert": direct["seconds"] / baseline,
                       "direct_mb_per_s": size / MB / direct["seconds"]}}


def print_row(row: dict[str, Any]) -> None:
    if "skipped" in row:
        print(f"\nremote: skipped ({row['skipped']})")
        return
    i, d = row["inspect"], row["direct"]
    print("\nremote (local S3 server)        GiB  inspect reqs  inspect bytes  budget ok  direct s  MB/s  download s  "
          "+local s  direct/(download+local)")
    print(f"{row['path']:30} {row['source_bytes'] / 2**30:5.2f} {i['requests']:13} {i['bytes']:14,} {'ok' if i['within_budget'] else 'MISS':>10} "
          f"{d['seconds']:9.2f} {row['ratios']['direct_mb_per_s']:5.0f} {row['download_seconds']:11.2f} "
          f"{row['local_convert_seconds']:9.2f} {row['ratios']['direct_over_download_then_convert']:24.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    from bench.generate import generate
    from bench.run import specs

    work = Path(tempfile.mkdtemp(prefix="ckptscope-remote-bench-"))
    try:
        models, _sizes = specs(opts.quick)
        src = generate(models["moe64"], work / "moe64", ["hf"])["hf"]
        print_row(measure_remote(src, work, model="MoE64 HF"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
