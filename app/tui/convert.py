"""Convert wizard: source → target → layout → dtype & tokenizer → output → plan → run → verify.

The wizard only collects options and renders events: planning is `converters.plan.make_plan`,
the run is the `converters.run.convert` generator driven from a thread worker (progress
messages coalesce), verification is `converters.verify.verify`. Cancel stops the generator,
whose clean-up removes the temporary output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import humanize
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Button,
    Checkbox,
    ContentSwitcher,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    Log,
    ProgressBar,
    Select,
    Static,
)
from textual.worker import Worker, WorkerState, get_current_worker

from ckptscope.app.safe import row
from ckptscope.converters.formats import TARGETS
from ckptscope.converters.options import ALL_OPTIONS, Option, OptionError
from ckptscope.converters.writers.output import check_destination, default_destination
from ckptscope.inspectors.summary import printable

from .capture import capture
from .messages import ConvertFinished, ConvertProgress, LayerDone, PlanReady, SpecReady, VerifyDone
from .option_fields import field, fill, read, show_for
from .safe_input import SafeInput

STEPS = (("step-source", "Source"), ("step-target", "Target"), ("step-layout", "Layout"), ("step-dtype", "Dtype & tokenizer"),
         ("step-output", "Output"), ("step-plan", "Plan"), ("step-run", "Run"))
# the fields of each step: the core's option tables, by the step each option names
FIELDS: dict[str, tuple[Option, ...]] = {step: tuple(o for o in ALL_OPTIONS.values() if o.step == step)
                                         for step in ("source", "target", "layout", "dtype", "output")}


def _row(label: str, widget: Any) -> Horizontal:
    return Horizontal(Label(label), widget, classes="form-row")


def _field_names(message: str) -> str:
    """The core's messages name options by their CLI flags; the wizard says which field it means."""
    for option in sorted((o for step in FIELDS.values() for o in step), key=lambda o: -len(o.flag)):
        message = message.replace(option.flag, f"\"{option.label}\"")
    return message


