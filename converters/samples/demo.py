"""The demo workspace: one small checkpoint of every supported format, generated locally.

Written into a temporary sibling folder and renamed into place, so an interrupted run never
leaves a half-written demo that looks complete.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .spec import SampleSpec

DEMO_SPEC = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=160, vocab=1000, seed=7)
DEMO_MOE_SPEC = SampleSpec(layers=2, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=1000, experts=4, seed=7)


def _items() -> dict[str, Callable[[Path], object]]:
    from .deepspeed import write_deepspeed_pipeline
    from .hf import write_hf
    from .megatron_dist import write_megatron_dist
    from .megatron_torch import write_megatron_torch
    from .nxd import write_nxd

    return {
        "hf-llama": lambda p: write_hf(DEMO_SPEC, p, shards=2),
        "hf-mixtral": lambda p: write_hf(DEMO_MOE_SPEC, p, shards=2),
        "megatron-torch-tp2pp2": lambda p: write_megatron_torch(DEMO_SPEC, p, tp=2, pp=2, iterations=(100, 200), te=True),
        "megatron-dist": lambda p: write_megatron_dist(DEMO_SPEC, p, tp=2, pp=1),
        "megatron-moe-ep2": lambda p: write_megatron_torch(DEMO_MOE_SPEC, p, tp=1, pp=1, ep=2),
        "nxd-tp2pp2": lambda p: write_nxd(DEMO_SPEC, p, tp=2, pp=2),
        "deepspeed-pipe": lambda p: write_deepspeed_pipeline(DEMO_SPEC, p, tp=2, pp=2),
    }


def write_demo(target: str | Path, *, force: bool = False) -> dict[str, Path]:
    """Write every demo item under `target`; returns item name -> path."""
    target = Path(target).expanduser().resolve()
    if target.exists() and any(target.iterdir()) and not force:
        raise FileExistsError(f"{target} is not empty (use --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name, write in _items().items():
            write(tmp / name)
        (tmp / "README.txt").write_text(
            "ckptscope demo workspace: synthetic Llama/Mixtral-shaped checkpoints with random weights.\n"
            "Try: ckptscope inspect <folder>   (add --json, --filter 'decoder.layers.0.*', --stats)\n"
        )
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: target / name for name in _items()}
