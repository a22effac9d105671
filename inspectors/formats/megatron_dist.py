"""Megatron-Core `torch_dist` checkpoints: `iter_XXXXXXX/{metadata.json, .metadata, *.distcp, common.pt}`.

The tensors are torch.distributed.checkpoint (DCP) entries with GLOBAL shapes: every TP/PP/EP
shard was written as a chunk of the full tensor, so the listing does not depend on the
parallel layout the run used. Decoder layers are stacked on a leading axis (keys without
`.layers.<i>.`) and experts on a second one (`.experts.experts.`). Reading goes through
`inspectors.dcp.DcpReader` (allowlist unpickling of `.metadata`, chunk-wise tensor reads).
`metadata.json` is written last by Megatron, so a folder without it is an interrupted save.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any


from ..dcp import METADATA_FILE, DcpBytes, DcpReader, DcpTensor
from ..probing import Probe
from ..errors import CheckpointError, reading
from ..files import read_side_text
from ..megatron_common import (
    MAX_DATA_PARALLEL,
    MAX_MODEL_PARALLEL,
    MAX_VIRTUAL_STAGES,
    TRACKER,
    args_to_dict,
    iteration_of_folder,
    list_iterations,
    parallel_size,
    resolve_root,
)
from ..model import (
    Checkpoint,
    Chunk,
    ObjectInfo,
    ParallelLayout,
    ShardFile,
    TensorInfo,
    TensorSource,
    dtype_name,
)
from ..torchfile import open_torch_file
from ..storage import as_path

if TYPE_CHECKING:
    import torch

MARKER_FILE = "metadata.json"
COMMON_FILE = "common.pt"
COMMON_STATE_KEY = "common_state/shard_0_1"
DISTCP_RE = re.compile(r"^(?:.*?)__(\d+)_(\d+)\.distcp$", re.ASCII)
LAYER_NUMBER_RE = re.compile(r"(?:^|\.)layers\.\d+\.")
STACKED_LAYERS_RE = re.compile(r"(?:^|\.)layers\.(?!\d+\.)")
OPTIMIZER_RE = re.compile(r"^(?:chained_\d+\.)?optimizer\.")
OTHER_PREFIXES = ("rng_state", "rerun_state_machine", "common_state")
# what a plain DCP trainer (torchtitan, Accelerate FSDP) saves beside the model and optimizer:
# small scalars shown as the checkpoint's training state; the dataloader's per-rank iterator
# state is listed, not decoded
TRAINER_STATE_PREFIXES = ("train_state.", "lr_scheduler.", "dataloader.")
TRAINER_SCALAR_PREFIXES = ("train_state.", "lr_scheduler.")
TRAINER_SCALAR_MAX_BYTES = 64 * 1024
TRAINER_STEP_KEYS = ("train_state.step",)


@dataclass(frozen=True)
class DistTensorSource:
    """Reads one torch_dist key through the DCP reader: whole, or one stacked index at a time."""

    reader: DcpReader
    key: str

    def load(self) -> torch.Tensor:
        return self.reader.read_tensor(self.key)

    def load_index(self, *index: int) -> torch.Tensor:
        """Layer `i` (`load_index(i)`) or layer `i` expert `e` (`load_index(i, e)`) of a stacked key."""
        return self.reader.read_index(self.key, index)


def load_stacked_slice(info: TensorInfo, *index: int) -> torch.Tensor:
    """Read one slice of a layer/expert-stacked torch_dist tensor, touching only its chunks.

    `load_stacked_slice(ckpt.tensor("decoder.layers.mlp.linear_fc1.weight"), 3)` is layer 3;
    `(…experts.experts.linear_fc1.weight, 3, 1)` is layer 3, expert 1. Converters use this to
    stream a large checkpoint one layer at a time.
    """
    source = info.source
    if not isinstance(source, DistTensorSource):
        raise TypeError(f"{info.name!r} is not a torch_dist tensor")
    if len(index) > len(info.stacked):
        raise CheckpointError(source.reader.metadata_path, f"{info.name!r} stacks {list(info.stacked) or 'nothing'}; index {list(index)} is too long")
    return source.load_index(*index)


def stacked_axes(key: str) -> tuple[str, ...]:
    """Leading axes a key stacks: ("layers",), ("layers", "experts"), ("experts",) or ()."""
    layers = bool(STACKED_LAYERS_RE.search(key)) and not LAYER_NUMBER_RE.search(key)
    experts = ".experts.experts." in key
    return (("layers",) if layers else ()) + (("experts",) if experts else ())


def tensor_group(key: str) -> str:
    if OPTIMIZER_RE.match(key):
        return "optimizer"
    if key.startswith(OTHER_PREFIXES):
        return "other"
    return "model"


def object_kind(key: str) -> str:
    if "_extra_state" in key:
        return "extra_state"
    if OPTIMIZER_RE.match(key):
        return "optimizer"
    for prefix in OTHER_PREFIXES + TRAINER_STATE_PREFIXES:
        if key.startswith(prefix):
            return prefix.rstrip(".")
    return "bytes"


# NeMo 2 saves `<ckpt>/weights/` (torch_dist; keys under `module.`, MegatronParallel's prefix) and
# `<ckpt>/context/` (`model.yaml`: the model's TransformerConfig under `config:`, tokenizer, io.json).
NEMO_WEIGHTS, NEMO_CONTEXT = "weights", "context"
PLAIN_DCP_KIND = "dcp"
MEGATRON_KEY_RE = re.compile(r"^(?:decoder\.|embedding\.|output_layer\.|language_model\.|common_state|rerun_state_machine)")


def is_plain_dcp(keys: list[str], folder: Path) -> bool:
    """A DCP folder saved by a plain torch trainer: no Megatron marker, common state or key."""
    return not (folder / COMMON_FILE).is_file() and not any(MEGATRON_KEY_RE.match(k) for k in keys)


# ----- probing -------------------------------------------------------------------------------
def _is_dist_folder(folder: Path) -> bool:
    """Names only: `.metadata`, or `metadata.json` beside `common.pt`/distcp files (zarr too)."""
    if (folder / METADATA_FILE).is_file():
        return True
    if not (folder / MARKER_FILE).is_file():
        return False
    return (folder / COMMON_FILE).is_file() or any(DISTCP_RE.match(p.name) for p in folder.iterdir())


class MegatronDistReader:
    kind = "megatron-dist"

    def probe(self, path: Path) -> Probe | None:
        """Accept a root, an iteration folder, or its `.metadata` / `metadata.json` file."""
        path = as_path(path)
        if path.is_file():
            if path.name in (METADATA_FILE, MARKER_FILE) and _is_dist_folder(path.parent):
                return self._folder_probe(path.parent)
            return None
        if not path.is_dir():
            return None
        if _is_dist_folder(path):
            return self._folder_probe(path)
        if _is_dist_folder(path / NEMO_WEIGHTS) and (path / NEMO_CONTEXT).is_dir():  # a NeMo 2 checkpoint
            found = self._folder_probe(path / NEMO_WEIGHTS)
            found.root, found.detail = path, found.detail + ", NeMo 2 (weights/ + context/)"
            return found
        if (path / TRACKER).is_file() or list_iterations(path):
            try:
                folder, iteration, iterations, _ = resolve_root(path)
            except CheckpointError:
                return None  # the legacy reader reports a broken tracker
            if not _is_dist_folder(folder):
                return None
            found = self._folder_probe(folder)
            found.root, found.iteration, found.iterations = path, iteration, iterations
            return found
        return None

    def _folder_probe(self, folder: Path) -> Probe:
        complete = (folder / MARKER_FILE).is_file()
        distcp = sum(1 for p in folder.iterdir() if DISTCP_RE.match(p.name))
        detail = f"torch_dist, {distcp} .distcp files" if distcp else "torch_dist"
        return Probe(self.kind, folder, iteration=iteration_of_folder(folder), complete=complete, detail=detail)

    # ----- opening ---------------------------------------------------------------------------
    def open(self, probe: Probe) -> Checkpoint:
        folder = probe.path
        ckpt = Checkpoint(kind=self.kind, path=folder, root=probe.root, iteration=probe.iteration,
                          iterations=list(probe.iterations), complete=probe.complete)
        if probe.root is not None and folder != probe.root / NEMO_WEIGHTS:
            ckpt.warnings.extend(resolve_root(probe.root)[3])
        marker = self._read_marker(folder)
        reader = DcpReader(folder)
        if marker is None and is_plain_dcp(reader.keys(), folder):
            # torch.distributed.checkpoint.save from an FSDP trainer (Accelerate, torchtitan): its
            # `.metadata` is written last, after every rank's data, so it is complete as it stands
            ckpt.kind, ckpt.complete = PLAIN_DCP_KIND, True
        elif marker is None:
            ckpt.complete = False
            ckpt.warnings.append(
                f"no {MARKER_FILE}: an interrupted (async) save - Megatron writes it last - or a plain torch DCP checkpoint"
            )
        else:
            ckpt.metadata["dist"] = marker
        ckpt.placeholders.extend(sorted(reader.placeholders))
        if reader.problems:
            ckpt.complete = False
            ckpt.warnings.extend(reader.problems[:20])
        ckpt.warnings.extend(self._reformulated(reader))
        ckpt.files = self._files(folder)
        ckpt.tensors = [self._tensor_info(reader, t) for t in reader.tensors.values()]
        ckpt.objects = [self._object_info(o) for o in reader.objects.values()]
        if ckpt.kind != PLAIN_DCP_KIND:
            self._fill_common(ckpt, folder, reader)
        else:
            self._fill_trainer_state(ckpt, reader)
        blame = folder / COMMON_FILE if (folder / COMMON_FILE).is_file() else reader.metadata_path
        ckpt.parallel = self._layout(ckpt.metadata.get("args", {}), len(reader.files()), blame)
        ckpt.format_detail = self._describe(ckpt)
        return ckpt

    @staticmethod
    def _read_marker(folder: Path) -> dict[str, Any] | None:
        """metadata.json; only the torch_dist backend is readable."""
        path = folder / MARKER_FILE
        if not path.is_file():
            return None
        text = read_side_text(path, "json", "metadata.json")
        with reading(path, "cannot parse metadata.json"):
            marker = json.loads(text)
        if not isinstance(marker, dict):
            raise CheckpointError(path, f"metadata.json must hold an object, found {type(marker).__name__}")
        backend = marker.get("sharded_backend")
        if backend != "torch_dist":
            raise CheckpointError(
                path, f"sharded_backend {backend!r} is not supported (only 'torch_dist'); re-save with --ckpt-format torch_dist"
            )
        return marker

    @staticmethod
    def _reformulated(reader: DcpReader) -> list[str]:
        """Megatron's `mcore_data` marks flattened optimizer tensors stored under a reshaped global shape."""
        mcore = getattr(reader.metadata, "mcore_data", None)
        if not isinstance(mcore, dict):
            return []
        keys = [k for k, v in mcore.items() if isinstance(v, dict) and v.get("nd_reformulated_orig_global_shape")]
        if not keys:
            return []
        return [f"{len(keys)} tensors (e.g. {keys[0]}) are stored with a reformulated flat shape; listed as stored"]

    @staticmethod
    def _files(folder: Path) -> list[ShardFile]:
        """Every file of the iteration folder; distcp rank numbers stay in the names (no Ranks axis)."""
        roles = {METADATA_FILE: "index", MARKER_FILE: "metadata", COMMON_FILE: "common"}
        out = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = str(path.relative_to(folder))
            if DISTCP_RE.match(path.name):
                role = "tensors"
            elif rel.startswith("tokenizer/"):
                role = "tokenizer"
            else:
                role = roles.get(rel, "other")
            out.append(ShardFile(path, rel, path.stat().st_size, role=role))
        return out

    @staticmethod
    def _tensor_info(reader: DcpReader, tensor: DcpTensor) -> TensorInfo:
        chunks = tuple(Chunk(c.offsets, c.sizes, c.file) for c in tensor.chunks)
        source: TensorSource = DistTensorSource(reader, tensor.key)
        return TensorInfo(
            name=tensor.key,
            shape=tensor.shape,
            dtype=dtype_name(tensor.dtype_info),
            file=chunks[0].file if chunks else "",
            group=tensor_group(tensor.key),
            chunks=chunks,
            stacked=stacked_axes(tensor.key)[: len(tensor.shape)],
            source=source,
        )

    @staticmethod
    def _object_info(obj: DcpBytes) -> ObjectInfo:
        return ObjectInfo(obj.key, object_kind(obj.key), obj.file, detail=f"{obj.length} bytes")

    # ----- common state ----------------------------------------------------------------------
    def _fill_common(self, ckpt: Checkpoint, folder: Path, reader: DcpReader) -> None:
        """args, checkpoint_version, iteration from common.pt or the common_state bytes entry."""
        common, where = self._common_state(ckpt, folder, reader)
        if common is None:
            ckpt.warnings.append(f"no common state ({COMMON_FILE} or {COMMON_STATE_KEY}): args unknown")
            return
        ckpt.metadata["common_source"] = where
        args = args_to_dict(common.get("args"))
        if args:
            ckpt.metadata["args"] = args
        for key in ("checkpoint_version", "iteration", "num_floating_point_operations_so_far"):
            value = common.get(key)
            if isinstance(value, (int, float, str)):
                ckpt.metadata[key] = value
        if isinstance(common.get("content_metadata"), dict):
            ckpt.metadata["content_metadata"] = args_to_dict(common["content_metadata"])
        ckpt.metadata["common_keys"] = [str(k) for k in common]
        if ckpt.iteration is None and isinstance(common.get("iteration"), int):
            ckpt.iteration = common["iteration"]

    @staticmethod
    def _fill_trainer_state(ckpt: Checkpoint, reader: DcpReader) -> None:
        """The trainer's scalars (torchtitan: `train_state.step`, `train_state.ntokens_seen`,
        `lr_scheduler.last_epoch`), decoded by the allowlist unpickler; the step is the iteration."""
        state: dict[str, Any] = {}
        for key, obj in reader.objects.items():
            if not key.startswith(TRAINER_SCALAR_PREFIXES) or obj.length > TRAINER_SCALAR_MAX_BYTES:
                continue
            try:
                value = reader.read_object(key)
            except CheckpointError as exc:
                ckpt.warnings.append(str(exc))
                continue
            if isinstance(value, (bool, int, float, str)):
                state[key] = value
        loader = [o for k, o in reader.objects.items() if k.startswith("dataloader.")]
        if loader:
            state["dataloader"] = f"{len(loader)} entries, {sum(o.length for o in loader)} bytes (per-rank iterator state)"
        if state:
            ckpt.metadata["trainer_state"] = state
        step = next((state[k] for k in TRAINER_STEP_KEYS if isinstance(state.get(k), int) and not isinstance(state[k], bool)), None)
        if ckpt.iteration is None and step is not None:
            ckpt.iteration = step

    @staticmethod
    def _common_state(ckpt: Checkpoint, folder: Path, reader: DcpReader) -> tuple[dict[str, Any] | None, str]:
        path = folder / COMMON_FILE
        if path.is_file():
            tf = open_torch_file(path)
            ckpt.placeholders.extend(sorted(tf.placeholders))
            if not isinstance(tf.obj, dict):
                raise CheckpointError(path, f"expected a dict, found {type(tf.obj).__name__}")
            return tf.obj, COMMON_FILE
        if COMMON_STATE_KEY not in reader.objects:
            return None, ""
        seen: set[str] = set()
        value = reader.read_object(COMMON_STATE_KEY, seen)
        ckpt.placeholders.extend(sorted(seen))
        if isinstance(value, list) and len(value) == 1:  # ShardedObject payloads are [obj]
            value = value[0]
        if not isinstance(value, dict):
            raise CheckpointError(folder / reader.objects[COMMON_STATE_KEY].file, f"{COMMON_STATE_KEY} holds {type(value).__name__}, expected a dict")
        return value, COMMON_STATE_KEY

    @staticmethod
    def _layout(args: dict[str, Any], files: int, blame: Path) -> ParallelLayout:
        """The layout the run saved with (from args); the stored tensors are global and do not
        depend on it, so it is only bounded (a single-process writer saves an EP2 run in one file)."""
        why = "the largest model-parallel degree read"
        ranks = MAX_MODEL_PARALLEL
        return ParallelLayout(
            tp=parallel_size(args, ("tensor_model_parallel_size",), ranks, blame, why),
            pp=parallel_size(args, ("pipeline_model_parallel_size",), ranks, blame, why),
            ep=parallel_size(args, ("expert_model_parallel_size",), ranks, blame, why),
            vpp=parallel_size(args, ("virtual_pipeline_model_parallel_size",), MAX_VIRTUAL_STAGES, blame, "virtual stages per pipeline stage"),
            dp=parallel_size(args, ("data_parallel_size",), MAX_DATA_PARALLEL, blame, "data-parallel replicas"),
        )

    @staticmethod
    def _describe(ckpt: Checkpoint) -> str:
        distcp = sum(1 for f in ckpt.files if f.role == "tensors")
        if ckpt.kind == PLAIN_DCP_KIND:
            return f"torch DCP (FSDP / torchtitan), {distcp} .distcp files; tensors are global"
        saved = f"saved with {ckpt.parallel.label()}" if "args" in ckpt.metadata else "saving layout unknown"
        return f"torch_dist, {distcp} .distcp files, {saved}; tensors are global (TP/PP independent)"


READER = MegatronDistReader()
