"""Diff screen: compare two checkpoints through canonical names, or check one against a format.

Both actions run `converters.diff` in a thread worker; the table shows the folded rows
(`DiffReport.rows`), problems first when asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, DataTable, Footer, Header, Input, Label, Select, Static

from ckptscope.app import options
from ckptscope.app.options import OptionError, validate
from ckptscope.app.safe import row
from ckptscope.converters.formats import TARGETS as FORMAT_TARGETS
from ckptscope.inspectors.summary import printable

from .capture import capture
from .messages import DiffDone
from .safe_input import SafeInput

STATUS_STYLE = {"same": "green", "missing": "bold red", "unexpected": "bold yellow", "shape": "bold red",
                "dtype": "yellow", "values": "bold magenta"}
TARGETS = tuple((f.label, f.name) for f in FORMAT_TARGETS.values())  # the registry's (converters/formats.py)


# (label, width); None: a share of what the fixed columns leave (names: never cut at a fixed width)
COLUMNS: tuple[tuple[str, int | None], ...] = (("status", 10), ("tensor", None), ("shape A", 14), ("shape B", 14),
                                               ("dtype A", 9), ("dtype B", 9), ("max |Δ|", 9), ("suggestion", None))
NAME_SHARES = {"tensor": 0.6, "suggestion": 0.4}
MIN_NAME_WIDTHS = {"tensor": 36, "suggestion": 30}


def column_widths(screen_width: int) -> list[tuple[str, int]]:
    """The table's columns at a screen width: fixed ones as declared, the name columns sharing the rest."""
    spare = screen_width - sum(w or 0 for _, w in COLUMNS) - 2 * len(COLUMNS) - 4  # cell padding, borders, scrollbar
    return [(label, w if w is not None else max(MIN_NAME_WIDTHS[label], int(spare * NAME_SHARES[label])))
            for label, w in COLUMNS]


def _shape(shape: Any) -> str:
    return "—" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


class DiffScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.back", "Back", id="diff-back"),
        Binding("ctrl+r", "compare", "Compare", id="diff-compare"),
        Binding("p", "toggle_problems", "Problems only", id="diff-problems"),
    ]

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        self.path = path
        self.report: Any = None
        self.kind = "diff"  # what the report is: diff | check
        self.laid_out_for = 0  # the screen width the table columns were sized for

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(" Diff two checkpoints (any formats) through canonical names, or check one against a target format",
                     classes="title-bar", markup=False)
        with Vertical(id="diff-form"):
            with Horizontal(classes="form-row"):
                yield Label("A")
                yield SafeInput(str(self.path or ""), placeholder="first checkpoint", id="diff-a")
            with Horizontal(classes="form-row"):
                yield Label("B")
                yield SafeInput("", placeholder="second checkpoint (e.g. the HF folder it was converted to)", id="diff-b")
            with Horizontal(classes="form-row"):
                yield Checkbox("compare values (max abs diff)", id="numeric")
                yield Checkbox("problems only", id="only-problems")
                yield Button("Compare", variant="primary", id="compare")
                yield Button("Layers", id="layers", tooltip="Run A and B on the same probe layer by layer: where do they diverge?")
            with Horizontal(classes="form-row"):
                yield Label("or check A as")
                yield Select(TARGETS, value=TARGETS[1][1], allow_blank=False, id="check-target")
                yield Label("TP", classes="short")
                yield Input("1", id="check-tp", type="integer", placeholder="TP")
                yield Label("PP", classes="short")
                yield Input("1", id="check-pp", type="integer", placeholder="PP")
                yield Button("Check", id="check")
            with Horizontal(classes="form-row", id="rename-row") as renames:  # shown once a check is about names
                renames.display = False
                yield Label("renames")
                yield SafeInput("", placeholder="PATTERN=REPLACEMENT rules, space-separated", id="check-rename")
                yield Button("Apply suggested renames", id="apply-renames", disabled=True)
                yield Button("Convert with these renames…", id="convert-renamed")
        yield Static("", id="diff-summary", markup=False)
        yield DataTable(id="diff-table", zebra_stripes=True, cursor_type="row")
        with VerticalScroll(id="diff-details"):
            yield Static("", id="diff-extra", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self._lay_out(self.app.size.width)
        self.query_one("#diff-b" if self.path else "#diff-a", Input).focus()

    def on_resize(self) -> None:
        if self.laid_out_for and self.size.width != self.laid_out_for:  # (a first Resize comes before on_mount)
            self._lay_out(self.size.width)
            if self.report is not None:
                self._show(self.report, self.kind)

    def _lay_out(self, width: int) -> None:
        """Fixed widths (the table does not jump as results arrive), sized to the screen."""
        self.laid_out_for = width
        table = self.query_one("#diff-table", DataTable)
        table.clear(columns=True)
        for label, column_width in column_widths(width):
            table.add_column(label, width=column_width)

    def _report_width(self) -> int:
        return max(80, (self.size.width or self.app.size.width) - 4)  # the report under the table: the screen's width

    # ----- actions -----------------------------------------------------------------------------
    @on(Button.Pressed, "#compare")
    @on(Input.Submitted, "#diff-b")
    def action_compare(self) -> None:
        a, b = self.query_one("#diff-a", Input).value.strip(), self.query_one("#diff-b", Input).value.strip()
        if not a or not b:
            self.notify("give two checkpoints", severity="warning")
            return
        self.query_one("#diff-summary", Static).update("comparing…")
        self.run_diff(a, b, self.query_one("#numeric", Checkbox).value)

    @on(Button.Pressed, "#layers")
    def action_layers(self) -> None:
        a, b = self.query_one("#diff-a", Input).value.strip(), self.query_one("#diff-b", Input).value.strip()
        if not a or not b:
            self.notify("give two checkpoints", severity="warning")
            return
        self.query_one("#diff-summary", Static).update("running both models layer by layer…")
        self.run_layers(a, b)

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False, description="layers")
    def run_layers(self, a: str, b: str) -> None:
        from ckptscope.converters.layer_diff import compare_layers

        self.post_message(DiffDone(compare_layers(a, b), "layers"))

    @on(Button.Pressed, "#check")
    def _check(self) -> None:
        a = self.query_one("#diff-a", Input).value.strip()
        if not a:
            self.notify("give a checkpoint in A", severity="warning")
            return
        values = {"tp": self.query_one("#check-tp", Input).value.strip() or "1", "pp": self.query_one("#check-pp", Input).value.strip() or "1",
                  "rename": self._renames()}
        try:  # the command line's bounds (app/options.py)
            layout = validate(values, {name: options.CHECK[name] for name in values})
        except OptionError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.query_one("#diff-summary", Static).update("checking…")
        self.run_check(a, str(self.query_one("#check-target", Select).value), layout["tp"], layout["pp"], layout["rename"])

    def _renames(self) -> list[str]:
        return self.query_one("#check-rename", Input).value.split()

    @on(Button.Pressed, "#apply-renames")
    def _apply_renames(self) -> None:
        """Check again with the renames the last check suggested, on top of those already given."""
        suggested = getattr(self.report, "suggested_renames", [])
        self.query_one("#check-rename", Input).value = " ".join([*self._renames(), *suggested])
        self._check()

    @on(Button.Pressed, "#convert-renamed")
    def _convert_renamed(self) -> None:
        """The convert wizard on A with the renames carried into its source step."""
        a = self.query_one("#diff-a", Input).value.strip()
        if a:
            self.app.open_convert(Path(a).expanduser(), {"rename": self._renames()})  # type: ignore[attr-defined]

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False, description="diff")
    def run_diff(self, a: str, b: str, numeric: bool) -> None:
        from ckptscope.converters.diff import diff_checkpoints

        self.post_message(DiffDone(diff_checkpoints(a, b, numeric=numeric), "diff"))

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False, description="check")
    def run_check(self, path: str, target: str, tp: int, pp: int, renames: tuple[str, ...] = ()) -> None:
        from ckptscope.converters.diff import check_target
        from ckptscope.converters.renames import Renames

        layout = {} if FORMAT_TARGETS[target].whole_model else {"tp": tp, "pp": pp}
        self.post_message(DiffDone(check_target(path, target, renames=Renames.from_options(renames), **layout), "check"))

    @on(Checkbox.Changed, "#only-problems")
    def _problems_changed(self) -> None:
        if self.report is not None and hasattr(self.report, "entries"):
            self._fill(self.report)

    def action_toggle_problems(self) -> None:
        box = self.query_one("#only-problems", Checkbox)
        box.value = not box.value

    # ----- results -----------------------------------------------------------------------------
    @on(DiffDone)
    def _done(self, message: DiffDone) -> None:
        self.report, self.kind = message.report, message.kind
        self._show(message.report, message.kind)

    def _show(self, report: Any, kind: str) -> None:
        from ckptscope.app import render

        table = self.query_one("#diff-table", DataTable)
        table.clear()
        table.display = kind != "layers"  # the layers report is its own table (render_layers)
        if kind == "layers":
            self.query_one("#diff-summary", Static).update(
                Text("every layer within tolerance" if report.first is None else f"first divergence: {report.first_label()}",
                     style="green" if report.first is None else "bold red"))
            self.query_one("#diff-extra", Static).update(capture(render.render_layers, report))
            return
        if kind == "check":
            self.query_one("#diff-summary", Static).update(Text("check: " + ("convertible" if report.ok else "problems found"),
                                                                style="green" if report.ok else "bold red"))
            self.query_one("#diff-extra", Static).update(capture(render.render_check, report, width=self._report_width()))
            suggested = report.suggested_renames
            self.query_one("#rename-row").display = bool(suggested or report.renamed or self._renames())
            self.query_one("#apply-renames", Button).disabled = not suggested
            for u in report.unplaced:
                row(table, Text("unplaced", style="bold red"), printable(u.name), _shape(u.shape), "", u.dtype, "", "",
                           printable(u.nearest or ""))
            for name in report.missing:
                row(table, Text("missing", style="bold red"), printable(name), "", "", "", "", "", "")
            return
        self._fill(report)
        self.query_one("#diff-extra", Static).update(capture(render.render_diff, report, only_problems=True,
                                                             width=self._report_width()))

    def _fill(self, report: Any) -> None:
        from ckptscope.app import render

        table = self.query_one("#diff-table", DataTable)
        table.clear()
        only = self.query_one("#only-problems", Checkbox).value
        for r in report.rows(only_problems=only):
            row(table, Text(r.status, style=STATUS_STYLE.get(r.status, "")), r.name, _shape(r.shape_a), _shape(r.shape_b),
                r.dtype_a or "—", r.dtype_b or "—", "" if r.max_abs is None else f"{r.max_abs:.3g}", r.suggestion or "")
        self.query_one("#diff-summary", Static).update(render.diff_summary(report))
