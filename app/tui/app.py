"""The ckptscope Textual app: browse, inspect, diff and convert, over the headless modules.

Blocking work (opening, stats, diff, conversion) runs in thread workers that post small
messages; one handler turns any worker error into an error dialog with the one-line message.
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import App, SystemCommand
from textual.notifications import SeverityLevel
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.storage import as_path, is_remote
from ckptscope.inspectors.summary import printable
from ckptscope.themes import DEFAULT_THEME, STYLESHEET, THEMES

from . import config
from .browse import BrowseScreen
from .commands import TensorJumpProvider
from .dialogs import ConfirmDialog, ErrorDialog, HelpScreen
from .messages import CheckpointOpened
from .opening import open_checkpoint


def one_line(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, CheckpointError):
        return printable(str(error), 2000)
    return printable(f"{type(error).__name__}: {error}", 2000)


# Clearer words in the help screen than Textual's own binding descriptions
HELP_TEXT = {"command_palette": "Command palette (jump to tensor, themes, screens)", "toggle_node": "Expand / collapse",
             "select_cursor": "Select (open a checkpoint, expand a module)", "toggle_expand_all": "Expand or collapse all below"}


class CkptscopeApp(App):
    TITLE = "ckptscope"
    SUB_TITLE = "checkpoints: inspect · diff · convert"
    CSS_PATH = str(STYLESHEET)
    COMMANDS = App.COMMANDS | {TensorJumpProvider}
    BINDINGS = [
        Binding("q", "quit_app", "Quit", id="quit"),
        Binding("question_mark", "help", "Help", id="help", key_display="?"),
        Binding("ctrl+b", "browse", "Browse", id="browse"),
        Binding("ctrl+d", "diff", "Diff", id="diff"),
        Binding("ctrl+x", "convert", "Convert", id="convert"),
        Binding("ctrl+t", "toggle_theme", "Theme", id="toggle-theme", show=False),
    ]

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information", timeout: float | None = None,
               markup: bool = True) -> None:
        """Every toast is literal text: messages carry checkpoint names and paths (markup off, characters escaped)."""
        super().notify(printable(message, 2000), title=printable(title, 200), severity=severity, timeout=timeout, markup=False)

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        remote = is_remote(path)  # s3:// / https://: a checkpoint opens in place, a prefix is browsed
        self.start_path = as_path(path) if remote else Path(path or Path.cwd()).expanduser().resolve()
        self.start_is_checkpoint = False
        self.converting = False

    # ----- start-up and themes -----------------------------------------------------------------
    def on_mount(self) -> None:
        for theme in THEMES:
            self.register_theme(theme)
        saved = config.load().get("theme")
        self.theme = saved if saved in self.available_themes else DEFAULT_THEME
        self.theme_changed_signal.subscribe(self, lambda theme: config.save(theme=theme.name))
        from ckptscope.inspectors.browse import label_path

        self.start_is_checkpoint = bool(label_path(self.start_path).kind)
        if self.start_is_checkpoint:
            # Straight to the checkpoint: the browser is built only when asked for (it costs a
            # tenth of a second and competes with opening a 100k-tensor index).
            self.open_checkpoint(self.start_path)
        else:
            self.show_browser()

    def show_browser(self) -> None:
        """Go to the folder browser, building it the first time; it stays at the stack's bottom."""
        browsers = [s for s in self.screen_stack if isinstance(s, BrowseScreen)]
        if browsers:
            while self.screen is not browsers[0]:
                self.pop_screen()
            return
        # a checkpoint is shown among its siblings; a plain folder is browsed itself
        opened_on_folder = self.start_path.is_dir() and not self.start_is_checkpoint
        root = self.start_path if opened_on_folder else self.start_path.parent
        while len(self.screen_stack) > 1:
            self.pop_screen()
        self.push_screen(BrowseScreen(root))

    def action_toggle_theme(self) -> None:
        self.theme = "ckptscope-light" if self.theme == "ckptscope-dark" else "ckptscope-dark"

    def get_system_commands(self, screen: Screen):  # type: ignore[no-untyped-def]
        yield from super().get_system_commands(screen)
        yield SystemCommand("Theme: ckptscope dark", "Switch to the dark theme", lambda: setattr(self, "theme", "ckptscope-dark"))
        yield SystemCommand("Theme: ckptscope light", "Switch to the light theme", lambda: setattr(self, "theme", "ckptscope-light"))
        yield SystemCommand("Browse", "Open the folder browser", self.action_browse)
        yield SystemCommand("Diff / check", "Compare two checkpoints or check one against a format", self.action_diff)
        yield SystemCommand("Convert", "Open the conversion wizard", self.action_convert)

    # ----- opening checkpoints -----------------------------------------------------------------
    def open_checkpoint(self, path: Path) -> None:
        self.notify(f"opening {printable(path.name)}…", timeout=60)  # cleared when the screen opens
        self._open_worker(path)

    @work(thread=True, exclusive=True, group="open", exit_on_error=False, description="open checkpoint")
    def _open_worker(self, path: Path) -> None:
        self.post_message(CheckpointOpened(open_checkpoint(path)))

    @on(CheckpointOpened)
    def _opened(self, message: CheckpointOpened) -> None:
        from .inspect import InspectScreen

        self.clear_notifications()  # the "opening…" toast has done its job
        self.push_screen(InspectScreen(message.opened))

    # ----- navigation --------------------------------------------------------------------------
    def action_back(self) -> None:
        if len(self.screen_stack) > 2:
            self.pop_screen()
        elif not isinstance(self.screen, BrowseScreen):
            self.show_browser()

    def action_browse(self) -> None:
        self.show_browser()

    def open_diff(self, path: Path | None = None) -> None:
        from .diff import DiffScreen

        self.push_screen(DiffScreen(path))

    def open_convert(self, path: Path | None = None, options: dict[str, object] | None = None) -> None:
        from .convert import ConvertScreen

        self.push_screen(ConvertScreen(path, options))

    def action_diff(self) -> None:
        self.open_diff(self._current_path())

    def action_convert(self) -> None:
        self.open_convert(self._current_path())

    def _current_path(self) -> Path | None:
        ckpt = getattr(self.screen, "ckpt", None)
        return (ckpt.root or ckpt.path) if ckpt is not None else None

    def action_help(self) -> None:
        """Every key active here: the focused widget's (the tree's Space, e, s), the screen's, the app's."""
        rows = []
        seen = set()
        for key, active in self.screen.active_bindings.items():
            binding = active.binding
            description = HELP_TEXT.get(binding.action, binding.description)
            if not description or (key, binding.action) in seen:
                continue
            seen.add((key, binding.action))
            rows.append((binding.key_display or self.get_key_display(binding), description, binding.id or ""))
        self.push_screen(HelpScreen(rows))

    async def action_quit_app(self) -> None:
        if self.converting:
            def answer(yes: bool | None) -> None:
                if yes:
                    self.workers.cancel_group(self, "convert")
                    self.exit()

            self.push_screen(ConfirmDialog("A conversion is running. Cancel it (its partial output is removed) and quit?",
                                           yes="Cancel and quit", no="Keep running"), answer)
            return
        self.exit()

    # ----- errors ------------------------------------------------------------------------------
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            if event.worker.group == "open":
                self.clear_notifications()  # the "opening…" toast: the error dialog replaces it
            if len(self.screen_stack) == 1:
                self.show_browser()  # opening the start path failed: land somewhere useful
            title = f"{event.worker.description or event.worker.name} failed"
            self.push_screen(ErrorDialog(title, one_line(event.worker.error)))
