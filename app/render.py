"""Rich rendering of headless inspection results for the CLI (no parsing here)."""

from __future__ import annotations

import functools
import os
import shlex
from typing import Any

import humanize
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ckptscope.app.safe import row
from ckptscope.converters.formats import TARGETS
from ckptscope.inspectors.model import Checkpoint, TensorInfo, training_state
from ckptscope.inspectors.rankmap import AXES, PARTS as RANK_PARTS, RankCell, RankMap, rank_map, span
from ckptscope.inspectors.stats import TensorStats
from ckptscope.inspectors.summary import arch_fields, collapse, logical_param_count, printable, shard_files_label

MAX_FILE_ROWS = 24


PIPED_WIDTH = 32_767  # piped output is not wrapped: one tensor per line, whole names, for grep / awk


def make_console() -> Console:
    """The terminal's width when interactive; when piped, no wrapping (`COLUMNS` still wins)."""
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        columns = os.environ.get("COLUMNS", "")
        console = Console(highlight=False, width=int(columns) if columns.isdigit() and int(columns) > 0 else PIPED_WIDTH)
    return console


@functools.lru_cache(maxsize=4096)
def size(n: int) -> str:
    """Cached: a 300k-row listing repeats a few sizes, and humanize costs ~15 µs a call."""
    return humanize.naturalsize(n, binary=True)


@functools.lru_cache(maxsize=4096)
def count(n: int) -> str:
    return humanize.intword(n, "%.2f") if n >= 1_000_000 else humanize.intcomma(n)


def overview(ckpt: Checkpoint) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    row(grid, "path", Text(printable(ckpt.path)))
    row(grid, "format", Text(f"{ckpt.kind}  ({printable(ckpt.format_detail)})" if ckpt.format_detail else ckpt.kind))
    if ckpt.iteration is not None:
        others = [str(i) for i in ckpt.iterations]
        extra = f"  (available: {', '.join(others)})" if len(others) > 1 else ""
        row(grid, "iteration", Text(printable(f"{ckpt.iteration}{extra}")))  # NxD tags are folder names
    row(grid, "layout", Text(ckpt.parallel.label()))
    row(grid, "files", Text(f"{len(ckpt.files)} ({shard_files_label(ckpt)}), {size(ckpt.total_bytes)}"))
    row(grid, "complete", Text("yes" if ckpt.complete else "NO", style="green" if ckpt.complete else "bold red"))
    return grid


def files_table(ckpt: Checkpoint) -> Table:
    table = Table(title="Files", title_justify="left", expand=False, show_edge=False)
    table.add_column("file", overflow="fold")
    table.add_column("role")
    table.add_column("ranks")
    table.add_column("size", justify="right")
    for f in ckpt.files[:MAX_FILE_ROWS]:
        row(table, Text(printable(f.rel)), f.role, f.ranks.label(), size(f.size))
    if len(ckpt.files) > MAX_FILE_ROWS:
        rest = ckpt.files[MAX_FILE_ROWS:]
        row(table, Text(f"... {len(rest)} more", style="dim"), "", "", size(sum(f.size for f in rest)))
    return table


TENSOR_COLUMNS = (("tensor (layers collapsed)", "left"), ("shape (as stored)", "left"), ("dtype", "left"), ("shards", "right"),
                  ("elements", "right"), ("bytes", "right"))
STATS_COLUMNS = (("tensor", "left"), ("file", "left"), ("min", "right"), ("max", "right"), ("mean", "right"), ("std", "right"),
                 ("NaN", "right"), ("Inf", "right"))
MAX_TABLE_ROWS = 2000  # above this a rich Table costs ~1 ms a row and holds every line in memory: plain lines instead


def tensor_rows(tensors: list[TensorInfo]) -> list[list[Any]]:
    """One row per collapsed group: name, shape, dtype(s), shards, elements, bytes."""
    return [[group.name, group.shape_label, ",".join(sorted(group.dtypes)),  # xser info files store dtype names as strings
             str(group.shards), count(group.numel), size(group.nbytes)] for group in collapse(tensors)]  # str cells: escaped when shown


def tensors_table(tensors: list[TensorInfo], title: str) -> Table:
    return listing_table(title, TENSOR_COLUMNS, tensor_rows(tensors))


