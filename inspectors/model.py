"""The index a reader builds: files, rank coordinates, tensors as stored, metadata.

Readers fill these dataclasses from headers and pickles only. Tensor bytes are read later,
one tensor at a time, through each `TensorInfo.source`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .dtypes import DType, dtype as _dtype

if TYPE_CHECKING:
    import torch

KINDS = ("hf", "megatron-torch", "megatron-dist", "nxd", "deepspeed")

RANK_AXES = ("tp", "pp", "ep", "vpp", "dp")


@dataclass(frozen=True, order=True)
class Ranks:
    """Rank coordinates of a shard; None means the axis does not apply to it."""

    tp: int | None = None
    pp: int | None = None
    ep: int | None = None
    vpp: int | None = None
    dp: int | None = None

    def as_dict(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in RANK_AXES if getattr(self, axis) is not None}

    def matches(self, want: Ranks | Mapping[str, int] | None) -> bool:
        """True when every axis given in `want` equals ours (axes we lack count as rank 0)."""
        if want is None:
            return True
        items = want.as_dict().items() if isinstance(want, Ranks) else want.items()
        return all((getattr(self, axis) or 0) == value for axis, value in items)

    def label(self) -> str:
        return " ".join(f"{k}{v}" for k, v in self.as_dict().items()) or "-"


NO_RANKS = Ranks()


@dataclass(frozen=True)
class ParallelLayout:
    """Parallel degrees as found on disk (or in the saved args where the disk cannot tell)."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    vpp: int = 1
    dp: int = 1
    etp: int | None = None  # experts' own TP (megatron-core `expert_tensor_parallel_size`); None: the same as tp

    def as_dict(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in RANK_AXES}

    def label(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}"]
        if self.ep > 1:
            parts.append(f"EP{self.ep}")
        if self.etp is not None and self.etp != self.tp:
            parts.append(f"ETP{self.etp}")
        if self.vpp > 1:
            parts.append(f"VPP{self.vpp}")
        if self.dp > 1:
            parts.append(f"DP{self.dp}")
        return "×".join(parts)


@dataclass(frozen=True)
class ShardFile:
    """One file of the checkpoint, with what it holds and which ranks wrote it."""

    path: Path
    rel: str
    size: int
    ranks: Ranks = NO_RANKS
    role: str = "model"  # model | optimizer | index | config | metadata | common | tokenizer | tensors | marker | other


@dataclass(frozen=True)
class Chunk:
    """A piece of a globally-shaped tensor (torch_dist): offsets and sizes in the global shape."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str


class TensorSource(Protocol):
    """Knows how to materialise exactly one stored tensor."""

    def load(self) -> torch.Tensor: ...


def dtype_name(dtype: DType | torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype called `name` (imports torch: for code that makes tensors)."""
    return _dtype(name).torch


_ITEMSIZE: dict[str, float] = {}


def itemsize(dtype: str) -> float:
    """Bytes per element (fractional for sub-byte dtypes); cached, as 100k-tensor indexes ask often."""
    size = _ITEMSIZE.get(dtype)
    if size is None:
        size = _ITEMSIZE[dtype] = _dtype(dtype).itemsize
    return size


