"""Synthetic checkpoints for the bench: one spec written in several layouts, generated once.

Weights are the samples' deterministic random bf16 tensors; each canonical tensor is generated
once per spec and reused by every layout writer (`CachedSpec`), which makes generation mostly
disk time. A folder with a `.bench-complete` stamp matching the spec is reused by later runs
(`--workdir`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ckptscope.converters.samples.deepspeed import write_deepspeed_zero
from ckptscope.converters.samples.hf import hf_config, write_hf
from ckptscope.converters.samples.megatron_dist import write_megatron_dist
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.nxd import write_nxd
from ckptscope.converters.samples.spec import SampleSpec

STAMP = ".bench-complete"
_CACHE: dict[tuple[str, tuple[int, ...] | None], torch.Tensor] = {}


@dataclass(frozen=True)
class CachedSpec(SampleSpec):
    """SampleSpec whose tensors are generated once (random generation dominates otherwise)."""

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        key = (name, tuple(shape) if shape is not None else None)
        if key not in _CACHE:
            _CACHE[key] = SampleSpec.tensor(self, name, shape)
        return _CACHE[key]


def bf16(**kw: int) -> CachedSpec:
    return CachedSpec(dtype=torch.bfloat16, **kw)  # type: ignore[arg-type]


LAYOUTS: dict[str, Callable[[SampleSpec, Path], Path]] = {
    "hf": lambda s, d: write_hf(s, d, shards=4),
    "megatron-torch": lambda s, d: write_megatron_torch(s, d, tp=2, pp=2, iterations=(1000,)),
    "torch_dist": lambda s, d: write_megatron_dist(s, d, tp=2, pp=2, iteration=1000),
    "nxd": lambda s, d: write_nxd(s, d, tp=2, pp=2, tag="step_1000"),
    "megatron-torch-ep": lambda s, d: write_megatron_torch(s, d, tp=2, ep=2, iterations=(1000,)),
    "zero": lambda s, d: _zero(s, d),
}


def _zero(spec: SampleSpec, folder: Path) -> Path:
    """A ZeRO-2 bf16 root (dp 2) and the HF config.json it needs (ZeRO saves carry none)."""
    write_deepspeed_zero(spec, folder, dp=2, stage=2, bf16=True)
    (folder / "config.json").write_text(json.dumps(hf_config(spec), indent=2, sort_keys=True) + "\n")
    return folder


def generate(spec: CachedSpec, folder: Path, layouts: list[str]) -> dict[str, Path]:
    """Write the layouts that are not there yet; return layout -> checkpoint path."""
    out: dict[str, Path] = {}
    for layout in layouts:
        target = folder / layout
        stamp = target / STAMP
        if not (stamp.is_file() and stamp.read_text() == repr(spec)):
            shutil.rmtree(target, ignore_errors=True)
            LAYOUTS[layout](spec, target)
            stamp.write_text(repr(spec))
        out[layout] = target / "step_1000" if layout == "nxd" else target
    _CACHE.clear()
    return out


def data_bytes(path: Path) -> int:
    """Bytes a `cp -r` of the checkpoint copies."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