def listing_table(title: str, columns: tuple[tuple[str, str], ...], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    for n, (name, justify) in enumerate(columns):
        table.add_column(name, justify=justify, **({"overflow": "fold", "ratio": 3} if n == 0 else {}))  # type: ignore[arg-type]
    for cells in rows:
        row(table, *cells)
    return table


def print_listing(console: Console, title: str, columns: tuple[tuple[str, str], ...], rows: list[list[Any]]) -> None:
    """A table, or for a very long one (300k tensor names that do not collapse) aligned plain lines:
    the same cells, the name last, written in blocks, linear time and no whole-table layout."""
    if len(rows) <= MAX_TABLE_ROWS:
        console.print(listing_table(title, columns, rows))
        return
    cell = functools.lru_cache(maxsize=65536)(printable)  # shapes, dtypes, sizes repeat across rows
    cells = [[*(cell(c.plain if isinstance(c, Text) else c) for c in r[1:]), printable(r[0].plain if isinstance(r[0], Text) else r[0])]
             for r in rows]
    heads = [name for name, _ in (*columns[1:], columns[0])]
    justs = [just for _, just in (*columns[1:], columns[0])]
    widths = [max(len(heads[i]), *(len(c[i]) for c in cells)) for i in range(len(heads) - 1)]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if j == "right" else v.ljust(w) for v, w, j in zip(values, widths, justs)]
        return "  ".join([*padded, values[-1]])

    console.print(Text(f"{title} (plain listing: more than {MAX_TABLE_ROWS:,} rows)", style="italic"))
    console.print(Text(line(heads), style="bold"))
    console.file.flush()
    for start in range(0, len(cells), 10_000):
        console.file.write("\n".join(line(c) for c in cells[start:start + 10_000]) + "\n")
    console.file.flush()


def rank_cell_lines(cell: RankCell) -> list[str]:
    """What one rank holds, a few short lines: layers, experts, whole-model parts, bytes."""
    def numbered(what: str, values: set[int]) -> str:
        return f"{what}{'s' if len(values) > 1 else ''} {span(values)}" if values else ""

    lines = [numbered("layer", cell.layers), numbered("expert", cell.experts), numbered("pipeline module", cell.modules),
             "+ " + ", ".join(p for p, _ in RANK_PARTS if p in cell.parts) if cell.parts else "",
             size(cell.size) + (f" in {len(cell.files)} files" if len(cell.files) > 1 else "")]
    return [line for line in lines if line]


def rank_file_label(cell: RankCell, same_names: bool) -> str:
    """The file a rank writes, shortly: its folder when every rank's file has one name
    (`mp_rank_00_001`), else its name (`dp_rank_00_tp_rank_00_pp_rank_01.pt`)."""
    first = cell.files[0].rsplit("/", 2)
    shown = first[-2] if same_names and len(first) > 1 else first[-1]
    return shown + (f" +{len(cell.files) - 1}" if len(cell.files) > 1 else "")


def rank_cell(cell: RankCell | None, same_names: bool = False, unwritten: bool = False) -> Group | Text:
    if cell is None:
        return Text("not written (experts' own TP)", style="dim") if unwritten else Text("MISSING", style="bold red")
    return Group(Text(printable(rank_file_label(cell, same_names)), style="dim"), *(Text(line) for line in rank_cell_lines(cell)))


def rank_map_table(rmap: RankMap) -> Table:
    """The rank-layout map: rows are pipeline / expert ranks, columns TP ranks (one row per file
    for checkpoints without ranks); a grid position no file fills says MISSING, one the writer never
    fills (Megatron experts with a TP of their own) "not written"."""
    if rmap.by_file:
        table = Table(title="Rank layout (one row per file: what each holds)", title_justify="left", show_edge=False)
        for col in ("file", "holds", "tensors"):
            table.add_column(col, justify="right" if col == "tensors" else "left", overflow="fold")
        for key in rmap.rows():
            cell = rmap.cells[key]
            row(table, Text(printable(cell.files[0])), " · ".join(rank_cell_lines(cell)), str(cell.tensors))
        return table
    shown = "×".join(f"{a.upper()}{rmap.sizes[a]}" for a in (*rmap.axes, *(("etp",) if "etp" in rmap.sizes else ())))
    table = Table(title=f"Rank layout ({shown})", title_justify="left", show_lines=True)
    table.add_column("rank", style="bold")
    for column in rmap.columns():
        table.add_column("-" if column is None else f"tp{column}")
    same_names = len({f.rsplit("/", 1)[-1] for c in rmap.cells.values() for f in c.files}) == 1
    for key in rmap.rows():
        label = " ".join(f"{a}{v}" for a, v in zip(AXES[1:], key) if v is not None) or "-"
        cells = [(rmap.at(key, column), (column, *key) in rmap.unwritten) for column in rmap.columns()]
        row(table, label, *[rank_cell(c, same_names, unwritten) for c, unwritten in cells])
    return table


