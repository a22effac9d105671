"""AWS Neuron NxD / NxD Training checkpoints: `<tag>/model/dp_rank_00_[ep_rank_EE_]tp_rank_TT_pp_rank_PP.pt`.

Model shards are ordinary torch files, either with tensors inline ("plain") or in torch_xla's
xser layout, where every tensor is a `TensorReference(tid)` and its bytes live in
`<file>.pt.tensors/tensor_<tid>.pt`. NxD also writes `<file>.pt.info.pt` with each tid's dtype
and shape, which lets us list an xser shard without opening a single tensor file.

A checkpoint dir holds one folder per saved step ("tag"); a tag is finished when it holds a
`done` marker (`checkpoint` is written first, so `checkpoint` without `done` is a torn save).
Old NxD (SDK 2.16) kept a `newest` file listing tags instead. Layer numbers are already global.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dtypes import DTYPES, DType
from ..probing import Probe
from ..errors import CheckpointError
from ..files import read_side_text
from ..model import (
    Checkpoint,
    ObjectInfo,
    ParallelLayout,
    Ranks,
    ShardFile,
    TensorInfo,
    dtype_name,
    relpath,
)
from ..safe_pickle import Placeholder, XserTensorRef, short_repr
from ..torchfile import LazyTensor, flatten, open_torch_file
from ..storage import as_path

KIND = "nxd"
SHARD_RE = re.compile(
    r"^dp_rank_(?P<dp>\d{2,})(?:_ep_rank_(?P<ep>\d{2,}))?_tp_rank_(?P<tp>\d{2,})_pp_rank_(?P<pp>\d{2,})\.pt$", re.ASCII
)
EP_IN_NAME_RE = re.compile(r"ep_rank_\d{2,}")
STEP_RE = re.compile(r"step=(\d+)", re.ASCII)
SAMPLES_RE = re.compile(r"consumed_samples=(\d+(?:\.\d*)?)")
MODEL_DIR = "model"
OPTIM_DIR = "optim"
DONE = "done"
STARTED = "checkpoint"
NEWEST = "newest"
TENSORS_SUFFIX = ".tensors"

# Files of a tag folder other than model shards, by name -> role.
TAG_FILE_ROLES: dict[str, str] = {
    DONE: "marker",
    STARTED: "marker",
    "scheduler.pt": "other",
    "user_content.pt": "other",
}


# ----- names only (probe) ---------------------------------------------------------------------
def shard_names(folder: Path) -> list[str]:
    """Model shard file names in `folder`, sorted (names only, no reads)."""
    try:
        return sorted(p.name for p in folder.iterdir() if SHARD_RE.match(p.name) and p.is_file())
    except OSError:
        return []


def is_tag(folder: Path) -> bool:
    return (folder / MODEL_DIR).is_dir() and bool(shard_names(folder / MODEL_DIR))


def _tag_time(tag: Path) -> float:
    """Completed tags sort by the mtime of `done` (as NxD does); others by the folder's mtime."""
    done = tag / DONE
    return done.stat().st_mtime if done.exists() else tag.stat().st_mtime


def list_tags(root: Path) -> list[Path]:
    """Tag folders of a checkpoint dir, oldest first."""
    try:
        tags = [child for child in root.iterdir() if child.is_dir() and is_tag(child)]
    except OSError:
        return []
    return sorted(tags, key=lambda t: (_tag_time(t), t.name))


def tag_complete(tag: Path) -> bool:
    """A tag is torn when saving began (`checkpoint`) but never finished (`done`)."""
    return (tag / DONE).exists() or not (tag / STARTED).exists()


def _newest_from_file(root: Path) -> Path | None:
    """Old NxD layout: `newest` lists tag names one per line, last = newest."""
    newest = root / NEWEST
    if not newest.is_file():
        return None
    lines = [line.strip() for line in read_side_text(newest, "tracker", "`newest` file").splitlines() if line.strip()]
    if not lines:
        raise CheckpointError(newest, "is empty; expected tag names one per line")
    folder = root / lines[-1]
    if not folder.is_dir():
        raise CheckpointError(newest, f"names tag {lines[-1]!r}, which does not exist")
    return folder


def pick_latest(root: Path, tags: list[Path]) -> tuple[Path, list[str]]:
    """The tag NxD would resume from, plus problems worth telling the user."""
    done = [t for t in tags if (t / DONE).exists()]
    if done:
        return done[-1], []
    from_file = _newest_from_file(root)
    if from_file is not None:
        return from_file, []
    return tags[-1], [f"no tag holds a `{DONE}` marker; using the newest folder {tags[-1].name}"]


