"""Inspect screen: tensor tree (lazy), tensor details with on-demand statistics, metadata,
summary and files. Everything shown comes from the headless inspectors/converters modules.
"""

from __future__ import annotations

import fnmatch
import re
import time
from typing import Any

import humanize
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.lazy import Lazy
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Sparkline, Static, TabbedContent, TabPane, Tree
from textual.widgets._tree import TreeNode
from textual.worker import get_current_worker

from ckptscope.app.safe import row, safe, safe_text
from ckptscope.inspectors.jsonable import jsonable
from ckptscope.inspectors.megatron_common import ARCH_FIELDS
from ckptscope.inspectors.model import global_shape, training_state
from ckptscope.inspectors.stats import tensor_stats
from ckptscope.inspectors.summary import arch_fields, printable, shard_files_label
from ckptscope.inspectors.tree import NON_MODEL, ModuleNode, build_tree

from ckptscope.themes import dtype_variable

from .messages import CheckpointExplained, StatsReady, TreeFiltered
from .opening import Explained, Opened, explain
from .safe_input import SafeInput

MAX_FILTER_EXPAND = 200
MAX_UNMATCHED_SHOWN = 20
TAB_FOCUS = {"tab-tensors": "#tensor-tree", "tab-metadata": "#meta-table", "tab-summary": "#summary-scroll",
             "tab-files": "#files-scroll", "tab-ranks": "#ranks-scroll"}
FILTER_DEBOUNCE = 0.12  # seconds of quiet typing before a 100k-name filter runs


def name_filter(query: str) -> re.Pattern[str]:
    """A substring, or a glob when the query has glob characters, as one compiled pattern."""
    pattern = query if any(ch in query for ch in "*?[") else f"*{query}*"
    return re.compile(fnmatch.translate(pattern))


def _size(n: int) -> str:
    return humanize.naturalsize(n, binary=True)


def _count(n: int) -> str:
    return humanize.intword(n, "%.1f") if n >= 1_000_000 else humanize.intcomma(n)


def _many(n: int, what: str) -> str:
    """`1 tensor`, `2 tensors`, `1,024 shards`."""
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _unmatched_below(names: Any) -> dict[str, int]:
    """Module path -> unmatched tensors at or below it (a handful of names: every prefix of each)."""
    counts: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            counts[prefix] = counts.get(prefix, 0) + 1
    return counts


