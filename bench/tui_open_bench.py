"""How fast the app shows a 100k-tensor MoE checkpoint (issue: "first screen in under a second").

    python bench/tui_open_bench.py [--workdir DIR] [--experts 128] [--layers 260] [--runs 5]

Generates a Mixtral-shaped HF checkpoint with tiny dimensions but >100,000 tensors (layers ×
(3 × experts + 7)) in 8 shards, then measures, in one run:
- the steps alone: `detect()` (headers only), the module tree root, the canonical view;
- the app, `--runs` times in this process: from creating `CkptscopeApp(path)` to the inspect
  screen's first paint with the tensor tree (the screen records it), and to the pilot seeing it
  settled; the same for the built-in demo's tiny HF checkpoint as the baseline (app start-up);
- opening it from a running app's folder browser (what Enter on a checkpoint costs);
- one cold process: from interpreter start (imports of torch, textual, ckptscope included).
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

TARGET = 1.0


def generate(folder: Path, experts: int, layers: int) -> Path:
    from ckptscope.converters.samples.hf import write_hf
    from ckptscope.converters.samples.spec import SampleSpec

    spec = SampleSpec(layers=layers, hidden=8, heads=2, kv_heads=1, ffn=8, vocab=32, experts=experts, topk=2)
    if not (folder / "config.json").exists():
        write_hf(spec, folder, shards=8)
    return folder


async def time_app(path: Path, start: float | None = None) -> tuple[float, float]:
    """Seconds from `start` (default: now, just before creating the app) to the inspect screen's
    first paint, and to the pilot seeing it (includes the pilot's polling)."""
    from ckptscope.app.tui.app import CkptscopeApp
    from ckptscope.app.tui.inspect import InspectScreen

    start = time.perf_counter() if start is None else start
    app = CkptscopeApp(path)
    async with app.run_test(size=(140, 40)) as pilot:
        while not (isinstance(app.screen, InspectScreen) and app.screen.shown_at is not None):
            await pilot.pause(0.005)
        seen = time.perf_counter() - start
        return app.screen.shown_at - start, seen


async def time_from_browser(path: Path) -> float:
    """Seconds from asking a running app (on the folder browser) to open `path` to the inspect
    screen's first paint: what a user waits for after pressing Enter on a checkpoint."""
    from ckptscope.app.tui.app import CkptscopeApp
    from ckptscope.app.tui.browse import BrowseScreen
    from ckptscope.app.tui.inspect import InspectScreen

    app = CkptscopeApp(path.parent)
    async with app.run_test(size=(140, 40)) as pilot:
        while not isinstance(app.screen, BrowseScreen):
            await pilot.pause(0.01)
        await pilot.pause(0.5)  # the folder listing and its probes settle
        start = time.perf_counter()
        app.open_checkpoint(path)
        while not (isinstance(app.screen, InspectScreen) and app.screen.shown_at is not None):
            await pilot.pause(0.005)
        return app.screen.shown_at - start


def _stats(values: list[float]) -> str:
    return f"median {statistics.median(values):6.3f} s   min {min(values):6.3f}   max {max(values):6.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--layers", type=int, default=260)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold-child", type=Path, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    os.environ.setdefault("CKPTSCOPE_CONFIG_DIR", tempfile.mkdtemp())
    if opts.cold_child is not None:  # one cold process: print seconds since interpreter start
        shown, _ = asyncio.run(time_app(opts.cold_child, start=PROCESS_START))
        print(f"{shown:.4f}")
        return
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="ckptscope-tui-bench-"))
    folder = generate(work / f"moe_{opts.layers}x{opts.experts}", opts.experts, opts.layers)
    from ckptscope.converters.samples.demo import write_demo

    demo = work / "demo"
    if not demo.exists():
        write_demo(demo)
    tiny = demo / "hf-llama"

    from ckptscope.converters.canonical_view import canonical_view
    from ckptscope.inspectors import detect
    from ckptscope.inspectors.tree import build_tree

    t0 = time.perf_counter()
    ckpt = detect(folder)
    t1 = time.perf_counter()
    tree = build_tree(ckpt.tensors, separate_non_model=True)
    tree.sorted_children()  # the first level, as the screen shows it
    t2 = time.perf_counter()
    view = canonical_view(ckpt)
    t3 = time.perf_counter()
    counts = (len(ckpt.tensors), len([f for f in ckpt.files if f.role == "model"]), len(view.mapped))
    del ckpt, tree, view

    big = [asyncio.run(time_app(folder)) for _ in range(opts.runs)]
    small = [asyncio.run(time_app(tiny)) for _ in range(opts.runs)]
    browsed = [asyncio.run(time_from_browser(folder)) for _ in range(opts.runs)]
    cold = subprocess.run([sys.executable, __file__, "--cold-child", str(folder)], capture_output=True, text=True, check=True)
    cold_seconds = float(cold.stdout.strip().splitlines()[-1])

    shown = [b[0] for b in big]
    print(f"checkpoint: {counts[0]:,} tensors in {counts[1]} shards, {counts[2]:,} mapped to canonical names ({folder})")
    print(f"steps alone:  detect (headers) {t1 - t0:6.3f} s · module tree, first level {t2 - t1:6.3f} s · "
          f"canonical view {t3 - t2:6.3f} s (after the first paint, in a second worker)")
    print(f"app, 100k-tensor MoE, first paint     {_stats(shown)}   ({opts.runs} runs)")
    print(f"app, 100k-tensor MoE, pilot sees it   {_stats([b[1] for b in big])}")
    print(f"app, tiny demo HF (baseline)          {_stats([s[0] for s in small])}")
    print(f"open from the browser (Enter), 100k   {_stats(browsed)}")
    print(f"cold process incl. imports, 100k MoE  {cold_seconds:6.3f} s")
    verdict = "met" if statistics.median(shown) < TARGET else "MISSED"
    print(f"target: first paint < {TARGET:.0f} s (median of warm runs): {verdict}; "
          f"cost over app start-up: {statistics.median(shown) - statistics.median([s[0] for s in small]):.3f} s")


if __name__ == "__main__":
    main()
