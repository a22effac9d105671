"""Debug mismatched tensor names: diff two checkpoints, or check one against a target format.

`diff_checkpoints(a, b)` aligns both sides through canonical names (`converters.sources`), so a
Megatron TP2×PP2 checkpoint and the HF folder converted from it compare tensor by tensor. Each
canonical tensor is `same`, `missing` (in A, not in B), `unexpected` (in B, not in A), `shape`,
`dtype` or, with `numeric`, `values` (max abs difference above the tolerance). Shapes and dtypes
come from the index (full canonical shapes, stored dtypes): no tensor bytes are read unless
`numeric`, which reads one group (layer) per side at a time through `verify.compare_tensors`.
Stored tensors a side cannot place are listed with the nearest expected stored name and, when
renaming them to it would place them, the canonical tensor they would fill. When a side cannot be
seen canonically (unsupported family or format) the diff falls back to stored names, with
difflib suggestions for names present on one side only.

`check_target(path, fmt, **layout)` is the converter's plan without the run: what maps, what each
ignore rule drops, what cannot be placed (nearest rule), what is missing, layout errors, files.

Headless: the CLI and the TUI render these reports; nothing here prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.model import RANK_AXES, Checkpoint, TensorInfo
from ckptscope.inspectors.summary import Row, natural_key

from .discovery import read_config
from .plan import make_plan
from .rename_advice import suggest_renames
from .renames import Renames, renamed_view
from .sources import Accounting, CanonicalSource, group_label, open_source
from .verify import Progress, VerifyReport, compare_tensors
from .writers import TargetOptions

Shape = tuple[int, ...]

STATUSES = ("same", "missing", "unexpected", "shape", "dtype", "values")
VALUE_STATUSES = ("same", "dtype", "values")  # present on both sides with one shape: values comparable
CANONICAL, STORED = "canonical", "stored"
# Formats whose canonical reader hands stored tensors over unchanged (1:1 names): there the
# stored shape is the canonical one, so a tensor edited against its config.json shows up.
AS_STORED_KINDS = frozenset({"hf"})
# Plan errors that come from the accounting (reported structurally); the rest are layout errors.
_ACCOUNTING_ERROR = re.compile(r"^\d+ (stored|expected) tensor\(s\) ")
_INDEX_RE = re.compile(r"(?<=\.)(\d+)(?=\.|$)")
_UNREADABLE = (KeyError, ValueError, OSError, RuntimeError, CheckpointError)  # SpecError is a ValueError


# ---------------------------------------------------------------------------------------------
# Report types
# ---------------------------------------------------------------------------------------------
@dataclass
class DiffEntry:
    """One tensor compared across A and B: a canonical name, or a stored name in stored mode."""

    name: str
    status: str
    shape_a: Shape | None = None
    shape_b: Shape | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    shards_a: int = 0  # stored tensors holding it on each side (0: absent)
    shards_b: int = 0
    max_abs: float | None = None  # numeric only; None when not compared
    suggestion: str = ""  # the name on the lacking side that probably is this tensor
    stored_a: list[str] = field(default_factory=list)  # the stored names that hold it on each side
    stored_b: list[str] = field(default_factory=list)

    @property
    def problem(self) -> bool:
        return self.status != "same"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(shape_a=_list(self.shape_a), shape_b=_list(self.shape_b))
        return out


@dataclass
class Unplaced:
    """A stored tensor the canonical view cannot place, with the nearest expected stored name."""

    name: str
    shape: Shape
    dtype: str
    nearest: str = ""  # nearest expected stored name (the "nearest rule"); "" when none is close
    canonical: list[str] = field(default_factory=list)  # what it would fill if renamed to `nearest`

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "nearest": self.nearest,
                "would_fill": self.canonical}


@dataclass
class Side:
    """What one side is and how it was read."""

    path: str
    format: str
    layout: str
    mode: str = CANONICAL
    reason: str = ""  # why the canonical view is unavailable (stored mode)
    model: str = ""  # architecture summary (canonical mode)
    tensors: int = 0  # stored model tensors
    unplaced: list[Unplaced] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)  # ignore rule -> stored tensors it drops
    missing_stored: list[str] = field(default_factory=list)  # expected stored names absent from disk
    renamed: dict[str, str] = field(default_factory=dict)  # stored name -> name read (`--rename`, `--map`)
    suggested_renames: list[str] = field(default_factory=list)  # `--rename` rules that would place the unplaced

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["unplaced"] = [u.to_json() for u in self.unplaced]
        return out


@dataclass(frozen=True)
class DiffRow:
    """Entries that differ only by layer / expert numbers, folded for display."""

    status: str
    name: str  # e.g. layers.{0..31}.mlp.up
    count: int
    shape_a: Shape | None
    shape_b: Shape | None
    dtype_a: str | None
    dtype_b: str | None
    shards_a: int
    shards_b: int
    max_abs: float | None
    suggestion: str


@dataclass
class DiffReport:
    a: Side
    b: Side
    mode: str  # canonical | stored
    numeric: bool = False
    tolerance: float = 0.0
    entries: list[DiffEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Entries per status, plus stored tensors neither side's canonical view could place."""
        by_status = Counter(e.status for e in self.entries)
        return {**{s: by_status.get(s, 0) for s in STATUSES},
                "unplaced_a": len(self.a.unplaced), "unplaced_b": len(self.b.unplaced)}

    @property
    def identical(self) -> bool:
        """Every tensor the same on both sides, nothing left unplaced, and (numeric) every value read."""
        return not self.problems() and not self.a.unplaced and not self.b.unplaced and not self.not_compared

    @property
    def not_compared(self) -> list[str]:
        """Numeric: tensors on both sides whose values could not be read (the notes say why)."""
        return [e.name for e in self.entries if self.numeric and e.status in VALUE_STATUSES and e.max_abs is None]

    @property
    def max_abs(self) -> float | None:
        values = [e.max_abs for e in self.entries if e.max_abs is not None]
        return max(values) if values else None

    def problems(self) -> list[DiffEntry]:
        return [e for e in self.entries if e.problem]

    def rows(self, only_problems: bool = False) -> list[DiffRow]:
        """Entries folded over layer / expert numbers, in model order (what a table shows)."""
        buckets: dict[tuple[Any, ...], list[DiffEntry]] = {}
        for e in self.problems() if only_problems else self.entries:
            key = (e.status, _pattern(e.name)[0], e.shape_a, e.shape_b, e.dtype_a, e.dtype_b, e.shards_a, e.shards_b,
                   _pattern(e.suggestion)[0])
            buckets.setdefault(key, []).append(e)
        return [_fold(members) for members in buckets.values()]

    def to_json(self, only_problems: bool = False) -> dict[str, Any]:
        return {
            "a": self.a.to_json(), "b": self.b.to_json(), "mode": self.mode, "identical": self.identical,
            "numeric": self.numeric, "tolerance": self.tolerance, "counts": self.counts, "max_abs": self.max_abs,
            "not_compared": self.not_compared,
            "entries": [e.to_json() for e in (self.problems() if only_problems else self.entries)],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class MappedRule:
    """Stored tensors that map alike, folded over layer numbers: stored pattern -> canonical."""

    stored: str
    canonical: str
    count: int


@dataclass
class CheckReport:
    """What converting a checkpoint to a target format / layout would do (nothing written)."""

    source: str
    source_format: str
    source_layout: str
    target: dict[str, Any]
    model: str
    mapped: list[MappedRule] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)  # rule -> stored tensors it drops
    unplaced: list[Unplaced] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # expected stored names absent
    layout_errors: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # everything that would refuse the conversion
    files: list[dict[str, Any]] = field(default_factory=list)  # path, tensors, bytes
    total_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # stored name -> name read (`--rename`, `--map`)
    suggested_renames: list[str] = field(default_factory=list)  # `--rename` rules that would place the unplaced

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def counts(self) -> dict[str, int]:
        return {"mapped": sum(r.count for r in self.mapped), "ignored": sum(self.ignored.values()),
                "unplaced": len(self.unplaced), "missing": len(self.missing), "layout_errors": len(self.layout_errors),
                "files": len(self.files)}

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(ok=self.ok, counts=self.counts, unplaced=[u.to_json() for u in self.unplaced])
        return out