@dataclass(slots=True)
class TensorInfo:
    """A tensor exactly as stored: its name in the file, shape, dtype and where it lives.

    `global_name` renumbers pipeline-local layers and EP-local experts to their global index
    (Megatron) so the same logical tensor can be grouped across rank files; it equals `name`
    for formats that store global names.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str
    ranks: Ranks = NO_RANKS
    global_name: str = ""
    group: str = "model"  # model | optimizer | other
    chunks: tuple[Chunk, ...] = ()
    stacked: tuple[str, ...] = ()  # leading axes that stack layers / experts (torch_dist)
    source: TensorSource | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.global_name:
            self.global_name = self.name

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return int(self.numel * itemsize(self.dtype))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "global_name": self.global_name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "nbytes": self.nbytes,
            "file": self.file,
            "ranks": self.ranks.as_dict(),
            "group": self.group,
        }
        if self.chunks:
            out["chunks"] = [
                {"offsets": list(c.offsets), "sizes": list(c.sizes), "file": c.file} for c in self.chunks
            ]
        if self.stacked:
            out["stacked"] = list(self.stacked)
        return out


@dataclass
class ObjectInfo:
    """A stored non-tensor entry worth showing: TE `_extra_state`, placeholders, byte blobs."""

    name: str
    kind: str
    file: str
    ranks: Ranks = NO_RANKS
    detail: str = ""


@dataclass
class Checkpoint:
    """What `detect()` returns: a lazily indexed checkpoint of one known kind."""

    kind: str
    path: Path
    root: Path | None = None
    iteration: int | str | None = None
    iterations: list[int | str] = field(default_factory=list)
    parallel: ParallelLayout = field(default_factory=ParallelLayout)
    files: list[ShardFile] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    objects: list[ObjectInfo] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    complete: bool = True
    format_detail: str = ""  # e.g. "safetensors, 4 shards" or "xser"

    # ----- lookups -------------------------------------------------------------------------
    def model_tensors(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.group == "model"]

    def find(self, name: str, ranks: Ranks | Mapping[str, int] | None = None) -> list[TensorInfo]:
        """Stored tensors called `name` (stored or global name) on the given ranks."""
        return [
            t for t in self.tensors if (t.name == name or t.global_name == name) and t.ranks.matches(ranks)
        ]

    def tensor(self, name: str, ranks: Ranks | Mapping[str, int] | None = None) -> TensorInfo:
        found = self.find(name, ranks)
        if not found:
            raise KeyError(f"no tensor {name!r}" + (f" on ranks {dict(ranks) if isinstance(ranks, Mapping) else ranks}" if ranks else ""))
        if len(found) > 1:
            where = ", ".join(t.ranks.label() for t in found[:8])
            raise KeyError(f"{name!r} is stored on several ranks ({where}); pass ranks=")
        return found[0]

    def load(self, name: str | TensorInfo, ranks: Ranks | Mapping[str, int] | None = None) -> torch.Tensor:
        """Materialise one stored tensor (reads only its bytes)."""
        info = name if isinstance(name, TensorInfo) else self.tensor(name, ranks)
        if info.source is None:
            raise KeyError(f"{info.name!r} has no data on disk (placeholder only)")
        return info.source.load()

    # ----- summaries -----------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def param_count(self) -> int:
        """Parameters of the model tensors, counting each logical tensor once per shard slice."""
        return sum(t.numel for t in self.model_tensors())

    def bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.model_tensors():
            out[t.dtype] = out.get(t.dtype, 0) + t.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def to_json(self) -> dict[str, Any]:
        from .jsonable import jsonable

        return {
            "format": self.kind,
            "format_detail": self.format_detail,
            "path": str(self.path),
            "root": str(self.root) if self.root else None,
            "iteration": self.iteration,
            "iterations": list(self.iterations),
            "complete": self.complete,
            "parallel": {**self.parallel.as_dict(), **({"etp": self.parallel.etp} if self.parallel.etp is not None else {})},
            "files": [
                {"path": f.rel, "size": f.size, "ranks": f.ranks.as_dict(), "role": f.role} for f in self.files
            ],
            "tensors": [t.to_json() for t in self.tensors],
            "objects": [
                {"name": o.name, "kind": o.kind, "file": o.file, "ranks": o.ranks.as_dict(), "detail": o.detail}
                for o in self.objects
            ],
            "training_state": training_state(self),
            "totals": {
                "parameters": logical_param_count(self),
                "buffer_elements": logical_param_count(self, buffers=True),
                "stored_elements": self.param_count(),
                "tensor_bytes": sum(t.nbytes for t in self.model_tensors()),
                "file_bytes": self.total_bytes,
                "bytes_by_dtype": self.bytes_by_dtype(),
            },
            "metadata": jsonable(self.metadata),
            "placeholders": sorted(set(self.placeholders)),
            "warnings": list(self.warnings),
        }


def relpath(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def unique(items: Iterable[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


# Tensors every tensor-parallel rank stores whole (reference §4.2): norms, routers, row-parallel
# biases, position embeddings. Everything else is split, so its shards add up.
REPLICATED_RE = re.compile(
    r"(norm|layernorm|layer_norm_(weight|bias)|router|expert_bias|position_embeddings|"
    r"(linear_proj|linear_fc2|dense|dense_4h_to_h|o_proj|down_proj)\.bias)"
)


# Split tensors that Megatron-style TP cuts along their input dimension (row-parallel: the
# attention output and MLP down projections); every other split tensor is cut along dim 0.
ROW_PARALLEL_RE = re.compile(r"(linear_proj|linear_fc2|\.dense|dense_4h_to_h|o_proj|down_proj|out_proj|\bwo|\bw2|tok_embeddings)\.weight$"
                             r"|\.mlp\.experts\.weight1$")  # GroupedMLP's fc1 blocks, stored transposed: [hidden, E * ffn / TP]


def global_shape(shards: list[TensorInfo]) -> tuple[int, ...]:
    """The logical tensor's shape from its stored pieces: a torch_dist tensor is stored with its
    global shape; TP slices add up along dim 0 (column-parallel) or 1 (row-parallel); replicated
    tensors and EP / DP copies of one slice count once (as `logical_param_count`)."""
    first = shards[0]
    slices = {t.ranks.tp or 0: t for t in shards}
    if first.chunks or len(slices) < 2 or not first.shape or replicated(first):
        return first.shape
    dim = 1 if len(first.shape) > 1 and ROW_PARALLEL_RE.search(first.global_name) else 0
    if any(t.shape[:dim] + t.shape[dim + 1:] != first.shape[:dim] + first.shape[dim + 1:] for t in slices.values()):
        return first.shape  # slices that do not line up: no global shape to claim
    return first.shape[:dim] + (sum(t.shape[dim] for t in slices.values()),) + first.shape[dim + 1:]


# A pipeline layer that is itself a norm (Megatron-DeepSpeed's final LayerNorm is `{N}.weight` / `{N}.bias`)
BARE_LAYER_RE = re.compile(r"^\d+\.(weight|bias)$")
# Experts stacked under one name on every EP rank (NxD's `expert_mlps`, megatron-core's legacy
# GroupedMLP `mlp.experts.weight1` / `weight2`): each rank holds other experts
STACKED_EXPERTS_RE = re.compile(r"\.expert_mlps\.|\.mlp\.experts\.weight[12]$")


def replicated(t: TensorInfo) -> bool:
    """Is every TP rank's copy of this tensor the whole tensor (norms, routers, row-parallel biases)?"""
    return bool(REPLICATED_RE.search(t.global_name)) or (len(t.shape) == 1 and bool(BARE_LAYER_RE.match(t.global_name)))


