"""How fast the app shows a 100k-tensor MoE checkpoint (issue: "first screen in under a second").

    python bench/tui_open_bench.py [--workdir DIR] [--experts 128] [--layers 260]

Generates a Mixtral-shaped HF checkpoint with tiny dimensions but >100,000 tensors (layers ×
(3 × experts + 7)), then measures, in one run:
- `detect()` alone (headers only), the module tree, the canonical view (every name mapped);
- the app: from `App.run_test()` start until the inspect screen has mounted its tensor tree.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.spec import SampleSpec


def generate(folder: Path, experts: int, layers: int) -> Path:
    spec = SampleSpec(layers=layers, hidden=8, heads=2, kv_heads=1, ffn=8, vocab=32, experts=experts, topk=2)
    if not (folder / "config.json").exists():
        write_hf(spec, folder, shards=8)
    return folder


async def time_app(path: Path) -> float:
    from ckptscope.app.tui.app import CkptscopeApp
    from ckptscope.app.tui.inspect import InspectScreen, TensorTree

    start = time.perf_counter()
    app = CkptscopeApp(path)
    async with app.run_test(size=(140, 40)) as pilot:
        while not (isinstance(app.screen, InspectScreen) and app.screen.query(TensorTree)):
            await pilot.pause(0.005)
        await pilot.pause(0)  # one refresh
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--layers", type=int, default=260)
    opts = parser.parse_args()
    os.environ.setdefault("CKPTSCOPE_CONFIG_DIR", tempfile.mkdtemp())
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="ckptscope-tui-bench-"))
    folder = generate(work / f"moe_{opts.layers}x{opts.experts}", opts.experts, opts.layers)

    from ckptscope.converters.canonical_view import canonical_view
    from ckptscope.inspectors import detect
    from ckptscope.inspectors.tree import build_tree

    t0 = time.perf_counter()
    ckpt = detect(folder)
    t1 = time.perf_counter()
    tree = build_tree(ckpt.tensors)
    t2 = time.perf_counter()
    view = canonical_view(ckpt)
    t3 = time.perf_counter()
    app_seconds = asyncio.run(time_app(folder))
    print(f"checkpoint: {len(ckpt.tensors):,} tensors in {len([f for f in ckpt.files if f.role == 'model'])} shards ({folder})")
    print(f"detect (headers)       {t1 - t0:6.3f} s")
    print(f"module tree            {t2 - t1:6.3f} s   ({tree.tensors:,} leaves)")
    print(f"canonical view         {t3 - t2:6.3f} s   ({len(view.mapped):,} names mapped)")
    print(f"app: first inspect screen {app_seconds:6.3f} s   (target < 1 s: {'met' if app_seconds < 1 else 'MISSED'})")


if __name__ == "__main__":
    main()