def totals(ckpt: Checkpoint) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan")
    grid.add_column()
    buffers = logical_param_count(ckpt, buffers=True)
    row(grid, "parameters", f"{count(logical_param_count(ckpt))}" + (f" + {count(buffers)} in buffers" if buffers else "")
        + f" (stored elements across shards: {count(ckpt.param_count())})")
    for dtype, n in ckpt.bytes_by_dtype().items():
        row(grid, Text(printable(f"  {dtype}")), size(n))
    other = [t for t in ckpt.tensors if t.group != "model"]
    if other:
        row(grid, "non-model tensors", f"{len(other)} (optimizer/rng), {size(sum(t.nbytes for t in other))}")
    if ckpt.objects:
        row(grid, "objects", f"{len(ckpt.objects)} non-tensor entries (e.g. {printable(ckpt.objects[0].name, 80)})")
    for what, text in training_state(ckpt).items():
        if what != "iteration":  # the header names it
            row(grid, what, Text(printable(text, 500)))
    return grid


def metadata_table(ckpt: Checkpoint) -> Table | None:
    fields = arch_fields(ckpt)
    extra = {k: ckpt.metadata[k] for k in ("checkpoint_version", "ds_version") if k in ckpt.metadata}
    if not fields and not extra:
        return None
    table = Table(title="Architecture / training args", title_justify="left", show_edge=False, show_header=False)
    table.add_column(style="cyan")
    table.add_column()
    for key, value in {**fields, **extra}.items():
        row(table, key, Text(printable(value, 120)))
    return table


def warnings_panel(ckpt: Checkpoint) -> Panel | None:
    notes = list(ckpt.warnings)
    dtypes = {t.dtype for t in ckpt.model_tensors()}
    if len(dtypes) > 1:
        notes.append(f"mixed dtypes among model tensors: {', '.join(sorted(dtypes))}")
    if ckpt.placeholders:
        names = sorted(set(ckpt.placeholders))
        notes.append(f"{len(names)} pickled class(es) not on the allowlist were kept as inert placeholders: {', '.join(names[:6])}")
    if not notes:
        return None
    return Panel(Group(*(Text("• " + printable(n)) for n in notes)), title="warnings", border_style="yellow", expand=False)


def family_and_quirks(ckpt: Checkpoint) -> dict[str, Any]:
    """The model family and layout quirks the converters see in a checkpoint (interleaved rotary,
    padded vocab, layernorm-1p, tied head, ...): `{"family", "quirks", "problem"}`. Never raises:
    a checkpoint whose architecture cannot be read still inspects, with the reason in `problem`."""
    try:
        from ckptscope.converters.canonical_view import canonical_view

        view = canonical_view(ckpt)
    except Exception as exc:  # noqa: BLE001 - the family is extra information, never a failure of inspect
        return {"family": None, "quirks": [], "problem": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                "architecture": ""}
    return {"family": view.family or None, "quirks": list(view.quirks), "problem": view.problem or None,
            "architecture": view.architecture}


def add_family_rows(grid: Table, info: dict[str, Any]) -> Table:
    """`family` and `quirks` rows (from `family_and_quirks`) under an overview grid."""
    if info.get("architecture"):  # what a user looks for first: the model, its size and dtype
        row(grid, "model", Text(printable(f"{info['architecture']} · {count(info['parameters'])} parameters · {info['dtypes']}", 1000)))
    if info["family"]:
        row(grid, "family", Text(printable(info["family"])))
        row(grid, "quirks", Text(printable("; ".join(info["quirks"]) or "none", 1000)))
    else:
        row(grid, "family", Text(printable(f"unknown ({info['problem'] or 'no architecture'})", 300), style="dim"))
    return grid


