"""Modal dialogs: an error with its one-line message, a yes/no confirmation, the help screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from ckptscope.app.safe import row, safe


class ErrorDialog(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter", "dismiss", "Close", id="close-error")]

    def __init__(self, title: str, message: str) -> None:
        super().__init__()
        self.title_text = title
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(safe(self.title_text, style="bold"))
            yield Static(safe(self.message, 4000), id="error-message")
            with Horizontal(id="dialog-buttons"):
                yield Button("Close", variant="error", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss()


class ConfirmDialog(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "answer(False)", "No", id="confirm-no"), Binding("y", "answer(True)", "Yes", id="confirm-yes")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(safe(self.question, 4000))
            with Horizontal(id="dialog-buttons"):
                yield Button(self.no, id="no")
                yield Button(self.yes, variant="warning", id="yes")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class HelpScreen(ModalScreen[None]):
    """Every binding of the screen below, with its id, key and description."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="close-help")]

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        from rich.table import Table

        table = Table(box=None, expand=True)
        table.add_column("key", style="bold")
        table.add_column("action")
        table.add_column("id", style="dim")
        for key, description, binding_id in self.rows:
            row(table, key, description, binding_id)
        with Vertical(id="dialog"):
            yield Label("[b]Keys[/b]  (mouse works everywhere; Ctrl+P opens the command palette)", markup=True)
            with VerticalScroll():
                yield Static(table)
            with Horizontal(id="dialog-buttons"):
                yield Button("Close", variant="primary", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss()