def _model_dir_of(path: Path) -> Path | None:
    if path.is_file():
        return path.parent
    if shard_names(path) and path.name != OPTIM_DIR:
        return path
    if is_tag(path):
        return path / MODEL_DIR
    return None


def _tag_of(model_dir: Path) -> Path | None:
    return model_dir.parent if model_dir.name == MODEL_DIR else None


def layout_from_names(names: Iterable[str]) -> ParallelLayout:
    """Parallel degrees = number of distinct ranks per axis in the shard names."""
    seen: dict[str, set[int]] = {"tp": set(), "pp": set(), "ep": set()}
    for name in names:
        m = SHARD_RE.match(name)
        if m:
            for axis in seen:
                if m.group(axis) is not None:
                    seen[axis].add(int(m.group(axis)))
    return ParallelLayout(**{axis: max(1, len(ranks)) for axis, ranks in seen.items()})


# ----- reader ---------------------------------------------------------------------------------
class NxdReader:
    """Probe and open NxD checkpoint dirs, tags, model folders and single shard files."""

    kind = KIND

    def probe(self, path: Path) -> Probe | None:
        path = as_path(path)
        if path.is_file():
            return self._probe_file(path)
        if not path.is_dir() or path.name == OPTIM_DIR:
            return None
        if shard_names(path):
            return self._probe_tagless(path)
        if is_tag(path):
            return self._probe_tag(path, root=None, iterations=[path.name])
        tags = list_tags(path)
        if not tags:
            return None
        latest, problems = pick_latest(path, tags)
        probe = self._probe_tag(latest, root=path, iterations=[t.name for t in tags])
        probe.problems.extend(problems)
        return probe

    def _probe_file(self, path: Path) -> Probe | None:
        if not SHARD_RE.match(path.name) or path.parent.name == OPTIM_DIR:
            return None
        tag = _tag_of(path.parent)
        return Probe(
            kind=KIND,
            path=path,
            iteration=tag.name if tag else None,
            complete=tag_complete(tag) if tag else True,
            layout=layout_from_names(shard_names(path.parent)).label(),
            detail="single shard",
        )

    def _probe_tagless(self, model_dir: Path) -> Probe:
        tag = _tag_of(model_dir)
        if tag is not None and is_tag(tag):
            return self._probe_tag(tag, root=None, iterations=[tag.name], path=model_dir)
        return Probe(kind=KIND, path=model_dir, layout=layout_from_names(shard_names(model_dir)).label())

    def _probe_tag(self, tag: Path, *, root: Path | None, iterations: list[Any], path: Path | None = None) -> Probe:
        return Probe(
            kind=KIND,
            path=path or tag,
            root=root,
            iteration=tag.name,
            iterations=iterations,
            complete=tag_complete(tag),
            layout=layout_from_names(shard_names(tag / MODEL_DIR)).label(),
        )

    def open(self, probe: Probe) -> Checkpoint:
        path = as_path(probe.path)
        model_dir = _model_dir_of(path)
        if model_dir is None:
            raise CheckpointError(path, "not an NxD checkpoint: no dp_rank_*_tp_rank_*_pp_rank_*.pt files")
        all_names = shard_names(model_dir)
        shard_paths = [path] if path.is_file() else [model_dir / name for name in all_names]
        tag = _tag_of(model_dir)
        base = tag or model_dir
        ckpt = Checkpoint(
            kind=KIND,
            path=path,
            root=probe.root,
            iteration=tag.name if tag else probe.iteration,
            iterations=list(probe.iterations),
            parallel=layout_from_names(all_names),
        )
        state = _IndexState()
        for shard in shard_paths:
            _index_shard(ckpt, shard, base, state)
        if tag is not None and not path.is_file():
            _add_tag_files(ckpt, tag, base)
        _check_complete(ckpt, tag)
        ckpt.placeholders = sorted(state.placeholders)
        ckpt.metadata["nxd"] = _metadata(ckpt, tag, state)
        ckpt.format_detail = ("xser" if state.xser else "plain") + f", {ckpt.metadata['nxd']['style']} names"
        return ckpt


READER = NxdReader()


# ----- indexing -------------------------------------------------------------------------------
@dataclass
class _IndexState:
    xser: bool = False
    info_files: int = 0
    placeholders: set[str] = field(default_factory=set)