# ---------------------------------------------------------------------------------------------
# diff
# ---------------------------------------------------------------------------------------------
@dataclass
class _View:
    """One side through its canonical reader: which canonical tensors it stores, and as what."""

    source: CanonicalSource
    order: list[str]  # every canonical name the spec expects, in model order
    shapes: dict[str, Shape]  # canonical names present on disk
    dtypes: dict[str, str]
    shards: dict[str, int]
    stored: dict[str, list[str]]  # canonical name -> the stored names holding it


def diff_checkpoints(a: str | Path, b: str | Path, *, numeric: bool = False,
                     config: Mapping[str, Any] | str | Path | None = None, tolerance: float = 0.0,
                     renames: Renames | None = None, progress: Progress | None = None) -> DiffReport:
    """Missing, unexpected, reshaped and recast tensors between A and B (optionally values).

    `config` (an HF config dict or a config.json path) gives the architecture to both sides, for
    sources that lack it. Canonical names are used when both sides can be seen canonically;
    otherwise stored names (the report says which and why). `renames` apply to both sides' stored
    names (a rule is said to match nothing only when it matches on neither side).
    """
    cfg = _load_config(config)
    views = [renamed_view(detect(p), renames or Renames()) for p in (a, b)]
    ca, cb = views[0].ckpt, views[1].ckpt
    sides = [_side(str(p), v.ckpt, v.renamed) for p, v in ((a, views[0]), (b, views[1]))]
    rename_notes = [w for w in dict.fromkeys(views[0].warnings) if w in views[1].warnings]
    report = _diff(ca, cb, sides, cfg, numeric, tolerance, progress)
    report.notes += rename_notes
    return report


