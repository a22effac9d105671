"""DeepSpeed universal checkpoints: what `deepspeed.checkpoint.ds_to_universal` writes.

A universal tag folder holds `zero/<param name>/` per model parameter, each with `fp32.pt` (a
dict: `param`, the full fp32 master weight with every TP / ZeRO partition merged, `cat_dim`, and
for Megatron-DeepSpeed `vocab_tensor` and friends), the Adam moments `exp_avg.pt` /
`exp_avg_sq.pt`, and `step.pt`; the engine's `mp_rank_XX_model_states.pt` files are copied
beside `zero/`. The model tensors are the `param` entries, under the parameter's own name (the
HF module's names for an HF model trained with DeepSpeed). A root may name its universal tag in
`latest_universal`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..files import read_side_text
from ..model import Checkpoint, ParallelLayout, ShardFile, TensorInfo, dtype_name, relpath
from ..probing import Probe
from ..storage import as_path
from ..torchfile import LazyTensor, open_torch_file
from .deepspeed import FILE_PATTERNS, engine_metadata

KIND = "deepspeed-universal"
ZERO = "zero"
WEIGHT = "fp32.pt"
OPTIMIZER_STATES = ("exp_avg.pt", "exp_avg_sq.pt", "step.pt")
LATEST = "latest_universal"
TAG_RE = re.compile(r"^global_step(\d+)(?:_universal)?$", re.ASCII)


def _param_folders(tag: Path) -> list[Path]:
    """`zero/<name>/` folders holding `fp32.pt`, by name; symlinks are never followed."""
    zero = tag / ZERO
    if zero.is_symlink() or not zero.is_dir():
        return []
    try:
        children = sorted(zero.iterdir())
    except OSError:
        return []
    return [c for c in children if not c.is_symlink() and c.is_dir() and (c / WEIGHT).is_file() and not (c / WEIGHT).is_symlink()]


def _tag_of(path: Path) -> tuple[Path, list[Path]] | None:
    """The universal tag folder of a path (itself, or the one a root's `latest_universal` names)
    and its parameter folders."""
    if folders := _param_folders(path):
        return path, folders
    latest = path / LATEST
    if latest.is_file() and not latest.is_symlink():
        name = read_side_text(latest, "tracker", "latest_universal").strip()
        if name and "/" not in name and name not in (".", ".."):
            tag = path / name
            if not tag.is_symlink() and (folders := _param_folders(tag)):
                return tag, folders
    return None


def iteration_of(tag: Path) -> int | str:
    m = TAG_RE.match(tag.name)
    return int(m.group(1)) if m else tag.name


class UniversalReader:
    kind = KIND

    def probe(self, path: Path) -> Probe | None:
        path = as_path(path)
        if not path.is_dir():
            return None
        found = _tag_of(path)
        if found is None:
            return None
        tag, folders = found
        return Probe(kind=KIND, path=tag, root=path if tag != path else None, iteration=iteration_of(tag),
                     detail=f"{len(folders)} parameters (zero/<name>/fp32.pt)")

    def open(self, probe: Probe) -> Checkpoint:
        tag = as_path(probe.path)
        folders = _param_folders(tag)
        if not folders:
            raise CheckpointError(tag, "not a DeepSpeed universal checkpoint: no zero/<param>/fp32.pt")
        ckpt = Checkpoint(kind=KIND, path=tag, root=probe.root, iteration=probe.iteration,
                          iterations=[probe.iteration] if probe.iteration is not None else [])
        for folder in folders:
            self._parameter(ckpt, tag, folder)
        for child in sorted(tag.iterdir()):
            if FILE_PATTERNS["model_states"].match(child.name) and child.is_file() and not child.is_symlink():
                ckpt.files.append(ShardFile(child, relpath(child, tag), child.stat().st_size, role="metadata"))
        states = [f for f in ckpt.files if f.role == "metadata"]
        if states:
            state = open_torch_file(states[0].path).obj
            if isinstance(state, dict):
                ckpt.metadata.update(engine_metadata(state))
        ckpt.metadata["universal"] = True
        ckpt.parallel = ParallelLayout()  # universal weights are whole: any layout loads them
        ckpt.format_detail = "DeepSpeed universal checkpoint: fp32 master weights merged over TP / ZeRO"
        ckpt.complete = True
        return ckpt

    def _parameter(self, ckpt: Checkpoint, tag: Path, folder: Path) -> None:
        weight = folder / WEIGHT
        rel = relpath(weight, tag)
        ckpt.files.append(ShardFile(weight, rel, weight.stat().st_size, role="model"))
        state = open_torch_file(weight).obj
        param: Any = state.get("param") if isinstance(state, dict) else state
        if not isinstance(param, LazyTensor):
            raise CheckpointError(weight, f"holds {type(param).__name__}, expected a dict with a `param` tensor")
        ckpt.tensors.append(TensorInfo(folder.name, param.shape, dtype_name(param.dtype), rel, source=param))
        for name in OPTIMIZER_STATES:
            extra = folder / name
            if extra.is_file() and not extra.is_symlink():
                ckpt.files.append(ShardFile(extra, relpath(extra, tag), extra.stat().st_size, role="optimizer"))


READER = UniversalReader()
