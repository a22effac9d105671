"""Rich rendering of headless inspection results for the CLI (no parsing here)."""

from __future__ import annotations

from typing import Any

import humanize
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ckptscope.inspectors.model import Checkpoint, TensorInfo
from ckptscope.inspectors.stats import TensorStats
from ckptscope.inspectors.summary import arch_fields, collapse, logical_param_count, printable, shard_files_label

MAX_FILE_ROWS = 24


def make_console() -> Console:
    """Terminal width when interactive; wide enough for long tensor names when piped."""
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    return console


def size(n: int) -> str:
    return humanize.naturalsize(n, binary=True)


def count(n: int) -> str:
    return humanize.intword(n, "%.2f") if n >= 1_000_000 else humanize.intcomma(n)


def overview(ckpt: Checkpoint) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    grid.add_row("path", Text(printable(ckpt.path)))
    grid.add_row("format", Text(f"{ckpt.kind}  ({printable(ckpt.format_detail)})" if ckpt.format_detail else ckpt.kind))
    if ckpt.iteration is not None:
        others = [str(i) for i in ckpt.iterations]
        extra = f"  (available: {', '.join(others)})" if len(others) > 1 else ""
        grid.add_row("iteration", Text(f"{ckpt.iteration}{extra}"))
    grid.add_row("layout", Text(ckpt.parallel.label()))
    grid.add_row("files", Text(f"{len(ckpt.files)} ({shard_files_label(ckpt)}), {size(ckpt.total_bytes)}"))
    grid.add_row("complete", Text("yes" if ckpt.complete else "NO", style="green" if ckpt.complete else "bold red"))
    return grid


def files_table(ckpt: Checkpoint) -> Table:
    table = Table(title="Files", title_justify="left", expand=False, show_edge=False)
    table.add_column("file", overflow="fold")
    table.add_column("role")
    table.add_column("ranks")
    table.add_column("size", justify="right")
    for f in ckpt.files[:MAX_FILE_ROWS]:
        table.add_row(Text(printable(f.rel)), f.role, f.ranks.label(), size(f.size))
    if len(ckpt.files) > MAX_FILE_ROWS:
        rest = ckpt.files[MAX_FILE_ROWS:]
        table.add_row(Text(f"... {len(rest)} more", style="dim"), "", "", size(sum(f.size for f in rest)))
    return table