def _diff(ca: Checkpoint, cb: Checkpoint, sides: list[Side], cfg: dict[str, Any] | None, numeric: bool,
          tolerance: float, progress: Progress | None = None) -> DiffReport:
    views = [_open_view(c, cfg, s) for c, s in zip((ca, cb), sides, strict=True)]
    if views[0] is not None and views[1] is not None:
        return _canonical_diff(sides[0], sides[1], views[0], views[1], numeric, tolerance, progress)
    return _stored_diff(sides[0], sides[1], ca, cb, numeric, tolerance, progress)


def _load_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any] | None:
    if config is None or isinstance(config, Mapping):
        return dict(config) if config is not None else None
    return read_config(config)


def _side(path: str, ckpt: Checkpoint, renamed: dict[str, str] | None = None) -> Side:
    return Side(path, ckpt.kind, ckpt.parallel.label(), tensors=len(ckpt.model_tensors()), renamed=dict(renamed or {}))


def _open_view(ckpt: Checkpoint, config: dict[str, Any] | None, side: Side) -> _View | None:
    """The canonical view, or None (reason kept on the side) when the reader cannot give one."""
    try:
        source = open_source(ckpt, config=config)
        acc = source.account()
    except (ValueError, KeyError) as exc:  # SpecError: unsupported family / format, no architecture
        side.mode, side.reason = STORED, str(exc) or type(exc).__name__
        return None
    spec = source.spec
    spec_shapes = spec.canonical_shapes()
    order = list(spec_shapes)
    index = _index(ckpt)
    held = _holders(acc, order)
    infos = {c: [t for s in names for t in index.get(s, [])] for c, names in held.items()}
    view = _View(source, order,
                 shapes={c: _canonical_shape(source.kind, acc, c, held[c], infos[c], spec_shapes[c], source) for c in held},
                 dtypes={c: _dtype_label(infos[c]) for c in held},
                 shards={c: len(infos[c]) for c in held}, stored={c: list(held[c]) for c in held})
    side.model = (f"{spec.family}: {spec.layers} layers, hidden {spec.hidden}, heads {spec.heads}/{spec.kv_heads} kv, "
                  f"{spec.ffn_label()}, vocab {spec.vocab}" + (f", {spec.experts} experts" if spec.moe else "")
                  + (f"; quirks: {'; '.join(spec.quirks())}" if spec.quirks() else ""))
    side.ignored = dict(Counter(acc.ignored.values()))
    side.missing_stored = list(acc.missing)
    side.unplaced = _unplaced(source, acc, index)
    side.suggested_renames = suggest_renames(acc.unmatched, acc.missing)
    return view


