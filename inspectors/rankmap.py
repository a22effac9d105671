"""Which rank file holds what: the TP × PP × EP grid of a checkpoint's model files, each cell with
its files, bytes, and the layers, experts and whole-model parts (embedding, final norm, head) it
holds. Checkpoints without ranks (HF shards, torch_dist `.distcp` files) get one cell per file.

Computed from the index alone (names, shapes, torch_dist chunk offsets): nothing is read. The CLI
draws it as a text grid under `inspect`, the app in its Ranks tab.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from .megatron_common import legacy_rank_folders
from .model import Checkpoint

AXES = ("tp", "pp", "ep")
_LAYER_RE = re.compile(r"(?:^|(?<!^mtp)\.)layers\.(\d+)\.")  # megatron-core's `mtp.layers.{k}` are MTP modules
_EXPERT_RE = re.compile(r"(?:^|\.)experts\.(?:local_experts\.)?(\d+)\.")
_PIPE_MODULE_RE = re.compile(r"^(\d+)\.")  # DeepSpeed pipeline files: `3.mlp.dense_4h_to_h.weight`
# whole-model parts worth naming in a cell (the first and last pipeline stages hold them)
PARTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("embedding", re.compile(r"(embed|wte\b|word_embeddings|tok_embeddings)")),
    ("final norm", re.compile(r"(final_layernorm|final_layer_norm|(^|\.)norm\.weight$|ln_f\.)")),
    ("output head", re.compile(r"(output_layer|lm_head|(^|\.)output\.weight$)")),
    ("MTP modules", re.compile(r"^mtp\.layers\.")),
)
Key = tuple[Any, ...]  # (tp, pp, ep) with None for an axis the files do not carry, or (file,)


@dataclass
class RankCell:
    """One rank (or one file): what it stores."""

    key: Key
    files: list[str] = field(default_factory=list)
    size: int = 0
    tensors: int = 0
    layers: set[int] = field(default_factory=set)
    experts: set[int] = field(default_factory=set)
    modules: set[int] = field(default_factory=set)  # DeepSpeed pipeline module numbers
    parts: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"key": list(self.key), "files": self.files, "size": self.size, "tensors": self.tensors,
                "layers": sorted(self.layers), "experts": sorted(self.experts), "pipeline_modules": sorted(self.modules),
                "parts": [p for p, _ in PARTS if p in self.parts]}


@dataclass
class RankMap:
    """The grid: `axes` are the rank axes the files carry (none: one cell per file)."""

    axes: tuple[str, ...]
    sizes: dict[str, int]  # the layout's size on each axis
    cells: dict[Key, RankCell]
    missing: list[Key] = field(default_factory=list)  # grid positions no file fills
    unwritten: list[Key] = field(default_factory=list)  # positions the writer never fills (`legacy_rank_folders`)

    @property
    def by_file(self) -> bool:
        return not self.axes

    def rows(self) -> list[Key]:
        """Row keys (every axis but TP), in order; a grid's columns are its TP ranks."""
        if self.by_file:
            return sorted(self.cells)
        return sorted({_row(k) for k in (*self.cells, *self.missing, *self.unwritten)}, key=_order)

    def columns(self) -> list[Any]:
        return sorted({k[0] for k in (*self.cells, *self.missing, *self.unwritten)}, key=lambda v: -1 if v is None else v)

    def at(self, row: Key, column: Any) -> RankCell | None:
        return self.cells.get((column, *row))

    def to_json(self) -> dict[str, Any]:
        return {"axes": list(self.axes), "sizes": self.sizes, "cells": [c.to_json() for c in self.cells.values()],
                "missing": [list(k) for k in self.missing], "unwritten": [list(k) for k in self.unwritten]}


def _row(key: Key) -> Key:
    return tuple(key[1:])


def _order(key: Key) -> tuple[int, ...]:
    return tuple(-1 if v is None else v for v in key)