# Stored tensors that are buffers, not parameters (the model's `parameters()` does not hold them):
# rotary tables, xIELU's constants, DeepSeek-V3's router correction bias, Megatron's and torchtitan's
# expert bias and torchtitan's routing counters (`_E`: its shape-suffixed spellings).
BUFFER_RE = re.compile(r"(inv_freq|\.act_fn\.(beta|eps)|e_score_correction_bias|expert_bias(_E)?|tokens_per_expert(_E)?|"
                       r"_extra_state)$")


def logical_param_count(ckpt: Checkpoint, *, buffers: bool = False) -> int:
    """Parameters of the model (or, with `buffers`, the elements of its stored buffers): one TP
    slice of each tensor per rank, EP / DP replicas of a slice once (NxD's stacked experts once per
    EP rank: each rank stacks other experts), replicated tensors once."""
    by_name: dict[str, dict[tuple[int, int], TensorInfo]] = {}
    for t in ckpt.model_tensors():
        if bool(BUFFER_RE.search(t.global_name)) == buffers:
            ep = t.ranks.ep or 0 if STACKED_EXPERTS_RE.search(t.global_name) else 0  # other EP ranks hold replicas
            by_name.setdefault(t.global_name, {}).setdefault((t.ranks.tp or 0, ep), t)
    total = 0
    for slices in by_name.values():
        if len({tp for tp, _ in slices}) > 1 and replicated(next(iter(slices.values()))):
            total += _params_in(next(iter(slices.values())), by_name)
        else:
            total += sum(_params_in(t, by_name) for t in slices.values())
    return total