def _index(ckpt: Checkpoint) -> dict[str, list[TensorInfo]]:
    """Global stored name -> its shards in rank order (model tensors only)."""
    out: dict[str, list[TensorInfo]] = {}
    for t in sorted(ckpt.model_tensors(), key=lambda t: tuple(getattr(t.ranks, ax) or 0 for ax in RANK_AXES)):
        out.setdefault(t.global_name, []).append(t)
    return out


def _canon_rx(name: str) -> re.Pattern[str]:
    """Stacked / fused keys map to `layers.*.x`: `*` stands for one name component."""
    return re.compile(re.escape(name).replace(r"\*", r"[^.]+"))


def _holders(acc: Accounting, canonical: Iterable[str]) -> dict[str, list[str]]:
    """Canonical name -> stored names that hold it (only names some stored tensor maps to)."""
    exact: dict[str, list[str]] = {}
    wild: list[tuple[re.Pattern[str], str]] = []
    for stored, names in acc.mapped.items():
        for name in names:
            if "*" in name:
                wild.append((_canon_rx(name), stored))
            else:
                exact.setdefault(name, []).append(stored)
    out = {}
    for name in canonical:
        held = exact.get(name, []) + [s for rx, s in wild if rx.fullmatch(name)]
        if held:
            out[name] = list(dict.fromkeys(held))
    return out


def _canonical_shape(kind: str, acc: Accounting, name: str, held: list[str], infos: list[TensorInfo],
                     spec_shape: Shape, source: CanonicalSource | None = None) -> Shape:
    """The full shape `read()` returns: the spec's, or the stored one where the reader is 1:1
    (and stores the tensor as is: GPT-2's Conv1D weights are stored transposed)."""
    one_to_one = len(held) == 1 and len(infos) == 1 and acc.mapped[held[0]] == [name]
    as_is = getattr(source, "stored_as_canonical", None)
    one_to_one = one_to_one and (as_is is None or as_is(held[0]))
    return tuple(infos[0].shape) if kind in AS_STORED_KINDS and one_to_one else tuple(spec_shape)


def _dtype_label(infos: list[TensorInfo]) -> str:
    return ",".join(sorted({t.dtype for t in infos}))


def _unplaced(source: CanonicalSource, acc: Accounting, index: dict[str, list[TensorInfo]]) -> list[Unplaced]:
    missing = set(acc.missing)
    renames: dict[str, str] = {}
    for stored, near in acc.unmatched.items():  # each missing name is offered to one stored tensor
        if near in missing and near not in renames.values():
            renames[stored] = near
    fills = _fills_if_renamed(source, renames)
    out = []
    for stored, near in acc.unmatched.items():
        first = index[stored][0] if index.get(stored) else None
        out.append(Unplaced(stored, tuple(first.shape) if first else (), first.dtype if first else "", near,
                            fills.get(near, []) if renames.get(stored) == near else []))
    return out


