"""DeepSpeed and Megatron-DeepSpeed checkpoints: `<root>/latest` -> `global_stepN/` of rank files.

A tag folder holds `mp_rank_XX_model_states.pt` (engine state; `module` is the model's
state_dict, or None for pipeline engines whose weights are in `layer_LL-model_TT-model_states.pt`),
ZeRO-3 `zero_pp_rank_D_mp_rank_XX_model_states.pt` (module params are empty placeholders),
MoE expert files, and optimizer shards (`[bf16_]zero_pp_rank_D_mp_rank_XX_optim_states.pt`,
`expp_rank_E_...`). We index model tensors lazily and list optimizer shards with their sizes.

`mp_rank` is the rank inside one data-parallel replica: `pp * tp_size + tp` for Megatron's
pipe/data/model topology, so TP comes from the layer files (one per `model_TT`) or the args.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..probing import Probe
from ..errors import CheckpointError
from ..files import read_side_text
from ..megatron_common import TRACKER, args_to_dict, parallel_size, plain_value
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
from ..safe_pickle import Placeholder
from ..torchfile import LazyTensor, flatten, open_torch_file
from ..storage import as_path

KIND = "deepspeed"
LATEST = "latest"
STEP_RE = re.compile(r"^global_step(\d+)$", re.ASCII)

# File name -> role in the tag folder. Groups: mp (model-parallel rank), dp, tp, layer, ep.
FILE_PATTERNS: dict[str, re.Pattern[str]] = {
    "model_states": re.compile(r"^mp_rank_(?P<mp>\d+)_model_states\.pt$"),
    "zero3_model_states": re.compile(r"^zero_pp_rank_(?P<dp>\d+)_mp_rank_(?P<mp>\d+)_model_states\.pt$"),
    # PipelineModule.ckpt_layer_path: `-model_TT` only when the topology has a model-parallel axis
    "layer": re.compile(r"^layer_(?P<layer>\d+)(?:-model_(?P<tp>\d+))?-model_states\.pt$"),
    "expert": re.compile(r"^layer_(?P<layer>\d+)_expert_(?P<ep>\d+)_mp_rank_(?P<mp>\d+)_model_states\.pt$"),
    "optim": re.compile(r"^(?:bf16_)?zero_pp_rank_(?P<dp>\d+)_mp_rank_(?P<mp>\d+)_?optim_states\.pt$"),
    "expert_optim": re.compile(r"^expp_rank_(?P<ep>\d+)_mp_rank_(?P<mp>\d+)_?optim_states\.pt$"),
}
MODEL_ROLES = ("model_states", "zero3_model_states", "layer", "expert")
REBUILD_HINT = "weights must be rebuilt from the optimizer partitions (--from-optimizer-fp32)"

# Scalar engine/client-state keys copied into metadata as they are.
SCALAR_KEYS = (
    "ds_version", "checkpoint_version", "iteration", "global_steps", "global_samples", "skipped_steps",
    "dp_world_size", "mp_world_size", "tokens",
)


def classify(name: str) -> tuple[str, dict[str, int]] | None:
    """(role, numeric groups) of a DeepSpeed file name, or None."""
    for role, pattern in FILE_PATTERNS.items():
        m = pattern.match(name)
        if m:
            return role, {k: int(v) for k, v in m.groupdict().items() if v is not None}
    return None


def ds_files(folder: Path) -> list[tuple[Path, str, dict[str, int]]]:
    """DeepSpeed rank files of a tag folder, by name only."""
    found = []
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    for child in children:
        kind = classify(child.name)
        if kind is not None and child.is_file():
            found.append((child, *kind))
    return found


def _has_model_files(folder: Path) -> bool:
    return any(role in MODEL_ROLES for _, role, _ in ds_files(folder))


def iteration_of(folder: Path) -> int | str:
    m = STEP_RE.match(folder.name)
    return int(m.group(1)) if m else folder.name


def list_steps(root: Path) -> list[Path]:
    """`global_stepN` folders, oldest first."""
    steps = [c for c in root.iterdir() if c.is_dir() and STEP_RE.match(c.name)]
    return sorted(steps, key=lambda c: int(STEP_RE.match(c.name).group(1)))  # type: ignore[union-attr]


def resolve_root(root: Path) -> tuple[Path, list[str]] | None:
    """The tag folder a root points at (`latest`, else the newest global_step), or None."""
    latest = root / LATEST
    steps = list_steps(root)
    if latest.is_file():
        tag = read_side_text(latest, "tracker", "`latest` file").strip()
        folder = root / tag if tag else None
        if folder is not None and folder.is_dir():
            problems = []
            if steps and folder != steps[-1] and STEP_RE.match(folder.name):
                problems.append(f"`latest` names {tag}, but a newer folder exists: {steps[-1].name}")
            return folder, problems
        if steps or tag.startswith("global_step"):
            present = ", ".join(s.name for s in steps[-4:])
            raise CheckpointError(
                latest, f"names tag {tag!r}, which does not exist" + (f" (present: {present})" if present else "")
            )
        return None
    if steps:
        return steps[-1], [f"no `{LATEST}` file; using the newest folder {steps[-1].name}"]
    return None


# ----- reader ---------------------------------------------------------------------------------
class DeepSpeedReader:
    """Probe and open DeepSpeed roots, tag folders and single model-states files."""

    kind = KIND

    def probe(self, path: Path) -> Probe | None:
        path = as_path(path)
        if path.is_file():
            kind = classify(path.name)
            if kind is None or kind[0] not in MODEL_ROLES:
                return None
            return Probe(kind=KIND, path=path, iteration=iteration_of(path.parent), detail="single file")
        if not path.is_dir():
            return None
        if _has_model_files(path):
            return Probe(kind=KIND, path=path, iteration=iteration_of(path), iterations=[iteration_of(path)])
        resolved = resolve_root(path)
        if resolved is None:
            return None
        folder, problems = resolved
        if not _has_model_files(folder):
            return None
        iterations = [iteration_of(s) for s in list_steps(path)]
        iteration = iteration_of(folder)
        probe = Probe(kind=KIND, path=folder, root=path, iteration=iteration, iterations=iterations or [iteration])
        if (path / TRACKER).is_file():
            probe.detail = "Megatron-DeepSpeed"
        probe.problems.extend(problems)
        return probe

    def open(self, probe: Probe) -> Checkpoint:
        path = as_path(probe.path)
        folder = path.parent if path.is_file() else path
        files = ds_files(folder)
        if not any(role in MODEL_ROLES for _, role, _ in files):
            raise CheckpointError(path, "not a DeepSpeed checkpoint: no *_model_states.pt files")
        ckpt = Checkpoint(kind=KIND, path=path, root=probe.root, iteration=probe.iteration, iterations=list(probe.iterations))
        index = _Index(folder, files, only=path if path.is_file() else None)
        index.run(ckpt)
        return ckpt


READER = DeepSpeedReader()


# ----- indexing -------------------------------------------------------------------------------
@dataclass
class _Index:
    """One pass over a tag folder: rank-0 metadata first (it tells TP), then every file."""

    folder: Path
    files: list[tuple[Path, str, dict[str, int]]]
    only: Path | None = None
    placeholders: set[str] = field(default_factory=set)
    tp_size: int | None = None
    module_none: bool = False
    zero3_placeholders: bool = False

    def run(self, ckpt: Checkpoint) -> None:
        meta = self._rank0_metadata()
        self.tp_size = self._tp_size(meta)
        handlers: dict[str, Callable[[Checkpoint, Path, dict[str, int]], None]] = {
            "model_states": self._model_states,
            "zero3_model_states": self._zero3_model_states,
            "layer": self._layer,
            "expert": self._expert,
            "optim": self._optimizer,
            "expert_optim": self._optimizer,
        }
        for path, role, groups in self.files:
            if self.only is not None and path != self.only:
                continue
            handlers[role](ckpt, path, groups)
        ckpt.parallel = self._layout(meta)
        ckpt.metadata.update(meta)
        ckpt.placeholders = sorted(self.placeholders)
        self._warn(ckpt)
        ckpt.format_detail = self._detail(meta)

    # --- metadata ---
    def _rank0_file(self) -> Path | None:
        for role in ("model_states", "zero3_model_states"):
            for path, r, groups in self.files:
                if r == role and groups.get("mp", 0) == 0 and groups.get("dp", 0) == 0:
                    return path
        return None

    def _rank0_metadata(self) -> dict[str, Any]:
        path = self._rank0_file()
        if path is None:
            return {}
        state = open_torch_file(path).obj
        if not isinstance(state, dict):
            raise CheckpointError(path, f"model states hold {type(state).__name__}, expected a dict")
        return engine_metadata(state)

    def _tp_size(self, meta: dict[str, Any]) -> int | None:
        layer_tps = {g.get("tp", 0) for _, role, g in self.files if role == "layer"}
        if layer_tps:
            return len(layer_tps)
        dims = meta.get("checkpoint_parallel_dimensions") or {}
        args = meta.get("args") or {}
        value = dims.get("tp_degree") if isinstance(dims, dict) else None
        value = value or (args.get("tensor_model_parallel_size") if isinstance(args, dict) else None)
        if not value:
            return None
        ranks = max(len(self.files), 1)  # every TP rank writes its own model-states file
        return parallel_size({"tp_degree": value}, ("tp_degree",), ranks, self._rank0_file() or Path("."),
                             f"the folder has {len(self.files)} DeepSpeed files", where="checkpoint_parallel_dimensions")

    def _mp_ranks(self, mp: int, **extra: int) -> Ranks:
        if self.tp_size:
            return Ranks(tp=mp % self.tp_size, pp=mp // self.tp_size, **extra)
        return Ranks(tp=mp, **extra)

    def _layout(self, meta: dict[str, Any]) -> ParallelLayout:
        mp_ranks = {g["mp"] for _, role, g in self.files if "mp" in g and role != "expert"}
        tp = self.tp_size or 1
        pp = max(1, len(mp_ranks) // tp)
        zero_dp = {g["dp"] for _, role, g in self.files if role in ("optim", "zero3_model_states")}
        dp = int(meta.get("dp_world_size") or 0) or max(1, len(zero_dp))
        ep = len({g["ep"] for _, role, g in self.files if role in ("expert", "expert_optim")}) or 1
        return ParallelLayout(tp=tp, pp=pp, ep=ep, dp=dp)

    # --- files ---
    def _shard(self, ckpt: Checkpoint, path: Path, ranks: Ranks, role: str) -> str:
        rel = relpath(path, self.folder)
        ckpt.files.append(ShardFile(path, rel, path.stat().st_size, ranks, role))
        return rel

    def _open(self, path: Path) -> Any:
        torch_file = open_torch_file(path)
        self.placeholders |= torch_file.placeholders
        return torch_file.obj

    def _add_tensors(self, ckpt: Checkpoint, items: Iterable[tuple[str, Any]], rel: str, ranks: Ranks, prefix: str = "") -> None:
        """Tensors under their stored names; `prefix` gives the model-wide name (a pipeline layer
        file's index, `3.` for `layer_03-...`) as `global_name`."""
        for name, value in items:
            if isinstance(value, LazyTensor):
                ckpt.tensors.append(TensorInfo(name, value.shape, dtype_name(value.dtype), rel, ranks, global_name=prefix + name,
                                               source=value))
            elif isinstance(value, Placeholder):
                ckpt.objects.append(ObjectInfo(prefix + name, "placeholder", rel, ranks, value.describe()))

    def _model_states(self, ckpt: Checkpoint, path: Path, groups: dict[str, int]) -> None:
        ranks = self._mp_ranks(groups["mp"])
        rel = self._shard(ckpt, path, ranks, "model")
        state = self._open(path)
        if not isinstance(state, dict):
            raise CheckpointError(path, f"model states hold {type(state).__name__}, expected a dict")
        module = state.get("module")
        if module is None:
            self.module_none = True
            return
        self._add_tensors(ckpt, flatten(module), rel, ranks)

    def _zero3_model_states(self, ckpt: Checkpoint, path: Path, groups: dict[str, int]) -> None:
        """ZeRO-3 modules hold empty stand-ins; real shapes come from `param_shapes`."""
        ranks = self._mp_ranks(groups["mp"], dp=groups["dp"])
        rel = self._shard(ckpt, path, ranks, "model")
        state = self._open(path)
        if groups["dp"] != 0 or not isinstance(state, dict):
            return
        shapes = param_shape_map(state.get("param_shapes"))
        for name, value in flatten(state.get("module") or {}):
            if isinstance(value, LazyTensor) and value.numel == 0 and name in shapes:
                self.zero3_placeholders = True
                ckpt.placeholders.append(name)
                ckpt.objects.append(ObjectInfo(name, "zero3 partitioned param", rel, ranks, f"shape {list(shapes[name])}"))
            else:
                self._add_tensors(ckpt, [(name, value)], rel, ranks)

    def _layer(self, ckpt: Checkpoint, path: Path, groups: dict[str, int]) -> None:
        ranks = Ranks(tp=groups.get("tp", 0))
        rel = self._shard(ckpt, path, ranks, "model")
        self._add_tensors(ckpt, flatten(self._open(path)), rel, ranks, prefix=f"{groups['layer']}.")

    def _expert(self, ckpt: Checkpoint, path: Path, groups: dict[str, int]) -> None:
        ranks = self._mp_ranks(groups["mp"], ep=groups["ep"])
        rel = self._shard(ckpt, path, ranks, "model")
        self._add_tensors(ckpt, flatten(self._open(path)), rel, ranks)

    def _optimizer(self, ckpt: Checkpoint, path: Path, groups: dict[str, int]) -> None:
        extra = {axis: groups[axis] for axis in ("dp", "ep") if axis in groups}
        self._shard(ckpt, path, self._mp_ranks(groups["mp"], **extra), "optimizer")

    # --- summary ---
    def _warn(self, ckpt: Checkpoint) -> None:
        has_layers = any(role == "layer" for _, role, _ in self.files)
        if self.module_none and not has_layers and not ckpt.model_tensors():
            ckpt.warnings.append(f"model-states files hold no module weights (module=None); {REBUILD_HINT}")
        if self.zero3_placeholders:
            ckpt.warnings.append(f"ZeRO-3 checkpoint: module params are partitioned placeholders; {REBUILD_HINT}")

    def _detail(self, meta: dict[str, Any]) -> str:
        roles = {role for _, role, _ in self.files}
        parts = ["pipeline layer files" if "layer" in roles else "module in model states"]
        if meta.get("zero_stage"):
            parts.append(f"ZeRO-{meta['zero_stage']}")
        if any(p.name.startswith("bf16_") for p, _, _ in self.files):
            parts.append("bf16 optimizer")
        return ", ".join(parts)


def param_shape_map(param_shapes: Any) -> dict[str, tuple[int, ...]]:
    """`param_shapes` is a list (one per param group) of {name: torch.Size}; flatten in order."""
    groups = param_shapes if isinstance(param_shapes, (list, tuple)) else [param_shapes]
    out: dict[str, tuple[int, ...]] = {}
    for group in groups:
        if isinstance(group, dict):
            for name, shape in group.items():
                if isinstance(shape, (tuple, list)):
                    out[str(name)] = tuple(int(s) for s in shape)
    return out


def _param_shapes_summary(param_shapes: Any) -> dict[str, Any] | None:
    shapes = param_shape_map(param_shapes)
    if not shapes:
        return None
    groups = len(param_shapes) if isinstance(param_shapes, (list, tuple)) else 1
    numel = sum(_prod(s) for s in shapes.values())
    return {"groups": groups, "params": len(shapes), "numel": numel}


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _zero_stage(ds_config: Any) -> int | None:
    if isinstance(ds_config, dict):
        zero = ds_config.get("zero_optimization")
        if isinstance(zero, dict) and zero.get("stage") is not None:
            try:
                return int(zero["stage"])
            except (TypeError, ValueError):
                return None
    return None


def engine_metadata(state: dict[str, Any]) -> dict[str, Any]:
    """What the rank-0 model-states file says about the run (engine + Megatron client state)."""
    meta: dict[str, Any] = {key: plain_value(state[key]) for key in SCALAR_KEYS if key in state}
    if state.get("args") is not None:
        meta["args"] = args_to_dict(state["args"])
    if "ds_config" in state:
        meta["ds_config"] = plain_value(state["ds_config"])
    if isinstance(state.get("checkpoint_parallel_dimensions"), dict):
        meta["checkpoint_parallel_dimensions"] = plain_value(state["checkpoint_parallel_dimensions"])
    summary = _param_shapes_summary(state.get("param_shapes"))
    if summary:
        meta["param_shapes"] = summary
    stage = _zero_stage(state.get("ds_config"))
    if stage is not None:
        meta["zero_stage"] = stage
    meta["module_is_none"] = state.get("module") is None
    meta["optimizer_in_model_states"] = state.get("optimizer") is not None
    return meta