def _params_in(t: TensorInfo, names: dict[str, Any]) -> int:
    """Parameters one stored tensor holds: MXFP4 pairs (`W_blocks` packs two FP4 values a byte,
    `W_scales` holds only their shared exponents, as gpt-oss stores experts) count as `W`; an FP8
    weight's block scales (`W_scale_inv` beside `W`, DeepSeek-V3) are not parameters."""
    weight = names.get(t.global_name[:-len("_scale_inv")]) if t.global_name.endswith(".weight_scale_inv") else None
    if weight and next(iter(weight.values())).dtype.startswith("float8"):
        return 0
    if t.dtype == "uint8" and t.global_name.endswith(("_blocks", "_scales")):
        stem = t.global_name[:-len("_blocks")]
        if stem + "_blocks" in names and stem + "_scales" in names:
            return t.numel * 2 if t.global_name.endswith("_blocks") else 0
    return t.numel


# ----- what else a training checkpoint holds -----------------------------------------------------------
ADAM_RE = re.compile(r"(^|\.)(exp_avg|exp_avg_sq)($|\.)")
MASTER_RE = re.compile(r"(fp32_param|fp32_from_fp16|master)")
SCHEDULER_KEYS = ("opt_param_scheduler", "lr_scheduler", "scheduler")
RNG_KEYS = ("rng_state", "rng_tracker_states", "random_rng_state", "cuda_rng_state")
# a plain DCP trainer's decoded scalars (inspectors/formats/megatron_dist.py): label for each
TRAINER_STATE_LABELS = {"train_state.ntokens_seen": "tokens seen", "dataloader": "dataloader"}


def training_state(ckpt: Checkpoint) -> dict[str, str]:
    """What a user checks before deleting or resuming: optimizer state (kind, fp32 master weights,
    distributed-optimizer or ZeRO files, sizes), scheduler and RNG state, iteration and samples."""
    out: dict[str, str] = {}
    meta, args = ckpt.metadata, ckpt.metadata.get("args") or {}
    step = ckpt.iteration if ckpt.iteration is not None else meta.get("iteration", meta.get("global_steps"))
    if step is not None:
        out["iteration"] = str(step)
    samples = args.get("consumed_train_samples") if isinstance(args, dict) else None
    samples = samples if samples is not None else meta.get("global_samples")
    if samples is not None:
        out["consumed samples"] = str(samples)
    keys = {str(k) for k in meta.get("top_level_keys") or ()} | {o.kind for o in ckpt.objects} | {o.name.split(".")[0] for o in ckpt.objects}
    opt_files = [f for f in ckpt.files if f.role == "optimizer" or "distrib_optim" in f.rel.rsplit("/", 1)[-1]]
    opt_tensors = [t for t in ckpt.tensors if t.group == "optimizer"]
    parts = []
    if opt_tensors:
        names = [t.name for t in opt_tensors]
        kind = "Adam moments" if any(ADAM_RE.search(n) for n in names) else "state"
        master = ", fp32 master weights" if any(MASTER_RE.search(n) for n in names) else ""
        parts.append(f"{len(opt_tensors)} tensors ({kind}{master}), {sum(t.nbytes for t in opt_tensors):,} bytes")
    if opt_files:
        zero = meta.get("zero_stage")
        what = f"ZeRO-{zero} partitions" if zero else "distributed-optimizer files" if any("distrib_optim" in f.rel for f in opt_files) else "files"
        bf16 = " (bf16 run: fp32 master weights inside)" if any(f.rel.rsplit("/", 1)[-1].startswith("bf16_") for f in opt_files) else ""
        parts.append(f"{len(opt_files)} {what}{bf16}, {sum(f.size for f in opt_files):,} bytes")
    if not parts and "optimizer" in keys:
        parts.append("in the rank files (not listed as tensors)")
    if parts or meta.get("optimizer_in_model_states"):
        out["optimizer"] = "; ".join(parts) or "in the model states"
    trainer = meta.get("trainer_state") or {}
    for key, label in TRAINER_STATE_LABELS.items():
        if key in trainer:
            out[label] = f"{trainer[key]:,}" if isinstance(trainer[key], int) else str(trainer[key])
    if keys & set(SCHEDULER_KEYS):
        epoch = trainer.get("lr_scheduler.last_epoch")
        out["scheduler"] = "present" + (f" (last_epoch {epoch})" if epoch is not None else "")
    if keys & set(RNG_KEYS) or any(t.name.startswith(RNG_KEYS) for t in ckpt.tensors):
        out["rng state"] = "present"
    return out