def render_inspect(console: Console, ckpt: Checkpoint, tensors: list[TensorInfo], stats: list[TensorStats] | None, show_all: bool,
                   family: dict[str, Any] | None = None) -> None:
    family = dict(family if family is not None else family_and_quirks(ckpt))
    family.update(parameters=logical_param_count(ckpt), dtypes=" + ".join(ckpt.bytes_by_dtype()) or "-")
    console.print(add_family_rows(overview(ckpt), family))
    console.print()
    console.print(files_table(ckpt))
    console.print()
    rmap = rank_map(ckpt)
    if len(rmap.cells) > 1 or rmap.missing:  # one file holding everything has no layout to draw
        console.print(rank_map_table(rmap))
        console.print()
    model = [t for t in tensors if t.group == "model"]
    print_listing(console, f"Model tensors ({len(model)} stored)", TENSOR_COLUMNS, tensor_rows(model))
    if show_all:
        other = [t for t in tensors if t.group != "model"]
        if other:
            print_listing(console, f"Other tensors ({len(other)})", TENSOR_COLUMNS, tensor_rows(other))
    console.print()
    console.print(totals(ckpt))
    meta = metadata_table(ckpt)
    if meta is not None:
        console.print()
        console.print(meta)
    if stats:
        console.print()
        print_listing(console, "Statistics", STATS_COLUMNS, stats_rows(stats))
    panel = warnings_panel(ckpt)
    if panel is not None:
        console.print()
        console.print(panel)


def stats_rows(stats: list[TensorStats]) -> list[list[Any]]:
    rows = []
    for s in stats:
        bad = "bold red" if (s.nan or s.inf) else ""
        rows.append([Text(printable(s.name)), Text(printable(s.file)), _g(s.min), _g(s.max), _g(s.mean), _g(s.std),
                     Text(str(s.nan), style=bad), Text(str(s.inf), style=bad)])
    return rows


def stats_table(stats: list[TensorStats]) -> Table:
    return listing_table("Statistics", STATS_COLUMNS, stats_rows(stats))