def _fills_if_renamed(source: CanonicalSource, renames: dict[str, str]) -> dict[str, list[str]]:
    """Account the same index, same reader and spec, with unplaced tensors renamed to their
    nearest expected names: a rename is only offered as "would fill X" when it really maps to X."""
    if not renames:
        return {}
    ckpt = source.ckpt
    tensors = [dataclasses.replace(t, name=renames[t.global_name], global_name=renames[t.global_name])
               if t.global_name in renames else t for t in ckpt.tensors]
    try:
        acc = type(source)(dataclasses.replace(ckpt, tensors=tensors), source.spec).account()  # type: ignore[call-arg]
    except (ValueError, KeyError):
        return {}
    return {near: acc.mapped[near] for near in renames.values() if near in acc.mapped}


def _status(shape_a: Any, shape_b: Any, dtype_a: str | None, dtype_b: str | None) -> str:
    checks = (("missing", shape_b is None), ("unexpected", shape_a is None), ("shape", shape_a != shape_b),
              ("dtype", dtype_a != dtype_b))
    return next((status for status, hit in checks if hit), "same")


def _canonical_diff(sa: Side, sb: Side, va: _View, vb: _View, numeric: bool, tolerance: float,
                    progress: Progress | None = None) -> DiffReport:
    names = sorted((n for n in dict.fromkeys([*va.order, *vb.order]) if n in va.shapes or n in vb.shapes), key=_group_key)
    entries = [DiffEntry(n, _status(va.shapes.get(n), vb.shapes.get(n), va.dtypes.get(n), vb.dtypes.get(n)),
                         va.shapes.get(n), vb.shapes.get(n), va.dtypes.get(n), vb.dtypes.get(n),
                         va.shards.get(n, 0), vb.shards.get(n, 0), stored_a=va.stored.get(n, []), stored_b=vb.stored.get(n, []))
               for n in names]
    for e in entries:
        lacking = {"missing": sb, "unexpected": sa}.get(e.status)
        e.suggestion = _placing(lacking.unplaced, e.name) if lacking else ""
    report = DiffReport(sa, sb, CANONICAL, numeric, tolerance, entries)
    report.notes += [f"{s.format} {label}: {len(s.missing_stored)} expected stored tensor(s) absent from disk"
                     for label, s in (("A", sa), ("B", sb)) if s.missing_stored]
    if numeric:
        _numeric_canonical(report, va, vb, progress)
    return report


def _group_key(name: str) -> float:
    """Streaming-group position (embeddings, layers, head) so B-only names sit in their layer."""
    parts = name.split(".")
    return -1 if name == "embed" else int(parts[1]) if parts[0] == "layers" and parts[1].isdigit() else float("inf")


def _placing(unplaced: list[Unplaced], name: str) -> str:
    """The unplaced stored tensor that would fill canonical `name` once renamed."""
    return next((u.name for u in unplaced if any(_canon_rx(c).fullmatch(name) for c in u.canonical)), "")


class _Tolerant(CanonicalSource):
    """Reads like `source`, but a group it cannot read (a tensor missing) comes back empty and
    noted, so one broken layer does not stop the numeric pass over the others."""

    def __init__(self, source: CanonicalSource, label: str, notes: list[str]) -> None:
        self.source, self.label, self.notes = source, label, notes
        self.kind, self.spec, self.ckpt = source.kind, source.spec, source.ckpt

    def read(self, group: int) -> dict[str, torch.Tensor]:
        try:
            return self.source.read(group)
        except _UNREADABLE as exc:
            self.notes.append(f"numeric: {group_label(self.spec, group)} of {self.label} not compared (cannot read: {exc})")
            return {}

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        return self.source.account(user_ignores)


def _numeric_canonical(report: DiffReport, va: _View, vb: _View, progress: Progress | None = None) -> None:
    """Max abs difference per canonical tensor, one group per side in memory (verify's pass)."""
    compared = VerifyReport(report.a.path, report.b.path)
    compare_tensors(_Tolerant(va.source, "A", report.notes), _Tolerant(vb.source, "B", report.notes), compared, progress)
    report.notes += compared.notes
    found = {t.name: t for t in compared.tensors}
    for e in report.entries:
        t = found.get(e.name)
        if t is None:
            continue
        e.shape_a, e.shape_b, e.max_abs = t.shape_a, t.shape_b, t.max_abs  # read shapes are the truth
        e.status = _status(e.shape_a, e.shape_b, e.dtype_a, e.dtype_b)
        if e.status == "same" and (e.max_abs or 0.0) > report.tolerance:
            e.status = "values"


