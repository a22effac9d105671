"""NxD writer: `<out>/<tag>/model/dp_rank_00_[ep_rank_EE_]tp_rank_TT_pp_rank_PP.pt`, plain or xser.

As NxD's trainer does, the `checkpoint` marker is written when the save starts and `done` when
it completes. The TP×EP files of one pipeline stage are open together and filled layer by layer:
plain files through `TorchZipWriter` (tensor bytes go to disk as produced, the pickle last),
xser files as one `tensor_<tid>.pt` per tensor the moment it is made. Expert tensors are split
over EP ranks; every other tensor lives only in the ep_rank_00 files (as NxD keeps them).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import torch

from ..row import expert_canon, scatter, scatter_stacked
from ..rules import nxd as rules
from ..row_runs import RowRuns
from ..shards import Geometry, HeadMap
from ..sources import PRE, group_canon
from ..spec import SpecError
from .base import PlannedFile, StagedWriter, Unit
from .megatron_common import stage_of, stage_units
from .torchzip import TorchZipWriter
from .xser import XserFileWriter

STARTED, DONE, MODEL_DIR = "checkpoint", "done", "model"


class _Sink(Protocol):
    def add(self, tensor: torch.Tensor | RowRuns, *, expert: bool = False) -> Any: ...
    def flush(self) -> None: ...
    def finish(self, obj: Any) -> None: ...
    def abort(self) -> None: ...


class _PlainSink:
    def __init__(self, path: Path) -> None:
        self.zip = TorchZipWriter(path, background=True)  # one writer thread per rank file

    def add(self, tensor: torch.Tensor | RowRuns, *, expert: bool = False) -> Any:
        return self.zip.add(tensor)

    def finish(self, obj: Any) -> None:
        self.zip.finish(obj)

    def flush(self) -> None:
        self.zip.flush()

    def abort(self) -> None:
        self.zip.abort()


class NxdWriter(StagedWriter):
    def __init__(self, spec, opts) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, opts)
        if opts.nxd_style not in rules.STYLES:
            raise SpecError(f"NxD style {opts.nxd_style!r}: choose hf or megatron")
        problems = rules.check_spec(spec)
        if spec.vocab % opts.tp:
            problems.append(f"NxD splits the {spec.vocab}-row vocabulary evenly: it does not split over TP={opts.tp}")
        if problems:
            raise SpecError("; ".join(problems))
        self.geo = Geometry(spec, opts.tp, opts.ep, opts.kv_size_multiplier)
        try:
            HeadMap.build(spec.heads, spec.kv_heads, opts.tp, opts.kv_size_multiplier)
        except SpecError as exc:
            hint = f" (give --kv-size-multiplier {opts.tp // spec.kv_heads})" if opts.tp > spec.kv_heads else ""
            raise SpecError(f"{exc}{hint}") from None
        self.form = rules.write_form(opts.nxd_style, opts.fuse_qkv, spec)
        self.tag = opts.nxd_tag or f"step_{opts.iteration}"
        self.stages = spec.stage_layers(opts.pp, opts.pp_layers)
        self._sinks: dict[tuple[int, int], _Sink] = {}
        self._states: dict[tuple[int, int], OrderedDict[str, Any]] = {}

    # ----- planning ------------------------------------------------------------------------
    def _rel(self, tp: int, pp: int, ep: int) -> str:
        return f"{self.tag}/{MODEL_DIR}/" + rules.shard_file_name(tp, pp, ep if self.opts.ep > 1 else None)

    def ownership_units(self, groups: list[int]) -> list[Unit]:
        return stage_units(self.spec, self.opts, groups, self._rel, tied_copy=False)

    def _stage_groups(self, pp: int) -> list[int]:
        return ([PRE] if pp == 0 else []) + list(self.stages[pp]) + ([self.spec.layers] if pp == self.opts.pp - 1 else [])

    def files(self) -> list[PlannedFile]:
        spec, opts = self.spec, self.opts
        shapes = spec.canonical_shapes()
        out = [PlannedFile(f"{self.tag}/{STARTED}", 0, 0)]
        for pp in range(opts.pp):
            names = [c for g in self._stage_groups(pp) for c in group_canon(spec, g)]
            for ep in range(opts.ep):
                mine = [c for c in names if self._ep_of(c) in (ep, None if ep == 0 else -1)]
                numel = sum(math.prod(shapes[c]) for c in mine)  # approximate: replicated norms counted once
                for tp in range(opts.tp):
                    out.append(PlannedFile(self._rel(tp, pp, ep), len(mine), numel * self.dtype.itemsize // opts.tp))
        out.append(PlannedFile(f"{self.tag}/{DONE}", 0, 0))
        return out

    def _ep_of(self, canon: str) -> int | None:
        """EP rank holding a canonical tensor (None: non-expert, kept in the ep_rank_00 files)."""
        return int(canon.split(".")[3]) // self.geo.local_experts if ".experts." in canon else None

    def notes(self) -> list[str]:
        o = self.opts
        return [f"NxD {o.nxd_style}-style names, attention form {self.form}, kv_size_multiplier {o.kv_size_multiplier}, "
                + ("xser" if o.xser else "plain torch files")]

    # ----- streaming -----------------------------------------------------------------------
    def open(self, folder: Path) -> None:
        super().open(folder)
        (folder / self.tag / MODEL_DIR).mkdir(parents=True, exist_ok=True)
        (folder / self.tag / STARTED).write_text("1")  # the save has begun

    def _open_stage(self, stage: int) -> None:
        assert self.folder is not None
        for ep in range(self.opts.ep):
            for tp in range(self.opts.tp):
                path = self.folder / self._rel(tp, stage, ep)
                self._sinks[(ep, tp)] = XserFileWriter(path, background=True) if self.opts.xser else _PlainSink(path)
                self._states[(ep, tp)] = OrderedDict()

    def _finish_stage(self) -> None:
        for key, sink in self._sinks.items():
            sink.finish(dict(self._states[key]) if self.opts.xser else self._states[key])
        self._sinks.clear()
        self._states.clear()

    def _put(self, name: str, tensor: torch.Tensor | RowRuns, ep: int, tp: int, expert: bool = False) -> None:
        piece = tensor.to(self.dtype)
        self._states[(ep, tp)][name] = self._sinks[(ep, tp)].add(piece if isinstance(piece, RowRuns) else piece.contiguous(), expert=expert)

    def write(self, group: int, tensors: dict[str, torch.Tensor]) -> None:
        self._write_group(group, tensors)
        for sink in self._sinks.values():
            sink.flush()  # the group's records leave with it

    def _write_group(self, group: int, tensors: dict[str, torch.Tensor]) -> None:
        spec, style = self.spec, self.opts.nxd_style
        self._enter_stage(stage_of(spec, self.opts, group))
        if group in (PRE, spec.layers):
            stage = "first" if group == PRE else "last"
            rows = [(p, rules.stored_name(p.name, style), list(p.canon)) for p, where in rules.global_params(spec) if where == stage]
        else:
            prefix = rules.LAYER_PREFIX.format(i=group)
            rows = [(p, rules.stored_name(prefix + p.name, style),
                     expert_canon(p, spec, f"layers.{group}.") if p.stacked else [f"layers.{group}.{c}" for c in p.canon])
                    for p in rules.layer_params(spec, self.form)]
        for param, name, canon in rows:
            values = [tensors[c] for c in canon]
            if param.stacked:
                for ep, by_tp in enumerate(scatter_stacked(param, values, self.geo)):
                    for tp, shard in enumerate(by_tp):
                        self._put(name, shard, ep, tp, expert=True)
            else:
                for tp, shard in enumerate(scatter(param, values, self.geo, runs=True)):
                    self._put(name, shard, 0, tp)

    def close(self) -> None:
        assert self.folder is not None
        self._finish_stage()
        if self.finalize:
            (self.folder / self.tag / DONE).write_text("1")  # marker last: the save completed

    def abort(self) -> None:
        for sink in self._sinks.values():
            sink.abort()
        self._sinks.clear()
        self._states.clear()