def _g(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


# ----- conversion ------------------------------------------------------------------------------
def render_plan(console: Console, plan: Any) -> None:
    """The plan before a run: what maps where, what is dropped, what will be written."""
    spec = plan.spec
    acc = plan.accounting
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    row(grid, "source", Text(f"{printable(plan.source_path)}  ({plan.ckpt.kind}, {plan.ckpt.parallel.label()})"))
    t = plan.target
    layout = "" if TARGETS[t.format].whole_model else f", TP{t.tp}×PP{t.pp}" + (f"×EP{t.ep}" if t.ep > 1 else "") + (
        f" (layers per stage {','.join(map(str, t.pp_layers))})" if t.pp_layers else "") + f", {t.megatron_spec} spec"
    row(grid, "target", Text(f"{t.format}{layout}, {str(plan.writer.dtype)[6:] if plan.writer else '?'}"))
    row(grid, "model", Text(printable(f"{spec.family}: {spec.layers} layers, hidden {spec.hidden}, heads {spec.heads}/{spec.kv_heads} kv, "
                            f"{spec.ffn_label()}, vocab {spec.vocab}"
                            + (f" (stored {spec.padded_vocab})" if spec.padded_vocab and spec.padded_vocab != spec.vocab else "")
                            + (f", {spec.experts} experts top-{spec.topk}" if spec.moe else "") + (", tied" if spec.tied else ""), 1000)))
    row(grid, "tensors", Text(f"{len(acc.mapped)} mapped, {len(acc.ignored)} ignored by rule, {len(acc.unmatched)} unmatched, "
                              f"{len(acc.missing)} missing"))
    row(grid, "output", Text(f"{len(plan.files)} files, {size(plan.total_bytes)} of tensors"))
    console.print(grid)
    if acc.ignored:
        rules: dict[str, int] = {}
        for rule in acc.ignored.values():
            rules[rule] = rules.get(rule, 0) + 1
        console.print(Text("ignored: " + "; ".join(f"{n} × {printable(r)}" for r, n in rules.items()), style="dim"))
    print_renames(console, plan.renamed, plan.suggested_renames)
    print_files_and_messages(console, "Output files", [(f.rel, f.tensors, f.nbytes) for f in plan.files],
                             plan.notes, plan.warnings, [("error", e, 4000) for e in plan.errors])


def print_renames(console: Console, renamed: dict[str, str], suggested: list[str], label: str = "") -> None:
    """Each renamed tensor (old -> new, folded over layers) and the `--rename` rules that would fix unplaced ones."""
    from ckptscope.converters.renames import folded

    lines = folded(renamed)
    if lines:
        console.print(Text(f"{label}renamed ({len(renamed)} stored tensors):", style="bold"))
        for old, new, n in lines[:MAX_FILE_ROWS]:
            console.print(Text(f"  {printable(old)} -> {printable(new)}" + (f"  ×{n}" if n > 1 else "")))
        if len(lines) > MAX_FILE_ROWS:
            console.print(Text(f"  ... {len(lines) - MAX_FILE_ROWS} more", style="dim"))
    if suggested:
        console.print(Text(f"{label}fix the names: " + " ".join(f"--rename {printable(shlex.quote(r))}" for r in suggested),
                           style="bold yellow"))


def print_files_and_messages(console: Console, title: str, files: list[tuple[str, int, int]], notes: list[str],
                             warnings: list[str], errors: list[tuple[str, str, int]]) -> None:
    """The planned-files table and the note / warning / error lines shared by `convert` plans and `check`."""
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("file", overflow="fold")
    table.add_column("tensors", justify="right")
    table.add_column("≈ size", justify="right")
    for rel, tensors, nbytes in files[:MAX_FILE_ROWS]:
        row(table, Text(printable(rel)), str(tensors or ""), size(nbytes) if nbytes else "")
    if len(files) > MAX_FILE_ROWS:
        row(table, Text(f"... {len(files) - MAX_FILE_ROWS} more", style="dim"), "", "")
    console.print(table)
    for note in notes:
        console.print(Text("note: " + printable(note), style="dim"))
    for w in warnings:
        console.print(Text("warning: " + printable(w), style="yellow"))
    for label, e, limit in errors:
        console.print(Text(f"{label}: " + printable(e, limit), style="bold red"))


def verify_tensors_text(report: Any) -> tuple[str, bool]:
    """`N compared: K differ, M differ only in dtype (float32 -> bfloat16, equal after casting to
    bfloat16), ...`: a `--dtype` conversion is not counted as a difference in value; and whether
    anything differs beyond that."""
    recast = [t for t in report.tensors if not t.equal and t.dtype_only]  # B is exactly A cast
    valued = [t for t in report.tensors if not t.equal and not t.dtype_only]
    casts = sorted({f"{t.dtype_a} -> {t.dtype_b}, equal after casting to {t.coarser_dtype}" for t in recast})
    text = (f"{len(report.tensors)} compared: {len(valued)} differ"
            + (f", {len(recast)} differ only in dtype ({'; '.join(casts)})" if recast else "")
            + f", {len(report.only_a)} only in A, {len(report.only_b)} only in B")
    return text, bool(valued or report.only_a or report.only_b)


def render_verify(console: Console, report: Any) -> None:
    valued = [t for t in report.tensors if not t.equal and not t.dtype_only]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan")
    grid.add_column()
    line, differs = verify_tensors_text(report)
    row(grid, "tensors", Text(line, style="yellow" if differs else "green"))
    if valued:
        worst = max(valued, key=lambda t: t.max_abs if t.max_abs is not None else float("inf"))
        shown = (f"shape {worst.shape_a} vs {worst.shape_b}" if worst.max_abs is None else f"{worst.max_abs:.3g}"
                 + (f" ({worst.max_abs_cast:.3g} after casting both to {worst.coarser_dtype})" if worst.max_abs_cast is not None else ""))
        row(grid, "largest diff", Text(f"{printable(worst.name)}: {shown}"))
    row(grid, "architecture", Text("every field the same" if not report.config_differences else
                                   f"{len(report.config_differences)} field(s) differ", style="green" if not report.config_differences else "bold red"))
    for difference in report.config_differences:
        row(grid, "", Text(printable(difference), style="red"))
    if report.logits_max_abs is not None:
        ok = report.logits_ok
        cast = f"; both with weights rounded to {report.logits_cast}" if report.logits_cast else ""
        row(grid, "logits", Text(f"max abs diff {report.logits_max_abs:.3g} over {report.probe_tokens} tokens "
                                 f"({report.logits_how[0]} vs {report.logits_how[1]}; tolerance {report.tolerance:g}{cast}) "
                                 f"{'OK' if ok else 'MISMATCH'}", style="green" if ok else "bold red"))
    for note in report.notes:
        row(grid, "note", Text(printable(note)))
    console.print(grid)


def render_layers(console: Console, report: Any) -> None:
    """`verify --layers`: the verdict, a table of per-layer differences with a bar each, the sparkline."""
    from ckptscope.converters.layer_diff import BLOCKS, chart, sparkline

    if report.first is None:
        console.print(Text(f"all {len(report.rows) - 1} layers within tolerance {report.tolerance:g} "
                           f"({report.probe_tokens} tokens, reference forward on both)", style="bold green"))
    else:
        weights = ", ".join(f"{printable(n)} ({'shape' if d is None else f'{d:.3g}'})" for n, d in report.first_weights[:6])
        console.print(Text(f"first divergence: {report.first_label()} (beyond tolerance {report.tolerance:g})"
                           + (f"; weights that differ there: {weights}" if weights else ""), style="bold red"))
    table = Table(title="max / mean |A - B| by layer", title_justify="left", show_edge=False)
    table.add_column("layer", justify="right")
    for block in BLOCKS:
        table.add_column(block, justify="right")
    table.add_column("hidden max (log scale)")
    bars = chart(report)
    for r, (label, _, drawn) in zip(report.rows, bars, strict=True):
        cells = [f"{r.blocks[b].max_abs:.3g} / {r.blocks[b].mean_abs:.3g}" if b in r.blocks else "" for b in BLOCKS]
        mark = "bold red" if report.first is not None and r.layer == report.first[0] else ""
        row(table, Text(label, style=mark), *cells, Text(drawn, style="red" if drawn else ""))
    console.print(table)
    line = sparkline([r.worst() for r in report.rows if r.layer >= 0], report.tolerance)
    console.print(Text(f"by layer: {line}", style="dim"))
    if report.logits is not None:
        ok = report.logits.max_abs <= report.tolerance
        console.print(Text(f"logits: max abs diff {report.logits.max_abs:.3g}, mean {report.logits.mean_abs:.3g}",
                           style="green" if ok else "bold red"))
    for note in report.notes:
        console.print(Text("note: " + printable(note), style="dim"))


# ----- diff / check ----------------------------------------------------------------------------
DIFF_STYLES = {"same": "green", "missing": "bold red", "unexpected": "bold red", "shape": "yellow", "dtype": "yellow",
               "values": "magenta"}


def _shape_text(shape: tuple[int, ...] | None, shards: int = 0) -> str:
    """`[4096, 64]`, `-` when absent; `×N` shards only in stored-name mode (shapes are per shard)."""
    if shape is None:
        return "-"
    return "[" + ", ".join(str(d) for d in shape) + "]" + (f" ×{shards}" if shards > 1 else "")


def diff_summary(report: Any) -> Text:
    """One line: verdict, then counts per status and unplaced tensors per side."""
    c = report.counts
    parts = [f"{c[s]} {s}" for s in ("same", "missing", "unexpected", "shape", "dtype", "values") if c[s] or s == "same"]
    parts += [f"{c[k]} unplaced in {side}" for k, side in (("unplaced_a", "A"), ("unplaced_b", "B")) if c[k]]
    verdict, style = ("IDENTICAL", "bold green") if report.identical else ("DIFFERENT", "bold red")
    worst = ""
    if report.numeric:  # what was read, and what could not be: never a clean "0" over a partial read
        compared = sum(e.max_abs is not None for e in report.entries)
        skipped = len(report.not_compared)
        worst = (f"; max abs diff {report.max_abs:.3g} over {compared} tensor(s) compared" if report.max_abs is not None
                 else "; no values compared")
        worst += f", {skipped} not compared (unreadable, see notes)" if skipped else ""
    return Text(f"{verdict} ({report.mode} names): " + ", ".join(parts) + worst, style=style)


def diff_table(report: Any, rows: list[Any]) -> Table:
    """status, name, shapes, dtypes (max abs diff when numeric; suggestion when any) per folded row."""
    stored = report.mode == "stored"
    table = Table(title=f"Tensors ({'stored names' if stored else 'canonical names'}, layers collapsed)", title_justify="left",
                  show_edge=False)
    table.add_column("status")
    table.add_column("tensor", overflow="fold", ratio=3)
    for col in ("shape A", "shape B", "dtype A", "dtype B"):
        table.add_column(col)
    if report.numeric:
        table.add_column("max abs diff", justify="right")
    suggest = any(r.suggestion for r in rows)
    if suggest:
        table.add_column("suggestion (unplaced / nearest name)", overflow="fold", ratio=2)
    for r in rows:
        cells = [Text(r.status, style=DIFF_STYLES.get(r.status, "")), Text(printable(r.name)),
                 _shape_text(r.shape_a, r.shards_a if stored else 0), _shape_text(r.shape_b, r.shards_b if stored else 0),
                 r.dtype_a or "-", r.dtype_b or "-"]
        if report.numeric:
            cells.append("-" if r.max_abs is None else f"{r.max_abs:.3g}")
        if suggest:
            cells.append(Text(printable(r.suggestion)))
        row(table, *cells)
    return table


def unplaced_table(title: str, unplaced: list[Any], side_label: str | None = None) -> Table:
    """Stored tensors a canonical view cannot place, with the nearest expected name (the rule)."""
    table = Table(title=title, title_justify="left", show_edge=False)
    if side_label is not None:
        table.add_column("side")
    table.add_column("stored tensor", overflow="fold", ratio=2)
    table.add_column("shape")
    table.add_column("dtype")
    table.add_column("nearest rule (expected name)", overflow="fold", ratio=2)
    table.add_column("would fill", overflow="fold")
    for u in unplaced:
        side = [side_label] if side_label is not None else []
        row(table, *side, Text(printable(u.name)), _shape_text(u.shape), u.dtype, Text(printable(u.nearest or "-")),
                   Text(printable(", ".join(u.canonical) or "-")))
    return table


def render_diff(console: Console, report: Any, only_problems: bool = False) -> None:
    console.print(diff_summary(report))
    for label, side in (("A", report.a), ("B", report.b)):
        model = f"; {side.model}" if side.model else ""
        console.print(Text(f"{label}: {printable(side.path)}  ({side.format}, {side.layout}, {side.tensors} stored tensors{printable(model)})",
                           style="dim"))
    rows = report.rows(only_problems)
    if rows:
        console.print(diff_table(report, rows))
    for label, side in (("A", report.a), ("B", report.b)):
        if side.unplaced:
            console.print(unplaced_table(f"Stored tensors {label} cannot place ({len(side.unplaced)})", side.unplaced, label))
        print_renames(console, side.renamed, side.suggested_renames, f"{label} ")
        if side.ignored:
            console.print(Text(f"{label} ignored by rule: " + "; ".join(f"{n} × {printable(r)}" for r, n in side.ignored.items()),
                               style="dim"))
    for note in report.notes:
        console.print(Text("note: " + printable(note, 2000), style="dim"))


def render_check(console: Console, report: Any) -> None:
    c = report.counts
    t = report.target
    layout = "" if TARGETS[t["format"]].whole_model else f" TP{t['tp']}×PP{t['pp']}" + (f"×EP{t['ep']}" if t["ep"] > 1 else "")
    verdict, style = ("COMPATIBLE", "bold green") if report.ok else ("NOT CONVERTIBLE", "bold red")
    console.print(Text(f"{verdict}: {report.source_format} {report.source_layout} -> {t['format']}{layout}: "
                       f"{c['mapped']} mapped, {c['ignored']} ignored by rule, {c['unplaced']} unplaced, {c['missing']} missing, "
                       f"{c['layout_errors']} layout error(s), {c['files']} files", style=style))
    console.print(Text(f"source: {printable(report.source)}; model {printable(report.model)}; dtype {t['dtype'] or '?'}", style="dim"))
    mapped = Table(title="Mapped tensors (layers collapsed)", title_justify="left", show_edge=False)
    mapped.add_column("stored", overflow="fold", ratio=2)
    mapped.add_column("canonical", overflow="fold", ratio=2)
    mapped.add_column("count", justify="right")
    for rule in report.mapped:
        row(mapped, Text(printable(rule.stored)), Text(printable(rule.canonical)), str(rule.count))
    console.print(mapped)
    if report.ignored:
        console.print(Text("ignored: " + "; ".join(f"{n} × {printable(r)}" for r, n in report.ignored.items()), style="dim"))
    if report.unplaced:
        console.print(unplaced_table(f"Stored tensors the converter cannot place ({len(report.unplaced)})", report.unplaced))
    print_renames(console, report.renamed, report.suggested_renames)
    if report.missing:
        console.print(Text(f"missing ({len(report.missing)}): " + ", ".join(printable(n) for n in report.missing[:MAX_FILE_ROWS])
                           + (" ..." if len(report.missing) > MAX_FILE_ROWS else ""), style="bold red"))
    print_files_and_messages(console, "Target files", [(f["path"], f["tensors"], f["bytes"]) for f in report.files],
                             report.notes, report.warnings, [("layout error", e, 2000) for e in report.layout_errors])
