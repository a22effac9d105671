"""Meta's original Llama checkpoints: `consolidated.NN.pth` (one per model-parallel rank) and
`params.json`. Rank NN is the tensor-parallel rank; the architecture lives in `params.json`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..probing import Probe
from ..errors import CheckpointError, reading
from ..files import read_side_text
from ..model import (
    Checkpoint,
    ParallelLayout,
    Ranks,
    ShardFile,
    TensorInfo,
    dtype_name,
    relpath,
)
from ..torchfile import LazyTensor, flatten, open_torch_file
from .hf import LazySource

SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$", re.ASCII)
SIDE_FILES = {"params.json": "config", "tokenizer.model": "tokenizer", "checklist.chk": "other"}


def _shards(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := SHARD_RE.match(p.name))]
    return sorted(found)


class MetaReader:
    kind = "meta"

    def probe(self, path: Path) -> Probe | None:
        folder = path.parent if path.is_file() else path
        if not folder.is_dir() or not (folder / "params.json").is_file():
            return None
        if path.is_file() and not SHARD_RE.match(path.name):
            return None
        shards = _shards(folder)
        if not shards:
            return None
        return Probe(self.kind, folder, layout=f"MP{len(shards)}", detail=f"{len(shards)} consolidated shard(s)")

    def open(self, probe: Probe) -> Checkpoint:
        folder = probe.path
        shards = _shards(folder)
        numbers = [n for n, _ in shards]
        if numbers != list(range(len(shards))):
            raise CheckpointError(folder, f"consolidated shards are not numbered 0..{len(shards) - 1}: {numbers}")
        ckpt = Checkpoint(kind=self.kind, path=folder, parallel=ParallelLayout(tp=len(shards)))
        text = read_side_text(folder / "params.json", "json", "params.json")
        with reading(folder / "params.json", "cannot read params.json"):
            params = json.loads(text)
        if not isinstance(params, dict):
            raise CheckpointError(folder / "params.json", "params.json is not a JSON object")
        ckpt.metadata["params"] = params
        for rank, file in shards:
            rel = relpath(file, folder)
            ranks = Ranks(tp=rank)
            ckpt.files.append(ShardFile(file, rel, file.stat().st_size, ranks, role="model"))
            tf = open_torch_file(file)
            ckpt.placeholders.extend(tf.placeholders)
            for name, value in flatten(tf.obj):
                if isinstance(value, LazyTensor):
                    ckpt.tensors.append(TensorInfo(name, value.shape, dtype_name(value.dtype), rel, ranks, source=LazySource(value)))
        for name, role in SIDE_FILES.items():
            if (folder / name).is_file():
                ckpt.files.append(ShardFile(folder / name, name, (folder / name).stat().st_size, role=role))
        if (folder / "tokenizer.model").is_file():
            ckpt.metadata["tokenizer_files"] = ["tokenizer.model"]
        ckpt.format_detail = f"Meta consolidated, {len(shards)} model-parallel shard{'s' if len(shards) != 1 else ''}"
        return ckpt


READER = MetaReader()
