"""Start-up of whole processes (issue 17): `--help`, `inspect` of every format, a conversion's
fixed cost, against `python -c "import torch"`; median of N runs each.

    python -m bench.startup [--runs 7] [--workdir DIR] [--json OUT]

Targets: `ckptscope --help` (and `COMMAND --help`) <= 0.3 s; `inspect --json` of any format
<= 0.6 s; a tiny HF -> HF conversion minus `import torch` (with torch's objects frozen out of
the collector, as the CLI does: `TORCH_FROZEN`) <= 0.3 s. Wall time is what a user
waits; CPU time (user + sys of the child) is printed too, as it moves less when other work
shares the machine. Children run with Python's bytecode cache on, as after `pip install`
(which compiles every module): an environment with PYTHONDONTWRITEBYTECODE=1 would otherwise
compile ~90 modules from source in every process (0.4 s here). Importable: `measure(runs,
workdir)` returns the rows (bench/run.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = {"help": 0.3, "inspect": 0.6, "convert fixed cost": 0.3}
# The baseline of the fixed cost: the CLI freezes torch's objects out of the collector once it has
# imported torch (app/cli.py), which also spares the interpreter's exit a full collection over
# them (0.55 s of a bare `import torch` process here). Against a bare `import torch` the
# difference would credit that exit saving to ckptscope and come out negative.
TORCH_FROZEN = [sys.executable, "-c", "import gc, torch; gc.freeze()"]


def write_formats(root: Path) -> dict[str, Path]:
    """The demo workspace plus the formats it lacks; name -> checkpoint path."""
    from ckptscope.converters.samples.demo import write_demo
    from ckptscope.converters.samples.extra_formats import write_extra_formats

    return {**write_demo(root / "demo"), **write_extra_formats(root)}


def _cli() -> list[str]:
    found = shutil.which("ckptscope", path=str(Path(sys.executable).parent)) or shutil.which("ckptscope")
    return [found] if found else [sys.executable, "-m", "ckptscope.app.cli"]


def _run(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def _summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    walls = [w for w, _ in samples]
    return {"median_s": statistics.median(walls), "min_s": min(walls), "cpu_median_s": statistics.median(c for _, c in samples)}


def _time(argv: list[str], runs: int, cwd: Path) -> dict[str, float]:
    """Median and best wall / CPU seconds of `runs` fresh processes (one warm-up run first, which
    warms the page cache and writes the bytecode cache)."""
    _run(argv, cwd)
    return _summary([_run(argv, cwd) for _ in range(runs)])


def _difference(argv: list[str], base: list[str], runs: int, cwd: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(argv alone, argv - base): medians over runs taken in alternation, so a drift of the
    machine between two separate series (import torch alone varies by half a second here)
    cancels out of the difference."""
    _run(argv, cwd), _run(base, cwd)
    pairs = [(_run(argv, cwd), _run(base, cwd)) for _ in range(runs)]
    return _summary([a for a, _ in pairs]), _summary([(a[0] - b[0], a[1] - b[1]) for a, b in pairs])


def measure(runs: int = 7, workdir: Path | None = None) -> list[dict[str, Any]]:
    """Rows: {"what", "kind", "median_s", "min_s", "cpu_median_s", "target_s", "ok"}."""
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="ckptscope-startup-")) if own else Path(workdir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        formats = write_formats(root / "formats") if not (root / "formats").exists() else _listed(root / "formats")
        cli = _cli()
        rows: list[dict[str, Any]] = []

        def add(what: str, kind: str, argv: list[str]) -> dict[str, Any]:
            row = {"what": what, "kind": kind, **_time(argv, runs, root)}
            target = TARGETS.get(kind)
            row["target_s"], row["ok"] = target, (row["median_s"] <= target if target else None)
            rows.append(row)
            return row

        add("python -c pass", "baseline", [sys.executable, "-c", "pass"])
        add('python -c "import torch"', "baseline", [sys.executable, "-c", "import torch"])
        add('python -c "import torch; gc.freeze()"', "baseline", TORCH_FROZEN)
        for args in (["--help"], ["inspect", "--help"], ["convert", "--help"]):
            add("ckptscope " + " ".join(args), "help", cli + args)
        for name, path in formats.items():
            add(f"inspect --json {name}", "inspect", cli + ["inspect", "--json", str(path)])
        out = root / "converted"
        convert = [*cli, "convert", str(formats["hf-llama"]), str(out), "--to", "hf", "--force", "--json"]
        alone, beyond = _difference(convert, TORCH_FROZEN, runs, root)
        rows.append({"what": "convert hf-llama (1 MB) --to hf", "kind": "convert", **alone, "target_s": None, "ok": None})
        fixed = {"what": "convert fixed cost beyond import torch", "kind": "convert fixed cost", **beyond}
        fixed["target_s"] = TARGETS["convert fixed cost"]
        fixed["ok"] = fixed["median_s"] <= fixed["target_s"]
        rows.append(fixed)
        return rows
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def _listed(root: Path) -> dict[str, Path]:
    """Formats written by an earlier run into the same --workdir."""
    demo = {p.name: p for p in sorted((root / "demo").iterdir()) if p.is_dir()}
    extra = {"hf-bin": root / "hf-bin", "nxd-xser": root / "nxd-xser" / "step_10", "deepspeed-zero": root / "ds-zero",
             "megatron-legacy": root / "megatron-legacy", "deepspeed-universal": root / "ds-universal",
             "torch-dcp": root / "dcp" / "fsdp_0"}
    return {**demo, **extra}


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'what':<46} {'median s':>9} {'min s':>7} {'cpu s':>7} {'target':>7}  ok")
    for r in rows:
        target = f"{r['target_s']:.2f}" if r["target_s"] else "-"
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "MISS")
        print(f"{r['what']:<46} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['cpu_median_s']:>7.3f} {target:>7}  {ok}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per command (median reported)")
    parser.add_argument("--workdir", type=Path, help="keep the generated checkpoints here (reused by later runs)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    rows = measure(args.runs, args.workdir)
    print_table(rows)
    doc = {"runs": args.runs, "load_average": os.getloadavg(), "rows": rows}
    print(json.dumps(doc))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
