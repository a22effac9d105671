"""Megatron-LM legacy `torch` format: `iter_XXXXXXX/mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt`.

The 3-digit suffix after the TP rank is a PP rank or, when PP == 1 and EP > 1, an EP rank: the
folder name cannot tell, so the rank-0 file's `args` decide. Layer numbers in `model` are local
to the pipeline stage (and virtual chunk); experts are local to the EP rank. `global_name`
renumbers both so the same logical tensor lines up across rank files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..probing import Probe
from ..errors import CheckpointError
from ..model import Checkpoint, ObjectInfo, ParallelLayout, Ranks, ShardFile, TensorInfo, dtype_name, relpath
from ..megatron_common import (
    MAX_DATA_PARALLEL,
    MAX_VIRTUAL_STAGES,
    TRACKER,
    args_to_dict,
    get_arg,
    globalise_name,
    iter_legacy_rank_folders,
    legacy_rank_folders,
    iteration_of_folder,
    layer_offsets,
    parallel_size,
    rank_folder_name,
    list_iterations,
    resolve_root,
)
from ..safe_pickle import Placeholder
from ..torchfile import LazyTensor, flatten, open_torch_file
from .hf import LazySource

RANK_DIR_RE = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$", re.ASCII)
MODEL_FILES = ("model_optim_rng.pt", "model_rng.pt")
MODEL_KEY_RE = re.compile(r"^model(\d*)$")


@dataclass(frozen=True)
class RankDir:
    path: Path
    tp: int
    second: int | None  # PP or EP, decided by args
    third: int | None  # EP when both PP and EP


MAX_RANKS = 1024  # TP, PP or EP; the rank folders on disk bound them further (`_check_complete`)


def _rank_dirs(folder: Path) -> list[RankDir]:
    out = []
    for child in folder.iterdir():
        m = RANK_DIR_RE.match(child.name)
        if m and child.is_dir():
            out.append(RankDir(child, int(m.group(1)), _int(m.group(2)), _int(m.group(3))))
    return sorted(out, key=lambda r: (r.tp, r.second or 0, r.third or 0))


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _model_file(rank_dir: Path) -> Path | None:
    return next((rank_dir / n for n in MODEL_FILES if (rank_dir / n).is_file()), None)


class MegatronTorchReader:
    kind = "megatron-torch"

    def probe(self, path: Path) -> Probe | None:
        if path.is_file():
            if path.name in MODEL_FILES and RANK_DIR_RE.match(path.parent.name):
                return Probe(self.kind, path, iteration=iteration_of_folder(path.parent.parent), detail="single rank file")
            return None
        if not path.is_dir():
            return None
        if RANK_DIR_RE.match(path.name) and _model_file(path):
            return Probe(self.kind, path, iteration=iteration_of_folder(path.parent), detail="single rank folder")
        if _rank_dirs(path):
            return Probe(self.kind, path, iteration=iteration_of_folder(path), layout=self._layout_hint(path))
        if (path / TRACKER).is_file() or list_iterations(path):
            folder, iteration, iterations, warnings = resolve_root(path)
            if not _rank_dirs(folder):
                return None
            return Probe(self.kind, folder, root=path, iteration=iteration, iterations=iterations,
                         layout=self._layout_hint(folder), problems=warnings)
        return None

    @staticmethod
    def _layout_hint(folder: Path) -> str:
        dirs = _rank_dirs(folder)
        tp = len({d.tp for d in dirs})
        rest = len({(d.second, d.third) for d in dirs})
        return f"TP{tp}" + (f" × {rest} stage/expert ranks" if rest > 1 else "")

    # ------------------------------------------------------------------------------------
    def open(self, probe: Probe) -> Checkpoint:
        path = probe.path
        if path.is_file():
            files = [(path.parent, path)]
            folder = path.parent.parent
        elif RANK_DIR_RE.match(path.name):
            files = [(path, _model_file(path))]
            folder = path.parent
        else:
            folder = path
            files = [(d.path, _model_file(d.path)) for d in _rank_dirs(folder)]
        ckpt = Checkpoint(kind=self.kind, path=path, root=probe.root, iteration=probe.iteration,
                          iterations=list(probe.iterations))
        missing = [d for d, f in files if f is None]
        if missing:
            raise CheckpointError(missing[0] / MODEL_FILES[0], "missing rank file (folder has no model_optim_rng.pt)")
        opened = [(d, open_torch_file(f)) for d, f in files]
        first = opened[0][1].obj
        if not isinstance(first, dict):
            raise CheckpointError(opened[0][1].path, f"expected a dict at top level, found {type(first).__name__}")
        args = args_to_dict(first.get("args"))
        layout = self._layout_from_args(args, [d for d, _ in opened], len(_rank_dirs(folder)), opened[0][1].path)
        self._check_complete(folder, [d for d, _ in opened], layout, args, single=path.is_file() or path != folder)
        ckpt.parallel = layout
        self._fill_metadata(ckpt, first, args)
        offsets = layer_offsets(args, layout.pp, layout.vpp)
        experts = int(get_arg(args, "num_experts", default=0) or 0)
        for rank_dir, tf in opened:
            ranks = self._ranks(RANK_DIR_RE.match(rank_dir.name), layout)
            rel = relpath(tf.path, folder)
            ckpt.files.append(ShardFile(tf.path, rel, tf.path.stat().st_size, ranks, role="model"))
            ckpt.placeholders.extend(tf.placeholders)
            expert_offset = (ranks.ep or 0) * (experts // layout.ep) if experts and layout.ep > 1 else 0
            self._index_state(ckpt, tf.obj, rel, ranks, offsets, expert_offset)
            for extra in sorted(rank_dir.iterdir()):
                if extra.is_file() and extra != tf.path:
                    role = "optimizer" if "optim" in extra.name else "other"
                    ckpt.files.append(ShardFile(extra, relpath(extra, folder), extra.stat().st_size, ranks, role=role))
        if args and "checkpoint_version" not in ckpt.metadata:
            ckpt.warnings.append("no checkpoint_version: treated as 0 (old QKV ordering)")
        self._check_consistent(folder, ckpt)
        ckpt.format_detail = self._describe(ckpt, args)
        return ckpt

    @staticmethod
    def _check_consistent(folder: Path, ckpt: Checkpoint) -> None:
        """Rank files must agree: one global name has one shape and dtype on every TP/EP rank.

        Megatron splits evenly (vocab is padded for it) and replicates the rest, so any
        difference means rank files from different runs or layouts were mixed.
        """
        first: dict[str, TensorInfo] = {}
        for t in ckpt.model_tensors():
            seen = first.setdefault(t.global_name, t)
            if seen is not t and (seen.shape != t.shape or seen.dtype != t.dtype):
                raise CheckpointError(
                    folder / t.file,
                    f"rank files disagree on {t.global_name!r}: {list(t.shape)} {t.dtype} here, "
                    f"{list(seen.shape)} {seen.dtype} in {seen.file}",
                )

    @staticmethod
    def _layout_from_args(args: dict[str, Any], dirs: list[Path], on_disk: int, blame: Path) -> ParallelLayout:
        matches = [RANK_DIR_RE.match(d.name) for d in dirs]
        tp_disk = len({m.group(1) for m in matches})
        # A sanity bound here (a rank file opened alone may come from a bigger run); with the whole
        # folder, `_check_complete` then requires TP x PP x EP rank folders on disk.
        why = f"the iteration folder has {on_disk} rank folders"
        ranks = MAX_RANKS
        tp = parallel_size(args, ("tensor_model_parallel_size", "model_parallel_size"), ranks, blame, why, default=tp_disk or 1)
        pp = parallel_size(args, ("pipeline_model_parallel_size",), ranks, blame, why)
        ep = parallel_size(args, ("expert_model_parallel_size",), ranks, blame, why)
        vpp = parallel_size(args, ("virtual_pipeline_model_parallel_size",), MAX_VIRTUAL_STAGES, blame, "virtual stages per pipeline stage")
        dp = parallel_size(args, ("data_parallel_size",), MAX_DATA_PARALLEL, blame, "data-parallel replicas")
        etp = parallel_size(args, ("expert_tensor_parallel_size",), ranks, blame, why, default=tp)
        if not args:  # no args: trust the folder names (suffix read as PP)
            pp = len({m.group(2) for m in matches}) if any(m.group(2) for m in matches) else 1
            ep = len({m.group(3) for m in matches}) if any(m.group(3) for m in matches) else 1
        return ParallelLayout(tp=tp, pp=pp, ep=ep, vpp=vpp, dp=dp, etp=etp if ep > 1 and etp != tp else None)

    @staticmethod
    def _ranks(m: re.Match[str] | None, layout: ParallelLayout) -> Ranks:
        if m is None:
            return Ranks()
        tp, second, third = int(m.group(1)), _int(m.group(2)), _int(m.group(3))
        if layout.pp > 1:
            return Ranks(tp=tp, pp=second or 0, ep=third if layout.ep > 1 else None)
        if layout.ep > 1:  # PP == 1: the suffix is the expert rank
            return Ranks(tp=tp, pp=0, ep=second or 0)
        return Ranks(tp=tp, pp=0)

    @staticmethod
    def _check_complete(folder: Path, dirs: list[Path], layout: ParallelLayout, args: dict[str, Any], single: bool) -> None:
        """Every rank folder megatron-core writes for the args' layout is present (with experts on
        fewer TP ranks than the dense layers, fewer than TP x PP x EP: `legacy_rank_folders`)."""
        if single or not args:
            return
        present = {d.name for d in dirs}
        saved_tp: set[int] = set()
        for tp, pp, ep in iter_legacy_rank_folders(layout.tp, layout.pp, layout.ep, layout.etp):
            name = rank_folder_name(tp, pp, ep, pp_size=layout.pp, ep_size=layout.ep)
            if name not in present:
                small = layout.pp * (layout.etp or layout.tp) * layout.ep <= 1 << 20  # args are untrusted: count only a sane grid
                of = f" of {len(legacy_rank_folders(layout.tp, layout.pp, layout.ep, layout.etp))}" if small else ""
                raise CheckpointError(folder / name / MODEL_FILES[0],
                                      f"missing rank file: args say {layout.label()} ({len(present)}{of} rank folders present)")
            saved_tp.add(tp)
        if unwritten := sorted(set(range(layout.tp)) - saved_tp):
            raise CheckpointError(folder, f"args say {layout.label()}: megatron-core saves the torch format only on the first "
                                          f"ETP x EP ranks of a stage, so no file holds the layers' TP ranks {unwritten} "
                                          "(save this run as torch_dist, which holds every shard)")

    @staticmethod
    def _fill_metadata(ckpt: Checkpoint, state: dict[str, Any], args: dict[str, Any]) -> None:
        if args:
            ckpt.metadata["args"] = args
        for key in ("checkpoint_version", "iteration", "num_floating_point_operations_so_far"):
            if key in state and not isinstance(state[key], (dict, list, LazyTensor)):
                ckpt.metadata[key] = state[key]
        if ckpt.iteration is None and isinstance(state.get("iteration"), int):
            ckpt.iteration = state["iteration"]
        ckpt.metadata["top_level_keys"] = [str(k) for k in state]

    def _index_state(self, ckpt: Checkpoint, state: Any, rel: str, ranks: Ranks, offsets: dict[tuple[int, int], int], expert_offset: int) -> None:
        if not isinstance(state, dict):
            return
        for key, value in state.items():
            m = MODEL_KEY_RE.match(str(key))
            if m and isinstance(value, dict):
                vpp = int(m.group(1)) if m.group(1) else None
                chunk_ranks = Ranks(ranks.tp, ranks.pp, ranks.ep, vpp, ranks.dp) if vpp is not None else ranks
                layer_offset = offsets.get((ranks.pp or 0, vpp or 0), 0)
                self._index_tree(ckpt, value, "", rel, chunk_ranks, "model", layer_offset, expert_offset)
            elif key in ("optimizer", "rng_state", "opt_param_scheduler", "lr_scheduler", "rerun_state_machine"):
                self._index_tree(ckpt, value, f"{key}.", rel, ranks, "optimizer" if key == "optimizer" else "other", 0, 0)

    @staticmethod
    def _index_tree(ckpt: Checkpoint, tree: Any, prefix: str, rel: str, ranks: Ranks, group: str, layer_offset: int, expert_offset: int) -> None:
        for name, value in flatten(tree, prefix.rstrip(".")):
            if name.endswith("_extra_state"):
                detail = "empty" if value is None else value.describe() if isinstance(value, Placeholder) else type(value).__name__
                ckpt.objects.append(ObjectInfo(name, "_extra_state", rel, ranks, detail))
            elif isinstance(value, LazyTensor):
                global_name = globalise_name(name, layer_offset, expert_offset) if group == "model" else name
                ckpt.tensors.append(TensorInfo(name, value.shape, dtype_name(value.dtype), rel, ranks,
                                               global_name=global_name, group=group, source=LazySource(value)))
            elif isinstance(value, Placeholder):
                ckpt.objects.append(ObjectInfo(name, "placeholder", rel, ranks, value.describe()))

    @staticmethod
    def _describe(ckpt: Checkpoint, args: dict[str, Any]) -> str:
        names = [t.name for t in ckpt.model_tensors()]
        if any(n.startswith("language_model.") for n in names):
            style = "legacy nested (language_model)"
        elif any(n.endswith(("linear_qkv.layer_norm_weight", "linear_kv_up_proj.layer_norm_weight")) for n in names):
            style = "Megatron-Core, Transformer-Engine spec"
        else:
            style = "Megatron-Core, local spec"
        return f"torch format, {style}, {len({f.rel for f in ckpt.files if f.role == 'model'})} rank file(s)"


READER = MegatronTorchReader()
