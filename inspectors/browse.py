"""Labels for a directory browser: which folders are checkpoints, roots or iterations.

Probing uses file names only (`detect.probe`), so a folder tree can be labelled without
unpickling anything; sizes are summed from `stat`.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .detect import label_text, probe
from .errors import CheckpointError
from .megatron_common import legacy_rank_folders
from .storage import RemotePath, as_path
from .formats.megatron_torch import MODEL_FILES, RANK_DIR_RE
from .probing import Probe

HF_SHARD_RE = re.compile(r"^(model|pytorch_model)-(\d{5})-of-(\d{5})\.(safetensors|bin)$", re.ASCII)
MAX_MISSING_LISTED = 50


@dataclass(frozen=True)
class FolderLabel:
    kind: str  # checkpoint kind, or "" when not a checkpoint
    role: str  # root | iteration | file | ""
    iteration: int | str | None
    layout: str
    complete: bool
    size: int
    problem: str = ""
    missing: tuple[str, ...] = ()  # files the names on disk say should be there (`model-00002-of-00003...`)

    def text(self) -> str:
        if self.problem:
            return f"⚠ {self.problem}"
        if not self.kind:
            return ""
        return label_text(self.kind, self.iteration, self.layout, self.complete)


def folder_size(path: Path, limit: int = 20000) -> int:
    """Bytes under `path` (stops counting after `limit` entries so huge trees stay cheap)."""
    if path.is_file():
        return path.stat().st_size
    if isinstance(path, RemotePath):  # one listing per folder, cached by the storage layer
        return sum(p.stat().st_size for _, p in zip(range(limit), (q for q in path.rglob("*") if q.is_file())))
    total, seen = 0, 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
            seen += 1
            if seen >= limit:
                return total
    return total


def _hf_missing(folder: Path) -> list[str]:
    """`model-0000k-of-0000n.safetensors` shards absent from a series (names only)."""
    series: dict[tuple[str, int, str], set[int]] = {}
    for name in os.listdir(folder):
        m = HF_SHARD_RE.match(name)
        if m:
            series.setdefault((m.group(1), int(m.group(3)), m.group(4)), set()).add(int(m.group(2)))
    return [f"{prefix}-{k:05d}-of-{total:05d}.{ext}" for (prefix, total, ext), present in series.items()
            for k in range(1, min(total, 100_000) + 1) if k not in present][:MAX_MISSING_LISTED]


def _megatron_missing(folder: Path) -> list[str]:
    """Rank folders absent from the TP × PP × EP grid their names span, and rank folders without
    their model file (names only: a whole missing TP column needs the args, which `detect` reads)."""
    present: dict[tuple[int | None, ...], Path] = {}
    for entry in os.scandir(folder):
        m = RANK_DIR_RE.match(entry.name)
        if m and entry.is_dir():
            present[tuple(int(g) if g is not None else None for g in m.groups())] = Path(entry.path)
    if not present:
        return []
    axes = [sorted({k[i] for k in present}, key=lambda v: -1 if v is None else v) for i in range(3)]
    spans = [[None] if a == [None] else list(range(max(v for v in a if v is not None) + 1)) for a in axes]
    if _expert_tp_folders(set(present), [len(s) for s in spans]):
        # the names are megatron-core's folders for experts on their own TP: only model files can be missing
        return [f"{_folder_name(k)}/{MODEL_FILES[0]}" for k in present if not any((present[k] / f).is_file() for f in MODEL_FILES)]
    out = []
    for key in itertools.product(*spans):
        name = _folder_name(key)
        where = present.get(key)
        if where is None or not any((where / f).is_file() for f in MODEL_FILES):
            out.append(f"{name}/{MODEL_FILES[0]}")
    return out[:MAX_MISSING_LISTED]


def _folder_name(key: tuple[int | None, ...]) -> str:
    return f"mp_rank_{key[0]:02d}" + "".join(f"_{v:03d}" for v in key[1:] if v is not None)


def _expert_tp_folders(present: set[tuple[int | None, ...]], sizes: list[int]) -> bool:
    """Are the rank folders exactly the ones megatron-core writes for experts on a TP of their own
    (`legacy_rank_folders` with some expert TP below the TP the names span)? The suffix of
    two-part names is then the expert rank (PP 1); of three-part names, stage and expert rank."""
    tp, second, third = sizes
    if second < 2 or tp < 2:
        return False
    pp, ep = (second, third) if third > 1 else (1, second)
    as_names = (lambda t, p, e: (t, p, e)) if third > 1 else (lambda t, p, e: (t, e, None))
    for etp in range(1, tp):
        if tp % etp == 0 and {as_names(*r) for r in legacy_rank_folders(tp, pp, ep, etp)} == present:
            return True
    return False


# Checkpoint kind -> names-only check of the files its layout implies (browse labels them INCOMPLETE)
MISSING_FILES: dict[str, Callable[[Path], list[str]]] = {"hf": _hf_missing, "megatron-torch": _megatron_missing}


def missing_files(found: Probe) -> list[str]:
    """Files a probed checkpoint's own names say are missing (relative to what it opens)."""
    check = MISSING_FILES.get(found.kind)
    if check is None or isinstance(found.path, RemotePath) or not found.path.is_dir():
        return []
    try:
        return check(found.path)
    except OSError:
        return []


def label_path(path: str | Path) -> FolderLabel:
    """Recognise a folder or file from names only; never raises."""
    path = as_path(path)
    try:
        found = probe(path)
    except CheckpointError as exc:
        return FolderLabel("", "", None, "", False, 0, exc.problem)
    except OSError:
        return FolderLabel("", "", None, "", True, 0)
    if found is None:
        return FolderLabel("", "", None, "", True, 0)
    role = "root" if found.root is not None else "file" if path.is_file() else "iteration"
    missing = tuple(missing_files(found))
    return FolderLabel(found.kind, role, found.iteration, found.layout, found.complete and not missing, folder_size(path),
                       missing=missing)