def rank_map(ckpt: Checkpoint, *, by_file: bool = False) -> RankMap:
    """Group the model files by rank and say what each holds (index only). A grid of one cell
    (one rank's many files: DeepSpeed pipeline layer files) is shown file by file instead."""
    ranks = {f.rel: f.ranks for f in ckpt.files}
    holding = {rel for t in ckpt.model_tensors() for rel in ([c.file for c in t.chunks] or [t.file])}
    axes = () if by_file else tuple(a for a in AXES if any(getattr(ranks[rel], a) is not None for rel in holding if rel in ranks))
    sizes = {a: getattr(ckpt.parallel, a) for a in AXES}
    if ckpt.parallel.etp is not None:  # experts on a TP of their own: said beside the grid's axes
        sizes["etp"] = ckpt.parallel.etp
    file_sizes = {f.rel: f.size for f in ckpt.files}
    cells: dict[Key, RankCell] = {}

    def cell(rel: str) -> RankCell:
        r = ranks.get(rel)
        key: Key = tuple(getattr(r, a) if r is not None and a in axes else None for a in AXES) if axes else (rel,)
        found = cells.get(key)
        if found is None:
            found = cells[key] = RankCell(key)
        if rel not in found.files:
            found.files.append(rel)
            found.size += file_sizes.get(rel, 0)
        return found

    for t in ckpt.model_tensors():
        name = t.global_name
        layer = _LAYER_RE.search(name)
        expert = _EXPERT_RE.search(name)
        module = _PIPE_MODULE_RE.match(name)
        parts = {part for part, rx in PARTS if rx.search(name) and not layer}
        pieces = [(c.file, c.offsets[0], c.sizes[0]) if t.stacked[:1] == ("layers",) else (c.file, None, None)
                  for c in t.chunks] or [(t.file, None, None)]
        for rel, first, count in pieces:
            where = cell(rel)
            where.tensors += 1
            if first is not None:
                where.layers.update(range(first, first + count))
            elif layer:
                where.layers.add(int(layer.group(1)))
            elif module:
                where.modules.add(int(module.group(1)))
            if expert:
                where.experts.add(int(expert.group(1)))
            where.parts |= parts
    missing: list[Key] = []
    if axes:
        spans = [range(max(sizes[a], 1)) if a in axes else [None] for a in AXES]
        missing = [k for k in itertools.product(*spans) if k not in cells]
    written = _written(ckpt)
    unwritten = [k for k in missing if written is not None and (k[0], k[1] or 0, k[2] or 0) not in written]
    missing = [k for k in missing if k not in unwritten]
    for c in cells.values():
        c.files.sort()
    if axes and len(cells) == 1 and not missing and len(next(iter(cells.values())).files) > 1:
        return rank_map(ckpt, by_file=True)
    return RankMap(axes, sizes, dict(sorted(cells.items(), key=lambda kv: _order(kv[0]) if axes else kv[0])), missing, unwritten)


def _written(ckpt: Checkpoint) -> set[tuple[int, int, int]] | None:
    """The (tp, pp, ep) rank folders megatron-core writes for a Megatron `torch` checkpoint whose
    experts have a TP of their own (fewer than the full grid); None where every position is written."""
    layout = ckpt.parallel
    if ckpt.kind != "megatron-torch" or layout.etp is None or layout.pp * layout.etp * layout.ep > 1 << 20:
        return None  # (a single rank file's args are not checked against the folders: no huge grids from them)
    return set(legacy_rank_folders(layout.tp, layout.pp, layout.ep, layout.etp))


def span(values: set[int]) -> str:
    """`0-3`, `0,2,5-7`: a set of numbers as short ranges."""
    out: list[str] = []
    for _, run in itertools.groupby(enumerate(sorted(values)), key=lambda iv: iv[1] - iv[0]):
        nums = [v for _, v in run]
        out.append(str(nums[0]) if len(nums) == 1 else f"{nums[0]}-{nums[-1]}")
    return ",".join(out)