def tensors_table(tensors: list[TensorInfo], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("tensor (layers collapsed)", overflow="fold", ratio=3)
    table.add_column("shape (as stored)")
    table.add_column("dtype")
    table.add_column("shards", justify="right")
    table.add_column("elements", justify="right")
    table.add_column("bytes", justify="right")
    for row in collapse(tensors):
        table.add_row(
            Text(printable(row.name)),
            Text(row.shape_label),
            ",".join(sorted(row.dtypes)),
            str(row.shards),
            count(row.numel),
            size(row.nbytes),
        )
    return table


def totals(ckpt: Checkpoint) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan")
    grid.add_column()
    grid.add_row("parameters", f"{count(logical_param_count(ckpt))} (stored elements across shards: {count(ckpt.param_count())})")
    for dtype, n in ckpt.bytes_by_dtype().items():
        grid.add_row(f"  {dtype}", size(n))
    other = [t for t in ckpt.tensors if t.group != "model"]
    if other:
        grid.add_row("non-model tensors", f"{len(other)} (optimizer/rng), {size(sum(t.nbytes for t in other))}")
    if ckpt.objects:
        grid.add_row("objects", f"{len(ckpt.objects)} non-tensor entries (e.g. {printable(ckpt.objects[0].name, 80)})")
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
        table.add_row(key, Text(printable(value, 120)))
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


def render_inspect(console: Console, ckpt: Checkpoint, tensors: list[TensorInfo], stats: list[TensorStats] | None, show_all: bool) -> None:
    console.print(overview(ckpt))
    console.print()
    console.print(files_table(ckpt))
    console.print()
    model = [t for t in tensors if t.group == "model"]
    console.print(tensors_table(model, f"Model tensors ({len(model)} stored)"))
    if show_all:
        other = [t for t in tensors if t.group != "model"]
        if other:
            console.print(tensors_table(other, f"Other tensors ({len(other)})"))
    console.print()
    console.print(totals(ckpt))
    meta = metadata_table(ckpt)
    if meta is not None:
        console.print()
        console.print(meta)
    if stats:
        console.print()
        console.print(stats_table(stats))
    panel = warnings_panel(ckpt)
    if panel is not None:
        console.print()
        console.print(panel)


def stats_table(stats: list[TensorStats]) -> Table:
    table = Table(title="Statistics", title_justify="left", show_edge=False)
    for col in ("tensor", "file", "min", "max", "mean", "std", "NaN", "Inf"):
        table.add_column(col, justify="left" if col in ("tensor", "file") else "right")
    for s in stats:
        bad = "bold red" if (s.nan or s.inf) else ""
        table.add_row(Text(printable(s.name)), Text(printable(s.file)), _g(s.min), _g(s.max), _g(s.mean), _g(s.std),
                      Text(str(s.nan), style=bad), Text(str(s.inf), style=bad))
    return table


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
    grid.add_row("source", Text(f"{printable(plan.source_path)}  ({plan.ckpt.kind}, {plan.ckpt.parallel.label()})"))
    t = plan.target
    layout = "" if t.format == "hf" else f", TP{t.tp}×PP{t.pp}" + (f"×EP{t.ep}" if t.ep > 1 else "") + (
        f" (layers per stage {','.join(map(str, t.pp_layers))})" if t.pp_layers else "") + f", {t.megatron_spec} spec"
    grid.add_row("target", Text(f"{t.format}{layout}, {str(plan.writer.dtype)[6:] if plan.writer else '?'}"))
    grid.add_row("model", Text(f"{spec.family}: {spec.layers} layers, hidden {spec.hidden}, heads {spec.heads}/{spec.kv_heads} kv, "
                               f"ffn {spec.expert_ffn or spec.ffn}, vocab {spec.vocab}"
                               + (f" (stored {spec.padded_vocab})" if spec.padded_vocab and spec.padded_vocab != spec.vocab else "")
                               + (f", {spec.experts} experts top-{spec.topk}" if spec.moe else "") + (", tied" if spec.tied else "")))
    grid.add_row("tensors", Text(f"{len(acc.mapped)} mapped, {len(acc.ignored)} ignored by rule, {len(acc.unmatched)} unmatched, "
                                 f"{len(acc.missing)} missing"))
    grid.add_row("output", Text(f"{len(plan.files)} files, {size(plan.total_bytes)} of tensors"))
    console.print(grid)
    if acc.ignored:
        rules: dict[str, int] = {}
        for rule in acc.ignored.values():
            rules[rule] = rules.get(rule, 0) + 1
        console.print(Text("ignored: " + "; ".join(f"{n} × {printable(r)}" for r, n in rules.items()), style="dim"))
    files = Table(title="Output files", title_justify="left", show_edge=False)
    files.add_column("file", overflow="fold")
    files.add_column("tensors", justify="right")
    files.add_column("≈ size", justify="right")
    for f in plan.files[:MAX_FILE_ROWS]:
        files.add_row(Text(f.rel), str(f.tensors or ""), size(f.nbytes) if f.nbytes else "")
    if len(plan.files) > MAX_FILE_ROWS:
        files.add_row(Text(f"... {len(plan.files) - MAX_FILE_ROWS} more", style="dim"), "", "")
    console.print(files)
    for note in plan.notes:
        console.print(Text("note: " + printable(note), style="dim"))
    for w in plan.warnings:
        console.print(Text("warning: " + printable(w), style="yellow"))
    for e in plan.errors:
        console.print(Text("error: " + printable(e, 4000), style="bold red"))


def render_verify(console: Console, report: Any) -> None:
    differing = [t for t in report.tensors if not t.equal]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan")
    grid.add_column()
    grid.add_row("tensors", Text(f"{len(report.tensors)} compared, {len(differing)} differ, "
                                 f"{len(report.only_a)} only in A, {len(report.only_b)} only in B",
                                 style="green" if report.identical else "yellow"))
    if differing:
        worst = max(differing, key=lambda t: t.max_abs if t.max_abs is not None else float("inf"))
        grid.add_row("largest diff", Text(f"{printable(worst.name)}: {worst.max_abs if worst.max_abs is not None else 'shape ' + str(worst.shape_a) + ' vs ' + str(worst.shape_b)}"))
    if report.logits_max_abs is not None:
        ok = report.logits_ok
        grid.add_row("logits", Text(f"max abs diff {report.logits_max_abs:.3g} ({report.logits_how[0]} vs {report.logits_how[1]}; "
                                    f"tolerance {report.tolerance:g}) {'OK' if ok else 'MISMATCH'}", style="green" if ok else "bold red"))
    for note in report.notes:
        grid.add_row("note", Text(printable(note)))
    console.print(grid)