# ----- stored-name fallback ---------------------------------------------------------------------
def _stored_diff(sa: Side, sb: Side, ca: Checkpoint, cb: Checkpoint, numeric: bool, tolerance: float,
                 progress: Progress | None = None) -> DiffReport:
    # both sides by stored names, whichever could not be opened; drop what a canonical view found
    sa, sb = (dataclasses.replace(s, mode=STORED, model="", unplaced=[], ignored={}, missing_stored=[], suggested_renames=[])
              for s in (sa, sb))
    ia, ib = _index(ca), _index(cb)
    entries = [_stored_entry(n, ia.get(n, []), ib.get(n, [])) for n in sorted(ia.keys() | ib.keys(), key=natural_key)]
    _suggest(entries)
    why = "; ".join(f"{label}: {s.reason}" for label, s in (("A", sa), ("B", sb)) if s.reason)
    report = DiffReport(sa, sb, STORED, numeric, tolerance, entries,
                        [f"compared by stored names: no canonical view ({why})"])
    if numeric:
        _numeric_stored(report, ca, cb, ia, ib, progress)
    return report


def _stored_entry(name: str, a: list[TensorInfo], b: list[TensorInfo]) -> DiffEntry:
    """Shard shapes decide `shape` (a TP2 name vs a TP1 name differ); the first shard is shown."""
    shapes_a = tuple(tuple(t.shape) for t in a) or None
    shapes_b = tuple(tuple(t.shape) for t in b) or None
    dtype_a, dtype_b = (_dtype_label(a) or None), (_dtype_label(b) or None)
    return DiffEntry(name, _status(shapes_a, shapes_b, dtype_a, dtype_b), shapes_a[0] if shapes_a else None,
                     shapes_b[0] if shapes_b else None, dtype_a, dtype_b, len(a), len(b),
                     stored_a=[name] if a else [], stored_b=[name] if b else [])


def _suggest(entries: list[DiffEntry]) -> None:
    """Names on one side only: the closest name on the other side only with the same layer /
    expert numbers (difflib); a rename keeps them, and the buckets keep difflib fast."""
    pools = {"missing": _by_indices(e.name for e in entries if e.status == "unexpected"),
             "unexpected": _by_indices(e.name for e in entries if e.status == "missing")}
    for e in entries:
        candidates = pools.get(e.status, {}).get(_pattern(e.name)[1], [])
        near = difflib.get_close_matches(e.name, candidates, n=1, cutoff=0.6) if candidates else []
        e.suggestion = near[0] if near else ""


def _by_indices(names: Iterable[str]) -> dict[tuple[int, ...], list[str]]:
    out: dict[tuple[int, ...], list[str]] = {}
    for name in names:
        out.setdefault(_pattern(name)[1], []).append(name)
    return out


def _numeric_stored(report: DiffReport, ca: Checkpoint, cb: Checkpoint, ia: dict[str, list[TensorInfo]],
                    ib: dict[str, list[TensorInfo]], progress: Progress | None = None) -> None:
    """Shard by shard, one pair of stored tensors in memory at a time."""
    for done, e in enumerate(report.entries):
        if progress is not None:
            progress("comparing tensors", done, len(report.entries))
        if e.status not in ("same", "dtype"):
            continue
        try:
            e.max_abs = max((_max_abs(ca.load(x), cb.load(y)) for x, y in zip(ia[e.name], ib[e.name], strict=True)), default=0.0)
        except _UNREADABLE as exc:
            report.notes.append(f"numeric: {e.name} not compared (cannot read: {exc})")
            continue
        if e.status == "same" and e.max_abs > report.tolerance:
            e.status = "values"


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """verify's measure: max |a - b| in float64 (0 for empty tensors)."""
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max()) if a.numel() else 0.0