class TensorTree(Tree[ModuleNode]):
    """Module tree; children are created only when a node is expanded."""

    BINDINGS = [
        Binding("s", "stats", "Stats", id="tensor-stats"),
        Binding("e", "expand_all_below", "Expand all below", id="tensor-expand", show=False),
    ]

    def __init__(self, root: ModuleNode, colours: dict[str, str], **kwargs: Any) -> None:
        super().__init__(Text("model"), data=root, **kwargs)
        self.colours = colours
        self.unmatched: dict[str, int] = {}  # module path -> tensors below it no rule places
        self.warning_style = "bold yellow"
        self.show_root = False
        self.guide_depth = 3

    def on_mount(self) -> None:
        self.warning_style = f"bold {self.app.theme_variables.get('warning', 'yellow')}"
        self.populate(self.root)
        self.root.expand()

    def process_label(self, label: str | Text) -> Text:
        """A label is literal text (Tree parses a `str` label as markup)."""
        return super().process_label(safe(label) if isinstance(label, str) else safe_text(label))

    def label_for(self, node: ModuleNode) -> Text:
        text = Text(printable(node.name), style="bold" if not node.shards else "")
        parts: list[tuple[str, str]] = []
        if node.shards:
            first = node.shards[0]
            whole = global_shape(node.shards)
            same = len({t.shape for t in node.shards}) == 1
            parts.append((_shape(whole) if same or whole != first.shape else "mixed shapes", ""))
            parts.append((printable(first.dtype), self.colours.get(first.dtype, "")))
            if first.chunks:
                parts.append((f"in {_many(len(first.chunks), 'chunk')}", "italic"))
            elif len(node.shards) > 1:
                parts.append((f"{len(node.shards)} shards of {_shape(first.shape)}" if whole != first.shape
                               else f"×{len(node.shards)} copies", "italic"))
            parts.append((_size(node.nbytes), "dim"))
        else:
            parts.append((f"{_many(node.tensors, 'tensor')} · {_count(node.numel)} {node.elements_label} · {_size(node.nbytes)}", "dim"))
        if self.unmatched.get(node.path):
            parts.append(("unmatched" if node.shards else f"{self.unmatched[node.path]} unmatched", self.warning_style))
        for part, style in parts:
            text.append("  ")  # separators stay unstyled: styled leading spaces are dropped when rendered
            text.append(part, style=style)
        return text

    def populate(self, tree_node: TreeNode[ModuleNode]) -> None:
        """Create the children of one node (once)."""
        module = tree_node.data
        if module is None or tree_node.children:
            return
        for child in module.sorted_children():
            if child.has_children:
                tree_node.add(self.label_for(child), data=child, allow_expand=True)
            else:
                tree_node.add_leaf(self.label_for(child), data=child)

    @on(Tree.NodeExpanded)
    def _expanded(self, event: Tree.NodeExpanded[ModuleNode]) -> None:
        self.populate(event.node)

    def action_stats(self) -> None:
        self.screen.action_stats()  # type: ignore[attr-defined]

    def action_expand_all_below(self) -> None:
        node = self.cursor_node
        if node is not None and node.data is not None and node.data.tensors <= MAX_FILTER_EXPAND:
            self._expand_recursive(node)

    def _expand_recursive(self, node: TreeNode[ModuleNode]) -> None:
        self.populate(node)
        node.expand()
        for child in node.children:
            if child.allow_expand:
                self._expand_recursive(child)

    def mark_unmatched(self, names: Any) -> None:
        """Flag tensors no rule places (and the modules above them) in the labels shown so far."""
        self.unmatched = _unmatched_below(names)
        if not self.unmatched:
            return
        stack = list(self.root.children)
        while stack:
            node = stack.pop()
            if node.data is not None and node.data.path in self.unmatched:
                node.set_label(self.label_for(node.data))
            stack.extend(node.children)

    def jump_to(self, path: str) -> bool:
        """Expand along `path` and move the cursor to it (used by the command palette)."""
        parts = path.split(".")
        module = self.root.data
        if module is not None and parts[0] not in module.children and NON_MODEL in module.children:
            parts.insert(0, NON_MODEL)  # optimizer / rng tensors live under their own top node
        node = self.root
        for part in parts:
            self.populate(node)
            node.expand()
            match = next((c for c in node.children if c.data is not None and c.data.name == part), None)
            if match is None:
                return False
            node = match
        self.call_after_refresh(self._land, node)
        return True

    def _land(self, node: TreeNode[ModuleNode]) -> None:
        self.move_cursor(node)
        self.scroll_to_node(node)


class InspectScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back", id="inspect-back"),
        Binding("slash", "focus_filter", "Filter", id="inspect-filter", key_display="/"),
        Binding("s", "stats", "Stats", id="inspect-stats"),
        Binding("x", "convert", "Convert", id="inspect-convert"),
        Binding("D", "diff", "Diff / check", id="inspect-diff"),
        Binding("1", "tab('tab-tensors')", "Tensors", id="tab-tensors", show=False),
        Binding("2", "tab('tab-metadata')", "Metadata", id="tab-metadata", show=False),
        Binding("3", "tab('tab-summary')", "Summary", id="tab-summary", show=False),
        Binding("4", "tab('tab-files')", "Files", id="tab-files", show=False),
        Binding("5", "tab('tab-ranks')", "Ranks", id="tab-ranks", show=False),
    ]

    def __init__(self, opened: Opened) -> None:
        super().__init__()
        self.opened = opened
        self.ckpt = opened.ckpt
        self.explained: Explained | None = None  # canonical view and totals, from a second worker
        self.head = ""  # the title bar's first line (format, layout, tensors, size, path)
        self.selected: ModuleNode | None = None
        self.palette_names: list[str] | None = None  # filled by the command palette on first use
        self.shown_at: float | None = None  # perf_counter() of the first paint (read by bench/)

    # ----- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        ckpt = self.ckpt
        head = f" {ckpt.kind} · " + (f"iter {ckpt.iteration} · " if ckpt.iteration is not None else "") + \
            f"{ckpt.parallel.label()} · {self._tensor_count()} · {_size(ckpt.total_bytes)} · {printable(ckpt.path)}"
        yield Header()
        self.head = head
        yield Static(head + "\n " + self._model_line(), classes="title-bar", markup=False, id="inspect-title")
        with TabbedContent(initial="tab-tensors", id="inspect-tabs"):
            with TabPane("Tensors", id="tab-tensors"):
                with Horizontal():
                    with Vertical(id="tensor-pane"):
                        yield SafeInput(placeholder="filter tensors: substring or glob (e.g. *layers.3.*qkv*)", id="tensor-filter")
                        yield TensorTree(self.opened.tree, self._dtype_colours(), id="tensor-tree")
                    with VerticalScroll(id="details"):
                        yield Static("Select a tensor.", id="details-info", markup=False)
                        yield Static("", id="details-stats", markup=False)
                        yield Sparkline([], id="histogram", summary_function=max)
            # Hidden panes mount after the first refresh: the tensor tree shows first.
            with TabPane("Metadata", id="tab-metadata"), Lazy(Vertical(id="meta-pane")):
                yield SafeInput(placeholder="search training args / config", id="meta-filter")
                yield DataTable(id="meta-table", zebra_stripes=True, cursor_type="row")
            with TabPane("Summary", id="tab-summary"), Lazy(VerticalScroll(id="summary-scroll")):
                yield Static(self._summary(), id="summary")
            with TabPane("Files", id="tab-files"), Lazy(VerticalScroll(id="files-scroll")):
                yield Static(self._files(), id="files")
            with TabPane("Ranks", id="tab-ranks"), Lazy(VerticalScroll(id="ranks-scroll")):
                yield Static(self._ranks(), id="ranks")
        yield Footer()

    def _model_line(self) -> str:
        """Architecture, parameters and dtype: what a user looks for first (the mapping step knows them)."""
        if self.explained is None:
            return "model: reading the architecture…"
        view = self.explained.view
        arch = printable(view.architecture) if view.spec is not None else "architecture unknown"
        dtypes = " + ".join(printable(d) for d in self.explained.bytes_by_dtype) or "-"
        return f"{arch} · {_count(self.explained.parameters)} parameters · {dtypes}"

    def _tensor_count(self) -> str:
        """Logical model tensors, and the stored pieces when shards split them."""
        logical = self.opened.tree.tensors
        stored = len(self.ckpt.model_tensors())
        return f"{logical:,} tensors" + (f" ({stored:,} stored)" if stored != logical else "")

    def on_mount(self) -> None:
        self.query_one(TensorTree).focus()
        self.call_after_refresh(self._shown)

    def _shown(self) -> None:
        """The first paint is done: now start the slower second step of opening."""
        self.shown_at = time.perf_counter()
        self.explain()

    @work(thread=True, exclusive=True, group="explain", exit_on_error=False, description="map tensors to canonical names")
    def explain(self) -> None:
        self.post_message(CheckpointExplained(explain(self.ckpt)))

    @on(CheckpointExplained)
    def _explained(self, message: CheckpointExplained) -> None:
        self.explained = message.explained
        self.query_one("#inspect-title", Static).update(self.head + "\n " + self._model_line())
        self.query_one(TensorTree).mark_unmatched(self.explained.view.unmatched)
        self._refresh_summary()
        if self.selected is not None and self.selected.shards:
            self._show_details(self.selected)

    def _dtype_colours(self) -> dict[str, str]:
        variables = self.app.theme_variables
        return {dtype: variables.get(dtype_variable(dtype), "") for dtype in {t.dtype for t in self.ckpt.tensors}}

    # ----- summary and files ---------------------------------------------------------------------
    def _refresh_summary(self) -> None:
        for summary in self.query("#summary").results(Static):  # absent until its lazy pane mounts
            summary.update(self._summary())

    def _summary(self) -> Table:
        ckpt, explained = self.ckpt, self.explained
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        row(table, "format", f"{ckpt.kind} ({printable(ckpt.format_detail)})")
        row(table, "path", printable(ckpt.path))
        if ckpt.iteration is not None:
            row(table, "iteration", f"{ckpt.iteration}" + (f" (available: {', '.join(map(str, ckpt.iterations))})" if len(ckpt.iterations) > 1 else ""))
        row(table, "layout", ckpt.parallel.label())
        row(table, "files", f"{len(ckpt.files)} ({shard_files_label(ckpt)}), {_size(ckpt.total_bytes)}")
        row(table, "complete", "yes" if ckpt.complete else "NO")
        if explained is None:
            row(table, "parameters", Text("counting… (mapping tensors to canonical names)", style="italic"))
            return table
        view = explained.view
        row(table, "parameters", _count(explained.parameters))
        for dtype, n in explained.bytes_by_dtype.items():
            row(table, f"  {dtype}", _size(n))
        if view.spec is not None:
            s = view.spec
            row(table, "model", f"{s.family}: {s.layers} layers, hidden {s.hidden}, {s.heads} heads / {s.kv_heads} kv, "
                                f"head dim {s.head_dim}, {s.ffn_label()}, vocab {s.vocab}"
                                + (f" (stored {s.padded_vocab})" if s.padded_vocab and s.padded_vocab != s.vocab else "")
                                + (f", {s.experts} experts top-{s.topk}" if s.moe else ""))
            if view.quirks:  # the same list `ckptscope inspect` and diff print
                row(table, "quirks", "; ".join(view.quirks))
            row(table, "mapping", f"{len(view.mapped)} stored tensors map to canonical names, {len(view.ignored)} ignored by rule, "
                                  f"{len(view.unmatched)} unmatched")
            for name, near in list(view.unmatched.items())[:MAX_UNMATCHED_SHOWN]:  # name them: they are what blocks a conversion
                row(table, "  unmatched", Text(printable(name) + (f"  (nearest rule: {printable(near)})" if near else "  (no rule close)"),
                                               style="yellow"))
            if len(view.unmatched) > MAX_UNMATCHED_SHOWN:
                row(table, "", Text(f"… {len(view.unmatched) - MAX_UNMATCHED_SHOWN} more (tensor tree: marked unmatched)", style="yellow"))
        elif view.problem:
            row(table, "model", Text(f"not convertible yet: {printable(view.problem)}", style="yellow"))
        for what, text in training_state(ckpt).items():  # what else the run saved (as `ckptscope inspect`)
            if what != "iteration":
                row(table, what, printable(text))
        for warning in ckpt.warnings:
            row(table, "warning", Text(printable(warning), style="yellow"))
        if ckpt.placeholders:
            row(table, "placeholders", Text(", ".join(printable(p) for p in sorted(set(ckpt.placeholders))[:8]), style="yellow"))
        return table

    def _files(self) -> Table:
        table = Table(expand=True, box=None)
        for col in ("file", "role", "ranks", "size"):
            table.add_column(col, justify="right" if col == "size" else "left")
        for f in self.ckpt.files:
            row(table, printable(f.rel), f.role, f.ranks.label(), _size(f.size))
        return table

    def _ranks(self) -> Any:
        """The rank-layout map (`ckptscope inspect` draws the same table)."""
        from ckptscope.app.render import rank_map_table
        from ckptscope.inspectors.rankmap import rank_map

        return rank_map_table(rank_map(self.ckpt))

    # ----- metadata ----------------------------------------------------------------------------
    def _rows(self) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []

        def walk(prefix: str, value: Any, depth: int = 0) -> None:
            if isinstance(value, dict) and depth < 3:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)
            else:
                rows.append((prefix, printable(value, 300)))

        walk("", jsonable(self.ckpt.metadata))
        return rows

    def _fill_metadata(self, query: str) -> None:
        table = self.query_one("#meta-table", DataTable)
        if not table.columns:
            table.add_columns("key", "value")
        table.clear()
        arch = set(ARCH_FIELDS) | set(arch_fields(self.ckpt))
        accent = self.app.theme_variables.get("arch-field", "bold")
        q = query.lower()
        for key, value in self._rows():
            if q and q not in key.lower() and q not in value.lower():
                continue
            leaf = key.rsplit(".", 1)[-1]
            style = f"bold {accent}" if leaf in arch else ""
            row(table, Text(key, style=style), Text(value, style=style))

    @on(Input.Changed, "#meta-filter")
    def _meta_filter(self, event: Input.Changed) -> None:
        self._fill_metadata(event.value)

    # ----- tensor filter -----------------------------------------------------------------------
    @on(Input.Changed, "#tensor-filter")
    def _tensor_filter(self, event: Input.Changed) -> None:
        query = event.value.strip()
        if not query:
            self.workers.cancel_group(self, "filter")
            self._show_tree(query, self.opened.tree)
            return
        self.filter_tree(query)

    @work(thread=True, exclusive=True, group="filter", exit_on_error=False, description="filter tensors")
    def filter_tree(self, query: str) -> None:
        """Debounced, off the UI thread: a keystroke cancels the previous filter."""
        worker = get_current_worker()
        if worker.is_cancelled:
            return
        time.sleep(FILTER_DEBOUNCE)
        if worker.is_cancelled:
            return
        match = name_filter(query).match
        tensors = [t for t in self.ckpt.tensors if match(t.global_name) or match(t.name)]
        root = build_tree(tensors, separate_non_model=True)
        if not worker.is_cancelled:
            self.post_message(TreeFiltered(query, root))

    @on(TreeFiltered)
    def _filtered(self, message: TreeFiltered) -> None:
        if message.query == self.query_one("#tensor-filter", Input).value.strip():
            self._show_tree(message.query, message.root)

    def _show_tree(self, query: str, root: ModuleNode) -> None:
        tree = self.query_one(TensorTree)
        tree.clear()
        tree.root.data = root
        tree.populate(tree.root)
        tree.root.expand()
        if query and root.tensors <= MAX_FILTER_EXPAND:
            for child in list(tree.root.children):
                if child.allow_expand:
                    tree._expand_recursive(child)

    def action_back(self) -> None:
        """Escape leaves a search box first, then the screen."""
        if isinstance(self.focused, Input):
            self.query_one(TensorTree if self.focused.id == "tensor-filter" else "#meta-table").focus()
            return
        self.app.action_back()  # type: ignore[attr-defined]

    def action_focus_filter(self) -> None:
        self.query_one(TabbedContent).active = "tab-tensors"
        self.query_one("#tensor-filter", Input).focus()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    @on(TabbedContent.TabActivated, "#inspect-tabs")
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """Focus the new pane (keys or mouse): focus left in a hidden pane would switch back."""
        if event.pane.id == "tab-metadata" and self.query("#meta-table") and not self.query_one("#meta-table", DataTable).row_count:
            self._fill_metadata(self.query_one("#meta-filter", Input).value)
        if event.pane.id == "tab-summary":
            self._refresh_summary()
        target = TAB_FOCUS.get(event.pane.id or "")
        focused = self.focused
        if target and not (focused is not None and event.pane in focused.ancestors):
            self.query_one(target).focus()

    # ----- details and stats -------------------------------------------------------------------
    @on(Tree.NodeHighlighted, "#tensor-tree")
    def _highlighted(self, event: Tree.NodeHighlighted[ModuleNode]) -> None:
        node = event.node.data
        self.selected = node
        info = self.query_one("#details-info", Static)
        self.query_one("#details-stats", Static).update("")
        self.query_one("#histogram", Sparkline).data = []
        if node is None:
            return
        if not node.shards:
            info.update(Text(f"{printable(node.path)}\n\n{_many(node.tensors, 'tensor')} · {_count(node.numel)} {node.elements_label} · {_size(node.nbytes)}"))
            return
        self._show_details(node)
        self.query_one("#details-stats", Static).update(Text("press s for statistics", style="dim"))

    def _show_details(self, node: ModuleNode) -> None:
        """Where a tensor lives and what it maps to (shown again when the canonical view arrives)."""
        info = self.query_one("#details-info", Static)
        first = node.shards[0]
        text = Text()
        text.append(printable(node.path) + "\n", style="bold")
        if first.name != first.global_name:
            text.append(f"stored as {printable(first.name)}\n", style="dim")
        canonical = self.explained.view.canonical_for(first.global_name) if self.explained else "(mapping…)"
        text.append(f"\ncanonical  {printable(canonical)}\n")
        whole = global_shape(node.shards)
        text.append(f"shape      {_shape(whole)}" + (f" (each shard {_shape(first.shape)})" if whole != first.shape else "") + "\n")
        text.append(f"dtype      {printable(first.dtype)}\n")
        pieces = _many(len(first.chunks), "chunk") if first.chunks else _many(len(node.shards), "shard")
        text.append(f"elements   {_count(node.numel)} in {pieces}, {_size(node.nbytes)}\n")
        if first.stacked:
            text.append(f"stacked    leading axes: {printable(', '.join(first.stacked))}\n")
        text.append("\nwhere it lives\n", style="bold")
        shards = Table(box=None, padding=(0, 1))
        for col in ("ranks", "shape", "file"):
            shards.add_column(col)
        for t in node.shards[:64]:
            row(shards, t.ranks.label(), "[" + ", ".join(map(str, t.shape)) + "]", printable(t.file))
            for c in t.chunks[:16]:
                row(shards, "", f"  chunk @{list(c.offsets)} {list(c.sizes)}", printable(c.file))
        info.update(_stack(text, shards))

    def action_stats(self) -> None:
        node = self.selected
        if node is None or not node.shards:
            self.notify("Select a tensor first.", severity="warning")
            return
        self.query_one("#details-stats", Static).update(Text("computing statistics…", style="italic"))
        self.compute_stats(node)

    @work(thread=True, exclusive=True, group="stats", exit_on_error=False, description="tensor statistics")
    def compute_stats(self, node: ModuleNode) -> None:
        results = []
        for info in node.shards:
            if info.source is None:
                continue
            results.append(tensor_stats(self.ckpt.load(info), info.name, info.file))
        self.post_message(StatsReady(node.path, results))

    @on(StatsReady)
    def _stats_ready(self, message: StatsReady) -> None:
        if self.selected is None or self.selected.path != message.name:
            return
        table = Table(box=None, padding=(0, 1), title="statistics", title_justify="left", title_style="bold")
        for col in ("shard", "min", "max", "mean", "std", "NaN/Inf"):
            table.add_column(col, justify="right", no_wrap=True)
        hist: list[float] = []
        ranks = {t.file: t.ranks.label() for t in (self.selected.shards if self.selected else [])}
        for s in message.stats:
            bad = "bold red" if s.nan or s.inf else ""
            row(table, ranks.get(s.file, "-"), f"{s.min:.3g}", f"{s.max:.3g}", f"{s.mean:.2g}", f"{s.std:.3g}",
                       Text(f"{s.nan}/{s.inf}", style=bad))
            hist = [a + b for a, b in zip(hist, s.histogram)] if hist else list(map(float, s.histogram))
        self.query_one("#details-stats", Static).update(table)
        self.query_one("#histogram", Sparkline).data = hist

    # ----- other screens -----------------------------------------------------------------------
    def action_convert(self) -> None:
        self.app.open_convert(self.ckpt.root or self.ckpt.path)  # type: ignore[attr-defined]

    def action_diff(self) -> None:
        self.app.open_diff(self.ckpt.root or self.ckpt.path)  # type: ignore[attr-defined]

    def jump_to_tensor(self, path: str) -> None:
        self.query_one(TabbedContent).active = "tab-tensors"
        tree = self.query_one(TensorTree)
        if tree.jump_to(path):
            tree.focus()


def _stack(*parts: Any) -> Any:
    from rich.console import Group

    return Group(*parts)