class ConvertScreen(Screen):
    BINDINGS = [
        Binding("escape", "step_back", "Back", id="convert-back"),
        Binding("ctrl+n", "next", "Next", id="wizard-next"),
        Binding("ctrl+r", "run", "Run", id="wizard-run"),
        Binding("ctrl+c", "cancel_run", "Cancel run", id="wizard-cancel", show=False),
    ]

    def __init__(self, source: Path | None = None, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.source_path = source
        self.carried = dict(options or {})  # raw option values another screen hands over (check's renames)
        self.spec: Any = None
        self.plan: Any = None
        self.step = 0
        self.output: Path | None = None
        self.running = False
        self._conversion_started = False  # set by the conversion thread: a cancel before it posts nothing
        self.finished = False  # a conversion completed: leaving loses nothing
        self.furthest = 0  # the furthest step reached (choices made beyond the first)

    # ----- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="wizard-steps")
        with ContentSwitcher(initial="step-source", id="wizard-body"):
            with Vertical(id="step-source"):
                yield _row("Source", SafeInput(str(self.source_path or ""), placeholder="checkpoint path", id="src"))
                yield Static("", id="src-status", classes="validation", markup=False)
                yield from (field(o) for o in FIELDS["source"])
            with Vertical(id="step-target"):
                yield _row("Target format", Select([(f.label, f.name) for f in TARGETS.values()], value=next(iter(TARGETS)), allow_blank=False,
                                                   id="fmt"))
                yield from (field(o) for o in FIELDS["target"])
            with Vertical(id="step-layout"):
                yield from (field(o) for o in FIELDS["layout"])
                yield Static("", id="layout-status", classes="validation", markup=False)
            with Vertical(id="step-dtype"):
                yield from (field(o) for o in FIELDS["dtype"])
            with Vertical(id="step-output"):
                yield _row("Output folder", SafeInput("", placeholder="where to write", id="out"))
                yield from (field(o) for o in FIELDS["output"])
                yield Static("", id="out-status", classes="validation", markup=False)
            with Vertical(id="step-plan"):
                with VerticalScroll(id="plan-view"):
                    yield Static("planning…", id="plan-text", markup=False)
            with Vertical(id="step-run"):
                with Vertical(id="run-top"):
                    yield ProgressBar(total=100, show_eta=True, id="run-bar")
                    yield Static("", id="run-status", markup=False)
                with Horizontal(id="run-body"):
                    yield DataTable(id="layer-list", cursor_type="row")
                    yield Log(id="run-log", highlight=False)
        with Horizontal(id="wizard-buttons"):
            yield Button("Back", id="back")
            yield Button("Next", variant="primary", id="next")
            yield Button("Run", variant="success", id="run", disabled=True)
            yield Button("Cancel run", variant="error", id="cancel", disabled=True)
            yield Button("Verify", id="verify", disabled=True)
            yield Button("Open output", id="open", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        for name, value in self.carried.items():
            fill(self, ALL_OPTIONS[name], value)
        self._format_changed()
        self._show_step(0)
        if self.source_path:
            self.load_spec(str(self.source_path))
            self.query_one("#out", Input).value = str(default_destination(self.source_path, Path.cwd()))
        table = self.query_one("#layer-list", DataTable)
        table.add_columns("", "group", "seconds")

    def _show_step(self, index: int) -> None:
        self.step = index
        self.furthest = max(self.furthest, index)
        self.query_one(ContentSwitcher).current = STEPS[index][0]
        text = Text(" ")
        for i, (_, title) in enumerate(STEPS):
            style = "bold reverse" if i == index else ("bold" if i < index else "dim")
            text.append(f" {i + 1} {title} ", style=style)
            if i < len(STEPS) - 1:
                text.append("›", style="dim")
        self.query_one("#wizard-steps", Static).update(text)
        self.query_one("#back", Button).disabled = index == 0 or self.running
        self.query_one("#next", Button).disabled = index >= STEPS.index(("step-plan", "Plan"))
        self.query_one("#run", Button).disabled = not (STEPS[index][0] == "step-plan" and self.plan is not None and self.plan.ok)
        self.call_after_refresh(self._focus_step)

    def _focus_step(self) -> None:
        """The first field of the step takes the keys (typing "3" goes to TP, not to the app)."""
        body = self.query_one(f"#{STEPS[self.step][0]}")
        fields = [w for w in body.query("Input, Select, Checkbox") if w.display and w.parent is not None and w.parent.display]
        (fields[0] if fields else self.query_one("#run" if STEPS[self.step][0] == "step-plan" else "#next", Button)).focus()

    def action_step_back(self) -> None:
        """Esc steps back through the wizard; on the first step (or after a run) it leaves."""
        if self.running:
            return
        if self.step == 0 and self.furthest > 0 and not self.finished:  # choices made on later steps: ask first
            from .dialogs import ConfirmDialog

            def leave(yes: bool | None) -> None:
                if yes:
                    self.app.action_back()  # type: ignore[attr-defined]

            self.app.push_screen(ConfirmDialog("Leave the conversion wizard? The choices you made are lost.",
                                               yes="Leave", no="Stay"), leave)
            return
        if self.step == 0 or STEPS[self.step][0] == "step-run" and self.plan is None:
            self.app.action_back()  # type: ignore[attr-defined]
            return
        self._back()

    @on(Input.Submitted)
    def _field_submitted(self, event: Input.Submitted) -> None:
        """Enter in a field advances (the source field reads the source first)."""
        if event.input.id != "src":
            self.action_next()

    # ----- step 1: source ----------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="spec", exit_on_error=False, description="read architecture")
    def load_spec(self, path: str) -> None:
        """The architecture as the conversion will read it: the source options of the first step apply."""
        from ckptscope.inspectors.errors import CheckpointError

        request = self._request(src=path)
        try:
            source = request.open_source()
        except (CheckpointError, OptionError, OSError) as exc:
            self.post_message(SpecReady(None, str(exc)))
            return
        self.post_message(SpecReady(source.spec, "", source.architecture_from))

    @on(SpecReady)
    def _spec_ready(self, message: SpecReady) -> None:
        self.spec = message.spec
        status = self.query_one("#src-status", Static)
        if self.spec is None:
            status.set_class(False, "ok")
            status.update(f"cannot convert this checkpoint: {printable(message.problem)}")
            return
        s = self.spec
        status.set_class(True, "ok")
        status.update(printable(f"{s.family}: {s.layers} layers, hidden {s.hidden}, {s.heads} heads / {s.kv_heads} query groups, "
                      f"{s.ffn_label()}, vocab {s.vocab}" + (f", {s.experts} experts" if s.moe else "")
                      + (f"\narchitecture from {message.origin}" if message.origin else ""), 1000))
        self._validate_layout()

    @on(Input.Submitted, "#src")
    def _src_submitted(self, event: Input.Submitted) -> None:
        self.spec = None
        self.query_one("#src-status", Static).update("reading…")
        self.load_spec(event.value)

    # ----- step 3: layout validation -----------------------------------------------------------
    def _format(self) -> Any:
        return TARGETS[str(self.query_one("#fmt", Select).value)]

    @on(Select.Changed, "#fmt")
    def _format_changed(self, _event: object = None) -> None:
        show_for(self, (*FIELDS["target"], *FIELDS["layout"], *FIELDS["dtype"]), self._format().name)
        self._validate_layout()

    @on(Input.Changed, "#tp, #pp, #ep, #pp-layers")
    def _validate_layout(self, _event: object = None) -> list[str]:
        """The layout options against the core's tables, then against the model (`check_parallel`)."""
        status = self.query_one("#layout-status", Static)
        if self.spec is None:
            status.update("waiting for the source architecture…")
            return ["source not read yet"]
        if self._format().whole_model:
            return []
        request = self._request()
        flags = {o.flag for o in FIELDS["layout"]}
        problems = [p for p in request.errors() if p.split(" ", 1)[0] in flags]
        if not problems:
            v = request.values()
            problems = self.spec.check_parallel(v["tp"], v["pp"], v["ep"], v["pp_layers"])
        status.set_class(not problems, "ok")
        if problems:
            status.update("\n".join(f"✗ {printable(_field_names(p), 500)}" for p in problems))
        else:
            v = request.values()
            status.update(f"✓ TP{v['tp']} × PP{v['pp']} × EP{v['ep']} fits the model")
        return problems

    def _validate_output(self) -> bool:
        status = self.query_one("#out-status", Static)
        raw = self.query_one("#out", Input).value.strip()
        if not raw:
            status.set_class(False, "ok")
            status.update("choose an output folder")
            return False
        out = Path(raw).expanduser()
        non_empty = out.exists() and (not out.is_dir() or any(out.iterdir()))
        if non_empty and not self.query_one("#force", Checkbox).value:
            status.set_class(False, "ok")
            status.update(f"{printable(out)} exists and is not empty: tick the box to replace it")
            return False
        try:  # the refusals `convert` would give (inside / around the source, a file, /, home), shown up front
            source = self.query_one("#src", Input).value.strip()
            check_destination(out, True, [Path(source).expanduser()] if source else [])
        except OSError as exc:
            status.set_class(False, "ok")
            status.update(printable(exc, 1000))
            return False
        status.set_class(True, "ok")
        status.update(f"will write {printable(out)}" + (" (replacing it)" if non_empty else ""))
        self.output = out
        return True

    # ----- navigation --------------------------------------------------------------------------
    @on(Button.Pressed, "#next")
    def action_next(self) -> None:
        step = STEPS[self.step][0]
        if step == "step-source" and self.spec is None:
            self.load_spec(self.query_one("#src", Input).value)
            self.notify("reading the source; press Next again when it is shown", severity="information")
            return
        if step == "step-layout" and self._validate_layout():
            self.notify("fix the layout first", severity="warning")
            return
        if step == "step-output" and not self._validate_output():
            return
        if step == "step-output" and (problems := self._request().errors()):
            self.notify(printable(problems[0], 500), severity="warning")
            return
        if self.step + 1 < len(STEPS):
            self._show_step(self._skip(self.step + 1, +1))
        if STEPS[self.step][0] == "step-plan":
            self.plan = None
            self.query_one("#plan-text", Static).update("planning…")
            self.make_plan()

    @on(Button.Pressed, "#back")
    def _back(self) -> None:
        if self.step > 0 and not self.running:
            self._show_step(self._skip(min(self.step - 1, STEPS.index(("step-output", "Output"))), -1))

    def _skip(self, index: int, direction: int) -> int:
        """The step to show: the layout step has nothing to ask for a whole-model target (HF)."""
        if STEPS[index][0] == "step-layout" and self._format().whole_model:
            return index + direction
        return index

    # ----- plan --------------------------------------------------------------------------------
    def _request(self, src: str | None = None) -> Any:
        """Every field as a raw option value: the engine validates and plans from this alone."""
        from ckptscope.converters.request import ConvertRequest

        fmt = self._format().name
        options = {o.name: value for step in FIELDS.values() for o in step
                   if o.applies_to(fmt) and (value := read(self, o)) is not None}
        return ConvertRequest(src if src is not None else self.query_one("#src", Input).value, str(self.output or ""), fmt, options)

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False, description="plan conversion")
    def make_plan(self) -> None:
        self.post_message(PlanReady(self._request().plan()))

    @on(PlanReady)
    def _plan_ready(self, message: PlanReady) -> None:
        from ckptscope.app.render import render_plan

        self.plan = message.plan
        where = Text.assemble(("output  ", "bold"), printable(self.output, 1000), "\n")  # where the run will write
        width = max(80, (self.size.width or self.app.size.width) - 6)  # the plan at the screen's width
        self.query_one("#plan-text", Static).update(where + capture(render_plan, self.plan, width=width))
        self._show_step(self.step)

    # ----- run ---------------------------------------------------------------------------------
    @on(Button.Pressed, "#run")
    def action_run(self) -> None:
        if self.plan is None or not self.plan.ok or self.running or self.output is None:
            return
        self._show_step(len(STEPS) - 1)
        table = self.query_one("#layer-list", DataTable)
        table.clear()
        from ckptscope.converters.sources import group_label

        for group in self.plan.groups:
            row(table, "·", group_label(self.plan.spec, group), "", key=group_label(self.plan.spec, group))
        bar = self.query_one("#run-bar", ProgressBar)
        bar.update(total=None, progress=0)  # indeterminate (animated) until the child reports its first bytes
        self.query_one("#run-status", Static).update("starting the converter process (loading torch)…")
        self.running = self.app.converting = True  # type: ignore[attr-defined]
        for button, disabled in (("#run", True), ("#cancel", False), ("#back", True), ("#verify", True), ("#open", True)):
            self.query_one(button, Button).disabled = disabled
        self.query_one("#run-log", Log).write_line(f"converting to {printable(self.output, 1000)}")
        self._conversion_started = False
        self.run_conversion(self._request())

    @work(thread=True, exclusive=True, group="convert", exit_on_error=False, description="conversion")
    def run_conversion(self, request: Any) -> None:
        """Relay events from a child process: the UI keeps the GIL, and cancel terminates the
        child, which removes its temporary output folder. Every way out posts `ConvertFinished`:
        a wizard left "running" after a failure could neither run again nor go back."""
        from ckptscope.converters.background import convert_in_subprocess

        worker = get_current_worker()
        self._conversion_started = True
        last = None
        previous = 0.0
        try:
            for event in convert_in_subprocess(request, should_stop=lambda: worker.is_cancelled):
                last = event
                self.post_message(ConvertProgress(event))
                if event.stage == "layer":
                    self.post_message(LayerDone(event.index, event.label, event.elapsed - previous))
                    previous = event.elapsed
        except Exception as exc:  # noqa: BLE001 - shown as one line; the child cleaned up its output
            self.post_message(ConvertFinished(request.dst, last.elapsed if last else 0.0, last.bytes_done if last else 0,
                                              error=printable(" ".join(str(exc).split()) or type(exc).__name__, 1000)))
            return
        finally:
            self.app.converting = False  # type: ignore[attr-defined]
        if worker.is_cancelled or last is None or last.stage != "done":
            self.post_message(ConvertFinished(request.dst, last.elapsed if last else 0.0, last.bytes_done if last else 0, cancelled=True))
            return
        self.post_message(ConvertFinished(last.output, last.elapsed, last.bytes_done))

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        """A conversion cancelled before its thread started never runs, so it posts nothing."""
        if (event.worker.group == "convert" and event.state == WorkerState.CANCELLED and self.running
                and not self._conversion_started):
            self.app.converting = False  # type: ignore[attr-defined]
            self.post_message(ConvertFinished(str(self.output), 0.0, 0, cancelled=True))

    @on(ConvertProgress)
    def _progress(self, message: ConvertProgress) -> None:
        event = message.event
        self.query_one("#run-bar", ProgressBar).update(total=event.bytes_total, progress=event.bytes_done)
        speed = event.bytes_done / event.elapsed if event.elapsed > 0 else 0
        self.query_one("#run-status", Static).update(
            f"{event.label}  ·  {event.index}/{event.total} groups  ·  {humanize.naturalsize(event.bytes_done, binary=True)} of "
            f"{humanize.naturalsize(event.bytes_total, binary=True)}  ·  {humanize.naturalsize(speed, binary=True)}/s"
            + (f"  ·  last tensor {printable(event.tensor)}" if event.tensor else ""))

    @on(LayerDone)
    def _layer_done(self, message: LayerDone) -> None:
        table = self.query_one("#layer-list", DataTable)
        try:
            table.update_cell(message.label, table.ordered_columns[0].key, "✓")
            table.update_cell(message.label, table.ordered_columns[2].key, f"{message.seconds:.2f}")
            table.move_cursor(row=table.get_row_index(message.label))
        except Exception:  # noqa: BLE001 - a label missing from the table is only cosmetic
            pass
        self.query_one("#run-log", Log).write_line(f"✓ {message.label} ({message.seconds:.2f}s)")

    @on(ConvertFinished)
    def _finished(self, message: ConvertFinished) -> None:
        self.running = False
        log = self.query_one("#run-log", Log)
        self.query_one("#cancel", Button).disabled = True
        if message.cancelled or message.error:
            if message.error:
                log.write_line(f"failed: {message.error} (the partial output was removed)")
                self.query_one("#run-status", Static).update(Text(f"failed: {message.error}", style="bold red"))
                self.notify("conversion failed", severity="error")
            else:
                log.write_line("cancelled: the partial output was removed")
                self.query_one("#run-status", Static).update("cancelled")
                self.notify("conversion cancelled", severity="warning")
            self.query_one("#back", Button).disabled = False  # go back, change, run again
            self.query_one("#run", Button).disabled = self.plan is None or not self.plan.ok
            return
        self.finished = True
        log.write_line(f"wrote {printable(message.output, 1000)} ({humanize.naturalsize(message.nbytes, binary=True)} in {message.seconds:.1f}s)")
        self.query_one("#run-status", Static).update(f"done: {printable(message.output)}")
        self.query_one("#verify", Button).disabled = False
        self.query_one("#open", Button).disabled = False
        self.notify("conversion finished")

    @on(Button.Pressed, "#cancel")
    def action_cancel_run(self) -> None:
        if self.running:
            self.workers.cancel_group(self, "convert")
            self.query_one("#run-log", Log).write_line("cancelling after the current layer…")

    # ----- after the run -----------------------------------------------------------------------
    @on(Button.Pressed, "#verify")
    def _verify(self) -> None:
        self.query_one("#run-log", Log).write_line("verifying tensors and logits…")
        self.verify_output()

    @work(thread=True, exclusive=True, group="verify", exit_on_error=False, description="verification")
    def verify_output(self) -> None:
        from ckptscope.converters.verify import verify_conversion

        assert self.output is not None and self.plan is not None
        try:
            report = verify_conversion(self._request(), self.plan)
        except Exception as exc:  # noqa: BLE001 - shown as one line in the run log
            self.post_message(VerifyDone(None, error=printable(" ".join(str(exc).split()) or type(exc).__name__, 1000)))
            return
        self.post_message(VerifyDone(report))

    @on(VerifyDone)
    def _verified(self, message: VerifyDone) -> None:
        report = message.report
        log = self.query_one("#run-log", Log)
        if message.error is not None:
            log.write_line(f"verification could not run: {message.error}")
            self.notify("verification could not run", severity="error")
            return
        from ckptscope.app.render import verify_tensors_text

        log.write_line("tensors: " + verify_tensors_text(report)[0])
        log.write_line("architecture: every field the same" if not report.config_differences else
                       "architecture differs: " + printable("; ".join(report.config_differences), 1000))
        if report.logits_max_abs is not None:
            verdict = "OK" if report.logits_ok else "MISMATCH"
            cast = f"; both with weights rounded to {report.logits_cast}" if report.logits_cast else ""
            log.write_line(f"logits: max abs diff {report.logits_max_abs:.3g} ({report.logits_how[0]} vs {report.logits_how[1]}{cast}) {verdict}")
        self.notify("verification " + ("passed" if report.logits_ok else "found differences"),
                    severity="information" if report.logits_ok else "error")

    @on(Button.Pressed, "#open")
    def _open(self) -> None:
        if self.output is not None:
            self.app.open_checkpoint(self.output.expanduser().resolve())  # type: ignore[attr-defined]