# ----- folding for display ----------------------------------------------------------------------
def _pattern(name: str) -> tuple[str, tuple[int, ...]]:
    """`layers.3.experts.1.up` -> (`layers.{}.experts.{}.up`, (3, 1))."""
    return _INDEX_RE.sub("{}", name), tuple(int(n) for n in _INDEX_RE.findall(name))


def _label(names: list[str]) -> str:
    """Names sharing one pattern as one label with index ranges (`layers.{0..3}.mlp.up`)."""
    names = [n for n in names if n]
    if len(names) <= 1:
        return names[0] if names else ""
    pattern, _ = _pattern(names[0])
    indices = [_pattern(n)[1] for n in names]
    return Row(pattern, [ix for ix in indices if ix]).name


def _fold(members: list[DiffEntry]) -> DiffRow:
    first = members[0]
    values = [e.max_abs for e in members if e.max_abs is not None]
    return DiffRow(first.status, _label([e.name for e in members]), len(members), first.shape_a, first.shape_b,
                   first.dtype_a, first.dtype_b, first.shards_a, first.shards_b, max(values) if values else None,
                   _label([e.suggestion for e in members]))


def _list(shape: Shape | None) -> list[int] | None:
    return list(shape) if shape is not None else None


# ---------------------------------------------------------------------------------------------
# check_target
# ---------------------------------------------------------------------------------------------
def check_target(path: str | Path, target_format: str, *, config: str | Path | None = None,
                 true_vocab: int | None = None, ignore: tuple[str, ...] = (), renames: Renames | None = None,
                 **layout: Any) -> CheckReport:
    """What `convert --to target_format` would make of `path` (layout: tp, pp, ep, pp_layers, dtype, ...).

    Runs the converter's own planning (`make_plan`), so the answer is the converter's answer.
    """
    plan = make_plan(path, TargetOptions(target_format, **layout), config=config, true_vocab=true_vocab, ignore=ignore,
                     renames=renames)
    acc, spec, t = plan.accounting, plan.spec, plan.target
    return CheckReport(
        source=str(path), source_format=plan.ckpt.kind, source_layout=plan.ckpt.parallel.label(),
        target={"format": t.format, "tp": t.tp, "pp": t.pp, "ep": t.ep, "pp_layers": t.pp_layers,
                "dtype": str(plan.writer.dtype).removeprefix("torch.") if plan.writer else None},
        model=f"{spec.family}: {spec.layers} layers, hidden {spec.hidden}, vocab {spec.vocab}"
              + (f"; quirks: {'; '.join(spec.quirks())}" if spec.quirks() else ""),
        mapped=_mapped_rules(acc),
        ignored=dict(Counter(acc.ignored.values())),
        unplaced=_unplaced(plan.source, acc, _index(plan.ckpt)),
        missing=list(acc.missing),
        layout_errors=[e for e in plan.errors if not _ACCOUNTING_ERROR.match(e)],
        errors=list(plan.errors),
        files=[{"path": f.rel, "tensors": f.tensors, "bytes": f.nbytes} for f in plan.files],
        total_bytes=plan.total_bytes if plan.writer else 0,
        warnings=list(plan.warnings), notes=list(plan.notes),
        renamed=dict(plan.renamed), suggested_renames=list(plan.suggested_renames),
    )


def _mapped_rules(acc: Accounting) -> list[MappedRule]:
    """Mapped stored tensors folded over layer numbers: one rule per stored pattern."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for stored, canonical in acc.mapped.items():
        joined = ", ".join(canonical)
        groups.setdefault((_pattern(stored)[0], _pattern(joined)[0]), []).append((stored, joined))
    return [MappedRule(_label([s for s, _ in pairs]), _label([c for _, c in pairs]), len(pairs)) for pairs in groups.values()]