@dataclass
class XserTensorSource:
    """Bytes of one xser tensor: `<file>.pt.tensors/tensor_<tid>.pt` holding a single tensor."""

    path: Path

    def load(self) -> Any:
        return _single_tensor(self.path).load()


def _single_tensor(path: Path) -> LazyTensor:
    tensor = open_torch_file(path).obj
    if not isinstance(tensor, LazyTensor):
        raise CheckpointError(path, f"xser tensor file holds {type(tensor).__name__}, not a tensor")
    return tensor


def shard_ranks(name: str) -> Ranks:
    m = SHARD_RE.match(name)
    if m is None:
        return Ranks()
    ep = m.group("ep")
    return Ranks(tp=int(m.group("tp")), pp=int(m.group("pp")), ep=int(ep) if ep is not None else None)


def unwrap_model(obj: Any) -> Any:
    """Partial NxD states may be wrapped as {"model": {...}} (the converter's --model_key)."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    return obj


def info_file(shard: Path) -> Path | None:
    """NxD writes `<file>.pt.info.pt`; NNM migration scripts write `<stem>.info.pt`."""
    for candidate in (shard.with_name(shard.name + ".info.pt"), shard.with_suffix(".info.pt")):
        if candidate.is_file():
            return candidate
    return None


def read_info(path: Path, seen: set[str] | None = None) -> dict[int, dict[str, Any]]:
    """{tid: {"dtype", "shape", "expert_model_parallel"}} from an xser info file (placeholders into `seen`)."""
    info_file = open_torch_file(path)
    if seen is not None:
        seen |= info_file.placeholders
    raw = info_file.obj
    if not isinstance(raw, dict):
        raise CheckpointError(path, f"xser info file holds {type(raw).__name__}, expected a dict by tensor id")
    return {int(tid): meta for tid, meta in raw.items()
            if isinstance(meta, dict) and (isinstance(tid, int) or (isinstance(tid, str) and tid.isascii() and tid.isdigit()))}


def _info_entry(shard: Path, name: str, meta: dict[str, Any]) -> tuple[tuple[int, ...], str]:
    """Shape and dtype name of one info-file entry, refused in one line unless they are what
    torch_xla writes (a list of non-negative ints, a torch dtype or its name)."""
    info = info_file(shard) or shard
    raw_shape, raw_dtype = meta["shape"], meta["dtype"]
    if not isinstance(raw_shape, (list, tuple)) or len(raw_shape) > 64 or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 48 for s in raw_shape
    ):
        raise CheckpointError(info, f"xser info for {name!r} has shape {short_repr(raw_shape, 1)[:60]}, not a list of sizes")
    dtype = dtype_name(raw_dtype) if isinstance(raw_dtype, DType) else raw_dtype.removeprefix("torch.") if isinstance(raw_dtype, str) else None
    if dtype is None or dtype not in DTYPES:
        raise CheckpointError(info, f"xser info for {name!r} has dtype {short_repr(raw_dtype, 1)[:60]}, not a torch dtype")
    return tuple(raw_shape), dtype


def tensors_dir(shard: Path) -> Path:
    return shard.with_name(shard.name + TENSORS_SUFFIX)


def _tensor_file(shard: Path, tid: int, expert: bool | None) -> Path:
    """Non-expert tensors of ep ranks > 0 live in the ep_rank_00 file's folder (NxD's xser load)."""
    own = tensors_dir(shard) / f"tensor_{tid}.pt"
    if not EP_IN_NAME_RE.search(shard.name) or expert:
        return own
    shared = tensors_dir(shard.with_name(EP_IN_NAME_RE.sub("ep_rank_00", shard.name, count=1))) / f"tensor_{tid}.pt"
    if expert is False:
        return shared
    return own if own.exists() else shared


def _index_shard(ckpt: Checkpoint, shard: Path, base: Path, state: _IndexState) -> None:
    rel = relpath(shard, base)
    ranks = shard_ranks(shard.name)
    torch_file = open_torch_file(shard)
    state.placeholders |= {p for p in torch_file.placeholders if p != "torch_xla.utils.serialization.TensorReference"}
    ckpt.files.append(ShardFile(shard, rel, shard.stat().st_size, ranks, "model"))
    info_path = info_file(shard)
    info = read_info(info_path, state.placeholders) if info_path else {}
    if info_path:
        state.info_files += 1
        ckpt.files.append(ShardFile(info_path, relpath(info_path, base), info_path.stat().st_size, ranks, "metadata"))
    for name, value in flatten(unwrap_model(torch_file.obj)):
        if isinstance(value, LazyTensor):
            ckpt.tensors.append(TensorInfo(name, value.shape, dtype_name(value.dtype), rel, ranks, source=value))
        elif isinstance(value, XserTensorRef):
            state.xser = True
            _add_xser_tensor(ckpt, shard, name, value, info, rel, ranks)
        elif isinstance(value, Placeholder):
            ckpt.objects.append(ObjectInfo(name, "placeholder", rel, ranks, value.describe()))
    _add_tensor_files(ckpt, shard, base, ranks)


def _add_xser_tensor(
    ckpt: Checkpoint, shard: Path, name: str, ref: XserTensorRef, info: dict[int, dict[str, Any]], rel: str, ranks: Ranks
) -> None:
    tid = getattr(ref, "tid", None)
    if not isinstance(tid, int):
        raise CheckpointError(shard, f"xser reference for {name!r} has no integer tensor id")
    meta = info.get(tid)
    expert = bool(meta["expert_model_parallel"]) if meta and "expert_model_parallel" in meta else None
    tensor_path = _tensor_file(shard, tid, expert)
    if meta and "shape" in meta and "dtype" in meta:
        shape, dtype = _info_entry(shard, name, meta)
    elif tensor_path.is_file():
        header = _single_tensor(tensor_path)  # reads the tensor file's pickle, not its bytes
        shape, dtype = header.shape, dtype_name(header.dtype)
    else:
        ckpt.complete = False
        ckpt.warnings.append(f"{rel}: tensor file for {name!r} is missing ({relpath(tensor_path, shard.parent)})")
        ckpt.objects.append(ObjectInfo(name, "missing xser tensor", rel, ranks, f"tid {tid}"))
        return
    ckpt.tensors.append(TensorInfo(name, shape, dtype, rel, ranks, source=XserTensorSource(tensor_path)))


def _add_tensor_files(ckpt: Checkpoint, shard: Path, base: Path, ranks: Ranks) -> None:
    folder = tensors_dir(shard)
    if not folder.is_dir():
        return
    for child in sorted(folder.iterdir()):
        if child.is_file():
            ckpt.files.append(ShardFile(child, relpath(child, base), child.stat().st_size, ranks, "tensors"))


def _add_tag_files(ckpt: Checkpoint, tag: Path, base: Path) -> None:
    """Markers, scheduler/user state and optimizer shards (listed with sizes, never parsed)."""
    for name, role in TAG_FILE_ROLES.items():
        path = tag / name
        if path.is_file():
            ckpt.files.append(ShardFile(path, relpath(path, base), path.stat().st_size, role=role))
    optim = tag / OPTIM_DIR
    if optim.is_dir():
        for child in sorted(optim.rglob("*")):
            if child.is_file():
                size = child.stat().st_size
                ckpt.files.append(ShardFile(child, relpath(child, base), size, _optim_ranks(child.name), "optimizer"))


def _optim_ranks(name: str) -> Ranks:
    m = SHARD_RE.match(name)
    if m is None:
        return Ranks()
    ranks = shard_ranks(name)
    return Ranks(tp=ranks.tp, pp=ranks.pp, ep=ranks.ep, dp=int(m.group("dp")))


def _check_complete(ckpt: Checkpoint, tag: Path | None) -> None:
    if tag is not None and not tag_complete(tag):
        ckpt.complete = False
        ckpt.warnings.append(
            f"tag {tag.name} has a `{STARTED}` marker but no `{DONE}`: the save did not finish, shards may be missing"
        )


def guess_style(names: Iterable[str]) -> str:
    """NxDT `--model_style megatron` prefixes everything with `language_model.`."""
    return "megatron" if any(name.startswith("language_model.") for name in names) else "hf"


def parse_tag(name: str) -> dict[str, Any]:
    """NxDT tags look like `hf_llama3_8B--step=5-consumed_samples=160.0.ckpt`."""
    out: dict[str, Any] = {}
    if m := STEP_RE.search(name):
        out["step"] = int(m.group(1))
    if m := SAMPLES_RE.search(name):
        out["consumed_samples"] = float(m.group(1).rstrip("."))
    return out


def _metadata(ckpt: Checkpoint, tag: Path | None, state: _IndexState) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "tag": tag.name if tag else None,
        "style": guess_style(t.name for t in ckpt.tensors),
        "xser": state.xser,
        "info_files": state.info_files,
        "optimizer_files": sum(1 for f in ckpt.files if f.role == "optimizer"),
    }
    if tag is not None:
        meta.update(parse_tag(tag.name))
    return meta
